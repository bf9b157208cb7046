// Ops of generation with a KV cache: M rows, each one sequence (cache slot slots[m]) at
// its own position positions[m]; caches are [S][max_len][C].
//
//   embedding_forward_at: out[m,:] = wte[tokens[m],:] + wpe[positions[m],:]
//   kv_cache_write:       K[slots[m], positions[m], :] = k(qkv[m]),  V[...] = v(qkv[m])
//                         (rows with positions[m] < 0 are skipped)
//   attention_decode:     kv_cache_write of the rows (distinct slots), then
//                         per head h (hs = C/NH, scale = 1/√hs), over t = 0..positions[m]:
//                           s[t] = scale·q_h·K[slot, t, h],  p = softmax(s) (max-subtracted),
//                           out[m,h] = Σ_t p[t]·V[slot, t, h]
//   sample_rows:          tokens[m] = argmax_v logits[m,v]/T + G(seeds[m], v) (Gumbel-max),
//                         logprobs[m] = log softmax(logits[m,:V])[tokens[m]]; see ops.h
//
// The cache holds float, or fp16 under ctx.kv_half (HH_CUDA_KV_HALF=1 with TF32): the
// kernels are templates on the stored type T, load through kv_load/kv_load2 (half2 pairs)
// and store through store_value (common.cuh: round to nearest); all arithmetic stays fp32.
//
// Two variants of attention_decode and sample_rows; ctx.fast_decode (default; off with
// HH_CUDA_FAST_DECODE=0) picks the second where it applies (head size up to
// 32·kFastDecodeMaxDims; temperature > 0). On an H100 (124M, batch 64) it took generation
// from 40.7k to 49.1k new tokens/s.
// attention_decode, plain: one block per (row, head); the scores of the row live in
//   shared memory (max_len floats), then threads over the head's dimensions sum p·V in t
//   order.
// attention_decode, fast (warp-parallel): one block of kFastDecodeWarps warps per
//   (row, head). Warp w takes the keys t = w, w + W, w + 2W, ... (W warps), kUnroll of them
//   at a time with all their loads issued first; the 32 lanes split the head's dimensions
//   (lane's j-th dimension is lane + 32j, or for hs a multiple of 64 the pairs 2·lane + 64j,
//   read as float2), so one key row is one coalesced read. The dot product is a shuffle
//   (xor) reduction, which leaves the same sum in every lane, so each warp's online softmax
//   (running max, running sum, its lanes' accumulators rescaled by exp(old max − new max))
//   is warp-uniform. At the end the warps' (max, sum, accumulators) meet in shared memory
//   and every output dimension combines them in warp order 0..W−1: deterministic, no
//   atomics. Head sizes up to 32·kFastDecodeMaxDims; larger ones take the default kernel.
// sample_rows, default: one block per row; each thread keeps a running (max, argmax) and a
//   running log-sum-exp over its strided columns, then the block combines them in a fixed
//   order. The Gumbel noise (two double-precision logs) is evaluated for every column.
// sample_rows, pruned (temperature > 0; greedy always takes the default kernel): the same
//   tokens and the same log-sum-exp, evaluating the noise only where a column can still
//   win. Pass 1 is the default kernel's log-sum-exp loop, also keeping the argmax a of the
//   logits; thr, a lower bound on the winning score, starts as a's own score. Pass 2 drops
//   column v when even the largest noise gumbel() can return cannot lift it to thr
//   (stage A: x·inv_t + kGumbelMax + slack < thr), or when its own u already rules it out
//   (stage B: G(u) ≤ −log(1−u), so 1−u > exp(x·inv_t + slack − thr) means its score
//   < thr); each warp queues the surviving columns in shared memory and evaluates the
//   noise 32 at a time (full warps), raising thr to the best score found so far. Columns
//   are dropped only when their score is strictly below a score that exists, so the
//   argmax with ties to the smallest index is the default kernel's; see
//   sample_rows_pruned_kernel for the bounds.
#include <cuda_fp16.h>

#include <cmath>

#include "common.cuh"
#include "cuda_ops.cuh"

namespace hh::cuda {
namespace {

constexpr int kDecodeThreads = 128;

// The cache's values: float, or fp16 under ctx.kv_half (stored rounded to nearest, read
// back exactly; every product and sum stays in fp32).
__device__ __forceinline__ float kv_load(const float* p) { return *p; }
__device__ __forceinline__ float kv_load(const __half* p) { return __half2float(*p); }
__device__ __forceinline__ float2 kv_load2(const float* p) {
  return *reinterpret_cast<const float2*>(p);
}
__device__ __forceinline__ float2 kv_load2(const __half* p) {
  return __half22float2(*reinterpret_cast<const __half2*>(p));
}

__global__ void embedding_forward_at_kernel(float* out, const int32_t* tokens,
                                            const int32_t* positions, const float* wte,
                                            const float* wpe, int M, int C) {
  wait_for_previous_kernel();  // launched with launch(): see common.cuh
  const size_t total = static_cast<size_t>(M) * C;
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < total;
       i += size_t(gridDim.x) * blockDim.x) {
    const size_t m = i / C, c = i % C;
    out[i] = wte[static_cast<size_t>(tokens[m]) * C + c] +
             wpe[static_cast<size_t>(positions[m]) * C + c];
  }
}

template <typename T>
__global__ void kv_cache_write_kernel(T* kcache, T* vcache, const float* qkv, const int32_t* slots,
                                      const int32_t* positions, int M, int max_len, int C) {
  const size_t total = static_cast<size_t>(M) * C;
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < total;
       i += size_t(gridDim.x) * blockDim.x) {
    const size_t m = i / C, c = i % C;
    const int pos = positions[m];
    if (pos < 0) continue;
    const size_t at = (static_cast<size_t>(slots[m]) * max_len + pos) * C + c;
    const float* row = qkv + m * 3 * C;
    store_value(kcache + at, row[C + c]);
    store_value(vcache + at, row[2 * C + c]);
  }
}

