"""LLM prefill time with and without visual-token pruning, and pruning's own cost.

What a user of an LVLM (LLaVA-1.5 / GLaMM: CLIP ViT-L/14-336, 576 visual tokens,
Vicuna-7B) gains from pruning before the LLM: the decoder's prefill over
576 + text tokens against R + text for R in 192/128/64, plus the time of the
pruning itself (``litelvlm_kernels.prune``: select + gather on synthetic CLIP
inputs; the eager ``reference.prune`` beside it), so the end-to-end saving and
pruning's share of it are visible. FLOPs from ``litelvlm_kernels.flops`` are
written next to each time.

The decoder is a Hugging Face ``LlamaModel`` with random weights fed random
``inputs_embeds`` (LVLMs splice projected visual tokens in as embeddings, so no
embedding lookup and no LM head: the same scope as ``prefill_macs``):

* CUDA: Vicuna-7B shapes (h 4096, 32 layers), fp16, sdpa attention; 13 GB of weights.
* CPU:  a scaled-down decoder (h 512, h_ff 1376, 4 layers, 8 heads), fp32, so the
  whole run takes about a minute on 2 cores. The *ratios* are what carries over;
  the absolute times do not.

    python -m benchmarks.bench_prefill                  # CPU, small decoder
    python -m benchmarks.bench_prefill --device cuda    # GPU, 7B shapes
    python -m benchmarks.bench_prefill --device cuda --config small --batch 1 4

Rows go to ``<name>-<device>.json`` in ``benchmarks/out/`` (git-ignored) by default, ``--out DIR``, or
``--publish`` for ``benchmarks/results/`` (the committed rows).

Rows (one per measurement, long format, benchmarks/common.py):

* op ``llm_prefill``, provider ``hf-llama-<attn>``: shape {B, visual, text, tokens,
  hidden, intermediate, layers, heads, kv_heads}; extra ``model``, ``macs``,
  ``tflops`` (per row of the batch x B), ``macs_percent`` (of the unpruned prefill),
  ``time_ratio`` (time / time at ``--visual``), ``speedup`` (inverse),
  ``achieved_tflops``, ``kv_cache_bytes`` (K and V of every layer, from the shapes),
  ``kv_cache_bytes_measured`` (what the returned cache holds), ``weights_bytes``,
  on CUDA ``peak_mem_bytes`` (``torch.cuda.max_memory_allocated`` over one forward,
  weights included) and ``peak_over_start_bytes`` (minus what was allocated before it:
  weights and inputs); ``layers_built`` and
  ``layer_scale`` (``--layers``: fewer layers built, times scaled per layer).
* op ``prune``, provider ``litelvlm`` (the ops) or ``reference`` (eager oracle):
  shape {B, M, Dv, D, T, R} per CLIP image/tile of M = 576 patches (``--visual 2880``:
  5 tiles per image, each keeping R // 5); extra ``images``, ``tiles``,
  ``visual_kept`` (R over all tiles), ``prefill_ms_pruned`` (prefill at R + text),
  ``prefill_ms_full``, ``share_of_pruned_prefill`` (prune / (prune + prefill at R)),
  ``share_of_full_prefill`` (prune / prefill at ``--visual``), ``end_to_end_speedup``
  (prefill full / (prune + prefill at R)).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Callable, Dict, List, Optional

import torch

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import make_row, measure, parse_run_args, write_rows  # noqa: E402
from litelvlm_kernels.flops import DecoderConfig, prefill_macs  # noqa: E402

#: CPU stand-in: LLaMA-7B's proportions (h_ff / h = 2.6875, head_dim 64..128) at h = 512.
SMALL = DecoderConfig(hidden=512, intermediate=1376, layers=4, heads=8, kv_heads=8, vocab=1024)

# CLIP ViT-L/14-336 (docs/design.md section 6)
CLIP_M, CLIP_DV, CLIP_D, CLIP_P = 576, 1024, 1024, 768


def build_decoder(cfg: DecoderConfig, device: torch.device, dtype: torch.dtype, attn: str):
    """A random-weight ``transformers.LlamaModel`` of the given shape, in eval mode."""
    import transformers

    config = transformers.LlamaConfig(
        hidden_size=cfg.hidden,
        intermediate_size=cfg.intermediate,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.kv_heads,
        vocab_size=cfg.vocab,
        head_dim=cfg.dim_head,
        max_position_embeddings=4096,
        attn_implementation=attn,
    )
    old = torch.get_default_dtype()
    # Build directly in the target dtype and device: 7B in fp32 on the host would
    # take 26 GB and a minute of initialisation for weights we never train.
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = transformers.LlamaModel(config)
    finally:
        torch.set_default_dtype(old)
    return model.eval().requires_grad_(False)


def clip_inputs(B: int, T: int, device, dtype, seed: int = 0) -> dict:
    """Synthetic CLIP ViT-L/14-336 select-layer / last-layer tensors ([CLS] excluded, outlier channels)."""
    from litelvlm_kernels.synthetic import clip_inputs as synth

    return synth(B, T, CLIP_M, CLIP_DV, CLIP_D, CLIP_P, text_batch=1, dtype=dtype, device=device,
                 seed=seed)._asdict()


def prune_fns(inp: dict, R: int) -> Dict[str, callable]:
    """Pruning callables by provider; missing implementations are skipped with a note."""
    fns = {}
    try:
        import litelvlm_kernels as lk

        folded = lk.fold_text(inp["text_embeds"], inp["proj_weight"], inp["ln_weight"], inp["ln_bias"])
        fns["litelvlm"] = lambda: lk.prune(inp["hidden"], folded, inp["q_cls"], inp["keys"], inp["values"],
                                           num_retain=R)
    except Exception as e:  # the ops are not built / not importable: still time the LLM
        print(f"[bench_prefill] litelvlm_kernels.prune unavailable: {type(e).__name__}: {e}", file=sys.stderr)
    try:
        from litelvlm_kernels import reference

        def ref():
            idx, _, _ = reference.prune(inp["hidden"], inp["text_embeds"], inp["proj_weight"], inp["ln_weight"],
                                        inp["ln_bias"], inp["q_cls"], inp["keys"], inp["values"], R)
            return torch.gather(inp["hidden"], 1, idx[..., None].expand(-1, -1, inp["hidden"].shape[-1]))

        fns["reference"] = ref
    except Exception as e:
        print(f"[bench_prefill] reference.prune unavailable: {type(e).__name__}: {e}", file=sys.stderr)
    return fns


def interleaved(fns: Dict[object, callable], device: torch.device, *, rounds: int, rep_ms: float) -> Dict[object, dict]:
    """p50/p20/p80 of each callable.

    CUDA: ``common.measure`` (do_bench) one after another; the GPU is ours alone.
    CPU: the callables are timed in turn, round after round (order rotated), and
    the quantiles taken over each one's per-call times. On a CPU shared with other
    jobs, load changes over a run; interleaving spreads it over all the
    configurations instead of charging it to whichever ran during a burst, so the
    ratios (time at 192 / time at 576) stay meaningful.
    """
    if device.type == "cuda":
        return {k: measure(fn, device, rep_ms=rep_ms) for k, fn in fns.items()}
    import time

    keys = list(fns)
    for k in keys:  # warm-up: allocator, oneDNN primitive caches, lazy imports
        fns[k]()
    samples: Dict[object, List[float]] = {k: [] for k in keys}
    for r in range(rounds):
        for k in keys[r % len(keys):] + keys[: r % len(keys)]:
            t0 = time.perf_counter()
            fns[k]()
            samples[k].append((time.perf_counter() - t0) * 1e3)
    out = {}
    for k, v in samples.items():
        t = torch.tensor(v, dtype=torch.float64)
        q = torch.quantile(t, torch.tensor([0.5, 0.2, 0.8], dtype=torch.float64))
        out[k] = {"p50_ms": float(q[0]), "p20_ms": float(q[1]), "p80_ms": float(q[2])}
    return out


def kv_cache_bytes(cfg: DecoderConfig, batch: int, tokens: int, dtype: torch.dtype) -> int:
    """Bytes of the KV cache a prefill of ``tokens`` leaves: K and V, every layer and kv head."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    return 2 * cfg.layers * batch * cfg.kv_heads * cfg.dim_head * tokens * itemsize


