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
#include <vector>

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

// Query rows [q0, q0 + nq) of every head of a chunk, whose keys are [0, width) with
// width = q0 + nq: one causal row block (HH_CUDA_ATTN_BLOCKS; one block = all T rows).
struct RowBlock {
  int q0, nq, width;
};

// The row of P this warp handles (rows of the block, head-major): false past the last; else
// its position t, its offset in the scores [heads][T][T] and in lse [heads][T].
__device__ __forceinline__ bool warp_row(RowBlock blk, int heads, int T, int* t, size_t* offset,
                                         size_t* stat) {
  const size_t row = static_cast<size_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  if (row >= static_cast<size_t>(heads) * blk.nq) return false;
  const size_t h = row / blk.nq;
  *t = blk.q0 + static_cast<int>(row % blk.nq);
  *stat = h * T + *t;
  *offset = *stat * T;
  return true;
}

// Register-held rows (T ≤ 32·N): each lane keeps the N entries s = lane + 32·i of its row,
// so the row is read once and written once (the loops below read it up to three times).
// Every kernel writes the block's columns [0, width): P and dS are 0 where masked.
template <int N>
__global__ void attention_softmax_regs_kernel(float* att, float* lse, const int32_t* lengths, int b,
                                              int heads, int T, RowBlock blk) {
  const int lane = threadIdx.x % 32;
  int t;
  size_t offset, stat;
  if (!warp_row(blk, heads, T, &t, &offset, &stat)) return;
  const int L = min(max(lengths[b], 0), T);
  float* p = att + offset;
  if (t >= L) {
#pragma unroll
    for (int i = 0; i < N; i++)
      if (lane + 32 * i < blk.width) p[lane + 32 * i] = 0.0f;
    if (lane == 0) lse[stat] = 0.0f;
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
    if (lane + 32 * i < blk.width) p[lane + 32 * i] = v[i] * inv_sum;
  if (lane == 0) lse[stat] = max_score + logf(sum);
}

template <int N>
__global__ void attention_softmax_backward_regs_kernel(float* dp, const float* p_all,
                                                       const int32_t* lengths, int b, int heads,
                                                       int T, RowBlock blk, float scale) {
  const int lane = threadIdx.x % 32;
  int t;
  size_t offset, stat;
  if (!warp_row(blk, heads, T, &t, &offset, &stat)) return;
  const int L = min(max(lengths[b], 0), T);
  float* d = dp + offset;
  const float* p = p_all + offset;
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
    if (s < blk.width) d[s] = (t < L && s <= t) ? scale * pv[i] * (dv[i] - dot) : 0.0f;
  }
}

