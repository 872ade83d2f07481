"""Kept indices for the serving user: one JSON line per selected image, keyed by the request's report id.

Opt in per request with ``mm_processor_kwargs={"expression": ..., "report": "<id>"}`` on an engine started with
``litelvlm.report_path`` (a file; the processor refuses the key otherwise, by name). The id travels to the model
as a CPU field with the item's index in its request (``processing.py``); after the selection the model appends
one line per item that has an id::

    {"id": "<id>", "modality": "image", "item": 0, "num_retain": 64, "num_tokens": 64,
     "views": [{"grid": [24, 24], "indices": [3, 17, ...], "from_similarity": [true, false, ...]}]}

``indices``: the kept patches of each view, row-major in its ``grid`` of patches ([CLS] not counted), in the
order the LLM gets them; ``from_similarity``: kept by the expression's similarity (else by the [CLS]
contribution); ``num_tokens``: the image's placeholders in the prompt. Written by tensor-parallel rank 0 only,
all lines of one encoder step in one append.

The id is part of the request's ``mm_processor_kwargs``, hence of vLLM's multimodal hash: a request whose item
hits vLLM's caches (the same image, expression, budget and id again, or the same image twice in one request)
runs no selection and writes no new record; the records written earlier stand for it. Writing copies the kept
indices to the host (a device sync), for the items with an id only.
"""

from __future__ import annotations

import json

import torch


def report_fields(report: str | None, n: int) -> torch.Tensor:
    """[n, 1 + L] int64: per item its index in the request, then the id's UTF-8 bytes (L = 0: no report)."""
    data = list(report.encode("utf-8")) if report is not None else []
    return torch.tensor([[i, *data] for i in range(n)], dtype=torch.int64)


def decode(field) -> tuple | None:
    """(item index, id) of one item's report field (CPU, host data: no sync), or None without an id."""
    if field is None or field.numel() <= 1:
        return None
    values = field.tolist()
    return int(values[0]), bytes(values[1:]).decode("utf-8")


def _is_writer() -> bool:
    """Tensor-parallel rank 0 (every rank runs the same selection)."""
    try:
        from vllm.distributed import get_tensor_model_parallel_rank

        return get_tensor_model_parallel_rank() == 0
    except Exception:  # no parallel state (a model built outside an engine)
        return True


def write_records(path: str | None, reports: list | None, views: list, budgets: list, counts: list, grids: list,
                  modality: str = "image") -> int:
    """Append one line per item with a report id to ``path``; returns the lines written.

    ``reports``: per item ``decode``'s (index, id) or None; ``views``: per item its views' (indices,
    from_similarity); ``grids``: per item its views' (rows, cols) of patches; ``budgets`` / ``counts``: per item
    num_retain and placeholders."""
    if not path or not reports or all(r is None for r in reports) or not _is_writer():
        return 0
    lines = []
    for rep, item_views, r, n, item_grids in zip(reports, views, budgets, counts, grids):
        if rep is None:
            continue
        item, rid = rep
        lines.append(json.dumps({
            "id": rid, "modality": modality, "item": item, "num_retain": int(r), "num_tokens": int(n),
            "views": [{"grid": [int(g) for g in grid], "indices": idx.tolist(), "from_similarity": fs.tolist()}
                      for (idx, fs), grid in zip(item_views, item_grids)]}))
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))
    return len(lines)


__all__ = ["decode", "report_fields", "write_records"]
