"""The scorer base: what plays CLIP's [EOS] and [CLS] for one kind of vision tower (docs/design.md 11.1).

A scorer owns the few modules the method's two signals need and nothing of the LVLM:

* the [EOS] side: a text tower and its tokenizer (``encode``), and the projection + layernorm the
  texts are folded with (``projection``, ``post_layernorm``; ``folding.TextFolder`` folds and caches);
* the [CLS] side: from the tower state it continues from (``end_layer``: -2 for CLIP, the last
  layer's input; -1 for SigLIP, the tower's final state), what ``litelvlm_kernels.prune`` takes
  (``contribution_inputs``: CLIP's last-layer q/k/v, or a precomputed contribution);
* for the transformers front end, the hand-run capture of its stock tower (``capture``).

The modules are whatever the front end gives: transformers passes references to the stock tower's own
modules and to the checkpoints the user loaded (read at every use, so ``.to()`` / ``load_state_dict``
after construction are seen); a serving engine builds the same modules from the configs and loads
their weights. One file per kind (``clip.py``, ``siglip.py``); ``kinds.py`` picks one for a tower.
"""

from __future__ import annotations

import threading
import warnings

import torch

from .text import tokenize_texts


class Scorer:
    """Base of the scorer kinds (see the module docstring). Subclasses set ``has_cls`` / ``end_layer`` and implement
    the methods that raise NotImplementedError."""

    has_cls: bool = True
    end_layer: int = -2
    kind: str = ""

    def __init__(self, text_model, tokenizer):
        self.text_model, self.tokenizer = text_model, tokenizer
        # a fast tokenizer called with padding / truncation changes its own settings: one call at a time
        self._tokenizer_lock = threading.Lock()
        self._warned_truncation = False

    def __deepcopy__(self, memo):
        """The copied modules through ``memo``; the tokenizer shared (no weights), a new lock."""
        from .._copy import deepcopy_fields

        return deepcopy_fields(self, memo, keep=("tokenizer",), fresh={"_tokenizer_lock": lambda _: threading.Lock()})

    # ---- kind-specific ------------------------------------------------------------------------

    def projection(self) -> tuple:
        """(proj_weight [P, Dv], proj_bias [P] or None) the texts are folded with."""
        raise NotImplementedError

    @property
    def post_layernorm(self) -> torch.nn.Module:
        """The layernorm of the similarity (the one the projection was trained behind)."""
        raise NotImplementedError

    def fold_weights(self) -> list:
        """The tensors the fold is computed from (a cached fold is keyed by their identities and versions)."""
        raise NotImplementedError

    def text_length(self) -> int | None:
        """The text tower's positions (longer texts are truncated)."""
        raise NotImplementedError

    def encode_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """[N, L] token ids (on the text tower's device) -> [N, P] text embeddings."""
        raise NotImplementedError

    def token_ids(self, enc) -> tuple:
        """(ids, attention mask or None) the text tower takes, from the tokenizer's padded encoding."""
        return enc["input_ids"], enc.get("attention_mask")

    def contribution_inputs(self, end_state: torch.Tensor) -> dict:
        """What ``litelvlm_kernels.prune`` takes for the [CLS] side, from the tower state at ``end_layer``."""
        raise NotImplementedError

    def capture(self, pixel_values: torch.Tensor, *, select_layer: int, full_tower: bool = False,
                interpolate_pos_encoding: bool = False, stop_early: bool = True):
        """The stock tower run by hand (transformers front end): a ``VisionCapture``."""
        raise NotImplementedError

    # ---- shared -------------------------------------------------------------------------------

    @property
    def ln_weight(self) -> torch.Tensor:
        return self.post_layernorm.weight

    @property
    def ln_bias(self) -> torch.Tensor:
        return self.post_layernorm.bias

    @property
    def ln_eps(self) -> float:
        return float(self.post_layernorm.eps)

    def tokenize(self, texts: list) -> tuple:
        """(ids, mask or None) of strings, padded and cut to the text tower's length (one warning per scorer)."""
        if self.tokenizer is None:
            raise ValueError("texts: strings need a tokenizer; pass tokenizer= or input_ids=")
        max_len = self.text_length()
        enc, longest = tokenize_texts(self.tokenizer, texts, max_len, self._tokenizer_lock)
        if longest is not None and not self._warned_truncation:
            self._warned_truncation = True  # once per scorer: a server would repeat it per request
            warnings.warn(f"texts: an expression of {longest} tokens is truncated to the text tower's "
                          f"{max_len} positions (this warning is shown once)", stacklevel=5)
        return self.token_ids(enc)

    def encode(self, flat_texts: list | None = None, input_ids: torch.Tensor | None = None,
               attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """[N, P] text embeddings of strings or token ids (N = 0 gives an empty [0, P])."""
        if self.text_model is None:
            raise ValueError("text_model: needed to encode texts / input_ids (or pass text_embeds=)")
        if flat_texts is not None:
            input_ids, attention_mask = self.tokenize(flat_texts) if flat_texts else (None, None)
        if input_ids is None or input_ids.shape[0] == 0:  # no texts at all: T = 0, pure context selection
            proj = self.projection()[0]
            return proj.new_zeros(0, proj.shape[0])
        dev = next(self.text_model.parameters()).device
        with torch.no_grad():
            return self.encode_ids(input_ids.to(dev), None if attention_mask is None else attention_mask.to(dev))