// In place on the scores of sequence b: causal + length masked softmax, and the row
// log-sum-exp into lse (0 for padded rows).
__global__ void attention_softmax_kernel(float* att, float* lse, const int32_t* lengths, int b,
                                         int heads, int T, RowBlock blk) {
  const int lane = threadIdx.x % 32;
  int t;
  size_t offset, stat;
  if (!warp_row(blk, heads, T, &t, &offset, &stat)) return;
  const int L = min(max(lengths[b], 0), T);
  float* p = att + offset;
  if (t >= L) {
    for (int s = lane; s < blk.width; s += 32) p[s] = 0.0f;
    if (lane == 0) lse[stat] = 0.0f;
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
  for (int s = lane; s < blk.width; s += 32) p[s] = s <= t ? p[s] * inv_sum : 0.0f;
  if (lane == 0) lse[stat] = max_score + logf(sum);
}

// In place on the recomputed scores of sequence b: P = exp(S − lse), 0 where masked.
__global__ void attention_probs_kernel(float* att, const float* lse, const int32_t* lengths, int b,
                                       int heads, int T, RowBlock blk) {
  const int lane = threadIdx.x % 32;
  int t;
  size_t offset, stat;
  if (!warp_row(blk, heads, T, &t, &offset, &stat)) return;
  const int L = min(max(lengths[b], 0), T);
  float* p = att + offset;
  const float row_lse = t < L ? lse[stat] : 0.0f;
  for (int s = lane; s < blk.width; s += 32) p[s] = (t < L && s <= t) ? expf(p[s] - row_lse) : 0.0f;
}

// In place on dP of sequence b: dS = scale·P·(dP − Σ P·dP), 0 where masked.
__global__ void attention_softmax_backward_kernel(float* dp, const float* p_all,
                                                  const int32_t* lengths, int b, int heads, int T,
                                                  RowBlock blk, float scale) {
  const int lane = threadIdx.x % 32;
  int t;
  size_t offset, stat;
  if (!warp_row(blk, heads, T, &t, &offset, &stat)) return;
  const int L = min(max(lengths[b], 0), T);
  float* d = dp + offset;
  const float* p = p_all + offset;
  if (t >= L) {
    for (int s = lane; s < blk.width; s += 32) d[s] = 0.0f;
    return;
  }
  float dot = 0.0f;
  for (int s = lane; s <= t; s += 32) dot += p[s] * d[s];
  dot = warp_sum(dot);
  for (int s = lane; s < blk.width; s += 32) d[s] = s <= t ? scale * p[s] * (d[s] - dot) : 0.0f;
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

// The row kernels over the rows of block blk of the n heads of sequence b.
int row_grid(int n, RowBlock blk) {
  return ceil_div(static_cast<size_t>(n) * blk.nq, kRowsPerBlock);
}

void softmax_forward(Context& ctx, float* att, float* lse, const int32_t* lengths, int b, int n,
                     int T, RowBlock blk) {
  const int grid = row_grid(n, blk);
  with_values_per_lane(T, [&](auto values) {
    constexpr int N = decltype(values)::value;
    if constexpr (N == 0)
      attention_softmax_kernel<<<grid, 32 * kRowsPerBlock, 0, ctx.stream>>>(att, lse, lengths, b, n,
                                                                            T, blk);
    else
      attention_softmax_regs_kernel<N>
          <<<grid, 32 * kRowsPerBlock, 0, ctx.stream>>>(att, lse, lengths, b, n, T, blk);
  });
  CUDA_CHECK_LAUNCH();
}

void probs_forward(Context& ctx, float* att, const float* lse, const int32_t* lengths, int b, int n,
                   int T, RowBlock blk) {
  attention_probs_kernel<<<row_grid(n, blk), 32 * kRowsPerBlock, 0, ctx.stream>>>(att, lse, lengths,
                                                                                  b, n, T, blk);
  CUDA_CHECK_LAUNCH();
}

void softmax_backward(Context& ctx, float* dp, const float* p, const int32_t* lengths, int b, int n,
                      int T, RowBlock blk, float scale) {
  const int grid = row_grid(n, blk);
  with_values_per_lane(T, [&](auto values) {
    constexpr int N = decltype(values)::value;
    if constexpr (N == 0)
      attention_softmax_backward_kernel<<<grid, 32 * kRowsPerBlock, 0, ctx.stream>>>(
          dp, p, lengths, b, n, T, blk, scale);
    else
      attention_softmax_backward_regs_kernel<N>
          <<<grid, 32 * kRowsPerBlock, 0, ctx.stream>>>(dp, p, lengths, b, n, T, blk, scale);
  });
  CUDA_CHECK_LAUNCH();
}

// The causal row blocks of T rows: ctx.attn_blocks of them (≥ 1), of ⌈T/blocks⌉ rows each;
// 0 (the default) picks min(2, T/512) from the H100's 124M step: at T = 1024, 2 blocks took
// 61.6 ms, 1 65.0 ms, 3 68.4 ms, 4 68.1 ms; at T = 256 the PPO update lost 0.25 s per
// iteration to 2 blocks (each block costs launches per sequence and layer; the work it
// skips grows as T²). Block r's queries see keys [0, width): the products skip the masked
// keys past it.
int row_block_count(const Context& ctx, int T) {
  const int asked = ctx.attn_blocks > 0 ? ctx.attn_blocks : std::min(2, T / 512);
  return std::max(1, std::min(asked, T));
}

std::vector<RowBlock> row_blocks(const Context& ctx, int T) {
  const int count = row_block_count(ctx, T);
  const int rows = (T + count - 1) / count;
  std::vector<RowBlock> blocks;
  for (int q0 = 0; q0 < T; q0 += rows) {
    const int nq = std::min(rows, T - q0);
    blocks.push_back({q0, nq, q0 + nq});
  }
  return blocks;
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
  (void)ctx;  // every path (cuBLAS, HH_CUDA_FLASH=1 and 2) keeps only the row log-sum-exp
  return attention_flash_saved_floats(B, T, NH);
}

void attention_forward(Context& ctx, float* out, float* saved, const float* qkv,
                       const int32_t* lengths, int B, int T, int C, int NH) {
  if (B <= 0 || T <= 0) return;
  HH_CHECK(NH > 0 && C % NH == 0, "attention_forward: width ", C, " is not a multiple of heads ",
           NH);
  // HH_CUDA_FLASH=2 on a shape its kernels support (flash_tc_supported), else as before.
  if (flash_tc_supported(ctx, T, C, NH))
    return attention_flash_tc_forward(ctx, out, saved, qkv, lengths, B, T, C, NH);
  if (ctx.flash == 1) return attention_flash_forward(ctx, out, saved, qkv, lengths, B, T, C, NH);
  const int hs = C / NH;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
  const long long TT = static_cast<long long>(T) * T;
  const size_t seq_stride = static_cast<size_t>(T) * 3 * C;
  // A chunk of n heads of one sequence at a time, one causal row block [q0, q0 + nq) at a
  // time: S = scale·Q·Kᵀ over its keys [0, w) into the block's rows of the scratch scores,
  // softmax in place (→ P, lse), out = P·V into its hs columns of out (row stride C).
  const int hc = heads_per_chunk(ctx, NH);
  const std::vector<RowBlock> blocks = row_blocks(ctx, T);
  float* p = static_cast<float*>(ctx.scratch(sizeof(float) * hc * TT));
  for (int b = 0; b < B; b++) {
    for (int h0 = 0; h0 < NH; h0 += hc) {
      const int n = std::min(hc, NH - h0);
      const float* q = qkv + b * seq_stride + h0 * hs;
      const float* k = q + C;
      const float* v = q + 2 * C;
      float* lse = saved + (static_cast<size_t>(b) * NH + h0) * T;
      float* o = out + static_cast<size_t>(b) * T * C + h0 * hs;
      for (const RowBlock& blk : blocks) {
        const size_t q0 = blk.q0;
        gemm_heads(ctx, CUBLAS_OP_T, CUBLAS_OP_N, blk.width, blk.nq, hs, scale, k, 3 * C, hs,
                   q + q0 * 3 * C, 3 * C, hs, 0.0f, p + q0 * T, T, TT, n);
        softmax_forward(ctx, p, lse, lengths, b, n, T, blk);
        gemm_heads(ctx, CUBLAS_OP_N, CUBLAS_OP_N, hs, blk.nq, blk.width, 1.0f, v, 3 * C, hs,
                   p + q0 * T, T, TT, 0.0f, o + q0 * C, C, hs, n);
      }
    }
  }
}

void attention_backward(Context& ctx, float* dqkv, const float* dout, const float* qkv,
                        const float* out, const float* saved, const int32_t* lengths, int B, int T,
                        int C, int NH) {
  if (B <= 0 || T <= 0) return;
  HH_CHECK(NH > 0 && C % NH == 0, "attention_backward: width ", C, " is not a multiple of heads ",
           NH);
  if (flash_tc_supported(ctx, T, C, NH))
    return attention_flash_tc_backward(ctx, dqkv, dout, qkv, out, saved, lengths, B, T, C, NH);
  if (ctx.flash == 1)
    return attention_flash_backward(ctx, dqkv, dout, qkv, saved, lengths, B, T, C, NH);
  const int hs = C / NH;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
  const long long TT = static_cast<long long>(T) * T;
  const size_t seq_stride = static_cast<size_t>(T) * 3 * C;
  // A chunk of n heads of one sequence at a time, its causal row blocks from the last (all
  // keys: it sets dK and dV) to the first (adds into the keys it sees): P recomputed into
  // one n·T·T region of scratch, dP (then dS, in place) into the other.
  const int hc = heads_per_chunk(ctx, NH);
  const std::vector<RowBlock> blocks = row_blocks(ctx, T);
  float* p = static_cast<float*>(ctx.scratch(2 * sizeof(float) * hc * TT));
  float* dp = p + hc * TT;
  for (int b = 0; b < B; b++) {
    for (int h0 = 0; h0 < NH; h0 += hc) {
      const int n = std::min(hc, NH - h0);
      const float* q = qkv + b * seq_stride + h0 * hs;
      const float* k = q + C;
      const float* v = q + 2 * C;
      float* dq = dqkv + b * seq_stride + h0 * hs;
      float* dk = dq + C;
      float* dv = dq + 2 * C;
      const float* dy = dout + static_cast<size_t>(b) * T * C + h0 * hs;
      const float* lse = saved + (static_cast<size_t>(b) * NH + h0) * T;
      for (size_t r = blocks.size(); r-- > 0;) {
        const RowBlock& blk = blocks[r];
        const size_t q0 = blk.q0;
        const int nq = blk.nq, w = blk.width;
        const float beta = r + 1 == blocks.size() ? 0.0f : 1.0f;  // the last block sees all keys
        float* pb = p + q0 * T;
        float* dpb = dp + q0 * T;
        // P = exp(scale·Q·Kᵀ − lse)
        gemm_heads(ctx, CUBLAS_OP_T, CUBLAS_OP_N, w, nq, hs, scale, k, 3 * C, hs, q + q0 * 3 * C,
                   3 * C, hs, 0.0f, pb, T, TT, n);
        probs_forward(ctx, p, lse, lengths, b, n, T, blk);
        // dPᵀ = V·doutᵀ
        gemm_heads(ctx, CUBLAS_OP_T, CUBLAS_OP_N, w, nq, hs, 1.0f, v, 3 * C, hs, dy + q0 * C, C, hs,
                   0.0f, dpb, T, TT, n);
        // dVᵀ (+)= doutᵀ·P
        gemm_heads(ctx, CUBLAS_OP_N, CUBLAS_OP_T, hs, w, nq, 1.0f, dy + q0 * C, C, hs, pb, T, TT,
                   beta, dv, 3 * C, hs, n);
        softmax_backward(ctx, dp, p, lengths, b, n, T, blk, scale);
        // dQᵀ = Kᵀ·dSᵀ
        gemm_heads(ctx, CUBLAS_OP_N, CUBLAS_OP_N, hs, nq, w, 1.0f, k, 3 * C, hs, dpb, T, TT, 0.0f,
                   dq + q0 * 3 * C, 3 * C, hs, n);
        // dKᵀ (+)= Qᵀ·dS
        gemm_heads(ctx, CUBLAS_OP_N, CUBLAS_OP_T, hs, w, nq, 1.0f, q + q0 * 3 * C, 3 * C, hs, dpb,
                   T, TT, beta, dk, 3 * C, hs, n);
      }
    }
  }
}

}  // namespace hh::cuda
