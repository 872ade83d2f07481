"""Compile every Triton kernel variant for a CUDA target WITHOUT a GPU (ptxas from the
triton wheel), to catch what the interpreter cannot: GPU-compiler type errors, unsupported
ops, register spills. Run in a process without TRITON_INTERPRET:

    python tests/triton/aot_compile.py [sm]      # sm defaults to 90 (H100)

Prints one line per variant: name, meta-parameters, registers, spills; exits 1 on failure.
"""

import importlib
import os
import re
import subprocess
import sys
import tempfile

os.environ.pop("TRITON_INTERPRET", None)

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

FS = importlib.import_module("litelvlm_kernels.triton_ops.fused_select")
TS = importlib.import_module("litelvlm_kernels.triton_ops.text_similarity")
CC = importlib.import_module("litelvlm_kernels.triton_ops.cls_contribution")
ST = importlib.import_module("litelvlm_kernels.triton_ops.select_tokens")


def _p(t):
    return "*" + t


FUSED = dict(h_ptr=_p("fp16"), w_ptr=_p("fp32"), b_ptr=_p("fp32"), q_ptr=_p("fp16"), k_ptr=_p("fp16"),
             v_ptr=_p("fp16"), nt_ptr=_p("i64"), idx_ptr=_p("i64"), fs_ptr=_p("u8"), ns_ptr=_p("i32"),
             sim_ws=_p("fp32"), l_ws=_p("fp32"), vn_ws=_p("fp32"), votes_ws=_p("i32"), keys_ws=_p("i64"),
             list_ws=_p("i64"), cnt_ptr=_p("i32"), ln_eps="fp32", scale="fp32")
SIM = dict(h_ptr=_p("bf16"), w_ptr=_p("fp32"), b_ptr=_p("fp32"), out_ptr=_p("fp32"), ln_eps="fp32")
CLS = dict(q_ptr=_p("fp32"), k_ptr=_p("fp32"), v_ptr=_p("fp32"), out_ptr=_p("fp32"), l_ws=_p("fp32"),
           vn_ws=_p("fp32"), cnt_ptr=_p("i32"), scale="fp32")
SEL = dict(s_ptr=_p("fp32"), c_ptr=_p("fp32"), nt_ptr=_p("i32"), idx_ptr=_p("i64"), fs_ptr=_p("u8"),
           ns_ptr=_p("i32"), votes_ws=_p("i32"), keys_ws=_p("i64"), list_ws=_p("i64"))

VARIANTS = [
    (FS._fused_select_kernel, FUSED, dict(HAS_NT=True, OFFICIAL=True, BLOCK_M=16, BLOCK_D=128, TB=2, BLOCK_F=1024,
                                          SINGLE=True, RB=64, BITS=4)),
    (FS._fused_select_kernel, FUSED, dict(HAS_NT=False, OFFICIAL=False, BLOCK_M=32, BLOCK_D=128, TB=16, BLOCK_F=4096,
                                          SINGLE=True, RB=64, BITS=2)),
    (FS._fused_select_kernel, FUSED, dict(HAS_NT=True, OFFICIAL=True, BLOCK_M=32, BLOCK_D=128, TB=4, BLOCK_F=4096,
                                          SINGLE=False, RB=64, BITS=2)),
    (TS._text_similarity_kernel, SIM, dict(BLOCK_M=32, BLOCK_D=128, TB=16)),
    (CC._cls_contribution_kernel, CLS, dict(BLOCK_M=16, BLOCK_D=128, BLOCK_F=1024)),
    (ST._select_tokens_kernel, SEL, dict(HAS_NT=True, OFFICIAL=True, BLOCK_F=4096, SINGLE=True, RB=64, BITS=2)),
    (ST._select_tokens_kernel, SEL, dict(HAS_NT=False, OFFICIAL=False, BLOCK_F=1024, SINGLE=True, RB=64, BITS=4)),
]


def _usage(cubin: bytes):
    """(registers, spill stores) from cuobjdump -res-usage, when the wheel ships it."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(tool):
        return None, None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True).stdout
    regs = re.search(r"REG:(\d+)", out)
    local = re.search(r"LOCAL:(\d+)", out)
    return (int(regs.group(1)) if regs else None), (int(local.group(1)) if local else None)


def main(sm: int) -> int:
    target = GPUTarget("cuda", sm, 32)
    failed = 0
    for fn, types, consts in VARIANTS:
        sig = {n: ("constexpr" if n in consts else types.get(n, "i32")) for n in fn.arg_names}
        try:
            nw = 8 if consts.get("BLOCK_M", 16) >= 32 or (fn is ST._select_tokens_kernel and consts["BLOCK_F"] >= 2048) else 4  # as the launchers
            k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts), target=target,
                               options=dict(num_warps=nw))
            regs, local = _usage(k.asm["cubin"])
            print(f"ok   {fn.__name__} {consts} num_warps={nw} regs={regs} local_bytes={local}")
        except Exception as e:  # report every variant, then fail
            failed += 1
            print(f"FAIL {fn.__name__} {consts}: {type(e).__name__}: {str(e)[:2000]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 90))
