"""Prefill cost of a LLaMA-style decoder as a function of the tokens it sees.

Pure Python (no torch import): use it to say what pruning visual tokens saves
in the LLM, the part of an LVLM that dominates its prefill cost.

Counting rule (docs/design.md section 7). With ``h`` the hidden size, ``h_ff`` the
MLP's intermediate size, ``d = head_dim`` (``h // heads`` unless the config
gives it), ``h_q = heads * d`` (``= h`` for LLaMA/Vicuna/Qwen2) and
``h_kv = kv_heads * d``, one decoder layer fed ``n`` tokens costs::

    MACs(n) = n * (2 * h * h_q          # q_proj and o_proj
                   + 2 * h * h_kv       # k_proj and v_proj (grouped kv heads)
                   + 3 * h * h_ff)      # gated MLP: gate, up, down
              + 2 * n**2 * h_q          # scores Q K^T and the weighted sum A V

The attention term has no causal halving: that is how
``torch.utils.flop_counter`` counts ``scaled_dot_product_attention`` and what
the eager and math kernels actually compute. Not counted, because they are not
matrix products: embedding lookup, RMSNorm, rotary embedding, softmax, SiLU and
the elementwise product of the MLP, residual adds (all O(n * h), under 0.1% of
the total for 7B shapes).

Pruning: ``keep=None`` feeds ``n0 = num_visual + num_text`` tokens to every
layer. ``keep=R`` keeps ``R' = min(R, num_visual)`` visual tokens, so
``n1 = R' + num_text``; with ``prune_layer=0`` (pruning before the LLM:
LiteLVLM, VisionZip, VisPruner) every layer sees ``n1``; with
``prune_layer=K`` (FastV-style pruning inside the LLM after layer K) layers
``0 .. K-1`` see ``n0`` and layers ``K .. L-1`` see ``n1``::

    prefill_macs = K * MACs(n0) + (L - K) * MACs(n1) [+ lm_head]

``include_lm_head``: the LM head is a ``h x vocab`` matrix product.
``True`` / ``"all"`` counts ``n_last * h * vocab`` (a plain forward of a
Hugging Face ``*ForCausalLM`` computes logits for every position);
``"last"`` counts ``h * vocab`` (``generate()`` passes ``logits_to_keep=1`` for
the prefill, so only the last position's logits are computed). ``n_last`` is the
token count after pruning. FLOPs = 2 x MACs (``prefill_flops``).

CLI::

    python -m litelvlm_kernels.flops --model vicuna-7b --visual 576 \\
        --keep 192 128 64 --text 64 [--prune-layer K] [--lm-head all|last] [--json]
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Any, Mapping

__all__ = [
    "DecoderConfig",
    "PRESETS",
    "layer_macs",
    "prefill_macs",
    "prefill_flops",
    "prefill_breakdown",
    "main",
]


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """Shapes of a LLaMA-style decoder (gated MLP, grouped-query attention).

    ``head_dim=None`` means ``hidden // heads``.
    """

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    head_dim: int | None = None

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v is None and f.name == "head_dim":
                continue
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"DecoderConfig.{f.name} must be an int, got {v!r}")
            if v <= 0:
                raise ValueError(f"DecoderConfig.{f.name} must be positive, got {v}")
        if self.head_dim is None and self.hidden % self.heads:
            raise ValueError(
                f"DecoderConfig.hidden ({self.hidden}) is not divisible by heads "
                f"({self.heads}); give head_dim"
            )
        if self.heads % self.kv_heads:
            raise ValueError(
                f"DecoderConfig.heads ({self.heads}) is not a multiple of kv_heads ({self.kv_heads})"
            )

    @property
    def dim_head(self) -> int:
        """Per-head width: ``head_dim`` if given, else ``hidden // heads``."""
        return self.head_dim if self.head_dim is not None else self.hidden // self.heads

    @property
    def q_width(self) -> int:
        """``heads * head_dim``: output width of q_proj (input width of o_proj)."""
        return self.heads * self.dim_head

    @property
    def kv_width(self) -> int:
        """``kv_heads * head_dim``: output width of k_proj and of v_proj."""
        return self.kv_heads * self.dim_head

    @classmethod
    def preset(cls, name: str) -> "DecoderConfig":
        """A named preset (see ``PRESETS``); case-insensitive."""
        key = name.lower()
        if key not in PRESETS:
            raise ValueError(
                f"unknown model preset {name!r}; choose one of: {', '.join(sorted(PRESETS))}"
            )
        return PRESETS[key]

    @classmethod
    def from_hf(cls, config: Any) -> "DecoderConfig":
        """From a Hugging Face config (object or ``config.json`` dict).

        Reads ``hidden_size``, ``intermediate_size``, ``num_hidden_layers``,
        ``num_attention_heads``, ``num_key_value_heads`` (default: the heads),
        ``vocab_size`` and ``head_dim`` when present. A multimodal config
        (LLaVA & co.) is read through its ``text_config``.
        """

        def get(obj: Any, key: str, default: Any = None) -> Any:
            if isinstance(obj, Mapping):
                return obj.get(key, default)
            return getattr(obj, key, default)

        required = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
        text = get(config, "text_config")
        # PaliGemma's config also has a top-level hidden_size (the projector's width), but no decoder shape
        if text is not None and any(get(config, k) is None for k in required):
            config = text
        missing = [k for k in required if get(config, k) is None]
        if missing:
            raise ValueError(f"config lacks {', '.join(missing)}: not a LLaMA-style decoder config")
        heads = int(get(config, "num_attention_heads"))
        kv = get(config, "num_key_value_heads")
        head_dim = get(config, "head_dim")
        hidden = int(get(config, "hidden_size"))
        if head_dim is not None:
            head_dim = int(head_dim)
            if head_dim * heads == hidden:
                head_dim = None  # the default: keep presets and from_hf equal
        return cls(
            hidden=hidden,
            intermediate=int(get(config, "intermediate_size")),
            layers=int(get(config, "num_hidden_layers")),
            heads=heads,
            kv_heads=int(kv) if kv is not None else heads,
            vocab=int(get(config, "vocab_size")),
            head_dim=head_dim,
        )