def cache_nbytes(cache) -> Optional[int]:
    """Bytes held by a transformers cache object (``DynamicCache`` of transformers 4.x / 5.x), or None."""
    if cache is None:
        return None
    layers = getattr(cache, "layers", None)  # transformers >= 4.54: one object per layer
    if layers is not None:
        total = 0
        for layer in layers:
            for name in ("keys", "values"):
                t = getattr(layer, name, None)
                total += t.numel() * t.element_size() if isinstance(t, torch.Tensor) else 0
        return total
    try:  # older caches: key_cache / value_cache lists, or a legacy tuple of (k, v) per layer
        tensors = list(cache.key_cache) + list(cache.value_cache)
    except (AttributeError, TypeError):
        try:
            tensors = [t for kv in cache for t in kv]
        except TypeError:
            return None
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def memory_of(fwd, device: torch.device) -> dict:
    """Run ``fwd`` once: peak allocated bytes (CUDA only), the increase over the start, cache bytes held."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
    out = fwd()
    if cuda:
        torch.cuda.synchronize(device)
    # transformers 5.24 calls the output's cache `cache` (`past_key_values` warns); 5.17 and 4.x: past_key_values
    cache = getattr(out, "cache", None)
    if cache is None:
        cache = getattr(out, "past_key_values", None)
    stats = {"kv_cache_bytes_measured": cache_nbytes(cache)}
    if cuda:
        peak = torch.cuda.max_memory_allocated(device)
        stats.update(peak_mem_bytes=peak, peak_over_start_bytes=peak - start)
    del out
    return stats


def run(device: str = "cpu", config="auto", visual: int = 576, keeps=(192, 128, 64), text: int = 64,
        batches=(1,), dtype: Optional[str] = None, attn: str = "sdpa", num_texts: int = 1,
        use_cache: bool = True, rep_ms: float = 1000.0, rounds: int = 15, layers: Optional[int] = None,
        on_row: Optional[Callable[[dict], object]] = None) -> List[dict]:
    """Prefill and prune rows (see the module docstring).

    ``layers``: build only that many decoder layers and scale the prefill times by
    ``cfg.layers / layers`` (every layer has the same shape, so per-layer time is
    the same; the final norm and rotary tables, < 1% of a layer, are scaled with it).
    Rows then carry ``layers_built`` and ``layer_scale``; memory figures are those of
    the built model, ``kv_cache_bytes`` that of the full one. ``on_row`` gets each
    row as soon as it exists.
    """
    dev = torch.device(device)
    if config == "auto":
        config = "vicuna-7b" if dev.type == "cuda" else "small"
    if isinstance(config, DecoderConfig):
        cfg, config = config, "custom"
    else:
        cfg = SMALL if config == "small" else DecoderConfig.preset(config)
    dt = getattr(torch, dtype) if dtype else (torch.float16 if dev.type == "cuda" else torch.float32)
    built = dataclasses.replace(cfg, layers=layers) if layers and layers < cfg.layers else cfg
    scale = cfg.layers / built.layers
    model = build_decoder(built, dev, dt, attn)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    weights_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    provider = f"hf-llama-{attn}"
    keeps = [k for k in dict.fromkeys(keeps) if 0 <= k < visual]
    # the pruning sees CLIP ViT-L/14-336 images of 576 patches: more visual tokens
    # (LLaVA-NeXT: 5 tiles = 2880) are that many rows, each keeping its share of R
    tiles = max(1, round(visual / CLIP_M))
    rows: List[dict] = []

    for B in batches:
        full_macs = prefill_macs(cfg, visual, text)
        fns: Dict[tuple, callable] = {}
        for v in [visual, *keeps]:
            x = torch.randn(B, v + text, cfg.hidden, device=dev, dtype=dt)

            def fwd(x=x):
                with torch.inference_mode():
                    return model(inputs_embeds=x, use_cache=use_cache)

            fns[("llm_prefill", v)] = fwd
        mem = {v: memory_of(fns[("llm_prefill", v)], dev) for v in [visual, *keeps]}
        inp = clip_inputs(B * tiles, num_texts, dev, dt)
        for R in keeps:
            if R // tiles < max(1, num_texts):
                continue  # nothing to prune with (R' must be >= T)
            for prov, fn in prune_fns(inp, R // tiles).items():
                try:
                    fn()  # a provider that fails (op missing on this device) is skipped, not fatal
                except Exception as e:
                    print(f"[bench_prefill] {prov} prune R={R} failed: {type(e).__name__}: {e}", file=sys.stderr)
                    continue
                fns[("prune", prov, R)] = fn
        times = interleaved(fns, dev, rounds=rounds, rep_ms=rep_ms)
        for v in [visual, *keeps]:  # fewer layers built: per-layer time x the model's layers
            times[("llm_prefill", v)] = {k: x * scale for k, x in times[("llm_prefill", v)].items()}

        prefill_ms = {v: times[("llm_prefill", v)]["p50_ms"] for v in [visual, *keeps]}
        for v in [visual, *keeps]:
            t, n = times[("llm_prefill", v)], v + text
            macs = prefill_macs(cfg, visual, text, keep=v)
            shape = dict(B=B, visual=v, text=text, tokens=n, hidden=cfg.hidden, intermediate=cfg.intermediate,
                         layers=cfg.layers, heads=cfg.heads, kv_heads=cfg.kv_heads)
            rows.append(make_row(
                "llm_prefill", provider, shape, dt, t, device=dev, model=config, use_cache=use_cache,
                threads=torch.get_num_threads() if dev.type == "cpu" else None,
                macs=macs, tflops=2 * macs * B / 1e12, macs_percent=100.0 * macs / full_macs,
                achieved_tflops=2 * macs * B / 1e12 / (t["p50_ms"] * 1e-3),
                time_ratio=prefill_ms[v] / prefill_ms[visual], speedup=prefill_ms[visual] / prefill_ms[v],
                kv_cache_bytes=kv_cache_bytes(cfg, B, n, dt) if use_cache else 0, weights_bytes=weights_bytes,
                layers_built=built.layers, layer_scale=scale, **mem[v]))
            if on_row is not None:
                on_row(rows[-1])
            print(f"[bench_prefill] prefill B={B} tokens={n}: {t['p50_ms']:.3f} ms", file=sys.stderr)
        for key, t in times.items():
            if key[0] != "prune":
                continue
            _, prov, R = key
            total = t["p50_ms"] + prefill_ms[R]
            shape = dict(B=B * tiles, M=CLIP_M, Dv=CLIP_DV, D=CLIP_D, T=num_texts, R=R // tiles)
            rows.append(make_row(
                "prune", prov, shape, dt, t, device=dev, model=config, images=B, tiles=tiles, visual_kept=R,
                threads=torch.get_num_threads() if dev.type == "cpu" else None,
                prefill_ms_pruned=prefill_ms[R], prefill_ms_full=prefill_ms[visual],
                share_of_pruned_prefill=t["p50_ms"] / total, share_of_full_prefill=t["p50_ms"] / prefill_ms[visual],
                end_to_end_speedup=prefill_ms[visual] / total))
            if on_row is not None:
                on_row(rows[-1])
            print(f"[bench_prefill] prune {prov} B={B} R={R}: {t['p50_ms']:.3f} ms "
                  f"({100 * t['p50_ms'] / total:.2f}% of pruned prefill)", file=sys.stderr)
    return rows


def summary(rows: List[dict]) -> str:
    """A short markdown summary: prefill time vs tokens and pruning's share."""
    out = []
    pre = [r for r in rows if r["op"] == "llm_prefill"]
    if pre:
        out += ["| B | visual | tokens | prefill p50 (ms) | time / full | MACs % of full | TFLOPs | KV cache MB "
                "| peak GB |", "|---|---|---|---|---|---|---|---|---|"]
        for r in pre:
            s = r["shape"]
            kv = r.get("kv_cache_bytes")
            peak = r.get("peak_mem_bytes")
            out.append(f"| {s['B']} | {s['visual']} | {s['tokens']} | {r['p50_ms']:.3f} | {r['time_ratio']:.3f} "
                       f"| {r['macs_percent']:.1f} | {r['tflops']:.3f} | {'' if kv is None else f'{kv / 1e6:.1f}'} "
                       f"| {'' if peak is None else f'{peak / 1e9:.2f}'} |")
    pr = [r for r in rows if r["op"] == "prune"]
    if pr:
        out += ["", "| provider | B | R | prune p50 (ms) | share of (prune + prefill at R) | end-to-end speed-up |",
                "|---|---|---|---|---|---|"]
        for r in pr:
            s = r["shape"]
            out.append(f"| {r['provider']} | {r.get('images', s['B'])} | {r.get('visual_kept', s['R'])} "
                       f"| {r['p50_ms']:.3f} "
                       f"| {100 * r['share_of_pruned_prefill']:.2f}% | {r['end_to_end_speedup']:.2f}x |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_prefill", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--config", default="auto",
                   help="'small' (h 512, 4 layers), a flops preset (vicuna-7b, ...), or 'auto': "
                        "vicuna-7b on cuda, small on cpu")
    p.add_argument("--visual", type=int, default=576)
    p.add_argument("--keep", type=int, nargs="+", default=[192, 128, 64])
    p.add_argument("--text", type=int, default=64)
    p.add_argument("--batch", type=int, nargs="+", default=[1])
    p.add_argument("--texts", type=int, default=1, help="referring expressions per image (T)")
    p.add_argument("--dtype", default=None, help="float16 / bfloat16 / float32 (default fp16 on cuda, fp32 on cpu)")
    p.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    p.add_argument("--no-cache", action="store_true", help="use_cache=False (no KV cache written)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--rep-ms", type=float, default=1000.0,
                   help="CUDA: do_bench time per measurement (a 7B prefill takes tens of ms)")
    p.add_argument("--rounds", type=int, default=15, help="CPU: interleaved rounds (samples per configuration)")
    p.add_argument("--layers", type=int, default=None,
                   help="build only this many decoder layers and scale the times per layer (memory: built model)")
    p.add_argument("--name", default="prefill", help="results file stem: <name>-<device>.json")
    a, out = parse_run_args(p, argv)
    rows = run(a.device, a.config, a.visual, a.keep, a.text, a.batch, a.dtype, a.attn, a.texts,
               not a.no_cache, a.rep_ms, a.rounds, a.layers)
    print(summary(rows))
    if not a.no_write:
        print("wrote", write_rows(rows, a.name, device=a.device, directory=out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