// attention_decode's append: block (m, h) writes head h's slice of row m's k and v to the
// cache (rows with positions outside [0, max_len) write nothing), and __syncthreads makes
// it visible to the whole block, the only reader of that slot in this step (distinct
// slots). The cache pointers carry no __restrict__/const, so the compiler never routes
// the block's later reads of them through the non-coherent read-only path.
template <typename T>
__device__ __forceinline__ void append_head_kv(T* kcache, T* vcache, const float* qkv, size_t base,
                                               int m, int h, int hs, int C, int pos, int max_len) {
  if (pos >= 0 && pos < max_len) {
    const float* row = qkv + static_cast<size_t>(m) * 3 * C + static_cast<size_t>(h) * hs;
    const size_t at = base + static_cast<size_t>(pos) * C;
    for (int i = threadIdx.x; i < hs; i += blockDim.x) {
      store_value(kcache + at + i, row[C + i]);
      store_value(vcache + at + i, row[2 * C + i]);
    }
  }
  __syncthreads();
}

// Max over the block (blockDim.x a multiple of 32); every thread gets it.
__device__ float block_max(float x, float* shared) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  x = warp_max(x);
  __syncthreads();
  if (lane == 0) shared[warp] = x;
  __syncthreads();
  x = lane < static_cast<int>(blockDim.x / 32) ? shared[lane] : -INFINITY;
  return warp_max(x);
}

// grid (M, NH); dynamic shared memory: max_len scores + hs floats of q. TO: the output's
// type (float; __half for attention_decode_half).
template <typename T, typename TO>
__global__ void attention_decode_kernel(TO* out, const float* qkv, T* kcache, T* vcache,
                                        const int32_t* slots, const int32_t* positions, int max_len,
                                        int C, int NH, float scale) {
  wait_for_previous_kernel();  // launched with launch(): see common.cuh
  extern __shared__ float shared[];
  __shared__ float reduce[32];
  const int m = blockIdx.x, h = blockIdx.y;
  const int hs = C / NH;
  float* scores = shared;       // [max_len]
  float* q = shared + max_len;  // [hs]
  const int n = min(positions[m], max_len - 1) + 1;
  const size_t base = static_cast<size_t>(slots[m]) * max_len * C + static_cast<size_t>(h) * hs;
  for (int i = threadIdx.x; i < hs; i += blockDim.x)
    q[i] = qkv[static_cast<size_t>(m) * 3 * C + static_cast<size_t>(h) * hs + i];
  append_head_kv(kcache, vcache, qkv, base, m, h, hs, C, positions[m], max_len);  // + q[] sync
  float local_max = -INFINITY;
  for (int t = threadIdx.x; t < n; t += blockDim.x) {
    const T* k = kcache + base + static_cast<size_t>(t) * C;
    float dot = 0.0f;
    for (int i = 0; i < hs; i++) dot += q[i] * kv_load(k + i);
    scores[t] = dot * scale;
    local_max = fmaxf(local_max, scores[t]);
  }
  const float max_score = block_max(local_max, reduce);
  float local_sum = 0.0f;
  for (int t = threadIdx.x; t < n; t += blockDim.x) {
    const float e = expf(scores[t] - max_score);
    scores[t] = e;
    local_sum += e;
  }
  const float inv_sum = 1.0f / block_sum(local_sum, reduce);  // its syncs publish scores[]
  TO* o = out + static_cast<size_t>(m) * C + static_cast<size_t>(h) * hs;
  for (int d = threadIdx.x; d < hs; d += blockDim.x) {
    float acc = 0.0f;
    for (int t = 0; t < n; t++)
      acc += scores[t] * kv_load(vcache + base + static_cast<size_t>(t) * C + d);
    store_value(o + d, acc * inv_sum);
  }
}

// ---- attention_decode, warp-parallel (ctx.fast_decode) ----
constexpr int kFastDecodeWarps = 8;
constexpr int kFastDecodeMaxDims = 8;  // dimensions per lane: head sizes up to 256

// Lane `lane`'s dimensions of a head of size hs: d = lane + 32j for j < D (those ≥ hs are
// absent: 0 in q, k and v, never stored); with kPairs (hs = 32·D, D even, rows aligned to
// two values) the pairs d = 64(j/2) + 2·lane + (j%2), loaded as one float2 (or half2).
template <int D, bool kPairs>
__device__ __forceinline__ int lane_dim(int lane, int j) {
  return kPairs ? 64 * (j / 2) + 2 * lane + (j % 2) : lane + 32 * j;
}

