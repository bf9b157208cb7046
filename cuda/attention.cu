// Causal multi-head attention over right-padded variable-length sequences.
//
// For sequence b (length L = lengths[b]) and head h, with Q, K, V the T×hs slices of
// qkv (row stride 3C, head h at column h·hs) and scale = 1/√hs:
//   forward:  S = scale·Q·Kᵀ;  P[t,s] = softmax_{s≤t}(S[t,:]) for t < L, P = 0 elsewhere
//             (s > t, or padded rows t ≥ L);  out = P·V   (padded rows: P row 0 → out 0)
//   backward: dP = dout·Vᵀ;  dV = Pᵀ·dout
//             dS[t,s] = scale·P[t,s]·(dP[t,s] − Σ_j P[t,j]·dP[t,j])
//             dQ = dS·K;  dK = dSᵀ·Q
// saved = P for all (b, h): B·NH·T·T floats (this is the simple, obviously-correct path;
// it materialises the T×T matrices). With HH_CUDA_FLASH=1 both passes go to the fused
// kernels of attention_flash.cu instead, which keep only the row log-sum-exp.
//
// The products run through cuBLAS strided-batched GEMMs, one call per sequence b over
// its NH heads (head h's slices sit hs floats apart, the next head's P T·T floats
// apart). Row-major X[R][K] with row stride ld is, to column-major cuBLAS, Xᵀ (K×R, ld);
// each product below is written as its transpose:
//   Sᵀ(T×T)   = K·Qᵀ    : A = K  (op T), B = Q  (op N), m=T,  n=T,  k=hs
//   outᵀ(hs×T)= Vᵀ·Pᵀ   : A = V  (op N), B = P  (op N), m=hs, n=T,  k=T
//   dPᵀ(T×T)  = V·doutᵀ : A = V  (op T), B = dout (op N), m=T, n=T, k=hs
//   dVᵀ(hs×T) = doutᵀ·P : A = dout (op N), B = P (op T), m=hs, n=T, k=T
//   dQᵀ(hs×T) = Kᵀ·dSᵀ  : A = K  (op N), B = dS (op N), m=hs, n=T, k=T
//   dKᵀ(hs×T) = Qᵀ·dS   : A = Q  (op N), B = dS (op T), m=hs, n=T, k=T
// Masked entries of P and dS are exactly 0, so padded rows' q/k/v/dout (finite values)
// add exact zeros: padding never changes a real position's result, and every padded
// row of out and dqkv comes out exactly 0.
#include <cmath>

#include "common.cuh"
#include "cuda_ops.cuh"

