// Residual connection: out = a + b, elementwise. (Its backward is the identity: the
// caller passes the same gradient to both branches, see src/ops/ops.h.)
#include "common.cuh"
#include "cuda_ops.cuh"

namespace hh::cuda {
namespace {

__global__ void residual_forward_kernel(float* out, const float* a, const float* b, size_t n) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x)
    out[i] = a[i] + b[i];
}

}  // namespace

void residual_forward(Context& ctx, float* out, const float* a, const float* b, size_t n) {
  if (n == 0) return;
  residual_forward_kernel<<<grid_for(n, 256, ctx), 256, 0, ctx.stream>>>(out, a, b, n);
  CUDA_CHECK_LAUNCH();
}

}  // namespace hh::cuda
