// CPU kernel of litelvlm::gather_tokens: out[b, r, :] = tokens[b, indices[b, r], :].
//
// Work split: at::parallel_for over the B*R output rows. When both the source
// and destination rows are contiguous along C, a row is one memcpy of
// C * itemsize bytes (2-16 KB for the shapes of docs/design.md section 6), the
// same inner loop torch.index_select uses for contiguous slices; otherwise an
// element-by-element strided copy typed by the element size. The kernel only
// moves bytes, so every dtype (bool, int*, float*, complex*) works without
// AT_DISPATCH.
//
// Indices are validated in a serial pre-pass before any byte is written: the
// error names the first bad value and its position deterministically (a check
// inside the parallel loop would report whichever thread failed first) and
// out= is left untouched on error. The pass reads B*R integers (12288 at B=64,
// R=192) against B*R*C elements copied, so it is C times cheaper than the copy.
// Measured numbers behind these choices: docs/gather.md, "Design measurements".

#include "gather_tokens.h"

#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>
#include <ATen/native/Resize.h>
#include <ATen/ops/empty.h>
#include <c10/util/complex.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace litelvlm {
namespace {

// Rows per parallel task: GRAIN_SIZE (32768) elements, i.e. 64 KB of fp16 rows,
// the grain torch.index_select uses for its memcpy loop (GRAIN_SIZE / slice_size
// rows): same split, same number of threads woken (smaller tasks cost more in
// OpenMP scheduling than they save; docs/gather.md). With 2 threads, B=1, R=64,
// C=1024 fp16 (128 KB) still splits in two.
constexpr int64_t kGrainElements = 32768;

template <typename index_t>
[[noreturn]] void report_bad_index(const index_t* idx, int64_t B, int64_t R, int64_t isB,
                                   int64_t isR, int64_t M) {
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t r = 0; r < R; ++r) {
      const int64_t v = static_cast<int64_t>(idx[b * isB + r * isR]);
      if (v < 0 || v >= M) {
        TORCH_CHECK(false, "gather_tokens: index ", v, " out of range [0, ", M,
                    ") at indices[", b, ", ", r,
                    "] (tokens has M=", M, " rows; negative indices do not wrap)");
      }
    }
  }
  TORCH_INTERNAL_ASSERT(false, "gather_tokens: no bad index found on the second pass");
}

// Branch-free check: the largest index seen as unsigned (a negative one becomes
// huge) must be < M. The loop vectorises, unlike a compare-and-branch per index
// (about 5x faster; docs/gather.md); only when it fails does a second pass look
// for the first bad index to name it.
template <typename index_t>
void validate_indices(const index_t* idx, int64_t B, int64_t R, int64_t isB, int64_t isR,
                      int64_t M) {
  uint64_t worst = 0;
  for (int64_t b = 0; b < B; ++b) {
    const index_t* row = idx + b * isB;
    if (isR == 1) {
      for (int64_t r = 0; r < R; ++r) {
        worst = std::max(worst, static_cast<uint64_t>(static_cast<int64_t>(row[r])));
      }
    } else {
      for (int64_t r = 0; r < R; ++r) {
        worst = std::max(worst, static_cast<uint64_t>(static_cast<int64_t>(row[r * isR])));
      }
    }
  }
  if (C10_UNLIKELY(B > 0 && R > 0 && worst >= static_cast<uint64_t>(M))) {
    report_bad_index(idx, B, R, isB, isR, M);
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

  // copy_row(dst_row, src_row) is chosen once, outside the row loop.
  auto for_each_row = [&](auto copy_row) {
    at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
      int64_t b = begin / R, r = begin % R;
      const index_t* idx_b = idx + b * isB;
      const char* src_b = src + b * tsB;
      char* dst_b = dst + b * osB;
      for (int64_t i = begin; i < end; ++i) {
        const int64_t m = static_cast<int64_t>(idx_b[r * isR]);
        copy_row(dst_b + r * osR, src_b + m * tsM);
        if (++r == R) {
          r = 0;
          idx_b += isB;
          src_b += tsB;
          dst_b += osB;
        }
      }
    });
  };
  if (rows_contiguous) {
    for_each_row([row_bytes](char* d, const char* s) {
      std::memcpy(d, s, static_cast<size_t>(row_bytes));
    });
    return;
  }
  auto strided = [&](auto elem_tag) {
    using T = decltype(elem_tag);
    for_each_row([C, osC, tsC](char* d, const char* s) { copy_row_strided<T>(d, s, C, osC, tsC); });
  };
  switch (itemsize) {
    case 1: strided(uint8_t{}); break;
    case 2: strided(uint16_t{}); break;
    case 4: strided(uint32_t{}); break;
    case 8: strided(uint64_t{}); break;
    case 16: strided(Element16{}); break;
    default:
      for_each_row([C, osC, tsC, itemsize](char* d, const char* s) {
        for (int64_t c = 0; c < C; ++c) {
          std::memcpy(d + c * osC * itemsize, s + c * tsC * itemsize, static_cast<size_t>(itemsize));
        }
      });
  }
}

void gather_into(const at::Tensor& tokens, const at::Tensor& indices, const at::Tensor& out) {
  if (indices.scalar_type() == at::kLong) {
    gather_kernel<int64_t>(tokens, indices, out);
  } else {
    gather_kernel<int32_t>(tokens, indices, out);
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(litelvlm, CPU, m) {
  m.impl("gather_tokens", &gather_tokens_functional<&gather_into>);
  m.impl("gather_tokens.out", &gather_tokens_out<&gather_into>);
}

}  // namespace litelvlm
