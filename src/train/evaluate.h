// Evaluating policies with the preference model (hh-eval):
//
// Best-of-N (rejection sampling; Bai et al. 2022 §4.3 use it as RLHF's baseline): N
// samples per prompt from a policy, the PM keeps the highest-scoring one. Its KL from the
// policy is known in closed form, KL_bon = log N − (N−1)/N, which places best-of-N on the
// same reward-vs-√KL axes as a PPO run.
//
// Compare: one sample per held-out prompt from each of two policies (the same sampling
// seed), scored by the PM: mean reward of each, the Monte Carlo KL of each to a reference
// policy (mean over samples of Σ_t log π(y_t) − log π_ref(y_t), the sampled tokens
// including the one that ended the response), and the win rate of A over B judged by the
// PM, P(A ≻ B) = sigmoid(r_a − r_b) averaged over prompts (and the hard fraction r_a > r_b,
// ties counting ½).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/json.h"
#include "model/generate.h"
#include "model/gpt.h"
#include "train/ppo.h"

namespace hh {

class Tokenizer;

// KL(best-of-N ‖ policy) = log N − (N−1)/N (Stiennon et al. 2020, appendix G.3).
double best_of_n_kl(int n);

struct BestOfNResult {
  int n = 0;
  int64_t prompts = 0;
  double mean_best = 0;                 // mean over prompts of the chosen sample's PM score
  double mean_all = 0;                  // mean over all samples (= best-of-1)
  bool has_kl = false;                  // sampling from the policy itself (samples_the_model)
  double kl = 0;                        // best_of_n_kl(n), when has_kl
  std::vector<std::string> best_texts;  // per prompt
  std::vector<float> best_scores;
  // Best-of-k for k = 1, 2, 4, ... below n, and n: the mean over prompts of the best of
  // each prompt's first k samples (independent draws, so an estimate of best-of-k). The
  // paper's best-of-N curve (PM score against √KL) from one run; the last point is
  // mean_best.
  struct CurvePoint {
    int n = 0;
    double mean_best = 0;
  };
  std::vector<CurvePoint> curve;
  Json to_json() const;  // with "curve": [{"n", "mean_best", "kl", "sqrt_kl"}, ...]
};

// `micro_batch` prompts (each repeated n times) per generate() call.
BestOfNResult best_of_n(GPT& policy, const Tokenizer& tok, const Scorer& scorer,
                        const std::vector<std::vector<int32_t>>& prompts, int n,
                        const SamplingOptions& sampling, int micro_batch = 8);

struct CompareResult {
  int64_t prompts = 0;
  double reward_a = 0, reward_b = 0;
  bool has_kl = false;  // a reference was given, and the sampling samples the policies
  double kl_a = 0, kl_b = 0;
  double win_rate = 0;       // mean sigmoid(r_a − r_b)
  double hard_win_rate = 0;  // fraction r_a > r_b (ties ½)
  std::vector<std::string> prompt_tails, texts_a, texts_b;
  std::vector<float> scores_a, scores_b;
  Json to_json() const;
  // The side-by-side table of the first `rows` prompts, each cell cut to `width` chars.
  std::string table(int rows, int width) const;
};

// reference may be nullptr (no KL).
CompareResult compare_policies(GPT& a, GPT& b, GPT* reference, const Tokenizer& tok,
                               const Scorer& scorer,
                               const std::vector<std::vector<int32_t>>& prompts,
                               const SamplingOptions& sampling, int micro_batch = 8);

}  // namespace hh