template <int D, bool kPairs, typename T>
__device__ __forceinline__ void load_dims(float (&dst)[D], const T* src, int lane, int hs) {
  if constexpr (kPairs) {
#pragma unroll
    for (int j = 0; j < D; j += 2) {
      const float2 pair = kv_load2(src + lane_dim<D, kPairs>(lane, j));
      dst[j] = pair.x;
      dst[j + 1] = pair.y;
    }
  } else {
#pragma unroll
    for (int j = 0; j < D; j++) {
      const int d = lane_dim<D, kPairs>(lane, j);
      dst[j] = d < hs ? kv_load(src + d) : 0.0f;
    }
  }
}

// U keys of one warp, t, t + stride, ..., t + (U−1)·stride (all < n): loads first, then U
// interleaved shuffle reductions, then one online-softmax step over the U scores in order.
template <int U, int D, bool kPairs, typename T>
__device__ __forceinline__ void decode_keys(const T* kbase, const T* vbase, size_t C, int t,
                                            int stride, const float (&q)[D], float (&acc)[D],
                                            float& run_max, float& run_sum, float scale, int lane,
                                            int hs) {
  float k[U][D], v[U][D];
#pragma unroll
  for (int u = 0; u < U; u++) {
    const size_t at = static_cast<size_t>(t + u * stride) * C;
    load_dims<D, kPairs>(k[u], kbase + at, lane, hs);
    load_dims<D, kPairs>(v[u], vbase + at, lane, hs);
  }
  float s[U];
#pragma unroll
  for (int u = 0; u < U; u++) {
    s[u] = 0.0f;
#pragma unroll
    for (int j = 0; j < D; j++) s[u] += q[j] * k[u][j];
  }
  // xor butterfly: lanes i and i^o add the same two values (a + b == b + a), so after
  // every step all lanes of a group hold the same bits; in the end all 32 do.
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1)
#pragma unroll
    for (int u = 0; u < U; u++) s[u] += __shfl_xor_sync(0xffffffffu, s[u], offset);
  float new_max = run_max;
#pragma unroll
  for (int u = 0; u < U; u++) {
    s[u] *= scale;
    new_max = fmaxf(new_max, s[u]);
  }
  // At the first keys run_max = −∞ and exp(−∞) = 0 clears the (zero) state. Scores of −∞
  // (only from infinite inputs) weigh exp(−∞) = 0; while all of them are, subtracting 0
  // instead of new_max = −∞ keeps that (and the state empty) rather than exp(−∞ + ∞) = NaN.
  const float shift = new_max == -INFINITY ? 0.0f : new_max;
  const float correction = expf(run_max - shift);
  run_sum *= correction;
#pragma unroll
  for (int j = 0; j < D; j++) acc[j] *= correction;
#pragma unroll
  for (int u = 0; u < U; u++) {
    const float p = expf(s[u] - shift);
    run_sum += p;
#pragma unroll
    for (int j = 0; j < D; j++) acc[j] += p * v[u][j];
  }
  run_max = new_max;
}

// grid (M, NH), block kFastDecodeWarps·32; dynamic shared memory: kFastDecodeWarps·(hs + 2)
// floats. D = ⌈hs/32⌉ dimensions per lane; TO as attention_decode_kernel's.
template <int D, bool kPairs, typename T, typename TO>
__global__ void __launch_bounds__(kFastDecodeWarps * 32)
    attention_decode_warps_kernel(TO* __restrict__ out, const float* __restrict__ qkv, T* kcache,
                                  T* vcache, const int32_t* slots, const int32_t* positions,
                                  int max_len, int C, int NH, float scale) {
  wait_for_previous_kernel();  // launched with launch(): see common.cuh
  constexpr int W = kFastDecodeWarps;
  constexpr int kUnroll = D <= 2 ? 4 : 2;  // keys in flight per warp (4 for hs ≤ 64; 2: no spills)
  extern __shared__ float shared[];
  const int m = blockIdx.x, h = blockIdx.y;
  const int hs = C / NH;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  float* warp_acc = shared;           // [W][hs]
  float* warp_max = shared + W * hs;  // [W]
  float* warp_sum = warp_max + W;     // [W]
  // As the default kernel: positions past the cache are clamped, and n ≤ 0 (a negative
  // position, which the CPU rejects) leaves every warp empty and the output NaN.
  const int n = min(positions[m], max_len - 1) + 1;
  const size_t base = static_cast<size_t>(slots[m]) * max_len * C + static_cast<size_t>(h) * hs;
  append_head_kv(kcache, vcache, qkv, base, m, h, hs, C, positions[m], max_len);
  const T* kbase = kcache + base;
  const T* vbase = vcache + base;
  float q[D], acc[D];
  load_dims<D, kPairs>(q, qkv + static_cast<size_t>(m) * 3 * C + static_cast<size_t>(h) * hs, lane,
                       hs);
#pragma unroll
  for (int j = 0; j < D; j++) acc[j] = 0.0f;
  float run_max = -INFINITY, run_sum = 0.0f;
  int t = warp;  // warp-uniform: the loops below never diverge within a warp
  for (; t + (kUnroll - 1) * W < n; t += kUnroll * W)
    decode_keys<kUnroll, D, kPairs>(kbase, vbase, C, t, W, q, acc, run_max, run_sum, scale, lane,
                                    hs);
  for (; t < n; t += W)
    decode_keys<1, D, kPairs>(kbase, vbase, C, t, W, q, acc, run_max, run_sum, scale, lane, hs);

  if (lane == 0) {
    warp_max[warp] = run_max;
    warp_sum[warp] = run_sum;
  }
#pragma unroll
  for (int j = 0; j < D; j++) {
    const int d = lane_dim<D, kPairs>(lane, j);
    if (d < hs) warp_acc[warp * hs + d] = acc[j];
  }
  __syncthreads();
  // Every thread combines the W warps in order 0..W−1 (the same bits in all threads).
  // An empty warp (max −∞, sum 0, accumulators 0) gets the factor 0, not exp(−∞ + ∞).
  float max_all = -INFINITY;
#pragma unroll
  for (int w = 0; w < W; w++) max_all = fmaxf(max_all, warp_max[w]);
  float factor[W];
  float sum = 0.0f;
#pragma unroll
  for (int w = 0; w < W; w++) {
    factor[w] = warp_max[w] > -INFINITY ? expf(warp_max[w] - max_all) : 0.0f;
    sum += warp_sum[w] * factor[w];
  }
  const float inv_sum = 1.0f / sum;  // the warp holding max_all adds ≥ 1, unless n ≤ 0
  TO* o = out + static_cast<size_t>(m) * C + static_cast<size_t>(h) * hs;
  for (int d = threadIdx.x; d < hs; d += blockDim.x) {
    float a = 0.0f;
#pragma unroll
    for (int w = 0; w < W; w++) a += warp_acc[w * hs + d] * factor[w];
    store_value(o + d, a * inv_sum);
  }
}

