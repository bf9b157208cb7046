// Fused ("flash-style") causal attention: the same math as attention.cu without ever
// materialising the T×T matrices. Chosen with HH_CUDA_FLASH=1 (see backend.cu); then
// `saved` holds only the row log-sum-exp, lse[B][NH][T] (B·NH·T floats instead of B·NH·T·T).
//
// Per sequence b (length L), head h, query row t < L, with scale = 1/√hs:
//   forward:   s_ts = scale·q_t·k_s (s ≤ t);  online softmax over the keys in tiles:
//              m = running max, l = Σ exp(s − m), o = Σ exp(s − m)·v_s;
//              out_t = o/l,  lse_t = m + log l.   Rows t ≥ L: out 0, lse 0.
//   backward:  p_ts = exp(s_ts − lse_t) (recomputed),  dp_ts = dout_t·v_s,
//              D_t = Σ_s p_ts·dp_ts = dout_t·out_t (out recomputed first: the interface
//              gives the backward no `out`),  ds_ts = p_ts·(dp_ts − D_t),
//              dq_t = scale·Σ_s ds_ts·k_s      (one thread group per query row)
//              dk_s = scale·Σ_t ds_ts·q_t,  dv_s = Σ_t p_ts·dout_t   (one per key row)
// Each pass has a fixed summation order and there are no atomics: deterministic.
//
// Layout of the work: a row (query or key) is handled by a group of G = ceil(hs/16)
// neighbouring lanes, each holding 16 of its hs dimensions in registers; dot products
// are summed across the group with warp shuffles. A block handles kRows = 32 rows and
// walks the other side's rows in tiles of kRows, staged in shared memory. This is
// plain fp32 CUDA-core code (no tensor cores): simple first, fast later.
#include <cmath>

#include "common.cuh"
#include "cuda_ops.cuh"