_LLAMA_7B = DecoderConfig(4096, 11008, 32, 32, 32, 32000)
_LLAMA_13B = DecoderConfig(5120, 13824, 40, 40, 40, 32000)

#: Named decoder shapes (from each model's config.json).
PRESETS: dict[str, DecoderConfig] = {
    "llama-7b": _LLAMA_7B,
    "llama2-7b": _LLAMA_7B,
    "vicuna-7b": _LLAMA_7B,  # LLaVA-1.5-7B, GLaMM
    "llama-13b": _LLAMA_13B,
    "llama2-13b": _LLAMA_13B,
    "vicuna-13b": _LLAMA_13B,  # LLaVA-1.5-13B
    "llama3-8b": DecoderConfig(4096, 14336, 32, 32, 8, 128256),
    "mistral-7b": DecoderConfig(4096, 14336, 32, 32, 8, 32000),  # v0.1/v0.2 (LLaVA-NeXT)
    "qwen2-7b": DecoderConfig(3584, 18944, 28, 28, 4, 152064),
    "qwen2-0.5b": DecoderConfig(896, 4864, 24, 14, 2, 151936),
    "gemma-2b": DecoderConfig(2048, 16384, 18, 8, 1, 257216),  # PaliGemma-3B (head_dim 256 = 2048 / 8)
}


