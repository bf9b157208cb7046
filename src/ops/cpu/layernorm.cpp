// LayerNorm over the last dimension (C) of N rows, eps = 1e-5, biased variance:
//   μ = mean(x), σ² = mean((x-μ)²), rstd = 1/√(σ² + eps), n = (x-μ)·rstd
//   out = n·w + b                          (mean and rstd saved for the backward pass)
// backward, with g = dout·w:
//   dx += rstd·(g - mean(g) - n·mean(g·n))
//   dw += Σ_rows dout·n,   db += Σ_rows dout
// Rows are independent, so the forward pass and dx are parallel over rows. dw and db sum
// over rows; they run as a second pass where each thread owns a slice of channels and walks
// the rows in order, so the result does not depend on the thread count.
#include <algorithm>
#include <cmath>

#include "ops/cpu/cpu_ops.h"

namespace hh::cpu {

void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                       const float* bias, int N, int C) {
  const float eps = 1e-5f;
#pragma omp parallel for schedule(static)
  for (int i = 0; i < N; i++) {
    const float* __restrict x = inp + static_cast<int64_t>(i) * C;
    float* __restrict y = out + static_cast<int64_t>(i) * C;
    // Two passes (mean, then centred squares) avoid the cancellation of E[x²] - μ².
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int c = 0; c < C; c++) sum += x[c];
    const float mu = sum / C;
    float sum_sq = 0.0f;
#pragma omp simd reduction(+ : sum_sq)
    for (int c = 0; c < C; c++) {
      const float d = x[c] - mu;
      sum_sq += d * d;
    }
    const float s = 1.0f / std::sqrt(sum_sq / C + eps);
    for (int c = 0; c < C; c++) y[c] = (x[c] - mu) * s * weight[c] + bias[c];
    mean[i] = mu;
    rstd[i] = s;
  }
}

void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                        const float* inp, const float* weight, const float* mean, const float* rstd,
                        int N, int C) {
  // Pass 1: dx, row by row.
#pragma omp parallel for schedule(static)
  for (int i = 0; i < N; i++) {
    const float* __restrict x = inp + static_cast<int64_t>(i) * C;
    const float* __restrict g = dout + static_cast<int64_t>(i) * C;
    float* __restrict dx = dinp + static_cast<int64_t>(i) * C;
    const float mu = mean[i], s = rstd[i];
    float mean_gw = 0.0f, mean_gwn = 0.0f;
#pragma omp simd reduction(+ : mean_gw, mean_gwn)
    for (int c = 0; c < C; c++) {
      const float gw = g[c] * weight[c];
      mean_gw += gw;
      mean_gwn += gw * (x[c] - mu) * s;
    }
    mean_gw /= C;
    mean_gwn /= C;
    for (int c = 0; c < C; c++) {
      const float n = (x[c] - mu) * s;
      dx[c] += s * (g[c] * weight[c] - mean_gw - n * mean_gwn);
    }
  }
  // Pass 2: dw and db, one slice of channels per task, rows summed in order.
  const int kSlice = 64;
  const int num_slices = (C + kSlice - 1) / kSlice;
#pragma omp parallel for schedule(static)
  for (int slice = 0; slice < num_slices; slice++) {
    const int c0 = slice * kSlice;
    const int width = std::min(C, c0 + kSlice) - c0;
    float dw[kSlice] = {0}, db[kSlice] = {0};
    for (int i = 0; i < N; i++) {
      const float* __restrict x = inp + static_cast<int64_t>(i) * C + c0;
      const float* __restrict g = dout + static_cast<int64_t>(i) * C + c0;
      const float mu = mean[i], s = rstd[i];
      for (int c = 0; c < width; c++) {
        dw[c] += g[c] * (x[c] - mu) * s;
        db[c] += g[c];
      }
    }
    for (int c = 0; c < width; c++) {
      dweight[c0 + c] += dw[c];
      dbias[c0 + c] += db[c];
    }
  }
}

}  // namespace hh::cpu