namespace hh::cuda {
namespace {

constexpr int kRows = 32;  // rows per block and rows per shared-memory tile
constexpr int kDims = 16;  // dimensions per lane

// Sum over the G lanes of a row group (G divides 32; all lanes of the warp must call).
template <int G>
__device__ __forceinline__ float group_sum(float x) {
  for (int offset = G / 2; offset > 0; offset >>= 1) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

// Loads rows [first, first+kRows) of one head's slice (row stride `stride`, columns
// [0, hs)) into tile[kRows][G·16]; rows ≥ T and columns ≥ hs become 0.
template <int G>
__device__ __forceinline__ void load_tile(float (*tile)[G * kDims], const float* base,
                                          size_t stride, int first, int T, int hs) {
  for (int i = threadIdx.x; i < kRows * G * kDims; i += blockDim.x) {
    const int r = i / (G * kDims), d = i % (G * kDims);
    const int row = first + r;
    tile[r][d] = (row < T && d < hs) ? base[static_cast<size_t>(row) * stride + d] : 0.0f;
  }
}

// Loads this lane's 16 dimensions of row `row` (0 beyond hs or T).
template <int G>
__device__ __forceinline__ void load_row(float (&x)[kDims], const float* base, size_t stride,
                                         int row, int T, int hs, int lane_in_group, float mult) {
#pragma unroll
  for (int i = 0; i < kDims; i++) {
    const int d = lane_in_group * kDims + i;
    x[i] = (row < T && d < hs) ? mult * base[static_cast<size_t>(row) * stride + d] : 0.0f;
  }
}

template <int G>
__device__ __forceinline__ float lane_dot(const float (&x)[kDims], const float* tile_row,
                                          int lane_in_group) {
  float acc = 0.0f;
#pragma unroll
  for (int i = 0; i < kDims; i++) acc += x[i] * tile_row[lane_in_group * kDims + i];
  return acc;
}

template <int G>
__device__ __forceinline__ float lane_dot_regs(const float (&x)[kDims], const float (&y)[kDims]) {
  float acc = 0.0f;
#pragma unroll
  for (int i = 0; i < kDims; i++) acc += x[i] * y[i];
  return acc;
}

// Forward. grid (ceil(T/kRows), NH, B), block kRows·G threads. Query blocks are taken
// last-first: under the causal mask the last rows have the most keys to visit.
template <int G>
__global__ void __launch_bounds__(kRows* G)
    flash_forward_kernel(float* out, float* lse, const float* qkv, const int32_t* lengths, int T,
                         int C, int NH, float scale) {
  __shared__ float k_tile[kRows][G * kDims];
  __shared__ float v_tile[kRows][G * kDims];
  const int b = blockIdx.z, h = blockIdx.y;
  const int block_first = (gridDim.x - 1 - blockIdx.x) * kRows;
  const int hs = C / NH;
  const int lane_in_group = threadIdx.x % G;
  const int t = block_first + threadIdx.x / G;
  const int L = min(max(lengths[b], 0), T);
  const bool valid = t < L;
  const size_t stride = 3 * static_cast<size_t>(C);
  const float* q_base = qkv + static_cast<size_t>(b) * T * stride + h * hs;
  const float* k_base = q_base + C;
  const float* v_base = q_base + 2 * C;

  float q[kDims], o[kDims];
  load_row<G>(q, q_base, stride, t, T, hs, lane_in_group, scale);  // q pre-scaled
#pragma unroll
  for (int i = 0; i < kDims; i++) o[i] = 0.0f;
  float m = -INFINITY, l = 0.0f;

  const int last_key = min(block_first + kRows - 1, L - 1);  // same for the whole block
  for (int tile_first = 0; tile_first <= last_key; tile_first += kRows) {
    load_tile<G>(k_tile, k_base, stride, tile_first, T, hs);
    load_tile<G>(v_tile, v_base, stride, tile_first, T, hs);
    __syncthreads();
    for (int r = 0; r < kRows; r++) {
      const float score = group_sum<G>(lane_dot<G>(q, k_tile[r], lane_in_group));
      const int s = tile_first + r;
      if (valid && s <= t) {
        if (score > m) {  // new max: rescale what was summed so far
          const float correction = expf(m - score);
          l *= correction;
#pragma unroll
          for (int i = 0; i < kDims; i++) o[i] *= correction;
          m = score;
        }
        const float p = expf(score - m);
        l += p;
#pragma unroll
        for (int i = 0; i < kDims; i++) o[i] += p * v_tile[r][lane_in_group * kDims + i];
      }
    }
    __syncthreads();
  }
  if (t < T) {
    float* out_row = out + (static_cast<size_t>(b) * T + t) * C + h * hs;
    const float inv_l = valid ? 1.0f / l : 0.0f;
#pragma unroll
    for (int i = 0; i < kDims; i++) {
      const int d = lane_in_group * kDims + i;
      if (d < hs) out_row[d] = o[i] * inv_l;
    }
    if (lane_in_group == 0)
      lse[(static_cast<size_t>(b) * NH + h) * T + t] = valid ? m + logf(l) : 0.0f;
  }
}

// Backward step 1: D_t = dout_t · out_t with out_t recomputed from lse (p = exp(s − lse)).
template <int G>
__global__ void __launch_bounds__(kRows* G)
    flash_backward_d_kernel(float* D, const float* dout, const float* qkv, const float* lse,
                            const int32_t* lengths, int T, int C, int NH, float scale) {
  __shared__ float k_tile[kRows][G * kDims];
  __shared__ float v_tile[kRows][G * kDims];
  const int b = blockIdx.z, h = blockIdx.y;
  const int block_first = (gridDim.x - 1 - blockIdx.x) * kRows;
  const int hs = C / NH;
  const int lane_in_group = threadIdx.x % G;
  const int t = block_first + threadIdx.x / G;
  const int L = min(max(lengths[b], 0), T);
  const bool valid = t < L;
  const size_t stride = 3 * static_cast<size_t>(C);
  const float* q_base = qkv + static_cast<size_t>(b) * T * stride + h * hs;
  const float* k_base = q_base + C;
  const float* v_base = q_base + 2 * C;
  const size_t row_stat = (static_cast<size_t>(b) * NH + h) * T;

  float q[kDims], o[kDims];
  load_row<G>(q, q_base, stride, t, T, hs, lane_in_group, scale);
#pragma unroll
  for (int i = 0; i < kDims; i++) o[i] = 0.0f;
  const float row_lse = valid ? lse[row_stat + t] : 0.0f;

  const int last_key = min(block_first + kRows - 1, L - 1);
  for (int tile_first = 0; tile_first <= last_key; tile_first += kRows) {
    load_tile<G>(k_tile, k_base, stride, tile_first, T, hs);
    load_tile<G>(v_tile, v_base, stride, tile_first, T, hs);
    __syncthreads();
    for (int r = 0; r < kRows; r++) {
      const float score = group_sum<G>(lane_dot<G>(q, k_tile[r], lane_in_group));
      const int s = tile_first + r;
      if (valid && s <= t) {
        const float p = expf(score - row_lse);
#pragma unroll
        for (int i = 0; i < kDims; i++) o[i] += p * v_tile[r][lane_in_group * kDims + i];
      }
    }
    __syncthreads();
  }
  float dy[kDims];
  load_row<G>(dy, dout + static_cast<size_t>(b) * T * C + h * hs, C, t, T, hs, lane_in_group, 1.0f);
  const float d = group_sum<G>(lane_dot_regs<G>(dy, o));
  if (t < T && lane_in_group == 0) D[row_stat + t] = valid ? d : 0.0f;
}

// Backward step 2: dq_t = scale·Σ_s p_ts·(dout_t·v_s − D_t)·k_s, one row group per query.
template <int G>
__global__ void __launch_bounds__(kRows* G)
    flash_backward_dq_kernel(float* dqkv, const float* dout, const float* qkv, const float* lse,
                             const float* D, const int32_t* lengths, int T, int C, int NH,
                             float scale) {
  __shared__ float k_tile[kRows][G * kDims];
  __shared__ float v_tile[kRows][G * kDims];
  const int b = blockIdx.z, h = blockIdx.y;
  const int block_first = (gridDim.x - 1 - blockIdx.x) * kRows;
  const int hs = C / NH;
  const int lane_in_group = threadIdx.x % G;
  const int t = block_first + threadIdx.x / G;
  const int L = min(max(lengths[b], 0), T);
  const bool valid = t < L;
  const size_t stride = 3 * static_cast<size_t>(C);
  const float* q_base = qkv + static_cast<size_t>(b) * T * stride + h * hs;
  const float* k_base = q_base + C;
  const float* v_base = q_base + 2 * C;
  const size_t row_stat = (static_cast<size_t>(b) * NH + h) * T;

  float q[kDims], dy[kDims], dq[kDims];
  load_row<G>(q, q_base, stride, t, T, hs, lane_in_group, scale);
  load_row<G>(dy, dout + static_cast<size_t>(b) * T * C + h * hs, C, t, T, hs, lane_in_group, 1.0f);
#pragma unroll
  for (int i = 0; i < kDims; i++) dq[i] = 0.0f;
  const float row_lse = valid ? lse[row_stat + t] : 0.0f;
  const float row_d = valid ? D[row_stat + t] : 0.0f;

  const int last_key = min(block_first + kRows - 1, L - 1);
  for (int tile_first = 0; tile_first <= last_key; tile_first += kRows) {
    load_tile<G>(k_tile, k_base, stride, tile_first, T, hs);
    load_tile<G>(v_tile, v_base, stride, tile_first, T, hs);
    __syncthreads();
    for (int r = 0; r < kRows; r++) {
      const float score = group_sum<G>(lane_dot<G>(q, k_tile[r], lane_in_group));
      const float dp = group_sum<G>(lane_dot<G>(dy, v_tile[r], lane_in_group));
      const int s = tile_first + r;
      if (valid && s <= t) {
        const float ds = expf(score - row_lse) * (dp - row_d);
#pragma unroll
        for (int i = 0; i < kDims; i++) dq[i] += ds * k_tile[r][lane_in_group * kDims + i];
      }
    }
    __syncthreads();
  }
  if (t < T) {
    float* dq_row = dqkv + (static_cast<size_t>(b) * T + t) * stride + h * hs;
#pragma unroll
    for (int i = 0; i < kDims; i++) {
      const int d = lane_in_group * kDims + i;
      if (d < hs) dq_row[d] = valid ? scale * dq[i] : 0.0f;
    }
  }
}

// Backward step 3: dk_s, dv_s, one row group per key s, visiting queries t ≥ s (t < L).
// Key blocks are taken first-first: the first keys are seen by the most queries.
template <int G>
__global__ void __launch_bounds__(kRows* G)
    flash_backward_dkv_kernel(float* dqkv, const float* dout, const float* qkv, const float* lse,
                              const float* D, const int32_t* lengths, int T, int C, int NH,
                              float scale) {
  __shared__ float q_tile[kRows][G * kDims];
  __shared__ float dy_tile[kRows][G * kDims];
  __shared__ float lse_tile[kRows];
  __shared__ float d_tile[kRows];
  const int b = blockIdx.z, h = blockIdx.y;
  const int block_first = blockIdx.x * kRows;
  const int hs = C / NH;
  const int lane_in_group = threadIdx.x % G;
  const int s = block_first + threadIdx.x / G;
  const int L = min(max(lengths[b], 0), T);
  const bool valid = s < L;
  const size_t stride = 3 * static_cast<size_t>(C);
  const float* q_base = qkv + static_cast<size_t>(b) * T * stride + h * hs;
  const float* k_base = q_base + C;
  const float* v_base = q_base + 2 * C;
  const float* dy_base = dout + static_cast<size_t>(b) * T * C + h * hs;
  const size_t row_stat = (static_cast<size_t>(b) * NH + h) * T;

  float k[kDims], v[kDims], dk[kDims], dv[kDims];
  load_row<G>(k, k_base, stride, s, T, hs, lane_in_group, scale);  // k pre-scaled: q·k·scale
  load_row<G>(v, v_base, stride, s, T, hs, lane_in_group, 1.0f);
#pragma unroll
  for (int i = 0; i < kDims; i++) dk[i] = dv[i] = 0.0f;

  for (int tile_first = block_first; tile_first < L; tile_first += kRows) {
    load_tile<G>(q_tile, q_base, stride, tile_first, T, hs);
    load_tile<G>(dy_tile, dy_base, C, tile_first, T, hs);
    for (int i = threadIdx.x; i < kRows; i += blockDim.x) {
      const int t = tile_first + i;
      lse_tile[i] = t < L ? lse[row_stat + t] : 0.0f;
      d_tile[i] = t < L ? D[row_stat + t] : 0.0f;
    }
    __syncthreads();
    for (int r = 0; r < kRows; r++) {
      const float score = group_sum<G>(lane_dot<G>(k, q_tile[r], lane_in_group));
      const float dp = group_sum<G>(lane_dot<G>(v, dy_tile[r], lane_in_group));
      const int t = tile_first + r;
      if (valid && s <= t && t < L) {
        const float p = expf(score - lse_tile[r]);
        const float ds = p * (dp - d_tile[r]);
#pragma unroll
        for (int i = 0; i < kDims; i++) {
          dv[i] += p * dy_tile[r][lane_in_group * kDims + i];
          dk[i] += ds * q_tile[r][lane_in_group * kDims + i];
        }
      }
    }
    __syncthreads();
  }
  if (s < T) {
    float* dk_row = dqkv + (static_cast<size_t>(b) * T + s) * stride + C + h * hs;
    float* dv_row = dk_row + C;
#pragma unroll
    for (int i = 0; i < kDims; i++) {
      const int d = lane_in_group * kDims + i;
      if (d < hs) {
        dk_row[d] = valid ? scale * dk[i] : 0.0f;
        dv_row[d] = valid ? dv[i] : 0.0f;
      }
    }
  }
}

// Runs KERNEL<G> for the group size that fits hs (G = ceil(hs/16) rounded up to 1, 2, 4, 8).
int group_size_for(int hs) {
  HH_CHECK(hs >= 1 && hs <= 8 * kDims, "flash attention supports head sizes 1..", 8 * kDims,
           ", got ", hs, " (set HH_CUDA_FLASH=0 for the materialised path)");
  int g = 1;
  while (g * kDims < hs) g *= 2;
  return g;
}

}  // namespace

size_t attention_flash_saved_floats(int B, int T, int NH) {
  return static_cast<size_t>(B) * NH * T;
}

#define HH_FLASH_DISPATCH(G_VALUE, ...) \
  switch (G_VALUE) {                    \
    case 1: {                           \
      constexpr int G = 1;              \
      __VA_ARGS__;                      \
      break;                            \
    }                                   \
    case 2: {                           \
      constexpr int G = 2;              \
      __VA_ARGS__;                      \
      break;                            \
    }                                   \
    case 4: {                           \
      constexpr int G = 4;              \
      __VA_ARGS__;                      \
      break;                            \
    }                                   \
    default: {                          \
      constexpr int G = 8;              \
      __VA_ARGS__;                      \
      break;                            \
    }                                   \
  }

void attention_flash_forward(Context& ctx, float* out, float* lse, const float* qkv,
                             const int32_t* lengths, int B, int T, int C, int NH) {
  const int hs = C / NH;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
  const dim3 grid(ceil_div(T, kRows), NH, B);
  HH_FLASH_DISPATCH(group_size_for(hs), flash_forward_kernel<G>
                    <<<grid, kRows * G, 0, ctx.stream>>>(out, lse, qkv, lengths, T, C, NH, scale));
  CUDA_CHECK_LAUNCH();
}

void attention_flash_backward(Context& ctx, float* dqkv, const float* dout, const float* qkv,
                              const float* lse, const int32_t* lengths, int B, int T, int C,
                              int NH) {
  const int hs = C / NH;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
  const dim3 grid(ceil_div(T, kRows), NH, B);
  float* D = static_cast<float*>(ctx.scratch(sizeof(float) * static_cast<size_t>(B) * NH * T));
  const int g = group_size_for(hs);
  HH_FLASH_DISPATCH(g, flash_backward_d_kernel<G><<<grid, kRows * G, 0, ctx.stream>>>(
                           D, dout, qkv, lse, lengths, T, C, NH, scale));
  CUDA_CHECK_LAUNCH();
  HH_FLASH_DISPATCH(g, flash_backward_dq_kernel<G><<<grid, kRows * G, 0, ctx.stream>>>(
                           dqkv, dout, qkv, lse, D, lengths, T, C, NH, scale));
  CUDA_CHECK_LAUNCH();
  HH_FLASH_DISPATCH(g, flash_backward_dkv_kernel<G><<<grid, kRows * G, 0, ctx.stream>>>(
                           dqkv, dout, qkv, lse, D, lengths, T, C, NH, scale));
  CUDA_CHECK_LAUNCH();
}

#undef HH_FLASH_DISPATCH

}  // namespace hh::cuda
