"""``copy.deepcopy`` of an object whose attributes are copied through ``memo``, except named ones.

The pruner and the LVLM patch hold module references (which must land on the copied modules, through
``memo``), plus a few attributes that must not be deep-copied: locks and thread-locals (new ones),
caches keyed by the original's identities (empty ones), immutable or shared objects (kept).
"""

from __future__ import annotations

import copy


def deepcopy_fields(obj, memo: dict, *, keep: tuple = (), fresh: dict | None = None):
    """A copy of ``obj``: ``keep`` attributes shared, ``fresh[name](value)`` for the others named there, every
    other attribute ``copy.deepcopy(value, memo)``."""
    fresh = fresh or {}
    new = object.__new__(type(obj))
    memo[id(obj)] = new
    for name, value in vars(obj).items():
        if name in fresh:
            value = fresh[name](value)
        elif name not in keep:
            value = copy.deepcopy(value, memo)
        setattr(new, name, value)
    return new