// splitmix64's finaliser (the same in src/ops/cpu/decode.cpp).
__device__ __forceinline__ uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// As the CPU's (src/ops/cpu/decode.cpp): u stops below 1. The logs run in double and round
// to float, matching the CPU's correctly rounded logf; --use_fast_math would otherwise
// make logf the approximate lg2, whose absolute error (~2^-21) swamps −log(u) for u near
// 1, exactly the largest noise values that decide the draw.
// In two parts, u and then G(u), so the pruned sampler can look at u before the logs.
__device__ __forceinline__ float gumbel_u(uint64_t seed, int v) {
  const uint64_t bits = mix64(seed + 0x9e3779b97f4a7c15ull * (static_cast<uint64_t>(v) + 1));
  return fminf((static_cast<float>(bits >> 40) + 0.5f) * (1.0f / 16777216.0f),
               1.0f - 1.0f / 16777216.0f);
}
__device__ __forceinline__ float gumbel_of_u(float u) {
  const float inner = static_cast<float>(log(static_cast<double>(u)));
  return -static_cast<float>(log(static_cast<double>(-inner)));
}
__device__ __forceinline__ float gumbel(uint64_t seed, int v) {
  return gumbel_of_u(gumbel_u(seed, v));
}

// A column's score x·inv_t + g with two IEEE roundings, as the CPU's gumbel_score (which
// keeps the compiler from fusing them): the samplers pick the same tokens as the CPU, not
// only nearly always. Plain `x * inv_t + g` under --use_fast_math may be fused or not, as
// ptxas decides per site.
__device__ __forceinline__ float gumbel_score(float x, float inv_t, float g) {
  return __fadd_rn(__fmul_rn(x, inv_t), g);
}

// Online log-sum-exp (max, Σ exp(x − max)) of the samplers. lse_add takes one logit and
// says whether it is the new max; −∞ adds nothing (−∞ − (−∞) would be NaN), NaN is skipped.
__device__ __forceinline__ bool lse_add(float& run_max, float& run_sum, float x) {
  if (x > run_max) {
    run_sum = run_sum * expf(run_max - x) + 1.0f;
    run_max = x;
    return true;
  }
  if (x > -INFINITY) run_sum += expf(x - run_max);
  return false;
}
// Calls f(v, row[v]) for this thread's columns v = threadIdx.x + k·blockDim.x < V in
// increasing order, as the plain strided loop would, but with the loads of kRowBatch
// columns issued before any is used: with one block per row (64 blocks at batch 64) the
// plain loop waits one memory round trip per column step, ~98 of them for GPT-2's
// vocabulary; batched, ~13.
constexpr int kRowBatch = 8;
template <typename F>
__device__ __forceinline__ void for_row_columns(const float* row, int V, F&& f) {
  for (int v0 = threadIdx.x; v0 < V; v0 += kRowBatch * blockDim.x) {
    float x[kRowBatch];
#pragma unroll
    for (int u = 0; u < kRowBatch; u++) {
      const int v = v0 + u * static_cast<int>(blockDim.x);
      x[u] = v < V ? row[v] : 0.0f;
    }
#pragma unroll
    for (int u = 0; u < kRowBatch; u++) {
      const int v = v0 + u * static_cast<int>(blockDim.x);
      if (v < V) f(v, x[u]);
    }
  }
}

