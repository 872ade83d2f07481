"""LiteLVLM pruning on stock Hugging Face ``transformers`` CLIP towers.

No model surgery and no attention maps: forward hooks on the vision tower
capture what the method needs, so any attention implementation works (sdpa,
flash attention, eager)::

    hidden   hidden_states[select_layer]        (default -2: the INPUT of the
                                                 last layer, no post-layernorm)
    q_cls    last layer self_attn.q_proj output, [CLS] row
    keys     last layer self_attn.k_proj output, patch rows
    values   last layer self_attn.v_proj output, patch rows

plus the tower's post_layernorm (weight, bias, eps) and visual projection, and
the text tower's [EOS] embeddings after its text projection (``text_embeds``).
Every tensor handed to the ops excludes [CLS] (DESIGN.md section 1): Hugging
Face gives M + 1 rows with [CLS] first, we slice ``[:, 1:]``.

Quick start::

    from transformers import CLIPModel, CLIPTokenizer
    from litelvlm_kernels.integrations.hf import LiteLVLMPruner

    clip = CLIPModel.from_pretrained("openai/clip-vit-large-patch14-336")
    tok = CLIPTokenizer.from_pretrained("openai/clip-vit-large-patch14-336")
    pruner = LiteLVLMPruner(clip, tokenizer=tok)           # select_layer=-2
    out = pruner.prune(pixel_values, texts=["the man on the left"], num_retain=192)
    out.tokens   # [B, 192, 1024] kept select-layer tokens -> LLaVA projector

Text grouping (``texts_per_image`` / ``share_text_across``):

* one group of texts (the default) applies to every row: a single image, or
  the F frames of a video (text batch Bt = 1, broadcast by the ops);
* ``texts=[["a", "b"], ["c"]]`` or ``texts_per_image=[2, 1]`` gives each image
  its own texts; the groups are padded to T = max count and ``num_texts``
  tells the ops how many are real;
* G groups for B = G * F rows (F frames or tiles per image): each group is
  shared by F consecutive rows (``share_text_across=F``, inferred when G
  divides B).

The folded text (``fold_text``: w = gamma * W_p^T e, b = beta . W_p^T e) is
cached per text content and tower weights, so repeated calls with the same
texts (every frame of a video, every turn of a chat) skip the text tower and
the folding. ``prepare_text`` returns the cached object explicitly.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, Optional, Sequence, Union

import torch

try:
    import transformers  # noqa: F401  (the adapter is written against its CLIP classes)
except ImportError as exc:  # pragma: no cover - exercised only without transformers
    raise ImportError(
        "litelvlm_kernels.integrations.hf needs Hugging Face transformers. "
        "Install the optional extra: pip install \"litelvlm_kernels[hf]\" "
        "(or: pip install transformers)."
    ) from exc

__all__ = [
    "LiteLVLMPruner",
    "VisionCapture",
    "TextCondition",
    "HFPruneResult",
    "capture_vision",
    "encode_text",
    "vision_tower",
    "text_tower",
]


# --------------------------------------------------------------------------
# Locating the parts of a CLIP model
# --------------------------------------------------------------------------

def vision_tower(model: torch.nn.Module) -> torch.nn.Module:
    """The module holding ``embeddings, pre_layrnorm, encoder, post_layernorm``.

    Accepts CLIPModel, CLIPVisionModelWithProjection, CLIPVisionModel (in
    transformers 4.x its ``.vision_model`` is a CLIPVisionTransformer; in 5.x it
    holds the layers itself) or the tower.
    """
    m = model
    for _ in range(3):
        if hasattr(m, "encoder") and hasattr(m, "post_layernorm") and hasattr(m, "embeddings"):
            return m
        if not hasattr(m, "vision_model"):
            break
        m = m.vision_model
    raise TypeError(
        f"vision_model: expected a Hugging Face CLIP vision model (CLIPModel, "
        f"CLIPVisionModelWithProjection, CLIPVisionModel), got {type(model).__name__}"
    )


def text_tower(model: torch.nn.Module) -> torch.nn.Module:
    """The CLIP text transformer (``embeddings, encoder, final_layer_norm``)."""
    m = model
    for _ in range(3):
        if hasattr(m, "encoder") and hasattr(m, "final_layer_norm") and hasattr(m, "embeddings"):
            return m
        if not hasattr(m, "text_model"):
            break
        m = m.text_model
    raise TypeError(
        f"text_model: expected a Hugging Face CLIP text model (CLIPModel, "
        f"CLIPTextModelWithProjection), got {type(model).__name__}"
    )


def _projection_weight(proj: Any, name: str) -> torch.Tensor:
    if isinstance(proj, torch.nn.Linear):
        if proj.bias is not None:
            raise ValueError(f"{name}: CLIP's projection has no bias; got an nn.Linear with one")
        return proj.weight
    if isinstance(proj, torch.Tensor):
        if proj.dim() != 2:
            raise ValueError(f"{name}: expected a [P, D] weight, got shape {tuple(proj.shape)}")
        return proj
    raise TypeError(f"{name}: expected nn.Linear or a [P, D] tensor, got {type(proj).__name__}")


def _version(t: torch.Tensor) -> int:
    try:
        return t._version
    except RuntimeError:  # inference tensors have no version counter (and cannot be updated in place)
        return -1


def _layer_output(out: Any) -> torch.Tensor:
    # transformers 5 layers return a tensor, 4.x a tuple (hidden_states, [attn]).
    return out[0] if isinstance(out, (tuple, list)) else out


# --------------------------------------------------------------------------
# Vision capture
# --------------------------------------------------------------------------

@dataclasses.dataclass
class VisionCapture:
    """What the method reads from one vision forward. Patch rows only (no [CLS]).

    hidden [B, M, Dv] (select layer), q_cls [B, D], keys / values [B, M, D]
    (last layer q/k/v projections), cls_hidden [B, Dv] (the select layer's [CLS]
    row, for LLaVA's "cls_patch" feature mode).
    """

    hidden: torch.Tensor
    q_cls: torch.Tensor
    keys: torch.Tensor
    values: torch.Tensor
    cls_hidden: torch.Tensor


class _CaptureDone(Exception):
    """Raised from a hook to skip the rest of the tower once everything is captured."""


def _normalise_layer(select_layer: int, num_layers: int) -> int:
    """hidden_states index in [0, L]: 0 = embeddings after pre_layrnorm, i = output of layer i-1."""
    if not isinstance(select_layer, int) or isinstance(select_layer, bool):
        raise TypeError(f"select_layer: expected an int, got {type(select_layer).__name__}")
    idx = select_layer + num_layers + 1 if select_layer < 0 else select_layer
    if not 0 <= idx <= num_layers:
        raise ValueError(
            f"select_layer={select_layer} is outside hidden_states of a {num_layers}-layer tower "
            f"(valid: {-(num_layers + 1)} .. {num_layers})"
        )
    return idx


def capture_vision(vision_model: torch.nn.Module, pixel_values: torch.Tensor, *,
                   select_layer: int = -2, stop_early: bool = True,
                   **forward_kwargs) -> VisionCapture:
    """Run the vision tower once and capture the method's inputs with forward hooks.

    ``hidden_states[select_layer]`` follows Hugging Face's numbering (index 0 =
    embeddings after pre_layrnorm, index i = output of layer i - 1, so -2 is the
    input of the last layer). q/k/v always come from the LAST layer.

    ``stop_early``: once the last layer's v_proj has run (and the select layer
    is not the last one) the rest of the tower (last attention, MLP,
    post-layernorm, projection) is skipped: nothing of it is used. Outputs are
    identical either way.
    """
    tower = vision_tower(vision_model)
    layers = tower.encoder.layers
    L = len(layers)
    idx = _normalise_layer(select_layer, L)
    attn = layers[-1].self_attn
    got: dict = {}
    need = ("hidden", "q", "k", "v")
    can_stop = stop_early and idx < L  # idx == L needs the last layer's output

    def keep(name, transform):
        def hook(module, args, output):
            got[name] = transform(output)
            if can_stop and all(n in got for n in need):
                raise _CaptureDone
        return hook

    hidden_module = tower.pre_layrnorm if idx == 0 else layers[idx - 1]
    handles = [
        hidden_module.register_forward_hook(keep("hidden", _layer_output)),
        attn.q_proj.register_forward_hook(keep("q", lambda o: o[:, 0])),
        attn.k_proj.register_forward_hook(keep("k", lambda o: o[:, 1:])),
        attn.v_proj.register_forward_hook(keep("v", lambda o: o[:, 1:])),
    ]
    try:
        tower(pixel_values=pixel_values, **forward_kwargs)
    except _CaptureDone:
        pass
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in need if n not in got]
    if missing:  # pragma: no cover - a model whose forward skips these modules
        raise RuntimeError(f"capture_vision: hooks did not fire for {missing}; is this a CLIP tower?")
    h = got["hidden"]
    return VisionCapture(hidden=h[:, 1:], q_cls=got["q"], keys=got["k"], values=got["v"], cls_hidden=h[:, 0])


# --------------------------------------------------------------------------
# Text side
# --------------------------------------------------------------------------

def encode_text(text_model: torch.nn.Module, input_ids: torch.Tensor,
                attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """[EOS] embeddings after the text projection: ``text_embeds`` [N, P].

    Works for CLIPTextModelWithProjection and CLIPModel (both hold
    ``text_model`` and ``text_projection``). The text tower pools at the first
    ``eos_token_id`` of each row, so every row needs one (tokenizers add it).
    """
    tower = text_tower(text_model)
    if not hasattr(text_model, "text_projection"):
        raise TypeError(
            f"text_model: {type(text_model).__name__} has no text_projection; pass a "
            "CLIPTextModelWithProjection or a CLIPModel"
        )
    out = tower(input_ids=input_ids, attention_mask=attention_mask)
    pooled = out.pooler_output if hasattr(out, "pooler_output") else out[1]
    return text_model.text_projection(pooled)


@dataclasses.dataclass
class TextCondition:
    """Texts grouped per image and folded once (reuse it across calls and frames).

    text_embeds [G, T, P] (padding rows are zeros), num_texts [G] int64 (real
    texts per group), folded: ``litelvlm_kernels.FoldedText`` with w [G, T, Dv]
    and b [G, T]. G = 1 means one group shared by every row.
    """

    text_embeds: torch.Tensor
    num_texts: torch.Tensor
    folded: Any

    @property
    def num_groups(self) -> int:
        return self.text_embeds.shape[0]


def _group_counts(n: int, texts_per_image) -> list:
    if texts_per_image is None:
        return [n]
    if isinstance(texts_per_image, int):
        if texts_per_image <= 0 or n % texts_per_image:
            raise ValueError(f"texts_per_image={texts_per_image} does not divide the {n} texts")
        return [texts_per_image] * (n // texts_per_image)
    if isinstance(texts_per_image, torch.Tensor):
        texts_per_image = texts_per_image.tolist()
    counts = [int(c) for c in texts_per_image]
    if any(c < 0 for c in counts) or sum(counts) != n:
        raise ValueError(f"texts_per_image={counts} must be >= 0 and sum to the {n} texts")
    if not counts:
        raise ValueError("texts_per_image: need at least one group")
    return counts


def _pad_groups(flat: torch.Tensor, counts: list) -> torch.Tensor:
    """[N, P] -> [G, max(counts), P], zero padding after each group's texts."""
    G, T = len(counts), max(counts)
    out = flat.new_zeros(G, T, flat.shape[-1])
    start = 0
    for g, c in enumerate(counts):
        out[g, :c] = flat[start:start + c]
        start += c
    return out


