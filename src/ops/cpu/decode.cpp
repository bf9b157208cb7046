// Ops of generation with a KV cache (see ops.h): M rows, each one sequence (cache slot
// slots[m]) at its own position positions[m]; caches are [S][max_len][C].
//
//   embedding_forward_at: out[m,:] = wte[tokens[m],:] + wpe[positions[m],:]
//   kv_cache_write:       K[slots[m], positions[m], :] = k(qkv[m]),  V[...] = v(qkv[m])
//   attention_decode:     kv_cache_write of the rows (distinct slots), then
//                         per head h (hs = C/NH, scale = 1/√hs), over t = 0..positions[m]:
//                           s[t] = scale·q_h·K[slot, t, h],  p = softmax(s) (max-subtracted),
//                           out[m,h] = Σ_t p[t]·V[slot, t, h]
//   sample_rows:          tokens[m] = argmax_v logits[m,v]/T + G(seeds[m], v) (Gumbel-max),
//                         logprobs[m] = log softmax(logits[m,:V])[tokens[m]]; see ops.h
// The fp16 decode ops (ops.h: decode_fp16) are the fp32 ops on the fp16 values read back,
// their fp16 outputs rounded to nearest even: the reference the CUDA kernels are held to.
// Parallel over rows (and heads): each (m, h) owns its part of the output.
#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"
#include "core/half.h"
#include "ops/cpu/cpu_ops.h"

namespace hh::cpu {

void embedding_forward_at(float* out, const int32_t* tokens, const int32_t* positions,
                          const float* wte, const float* wpe, int M, int C) {
  for (int m = 0; m < M; m++)
    HH_CHECK(positions[m] >= 0 && tokens[m] >= 0, "embedding_forward_at: row ", m, " has token ",
             tokens[m], " at position ", positions[m]);
#pragma omp parallel for schedule(static)
  for (int m = 0; m < M; m++) {
    const float* te = wte + static_cast<size_t>(tokens[m]) * C;
    const float* pe = wpe + static_cast<size_t>(positions[m]) * C;
    float* o = out + static_cast<size_t>(m) * C;
    for (int c = 0; c < C; c++) o[c] = te[c] + pe[c];
  }
}

void kv_cache_write(float* kcache, float* vcache, const float* qkv, const int32_t* slots,
                    const int32_t* positions, int M, int max_len, int C) {
  for (int m = 0; m < M; m++)
    HH_CHECK(positions[m] < max_len && slots[m] >= 0, "kv_cache_write: row ", m, " has slot ",
             slots[m], " and position ", positions[m], " (max_len ", max_len, ")");
#pragma omp parallel for schedule(static)
  for (int m = 0; m < M; m++) {
    if (positions[m] < 0) continue;
    const size_t at = (static_cast<size_t>(slots[m]) * max_len + positions[m]) * C;
    const float* row = qkv + static_cast<size_t>(m) * 3 * C;
    std::copy(row + C, row + 2 * C, kcache + at);
    std::copy(row + 2 * C, row + 3 * C, vcache + at);
  }
}

void attention_decode(float* out, const float* qkv, float* kcache, float* vcache,
                      const int32_t* slots, const int32_t* positions, int M, int max_len, int C,
                      int NH) {
  HH_CHECK(NH > 0 && C % NH == 0, "attention_decode: width C=", C, " is not a multiple of NH=", NH);
  for (int m = 0; m < M; m++)
    HH_CHECK(positions[m] >= 0 && positions[m] < max_len && slots[m] >= 0, "attention_decode: row ",
             m, " has slot ", slots[m], " and position ", positions[m], " (max_len ", max_len, ")");
  std::vector<int32_t> sorted(slots, slots + M);
  std::sort(sorted.begin(), sorted.end());
  const auto twice = std::adjacent_find(sorted.begin(), sorted.end());
  HH_CHECK(twice == sorted.end(), "attention_decode: slot ", twice == sorted.end() ? 0 : *twice,
           " has two rows (each row appends to its own slot)");
  kv_cache_write(kcache, vcache, qkv, slots, positions, M, max_len, C);
  const int hs = C / NH;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
#pragma omp parallel
  {
    std::vector<float> scores(max_len);
#pragma omp for schedule(static)
    for (int mh = 0; mh < M * NH; mh++) {
      const int m = mh / NH, h = mh % NH;
      const int n = positions[m] + 1;
      const float* q = qkv + static_cast<size_t>(m) * 3 * C + h * hs;
      const size_t base = static_cast<size_t>(slots[m]) * max_len * C + h * hs;
      float maxval = -INFINITY;
      for (int t = 0; t < n; t++) {
        const float* k = kcache + base + static_cast<size_t>(t) * C;
        float dot = 0.0f;
        for (int i = 0; i < hs; i++) dot += q[i] * k[i];
        scores[t] = dot * scale;
        maxval = std::max(maxval, scores[t]);
      }
      float sum = 0.0f;
      for (int t = 0; t < n; t++) {
        scores[t] = std::exp(scores[t] - maxval);
        sum += scores[t];
      }
      const float inv_sum = 1.0f / sum;
      float* o = out + static_cast<size_t>(m) * C + h * hs;
      std::fill(o, o + hs, 0.0f);
      for (int t = 0; t < n; t++) {
        const float p = scores[t] * inv_sum;
        const float* v = vcache + base + static_cast<size_t>(t) * C;
        for (int i = 0; i < hs; i++) o[i] += p * v[i];
      }
    }
  }
}

namespace {
// splitmix64's finaliser: a bijective 64-bit mix (the same in cuda/decode.cu).
inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
// Gumbel noise -log(-log(u)) with u in (0, 1) from 24 hashed bits. For bits ≥ 2^23,
// k + 0.5 rounds to an integer in float, and the top one, 2^24 − 1, to 2^24: u would be 1
// and G = +∞, so u stops at the float just below 1.
inline float gumbel(uint64_t seed, int v) {
  const uint64_t bits = mix64(seed + 0x9e3779b97f4a7c15ull * (static_cast<uint64_t>(v) + 1));
  const float u = std::min((static_cast<float>(bits >> 40) + 0.5f) * (1.0f / 16777216.0f),
                           1.0f - 1.0f / 16777216.0f);
  return -std::log(-std::log(u));
}
// x·inv_t + g with both roundings, as the CUDA samplers' __fadd_rn(__fmul_rn(..)): the build's
// baseline has FMA (-mfma), and GCC may fuse a multiply and an add anywhere; the empty asm
// makes the rounded product a value the compiler must produce before the add.
inline float gumbel_score(float x, float inv_t, float g) {
  float product = x * inv_t;
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  asm("" : "+x"(product));
#else
  volatile float rounded = product;
  product = rounded;
#endif
  return product + g;
}
}  // namespace

void sample_rows(int32_t* tokens, float* logprobs, const float* logits, const uint64_t* seeds,
                 float temperature, int M, int V, int Vp) {
  HH_CHECK(V >= 1 && V <= Vp, "sample_rows: V=", V, " must be in [1, Vp=", Vp, "]");
  HH_CHECK(temperature >= 0.0f, "sample_rows: temperature must be >= 0, got ", temperature);
#pragma omp parallel for schedule(static)
  for (int m = 0; m < M; m++) {
    const float* row = logits + static_cast<size_t>(m) * Vp;
    float maxval = row[0];
    for (int v = 1; v < V; v++) maxval = std::max(maxval, row[v]);
    int best = 0;
    if (temperature == 0.0f) {
      for (int v = 1; v < V; v++)
        if (row[v] > row[best]) best = v;
    } else {
      const float inv_t = 1.0f / temperature;
      float best_score = -INFINITY;
      for (int v = 0; v < V; v++) {
        const float score = gumbel_score(row[v], inv_t, gumbel(seeds[m], v));
        if (score > best_score) {
          best_score = score;
          best = v;
        }
      }
    }
    double sum = 0;
    for (int v = 0; v < V; v++) sum += std::exp(static_cast<double>(row[v]) - maxval);
    tokens[m] = best;
    logprobs[m] = static_cast<float>(row[best] - maxval - std::log(sum));
  }
}

// ---- the fp16 decode step ----

namespace {

std::vector<float> from_half(const uint16_t* src, size_t n) {
  std::vector<float> out(n);
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < n; i++) out[i] = half_to_float(src[i]);
  return out;
}

}  // namespace

