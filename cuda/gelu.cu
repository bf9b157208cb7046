// tanh-GELU, elementwise.
//   forward:  y = 0.5·x·(1 + tanh(u)),  u = √(2/π)·(x + 0.044715·x³)
//   backward: dinp = dout·(0.5·(1 + tanh(u)) + 0.5·x·(1 − tanh²(u))·√(2/π)·(1 + 3·0.044715·x²))
//             (overwrite: an activation gradient)
#include "common.cuh"
#include "cuda_ops.cuh"

namespace hh::cuda {
namespace {

constexpr float kGeluScale = 0.7978845608028654f;  // √(2/π)
constexpr float kGeluCubic = 0.044715f;

// tanh as a 13/6 rational function (Eigen's float tanh, the same one the CPU backend uses
// in src/ops/cpu/fast_math.h), clamped where tanh rounds to ±1 in float. Not tanhf: with
// --use_fast_math nvcc turns tanhf into tanh.approx.f32, whose ~2^-11 relative error is
// far above fp32 rounding.
__device__ __forceinline__ float accurate_tanh(float x) {
  const float kClamp = 7.90531110763549805f;
  if (fabsf(x) >= kClamp) return copysignf(1.0f, x);  // exactly ±1, as on the CPU
  x = fminf(fmaxf(x, -kClamp), kClamp);
  const float x2 = x * x;
  float p = -2.76076847742355e-16f;
  p = p * x2 + 2.00018790482477e-13f;
  p = p * x2 + -8.60467152213735e-11f;
  p = p * x2 + 5.12229709037114e-08f;
  p = p * x2 + 1.48572235717979e-05f;
  p = p * x2 + 6.37261928875436e-04f;
  p = p * x2 + 4.89352455891786e-03f;
  p = p * x;
  float q = 1.19825839466702e-06f;
  q = q * x2 + 1.18534705686654e-04f;
  q = q * x2 + 2.26843463243900e-03f;
  q = q * x2 + 4.89352518554385e-03f;
  return __fdiv_rn(p, q);  // IEEE division (fast-math would make p/q approximate)
}

__global__ void gelu_forward_kernel(float* out, const float* inp, size_t n) {
  wait_for_previous_kernel();  // launched with launch(): see common.cuh
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x) {
    const float x = inp[i];
    const float u = kGeluScale * (x + kGeluCubic * x * x * x);
    out[i] = 0.5f * x * (1.0f + accurate_tanh(u));
  }
}

__global__ void gelu_backward_kernel(float* dinp, const float* inp, const float* dout, size_t n) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x) {
    const float x = inp[i];
    const float u = kGeluScale * (x + kGeluCubic * x * x * x);
    const float th = accurate_tanh(u);
    const float sech2 = 1.0f - th * th;
    const float local =
        0.5f * (1.0f + th) + 0.5f * x * sech2 * kGeluScale * (1.0f + 3.0f * kGeluCubic * x * x);
    dinp[i] = dout[i] * local;
  }
}

}  // namespace

void gelu_forward(Context& ctx, float* out, const float* inp, size_t n) {
  if (n == 0) return;
  launch(ctx, gelu_forward_kernel, grid_for(n, 256, ctx), 256, 0, out, inp, n);
}

void gelu_backward(Context& ctx, float* dinp, const float* inp, const float* dout, size_t n) {
  if (n == 0) return;
  gelu_backward_kernel<<<grid_for(n, 256, ctx), 256, 0, ctx.stream>>>(dinp, inp, dout, n);
  CUDA_CHECK_LAUNCH();
}

}  // namespace hh::cuda
