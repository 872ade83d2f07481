"""Memory of a LLaMA-style decoder's prefill: KV-cache bytes and peak activation bytes.

Pure Python, companion of ``litelvlm_kernels.flops`` (same ``DecoderConfig``).

KV cache (what generation keeps for every prompt token, in every layer)::

    kv_cache_bytes = 2 (K and V) * h_kv * dtype_bytes * sum over layers of the tokens it cached

so ``2 L n h_kv b`` when every layer sees n tokens; with FastV-style pruning
after layer K the first K layers cache n0 tokens and the rest n1. Vicuna-7B in
fp16: 0.5 MiB per token, 0.34 GB at 576 + 64 tokens.

Peak activations (``activation_bytes``): the largest set of tensors alive at
once inside one decoder layer during an inference prefill (no autograd, so
nothing of a layer outlives it but the residual stream; the K/V it writes are
the cache, counted above):

* attention block: residual and normed input (2 n h), q (n h_q), the
  attention output (n h_q), and with ``attention="eager"`` the probabilities
  (heads n^2, in the activation dtype; the fp32 softmax doubles that
  transiently); ``"sdpa"`` (flash / memory-efficient kernels) holds no n^2 matrix;
* MLP block: residual and normed input (2 n h), gate, up and act(gate) * up
  (3 n h_ff), output (n h).

The peak is the larger block. It is not what the LiteLVLM paper reports as
"storing activation" (0.81 / 0.35 / 0.21 GB at 576 / 192 / 64 visual tokens
for LLaVA-1.5-7B): those three values grow by about 1.2 MB per visual token
(2.3x our fp16 KV cache per token) with a fixed part of about 0.12 GB (about
100 text tokens at that rate), a ratio 1 : 0.43 : 0.26 that our KV figure
reproduces with 100 text tokens (1 : 0.43 : 0.24) but whose definition the
paper does not give; we report what we can define.
"""

from __future__ import annotations

from .flops import DecoderConfig, _count

__all__ = ["kv_cache_bytes", "activation_bytes", "prefill_memory"]

ATTENTION = ("sdpa", "eager")


def _tokens(cfg: DecoderConfig, num_visual: int, num_text: int, keep, prune_layer: int):
    """(n0, n1, K): tokens before / after pruning and the layers that see n0 (as flops.prefill_breakdown)."""
    if not isinstance(cfg, DecoderConfig):
        raise TypeError(f"cfg must be a DecoderConfig, got {type(cfg).__name__}")
    n0 = _count("num_visual", num_visual) + _count("num_text", num_text)
    prune_layer = _count("prune_layer", prune_layer)
    if prune_layer > cfg.layers:
        raise ValueError(f"prune_layer must be in [0, {cfg.layers}] (the layers), got {prune_layer}")
    if keep is None:
        return n0, n0, cfg.layers
    return n0, min(_count("keep", keep), num_visual) + num_text, prune_layer


def _dtype_bytes(dtype_bytes) -> int:
    b = _count("dtype_bytes", dtype_bytes)
    if b == 0:
        raise ValueError("dtype_bytes must be > 0 (2 for fp16/bf16, 4 for fp32)")
    return b


def kv_cache_bytes(cfg: DecoderConfig, num_visual: int, num_text: int, *, keep: int | None = None,
                   prune_layer: int = 0, dtype_bytes: int = 2) -> int:
    """Bytes of the KV cache after a prefill of ``num_visual + num_text`` tokens (``keep`` as in flops).

    Parameters
    ----------
    cfg : DecoderConfig
    num_visual, num_text : int
        Tokens before pruning.
    keep : int, optional
        Visual tokens kept (clamped to ``num_visual``); None: no pruning.
    prune_layer : int
        Layers that see every token before pruning (0: pruning before the LLM).
    dtype_bytes : int
        2 for fp16 / bf16, 4 for fp32.

    Returns
    -------
    int

    Examples
    --------
    >>> kv_cache_bytes(DecoderConfig.preset("vicuna-7b"), 576, 64)
    335544320
    """
    n0, n1, k = _tokens(cfg, num_visual, num_text, keep, prune_layer)
    return 2 * cfg.kv_width * _dtype_bytes(dtype_bytes) * (k * n0 + (cfg.layers - k) * n1)


def activation_bytes(cfg: DecoderConfig, num_visual: int, num_text: int, *, keep: int | None = None,
                     prune_layer: int = 0, dtype_bytes: int = 2, attention: str = "sdpa") -> int:
    """Peak bytes alive inside one decoder layer during the prefill (definition in the module docstring).

    Arguments as ``kv_cache_bytes``; ``attention``: "sdpa" (no n x n matrix) or "eager".

    Examples
    --------
    >>> activation_bytes(DecoderConfig.preset("vicuna-7b"), 576, 64)
    57999360
    """
    if attention not in ATTENTION:
        raise ValueError(f"attention must be one of {ATTENTION}, got {attention!r}")
    n0, n1, k = _tokens(cfg, num_visual, num_text, keep, prune_layer)
    n = n0 if k > 0 else n1  # the widest layer
    h = cfg.hidden
    attn = n * (2 * h + 2 * cfg.q_width) + (cfg.heads * n * n if attention == "eager" else 0)
    mlp = n * (3 * h + 3 * cfg.intermediate)
    return _dtype_bytes(dtype_bytes) * max(attn, mlp)


def prefill_memory(cfg: DecoderConfig, num_visual: int, num_text: int, **kw) -> dict:
    """``{"kv_cache_bytes": ..., "activation_bytes": ...}`` (keyword arguments as ``activation_bytes``)."""
    attention = kw.pop("attention", "sdpa")
    return {"kv_cache_bytes": kv_cache_bytes(cfg, num_visual, num_text, **kw),
            "activation_bytes": activation_bytes(cfg, num_visual, num_text, attention=attention, **kw)}
