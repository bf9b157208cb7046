// AdamW (Loshchilov & Hutter, decoupled weight decay) and flat-buffer utilities.
//   m = β1·m + (1-β1)·g,  v = β2·v + (1-β2)·g²
//   p -= lr·( m̂/(√v̂ + eps) + wd·p ),  m̂ = m/(1-β1^t), v̂ = v/(1-β2^t)
// sum_squares accumulates in double over fixed chunks whose partial sums are added in
// order, so the result (used for global-norm clipping) does not depend on the thread count.
#include <cmath>
#include <vector>

#include "core/error.h"
#include "ops/cpu/cpu_ops.h"

namespace hh::cpu {

void adamw_update(float* params, const float* grads, float* m, float* v, size_t n,
                  const AdamWParams& hp) {
  HH_CHECK(hp.step >= 1, "adamw_update: step ", hp.step, " must be >= 1 (1-based)");
  const float beta1 = hp.beta1, beta2 = hp.beta2, eps = hp.eps;
  const float lr = hp.lr, weight_decay = hp.weight_decay;
  const float bias_correction1 =
      static_cast<float>(1.0 - std::pow(static_cast<double>(beta1), static_cast<double>(hp.step)));
  const float bias_correction2 =
      static_cast<float>(1.0 - std::pow(static_cast<double>(beta2), static_cast<double>(hp.step)));
  const int64_t count = static_cast<int64_t>(n);
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < count; i++) {
    const float g = grads[i] * hp.grad_scale;
    const float mi = beta1 * m[i] + (1.0f - beta1) * g;
    const float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    const float m_hat = mi / bias_correction1;
    const float v_hat = vi / bias_correction2;
    params[i] -= lr * (m_hat / (std::sqrt(v_hat) + eps) + weight_decay * params[i]);
  }
}

double sum_squares(const float* x, size_t n) {
  const int64_t kChunk = 1 << 16;
  const int64_t count = static_cast<int64_t>(n);
  const int64_t num_chunks = (count + kChunk - 1) / kChunk;
  std::vector<double> partial(num_chunks);
#pragma omp parallel for schedule(static)
  for (int64_t chunk = 0; chunk < num_chunks; chunk++) {
    const int64_t begin = chunk * kChunk;
    const int64_t end = begin + kChunk < count ? begin + kChunk : count;
    double sum = 0.0;
#pragma omp simd reduction(+ : sum)
    for (int64_t i = begin; i < end; i++) sum += static_cast<double>(x[i]) * x[i];
    partial[chunk] = sum;
  }
  double total = 0.0;
  for (double p : partial) total += p;
  return total;
}

void scale(float* x, float s, size_t n) {
  const int64_t count = static_cast<int64_t>(n);
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < count; i++) x[i] *= s;
}

}  // namespace hh::cpu
