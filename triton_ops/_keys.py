"""Ranking as k-th key thresholds (docs/design.md section 2), written once for both
finalisers: orderable 32-bit keys, the radix search of the k-th smallest key, the
index tie-break and the membership test.

Keys are int32 whose SIGNED order is the ranking order (smallest first):

- bottom-k (``_ascending_key``): -inf < finite < +inf < NaN, every NaN one key;
- recovery (``_descending_key``): +inf first, then falling values, -inf, NaN last.

-0.0 is made +0.0 first. Real keys lie in [-2**31 + 2**23 - 1, 2**31 - 2**23]; NaN is
0x7FFFFFFE and tokens that may not be chosen get SENTINEL = 0x7FFFFFFF, above every real
key. The callers guarantee k <= the number of real keys (k_b <= M for bottom-k,
R' - |S| <= M - |S| for recovery), so the sentinels are never reached.

Search: V = the k-th smallest key is found digit by digit from the top, 8 bits per
pass (4 passes): a pass takes one ``tl.histogram`` of the current digit of the keys
whose higher digits equal the prefix found so far, and the digit where the running
count reaches k (a scan and one packed sum over the bins, _pick_digit). G rows (texts)
are searched at once in one G x 256-bin histogram.
Ties at V go to the lowest indices: I = the largest index taken among the keys == V,
needed (one scan) only when V's keys are split between taken and not taken.
"""

from __future__ import annotations

from ._common import _HAS_TRITON