// Merges another (max, sum) pair by rescaling both to the larger max.
__device__ __forceinline__ void lse_merge(float& run_max, float& run_sum, float o_max,
                                          float o_sum) {
  const float new_max = fmaxf(run_max, o_max);
  if (new_max > -INFINITY)
    run_sum = run_sum * expf(run_max - new_max) + o_sum * expf(o_max - new_max);
  run_max = new_max;
}

// Merges another (score, index) candidate: the larger score, the smaller index on ties (so
// the sampled token does not depend on how the columns were split among threads).
__device__ __forceinline__ void argmax_merge(float& score, int& index, float o_score, int o_index) {
  if (o_score > score || (o_score == score && o_index < index)) {
    score = o_score;
    index = o_index;
  }
}

constexpr int kSampleThreads = 512;

// grid M, block kSampleThreads.
__global__ void sample_rows_kernel(int32_t* tokens, float* logprobs, const float* logits,
                                   const uint64_t* seeds, float temperature, int V, int Vp) {
  wait_for_previous_kernel();  // launched with launch(): see common.cuh
  __shared__ float s_score[kSampleThreads / 32], s_max[kSampleThreads / 32],
      s_sum[kSampleThreads / 32];
  __shared__ int s_best[kSampleThreads / 32];
  const int m = blockIdx.x;
  const float* row = logits + static_cast<size_t>(m) * Vp;
  const uint64_t seed = seeds[m];
  const bool greedy = temperature == 0.0f;
  const float inv_t = greedy ? 1.0f : __fdiv_rn(1.0f, temperature);  // IEEE, as the CPU
  // Per thread: the best (score, index) and the online log-sum-exp (max, Σ exp(x - max)).
  float best_score = -INFINITY, run_max = -INFINITY, run_sum = 0.0f;
  int best = V;  // larger than every real index: loses all ties
  for_row_columns(row, V, [&](int v, float x) {
    const float score = greedy ? x : gumbel_score(x, inv_t, gumbel(seed, v));
    if (score > best_score) {  // v increases, so the first of equal scores stays
      best_score = score;
      best = v;
    }
    lse_add(run_max, run_sum, x);
  });
  // Warp, then block: combine (score, index) by max with the smaller index on ties, and
  // (max, sum) pairs by rescaling to the larger max.
  for (int offset = 16; offset > 0; offset >>= 1) {
    argmax_merge(best_score, best, __shfl_xor_sync(0xffffffffu, best_score, offset),
                 __shfl_xor_sync(0xffffffffu, best, offset));
    lse_merge(run_max, run_sum, __shfl_xor_sync(0xffffffffu, run_max, offset),
              __shfl_xor_sync(0xffffffffu, run_sum, offset));
  }
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) {
    s_score[warp] = best_score;
    s_best[warp] = best;
    s_max[warp] = run_max;
    s_sum[warp] = run_sum;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    float b_score = s_score[0], b_max = s_max[0], b_sum = s_sum[0];
    int b_best = s_best[0];
    for (int w = 1; w < static_cast<int>(blockDim.x / 32); w++) {
      argmax_merge(b_score, b_best, s_score[w], s_best[w]);
      lse_merge(b_max, b_sum, s_max[w], s_sum[w]);
    }
    if (b_best >= V) b_best = 0;  // only if every score was NaN/-inf
    tokens[m] = b_best;
    logprobs[m] = row[b_best] - b_max - logf(b_sum);
  }
}

// ---- sample_rows, pruned (ctx.fast_decode, temperature > 0) ----
// The noise gumbel() can return is bounded. u ≤ 1 − 2^-24 (the clamp), whose log,
// −2^-24 − 2^-49 − …, rounds to the float −2^-24 (the next float down is 2^-47 away), and
// −log(2^-24) = 24·ln 2 = 16.6355323…, which rounds to the float 16.63553238. log is
// increasing and every rounding monotone, so no u gives more: G ≤ kGumbelMax. (The least
// u, 2^-25, gives G = −log(25·ln 2) = −2.8523628, unused below: the pruning threshold
// starts at a real score, the argmax's, which is at least max_v x_v/T − 2.86.)
// scripts/decode_fast_check.py recomputes G for all 2^24 values of u.
constexpr float kGumbelMax = 16.6355324f;
// Room for what the bounds below do not model exactly: 1.0 in score units, against float
// errors of ~1e-6 relative (and 2^-4 absolute in stage B, where |thr| ≤ 2^20).
constexpr float kPruneSlack = 1.0f;
constexpr float kStageBMaxThr = 1048576.0f;  // 2^20: stage B only where ulp(thr) ≤ 2^-3
constexpr int kSampleWarps = kSampleThreads / 32;

