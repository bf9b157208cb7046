// Token + position embedding.
//
//   forward:  out[b,t,:] = wte[tokens[b,t],:] + wpe[t,:]
//   backward: dwte[tokens[b,t],:] += dout[b,t,:]   (deterministic: see rows.cu, the
//             positions are sorted by token and each token row is summed in position order)
//             dwpe[t,:] += Σ_b dout[b,t,:]        (one thread per (t,c), b in order)
#include "common.cuh"
#include "cuda_ops.cuh"

namespace hh::cuda {
namespace {

__global__ void embedding_forward_kernel(float* out, const int32_t* tokens, const float* wte,
                                         const float* wpe, int B, int T, int C) {
  const size_t total = static_cast<size_t>(B) * T * C;
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < total;
       i += size_t(gridDim.x) * blockDim.x) {
    const size_t n = i / C, c = i % C;
    const size_t t = n % T;
    out[i] = wte[static_cast<size_t>(tokens[n]) * C + c] + wpe[t * C + c];
  }
}

__global__ void position_embedding_backward_kernel(float* dwpe, const float* dout, int B, int T,
                                                   int C) {
  const size_t total = static_cast<size_t>(T) * C;
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < total;
       i += size_t(gridDim.x) * blockDim.x) {
    float acc = dwpe[i];
    for (int b = 0; b < B; b++) acc += dout[static_cast<size_t>(b) * T * C + i];
    dwpe[i] = acc;
  }
}

}  // namespace

void embedding_forward(Context& ctx, float* out, const int32_t* tokens, const float* wte,
                       const float* wpe, int B, int T, int C) {
  const size_t total = static_cast<size_t>(B) * T * C;
  if (total == 0) return;
  embedding_forward_kernel<<<grid_for(total, 256, ctx), 256, 0, ctx.stream>>>(out, tokens, wte, wpe,
                                                                              B, T, C);
  CUDA_CHECK_LAUNCH();
}

void embedding_backward(Context& ctx, float* dwte, float* dwpe, const float* dout,
                        const int32_t* tokens, int B, int T, int C) {
  const size_t total = static_cast<size_t>(T) * C;
  if (total == 0 || B <= 0) return;
  if (dwpe) {
    position_embedding_backward_kernel<<<grid_for(total, 256, ctx), 256, 0, ctx.stream>>>(
        dwpe, dout, B, T, C);
    CUDA_CHECK_LAUNCH();
  }
  if (dwte) scatter_add_rows(ctx, dwte, dout, tokens, B * T, C);
}

}  // namespace hh::cuda
