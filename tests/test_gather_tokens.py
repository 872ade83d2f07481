"""litelvlm::gather_tokens (C++ CPU kernel, CUDA kernel when built) against torch: the
CPU and device-generic cases (CUDA-only ones: test_gather_tokens_cuda.py).

Reference and inputs: tests/_gather.py. A gather moves bytes, so every comparison is
exact (torch.equal), whatever the dtype.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from _gather import (  # noqa: F401  (cuda_kernel_built: an autouse fixture)
    DEVICES,
    DTYPES,
    HAS_CUDA,
    INDEX_DTYPES,
    OP,
    cuda_kernel_built,
    make_indices,
    make_tokens,
    reference,
    requires_cuda,
)

from litelvlm_kernels.ops.gather_tokens import gather_tokens

# -- correctness ---------------------------------------------------------------------

SHAPES = [  # (B, M, C, R)
    (0, 5, 3, 2),
    (1, 1, 1, 1),
    (3, 5, 1000, 4),
    (3, 577, 1024, 64),
    (1, 577, 3, 577),
    (3, 5, 1024, 0),
    (1, 0, 4, 0),
    (3, 5, 0, 2),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}M{}C{}R{}".format(*s))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_shapes(device, index_dtype, shape, dtype):
    B, M, C, R = shape
    tokens = make_tokens((B, M, C), dtype, device)
    indices = make_indices(B, M, R, index_dtype, device)
    out = gather_tokens(tokens, indices)
    assert out.shape == (B, R, C) and out.dtype == dtype and out.device == tokens.device
    assert out.is_contiguous()
    assert torch.equal(out, reference(tokens, indices))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dtypes(device, index_dtype, dtype):
    tokens = make_tokens((3, 37, 24), dtype, device)
    indices = make_indices(3, 37, 11, index_dtype, device)
    out = OP(tokens, indices)
    assert out.dtype == dtype
    assert torch.equal(out, reference(tokens, indices))


def _strided_cases(device):
    """(name, tokens, indices): every way a caller hands us a non-contiguous tensor."""
    B, M, C, R = 3, 9, 40, 6
    base = make_tokens((B, C, M), torch.float16, device)
    idx = make_indices(B, M, R, device=device)
    big = make_tokens((B, 2 * M, C + 3), torch.float16, device)
    return [
        ("transposed", base.transpose(1, 2), idx),                     # C stride M: scalar path
        ("sliced", big[:, ::2, 1:C + 1], idx),                         # odd offset, row stride 2x
        ("sliced_offset4", big[:, 1::2, 3:C + 3], idx),                # 8-byte aligned rows on CUDA
        ("odd_C", big[:, :M, : C + 1], make_indices(B, M, R, device=device)),  # C*2 bytes not /16
        ("expanded_batch", base[:1].transpose(1, 2).contiguous().expand(B, M, C), idx),  # stride 0
        ("batch_slice", make_tokens((2 * B, M, C), torch.float16, device)[::2], idx),
        ("indices_transposed", base.transpose(1, 2), make_indices(R, M, B, device=device).t()),
        ("indices_sliced", base.transpose(1, 2), make_indices(B, M, 2 * R, torch.int32, device)[:, ::2]),
    ]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", range(8))
def test_non_contiguous(device, case):
    name, tokens, indices = _strided_cases(device)[case]
    assert not (tokens.is_contiguous() and indices.is_contiguous()), name
    out = gather_tokens(tokens, indices)
    assert out.is_contiguous()
    assert torch.equal(out, reference(tokens, indices)), name


@pytest.mark.parametrize("device", DEVICES)
def test_duplicates_and_reversal(device):
    tokens = make_tokens((2, 7, 33), torch.float32, device)
    indices = torch.tensor([[3, 3, 3, 3], [6, 5, 0, 6]], device=device)
    out = gather_tokens(tokens, indices)
    assert torch.equal(out, reference(tokens, indices))
    assert torch.equal(out[0, 0], out[0, 3]) and torch.equal(out[1, 0], tokens[1, 6])


def test_large_rows_cpu():
    # A row above the parallel grain (32 KB) and a single row: the B*R = 1 case.
    tokens = make_tokens((1, 4, 20000), torch.float32)
    indices = torch.tensor([[2]])
    assert torch.equal(gather_tokens(tokens, indices), tokens[:, 2:3])


# -- out= --------------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
def test_out_variant(device, index_dtype):
    tokens = make_tokens((3, 50, 64), torch.bfloat16, device)
    indices = make_indices(3, 50, 10, index_dtype, device)
    out = torch.full((3, 10, 64), -1.0, dtype=torch.bfloat16, device=device)
    res = gather_tokens(tokens, indices, out=out)
    assert res is out
    assert torch.equal(out, reference(tokens, indices))
    res = OP.out(tokens, indices, out=out)
    assert res.data_ptr() == out.data_ptr()


@pytest.mark.parametrize("device", DEVICES)
def test_out_empty_is_sized(device):
    tokens = make_tokens((2, 8, 5), torch.float32, device)
    indices = make_indices(2, 8, 3, device=device)
    for empty in (torch.empty(0, device=device), torch.empty(2, 0, 5, device=device)):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # an empty out is sized silently
            gather_tokens(tokens, indices, out=empty)
        assert empty.shape == (2, 3, 5) and torch.equal(empty, reference(tokens, indices))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(7,), (2, 4, 5), (2, 3, 6), (1, 3, 5), (2, 3, 5, 1)])
def test_out_of_another_shape_is_refused(device, shape, capfd):
    """A non-empty out of another shape is refused, naming out and the shape it needs, and left untouched: torch's
    out= ops would resize it (only a deprecation warning on stderr), silently dropping a preallocated buffer."""
    tokens = make_tokens((2, 8, 5), torch.float32, device)
    indices = make_indices(2, 8, 3, device=device)
    out = torch.full(shape, 7.0, device=device)
    with pytest.raises(ValueError, match=r"out must have shape \[B, R, C\] = \[2, 3, 5\]"):
        gather_tokens(tokens, indices, out=out)
    with pytest.raises(RuntimeError, match=r"gather_tokens: out must have shape \[B, R, C\] = \[2, 3, 5\]"):
        OP.out(tokens, indices, out=out)  # the C++ op refuses it too
    assert out.shape == shape and (out == 7.0).all()
    assert "was resized" not in capfd.readouterr().err
    with pytest.raises(Exception, match=r"out must have shape \[B, R, C\] = \[2, 3, 5\]"):
        with torch._subclasses.fake_tensor.FakeTensorMode() as mode:  # the fake kernel agrees (torch.compile)
            OP.out(mode.from_tensor(tokens), mode.from_tensor(indices), out=mode.from_tensor(out))


@pytest.mark.parametrize("device", DEVICES)
def test_out_non_contiguous(device):
    tokens = make_tokens((2, 8, 6), torch.float32, device)
    indices = make_indices(2, 8, 4, device=device)
    store = torch.zeros(2, 6, 4, device=device)
    out = store.transpose(1, 2)  # [2, 4, 6] with C stride 4
    gather_tokens(tokens, indices, out=out)
    assert torch.equal(out, reference(tokens, indices))


def test_out_errors():
    tokens = make_tokens((2, 8, 5), torch.float32)
    indices = make_indices(2, 8, 3)
    with pytest.raises(TypeError, match="out must have the dtype of tokens"):
        gather_tokens(tokens, indices, out=torch.empty(2, 3, 5, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="out must have the dtype of tokens"):
        OP.out(tokens, indices, out=torch.empty(2, 3, 5, dtype=torch.float16))
    with pytest.raises(TypeError, match="out must be a torch.Tensor"):
        gather_tokens(tokens, indices, out=[1, 2])
    square = make_tokens((2, 3, 5), torch.float32)
    with pytest.raises(RuntimeError, match="unsupported operation"):  # out is the input
        OP.out(square, indices.clamp(max=2), out=square)
    with pytest.raises(RuntimeError, match="does not support automatic differentiation"):
        gather_tokens(tokens.requires_grad_(), indices, out=torch.empty(2, 3, 5))


# -- errors ------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [5, 6, 1000, -1, -5])
@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
def test_out_of_range_raises_naming_value(bad, index_dtype):
    tokens = make_tokens((2, 5, 4), torch.float32)
    indices = torch.tensor([[0, 1, 2], [3, 4, 0]], dtype=index_dtype)
    indices[1, 2] = bad
    msg = rf"index {bad} out of range \[0, 5\) at indices\[1, 2\]"
    with pytest.raises(RuntimeError, match=msg):
        gather_tokens(tokens, indices)
    out = torch.full((2, 3, 4), 7.0)
    with pytest.raises(RuntimeError, match=msg):
        gather_tokens(tokens, indices, out=out)
    assert (out == 7.0).all(), "indices are validated before any byte of out is written"


def test_first_bad_index_reported():
    tokens = make_tokens((2, 5, 4), torch.float32)
    indices = torch.tensor([[0, 9, -1], [7, 4, 0]])
    with pytest.raises(RuntimeError, match=r"index 9 out of range \[0, 5\) at indices\[0, 1\]"):
        gather_tokens(tokens, indices)


def test_empty_source_rows_raise():
    tokens = torch.empty(1, 0, 4)
    with pytest.raises(RuntimeError, match=r"index 0 out of range \[0, 0\)"):
        gather_tokens(tokens, torch.zeros(1, 1, dtype=torch.long))


def test_wrapper_argument_errors():
    tokens = make_tokens((2, 5, 4), torch.float32)
    indices = make_indices(2, 5, 3)
    with pytest.raises(TypeError, match="tokens must be a torch.Tensor"):
        gather_tokens(tokens.tolist(), indices)
    with pytest.raises(TypeError, match="indices must be a torch.Tensor"):
        gather_tokens(tokens, [[0]])
    with pytest.raises(ValueError, match="tokens must have 3 dimensions"):
        gather_tokens(tokens[0], indices)
    with pytest.raises(ValueError, match="indices must have 2 dimensions"):
        gather_tokens(tokens, indices[0])
    with pytest.raises(TypeError, match="indices must have dtype"):
        gather_tokens(tokens, indices.float())
    with pytest.raises(TypeError, match="indices must have dtype"):
        gather_tokens(tokens, indices.to(torch.int16))
    with pytest.raises(ValueError, match="indices has batch size 1 but tokens has 2"):
        gather_tokens(tokens, indices[:1])
    with pytest.raises(ValueError, match="indices is on meta but tokens is on cpu"):
        gather_tokens(tokens, indices.to("meta"))


def test_op_argument_errors():
    # The C++ checks (reached when calling torch.ops directly) name the argument too.
    tokens = make_tokens((2, 5, 4), torch.float32)
    indices = make_indices(2, 5, 3)
    with pytest.raises(RuntimeError, match="tokens must be a 3-D tensor"):
        OP(tokens[0], indices)
    with pytest.raises(RuntimeError, match="indices must be a 2-D tensor"):
        OP(tokens, indices[0])
    with pytest.raises(RuntimeError, match="indices must be int32 or int64"):
        OP(tokens, indices.to(torch.uint8))
    with pytest.raises(RuntimeError, match="batch size mismatch: tokens has B=2 but indices has B=1"):
        OP(tokens, indices[:1])


# -- autograd ----------------------------------------------------------------------------

@pytest.mark.parametrize("index_dtype", INDEX_DTYPES)
def test_gradcheck(index_dtype):
    tokens = torch.randn(2, 6, 5, dtype=torch.float64, requires_grad=True)
    indices = torch.tensor([[0, 0, 5, 2], [3, 1, 3, 3]], dtype=index_dtype)  # duplicates
    assert torch.autograd.gradcheck(lambda t: gather_tokens(t, indices), (tokens,))
    assert torch.autograd.gradgradcheck(lambda t: gather_tokens(t, indices), (tokens,))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_backward_is_scatter_add(device, dtype):
    B, M, C, R = 3, 20, 16, 12
    tokens = make_tokens((B, M, C), dtype, device).requires_grad_()
    indices = make_indices(B, M, R, torch.int32, device)
    grad = make_tokens((B, R, C), dtype, device, seed=5)
    gather_tokens(tokens, indices).backward(grad)
    expected = torch.zeros(B, M, C, dtype=dtype, device=device).scatter_add(
        1, indices.long()[..., None].expand(B, R, C), grad)
    assert tokens.grad.dtype == dtype
    assert torch.equal(tokens.grad, expected)
    # Duplicates accumulate: the same gradient through advanced indexing.
    ref_tokens = tokens.detach().float().requires_grad_()
    reference(ref_tokens, indices).backward(grad.float())
    torch.testing.assert_close(tokens.grad.float(), ref_tokens.grad, rtol=1e-2, atol=1e-2)


def test_no_grad_paths():
    tokens = torch.randn(2, 6, 5, requires_grad=True)
    indices = make_indices(2, 6, 3)
    with torch.no_grad():
        assert not gather_tokens(tokens, indices).requires_grad
    with torch.inference_mode():
        out = gather_tokens(tokens, indices)
        assert torch.equal(out, reference(tokens.detach(), indices))
    assert gather_tokens(tokens, indices).requires_grad


# -- opcheck and torch.compile -------------------------------------------------------

def _opcheck_cases(device):
    t = make_tokens((3, 9, 8), torch.float32, device).requires_grad_()
    t16 = make_tokens((2, 9, 8), torch.float16, device)
    strided = make_tokens((3, 8, 9), torch.float32, device).transpose(1, 2).requires_grad_()
    i64 = make_indices(3, 9, 4, torch.int64, device)
    i32 = make_indices(2, 9, 5, torch.int32, device)
    empty_b = make_tokens((0, 9, 8), torch.float32, device)
    return [
        ((t, i64), {}),
        ((t16, i32), {}),
        ((strided, i64), {}),
        ((empty_b, make_indices(0, 9, 4, device=device)), {}),
    ]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", range(4))
def test_opcheck_functional(device, case):
    args, kwargs = _opcheck_cases(device)[case]
    torch.library.opcheck(OP.default, args, kwargs)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", range(4))
def test_opcheck_out(device, case):
    (tokens, indices), _ = _opcheck_cases(device)[case]
    tokens = tokens.detach()
    out = torch.empty(tokens.shape[0], indices.shape[1], tokens.shape[2], dtype=tokens.dtype, device=device)
    torch.library.opcheck(OP.out, (tokens, indices), {"out": out})
    torch.library.opcheck(OP.out, (tokens, indices), {"out": torch.empty(0, dtype=tokens.dtype, device=device)})


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dynamic", [False, True])
def test_compile_fullgraph(device, dynamic):
    torch._dynamo.reset()

    def f(tokens, indices):
        return gather_tokens(tokens, indices) * 2

    compiled = torch.compile(f, fullgraph=True, dynamic=dynamic)
    for B, M, C, R in [(2, 10, 8, 4), (3, 12, 8, 5)]:
        tokens = make_tokens((B, M, C), torch.float32, device)
        indices = make_indices(B, M, R, torch.int32, device)
        assert torch.equal(compiled(tokens, indices), reference(tokens, indices) * 2)


@pytest.mark.parametrize("device", DEVICES)
def test_compile_backward_and_out(device):
    torch._dynamo.reset()
    tokens = make_tokens((2, 10, 8), torch.float32, device).requires_grad_()
    indices = make_indices(2, 10, 6, device=device)

    def loss(t, i):
        return (gather_tokens(t, i) ** 2).sum()

    torch.compile(loss, fullgraph=True, dynamic=True)(tokens, indices).backward()
    expected = torch.func.grad(lambda t: (reference(t, indices) ** 2).sum())(tokens.detach())
    torch.testing.assert_close(tokens.grad, expected)

    def into(t, i, o):
        gather_tokens(t, i, out=o)
        return o + 1

    out = torch.empty(2, 6, 8, device=device)
    res = torch.compile(into, fullgraph=True)(tokens.detach(), indices, out)
    assert torch.equal(out, reference(tokens.detach(), indices))
    assert torch.equal(res, out + 1)


def test_coexists_with_python_custom_ops():
    # TORCH_LIBRARY(litelvlm) in C++ + torch.library.custom_op("litelvlm::...") fragments.
    import litelvlm_kernels.ops  # noqa: F401

    names = {s.name for s in torch._C._jit_get_all_schemas() if s.name.startswith("litelvlm::")}
    assert "litelvlm::gather_tokens" in names
    assert hasattr(torch.ops.litelvlm, "fold_text") and hasattr(torch.ops.litelvlm, "gather_tokens")
    assert litelvlm_kernels.ops.gather_tokens is gather_tokens