// grid M, block kSampleThreads, temperature > 0. The token equals sample_rows_kernel's:
//
// A column v is dropped only if score(v) < thr, where thr is always a score some column
// really has (or a lower bound on one), so thr ≤ the winning score and v can be neither the
// winner nor tied with it. score(v) = fl(fl(x·inv_t) + g), inv_t = fl(1/T), as in
// sample_rows_kernel and the CPU: the non-contractible __f*_rn intrinsics fix both roundings
// whatever ptxas fuses elsewhere. The bounds below are computed with one rounding (fma) and
// with two, so they would hold for either.
// Stage A: g ≤ kGumbelMax < B = kGumbelMax + slack, and rounding is monotone, so
//   score(v) ≤ max(fma(x, inv_t, B), fl(fl(x·inv_t) + B)) =: bound; bound < thr drops v.
//   NaN (x NaN) compares false and keeps v, whose NaN score then loses, as in the default.
// Stage B (|thr| ≤ 2^20): for u in (0, 1), −log(u) ≥ 1 − u, so G(u) ≤ −log(1 − u). If
//   1 − u > e = exp(x·inv_t + slack − thr) then G < thr − slack − x·inv_t (+ errors: the
//   float of slack − thr is off by ≤ 2^-4, __expf by ~1e-5 relative, gumbel()'s float logs
//   by ~1e-6, 1 − u is exact for u ≥ 1/2 and within 2^-24 relative below; all ≪ 1), so
//   score(v) < thr − 0.9 < thr. e = 0 (underflow) means x·inv_t + slack − thr < −87, far
//   below −G_max; e = ∞ or NaN keeps v.
// Ties: sample_rows_kernel's winner is the smallest index among the scores > −∞ that equal
//   the maximum (index V, then 0, if there are none). Queued columns reach a lane in no
//   particular order, so the lane compares (score, index) in full, with the same rule, and
//   the combine across lanes and warps is the default kernel's.
// The log-sum-exp (pass 1) is the default kernel's loop and combine, unchanged.
__global__ void __launch_bounds__(kSampleThreads)
    sample_rows_pruned_kernel(int32_t* tokens, float* logprobs, const float* __restrict__ logits,
                              const uint64_t* seeds, float temperature, int V, int Vp) {
  wait_for_previous_kernel();  // launched with launch(): see common.cuh
  __shared__ float s_score[kSampleWarps], s_max[kSampleWarps], s_sum[kSampleWarps];
  __shared__ int s_best[kSampleWarps], s_arg[kSampleWarps];
  __shared__ int s_queue[kSampleWarps][64];  // < 32 left over + 32 new
  __shared__ float s_thr;
  const int m = blockIdx.x;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const float* row = logits + static_cast<size_t>(m) * Vp;
  const uint64_t seed = seeds[m];
  const float inv_t = __fdiv_rn(1.0f, temperature);  // IEEE, as sample_rows_kernel and the CPU

  // Pass 1: the online log-sum-exp, and the first column holding each thread's max.
  float run_max = -INFINITY, run_sum = 0.0f;
  int arg = V;
  for_row_columns(row, V, [&](int v, float x) {
    if (lse_add(run_max, run_sum, x)) arg = v;
  });
  for (int offset = 16; offset > 0; offset >>= 1) {
    const float o_max = __shfl_xor_sync(0xffffffffu, run_max, offset);
    const float o_sum = __shfl_xor_sync(0xffffffffu, run_sum, offset);
    const int o_arg = __shfl_xor_sync(0xffffffffu, arg, offset);
    if (o_max > run_max || (o_max == run_max && o_arg < arg)) arg = o_arg;
    lse_merge(run_max, run_sum, o_max, o_sum);
  }
  if (lane == 0) {
    s_max[warp] = run_max;
    s_sum[warp] = run_sum;
    s_arg[warp] = arg;
  }
  __syncthreads();
  float b_max = 0.0f, b_sum = 0.0f;  // thread 0's, for the log-prob at the end
  if (threadIdx.x == 0) {
    b_max = s_max[0];
    b_sum = s_sum[0];
    int b_arg = s_arg[0];
    for (int w = 1; w < kSampleWarps; w++) {
      if (s_max[w] > b_max || (s_max[w] == b_max && s_arg[w] < b_arg)) b_arg = s_arg[w];
      lse_merge(b_max, b_sum, s_max[w], s_sum[w]);
    }
    // The first threshold: the argmax's score (below both of its roundings). No finite
    // argmax (every logit −∞ or NaN): −∞, nothing is dropped.
    float thr = -INFINITY;
    if (b_arg < V) {
      const float x = row[b_arg], g = gumbel(seed, b_arg);
      thr = fmaxf(-INFINITY, fminf(__fmaf_rn(x, inv_t, g), __fadd_rn(__fmul_rn(x, inv_t), g)));
    }
    s_thr = thr;  // fmaxf above turned a NaN (inv_t = ∞ with x = 0) into −∞
  }
  __syncthreads();

  // Pass 2: the columns of sample_rows_kernel's threads (v ≡ threadIdx.x mod blockDim.x),
  // 32 consecutive ones per warp and step; survivors go to the warp's queue.
  float thr = s_thr;  // warp-uniform from here on
  float thr_b = kPruneSlack - thr;
  bool stage_b = fabsf(thr) <= kStageBMaxThr;
  constexpr float kBound = kGumbelMax + kPruneSlack;
  float best_score = -INFINITY;
  int best = V;  // larger than every real index: loses all ties
  int* queue = s_queue[warp];
  int count = 0;  // warp-uniform
  auto consider = [&](int v) {
    const float score = gumbel_score(row[v], inv_t, gumbel(seed, v));
    if (score > best_score || (score == best_score && score > -INFINITY && v < best)) {
      best_score = score;
      best = v;
    }
  };
  // The warp's steps v0 = warp·32 + k·kSampleThreads in order, kRowBatch steps' loads at a
  // time (as for_row_columns; the steps are warp-uniform, so the ballots below stay whole).
  for (int w0 = warp * 32; w0 < V; w0 += kRowBatch * kSampleThreads) {
    float xs[kRowBatch];
#pragma unroll
    for (int u = 0; u < kRowBatch; u++) {
      const int v = w0 + u * kSampleThreads + lane;
      xs[u] = v < V ? row[v] : 0.0f;
    }
#pragma unroll
    for (int u = 0; u < kRowBatch; u++) {
      const int v0 = w0 + u * kSampleThreads;
      if (v0 >= V) break;  // warp-uniform
      const int v = v0 + lane;
      bool keep = false;
      if (v < V) {
        const float x = xs[u];
        const float bound =
            fmaxf(__fmaf_rn(x, inv_t, kBound), __fadd_rn(__fmul_rn(x, inv_t), kBound));
        keep = !(bound < thr);
        if (keep && stage_b) keep = !(1.0f - gumbel_u(seed, v) > expf(__fmaf_rn(x, inv_t, thr_b)));
      }
      const unsigned ballot = __ballot_sync(0xffffffffu, keep);
      if (keep) queue[count + __popc(ballot & ((1u << lane) - 1u))] = v;
      count += __popc(ballot);
      if (count >= 32) {  // a full warp of noise: queue[0..32), then move the rest down
        __syncwarp();
        consider(queue[lane]);
        if (lane < count - 32) queue[lane] = queue[lane + 32];  // lane reads and writes queue[lane]
        __syncwarp();
        count -= 32;
        thr = fmaxf(thr, warp_max(best_score));  // a score found: still ≤ the winner's
        thr_b = kPruneSlack - thr;
        stage_b = fabsf(thr) <= kStageBMaxThr;
      }
    }
  }
  __syncwarp();
  if (lane < count) consider(queue[lane]);

  // Combine (score, index) candidates with argmax_merge, as sample_rows_kernel.
  for (int offset = 16; offset > 0; offset >>= 1) {
    argmax_merge(best_score, best, __shfl_xor_sync(0xffffffffu, best_score, offset),
                 __shfl_xor_sync(0xffffffffu, best, offset));
  }
  if (lane == 0) {
    s_score[warp] = best_score;
    s_best[warp] = best;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    float b_score = s_score[0];
    int b_best = s_best[0];
    for (int w = 1; w < kSampleWarps; w++) argmax_merge(b_score, b_best, s_score[w], s_best[w]);
    if (b_best >= V) b_best = 0;  // only if every score was NaN/-inf
    tokens[m] = b_best;
    logprobs[m] = row[b_best] - b_max - logf(b_sum);
  }
}

}  // namespace