if _HAS_TRITON:
    import triton
    import triton.language as tl

    SENTINEL = tl.constexpr(0x7FFFFFFF)
    NAN_KEY = tl.constexpr(0x7FFFFFFE)
    _SIGN = tl.constexpr(-2147483648)  # int32 sign bit: key ^ _SIGN is the unsigned order
    _ALL = tl.constexpr(1 << 30)  # tie index meaning "every key == V is taken"

    @triton.jit
    def _orderable(x):
        """fp32 -> int32 with x < y <=> key(x) < key(y) (signed), -0.0 -> +0.0."""
        x = tl.where(x == 0.0, 0.0, x)
        b = x.to(tl.int32, bitcast=True)
        return tl.where(b < 0, b ^ 0x7FFFFFFF, b)

    @triton.jit
    def _ascending_key(x):
        """Bottom-k key: -inf < finite < +inf < NaN."""
        return tl.where(x != x, NAN_KEY, _orderable(x))

    @triton.jit
    def _descending_key(x):
        """Recovery key: +inf > finite > -inf > NaN (taken in that order)."""
        return tl.where(x != x, NAN_KEY, -1 - _orderable(x))

    @triton.jit
    def _member(key, idx, V, I):
        """Token (key, idx) is among the k smallest (key, index) pairs of threshold (V, I)."""
        return (key < V) | ((key == V) & (idx <= I))

    @triton.jit
    def _digit_hist(keys, prefix, P: tl.constexpr, G: tl.constexpr, BLOCK_F: tl.constexpr):
        """[G * 256] counts of digit P (bits 31-8P .. 24-8P of the unsigned order) of the
        keys [G, BLOCK_F] whose higher digits equal prefix [G]; row g's bins at g * 256."""
        u = keys ^ _SIGN
        digit = (u >> (24 - 8 * P)) & 0xFF
        bins = tl.reshape(tl.arange(0, G)[:, None] * 256 + digit, [G * BLOCK_F])
        if P == 0:
            return tl.histogram(bins, G * 256)
        else:
            hi = -(1 << (32 - 8 * P))  # bits above this digit
            match = ((u ^ prefix[:, None]) & hi) == 0
            return tl.histogram(bins, G * 256, mask=tl.reshape(match, [G * BLOCK_F]))

    @triton.jit
    def _pick_digit(h, need, G: tl.constexpr, LAST: tl.constexpr, WIDE: tl.constexpr):
        """Per row: the digit d where the running count reaches need and the count of keys
        below it, from a scan and ONE sum over the [G, 256] bins (d = the bins whose running
        count is below need, in the high part; their keys, in the low part: 16 bits of an
        int32 for a single-chunk row, whose counts are <= BLOCK_F <= 4096; 32 bits of an
        int64 when WIDE, rows streamed in chunks with counts up to M). LAST
        (the final digit) adds the count at d, the keys equal to the k-th: a second sum, over
        the one bin whose running count reaches need while the count before it does not.

        Built-in sums only: under the interpreter a tl.reduce with a custom combine runs
        element by element in Python (a 3-operand one here was 75% of the interpreted test
        time); a packed int64 min with its index made ptxas spill 4-16 bytes in 3 of 105
        variants."""
        hb = tl.reshape(h, [G, 256])
        cum = tl.cumsum(hb, axis=1)
        lt = cum < need[:, None]
        if WIDE:
            s = tl.sum(tl.where(lt, 4294967296 + hb.to(tl.int64), 0), axis=1)
            d = (s >> 32).to(tl.int32)
            below = (s & 0xFFFFFFFF).to(tl.int32)
        else:
            s = tl.sum(tl.where(lt, 65536 + hb, 0), axis=1)
            d = s >> 16
            below = s & 0xFFFF
        if LAST:
            at = tl.sum(tl.where((cum >= need[:, None]) & (cum - hb < need[:, None]), hb, 0), axis=1)
        else:
            at = need
        return d, below, at

    @triton.jit
    def _kth_key(keys, k_ptr, M, k, G: tl.constexpr, BLOCK_F: tl.constexpr, SINGLE: tl.constexpr):
        """(V, need, at) per row g < G: V = the k[g]-th smallest key, need = how many keys
        == V are taken (k minus the keys < V), at = how many keys == V there are.

        SINGLE: keys [G, BLOCK_F] on registers are the whole rows. Otherwise the G rows
        of M keys are in scratch at k_ptr (row g at k_ptr + g * M) and every pass streams
        them in BLOCK_F chunks (keys is unused). k[g] = 0 selects nothing.
        """
        tl.static_assert(not SINGLE or BLOCK_F < 65536, "single-chunk counts must fit _pick_digit's 16 bits")
        ar = tl.arange(0, BLOCK_F)
        gi = tl.arange(0, G)
        prefix = tl.zeros([G], dtype=tl.int32)
        need = k
        at = k
        for p in tl.static_range(4):
            if SINGLE:
                h = _digit_hist(keys, prefix, p, G, BLOCK_F)
            else:
                h = tl.zeros([G * 256], dtype=tl.int32)
                for c0 in range(0, M, BLOCK_F):
                    offs = c0 + ar
                    ch = tl.load(k_ptr + gi[:, None] * M + offs[None, :], mask=(offs < M)[None, :], other=SENTINEL)
                    h += _digit_hist(ch, prefix, p, G, BLOCK_F)
            d, below, at = _pick_digit(h, need, G, p == 3, not SINGLE)
            prefix = prefix | (d << (24 - 8 * p))
            need = need - below
        return prefix ^ _SIGN, need, at

    @triton.jit
    def _tie_index(keys, k_ptr, M, V, need, at, G: tl.constexpr, BLOCK_F: tl.constexpr, SINGLE: tl.constexpr):
        """I [G] for _member: the largest index taken among the keys == V (the first need
        of them in index order). One scan over the row, only when some row takes part of
        its keys == V (need < at); else every key == V is taken (I = 2**30)."""
        I = tl.full([G], _ALL, tl.int32)
        if tl.sum((need < at).to(tl.int32), axis=0) > 0:
            ar = tl.arange(0, BLOCK_F)
            if SINGLE:
                eq = keys == V[:, None]
                cum = tl.cumsum(eq.to(tl.int32), axis=1)
                cut = tl.max(tl.where(eq & (cum <= need[:, None]), ar[None, :], -1), axis=1)
            else:
                gi = tl.arange(0, G)
                run = tl.zeros([G], dtype=tl.int32)
                cut = tl.full([G], -1, tl.int32)
                for c0 in range(0, M, BLOCK_F):
                    offs = c0 + ar
                    ch = tl.load(k_ptr + gi[:, None] * M + offs[None, :], mask=(offs < M)[None, :], other=SENTINEL)
                    eq = ch == V[:, None]
                    cum = run[:, None] + tl.cumsum(eq.to(tl.int32), axis=1)
                    cut = tl.maximum(cut, tl.max(tl.where(eq & (cum <= need[:, None]), offs[None, :], -1), axis=1))
                    run += tl.sum(eq.to(tl.int32), axis=1)
            I = tl.where(need < at, cut, I)
        return I
