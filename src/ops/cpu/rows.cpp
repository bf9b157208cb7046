// Row gather/scatter, used by the scalar head (one row per sequence, e.g. its last token).
//   gather_rows:      out[m,:] = inp[rows[m],:]
//   scatter_add_rows: dinp[rows[m],:] += dout[m,:]
// The scatter may hit the same row twice, so it walks m in order (deterministic) and
// splits the channels, not the rows, across threads.
#include <algorithm>

#include "core/error.h"
#include "ops/cpu/cpu_ops.h"

namespace hh::cpu {

namespace {
void check_rows(const char* op, const int32_t* rows, int M) {
  for (int m = 0; m < M; m++) {
    HH_CHECK(rows[m] >= 0, op, ": rows[", m, "]=", rows[m], " is negative");
  }
}
}  // namespace

void gather_rows(float* out, const float* inp, const int32_t* rows, int M, int C) {
  check_rows("gather_rows", rows, M);
#pragma omp parallel for schedule(static)
  for (int m = 0; m < M; m++) {
    const float* __restrict src = inp + static_cast<int64_t>(rows[m]) * C;
    float* __restrict dst = out + static_cast<int64_t>(m) * C;
    for (int c = 0; c < C; c++) dst[c] = src[c];
  }
}

void scatter_add_rows(float* dinp, const float* dout, const int32_t* rows, int M, int C) {
  check_rows("scatter_add_rows", rows, M);
  const int kSlice = 256;
  const int num_slices = (C + kSlice - 1) / kSlice;
#pragma omp parallel for schedule(static)
  for (int slice = 0; slice < num_slices; slice++) {
    const int c0 = slice * kSlice;
    const int c1 = std::min(C, c0 + kSlice);
    for (int m = 0; m < M; m++) {
      const float* __restrict src = dout + static_cast<int64_t>(m) * C;
      float* __restrict dst = dinp + static_cast<int64_t>(rows[m]) * C;
      for (int c = c0; c < c1; c++) dst[c] += src[c];
    }
  }
}

}  // namespace hh::cpu
