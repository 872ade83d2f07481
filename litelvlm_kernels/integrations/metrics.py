"""What a LiteLVLM-enabled LVLM saves on given inputs: tokens, prefill FLOPs, KV cache, time, peak memory.

Counts come from the run itself (the placeholder runs before and after
shrinking, per prompt); FLOPs and KV bytes from ``litelvlm_kernels.flops`` /
``litelvlm_kernels.memory`` on the model's own text config, summed over the
prompts (each prompt is its own sequence; padding is not counted). Time is
the wall time of full forwards (vision tower, selection, LLM prefill) of the
stock and the enabled model, timed in interleaved rounds (``litelvlm_kernels.timing``):
the median with its p20-p80 spread, and the time ratio flagged when the two
intervals overlap (noise could flip it). Peak memory is measured on CUDA only
(``torch.cuda.max_memory_allocated`` above the memory held before the call,
one untimed forward per side), None on the CPU.
"""

from __future__ import annotations

import torch

from ..flops import DecoderConfig, prefill_flops
from ..memory import kv_cache_bytes
from ..timing import format_ratio, interleaved

__all__ = ["prefill_metrics", "format_metrics"]


def _peak_bytes(fn, device: torch.device):
    """Peak CUDA memory one call of ``fn`` allocates above what was held before it; None off CUDA."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def prefill_metrics(model, inputs: dict, referring_expressions=None, *, repeat: int = 5,
                    dtype_bytes: int | None = None) -> dict:
    """Stock vs pruned prefill of ``model`` (LiteLVLM enabled on it) on ``inputs``.

    Parameters
    ----------
    model : transformers model
        With ``enable_litelvlm`` applied.
    inputs : dict
        What its processor returns (input_ids, attention_mask, pixel_values, ...).
    referring_expressions : list
        One str / list of str per prompt, as for ``model.generate``.
    repeat : int
        Interleaved rounds (one timed forward per side each), after one warm-up; at least
        ``timing.MIN_ROUNDS`` (3) for a spread that says whether the time ratio is noise.
    dtype_bytes : int, optional
        Bytes per KV element (default: the LLM's parameter dtype).

    Returns
    -------
    dict
        ``{"stock": {...}, "pruned": {...}}``, each with ``visual_tokens`` and ``tokens`` (summed over
        prompts), ``prefill_flops``, ``kv_cache_bytes``, ``prefill_ms`` (the median), ``prefill_time`` (a
        ``timing.Timing``: median, p20, p80, rounds), ``peak_memory_bytes``.

    Examples
    --------
    >>> with enable_litelvlm(llava, clip, tok, num_retain=64):                       # doctest: +SKIP
    ...     print(format_metrics(prefill_metrics(llava, inputs, [["the red car"]])))
    """
    patch = getattr(model, "_litelvlm_patch", None)
    if patch is None:
        raise ValueError("model: enable LiteLVLM on it first (enable_litelvlm)")
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat <= 0:
        raise ValueError(f"repeat must be an int > 0, got {repeat!r}")
    cfg = DecoderConfig.from_hf(model.config)
    param = next(model.parameters())
    b = dtype_bytes or param.element_size()
    out = {}
    sides = {"stock": lambda: patch._orig_forward(**inputs),
             "kept": lambda: model(**inputs, referring_expressions=referring_expressions)}
    with torch.no_grad():
        times = interleaved(sides, rounds=repeat, device=param.device)
        peaks = {k: _peak_bytes(fn, param.device) for k, fn in sides.items()}
    rows = patch.last_report["rows"]  # of the last pruned call (the stock forward leaves last_report alone)
    for side in ("stock", "kept"):
        timing, peak = times[side], peaks[side]
        vis, tok = rows[f"visual_{side}"], rows[f"tokens_{side}"]
        out["stock" if side == "stock" else "pruned"] = {
            "visual_tokens": sum(vis), "tokens": sum(tok),
            "prefill_flops": sum(prefill_flops(cfg, v, t - v) for v, t in zip(vis, tok)),
            "kv_cache_bytes": sum(kv_cache_bytes(cfg, v, t - v, dtype_bytes=b) for v, t in zip(vis, tok)),
            "prefill_ms": timing.p50_ms, "prefill_time": timing, "peak_memory_bytes": peak,
        }
    return out


def format_metrics(m: dict) -> str:
    """A small before / after table of ``prefill_metrics``; times as "median (p20-p80)", the time ratio
    followed by "(within noise)" when the intervals overlap (or "(too few rounds)")."""
    s, p = m["stock"], m["pruned"]

    def peak(x):
        return "n/a (CPU)" if x is None else f"{x / 1e6:.1f} MB"

    lines = [("", "stock", "LiteLVLM", "ratio"),
             ("visual tokens", str(s["visual_tokens"]), str(p["visual_tokens"]),
              f"{p['visual_tokens'] / max(s['visual_tokens'], 1):.3f}"),
             ("LLM tokens", str(s["tokens"]), str(p["tokens"]), f"{p['tokens'] / max(s['tokens'], 1):.3f}"),
             ("prefill FLOPs", f"{s['prefill_flops']:.3e}", f"{p['prefill_flops']:.3e}",
              f"{p['prefill_flops'] / max(s['prefill_flops'], 1):.3f}"),
             ("KV cache", f"{s['kv_cache_bytes'] / 1e3:.1f} kB", f"{p['kv_cache_bytes'] / 1e3:.1f} kB",
              f"{p['kv_cache_bytes'] / max(s['kv_cache_bytes'], 1):.3f}"),
             ("prefill time", str(s["prefill_time"]), str(p["prefill_time"]),
              format_ratio(p["prefill_time"], s["prefill_time"], ".3f")),
             ("peak memory", peak(s["peak_memory_bytes"]), peak(p["peak_memory_bytes"]), "")]
    w = [max(len(r[i]) for r in lines) for i in range(4)]
    return "\n".join("  ".join(c.rjust(w[i]) if i else c.ljust(w[i]) for i, c in enumerate(r)) for r in lines)