def _count(name: str, value: Any) -> int:
    """A non-negative int argument; ValueError / TypeError name the argument."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None
    if v < 0:
        raise ValueError(f"{name} must be >= 0, got {v}")
    return v


def layer_macs(cfg: DecoderConfig, n: int) -> int:
    """MACs of one decoder layer fed ``n`` tokens (formula in the module docstring)."""
    n = _count("n", n)
    h = cfg.hidden
    linear = 2 * h * cfg.q_width + 2 * h * cfg.kv_width + 3 * h * cfg.intermediate
    return n * linear + 2 * n * n * cfg.q_width


def _lm_head_mode(include_lm_head: bool | str) -> str:
    if include_lm_head is False or include_lm_head is None:
        return "none"
    if include_lm_head is True:
        return "all"
    if isinstance(include_lm_head, str) and include_lm_head in ("none", "all", "last"):
        return include_lm_head
    raise ValueError(
        f"include_lm_head must be a bool or one of 'none', 'all', 'last', got {include_lm_head!r}"
    )


def prefill_breakdown(
    cfg: DecoderConfig,
    num_visual: int,
    num_text: int,
    *,
    keep: int | None = None,
    prune_layer: int = 0,
    include_lm_head: bool | str = False,
) -> dict[str, int]:
    """Components of :func:`prefill_macs`; its keyword options (``keep``, ``prune_layer``,
    ``include_lm_head``) are this function's keyword-only arguments.

    Keys: ``tokens_full`` (n0), ``tokens_kept`` (n1, = n0 without pruning),
    ``layers_full`` (K, or L without pruning), ``layers_pruned``,
    ``projections``, ``attention``, ``mlp``, ``lm_head``, ``total``.
    """
    if not isinstance(cfg, DecoderConfig):
        raise TypeError(f"cfg must be a DecoderConfig, got {type(cfg).__name__}")
    num_visual = _count("num_visual", num_visual)
    num_text = _count("num_text", num_text)
    prune_layer = _count("prune_layer", prune_layer)
    if prune_layer > cfg.layers:
        raise ValueError(f"prune_layer must be in [0, {cfg.layers}] (the layers), got {prune_layer}")
    mode = _lm_head_mode(include_lm_head)
    n0 = num_visual + num_text
    if keep is None:
        n1, k_full = n0, cfg.layers
    else:
        n1 = min(_count("keep", keep), num_visual) + num_text
        k_full = prune_layer
    k_pruned = cfg.layers - k_full

    h = cfg.hidden
    proj = 2 * h * cfg.q_width + 2 * h * cfg.kv_width
    mlp = 3 * h * cfg.intermediate
    out = {
        "tokens_full": n0,
        "tokens_kept": n1,
        "layers_full": k_full,
        "layers_pruned": k_pruned,
        "projections": (k_full * n0 + k_pruned * n1) * proj,
        "attention": (k_full * n0 * n0 + k_pruned * n1 * n1) * 2 * cfg.q_width,
        "mlp": (k_full * n0 + k_pruned * n1) * mlp,
        "lm_head": {"none": 0, "all": n1 * h * cfg.vocab, "last": min(n1, 1) * h * cfg.vocab}[mode],
    }
    out["total"] = out["projections"] + out["attention"] + out["mlp"] + out["lm_head"]
    return out


def prefill_macs(cfg: DecoderConfig, num_visual: int, num_text: int, **options) -> int:
    """Multiply-accumulates of a decoder prefill over ``num_visual + num_text`` tokens.

    Per layer fed ``n`` tokens (``h_q = heads * head_dim = h`` for LLaMA,
    ``h_kv = kv_heads * head_dim``)::

        n * (2 h h_q + 2 h h_kv + 3 h h_ff) + 2 n^2 h_q

    summed over layers: ``K`` layers at ``n0 = num_visual + num_text`` and
    ``L - K`` at ``n1 = min(keep, num_visual) + num_text``, where ``K =
    prune_layer`` (``keep=None``: all ``L`` layers at ``n0``). ``keep`` larger
    than ``num_visual`` is clamped to it. LM head: ``include_lm_head=True`` or
    ``"all"`` adds ``n1 h vocab``, ``"last"`` adds ``h vocab``.

    Raises ValueError for negative ``num_visual``, ``num_text`` or ``keep`` and for
    ``prune_layer`` outside ``[0, cfg.layers]``.

    >>> prefill_macs(DecoderConfig.preset("vicuna-7b"), 576, 64)
    4252017623040
    """
    return prefill_breakdown(cfg, num_visual, num_text, **options)["total"]


def prefill_flops(cfg: DecoderConfig, num_visual: int, num_text: int, **options) -> int:
    """``2 * prefill_macs(...)`` (one multiply-accumulate = two FLOPs); same keyword options."""
    return 2 * prefill_macs(cfg, num_visual, num_text, **options)