void to_half(uint16_t* dst, const float* src, size_t n) {
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < n; i++) dst[i] = float_to_half(src[i]);
}

void layernorm_forward_half(uint16_t* out, const float* inp, const float* weight, const float* bias,
                            int N, int C) {
  std::vector<float> y(static_cast<size_t>(N) * C), mean(N), rstd(N);
  layernorm_forward(y.data(), mean.data(), rstd.data(), inp, weight, bias, N, C);
  to_half(out, y.data(), y.size());
}

void attention_decode_half(uint16_t* out, const float* qkv, float* kcache, float* vcache,
                           const int32_t* slots, const int32_t* positions, int M, int max_len,
                           int C, int NH) {
  std::vector<float> y(static_cast<size_t>(M) * C);
  attention_decode(y.data(), qkv, kcache, vcache, slots, positions, M, max_len, C, NH);
  to_half(out, y.data(), y.size());
}

void matmul_forward_half(float* out, const uint16_t* inp, const uint16_t* weight, const float* bias,
                         const float* residual, int N, int IC, int OC) {
  const std::vector<float> x = from_half(inp, static_cast<size_t>(N) * IC);
  const std::vector<float> w = from_half(weight, static_cast<size_t>(OC) * IC);
  matmul_forward(out, x.data(), w.data(), bias, N, IC, OC);
  if (residual) residual_forward(out, residual, out, static_cast<size_t>(N) * OC);
}

void matmul_gelu_forward_half(uint16_t* out, const uint16_t* inp, const uint16_t* weight,
                              const uint16_t* bias, int N, int IC, int OC) {
  const std::vector<float> x = from_half(inp, static_cast<size_t>(N) * IC);
  const std::vector<float> w = from_half(weight, static_cast<size_t>(OC) * IC);
  const std::vector<float> b = from_half(bias, OC);
  std::vector<float> pre(static_cast<size_t>(N) * OC), y(pre.size());
  matmul_forward(pre.data(), x.data(), w.data(), b.data(), N, IC, OC);
  gelu_forward(y.data(), pre.data(), y.size());
  to_half(out, y.data(), y.size());
}

}  // namespace hh::cpu
