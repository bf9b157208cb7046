// Causal multi-head attention over right-padded variable-length sequences.
//
// For sequence b (length L = lengths[b]) and head h, with Q, K, V the T×hs slices of
// qkv (row stride 3C, head h at column h·hs) and scale = 1/√hs:
//   forward:  S = scale·Q·Kᵀ;  P[t,s] = softmax_{s≤t}(S[t,:]) for t < L, P = 0 elsewhere
//             (s > t, or padded rows t ≥ L);  out = P·V   (padded rows: P row 0 → out 0)
//             lse[t] = log Σ_{s≤t} exp(S[t,s])  (0 for padded rows)
//   backward: P = exp(S − lse) recomputed from Q, K;  dP = dout·Vᵀ;  dV = Pᵀ·dout
//             dS[t,s] = scale·P[t,s]·(dP[t,s] − Σ_j P[t,j]·dP[t,j])
//             dQ = dS·K;  dK = dSᵀ·Q
// saved = lse[B][NH][T], as in the fused kernels of attention_flash.cu (HH_CUDA_FLASH=1),
// so neither path keeps a T×T matrix per layer: the products here run through cuBLAS on
// the heads of one sequence at a time (HH_CUDA_ATTN_HEADS=n: n heads at a time), their
// scores in scratch shared by every layer. Recomputing S in the backward saves
// B·NH·T·T floats per layer (4.8 GB at 124M, batch 8 x 1024) for one more QKᵀ product
// and one more pass over the scores per layer.
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
#include <algorithm>
#include <cmath>
#include <type_traits>

#include "common.cuh"
#include "cuda_ops.cuh"