void sample_rows(Context& ctx, int32_t* tokens, float* logprobs, const float* logits,
                 const uint64_t* seeds, float temperature, int M, int V, int Vp) {
  if (M <= 0) return;
  HH_CHECK(V >= 1 && V <= Vp, "sample_rows: V=", V, " must be in [1, Vp=", Vp, "]");
  HH_CHECK(temperature >= 0.0f, "sample_rows: temperature must be >= 0, got ", temperature);
  launch(ctx,
         ctx.fast_decode && temperature > 0.0f ? sample_rows_pruned_kernel : sample_rows_kernel, M,
         kSampleThreads, 0, tokens, logprobs, logits, seeds, temperature, V, Vp);
}

void embedding_forward_at(Context& ctx, float* out, const int32_t* tokens, const int32_t* positions,
                          const float* wte, const float* wpe, int M, int C) {
  const size_t total = static_cast<size_t>(M) * C;
  if (total == 0) return;
  launch(ctx, embedding_forward_at_kernel, grid_for(total, 256, ctx), 256, 0, out, tokens,
         positions, wte, wpe, M, C);
}

void kv_cache_write(Context& ctx, void* kcache, void* vcache, const float* qkv,
                    const int32_t* slots, const int32_t* positions, int M, int max_len, int C) {
  const size_t total = static_cast<size_t>(M) * C;
  if (total == 0) return;
  const int blocks = grid_for(total, 256, ctx);
  if (ctx.kv_half)
    kv_cache_write_kernel<<<blocks, 256, 0, ctx.stream>>>(static_cast<__half*>(kcache),
                                                          static_cast<__half*>(vcache), qkv, slots,
                                                          positions, M, max_len, C);
  else
    kv_cache_write_kernel<<<blocks, 256, 0, ctx.stream>>>(static_cast<float*>(kcache),
                                                          static_cast<float*>(vcache), qkv, slots,
                                                          positions, M, max_len, C);
  CUDA_CHECK_LAUNCH();
}

