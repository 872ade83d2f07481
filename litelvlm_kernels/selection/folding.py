"""Texts -> a folded ``TextCondition``, once per distinct content (docs/design.md section 3).

``TextFolder`` encodes texts with its scorer's text tower, groups them per image, folds them with the
scorer's projection and layernorm (``litelvlm_kernels.fold_text``) and keeps the result in an LRU keyed by
the texts' content, the orientation (``similarity_keep``) and the identities and versions of every weight
the fold read: the same expression asked again (another image, another request) costs a dictionary
lookup. Thread-safe: the cache holds a lock; its entries are immutable.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from .settings import check_similarity_keep
from .text import FoldCache, TextCondition, TextsArg, flatten_texts, group_counts, oriented, pad_groups, weights_key


class TextFolder:
    """Folds texts for ``scorer`` (a ``scorer.Scorer``) and caches the folds (``cache_size`` entries, 0: none)."""

    def __init__(self, scorer, cache_size: int = 64):
        self.scorer = scorer
        self._cache = FoldCache(cache_size)

    def __deepcopy__(self, memo):
        """A folder of the copied scorer, with an empty cache (its keys name the original weights)."""
        new = TextFolder.__new__(TextFolder)
        new.scorer = copy.deepcopy(self.scorer, memo)
        new._cache = FoldCache(self._cache.size)
        return new

    @property
    def cache_size(self) -> int:
        return self._cache.size

    def clear(self) -> None:
        self._cache.clear()

    def _weights_key(self) -> tuple:
        ws = list(self.scorer.fold_weights())
        if self.scorer.text_model is not None:
            ws += list(self.scorer.text_model.parameters())
        return weights_key(ws)

    def prepare(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                texts: TextsArg | None = None, *, text_embeds: torch.Tensor | None = None,
                texts_per_image: Any = None, similarity_keep: str = "lowest") -> TextCondition:
        """Encode, group, pad and fold texts once. Cached for ``texts`` and ``input_ids``.

        Parameters
        ----------
        input_ids, attention_mask : torch.Tensor, optional
            [N, L] CLIP token ids.
        texts : str, list of str, or list of lists of str, optional
            One list per image for the nested form.
        text_embeds : torch.Tensor, optional
            [N, P], or [G, T, P] already grouped with every slot real.
        texts_per_image : None, int or sequence of int
            None (one group), an int (groups of that size) or one count per
            group; ignored for nested ``texts``.
        similarity_keep : "lowest" or "highest"
            Which end of each text's similarity ranking is kept: "lowest" is
            the paper's finding for CLIP (the referent scores LOW against
            [EOS]); "highest" the opposite, e.g. to test SigLIP, where the
            direction is unverified (docs/design.md section 10). Folded into
            the condition (w, b negated: s' = -s exactly).

        Returns
        -------
        TextCondition

        Examples
        --------
        >>> cond = folder.prepare(texts=[["the cat"], ["a dog", "the red car"]])  # doctest: +SKIP
        >>> cond.num_texts.tolist()                                                      # doctest: +SKIP
        [1, 2]
        """
        from .. import fold_text

        if sum(x is not None for x in (input_ids, texts, text_embeds)) != 1:
            raise ValueError("prepare_text: pass exactly one of texts, input_ids, text_embeds")
        check_similarity_keep(similarity_keep)
        key, flat_texts = None, None
        if texts is not None:
            flat_texts, counts = flatten_texts(texts, texts_per_image)
            key = ("texts", tuple(flat_texts), tuple(counts))
        elif input_ids is not None:
            if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
                raise ValueError(f"input_ids: expected an [N, L] tensor, got "
                                 f"{tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else input_ids!r}")
            if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
                raise TypeError(f"input_ids: expected integer token ids, got {input_ids.dtype}")
            counts = group_counts(input_ids.shape[0], texts_per_image)
            mask_key = None if attention_mask is None else tuple(attention_mask.flatten().tolist())
            key = ("ids", tuple(input_ids.shape), tuple(input_ids.flatten().tolist()), mask_key, tuple(counts))
        if key is not None and self.cache_size > 0:
            key = key + (similarity_keep, self._weights_key())
            hit = self._cache.get(key)
            if hit is not None:
                return hit

        if text_embeds is not None:
            grouped, num = _grouped_embeds(text_embeds, texts_per_image)
        else:
            flat = self.scorer.encode(flat_texts, input_ids, attention_mask)
            grouped = pad_groups(flat, counts) if max(counts) > 0 else flat.new_zeros(len(counts), 0, flat.shape[-1])
            num = torch.tensor(counts, dtype=torch.int64)

        proj, bias = self.scorer.projection()  # SigLIP's W_o W_v is a D^3 product: formed once per fold
        grouped = grouped.detach().to(proj.device)
        s = self.scorer
        folded = fold_text(grouped, proj.detach(), s.ln_weight.detach(), s.ln_bias.detach(),
                           proj_bias=None if bias is None else bias.detach())
        cond = TextCondition(text_embeds=grouped, num_texts=num.to(proj.device),
                             folded=oriented(folded, similarity_keep), similarity_keep=similarity_keep)
        self._cache.put(key if self.cache_size > 0 else None, cond)
        return cond


def _grouped_embeds(text_embeds: torch.Tensor, texts_per_image) -> tuple:
    """([G, T, P] grouped embeddings, [G] counts) from [N, P] (grouped by ``texts_per_image``) or [G, T, P]."""
    if text_embeds.dim() == 3:
        return text_embeds, torch.full((text_embeds.shape[0],), text_embeds.shape[1], dtype=torch.int64)
    if text_embeds.dim() == 2:
        counts = group_counts(text_embeds.shape[0], texts_per_image)
        return pad_groups(text_embeds, counts), torch.tensor(counts, dtype=torch.int64)
    raise ValueError(f"text_embeds: expected [N, P] or [G, T, P], got shape {tuple(text_embeds.shape)}")