namespace hh::cuda {
namespace {

constexpr int kRowsPerBlock = 8;  // one warp per row of P

// In place on the scores of rows [B][NH][T]: causal + length masked softmax.
__global__ void attention_softmax_kernel(float* att, const int32_t* lengths, int B, int NH, int T) {
  const int lane = threadIdx.x % 32;
  const size_t row = static_cast<size_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  if (row >= static_cast<size_t>(B) * NH * T) return;
  const int b = static_cast<int>(row / (static_cast<size_t>(NH) * T));
  const int t = static_cast<int>(row % T);
  const int L = min(max(lengths[b], 0), T);
  float* p = att + row * T;
  if (t >= L) {
    for (int s = lane; s < T; s += 32) p[s] = 0.0f;
    return;
  }
  float max_score = -INFINITY;
  for (int s = lane; s <= t; s += 32) max_score = fmaxf(max_score, p[s]);
  max_score = warp_max(max_score);
  float sum = 0.0f;
  for (int s = lane; s <= t; s += 32) {
    const float e = expf(p[s] - max_score);
    p[s] = e;
    sum += e;
  }
  const float inv_sum = 1.0f / warp_sum(sum);
  for (int s = lane; s < T; s += 32) p[s] = s <= t ? p[s] * inv_sum : 0.0f;
}

// In place on dP of one sequence b, rows [NH][T]: dS = scale·P·(dP − Σ P·dP), 0 where masked.
__global__ void attention_softmax_backward_kernel(float* dp, const float* p_all,
                                                  const int32_t* lengths, int b, int NH, int T,
                                                  float scale) {
  const int lane = threadIdx.x % 32;
  const size_t row = static_cast<size_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  if (row >= static_cast<size_t>(NH) * T) return;
  const int t = static_cast<int>(row % T);
  const int L = min(max(lengths[b], 0), T);
  float* d = dp + row * T;
  const float* p = p_all + static_cast<size_t>(b) * NH * T * T + row * T;
  if (t >= L) {
    for (int s = lane; s < T; s += 32) d[s] = 0.0f;
    return;
  }
  float dot = 0.0f;
  for (int s = lane; s <= t; s += 32) dot += p[s] * d[s];
  dot = warp_sum(dot);
  for (int s = lane; s < T; s += 32) d[s] = s <= t ? scale * p[s] * (d[s] - dot) : 0.0f;
}

// C = op(A)·op(B) for NH heads of one sequence; alpha/beta as given. Strides in floats.
void gemm_heads(Context& ctx, cublasOperation_t op_a, cublasOperation_t op_b, int m, int n, int k,
                float alpha, const float* a, int lda, long long stride_a, const float* b, int ldb,
                long long stride_b, float beta, float* c, int ldc, long long stride_c, int NH) {
  CUBLAS_CHECK(cublasSgemmStridedBatched(ctx.cublas, op_a, op_b, m, n, k, &alpha, a, lda, stride_a,
                                         b, ldb, stride_b, &beta, c, ldc, stride_c, NH));
}

}  // namespace

size_t attention_saved_floats(const Context& ctx, int B, int T, int NH) {
  if (ctx.flash) return attention_flash_saved_floats(B, T, NH);
  return static_cast<size_t>(B) * NH * T * T;
}

void attention_forward(Context& ctx, float* out, float* saved, const float* qkv,
                       const int32_t* lengths, int B, int T, int C, int NH) {
  if (B <= 0 || T <= 0) return;
  HH_CHECK(NH > 0 && C % NH == 0, "attention_forward: width ", C, " is not a multiple of heads ",
           NH);
  if (ctx.flash) return attention_flash_forward(ctx, out, saved, qkv, lengths, B, T, C, NH);
  const int hs = C / NH;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
  const long long TT = static_cast<long long>(T) * T;
  const size_t seq_stride = static_cast<size_t>(T) * 3 * C;
  // Scores S = scale·Q·Kᵀ into saved (the softmax then turns them into P in place).
  for (int b = 0; b < B; b++) {
    const float* q = qkv + b * seq_stride;
    const float* k = q + C;
    float* s = saved + b * NH * TT;
    gemm_heads(ctx, CUBLAS_OP_T, CUBLAS_OP_N, T, T, hs, scale, k, 3 * C, hs, q, 3 * C, hs, 0.0f, s,
               T, TT, NH);
  }
  const size_t rows = static_cast<size_t>(B) * NH * T;
  attention_softmax_kernel<<<ceil_div(rows, kRowsPerBlock), 32 * kRowsPerBlock, 0, ctx.stream>>>(
      saved, lengths, B, NH, T);
  CUDA_CHECK_LAUNCH();
  // out = P·V, written per head into its hs columns of out (row stride C).
  for (int b = 0; b < B; b++) {
    const float* v = qkv + b * seq_stride + 2 * C;
    const float* p = saved + b * NH * TT;
    float* o = out + static_cast<size_t>(b) * T * C;
    gemm_heads(ctx, CUBLAS_OP_N, CUBLAS_OP_N, hs, T, T, 1.0f, v, 3 * C, hs, p, T, TT, 0.0f, o, C,
               hs, NH);
  }
}

void attention_backward(Context& ctx, float* dqkv, const float* dout, const float* qkv,
                        const float* saved, const int32_t* lengths, int B, int T, int C, int NH) {
  if (B <= 0 || T <= 0) return;
  HH_CHECK(NH > 0 && C % NH == 0, "attention_backward: width ", C, " is not a multiple of heads ",
           NH);
  if (ctx.flash) return attention_flash_backward(ctx, dqkv, dout, qkv, saved, lengths, B, T, C, NH);
  const int hs = C / NH;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
  const long long TT = static_cast<long long>(T) * T;
  const size_t seq_stride = static_cast<size_t>(T) * 3 * C;
  // dP (then dS, in place) for one sequence at a time: NH·T·T floats of scratch.
  float* dp = static_cast<float*>(ctx.scratch(sizeof(float) * NH * TT));
  for (int b = 0; b < B; b++) {
    const float* q = qkv + b * seq_stride;
    const float* k = q + C;
    const float* v = q + 2 * C;
    float* dq = dqkv + b * seq_stride;
    float* dk = dq + C;
    float* dv = dq + 2 * C;
    const float* p = saved + b * NH * TT;
    const float* dy = dout + static_cast<size_t>(b) * T * C;
    // dPᵀ = V·doutᵀ
    gemm_heads(ctx, CUBLAS_OP_T, CUBLAS_OP_N, T, T, hs, 1.0f, v, 3 * C, hs, dy, C, hs, 0.0f, dp, T,
               TT, NH);
    // dVᵀ = doutᵀ·P
    gemm_heads(ctx, CUBLAS_OP_N, CUBLAS_OP_T, hs, T, T, 1.0f, dy, C, hs, p, T, TT, 0.0f, dv, 3 * C,
               hs, NH);
    const size_t rows = static_cast<size_t>(NH) * T;
    attention_softmax_backward_kernel<<<ceil_div(rows, kRowsPerBlock), 32 * kRowsPerBlock, 0,
                                        ctx.stream>>>(dp, saved, lengths, b, NH, T, scale);
    CUDA_CHECK_LAUNCH();
    // dQᵀ = Kᵀ·dSᵀ
    gemm_heads(ctx, CUBLAS_OP_N, CUBLAS_OP_N, hs, T, T, 1.0f, k, 3 * C, hs, dp, T, TT, 0.0f, dq,
               3 * C, hs, NH);
    // dKᵀ = Qᵀ·dS
    gemm_heads(ctx, CUBLAS_OP_N, CUBLAS_OP_T, hs, T, T, 1.0f, q, 3 * C, hs, dp, T, TT, 0.0f, dk,
               3 * C, hs, NH);
  }
}

}  // namespace hh::cuda
