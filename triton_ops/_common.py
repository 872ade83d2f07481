"""Host-side pieces shared by the Triton launchers: the triton guard, the block-size rules
(written once here) and stride helpers.

The launchers assume arguments already checked by the op layer
(``litelvlm_kernels/ops``: shapes, dtypes, devices, the selection rules of
docs/design.md section 2); this package never imports the front end. Only facts the
kernels need about memory (strides, a broadcast text batch) are computed here.
"""

from __future__ import annotations

import contextlib
import math
import os

try:  # triton is optional: the package must import without it (CPU-only installs, macOS).
    import triton  # noqa: F401

    _HAS_TRITON = True
except Exception:  # pragma: no cover - exercised only where triton is missing
    _HAS_TRITON = False


def has_triton() -> bool:
    """True when triton can be imported (it says nothing about a GPU)."""
    return _HAS_TRITON


def interpret_mode() -> bool:
    """True when triton runs its CPU interpreter (TRITON_INTERPRET=1, read at import)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def cdiv(a: int, b: int) -> int:
    return -(-int(a) // int(b))


def default_scale(D: int) -> float:
    # The release's choice when scale is None: 1/sqrt(D), D the full q/k width (docs/design.md section 1).
    return 1.0 / math.sqrt(D) if D > 0 else 1.0


def device_guard(device):
    """Launch on the tensors' GPU (not the current one); a no-op context elsewhere."""
    import torch

    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def text_strides(w, b, B: int):
    """Strides of the folded text (w [Bt, T, Dv], b [Bt, T]); Bt == 1 broadcasts over the B
    rows through a batch stride of 0 (Bt in {1, B} is checked by the op layer)."""
    if w.shape[0] == 1:
        return 0, w.stride(1), w.stride(2), 0, b.stride(1)
    return w.stride(0), w.stride(1), w.stride(2), b.stride(0), b.stride(1)


# ---- block-size rules (untuned on a GPU; every launcher and tests/triton/aot_compile.py
# read them from here).

# SMs of an H100 SXM. Only the order of magnitude matters: the rule below asks whether
# 32-token programs would fill about two waves of the machine.
NUM_SMS = 132


def token_tile(B: int, M: int) -> int:
    """BLOCK_M of the per-token phase: 16 tokens when B * cdiv(M, 32) < 2 * NUM_SMS (small
    batches: B = 1, M = 576 then runs on 36 programs instead of 18), else 32. Under the
    interpreter 64: an interpreted op costs ~0.1-0.3 ms whatever its size."""
    if interpret_mode():
        return 64
    return 16 if B * cdiv(M, 32) < 2 * NUM_SMS else 32


def feature_tile(width: int) -> int:
    """BLOCK_D: 128 features (a 16 x 128 fp16 tile is 4 KB per load); up to 1024 under the
    interpreter (fewer, larger interpreted ops)."""
    cap = 1024 if interpret_mode() else 128
    return min(cap, max(16, next_pow2(width)))


def feature_unroll(block_m: int, tb: int) -> int:
    """UNROLL of the feature loops: 2 with 16-token tiles and TB <= 2 (small batches,
    latency-bound: a thread has two tiles' loads in flight before the first FMA waits),
    else 1. Measured with tests/triton/aot_compile.py: unrolling the 32-token variant
    makes triton 3.6's LLVM abort in its SLP vectorizer, and with TB >= 8 ptxas capped
    the unrolled kernel at 128 registers and spilled (36 bytes)."""
    return 2 if block_m <= 16 and tb <= 2 else 1


def text_tile(T: int) -> int:
    """TB: texts per pass over a token's features, next_pow2(T) <= 4: x is streamed once for
    T <= 4 and T / 4 times for more (the later passes mostly from L2). TB = 16 took 255
    registers in text_similarity and spilled in fused_select (M = 2880, triton 3.6); TB = 8
    spilled 4 bytes at M = 49 with triton 3.6."""
    return min(4, next_pow2(max(T, 1)))


# BLOCK_F, the finaliser's row chunk, takes one of four values so that the number of
# compiled variants stays bounded: a row of M <= 4096 tokens stays on registers in the
# smallest of FINALISER_BLOCKS that holds it (SINGLE); longer rows stream CHUNK_F-token
# chunks (the chunked finaliser).
FINALISER_BLOCKS = (256, 1024, 4096)
# 2048, not 4096: with 4096-token chunks (16 keys per thread and chunk at 8 warps) triton
# 3.6's ptxas (the GPU machines') capped fused_select at 128 registers and spilled 48-68
# bytes in every chunked variant, mostly in the last output loop (a scan of 4096 flags with
# 16 positions and addresses per thread live); 3.9's did not. With 2048: no spill under
# either, 103-128 registers, so phase 1 keeps two 8-warp programs per SM (maxnreg = 255
# instead also removed the spill but took 226-247 registers: one program per SM for every
# program of the grid). Only the chunks' number changes: keys, votes and positions are
# integers (same results); the softmax sum is added up in other lanes (c may move by an ulp).
CHUNK_F = 2048


def finaliser_block(M: int) -> int:
    for f in FINALISER_BLOCKS:
        if M <= f:
            return f
    return CHUNK_F


def text_group(TB: int, block_f: int) -> int:
    """G: texts whose bottom-k searches share one histogram per radix pass (concurrent).
    Two: triton's warp-ballot histogram costs about 77 instructions per element slot at
    256 bins and 136 at 512, so two texts in one pass cost 1.8x the instructions of two
    separate passes but halve the sequential passes; wider groups grow faster (G = 4:
    ~260 per slot). One from BLOCK_F = 2048 (the 4096-token single chunk and the chunked
    finaliser): a [2, 4096] key tile took 255 registers and spilled 120 bytes with triton
    3.6 (M = 2880, T = 16); chunked with [2, 2048] tiles, fused_select took 181-186
    registers and an 8-byte stack frame with triton 3.6 (M = 16384)."""
    return 1 if block_f >= CHUNK_F else min(TB, 2)


def derive_finaliser_blocks(blocks: dict, M: int, TB: int) -> dict:
    """The finaliser's meta-parameters that follow from the final (possibly forced) BLOCK_F:
    G (text_group, unless forced) and SINGLE (the row fits one chunk)."""
    blocks.setdefault("G", text_group(TB, blocks["BLOCK_F"]))
    blocks["SINGLE"] = M <= blocks["BLOCK_F"]
    return blocks


# 8 warps for every kernel: the finaliser's histograms and scans take half the instructions
# per thread of 4 warps (its latency sets B = 1), and ptxas fits every variant without
# spilling (tests/triton/aot_compile.py prints the figures; docs/triton.md states them).
NUM_WARPS = 8
