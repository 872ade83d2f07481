// CPU kernel of litelvlm::gather_tokens: out[b, r, :] = tokens[b, indices[b, r], :].
//
// Work split: at::parallel_for over the B*R output rows. When both the source
// and destination rows are contiguous along C, a row is one memcpy of
// C * itemsize bytes (2-16 KB for the shapes of DESIGN.md section 6), the same
// inner loop torch.index_select uses for contiguous slices; otherwise an
// element-by-element strided copy typed by the element size. The kernel only
// moves bytes, so every dtype (bool, int*, float*, complex*) works without
// AT_DISPATCH.
//
// Indices are validated in a serial pre-pass before any byte is written: the
// error names the first bad value and its position deterministically (a check
// inside the parallel loop would report whichever thread failed first) and
// out= is left untouched on error. The pass reads B*R integers: 12k for
// B=64, R=192, i.e. a few microseconds against milliseconds of copying.

#include "gather_tokens.h"

#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>
#include <ATen/native/Resize.h>
#include <ATen/ops/empty.h>
#include <c10/util/complex.h>
#include <torch/library.h>

#include <cstdint>
#include <cstring>

namespace litelvlm {
namespace {

// Rows per parallel task: GRAIN_SIZE (32768) elements, i.e. 64 KB of fp16 rows,
// the grain torch.index_select uses for its memcpy loop (GRAIN_SIZE / slice_size
// rows). Same split, same number of threads woken: smaller tasks cost more in
// OpenMP scheduling than they save (a wake-up is a few us, a 64 KB memcpy ~6 us
// on one core); with 2 threads B=1, R=64, C=1024 fp16 (128 KB) still splits in two.
constexpr int64_t kGrainElements = 32768;

template <typename index_t>
void validate_indices(const index_t* idx, int64_t B, int64_t R, int64_t isB, int64_t isR,
                      int64_t M) {
  for (int64_t b = 0; b < B; ++b) {
    const index_t* row = idx + b * isB;
    for (int64_t r = 0; r < R; ++r) {
      const int64_t v = static_cast<int64_t>(row[r * isR]);
      // One unsigned compare catches both v < 0 and v >= M.
      if (C10_UNLIKELY(static_cast<uint64_t>(v) >= static_cast<uint64_t>(M))) {
        TORCH_CHECK(false, "gather_tokens: index ", v, " out of range [0, ", M,
                    ") at indices[", b, ", ", r,
                    "] (tokens has M=", M, " rows; negative indices do not wrap)");
      }
    }
  }
}

// Strided copy of one row of n elements of type T.
template <typename T>
inline void copy_row_strided(char* dst, const char* src, int64_t n, int64_t dst_step,
                             int64_t src_step) {
  T* d = reinterpret_cast<T*>(dst);
  const T* s = reinterpret_cast<const T*>(src);
  for (int64_t c = 0; c < n; ++c) {
    d[c * dst_step] = s[c * src_step];
  }
}

struct Element16 {
  uint64_t lo, hi;
};

template <typename index_t>
void gather_kernel(const at::Tensor& tokens, const at::Tensor& indices, const at::Tensor& out) {
  const int64_t B = tokens.size(0), M = tokens.size(1), C = tokens.size(2);
  const int64_t R = indices.size(1);
  const index_t* idx = indices.const_data_ptr<index_t>();
  const int64_t isB = indices.stride(0), isR = indices.stride(1);

  validate_indices(idx, B, R, isB, isR, M);
  if (B == 0 || R == 0 || C == 0) {
    return;
  }

  const int64_t itemsize = static_cast<int64_t>(tokens.element_size());
  const char* src = static_cast<const char*>(tokens.const_data_ptr());
  char* dst = static_cast<char*>(out.data_ptr());
  // Byte strides of tokens and out.
  const int64_t tsB = tokens.stride(0) * itemsize, tsM = tokens.stride(1) * itemsize;
  const int64_t osB = out.stride(0) * itemsize, osR = out.stride(1) * itemsize;
  const int64_t tsC = tokens.stride(2), osC = out.stride(2);  // in elements
  const bool rows_contiguous = C == 1 || (tsC == 1 && osC == 1);
  const int64_t row_bytes = C * itemsize;
  const int64_t rows = B * R;
  const int64_t grain = std::max<int64_t>(1, kGrainElements / C);

  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    int64_t b = begin / R, r = begin % R;
    for (int64_t i = begin; i < end; ++i) {
      const int64_t m = static_cast<int64_t>(idx[b * isB + r * isR]);
      const char* s = src + b * tsB + m * tsM;
      char* d = dst + b * osB + r * osR;
      if (rows_contiguous) {
        std::memcpy(d, s, static_cast<size_t>(row_bytes));
      } else {
        switch (itemsize) {
          case 1: copy_row_strided<uint8_t>(d, s, C, osC, tsC); break;
          case 2: copy_row_strided<uint16_t>(d, s, C, osC, tsC); break;
          case 4: copy_row_strided<uint32_t>(d, s, C, osC, tsC); break;
          case 8: copy_row_strided<uint64_t>(d, s, C, osC, tsC); break;
          case 16: copy_row_strided<Element16>(d, s, C, osC, tsC); break;
          default:
            for (int64_t c = 0; c < C; ++c) {
              std::memcpy(d + c * osC * itemsize, s + c * tsC * itemsize,
                          static_cast<size_t>(itemsize));
            }
        }
      }
      if (++r == R) {
        r = 0;
        ++b;
      }
    }
  });
}

void gather_into(const at::Tensor& tokens, const at::Tensor& indices, const at::Tensor& out) {
  if (indices.scalar_type() == at::kLong) {
    gather_kernel<int64_t>(tokens, indices, out);
  } else {
    gather_kernel<int32_t>(tokens, indices, out);
  }
}

at::Tensor gather_tokens_cpu(const at::Tensor& tokens, const at::Tensor& indices) {
  check_gather_args(tokens, indices);
  at::Tensor out = at::empty({tokens.size(0), indices.size(1), tokens.size(2)}, tokens.options());
  gather_into(tokens, indices, out);
  return out;
}

at::Tensor& gather_tokens_out_cpu(const at::Tensor& tokens, const at::Tensor& indices,
                                  at::Tensor& out) {
  check_gather_args(tokens, indices);
  check_gather_out(tokens, out);
  // Resize as torch's out= ops do (a warning if a non-empty out had another shape).
  at::native::resize_output(out, {tokens.size(0), indices.size(1), tokens.size(2)});
  at::assert_no_internal_overlap(out);
  at::assert_no_overlap(out, tokens);
  at::assert_no_overlap(out, indices);
  gather_into(tokens, indices, out);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(litelvlm, CPU, m) {
  m.impl("gather_tokens", &gather_tokens_cpu);
  m.impl("gather_tokens.out", &gather_tokens_out_cpu);
}

}  // namespace litelvlm