namespace {

template <int D, typename T, typename TO>
void launch_attention_decode_warps(Context& ctx, bool pairs, dim3 grid, size_t shared_bytes,
                                   TO* out, const float* qkv, T* kcache, T* vcache,
                                   const int32_t* slots, const int32_t* positions, int max_len,
                                   int C, int NH, float scale) {
  auto* kernel = attention_decode_warps_kernel<D, false, T, TO>;
  if constexpr (D % 2 == 0)
    if (pairs) kernel = attention_decode_warps_kernel<D, true, T, TO>;
  launch(ctx, kernel, grid, kFastDecodeWarps * 32, shared_bytes, out, qkv, kcache, vcache, slots,
         positions, max_len, C, NH, scale);
}

bool aligned(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// The warp-parallel kernel for D = ⌈hs/32⌉ dimensions per lane (hs ≤ 32·kFastDecodeMaxDims).
template <typename T, typename TO>
void attention_decode_fast(Context& ctx, TO* out, const float* qkv, T* kcache, T* vcache,
                           const int32_t* slots, const int32_t* positions, int M, int max_len,
                           int C, int NH) {
  const int hs = C / NH;
  const int dims = (hs + 31) / 32;
  // Pairs: hs a multiple of 64 makes every row offset (m·3C + h·hs, (slot·max_len + t)·C +
  // h·hs) even; the base pointers must be aligned to two values too (float2 for q, float2
  // or half2 for the cache).
  const bool pairs = hs % 64 == 0 && aligned(qkv, 2 * sizeof(float)) &&
                     aligned(kcache, 2 * sizeof(T)) && aligned(vcache, 2 * sizeof(T));
  const size_t shared_bytes = sizeof(float) * kFastDecodeWarps * (static_cast<size_t>(hs) + 2);
  const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
  const dim3 grid(M, NH);
  switch (dims) {
#define HH_DECODE_CASE(D)                                                                     \
  case D:                                                                                     \
    launch_attention_decode_warps<D, T, TO>(ctx, pairs, grid, shared_bytes, out, qkv, kcache, \
                                            vcache, slots, positions, max_len, C, NH, scale); \
    break;
    HH_DECODE_CASE(1)
    HH_DECODE_CASE(2)
    HH_DECODE_CASE(3)
    HH_DECODE_CASE(4)
    HH_DECODE_CASE(5)
    HH_DECODE_CASE(6)
    HH_DECODE_CASE(7)
    HH_DECODE_CASE(8)
#undef HH_DECODE_CASE
    default:
      HH_FAIL("attention_decode: head size ", hs, " needs ", dims,
              " dimensions per lane, more than ", kFastDecodeMaxDims);
  }
}

template <typename T, typename TO>
void attention_decode_as(Context& ctx, TO* out, const float* qkv, T* kcache, T* vcache,
                         const int32_t* slots, const int32_t* positions, int M, int max_len, int C,
                         int NH) {
  const int hs = C / NH;
  if (ctx.fast_decode && hs >= 1 && hs <= 32 * kFastDecodeMaxDims) {
    attention_decode_fast(ctx, out, qkv, kcache, vcache, slots, positions, M, max_len, C, NH);
    return;
  }
  const size_t shared_bytes = sizeof(float) * (static_cast<size_t>(max_len) + hs);
  // Dynamic plus the kernel's static reduce[32] must fit the 48 KiB a block gets by default.
  HH_CHECK(shared_bytes + 32 * sizeof(float) <= 48 * 1024, "attention_decode: max_len ", max_len,
           " + head size ", hs, " floats exceed the 48 KiB of shared memory per block");
  const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
  launch(ctx, attention_decode_kernel<T, TO>, dim3(M, NH), kDecodeThreads, shared_bytes, out, qkv,
         kcache, vcache, slots, positions, max_len, C, NH, scale);
}

// The cache's stored type (ctx.kv_half) and the output's, TO.
template <typename TO>
void attention_decode_to(Context& ctx, TO* out, const float* qkv, void* kcache, void* vcache,
                         const int32_t* slots, const int32_t* positions, int M, int max_len, int C,
                         int NH) {
  if (M <= 0) return;
  HH_CHECK(NH > 0 && C % NH == 0, "attention_decode: width C=", C, " is not a multiple of NH=", NH);
  if (ctx.kv_half)
    attention_decode_as(ctx, out, qkv, static_cast<__half*>(kcache), static_cast<__half*>(vcache),
                        slots, positions, M, max_len, C, NH);
  else
    attention_decode_as(ctx, out, qkv, static_cast<float*>(kcache), static_cast<float*>(vcache),
                        slots, positions, M, max_len, C, NH);
}

__global__ void to_half_kernel(__half* dst, const float* src, size_t n) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x)
    dst[i] = __float2half_rn(src[i]);
}

}  // namespace

void attention_decode(Context& ctx, float* out, const float* qkv, void* kcache, void* vcache,
                      const int32_t* slots, const int32_t* positions, int M, int max_len, int C,
                      int NH) {
  attention_decode_to(ctx, out, qkv, kcache, vcache, slots, positions, M, max_len, C, NH);
}

void attention_decode_half(Context& ctx, void* out, const float* qkv, void* kcache, void* vcache,
                           const int32_t* slots, const int32_t* positions, int M, int max_len,
                           int C, int NH) {
  attention_decode_to(ctx, static_cast<__half*>(out), qkv, kcache, vcache, slots, positions, M,
                      max_len, C, NH);
}

void to_half(Context& ctx, void* dst, const float* src, size_t n) {
  if (n == 0) return;
  to_half_kernel<<<grid_for(n, 256, ctx), 256, 0, ctx.stream>>>(static_cast<__half*>(dst), src, n);
  CUDA_CHECK_LAUNCH();
}

}  // namespace hh::cuda
