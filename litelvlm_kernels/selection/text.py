"""The text side: [EOS] embeddings, grouping texts per image, and the cache of folded texts.

Grouping (``texts_per_image`` / ``share_text_across``):

* one group of texts (the default) applies to every row: a single image, or
  the F frames of a video (text batch Bt = 1, broadcast by the ops);
* ``texts=[["a", "b"], ["c"]]`` or ``texts_per_image=[2, 1]`` gives each image
  its own texts; the groups are padded to T = max count and ``num_texts``
  tells the ops how many are real;
* G groups for B = G * F rows (F frames or tiles per image): each group is
  shared by F consecutive rows (``share_text_across=F``, inferred when G
  divides B).

The folded text (``fold_text``: w = gamma * W_p^T e, b = beta . W_p^T e) is
cached per text content and tower weights (``FoldCache``).
"""

from __future__ import annotations

import collections
import dataclasses
import threading
from collections.abc import Sequence
from typing import Any

import torch

from .settings import check_similarity_keep

TextsArg = str | Sequence[str] | Sequence[Sequence[str]]


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
    similarity_keep: str = "lowest"  # folded already oriented: "highest" stores -w, -b

    @property
    def num_groups(self) -> int:
        return self.text_embeds.shape[0]


def oriented(folded, similarity_keep: str):
    """The folded text as the ops' bottom-k should read it: "highest" negates w and b, so s' = -s exactly
    (negation commutes with rounding) and the lowest of s' are the highest of s, ties still by index."""
    if check_similarity_keep(similarity_keep) == "lowest":
        return folded
    return folded._replace(w=-folded.w, b=-folded.b)


def group_counts(n: int, texts_per_image) -> list:
    """Texts per group from ``texts_per_image`` (None: one group of all ``n``)."""
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


def check_expression(text, name: str) -> str:
    """A referring expression: a str with at least one non-blank character, or a named error."""
    if not isinstance(text, str):
        raise TypeError(f"{name}: expected a str, got {type(text).__name__} ({text!r})")
    if not text.strip():
        # Worded for every tower: CLIP's context score comes from [CLS], SigLIP's (no [CLS]) from its pooling head.
        raise ValueError(f"{name}: an empty or blank expression ({text!r}) would still change the selection; "
                         "drop it (an image with no expression keeps context tokens only, those the tower's pooled "
                         "embedding draws on most)")
    return text


def flatten_texts(texts: TextsArg, texts_per_image: Any) -> tuple[list, list]:
    """(flat list of strings, texts per group) from a str, a flat list of str, or a list of lists of str.

    A list mixing strings and lists is refused (``[["the cat"], "a dog"]`` would otherwise read the
    str as a list of one-character texts).
    """
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, Sequence):
        raise TypeError(f"texts: expected a str, a list of str or a list of lists of str, got {type(texts).__name__}")
    texts = list(texts)
    nested = [not isinstance(t, str) and isinstance(t, Sequence) for t in texts]
    if any(nested) and not all(nested):
        raise TypeError("texts: mixes strings and lists; pass a flat list of str (one group) or one list of str "
                        "per image, e.g. [['the cat'], ['a dog']]")
    if texts and nested[0]:
        groups = [[check_expression(t, f"texts[{i}][{j}]") for j, t in enumerate(g)] for i, g in enumerate(texts)]
        return [t for g in groups for t in g], [len(g) for g in groups]
    texts = [check_expression(t, f"texts[{i}]") for i, t in enumerate(texts)]
    return texts, group_counts(len(texts), texts_per_image)


def highest_id(tokenizer) -> int | None:
    """The highest id ``tokenizer`` can produce: the largest value of its vocabulary, added tokens included
    (``get_vocab()``); ``len(tokenizer) - 1`` only for a tokenizer without ``get_vocab``. None when neither exists
    (not a Hugging Face tokenizer).

    Not ``len(tokenizer) - 1`` in general: ids may have gaps (a vocabulary file is free to skip ids), and then the
    highest id is larger than the count.
    """
    get_vocab = getattr(tokenizer, "get_vocab", None)
    if callable(get_vocab):
        try:
            vocab = get_vocab()
        except (NotImplementedError, TypeError, AttributeError):
            vocab = None
        if vocab:
            return max(int(i) for i in vocab.values())
    try:
        return len(tokenizer) - 1
    except TypeError:
        return None


