// Token + position embedding.
//   forward:  out[b,t,:] = wte[tokens[b,t],:] + wpe[t,:]
//   backward: dwte[tokens[b,t],:] += dout[b,t,:];  dwpe[t,:] += Σ_b dout[b,t,:]
// The backward pass is deterministic: the same token may appear many times, so instead of
// parallel rows (which would race on dwte) each thread owns a slice of the C channels and
// walks all rows in order; the sums come out bit-identical for any thread count.
#include <algorithm>

#include "core/error.h"
#include "ops/cpu/cpu_ops.h"

namespace hh::cpu {

namespace {
void check_tokens(const int32_t* tokens, int64_t n) {
  for (int64_t i = 0; i < n; i++) {
    HH_CHECK(tokens[i] >= 0, "embedding: token ", tokens[i], " at position ", i, " is negative");
  }
}
}  // namespace

void embedding_forward(float* out, const int32_t* tokens, const float* wte, const float* wpe, int B,
                       int T, int C) {
  check_tokens(tokens, static_cast<int64_t>(B) * T);
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < static_cast<int64_t>(B) * T; row++) {
    const int t = static_cast<int>(row % T);
    const float* __restrict token_row = wte + static_cast<int64_t>(tokens[row]) * C;
    const float* __restrict pos_row = wpe + static_cast<int64_t>(t) * C;
    float* __restrict out_row = out + row * C;
    for (int c = 0; c < C; c++) out_row[c] = token_row[c] + pos_row[c];
  }
}

void embedding_backward(float* dwte, float* dwpe, const float* dout, const int32_t* tokens, int B,
                        int T, int C) {
  check_tokens(tokens, static_cast<int64_t>(B) * T);
  // Slices of 64 channels (four cache lines): contiguous inner loops that vectorise.
  const int kSlice = 64;
  const int num_slices = (C + kSlice - 1) / kSlice;
#pragma omp parallel for schedule(static)
  for (int slice = 0; slice < num_slices; slice++) {
    const int c0 = slice * kSlice;
    const int c1 = std::min(C, c0 + kSlice);
    for (int b = 0; b < B; b++) {
      for (int t = 0; t < T; t++) {
        const int64_t row = static_cast<int64_t>(b) * T + t;
        const float* __restrict g = dout + row * C;
        float* __restrict token_grad = dwte + static_cast<int64_t>(tokens[row]) * C;
        float* __restrict pos_grad = dwpe + static_cast<int64_t>(t) * C;
        for (int c = c0; c < c1; c++) {
          token_grad[c] += g[c];
          pos_grad[c] += g[c];
        }
      }
    }
  }
}

}  // namespace hh::cpu
