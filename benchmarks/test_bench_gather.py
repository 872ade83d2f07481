"""pytest-benchmark smoke run of gather_tokens vs torch's gathers (small shapes; no timing assertions).

CI runs it with ``--benchmark-disable`` (each body once). Real numbers:
``benchmarks/bench_gather.py``.
"""

import pytest
import torch

pytest.importorskip("pytest_benchmark")

from litelvlm_kernels.ops import gather_tokens  # noqa: E402

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
B, M, C, R = 3, 100, 64, 24


def _inputs(device, dtype, index_dtype):
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(B, M, C, generator=g).to(device=device, dtype=dtype)
    idx = torch.stack([torch.randperm(M, generator=g)[:R] for _ in range(B)]).to(device=device, dtype=index_dtype)
    return tokens, idx


def _torch_gather(tokens, idx):
    return torch.gather(tokens, 1, idx.long()[..., None].expand(-1, -1, tokens.shape[-1]))


def _index_select(tokens, idx):
    offs = torch.arange(tokens.shape[0], device=tokens.device)[:, None] * tokens.shape[1]
    return tokens.reshape(-1, tokens.shape[-1]).index_select(0, (idx.long() + offs).reshape(-1)).view(
        idx.shape[0], idx.shape[1], -1)


PROVIDERS = {"litelvlm": gather_tokens, "torch.gather": _torch_gather, "index_select": _index_select}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_gather(benchmark, provider, device, dtype, index_dtype):
    tokens, idx = _inputs(device, dtype, index_dtype)
    benchmark.extra_info.update(provider=provider, device=device, B=B, M=M, C=C, R=R, dtype=str(dtype),
                                index_dtype=str(index_dtype))
    out = benchmark(PROVIDERS[provider], tokens, idx)
    assert torch.equal(out, _torch_gather(tokens, idx))


@pytest.mark.parametrize("device", DEVICES)
def test_gather_out(benchmark, device):
    tokens, idx = _inputs(device, torch.float32, torch.int64)
    out = torch.empty(B, R, C, device=device)
    benchmark.extra_info.update(provider="litelvlm.out", device=device)
    benchmark(gather_tokens, tokens, idx, out=out)
    assert torch.equal(out, _torch_gather(tokens, idx))
