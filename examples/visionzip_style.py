"""VisionZip-style token reduction built from the litelvlm ops (a building-block example).

VisionZip (Yang et al., 2024) keeps the *dominant* visual tokens, those that
[CLS] attends to most, and merges the rest into a few *contextual* tokens. The
dominant part is exactly LiteLVLM's context recovery with no text, so three
ops do it:

    c   = torch.ops.litelvlm.cls_contribution(q_cls, keys, values)        # [B, M]
    idx = torch.ops.litelvlm.select_tokens(s_empty, c, num_dominant)[0]   # s: [B, 0, M] = no texts
    dom = torch.ops.litelvlm.gather_tokens(hidden, idx)                   # [B, K, Dv]

``score="attention"`` ranks by the [CLS] attention a_j alone (VisionZip's
criterion; we pass unit-norm values so that c_j = a_j ||v_j|| = a_j),
``score="contribution"`` by LiteLVLM's c_j = a_j ||v_j||. Note the ops'
attention uses L2-normalised full-width q and k (docs/design.md section 1), not
VisionZip's per-head average: the example reuses the blocks, it does not
reproduce VisionZip's numbers. The contextual merge is plain PyTorch: the
remaining tokens are split into ``num_contextual`` groups around evenly
spaced targets (each token joins the target with the most similar key) and
each group is averaged.

Inputs here are synthetic CLIP ViT-L/14-336-shaped tensors (M = 576,
Dv = D = 1024); with a Hugging Face CLIP, take them from
``litelvlm_kernels.integrations.hf.capture_vision(model, pixel_values)``.

Run: ``python examples/visionzip_style.py [--dominant 54] [--contextual 10]``
"""

from __future__ import annotations

import argparse

import torch

import litelvlm_kernels  # noqa: F401  (registers torch.ops.litelvlm)
from litelvlm_kernels.synthetic import CLIP_L14_336, clip_inputs
from litelvlm_kernels.timing import format_ratio, interleaved

ops = torch.ops.litelvlm


def dominant_tokens(hidden, q_cls, keys, values, num_dominant, score="attention"):
    """Indices [B, K] (falling score) and tokens [B, K, Dv] of the dominant tokens, via the ops."""
    if score == "attention":
        values = keys.new_ones(keys.shape) * keys.shape[-1] ** -0.5  # ||v_j|| = 1 -> c_j = a_j
    elif score != "contribution":
        raise ValueError(f"score must be 'attention' or 'contribution', got {score!r}")
    c = ops.cls_contribution(q_cls, keys, values)
    no_text = c.new_empty(c.shape[0], 0, c.shape[1])  # T = 0: pure [CLS]-based selection
    idx, _, _ = ops.select_tokens(no_text, c, num_dominant)  # falling c, ties to the lower index
    return idx, ops.gather_tokens(hidden, idx), c


def remaining_indices(idx, M):
    """Ascending indices of the tokens not in idx, [B, M - K] (no host sync: a stable sort of the mask)."""
    kept = torch.zeros(idx.shape[0], M, dtype=torch.int8, device=idx.device).scatter_(1, idx, 1)
    return torch.sort(kept, dim=1, stable=True).indices[:, : M - idx.shape[1]]


