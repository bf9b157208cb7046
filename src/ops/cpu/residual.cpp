// Residual connection: out = a + b, elementwise. Its backward pass is the identity: the
// gradient of the residual stream flows unchanged into both branches (see ops.h: the
// branch's LayerNorm accumulates into the same gradient buffer). out may alias a or b.
#include "ops/cpu/cpu_ops.h"

namespace hh::cpu {

void residual_forward(float* out, const float* a, const float* b, size_t n) {
  const int64_t count = static_cast<int64_t>(n);
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < count; i++) out[i] = a[i] + b[i];
}

}  // namespace hh::cpu