def _expand_folded(folded, rows_per_group: int):
    """Repeat each group's (w, b) for its rows (G < B < ... tiles/frames per image)."""
    w = folded.w.repeat_interleave(rows_per_group, dim=0)
    b = folded.b.repeat_interleave(rows_per_group, dim=0)
    if hasattr(folded, "_replace"):
        return folded._replace(w=w, b=b)
    return dataclasses.replace(folded, w=w, b=b)


# --------------------------------------------------------------------------
# The pruner
# --------------------------------------------------------------------------

@dataclasses.dataclass
class HFPruneResult:
    """indices [B, R'] int64 (into the M patch tokens), tokens [B, R', Dv] (kept
    select-layer tokens, or None with return_tokens=False), num_similarity [B]
    int32, from_similarity [B, R'] bool, the TextCondition used and, with
    ``return_capture=True``, the VisionCapture."""

    indices: torch.Tensor
    tokens: Optional[torch.Tensor]
    num_similarity: torch.Tensor
    from_similarity: torch.Tensor
    text: Optional[TextCondition] = None
    capture: Optional[VisionCapture] = None


TextsArg = Union[str, Sequence[str], Sequence[Sequence[str]]]


class LiteLVLMPruner:
    """Text-guided visual token pruning for a Hugging Face CLIP vision tower.

    vision_model: CLIPModel, CLIPVisionModelWithProjection, or CLIPVisionModel
        with ``visual_projection=`` (LLaVA loads CLIPVisionModel, which has no
        projection: take it from the CLIPModel / CLIPVisionModelWithProjection
        of the same checkpoint).
    text_model: CLIPModel or CLIPTextModelWithProjection; defaults to
        ``vision_model`` when that is a CLIPModel. May be None if you always
        pass ``text_embeds`` / a TextCondition.
    tokenizer: a CLIP tokenizer, needed only for ``texts=`` (strings).
    select_layer: Hugging Face ``hidden_states`` index of the tokens that are
        scored and kept (LLaVA: -2).
    stop_early: skip the unused tail of the vision tower (see capture_vision).
    cache_size: number of folded text conditions kept (0 disables the cache).
    """

    def __init__(self, vision_model: torch.nn.Module, text_model: Optional[torch.nn.Module] = None,
                 tokenizer: Any = None, *, select_layer: int = -2, visual_projection: Any = None,
                 stop_early: bool = True, cache_size: int = 64):
        self.vision_model = vision_model
        self.tower = vision_tower(vision_model)
        if text_model is None and hasattr(vision_model, "text_model") and hasattr(vision_model, "text_projection"):
            text_model = vision_model
        self.text_model = text_model
        if text_model is not None:
            text_tower(text_model)  # type check now, not at the first call
        self.tokenizer = tokenizer
        self.select_layer = select_layer
        _normalise_layer(select_layer, len(self.tower.encoder.layers))
        if visual_projection is None:
            visual_projection = getattr(vision_model, "visual_projection", None)
        if visual_projection is None:
            raise ValueError(
                f"visual_projection: {type(vision_model).__name__} has no visual_projection; pass "
                "visual_projection= (the nn.Linear or [P, Dv] weight of CLIPModel / "
                "CLIPVisionModelWithProjection for the same checkpoint)"
            )
        _projection_weight(visual_projection, "visual_projection")  # type check now
        self._visual_projection = visual_projection
        self.stop_early = stop_early
        self.cache_size = cache_size
        self._cache: "collections.OrderedDict[Any, TextCondition]" = collections.OrderedDict()

    # Read through the modules at every use, so .to(), .half() or
    # load_state_dict(assign=True) after construction are seen.
    @property
    def proj_weight(self) -> torch.Tensor:
        """[P, Dv] visual projection weight."""
        return _projection_weight(self._visual_projection, "visual_projection")

    @property
    def ln_weight(self) -> torch.Tensor:
        return self.tower.post_layernorm.weight

    @property
    def ln_bias(self) -> torch.Tensor:
        return self.tower.post_layernorm.bias

    @property
    def ln_eps(self) -> float:
        return float(self.tower.post_layernorm.eps)

    # ---- text ---------------------------------------------------------------

    def clear_cache(self) -> None:
        self._cache.clear()

    def _weights_key(self):
        # _version moves on every in-place update (load_state_dict, optimizer
        # steps), so a cached fold never outlives the weights it was folded from.
        ws = [self.proj_weight, self.ln_weight, self.ln_bias]
        if self.text_model is not None:
            ws += list(self.text_model.parameters())
        return tuple((id(w), _version(w), w.device, w.dtype) for w in ws)

    def _tokenize(self, texts: Sequence[str]):
        if self.tokenizer is None:
            raise ValueError("texts: strings need a tokenizer; pass tokenizer= or input_ids=")
        max_len = getattr(text_tower(self.text_model).config, "max_position_embeddings", None)
        enc = self.tokenizer(list(texts), padding=True, truncation=max_len is not None,
                             max_length=max_len, return_tensors="pt")
        return enc["input_ids"], enc.get("attention_mask")

    def _text_device(self):
        return next(self.text_model.parameters()).device

    def prepare_text(self, input_ids: Optional[torch.Tensor] = None, attention_mask: Optional[torch.Tensor] = None,
                     texts: Optional[TextsArg] = None, *, text_embeds: Optional[torch.Tensor] = None,
                     texts_per_image: Any = None) -> TextCondition:
        """Encode, group, pad and fold texts once. Cached for ``texts`` and ``input_ids``.

        Exactly one of ``texts`` (str, list of str, or list of lists of str: one
        list per image), ``input_ids`` [N, L] (with ``attention_mask``) or
        ``text_embeds`` ([N, P], or [G, T, P] already grouped with every slot
        real). ``texts_per_image``: None (one group), an int (groups of that
        size) or one count per group; ignored for nested ``texts``.
        """
        from .. import fold_text

        given = sum(x is not None for x in (input_ids, texts, text_embeds))
        if given != 1:
            raise ValueError("prepare_text: pass exactly one of texts, input_ids, text_embeds")
        key = None
        if texts is not None:
            if isinstance(texts, str):
                texts = [texts]
            texts = list(texts)
            if texts and not isinstance(texts[0], str):
                nested = [list(g) for g in texts]
                counts = [len(g) for g in nested]
                flat_texts = [t for g in nested for t in g]
            else:
                flat_texts = texts
                counts = _group_counts(len(texts), texts_per_image)
            key = ("texts", tuple(flat_texts), tuple(counts))
        elif input_ids is not None:
            if input_ids.dim() != 2:
                raise ValueError(f"input_ids: expected [N, L], got shape {tuple(input_ids.shape)}")
            counts = _group_counts(input_ids.shape[0], texts_per_image)
            mask_key = None if attention_mask is None else tuple(attention_mask.flatten().tolist())
            key = ("ids", tuple(input_ids.shape), tuple(input_ids.flatten().tolist()), mask_key, tuple(counts))
        if key is not None and self.cache_size > 0:
            key = key + (self._weights_key(),)
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit

        if text_embeds is not None:
            if text_embeds.dim() == 3:
                grouped = text_embeds
                num = torch.full((grouped.shape[0],), grouped.shape[1], dtype=torch.int64)
            elif text_embeds.dim() == 2:
                counts = _group_counts(text_embeds.shape[0], texts_per_image)
                grouped = _pad_groups(text_embeds, counts)
                num = torch.tensor(counts, dtype=torch.int64)
            else:
                raise ValueError(f"text_embeds: expected [N, P] or [G, T, P], got shape {tuple(text_embeds.shape)}")
        else:
            if self.text_model is None:
                raise ValueError("text_model: needed to encode texts / input_ids (or pass text_embeds=)")
            if texts is not None:
                if flat_texts:
                    input_ids, attention_mask = self._tokenize(flat_texts)
                else:
                    input_ids = None
            if input_ids is not None and input_ids.shape[0] > 0:
                dev = self._text_device()
                with torch.no_grad():
                    flat = encode_text(self.text_model, input_ids.to(dev),
                                       None if attention_mask is None else attention_mask.to(dev))
            else:  # no texts at all: T = 0, pure context selection
                flat = self.proj_weight.new_zeros(0, self.proj_weight.shape[0])
            grouped = _pad_groups(flat, counts) if max(counts) > 0 else flat.new_zeros(len(counts), 0, flat.shape[-1])
            num = torch.tensor(counts, dtype=torch.int64)

        dev = self.proj_weight.device
        grouped = grouped.detach().to(dev)
        folded = fold_text(grouped, self.proj_weight.detach(), self.ln_weight.detach(), self.ln_bias.detach())
        cond = TextCondition(text_embeds=grouped, num_texts=num.to(dev), folded=folded)
        if key is not None and self.cache_size > 0:
            self._cache[key] = cond
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return cond

    # ---- vision -------------------------------------------------------------

    def capture(self, pixel_values: torch.Tensor, **forward_kwargs) -> VisionCapture:
        """Hooked vision forward (see ``capture_vision``)."""
        return capture_vision(self.vision_model, pixel_values, select_layer=self.select_layer,
                              stop_early=self.stop_early, **forward_kwargs)

    # ---- both ---------------------------------------------------------------

    def _text_for_rows(self, cond: TextCondition, B: int, share_text_across: Optional[int]):
        """(text, num_texts) arguments of litelvlm_kernels.prune for B rows."""
        G = cond.num_groups
        if share_text_across is None:
            if B % G:
                raise ValueError(
                    f"texts: {G} text groups cannot be spread over {B} image rows; pass "
                    "texts_per_image so the groups match the images, or share_text_across="
                )
            share_text_across = B // G
        elif G * share_text_across != B:
            raise ValueError(f"share_text_across={share_text_across} x {G} text groups != {B} image rows")
        if G == 1:
            # One group for every row: Bt = 1 broadcast (video frames share the text),
            # no per-row counts needed unless the group is padded (it never is).
            return cond.folded, None
        folded, num = cond.folded, cond.num_texts
        if share_text_across > 1:
            folded = _expand_folded(folded, share_text_across)
            num = num.repeat_interleave(share_text_across)
        return folded, num

    def prune(self, pixel_values: torch.Tensor, input_ids: Optional[torch.Tensor] = None,
              attention_mask: Optional[torch.Tensor] = None, texts: Optional[TextsArg] = None, *,
              text: Optional[TextCondition] = None, text_embeds: Optional[torch.Tensor] = None,
              num_retain: int = 192, texts_per_image: Any = None, share_text_across: Optional[int] = None,
              multi_text: Union[str, int] = "union", k_per_text: Optional[int] = None,
              order: str = "official", scale: Optional[float] = None, return_tokens: bool = True,
              return_capture: bool = False, **forward_kwargs) -> HFPruneResult:
        """Images + texts -> kept indices and kept select-layer tokens.

        pixel_values [B, 3, H, W]: images, tiles or video frames (one row each,
        each with its own budget). Texts: ``texts`` / ``input_ids`` /
        ``text_embeds`` (grouped by ``texts_per_image``) or a prepared
        ``text=TextCondition``. ``share_text_across``: rows per text group
        (default B // G). Remaining arguments as ``litelvlm_kernels.prune``;
        ``forward_kwargs`` go to the vision tower (e.g. interpolate_pos_encoding).
        """
        from .. import prune as lite_prune

        if text is None:
            text = self.prepare_text(input_ids, attention_mask, texts, text_embeds=text_embeds,
                                     texts_per_image=texts_per_image)
        elif any(x is not None for x in (input_ids, texts, text_embeds)):
            raise ValueError("prune: pass either text= or texts / input_ids / text_embeds, not both")
        cap = self.capture(pixel_values, **forward_kwargs)
        B = cap.hidden.shape[0]
        folded, num_texts = self._text_for_rows(text, B, share_text_across)
        res = lite_prune(
            cap.hidden, folded, cap.q_cls.detach(), cap.keys.detach(), cap.values.detach(),
            num_retain=num_retain, ln_eps=self.ln_eps, multi_text=multi_text, k_per_text=k_per_text,
            num_texts=num_texts, order=order, scale=scale, return_tokens=return_tokens,
        )
        return HFPruneResult(
            indices=res.indices, tokens=res.tokens, num_similarity=res.num_similarity,
            from_similarity=res.from_similarity, text=text, capture=cap if return_capture else None,
        )

    __call__ = prune