def contextual_tokens(hidden, keys, rest, num_contextual):
    """Merge the remaining tokens into num_contextual tokens (VisionZip's contextual merge)."""
    B, N = rest.shape
    Dv = hidden.shape[-1]
    h = ops.gather_tokens(hidden, rest).float()  # [B, N, Dv]
    k = torch.nn.functional.normalize(ops.gather_tokens(keys, rest).float(), dim=-1)
    step = max(N // num_contextual, 1)
    targets = torch.arange(0, N, step, device=rest.device)[:num_contextual]  # evenly spaced, [C]
    sim = k @ k[:, targets].transpose(1, 2)  # [B, N, C]
    group = sim.argmax(-1)  # each remaining token joins its most similar target
    group[:, targets] = torch.arange(targets.numel(), device=rest.device)  # a target is in its own group
    n = targets.numel()
    sums = torch.zeros(B, n, Dv, device=h.device).scatter_add_(1, group.unsqueeze(-1).expand(-1, -1, Dv), h)
    counts = torch.zeros(B, n, device=h.device).scatter_add_(1, group, torch.ones_like(group, dtype=h.dtype))
    return (sums / counts.unsqueeze(-1)).to(hidden.dtype)


def visionzip(hidden, q_cls, keys, values, num_dominant=54, num_contextual=10, score="attention"):
    """[B, M, Dv] -> [B, num_dominant + num_contextual, Dv] (dominant tokens first)."""
    idx, dom, c = dominant_tokens(hidden, q_cls, keys, values, num_dominant, score)
    rest = remaining_indices(idx, hidden.shape[1])
    ctx = contextual_tokens(hidden, keys, rest, num_contextual)
    return torch.cat([dom, ctx], dim=1), idx, c


def visionzip_plain_torch(hidden, q_cls, keys, values, num_dominant=54, num_contextual=10, score="attention"):
    """The same with plain torch (topk / index gathers): what the ops replace."""
    q = torch.nn.functional.normalize(q_cls.float(), dim=-1)
    k = torch.nn.functional.normalize(keys.float(), dim=-1)
    a = torch.softmax(torch.einsum("bmd,bd->bm", k, q) * keys.shape[-1] ** -0.5, dim=-1)
    c = a if score == "attention" else a * values.float().norm(dim=-1)
    idx = torch.sort(c, dim=1, descending=True, stable=True).indices[:, :num_dominant]
    dom = torch.gather(hidden, 1, idx.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
    mask = torch.ones_like(c, dtype=torch.bool).scatter_(1, idx, False)
    rest = torch.stack([row.nonzero().squeeze(1) for row in mask])
    B, N = rest.shape
    h = torch.gather(hidden, 1, rest.unsqueeze(-1).expand(-1, -1, hidden.shape[-1])).float()
    kk = torch.gather(keys, 1, rest.unsqueeze(-1).expand(-1, -1, keys.shape[-1])).float()
    kk = torch.nn.functional.normalize(kk, dim=-1)
    targets = list(range(0, N, max(N // num_contextual, 1)))[:num_contextual]
    ctx = []
    for b in range(B):
        grp = (kk[b] @ kk[b, targets].t()).argmax(-1)
        grp[targets] = torch.arange(len(targets))
        ctx.append(torch.stack([h[b, grp == g].mean(0) for g in range(len(targets))]))
    return torch.cat([dom, torch.stack(ctx).to(hidden.dtype)], dim=1), idx


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--dominant", type=int, default=54)
    p.add_argument("--contextual", type=int, default=10)
    p.add_argument("--score", default="attention", choices=["attention", "contribution"])
    p.add_argument("--repeat", type=int, default=5, help="interleaved timing rounds (median, p20-p80)")
    args = p.parse_args(argv)

    x = clip_inputs(B=args.batch, T=1, **CLIP_L14_336)
    # Warm-up: the first call of any torch.library custom_op imports torch._dynamo (seconds, once).
    visionzip(x.hidden[:1, :8], x.q_cls[:1], x.keys[:1, :8], x.values[:1, :8], 2, 2, args.score)
    visionzip_plain_torch(x.hidden[:1, :8], x.q_cls[:1], x.keys[:1, :8], x.values[:1, :8], 2, 2, args.score)
    run = (x.hidden, x.q_cls, x.keys, x.values, args.dominant, args.contextual, args.score)
    out, idx, c = visionzip(*run)
    ref, ref_idx = visionzip_plain_torch(*run)
    times = interleaved({"ops": lambda: visionzip(*run), "plain": lambda: visionzip_plain_torch(*run)},
                        rounds=args.repeat, warmup=0)  # both ran once just above
    same_idx = torch.equal(idx, ref_idx)
    max_err = (out.float() - ref.float()).abs().max().item()
    M = x.hidden.shape[1]
    print(f"VisionZip-style reduction: {M} -> {out.shape[1]} tokens per image "
          f"({args.dominant} dominant by [CLS] {args.score}, {args.contextual} contextual), batch {args.batch}")
    print(f"dominant tokens of image 0 (falling score): {idx[0, :12].tolist()} ...")
    print(f"same dominant tokens: {same_idx}; max |difference| of outputs: {max_err:.2e}")
    print(f"ops {times['ops']}, plain torch {times['plain']} (CPU, median (p20-p80) of {args.repeat} interleaved "
          f"rounds); ops / plain torch: {format_ratio(times['ops'], times['plain'])}")
    return dict(tokens=out, indices=idx, scores=c, reference_tokens=ref, reference_indices=ref_idx,
                same_indices=same_idx, max_abs_err=max_err, inputs=x, times=times)


if __name__ == "__main__":
    main()
