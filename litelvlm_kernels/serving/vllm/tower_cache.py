"""The vision tower's states per image, kept across expressions: a second question about an image costs the
selection only.

Stock vLLM encodes an image once: its encoder cache is keyed by the image (and the request's processor kwargs).
The plugin's encoder output depends on the expression too, so vLLM's key for it includes the expression
(``processing.py``), and without this cache every expression on an image would run the tower again. The
processor therefore also sends a key of the image alone (``litelvlm_key``: vLLM's own multimodal hash of the
item and the processor kwargs other than the plugin's, computed on the host, a CPU field), and the model looks
each item's select-layer states up here before running the tower, which then runs on the distinct images not
cached only (also within one batch: two expressions on one image run the tower once).

Bounded: the ``litelvlm.tower_cache`` most recently used images (least recently used first out; 0 turns it
off, the in-batch sharing stays). Memory per image: views x (1 + M) x D x the dtype's bytes, e.g. LLaVA-1.5's
ViT-L/14-336 in bf16 1 x 577 x 1024 x 2 B = 1.13 MiB (LLaVA-NeXT up to 5 views: 5.6 MiB), on the model's
device, outside vLLM's memory profile (keep it small on a GPU whose memory vLLM has given to the KV cache).

The tower runs in near-equal chunks of at most ``batch`` views (``stock_batch``: the views stock vLLM encodes in
one step at most), so its calls are never larger than stock's. vLLM's encoder budget counts placeholders, R' per
image for the plugin, so unchunked it hands the tower several times more images per call than stock gets: 8
ViT-L images in one call on the benchmark's CPU, 26-33 % slower per image than stock's calls (the tower is the
same). There, one call of 8 allocates 37.8 MB per MLP activation ([8 x 577, 4096] bf16), above glibc's 32 MiB
ceiling for reusing freed memory, so every layer maps fresh pages: about 100 k page faults and 0.2 s of system
time per image, about 10 % more CPU per image (measured; none with a fixed high ``MALLOC_MMAP_THRESHOLD_``),
on top of a working set that no longer fits the caches; 7 images (stock's most, 4096 // 576) stay under it.
"""

from __future__ import annotations

import collections
from collections.abc import Callable

import torch


def stock_batch(vllm_config, stock_tokens_per_item: int, views_per_item: int = 1) -> int:
    """The views stock vLLM encodes in one step at most: its encoder budget (``max_num_encoder_input_tokens``, at
    least one item) over the stock placeholders of one item, times the item's views."""
    budget = int(getattr(vllm_config.scheduler_config, "max_num_encoder_input_tokens", 0) or 0)
    return max(1, max(budget, stock_tokens_per_item) // max(1, stock_tokens_per_item)) * views_per_item


def tower_cache_for(vllm_config, settings, stock_tokens_per_item: int, views_per_item: int = 1) -> TowerCache:
    """The model's cache: ``settings.tower_cache`` images, ``settings.tower_batch`` views per tower call (default
    ``stock_batch``)."""
    batch = settings.tower_batch or stock_batch(vllm_config, stock_tokens_per_item, views_per_item)
    return TowerCache(settings.tower_cache, batch)


class TowerCache:
    """Per-image tower states (see the module docstring); ``capacity`` images at most, the tower in chunks of
    ``batch`` views. ``runs`` counts the views the tower ran on (tests, benchmarks)."""

    def __init__(self, capacity: int, batch: int):
        if capacity < 0 or batch < 1:
            raise ValueError(f"TowerCache: capacity {capacity} must be >= 0 and batch {batch} >= 1")
        self.capacity, self.batch = capacity, batch
        self._entries: collections.OrderedDict = collections.OrderedDict()
        self.runs = 0

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()

    def states(self, keys: list | None, items: list, tower: Callable) -> list:
        """Per item the tower's states ``tower(items[i])`` ([V_i, ...] from ``items[i]`` [V_i, C, H, W]): cached
        ones looked up, the distinct others computed in chunks of ``batch`` views and cached. ``keys``: per item
        a hashable key of the image alone, or None (no key: computed, not shared)."""
        keys = list(keys) if keys is not None else [None] * len(items)
        out: list = [None] * len(items)
        todo: dict = {}  # key -> the items that need it (computed once)
        for i, k in enumerate(keys):
            hit = self._entries.get(k) if k is not None else None
            if hit is not None:
                self._entries.move_to_end(k)
                out[i] = hit
            else:
                todo.setdefault(k if k is not None else ("item", i), []).append(i)
        if todo:
            firsts = [same[0] for same in todo.values()]
            new = self._run([items[i] for i in firsts], tower)
            for (k, same), s in zip(todo.items(), new):
                for i in same:
                    out[i] = s
                if self.capacity and keys[same[0]] is not None:
                    self._put(k, s)
        return out

    def stacked(self, keys: list | None, pixels: torch.Tensor, tower: Callable) -> torch.Tensor:
        """One view per item: ``pixels`` [N, C, H, W] -> the states [N, ...] (``states``)."""
        per = self.states(keys, list(pixels.unsqueeze(1).unbind(0)), tower)
        return per[0] if len(per) == 1 else torch.cat(per)

    def _run(self, items: list, tower: Callable) -> list:
        """The tower on the items' views in near-equal chunks of at most ``batch`` views (8 views with batch 7: 4 +
        4, not 7 + 1); per item its [V_i, ...] rows."""
        sizes = [int(x.shape[0]) for x in items]
        views = torch.cat(items) if len(items) > 1 else items[0]
        n = views.shape[0]
        chunks = -(-n // self.batch)
        bounds = [n * c // chunks for c in range(chunks + 1)]
        outs = [tower(views[a:b]) for a, b in zip(bounds, bounds[1:])]
        self.runs += views.shape[0]
        rows = outs[0] if len(outs) == 1 else torch.cat(outs)
        return list(rows.split(sizes))

    def _put(self, key, states: torch.Tensor) -> None:
        self._entries[key] = states.clone()  # a slice would keep its whole chunk's output alive
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)


def image_keys(items: list, modality: str, kwargs: dict, algorithm: str) -> torch.Tensor:
    """[N, K] int64 keys of the ``items`` (the processor's images, videos ...) on the host: vLLM's multimodal hash
    (``MultiModalHasher``, the engine's ``mm_hasher_algorithm``) of each item with the processor ``kwargs``
    without the plugin's own (what its pixels depend on), so an image asked about with another expression gets
    the same key."""
    import numpy as np
    from vllm.multimodal.hasher import MultiModalHasher

    extra = {"mm_processor_kwargs": kwargs} if kwargs else {}
    digests = [bytes.fromhex(MultiModalHasher.hash_kwargs(algorithm, **{modality: item}, **extra)) for item in items]
    width = max(len(d) for d in digests)
    return torch.from_numpy(np.stack([np.frombuffer(d.ljust(-(-width // 8) * 8, b"\0"), dtype=np.int64)
                                      for d in digests]).copy())


def item_key(field) -> bytes | None:
    """The image key of one item (the processor's ``litelvlm_key`` CPU field, an int64 tensor) as hashable host
    bytes, read without a device sync; None without one."""
    return None if field is None else field.numpy().tobytes()


__all__ = ["TowerCache", "image_keys", "item_key", "stock_batch", "tower_cache_for"]
