// CUDA kernel of litelvlm::gather_tokens: out[b, r, :] = tokens[b, indices[b, r], :].
//
// One block row (blockIdx.x) per output row b*R + r; blockIdx.y splits long rows.
// Every thread of the block reads the row's index (one broadcast load), checks it
// with CUDA_KERNEL_ASSERT (a device-side assert, as torch.index_select does: a host
// check would need a synchronisation) and copies its share of the row.
//
// Two paths:
// - rows contiguous along C in both tokens and out: the row is copied as
//   vectors of W bytes, W the largest of 16/8/4/2/1 that divides both base
//   pointers, the row length C*itemsize and the row strides (so fp16 C=1024
//   rows move as 128 uint4 = 16-byte loads/stores, LDG.128/STG.128);
// - otherwise (C stride != 1, e.g. a transposed view): an element-by-element
//   strided copy typed by the element size (the scalar fallback).
// The kernels move bytes, never values, so every dtype works (bool, int*,
// float8/16/32/64, complex).
//
// Block size: enough threads for the row at kUnroll vectors each, 32..256. With
// B=64, R=192, C=4096 fp16 (8 KB rows) that is 128 threads x 4 x 16 B per row and
// 12288 blocks: ~16 resident blocks x 8 KB = 128 KB in flight per SM, well above
// the ~15 KB/SM that bandwidth x latency needs (H100 SXM datasheet 3.35 TB/s x ~600 ns
// DRAM latency, over 132 SMs).
//
// Headers: only c10/cuda ones, not ATen/cuda/CUDAContext.h (it pulls cuBLAS /
// cuSPARSE headers that a bare toolkit may lack; docs/gather.md, "Building with
// CUDA"). Everything runs on the current stream, nothing synchronises.

#include "../gather_tokens.h"

#include <ATen/MemoryOverlap.h>
#include <ATen/native/Resize.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/macros/Macros.h>
#include <torch/library.h>

#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <limits>

