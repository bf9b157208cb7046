// LayerNorm over the last dimension, eps = 1e-5 (one warp per row).
//
//   forward:  μ = mean(x), rstd = 1/√(mean((x-μ)²) + eps), x̂ = (x-μ)·rstd,
//             out = x̂·w + b; μ and rstd saved per row.
//   backward: g = dout·w;  dinp += rstd·(g − mean(g) − x̂·mean(g·x̂))
//             dw += Σ_rows dout·x̂;  db += Σ_rows dout   (deterministic column sums)
// The variance is computed in two passes (mean first), like the CPU reference.
#include "common.cuh"
#include "cuda_ops.cuh"

namespace hh::cuda {
namespace {

constexpr float kLayerNormEps = 1e-5f;
constexpr int kWarpsPerBlock = 8;

// TO: float, or __half for layernorm_forward_half (mean and rstd null).
template <typename TO>
__global__ void layernorm_forward_kernel(TO* out, float* mean, float* rstd, const float* inp,
                                         const float* weight, const float* bias, int N, int C) {
  wait_for_previous_kernel();  // launched with launch(): see common.cuh
  const int lane = threadIdx.x % 32;
  const int row = blockIdx.x * kWarpsPerBlock + threadIdx.x / 32;
  if (row >= N) return;
  const float* x = inp + static_cast<size_t>(row) * C;
  float sum = 0.0f;
  for (int c = lane; c < C; c += 32) sum += x[c];
  const float m = warp_sum(sum) / C;
  float sum_sq = 0.0f;
  for (int c = lane; c < C; c += 32) {
    const float d = x[c] - m;
    sum_sq += d * d;
  }
  const float s = 1.0f / sqrtf(warp_sum(sum_sq) / C + kLayerNormEps);
  TO* o = out + static_cast<size_t>(row) * C;
  for (int c = lane; c < C; c += 32) {
    const float xhat = (x[c] - m) * s;
    store_value(o + c, xhat * weight[c] + (bias ? bias[c] : 0.0f));
  }
  if (lane == 0) {
    if (mean) mean[row] = m;
    if (rstd) rstd[row] = s;
  }
}

// The same for rows of C ≤ 32·K: the lane's K values are loaded once, all at once, and kept
// in registers, instead of three strided passes over memory (each a chain of dependent
// round trips: the forward of a decode step, 64 rows, is latency-bound). The sums add the
// lane's values in the loop kernel's order, so the results are the same.
template <int K, typename TO>
__global__ void layernorm_forward_regs_kernel(TO* out, float* mean, float* rstd, const float* inp,
                                              const float* weight, const float* bias, int N,
                                              int C) {
  wait_for_previous_kernel();  // launched with launch(): see common.cuh
  const int lane = threadIdx.x % 32;
  const int row = blockIdx.x * kWarpsPerBlock + threadIdx.x / 32;
  if (row >= N) return;
  const float* x = inp + static_cast<size_t>(row) * C;
  float v[K];
#pragma unroll
  for (int j = 0; j < K; j++) v[j] = lane + 32 * j < C ? x[lane + 32 * j] : 0.0f;
  float sum = 0.0f;
#pragma unroll
  for (int j = 0; j < K; j++)
    if (lane + 32 * j < C) sum += v[j];
  const float m = warp_sum(sum) / C;
  float sum_sq = 0.0f;
#pragma unroll
  for (int j = 0; j < K; j++) {
    if (lane + 32 * j < C) {
      const float d = v[j] - m;
      sum_sq += d * d;
    }
  }
  const float s = 1.0f / sqrtf(warp_sum(sum_sq) / C + kLayerNormEps);
  TO* o = out + static_cast<size_t>(row) * C;
#pragma unroll
  for (int j = 0; j < K; j++) {
    const int c = lane + 32 * j;
    if (c < C) {
      const float xhat = (v[j] - m) * s;
      store_value(o + c, xhat * weight[c] + (bias ? bias[c] : 0.0f));
    }
  }
  if (lane == 0) {
    if (mean) mean[row] = m;
    if (rstd) rstd[row] = s;
  }
}

__global__ void layernorm_backward_input_kernel(float* dinp, const float* dout, const float* inp,
                                                const float* weight, const float* mean,
                                                const float* rstd, int N, int C) {
  const int lane = threadIdx.x % 32;
  const int row = blockIdx.x * kWarpsPerBlock + threadIdx.x / 32;
  if (row >= N) return;
  const size_t offset = static_cast<size_t>(row) * C;
  const float* x = inp + offset;
  const float* dy = dout + offset;
  const float m = mean[row], s = rstd[row];
  float sum_g = 0.0f, sum_g_xhat = 0.0f;
  for (int c = lane; c < C; c += 32) {
    const float g = dy[c] * weight[c];
    sum_g += g;
    sum_g_xhat += g * (x[c] - m) * s;
  }
  const float mean_g = warp_sum(sum_g) / C;
  const float mean_g_xhat = warp_sum(sum_g_xhat) / C;
  float* dx = dinp + offset;
  for (int c = lane; c < C; c += 32) {
    const float g = dy[c] * weight[c];
    const float xhat = (x[c] - m) * s;
    dx[c] += s * (g - mean_g - xhat * mean_g_xhat);
  }
}

// f(n, c) = dout[n,c]·x̂[n,c], the summand of dweight.
struct DoutTimesXhat {
  const float* dout;
  const float* inp;
  const float* mean;
  const float* rstd;
  int C;
  __device__ float operator()(int n, int c) const {
    const size_t i = static_cast<size_t>(n) * C + c;
    return dout[i] * (inp[i] - mean[n]) * rstd[n];
  }
};

// f(n, c) = dout[n,c], the summand of dbias.
struct Dout {
  const float* dout;
  int C;
  __device__ float operator()(int n, int c) const { return dout[static_cast<size_t>(n) * C + c]; }
};

// Rows up to 1024 wide in registers (K = 8, 16, 24 or 32 values per lane); wider ones loop.
template <typename TO>
void launch_layernorm_forward(Context& ctx, TO* out, float* mean, float* rstd, const float* inp,
                              const float* weight, const float* bias, int N, int C) {
  if (N <= 0 || C <= 0) return;
  const int blocks = ceil_div(N, kWarpsPerBlock), threads = 32 * kWarpsPerBlock;
  const auto run = [&](auto* kernel) {
    launch(ctx, kernel, blocks, threads, 0, out, mean, rstd, inp, weight, bias, N, C);
  };
  switch ((C + 255) / 256 * 8) {
    case 8:
      return run(layernorm_forward_regs_kernel<8, TO>);
    case 16:
      return run(layernorm_forward_regs_kernel<16, TO>);
    case 24:
      return run(layernorm_forward_regs_kernel<24, TO>);
    case 32:
      return run(layernorm_forward_regs_kernel<32, TO>);
    default:
      return run(layernorm_forward_kernel<TO>);
  }
}

}  // namespace

void layernorm_forward(Context& ctx, float* out, float* mean, float* rstd, const float* inp,
                       const float* weight, const float* bias, int N, int C) {
  launch_layernorm_forward(ctx, out, mean, rstd, inp, weight, bias, N, C);
}

void layernorm_forward_half(Context& ctx, void* out, const float* inp, const float* weight,
                            const float* bias, int N, int C) {
  launch_layernorm_forward(ctx, static_cast<__half*>(out), nullptr, nullptr, inp, weight, bias, N,
                           C);
}

void layernorm_backward(Context& ctx, float* dinp, float* dweight, float* dbias, const float* dout,
                        const float* inp, const float* weight, const float* mean, const float* rstd,
                        int N, int C) {
  if (N <= 0 || C <= 0) return;
  if (dinp) {
    layernorm_backward_input_kernel<<<ceil_div(N, kWarpsPerBlock), 32 * kWarpsPerBlock, 0,
                                      ctx.stream>>>(dinp, dout, inp, weight, mean, rstd, N, C);
    CUDA_CHECK_LAUNCH();
  }
  if (dweight) column_sum_add(ctx, dweight, DoutTimesXhat{dout, inp, mean, rstd, C}, N, C);
  if (dbias) column_sum_add(ctx, dbias, Dout{dout, C}, N, C);
}

}  // namespace hh::cuda
