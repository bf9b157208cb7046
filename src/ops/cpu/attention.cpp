// Causal multi-head self-attention over right-padded variable-length sequences.
// qkv[B,T,3C] holds q | k | v; head h uses columns h·hs..(h+1)·hs of each, hs = C/NH.
// For each (b, h) and each real query row t < len_b, with scale = 1/√hs:
//   s[k] = scale·q_t·k_k  (k <= t),  P[t,k] = softmax_k(s)  (max-subtracted),
//   out_t = Σ_k P[t,k]·v_k
// P is saved as saved[B,NH,T,T] (zero above the diagonal and on padded rows).
// backward, for each real row t (standard softmax-attention gradient):
//   dP[k] = dout_t·v_k,  dS[k] = P[t,k]·(dP[k] - Σ_j P[t,j]·dP[j])
//   dq_t = scale·Σ_k dS[t,k]·k_k,  dk_k = scale·Σ_t dS[t,k]·q_t,  dv_k = Σ_t P[t,k]·dout_t
// Padded rows t >= len_b give out = 0 and dqkv = 0; since attention is causal and real
// rows only look at keys k <= t < len_b, padding never reaches a real position.
// Parallel over (b, h) pairs: each pair owns its columns of out/dqkv, so there are no races.
//
// Speed: the products are written as two kernels with 64-wide register tiles (8 AVX
// accumulators, enough independent sums to hide the FMA latency): dots of a vector with
// many keys (keys stored transposed in per-thread scratch, so that the tile runs over
// keys; 4 query rows at a time, so each key load feeds 4 FMAs) and weighted sums of rows
// (the tile runs over the head dimension). dk and dv are computed per key as sums over
// query rows, from dS kept for the whole (b, h) in per-thread scratch (T·T floats).
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/error.h"
#include "ops/cpu/cpu_ops.h"
#include "ops/cpu/fast_math.h"