namespace litelvlm {
namespace {

constexpr int kUnroll = 4;        // vectors in flight per thread (loads issued before stores)
constexpr int kMaxThreads = 256;  // per block
constexpr int kMaxGridY = 65535;  // CUDA limit of gridDim.y

// 16-byte element of the strided path (complex128): 8-byte aligned is enough there.
struct alignas(8) Bytes16 {
  uint64_t lo, hi;
};

struct GatherParams {
  int64_t R, M;
  int64_t tsB, tsM;  // tokens row strides, bytes
  int64_t osB, osR;  // out row strides, bytes
  int64_t tsC, osC;  // strides along C, elements (strided path only)
  int64_t isB, isR;  // indices strides, elements
  int64_t n;         // vectors (contiguous path) or elements (strided path) per row
};

// Reads indices[b, r] and asserts 0 <= m < M (negative indices do not wrap).
template <typename index_t>
__device__ __forceinline__ int64_t row_index(const index_t* __restrict__ idx, int64_t b, int64_t r,
                                             const GatherParams& p) {
  const int64_t m = static_cast<int64_t>(idx[b * p.isB + r * p.isR]);
  if (C10_UNLIKELY(m < 0 || m >= p.M)) {
    if (threadIdx.x == 0 && blockIdx.y == 0) {
      printf("litelvlm gather_tokens: index %lld out of range [0, %lld) at indices[%lld, %lld]\n",
             static_cast<long long>(m), static_cast<long long>(p.M), static_cast<long long>(b),
             static_cast<long long>(r));
    }
  }
  CUDA_KERNEL_ASSERT(m >= 0 && m < p.M);
  return m;
}

template <typename T>
struct RowPointers {
  const T* src;
  T* dst;
};

// The source and destination rows of output row blockIdx.x = b * R + r, as T*; the index is
// checked (row_index). Shared by both kernels.
template <typename T, typename index_t>
__device__ __forceinline__ RowPointers<T> row_pointers(const char* src, char* dst,
                                                       const index_t* __restrict__ idx,
                                                       const GatherParams& p) {
  const int64_t b = blockIdx.x / p.R;
  const int64_t r = blockIdx.x - b * p.R;
  const int64_t m = row_index(idx, b, r, p);
  return {reinterpret_cast<const T*>(src + b * p.tsB + m * p.tsM),
          reinterpret_cast<T*>(dst + b * p.osB + r * p.osR)};
}

// Contiguous rows, copied as vectors of type V (16, 8, 4, 2 or 1 bytes).
// grid (B*R, chunks), block (threads): block (row, y) copies vectors
// [y * threads * kUnroll, ...) of row `row`, striding by gridDim.y chunks.
template <typename V, typename index_t>
__global__ void gather_rows_kernel(const char* __restrict__ src, char* __restrict__ dst,
                                   const index_t* __restrict__ idx, GatherParams p) {
  const RowPointers<V> row = row_pointers<V>(src, dst, idx, p);
  const V* __restrict__ s = row.src;
  V* __restrict__ d = row.dst;
  const int64_t step = static_cast<int64_t>(blockDim.x) * kUnroll;
  for (int64_t base = blockIdx.y * step + threadIdx.x; base < p.n; base += gridDim.y * step) {
    V v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = base + u * static_cast<int64_t>(blockDim.x);
      if (i < p.n) v[u] = s[i];
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = base + u * static_cast<int64_t>(blockDim.x);
      if (i < p.n) d[i] = v[u];
    }
  }
}

// Scalar fallback: any C strides, one element of type T (the dtype's size) at a time.
template <typename T, typename index_t>
__global__ void gather_strided_kernel(const char* __restrict__ src, char* __restrict__ dst,
                                      const index_t* __restrict__ idx, GatherParams p) {
  const RowPointers<T> row = row_pointers<T>(src, dst, idx, p);
  const T* __restrict__ s = row.src;
  T* __restrict__ d = row.dst;
  for (int64_t c = blockIdx.y * static_cast<int64_t>(blockDim.x) + threadIdx.x; c < p.n;
       c += static_cast<int64_t>(gridDim.y) * blockDim.x) {
    d[c * p.osC] = s[c * p.tsC];
  }
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Calls f(T{}) with T the unsigned type of `bytes` bytes (1, 2, 4, 8), or Wide16 for 16:
// uint4 (16-byte aligned, 128-bit loads) for vectors, Bytes16 (8-byte aligned) for elements.
template <typename Wide16, typename F>
void with_type_of_size(int64_t bytes, const at::Tensor& tokens, F&& f) {
  switch (bytes) {
    case 1: f(uint8_t{}); break;
    case 2: f(uint16_t{}); break;
    case 4: f(uint32_t{}); break;
    case 8: f(uint64_t{}); break;
    case 16: f(Wide16{}); break;
    default: TORCH_CHECK(false, "gather_tokens: unsupported element size ", bytes, " for dtype ",
                         tokens.scalar_type());
  }
}

template <typename index_t, typename Launch>
void launch(int64_t rows, int64_t work_per_thread, const GatherParams& p, Launch&& kernel_launch) {
  // Threads: enough for one pass over the row, rounded to a warp, 32..256.
  const int64_t want = ceil_div(p.n, work_per_thread);
  const int threads = static_cast<int>(std::min<int64_t>(kMaxThreads, std::max<int64_t>(32, ceil_div(want, 32) * 32)));
  const int64_t chunks = std::min<int64_t>(kMaxGridY, ceil_div(p.n, threads * work_per_thread));
  kernel_launch(dim3(static_cast<unsigned>(rows), static_cast<unsigned>(chunks)), dim3(threads));
}

template <typename index_t>
void gather_cuda_typed(const at::Tensor& tokens, const at::Tensor& indices, const at::Tensor& out) {
  const int64_t B = tokens.size(0), M = tokens.size(1), C = tokens.size(2);
  const int64_t R = indices.size(1);
  const int64_t rows = B * R;
  if (rows == 0 || C == 0) {
    return;  // nothing to copy (with C == 0 the indices are not checked on CUDA)
  }
  TORCH_CHECK(rows <= std::numeric_limits<int32_t>::max(),
              "gather_tokens: B*R = ", rows, " rows exceed the CUDA grid limit (2^31 - 1)");
  const int64_t itemsize = static_cast<int64_t>(tokens.element_size());
  const char* src = static_cast<const char*>(tokens.const_data_ptr());
  char* dst = static_cast<char*>(out.data_ptr());
  const index_t* idx = indices.const_data_ptr<index_t>();

  GatherParams p;
  p.R = R;
  p.M = M;
  p.tsB = tokens.stride(0) * itemsize;
  p.tsM = tokens.stride(1) * itemsize;
  p.osB = out.stride(0) * itemsize;
  p.osR = out.stride(1) * itemsize;
  p.tsC = tokens.stride(2);
  p.osC = out.stride(2);
  p.isB = indices.stride(0);
  p.isR = indices.stride(1);

  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(tokens.device().index()).stream();
  const bool rows_contiguous = C == 1 || (p.tsC == 1 && p.osC == 1);

  if (rows_contiguous) {
    const int64_t row_bytes = C * itemsize;
    // Widest vector dividing every byte offset the kernel forms: the base pointers,
    // the row length, and the row strides that actually vary (B, M, R > 1).
    uint64_t bits = static_cast<uint64_t>(row_bytes) | reinterpret_cast<uintptr_t>(src) |
                    reinterpret_cast<uintptr_t>(dst) | 16u;
    if (B > 1) bits |= static_cast<uint64_t>(p.tsB) | static_cast<uint64_t>(p.osB);
    if (M > 1) bits |= static_cast<uint64_t>(p.tsM);
    if (R > 1) bits |= static_cast<uint64_t>(p.osR);
    const int64_t width = static_cast<int64_t>(bits & (~bits + 1));  // lowest set bit, <= 16
    p.n = row_bytes / width;
    with_type_of_size<uint4>(width, tokens, [&](auto vec_tag) {
      using V = decltype(vec_tag);
      launch<index_t>(rows, kUnroll, p, [&](dim3 grid, dim3 block) {
        gather_rows_kernel<V, index_t><<<grid, block, 0, stream>>>(src, dst, idx, p);
      });
    });
  } else {
    p.n = C;
    with_type_of_size<Bytes16>(itemsize, tokens, [&](auto elem_tag) {
      using T = decltype(elem_tag);
      launch<index_t>(rows, 1, p, [&](dim3 grid, dim3 block) {
        gather_strided_kernel<T, index_t><<<grid, block, 0, stream>>>(src, dst, idx, p);
      });
    });
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void gather_into_cuda(const at::Tensor& tokens, const at::Tensor& indices, const at::Tensor& out) {
  const c10::cuda::CUDAGuard guard(tokens.device());
  if (indices.scalar_type() == at::kLong) {
    gather_cuda_typed<int64_t>(tokens, indices, out);
  } else {
    gather_cuda_typed<int32_t>(tokens, indices, out);
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(litelvlm, CUDA, m) {
  m.impl("gather_tokens", &gather_tokens_functional<&gather_into_cuda>);
  m.impl("gather_tokens.out", &gather_tokens_out<&gather_into_cuda>);
}

}  // namespace litelvlm
