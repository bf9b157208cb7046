// Ops of generation with a KV cache: M rows, each one sequence (cache slot slots[m]) at
// its own position positions[m]; caches are [S][max_len][C].
//
//   embedding_forward_at: out[m,:] = wte[tokens[m],:] + wpe[positions[m],:]
//   kv_cache_write:       K[slots[m], positions[m], :] = k(qkv[m]),  V[...] = v(qkv[m])
//                         (rows with positions[m] < 0 are skipped)
//   attention_decode:     per head h (hs = C/NH, scale = 1/√hs), over t = 0..positions[m]:
//                           s[t] = scale·q_h·K[slot, t, h],  p = softmax(s) (max-subtracted),
//                           out[m,h] = Σ_t p[t]·V[slot, t, h]
//   sample_rows:          tokens[m] = argmax_v logits[m,v]/T + G(seeds[m], v) (Gumbel-max),
//                         logprobs[m] = log softmax(logits[m,:V])[tokens[m]]; see ops.h
// attention_decode: one block per (row, head); the scores of the row live in shared
// memory (max_len floats), then threads over the head's dimensions sum p·V in t order.
// sample_rows: one block per row; each thread keeps a running (max, argmax) and a running
// log-sum-exp over its strided columns, then the block combines them in a fixed order.
#include <cmath>

#include "common.cuh"
#include "cuda_ops.cuh"