namespace hh::cpu {

namespace {
void check_attention_args(const int32_t* lengths, int B, int T, int C, int NH) {
  HH_CHECK(NH > 0 && C % NH == 0, "attention: width C=", C, " is not a multiple of NH=", NH);
  for (int b = 0; b < B; b++) {
    HH_CHECK(lengths[b] >= 1 && lengths[b] <= T, "attention: lengths[", b, "]=", lengths[b],
             " is outside [1, T=", T, "]");
  }
}

constexpr int kTile = 64;  // floats per register tile: 8 AVX registers of partial sums

int round_up(int x, int multiple) { return (x + multiple - 1) / multiple * multiple; }

// dots[k] = Σ_i x[i]·rows_t[i·stride + k] for k < n: the dot products of x with n rows
// stored transposed (rows_t[i·stride + k] is row k's element i). stride is a multiple of
// kTile and rows_t is readable up to stride, so every tile is full; n results are stored.
void dots_with_transposed_rows(float* __restrict dots, const float* __restrict x,
                               const float* __restrict rows_t, int stride, int n, int width) {
  for (int k0 = 0; k0 < n; k0 += kTile) {
    float acc[kTile] = {};
    for (int i = 0; i < width; i++) {
      const float xi = x[i];
      const float* __restrict col = rows_t + static_cast<int64_t>(i) * stride + k0;
      for (int j = 0; j < kTile; j++) acc[j] += xi * col[j];
    }
    const int count = std::min(kTile, n - k0);
    for (int j = 0; j < count; j++) dots[k0 + j] = acc[j];
  }
}

// dots_with_transposed_rows for 4 vectors x[0..3] at once (4 queries): each load of
// rows_t feeds 4 FMAs. Tiles of 16 rows keep 8 accumulators in registers.
void dots4_with_transposed_rows(float* const dots[4], const float* const x[4],
                                const float* __restrict rows_t, int stride, int n, int width) {
  const int kQuarter = kTile / 4;
  for (int k0 = 0; k0 < n; k0 += kQuarter) {
    float acc0[kQuarter] = {}, acc1[kQuarter] = {}, acc2[kQuarter] = {}, acc3[kQuarter] = {};
    for (int i = 0; i < width; i++) {
      const float x0 = x[0][i], x1 = x[1][i], x2 = x[2][i], x3 = x[3][i];
      const float* __restrict col = rows_t + static_cast<int64_t>(i) * stride + k0;
      for (int j = 0; j < kQuarter; j++) {
        acc0[j] += x0 * col[j];
        acc1[j] += x1 * col[j];
        acc2[j] += x2 * col[j];
        acc3[j] += x3 * col[j];
      }
    }
    const int count = std::min(kQuarter, n - k0);
    for (int j = 0; j < count; j++) {
      dots[0][k0 + j] = acc0[j];
      dots[1][k0 + j] = acc1[j];
      dots[2][k0 + j] = acc2[j];
      dots[3][k0 + j] = acc3[j];
    }
  }
}

// out[i] = Σ_k w[k]·rows[k·stride + i] for i < width: the w-weighted sum of n rows.
void weighted_sum_of_rows(float* __restrict out, const float* __restrict w,
                          const float* __restrict rows, int64_t stride, int n, int width) {
  int i0 = 0;
  for (; i0 + kTile <= width; i0 += kTile) {
    float acc[kTile] = {};
    for (int k = 0; k < n; k++) {
      const float wk = w[k];
      const float* __restrict row = rows + k * stride + i0;
      for (int j = 0; j < kTile; j++) acc[j] += wk * row[j];
    }
    for (int j = 0; j < kTile; j++) out[i0 + j] = acc[j];
  }
  if (i0 == width) return;
  // Columns left over when width is not a multiple of kTile.
  for (int i = i0; i < width; i++) out[i] = 0.0f;
  for (int k = 0; k < n; k++) {
    const float wk = w[k];
    const float* __restrict row = rows + k * stride;
    for (int i = i0; i < width; i++) out[i] += wk * row[i];
  }
}

// rows_t[i·stride + k] = src[k·src_stride + i] for k < n, i < width.
void transpose_rows(float* __restrict rows_t, int stride, const float* __restrict src,
                    int64_t src_stride, int n, int width) {
  for (int k = 0; k < n; k++) {
    for (int i = 0; i < width; i++)
      rows_t[static_cast<int64_t>(i) * stride + k] = src[k * src_stride + i];
  }
}
}  // namespace

size_t attention_saved_floats(int B, int T, int NH) { return static_cast<size_t>(B) * NH * T * T; }

void attention_forward(float* out, float* saved, const float* qkv, const int32_t* lengths, int B,
                       int T, int C, int NH) {
  check_attention_args(lengths, B, T, C, NH);
  const int hs = C / NH;
  const int64_t C3 = 3 * static_cast<int64_t>(C);
  const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
  const int stride = round_up(T, kTile);
#pragma omp parallel
  {
    // Per-thread scratch: this head's keys transposed, and up to 4 scaled queries.
    std::vector<float> keys_t(static_cast<size_t>(hs) * stride, 0.0f);
    std::vector<float> queries(4 * hs);
    // Dynamic schedule: pairs of long sequences cost more than pairs of short ones.
#pragma omp for schedule(dynamic, 1)
    for (int bh = 0; bh < B * NH; bh++) {
      const int b = bh / NH, h = bh % NH;
      const int len = lengths[b];
      const float* seq = qkv + static_cast<int64_t>(b) * T * C3;
      transpose_rows(keys_t.data(), stride, seq + C + h * hs, C3, len, hs);
      for (int t = 0; t < T; t++) {
        float* __restrict probs = saved + (static_cast<int64_t>(bh) * T + t) * T;
        float* __restrict o = out + (static_cast<int64_t>(b) * T + t) * C + h * hs;
        if (t >= len) {
          for (int k = 0; k < T; k++) probs[k] = 0.0f;
          for (int i = 0; i < hs; i++) o[i] = 0.0f;
          continue;
        }
        // scores s[k] = (scale·q_t)·k_k for k <= t. Rows go in groups of 4, all computed at
        // the group's first row (the extra keys k > t are overwritten with 0 below); the last
        // rows of a sequence that do not fill a group go one by one.
        const int group = t - t % 4;
        if (group + 3 < len) {
          if (t == group) {
            float* dots[4];
            const float* x[4];
            for (int r = 0; r < 4; r++) {
              const float* q = seq + (t + r) * C3 + h * hs;
              for (int i = 0; i < hs; i++) queries[r * hs + i] = scale * q[i];
              dots[r] = probs + static_cast<int64_t>(r) * T;
              x[r] = queries.data() + r * hs;
            }
            dots4_with_transposed_rows(dots, x, keys_t.data(), stride, t + 4, hs);
          }
        } else {
          const float* q = seq + t * C3 + h * hs;
          for (int i = 0; i < hs; i++) queries[i] = scale * q[i];
          dots_with_transposed_rows(probs, queries.data(), keys_t.data(), stride, t + 1, hs);
        }
        // softmax, max-subtracted
        float max_score = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : max_score)
        for (int k = 0; k <= t; k++) max_score = probs[k] > max_score ? probs[k] : max_score;
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int k = 0; k <= t; k++) {
          const float e = fast_exp(probs[k] - max_score);
          probs[k] = e;
          sum += e;
        }
        const float inv_sum = 1.0f / sum;
        for (int k = 0; k <= t; k++) probs[k] *= inv_sum;
        for (int k = t + 1; k < T; k++) probs[k] = 0.0f;
        // out_t = Σ_k P[t,k]·v_k
        weighted_sum_of_rows(o, probs, seq + 2 * C + h * hs, C3, t + 1, hs);
      }
    }
  }
}