namespace hh::cuda {
namespace {

constexpr int kRowsPerBlock = 8;     // one warp per row of P
constexpr int kMaxRegisterT = 1024;  // rows up to this long are held in registers

// Heads per chunk: ctx.attn_heads when set, else all NH heads of the sequence (on the H100,
// 124M at 8 x 1024: 2 heads 90.5 ms/step, 4 heads 72.2, 12 heads 67.3).
int heads_per_chunk(const Context& ctx, int NH) {
  return ctx.attn_heads > 0 ? std::min(ctx.attn_heads, NH) : NH;
}

// Register-held rows (T ≤ 32·N): each lane keeps the N entries s = lane + 32·i of its row,
// so the row is read once and written once (the loops below read it up to three times).
template <int N>
__global__ void attention_softmax_regs_kernel(float* att, float* lse, const int32_t* lengths, int b,
                                              int NH, int T) {
  const int lane = threadIdx.x % 32;
  const size_t row = static_cast<size_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  if (row >= static_cast<size_t>(NH) * T) return;
  const int t = static_cast<int>(row % T);
  const int L = min(max(lengths[b], 0), T);
  float* p = att + row * T;
  if (t >= L) {
#pragma unroll
    for (int i = 0; i < N; i++)
      if (lane + 32 * i < T) p[lane + 32 * i] = 0.0f;
    if (lane == 0) lse[row] = 0.0f;
    return;
  }
  float v[N];
  float max_score = -INFINITY;
#pragma unroll
  for (int i = 0; i < N; i++) {
    const int s = lane + 32 * i;
    v[i] = s <= t ? p[s] : -INFINITY;
    max_score = fmaxf(max_score, v[i]);
  }
  max_score = warp_max(max_score);
  float sum = 0.0f;
#pragma unroll
  for (int i = 0; i < N; i++) {
    v[i] = lane + 32 * i <= t ? expf(v[i] - max_score) : 0.0f;
    sum += v[i];
  }
  sum = warp_sum(sum);
  const float inv_sum = 1.0f / sum;
#pragma unroll
  for (int i = 0; i < N; i++)
    if (lane + 32 * i < T) p[lane + 32 * i] = v[i] * inv_sum;
  if (lane == 0) lse[row] = max_score + logf(sum);
}

template <int N>
__global__ void attention_softmax_backward_regs_kernel(float* dp, const float* p_all,
                                                       const int32_t* lengths, int b, int NH, int T,
                                                       float scale) {
  const int lane = threadIdx.x % 32;
  const size_t row = static_cast<size_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  if (row >= static_cast<size_t>(NH) * T) return;
  const int t = static_cast<int>(row % T);
  const int L = min(max(lengths[b], 0), T);
  float* d = dp + row * T;
  const float* p = p_all + row * T;
  float pv[N], dv[N];
  float dot = 0.0f;
#pragma unroll
  for (int i = 0; i < N; i++) {
    const int s = lane + 32 * i;
    const bool live = t < L && s <= t;
    pv[i] = live ? p[s] : 0.0f;
    dv[i] = live ? d[s] : 0.0f;
    dot += pv[i] * dv[i];
  }
  dot = warp_sum(dot);
#pragma unroll
  for (int i = 0; i < N; i++) {
    const int s = lane + 32 * i;
    if (s < T) d[s] = (t < L && s <= t) ? scale * pv[i] * (dv[i] - dot) : 0.0f;
  }
}

// In place on the scores of sequence b, rows [NH][T]: causal + length masked softmax,
// and the row log-sum-exp into lse[NH][T] (0 for padded rows).
__global__ void attention_softmax_kernel(float* att, float* lse, const int32_t* lengths, int b,
                                         int NH, int T) {
  const int lane = threadIdx.x % 32;
  const size_t row = static_cast<size_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  if (row >= static_cast<size_t>(NH) * T) return;
  const int t = static_cast<int>(row % T);
  const int L = min(max(lengths[b], 0), T);
  float* p = att + row * T;
  if (t >= L) {
    for (int s = lane; s < T; s += 32) p[s] = 0.0f;
    if (lane == 0) lse[row] = 0.0f;
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
  sum = warp_sum(sum);
  const float inv_sum = 1.0f / sum;
  for (int s = lane; s < T; s += 32) p[s] = s <= t ? p[s] * inv_sum : 0.0f;
  if (lane == 0) lse[row] = max_score + logf(sum);
}

// In place on the recomputed scores of sequence b, rows [NH][T]: P = exp(S − lse), 0 where
// masked.
__global__ void attention_probs_kernel(float* att, const float* lse, const int32_t* lengths, int b,
                                       int NH, int T) {
  const int lane = threadIdx.x % 32;
  const size_t row = static_cast<size_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  if (row >= static_cast<size_t>(NH) * T) return;
  const int t = static_cast<int>(row % T);
  const int L = min(max(lengths[b], 0), T);
  float* p = att + row * T;
  const float row_lse = t < L ? lse[row] : 0.0f;
  for (int s = lane; s < T; s += 32) p[s] = (t < L && s <= t) ? expf(p[s] - row_lse) : 0.0f;
}

// In place on dP of sequence b, rows [NH][T]: dS = scale·P·(dP − Σ P·dP), 0 where masked.
__global__ void attention_softmax_backward_kernel(float* dp, const float* p_all,
                                                  const int32_t* lengths, int b, int NH, int T,
                                                  float scale) {
  const int lane = threadIdx.x % 32;
  const size_t row = static_cast<size_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  if (row >= static_cast<size_t>(NH) * T) return;
  const int t = static_cast<int>(row % T);
  const int L = min(max(lengths[b], 0), T);
  float* d = dp + row * T;
  const float* p = p_all + row * T;
  if (t >= L) {
    for (int s = lane; s < T; s += 32) d[s] = 0.0f;
    return;
  }
  float dot = 0.0f;
  for (int s = lane; s <= t; s += 32) dot += p[s] * d[s];
  dot = warp_sum(dot);
  for (int s = lane; s < T; s += 32) d[s] = s <= t ? scale * p[s] * (d[s] - dot) : 0.0f;
}

// Calls f(std::integral_constant<int, N>{}) with the smallest N of 4, 8, 16, 32 such that
// 32·N ≥ T, or with N = 0 (the loops over the row in memory) past kMaxRegisterT.
template <typename F>
void with_values_per_lane(int T, F&& f) {
  if (T <= 128)
    f(std::integral_constant<int, 4>{});
  else if (T <= 256)
    f(std::integral_constant<int, 8>{});
  else if (T <= 512)
    f(std::integral_constant<int, 16>{});
  else if (T <= kMaxRegisterT)
    f(std::integral_constant<int, 32>{});
  else
    f(std::integral_constant<int, 0>{});
}

// The softmax kernels over the n·T rows of sequence b.
void softmax_forward(Context& ctx, float* att, float* lse, const int32_t* lengths, int b, int n,
                     int T) {
  const int grid = ceil_div(static_cast<size_t>(n) * T, kRowsPerBlock);
  with_values_per_lane(T, [&](auto values) {
    constexpr int N = decltype(values)::value;
    if constexpr (N == 0)
      attention_softmax_kernel<<<grid, 32 * kRowsPerBlock, 0, ctx.stream>>>(att, lse, lengths, b, n,
                                                                            T);
    else
      attention_softmax_regs_kernel<N>
          <<<grid, 32 * kRowsPerBlock, 0, ctx.stream>>>(att, lse, lengths, b, n, T);
  });
  CUDA_CHECK_LAUNCH();
}

void softmax_backward(Context& ctx, float* dp, const float* p, const int32_t* lengths, int b, int n,
                      int T, float scale) {
  const int grid = ceil_div(static_cast<size_t>(n) * T, kRowsPerBlock);
  with_values_per_lane(T, [&](auto values) {
    constexpr int N = decltype(values)::value;
    if constexpr (N == 0)
      attention_softmax_backward_kernel<<<grid, 32 * kRowsPerBlock, 0, ctx.stream>>>(
          dp, p, lengths, b, n, T, scale);
    else
      attention_softmax_backward_regs_kernel<N>
          <<<grid, 32 * kRowsPerBlock, 0, ctx.stream>>>(dp, p, lengths, b, n, T, scale);
  });
  CUDA_CHECK_LAUNCH();
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
  (void)ctx;  // both paths keep only the row log-sum-exp
  return attention_flash_saved_floats(B, T, NH);
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
  // A chunk of n heads of one sequence at a time: S = scale·Q·Kᵀ into scratch, softmax in
  // place (→ P, lse), out = P·V written per head into its hs columns of out (row stride C).
  const int hc = heads_per_chunk(ctx, NH);
  float* p = static_cast<float*>(ctx.scratch(sizeof(float) * hc * TT));
  for (int b = 0; b < B; b++) {
    for (int h0 = 0; h0 < NH; h0 += hc) {
      const int n = std::min(hc, NH - h0);
      const float* q = qkv + b * seq_stride + h0 * hs;
      const float* k = q + C;
      const float* v = q + 2 * C;
      gemm_heads(ctx, CUBLAS_OP_T, CUBLAS_OP_N, T, T, hs, scale, k, 3 * C, hs, q, 3 * C, hs, 0.0f,
                 p, T, TT, n);
      softmax_forward(ctx, p, saved + (static_cast<size_t>(b) * NH + h0) * T, lengths, b, n, T);
      float* o = out + static_cast<size_t>(b) * T * C + h0 * hs;
      gemm_heads(ctx, CUBLAS_OP_N, CUBLAS_OP_N, hs, T, T, 1.0f, v, 3 * C, hs, p, T, TT, 0.0f, o, C,
                 hs, n);
    }
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
  // A chunk of n heads of one sequence at a time: P recomputed into one n·T·T region of
  // scratch, dP (then dS, in place) into the other.
  const int hc = heads_per_chunk(ctx, NH);
  float* p = static_cast<float*>(ctx.scratch(2 * sizeof(float) * hc * TT));
  float* dp = p + hc * TT;
  for (int b = 0; b < B; b++) {
    for (int h0 = 0; h0 < NH; h0 += hc) {
      const int n = std::min(hc, NH - h0);
      const size_t rows = static_cast<size_t>(n) * T;
      const float* q = qkv + b * seq_stride + h0 * hs;
      const float* k = q + C;
      const float* v = q + 2 * C;
      float* dq = dqkv + b * seq_stride + h0 * hs;
      float* dk = dq + C;
      float* dv = dq + 2 * C;
      const float* dy = dout + static_cast<size_t>(b) * T * C + h0 * hs;
      // P = exp(scale·Q·Kᵀ − lse)
      gemm_heads(ctx, CUBLAS_OP_T, CUBLAS_OP_N, T, T, hs, scale, k, 3 * C, hs, q, 3 * C, hs, 0.0f,
                 p, T, TT, n);
      attention_probs_kernel<<<ceil_div(rows, kRowsPerBlock), 32 * kRowsPerBlock, 0, ctx.stream>>>(
          p, saved + (static_cast<size_t>(b) * NH + h0) * T, lengths, b, n, T);
      CUDA_CHECK_LAUNCH();
      // dPᵀ = V·doutᵀ
      gemm_heads(ctx, CUBLAS_OP_T, CUBLAS_OP_N, T, T, hs, 1.0f, v, 3 * C, hs, dy, C, hs, 0.0f, dp,
                 T, TT, n);
      // dVᵀ = doutᵀ·P
      gemm_heads(ctx, CUBLAS_OP_N, CUBLAS_OP_T, hs, T, T, 1.0f, dy, C, hs, p, T, TT, 0.0f, dv,
                 3 * C, hs, n);
      softmax_backward(ctx, dp, p, lengths, b, n, T, scale);
      // dQᵀ = Kᵀ·dSᵀ
      gemm_heads(ctx, CUBLAS_OP_N, CUBLAS_OP_N, hs, T, T, 1.0f, k, 3 * C, hs, dp, T, TT, 0.0f, dq,
                 3 * C, hs, n);
      // dKᵀ = Qᵀ·dS
      gemm_heads(ctx, CUBLAS_OP_N, CUBLAS_OP_T, hs, T, T, 1.0f, q, 3 * C, hs, dp, T, TT, 0.0f, dk,
                 3 * C, hs, n);
    }
  }
}

}  // namespace hh::cuda