def check_vocab_fits(top: int, text_config, tower: str) -> None:
    """Every id the tokenizer makes (up to ``top``, its ``highest_id``) must index the ``tower`` ("CLIP" /
    "SigLIP") text tower's embeddings."""
    vocab = getattr(text_config, "vocab_size", None)
    if vocab is not None and top is not None and top >= vocab:
        raise ValueError(f"tokenizer: it makes ids up to {top}, beyond the {tower} text tower's vocab_size {vocab} "
                         f"(ids 0..{vocab - 1}); pass the {tower} tokenizer of the same checkpoint (not the LLM's)")


def tokenize_texts(tokenizer, texts, max_len: int | None, lock, **kwargs) -> tuple:
    """(encoding of ``texts`` padded to the longest and cut to ``max_len`` tokens, the longest length before the
    cut or None when nothing was cut).

    One tokenizer call unless a text is too long (then a second one with truncation). Under ``lock``: a fast
    tokenizer called with padding / truncation changes its own settings, so calls from threads race.
    ``kwargs`` go to the tokenizer (e.g. ``padding_side``).
    """
    texts = list(texts)
    with lock:
        enc = tokenizer(texts, padding=True, return_tensors="pt", **kwargs)
        longest = enc["input_ids"].shape[1]
        if max_len is None or longest <= max_len:
            return enc, None
        return tokenizer(texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt",
                         **kwargs), longest


def pad_groups(flat: torch.Tensor, counts: list) -> torch.Tensor:
    """[N, P] -> [G, max(counts), P], zero padding after each group's texts."""
    G, T = len(counts), max(counts)
    out = flat.new_zeros(G, T, flat.shape[-1])
    start = 0
    for g, c in enumerate(counts):
        out[g, :c] = flat[start:start + c]
        start += c
    return out


def text_for_rows(cond: TextCondition, B: int, share_text_across: int | None):
    """(text, num_texts) arguments of ``litelvlm_kernels.prune`` for B image rows."""
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
        # One group for every row: Bt = 1 broadcast (video frames share the text); a single
        # group is never padded, so no per-row counts are needed.
        return cond.folded, None
    folded, num = cond.folded, cond.num_texts
    if share_text_across > 1:  # FoldedText is a NamedTuple
        folded = folded._replace(w=folded.w.repeat_interleave(share_text_across, dim=0),
                                 b=folded.b.repeat_interleave(share_text_across, dim=0))
        num = num.repeat_interleave(share_text_across)
    return folded, num


def tensor_version(t: torch.Tensor) -> int:
    """The in-place version counter, -1 for inference tensors (they have none and cannot change in place)."""
    try:
        return t._version
    except RuntimeError:
        return -1


def weights_key(tensors) -> tuple:
    """Identity, version counter, device and dtype of each tensor.

    ``_version`` moves on every in-place update (load_state_dict, optimizer
    steps) and new parameter objects change the id, so a cached fold never
    outlives the weights it was folded from.
    """
    return tuple((id(w), tensor_version(w), w.device, w.dtype) for w in tensors)


class FoldCache:
    """A small LRU of TextCondition keyed by text content + weights (``size=0`` disables it).

    Thread-safe: get / put / clear hold a lock (an LRU's move_to_end and eviction race otherwise).
    Entries are immutable once stored, so a hit may be used outside the lock.
    """

    def __init__(self, size: int = 64):
        self.size = size
        self._items: collections.OrderedDict[Any, TextCondition] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key) -> TextCondition | None:
        if key is None or self.size <= 0:
            return None
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
            return hit

    def put(self, key, cond: TextCondition) -> None:
        if key is None or self.size <= 0:
            return
        with self._lock:
            self._items[key] = cond
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)
