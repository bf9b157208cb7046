// GELU, tanh approximation (GPT-2), with u = √(2/π)·(x + 0.044715·x³):
//   forward:  y = 0.5·x·(1 + tanh(u))
//   backward: dx = dout·(0.5·(1 + tanh(u)) + 0.5·x·(1 - tanh²(u))·√(2/π)·(1 + 3·0.044715·x²))
// dx is overwritten (an activation gradient). tanh is fast_tanh so the loops vectorise.
#include "ops/cpu/cpu_ops.h"
#include "ops/cpu/fast_math.h"

namespace hh::cpu {

namespace {
const float kSqrt2OverPi = 0.7978845608028654f;
const float kCubic = 0.044715f;
}  // namespace

void gelu_forward(float* out, const float* inp, size_t n) {
  const int64_t count = static_cast<int64_t>(n);
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < count; i++) {
    const float x = inp[i];
    const float u = kSqrt2OverPi * (x + kCubic * x * x * x);
    out[i] = 0.5f * x * (1.0f + fast_tanh(u));
  }
}

void gelu_backward(float* dinp, const float* inp, const float* dout, size_t n) {
  const int64_t count = static_cast<int64_t>(n);
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < count; i++) {
    const float x = inp[i];
    const float u = kSqrt2OverPi * (x + kCubic * x * x * x);
    const float th = fast_tanh(u);
    const float du_dx = kSqrt2OverPi * (1.0f + 3.0f * kCubic * x * x);
    const float local_grad = 0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * du_dx;
    dinp[i] = dout[i] * local_grad;
  }
}

}  // namespace hh::cpu
