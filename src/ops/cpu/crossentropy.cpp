// Fused softmax + cross-entropy over the first V of Vp columns (V..Vp-1 are padding).
// For each row i with target y = targets[i] >= 0, with m = max_j x_j (j < V):
//   loss_i = -log softmax(x)_y = log Σ_j exp(x_j - m) + m - x_y
//   dx_j = dloss_i·(exp(x_j - m)/Σ - [j == y])  for j < V,  dx_j = 0 for j >= V
// Rows with y < 0 have no loss: loss_i = 0, dx_i = 0.
// softmax_entropy reuses the same row statistics for H_i = −Σ_j p_j log p_j (PPO's entropy).
// Subtracting the max keeps every exp in (0, 1], so logits of any size (1e4, ...) are safe.
// The sum of exps is accumulated in double: all terms are positive (no cancellation), but
// with V ~ 50k float partial sums would lose ~log2(V/8) bits; double makes the loss exact
// to float precision for any V at little cost (the exps, computed in float, dominate).
// Max and sum come from one pass over the row (online softmax over cache-sized blocks). The
// backward pass recomputes them, then overwrites the row in a second pass, reading x_j just
// before writing dx_j, so dlogits may alias logits (no second logits-sized buffer).
#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.h"
#include "ops/cpu/cpu_ops.h"
#include "ops/cpu/fast_math.h"

namespace hh::cpu {

namespace {
void check_targets(const int32_t* targets, int N, int V, int Vp) {
  HH_CHECK(V >= 1 && V <= Vp, "crossentropy: vocabulary V=", V, " must be in [1, Vp=", Vp, "]");
  for (int i = 0; i < N; i++) {
    HH_CHECK(targets[i] < V, "crossentropy: targets[", i, "]=", targets[i],
             " is not below the vocabulary size ", V);
  }
}

struct RowStats {
  float max;
  double sum_exp;  // Σ_j exp(x_j - max) over j < V
};

// One pass over memory: the row is read in L1-sized blocks; each block's max is found,
// the running sum is rescaled when the max grows (online softmax), then the block's exps
// are summed while it is still in cache.
inline RowStats row_stats(const float* x, int V) {
  const int kBlock = 2048;  // 8 KB
  float max_logit = -std::numeric_limits<float>::infinity();
  double sum = 0.0;
  for (int j0 = 0; j0 < V; j0 += kBlock) {
    const int j1 = std::min(V, j0 + kBlock);
    float block_max = max_logit;
#pragma omp simd reduction(max : block_max)
    for (int j = j0; j < j1; j++) block_max = x[j] > block_max ? x[j] : block_max;
    if (block_max > max_logit) {
      sum *= std::exp(static_cast<double>(max_logit) - block_max);  // 0 on the first block
      max_logit = block_max;
    }
    double block_sum = 0.0;
#pragma omp simd reduction(+ : block_sum)
    for (int j = j0; j < j1; j++) block_sum += fast_exp(x[j] - max_logit);
    sum += block_sum;
  }
  return {max_logit, sum};
}
}  // namespace

void crossentropy_forward(float* losses, const float* logits, const int32_t* targets, int N, int V,
                          int Vp) {
  check_targets(targets, N, V, Vp);
#pragma omp parallel for schedule(static)
  for (int i = 0; i < N; i++) {
    if (targets[i] < 0) {
      losses[i] = 0.0f;
      continue;
    }
    const float* x = logits + static_cast<int64_t>(i) * Vp;
    const RowStats stats = row_stats(x, V);
    losses[i] = static_cast<float>(std::log(stats.sum_exp) + stats.max - x[targets[i]]);
  }
}

void crossentropy_backward(float* dlogits, const float* logits, const int32_t* targets,
                           const float* dlosses, int N, int V, int Vp) {
  check_targets(targets, N, V, Vp);
#pragma omp parallel for schedule(static)
  for (int i = 0; i < N; i++) {
    const float* x = logits + static_cast<int64_t>(i) * Vp;
    float* dx = dlogits + static_cast<int64_t>(i) * Vp;  // may be the same memory as x
    const int target = targets[i];
    if (target < 0) {
      for (int j = 0; j < Vp; j++) dx[j] = 0.0f;
      continue;
    }
    const RowStats stats = row_stats(x, V);
    const float dloss = dlosses[i];
    const float scale = static_cast<float>(dloss / stats.sum_exp);
    // Element j is read and written by iteration j only, so this is safe in place.
#pragma omp simd
    for (int j = 0; j < V; j++) dx[j] = fast_exp(x[j] - stats.max) * scale;
    dx[target] -= dloss;
    for (int j = V; j < Vp; j++) dx[j] = 0.0f;
  }
}

// H = −Σ p_j log p_j = log Σ_j e_j − Σ_j e_j·(x_j − m) / Σ_j e_j,  e_j = exp(x_j − m).
void softmax_entropy(float* entropy, const float* logits, const int32_t* targets, int N, int V,
                     int Vp) {
  check_targets(targets, N, V, Vp);
#pragma omp parallel for schedule(static)
  for (int i = 0; i < N; i++) {
    if (targets[i] < 0) {
      entropy[i] = 0.0f;
      continue;
    }
    const float* x = logits + static_cast<int64_t>(i) * Vp;
    const RowStats stats = row_stats(x, V);
    double weighted = 0.0;
#pragma omp simd reduction(+ : weighted)
    for (int j = 0; j < V; j++) {
      const float d = x[j] - stats.max;
      weighted += fast_exp(d) * d;
    }
    entropy[i] = static_cast<float>(std::log(stats.sum_exp) - weighted / stats.sum_exp);
  }
}

}  // namespace hh::cpu