void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* saved,
                        const int32_t* lengths, int B, int T, int C, int NH) {
  check_attention_args(lengths, B, T, C, NH);
  const int hs = C / NH;
  const int64_t C3 = 3 * static_cast<int64_t>(C);
  const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
  const int stride = round_up(T, kTile);
#pragma omp parallel
  {
    // Per-thread scratch: this head's values transposed; dS of every query row (T·T, so
    // that dk and dv become sums over query rows, kept in registers); one column of dS and
    // of P.
    std::vector<float> values_t(static_cast<size_t>(hs) * stride, 0.0f);
    std::vector<float> dscores(static_cast<size_t>(T) * T);
    std::vector<float> dscore_column(T), prob_column(T);
#pragma omp for schedule(dynamic, 1)
    for (int bh = 0; bh < B * NH; bh++) {
      const int b = bh / NH, h = bh % NH;
      const int len = lengths[b];
      const float* seq = qkv + static_cast<int64_t>(b) * T * C3;
      const float* probs = saved + static_cast<int64_t>(bh) * T * T;
      const float* grad = dout + static_cast<int64_t>(b) * T * C + h * hs;
      float* dseq = dqkv + static_cast<int64_t>(b) * T * C3;
      // Real rows get dq, dk, dv written once below; padded rows are zero.
      for (int t = len; t < T; t++) {
        for (int part = 0; part < 3; part++) {
          float* d = dseq + t * C3 + part * C + h * hs;
          for (int i = 0; i < hs; i++) d[i] = 0.0f;
        }
      }
      transpose_rows(values_t.data(), stride, seq + 2 * C + h * hs, C3, len, hs);
      // Query rows: dS and dq.
      for (int t = 0; t < len; t++) {
        const float* __restrict p = probs + static_cast<int64_t>(t) * T;
        float* __restrict ds = dscores.data() + static_cast<int64_t>(t) * T;
        // dP[k] = dout_t·v_k, in groups of 4 rows as the scores in the forward pass
        const int group = t - t % 4;
        if (group + 3 < len) {
          if (t == group) {
            float* dots[4];
            const float* x[4];
            for (int r = 0; r < 4; r++) {
              dots[r] = ds + static_cast<int64_t>(r) * T;
              x[r] = grad + static_cast<int64_t>(t + r) * C;
            }
            dots4_with_transposed_rows(dots, x, values_t.data(), stride, t + 4, hs);
          }
        } else {
          dots_with_transposed_rows(ds, grad + static_cast<int64_t>(t) * C, values_t.data(), stride,
                                    t + 1, hs);
        }
        // dS[k] = P[k]·(dP[k] - Σ_j P[j]·dP[j]), with the scale of the scores folded in
        float p_dot_dp = 0.0f;
#pragma omp simd reduction(+ : p_dot_dp)
        for (int k = 0; k <= t; k++) p_dot_dp += p[k] * ds[k];
        for (int k = 0; k <= t; k++) ds[k] = p[k] * (ds[k] - p_dot_dp) * scale;
        // dq_t = Σ_k dS[t,k]·k_k
        weighted_sum_of_rows(dseq + t * C3 + h * hs, ds, seq + C + h * hs, C3, t + 1, hs);
      }
      // Key rows: dk_k = Σ_{t>=k} dS[t,k]·q_t,  dv_k = Σ_{t>=k} P[t,k]·dout_t
      for (int k = 0; k < len; k++) {
        const int n = len - k;
        for (int t = k; t < len; t++) {
          dscore_column[t - k] = dscores[static_cast<int64_t>(t) * T + k];
          prob_column[t - k] = probs[static_cast<int64_t>(t) * T + k];
        }
        weighted_sum_of_rows(dseq + k * C3 + C + h * hs, dscore_column.data(),
                             seq + k * C3 + h * hs, C3, n, hs);
        weighted_sum_of_rows(dseq + k * C3 + 2 * C + h * hs, prob_column.data(),
                             grad + static_cast<int64_t>(k) * C, C, n, hs);
      }
    }
  }
}

}  // namespace hh::cpu
