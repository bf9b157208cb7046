// AdamW and the flat-buffer utilities (grid-stride loops over the parameter buffer).
//   adamw:       m = β1·m + (1−β1)·g;  v = β2·v + (1−β2)·g²;
//                p −= lr·( m̂/(√v̂ + eps) + wd·p ),  m̂ = m/(1−β1^t),  v̂ = v/(1−β2^t),
//                g = grads·grad_scale (the clip coefficient; grads are left as they are)
//   sum_squares: Σ x² in double, two stages with a fixed grid (deterministic: the same
//                partial sums in the same order every call), result copied to the host.
//   scale:       x *= s
#include <cmath>

#include "common.cuh"
#include "cuda_ops.cuh"

namespace hh::cuda {
namespace {

__global__ void adamw_kernel(float* params, const float* grads, float* m, float* v, size_t n,
                             float lr, float beta1, float beta2, float eps, float weight_decay,
                             float bias_correction1, float bias_correction2, float grad_scale) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x) {
    const float g = grads[i] * grad_scale;
    const float m_i = beta1 * m[i] + (1.0f - beta1) * g;
    const float v_i = beta2 * v[i] + (1.0f - beta2) * g * g;
    m[i] = m_i;
    v[i] = v_i;
    const float m_hat = m_i / bias_correction1;
    const float v_hat = v_i / bias_correction2;
    const float p = params[i];
    params[i] = p - lr * (m_hat / (sqrtf(v_hat) + eps) + weight_decay * p);
  }
}

constexpr int kSumThreads = 256;

__device__ double block_sum_double(double x) {
  __shared__ double shared[32];
  for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(0xffffffffu, x, offset);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) shared[warp] = x;
  __syncthreads();
  double total = 0.0;
  if (threadIdx.x == 0)
    for (int w = 0; w < static_cast<int>(blockDim.x / 32); w++) total += shared[w];
  return total;  // valid in thread 0
}

__global__ void sum_squares_partials_kernel(double* partials, const float* x, size_t n) {
  double acc = 0.0;
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x) {
    const double xi = x[i];
    acc += xi * xi;
  }
  const double total = block_sum_double(acc);
  if (threadIdx.x == 0) partials[blockIdx.x] = total;
}

__global__ void sum_squares_finish_kernel(double* result, const double* partials, int count) {
  double acc = 0.0;
  for (int i = threadIdx.x; i < count; i += blockDim.x) acc += partials[i];
  const double total = block_sum_double(acc);
  if (threadIdx.x == 0) *result = total;
}

__global__ void scale_kernel(float* x, float s, size_t n) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x)
    x[i] *= s;
}

}  // namespace

void adamw_update(Context& ctx, float* params, const float* grads, float* m, float* v, size_t n,
                  const AdamWParams& hp) {
  if (n == 0) return;
  HH_CHECK(hp.step >= 1, "adamw_update: step must be >= 1 (1-based), got ", hp.step);
  // Bias corrections in double on the host: 1 − β^t loses nothing for large t.
  const float bias_correction1 = static_cast<float>(
      1.0 - std::pow(static_cast<double>(hp.beta1), static_cast<double>(hp.step)));
  const float bias_correction2 = static_cast<float>(
      1.0 - std::pow(static_cast<double>(hp.beta2), static_cast<double>(hp.step)));
  adamw_kernel<<<grid_for(n, 256, ctx), 256, 0, ctx.stream>>>(
      params, grads, m, v, n, hp.lr, hp.beta1, hp.beta2, hp.eps, hp.weight_decay, bias_correction1,
      bias_correction2, hp.grad_scale);
  CUDA_CHECK_LAUNCH();
}

double sum_squares(Context& ctx, const float* x, size_t n) {
  if (n == 0) return 0.0;
  const int blocks = ctx.num_sms * 4;  // fixed per device: same order every call
  double* partials = static_cast<double*>(ctx.scratch(sizeof(double) * (blocks + 1)));
  double* result = partials + blocks;
  sum_squares_partials_kernel<<<blocks, kSumThreads, 0, ctx.stream>>>(partials, x, n);
  CUDA_CHECK_LAUNCH();
  sum_squares_finish_kernel<<<1, kSumThreads, 0, ctx.stream>>>(result, partials, blocks);
  CUDA_CHECK_LAUNCH();
  double host = 0.0;
  CUDA_CHECK(cudaMemcpyAsync(&host, result, sizeof(double), cudaMemcpyDeviceToHost, ctx.stream));
  CUDA_CHECK(cudaStreamSynchronize(ctx.stream));
  return host;
}

void scale(Context& ctx, float* x, float s, size_t n) {
  if (n == 0) return;
  scale_kernel<<<grid_for(n, 256, ctx), 256, 0, ctx.stream>>>(x, s, n);
  CUDA_CHECK_LAUNCH();
}

}  // namespace hh::cuda