namespace hh::cuda {
namespace {

constexpr int kDecodeThreads = 128;

__global__ void embedding_forward_at_kernel(float* out, const int32_t* tokens,
                                            const int32_t* positions, const float* wte,
                                            const float* wpe, int M, int C) {
  const size_t total = static_cast<size_t>(M) * C;
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < total;
       i += size_t(gridDim.x) * blockDim.x) {
    const size_t m = i / C, c = i % C;
    out[i] = wte[static_cast<size_t>(tokens[m]) * C + c] +
             wpe[static_cast<size_t>(positions[m]) * C + c];
  }
}

__global__ void kv_cache_write_kernel(float* kcache, float* vcache, const float* qkv,
                                      const int32_t* slots, const int32_t* positions, int M,
                                      int max_len, int C) {
  const size_t total = static_cast<size_t>(M) * C;
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < total;
       i += size_t(gridDim.x) * blockDim.x) {
    const size_t m = i / C, c = i % C;
    const int pos = positions[m];
    if (pos < 0) continue;
    const size_t at = (static_cast<size_t>(slots[m]) * max_len + pos) * C + c;
    const float* row = qkv + m * 3 * C;
    kcache[at] = row[C + c];
    vcache[at] = row[2 * C + c];
  }
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

// grid (M, NH); dynamic shared memory: max_len scores + hs floats of q.
__global__ void attention_decode_kernel(float* out, const float* qkv, const float* kcache,
                                        const float* vcache, const int32_t* slots,
                                        const int32_t* positions, int max_len, int C, int NH,
                                        float scale) {
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
  __syncthreads();
  float local_max = -INFINITY;
  for (int t = threadIdx.x; t < n; t += blockDim.x) {
    const float* k = kcache + base + static_cast<size_t>(t) * C;
    float dot = 0.0f;
    for (int i = 0; i < hs; i++) dot += q[i] * k[i];
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
  float* o = out + static_cast<size_t>(m) * C + static_cast<size_t>(h) * hs;
  for (int d = threadIdx.x; d < hs; d += blockDim.x) {
    float acc = 0.0f;
    for (int t = 0; t < n; t++) acc += scores[t] * vcache[base + static_cast<size_t>(t) * C + d];
    o[d] = acc * inv_sum;
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
__device__ __forceinline__ float gumbel(uint64_t seed, int v) {
  const uint64_t bits = mix64(seed + 0x9e3779b97f4a7c15ull * (static_cast<uint64_t>(v) + 1));
  const float u = fminf((static_cast<float>(bits >> 40) + 0.5f) * (1.0f / 16777216.0f),
                        1.0f - 1.0f / 16777216.0f);
  const float inner = static_cast<float>(log(static_cast<double>(u)));
  return -static_cast<float>(log(static_cast<double>(-inner)));
}

constexpr int kSampleThreads = 512;

// grid M, block kSampleThreads.
__global__ void sample_rows_kernel(int32_t* tokens, float* logprobs, const float* logits,
                                   const uint64_t* seeds, float temperature, int V, int Vp) {
  __shared__ float s_score[kSampleThreads / 32], s_max[kSampleThreads / 32],
      s_sum[kSampleThreads / 32];
  __shared__ int s_best[kSampleThreads / 32];
  const int m = blockIdx.x;
  const float* row = logits + static_cast<size_t>(m) * Vp;
  const uint64_t seed = seeds[m];
  const bool greedy = temperature == 0.0f;
  const float inv_t = greedy ? 1.0f : 1.0f / temperature;
  // Per thread: the best (score, index) and the online log-sum-exp (max, Σ exp(x - max)).
  float best_score = -INFINITY, run_max = -INFINITY, run_sum = 0.0f;
  int best = V;  // larger than every real index: loses all ties
  for (int v = threadIdx.x; v < V; v += blockDim.x) {
    const float x = row[v];
    const float score = greedy ? x : x * inv_t + gumbel(seed, v);
    if (score > best_score) {  // v increases, so the first of equal scores stays
      best_score = score;
      best = v;
    }
    if (x > run_max) {
      run_sum = run_sum * expf(run_max - x) + 1.0f;
      run_max = x;
    } else if (x > -INFINITY) {  // exp(−∞ − max) = 0; −∞ − (−∞) would be NaN
      run_sum += expf(x - run_max);
    }
  }
  // Warp, then block: combine (score, index) by max with the smaller index on ties, and
  // (max, sum) pairs by rescaling to the larger max.
  for (int offset = 16; offset > 0; offset >>= 1) {
    const float o_score = __shfl_xor_sync(0xffffffffu, best_score, offset);
    const int o_best = __shfl_xor_sync(0xffffffffu, best, offset);
    if (o_score > best_score || (o_score == best_score && o_best < best)) {
      best_score = o_score;
      best = o_best;
    }
    const float o_max = __shfl_xor_sync(0xffffffffu, run_max, offset);
    const float o_sum = __shfl_xor_sync(0xffffffffu, run_sum, offset);
    const float new_max = fmaxf(run_max, o_max);
    if (new_max > -INFINITY)
      run_sum = run_sum * expf(run_max - new_max) + o_sum * expf(o_max - new_max);
    run_max = new_max;
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
      if (s_score[w] > b_score || (s_score[w] == b_score && s_best[w] < b_best)) {
        b_score = s_score[w];
        b_best = s_best[w];
      }
      const float new_max = fmaxf(b_max, s_max[w]);
      if (new_max > -INFINITY)
        b_sum = b_sum * expf(b_max - new_max) + s_sum[w] * expf(s_max[w] - new_max);
      b_max = new_max;
    }
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
  sample_rows_kernel<<<M, kSampleThreads, 0, ctx.stream>>>(tokens, logprobs, logits, seeds,
                                                           temperature, V, Vp);
  CUDA_CHECK_LAUNCH();
}

void embedding_forward_at(Context& ctx, float* out, const int32_t* tokens, const int32_t* positions,
                          const float* wte, const float* wpe, int M, int C) {
  const size_t total = static_cast<size_t>(M) * C;
  if (total == 0) return;
  embedding_forward_at_kernel<<<grid_for(total, 256, ctx), 256, 0, ctx.stream>>>(
      out, tokens, positions, wte, wpe, M, C);
  CUDA_CHECK_LAUNCH();
}

void kv_cache_write(Context& ctx, float* kcache, float* vcache, const float* qkv,
                    const int32_t* slots, const int32_t* positions, int M, int max_len, int C) {
  const size_t total = static_cast<size_t>(M) * C;
  if (total == 0) return;
  kv_cache_write_kernel<<<grid_for(total, 256, ctx), 256, 0, ctx.stream>>>(
      kcache, vcache, qkv, slots, positions, M, max_len, C);
  CUDA_CHECK_LAUNCH();
}

void attention_decode(Context& ctx, float* out, const float* qkv, const float* kcache,
                      const float* vcache, const int32_t* slots, const int32_t* positions, int M,
                      int max_len, int C, int NH) {
  if (M <= 0) return;
  HH_CHECK(NH > 0 && C % NH == 0, "attention_decode: width C=", C, " is not a multiple of NH=", NH);
  const int hs = C / NH;
  const size_t shared_bytes = sizeof(float) * (static_cast<size_t>(max_len) + hs);
  // Dynamic plus the kernel's static reduce[32] must fit the 48 KiB a block gets by default.
  HH_CHECK(shared_bytes + 32 * sizeof(float) <= 48 * 1024, "attention_decode: max_len ", max_len,
           " + head size ", hs, " floats exceed the 48 KiB of shared memory per block");
  const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
  attention_decode_kernel<<<dim3(M, NH), kDecodeThreads, shared_bytes, ctx.stream>>>(
      out, qkv, kcache, vcache, slots, positions, max_len, C, NH, scale);
  CUDA_CHECK_LAUNCH();
}

}  // namespace hh::cuda
