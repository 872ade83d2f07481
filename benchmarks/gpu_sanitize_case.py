"""A small fused_select case for compute-sanitizer racecheck / synccheck (issue 10, item 3).

``compute-sanitizer --tool racecheck python -m benchmarks.gpu_sanitize_case``

One row of M = 200 tokens is split over ceil(200 / BLOCK_M) programs (13 with the GPU's
BLOCK_M = 16); partial scores go to scratch and the last program to finish (an atomic
counter) reduces and selects: the pattern whose memory ordering a race would break.
racecheck checks shared-memory hazards inside each program (Triton's reductions and
sorts); synccheck checks barrier use. Neither sees ordering between programs through
global memory, so this script also checks that every repeat (same inputs, alternately
on two streams) gives bitwise the same selection and that it equals the reference
selection up to near-ties (``litelvlm_kernels.testing.assert_selection_close``):
a missing fence in the last-program pattern shows up as a moving result.

Small on purpose: racecheck slows shared-memory-heavy kernels 10-100x.
Exit status 0 when every check passes, 1 otherwise (the message says which).
"""

from __future__ import annotations

import argparse
import sys

import torch


def _selection(x, w, b, R):
    return torch.ops.litelvlm.fused_select(x.hidden, w, b, 1e-5, x.q_cls, x.keys, x.values, R)


def run_case(B=2, T=2, M=200, Dv=128, D=64, P=32, R=48, repeats=4, dtype=torch.float16, device="cuda") -> str:
    """Run the case; returns a one-line summary, raises AssertionError on a wrong or moving result."""
    import litelvlm_kernels.ops  # noqa: F401  (registers torch.ops.litelvlm)
    from litelvlm_kernels import reference as ref
    from litelvlm_kernels.synthetic import clip_inputs
    from litelvlm_kernels.testing import assert_selection_close

    x = clip_inputs(B, T, M, Dv, D, P, text_batch=1, dtype=dtype, device=device, seed=7)
    w, b = torch.ops.litelvlm.fold_text(x.text_embeds, x.proj_weight, x.ln_weight, x.ln_bias)
    first = _selection(x, w, b, R)
    streams = [torch.cuda.Stream() for _ in range(2)] if torch.device(device).type == "cuda" else [None]
    outs = []
    for i in range(repeats):
        st = streams[i % len(streams)]
        if st is None:
            outs.append(_selection(x, w, b, R))
            continue
        st.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(st):
            outs.append(_selection(x, w, b, R))
    if streams[0] is not None:
        torch.cuda.synchronize()
    for i, out in enumerate(outs):
        for name, a, e in zip(("indices", "num_similarity", "from_similarity"), out, first):
            assert torch.equal(a.cpu(), e.cpu()), f"repeat {i}: {name} differs from the first run (a race?)"
    # Reference scores on the same (upcast) values, on the CPU (under a sanitizer every GPU kernel is
    # instrumented, torch's too); tolerances as tests/triton/_tri.py states them.
    h = {k: getattr(x, k).float().cpu() for k in ("hidden", "text_embeds", "proj_weight", "ln_weight", "ln_bias",
                                                   "q_cls", "keys", "values")}
    s = ref.similarity_direct(h["hidden"], h["text_embeds"], h["proj_weight"], h["ln_weight"], h["ln_bias"], 1e-5)
    c = ref.contribution_direct(h["q_cls"], h["keys"], h["values"])
    fin = s[torch.isfinite(s)]
    s_tol = 2e-5 * max(1.0, float(fin.abs().max()) if fin.numel() else 1.0)
    c_tol = 2e-5 * float(c[torch.isfinite(c)].abs().max())
    notes = assert_selection_close(first, s, c, R, s_tol=s_tol, c_tol=c_tol)
    return (f"fused_select B={B} T={T} M={M} Dv={Dv} D={D} R={R} {str(dtype).replace('torch.', '')}: "
            f"{repeats} repeats identical, reference match ({len(notes)} near-tie swaps accepted)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_sanitize_case", description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--M", type=int, default=200)
    p.add_argument("--repeats", type=int, default=4)
    a = p.parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        print("gpu_sanitize_case: no CUDA device", file=sys.stderr)
        return 2
    try:
        print(run_case(M=a.M, repeats=a.repeats, device=a.device,
                       dtype=torch.float16 if a.device == "cuda" else torch.float32), flush=True)
    except AssertionError as e:
        print(f"gpu_sanitize_case: FAILED: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
