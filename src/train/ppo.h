// The RLHF stage (Bai et al. 2022, §4; Ziegler et al. 2019; Stiennon et al. 2020): PPO on
// a policy initialised from the SFT model, rewarded by the preference model (PM) and held
// near the initial policy π₀ by a KL penalty.
//
// One iteration:
//   1. rollout  sample a response to each of `prompts_per_iter` prompts with the KV-cache
//               sampler (the actions are every sampled token, including the
//               <|endoftext|> or stop-string tokens that ended the response);
//   2. scoring  PM score of prompt + response + <|endofcontext|> at the last token
//               (optionally normalised with running statistics); log π_old, log π₀ and
//               the values V by forward passes of the policy, the frozen reference and
//               the value model;
//   3. rewards  r_t = −β·(log π_old(a_t) − log π₀(a_t)) + [t = last]·score;
//               GAE (γ, λ) → advantages A_t (whitened over the rollout) and returns
//               R_t = A_t + V_t;
//   4. update   `epochs` passes over the rollout in shuffled minibatches: the clipped
//               policy loss on the policy, the clipped value loss on the value model,
//               one AdamW step each per minibatch; then the KL controller updates β.
//
// Positions: a sequence is prompt p[0..P) followed by actions a[0..L). Action a_t sits at
// position P+t and is predicted at row P+t−1, so log π(a_t) is −token_loss at row P+t−1
// (target a_t there) and the value of the state before a_t, V_t, is the scalar head at
// the same row P+t−1 (V_0 reads the last prompt token). After the last action the episode
// ends: V_L = 0.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "core/json.h"
#include "model/generate.h"
#include "model/gpt.h"
#include "train/optimizer.h"
#include "train/run.h"

namespace hh {

// ---- advantages ----

// Generalised advantage estimation over one episode of L steps (rewards, values [L]):
//   δ_t = r_t + γ·V_{t+1} − V_t   (V_L = 0)
//   A_t = δ_t + γλ·A_{t+1}        (A_L = 0)
// in double; returns A [L]. Returns R_t = A_t + V_t into *returns when given.
std::vector<float> gae_advantages(const std::vector<float>& rewards,
                                  const std::vector<float>& values, float gamma, float lambda,
                                  std::vector<float>* returns = nullptr);

// x ← (x − mean) / sqrt(var + 1e-8) over the entries with mask != 0 (population
// variance); masked-out entries are set to 0. Needs at least one entry. With several
// ranks, mean and variance are those of every rank's entries together.
void whiten(std::vector<float>* x, const std::vector<float>& mask,
            Communicator& comm = single_communicator());

// Step 3 of an iteration, for this rank's sequences i (logp, logp_ref, values [i][t] over
// the actions of sequence i; final_rewards [i]):
//   r_t = −β·(log π_old(a_t) − log π₀(a_t)) + [t = last]·final_reward
//   advantages and returns by gae_advantages; the advantages then whitened over every
//   rank's tokens (when there are any).
struct RolloutAdvantages {
  std::vector<std::vector<float>> advantages, returns;
  std::vector<double> kl;         // Σ_t (log π_old − log π₀) of each sequence
  double tokens = 0;              // actions over all ranks
  double explained_variance = 0;  // 1 − Var(R − V) / Var(R) over all ranks' tokens
};
RolloutAdvantages rollout_advantages(const std::vector<std::vector<float>>& logp,
                                     const std::vector<std::vector<float>>& logp_ref,
                                     const std::vector<std::vector<float>>& values,
                                     const std::vector<float>& final_rewards, double beta,
                                     float gamma, float lambda,
                                     Communicator& comm = single_communicator());

// ---- losses (mean over entries with mask != 0; the gradient is w.r.t. each input) ----
// `count` > 0 replaces the number of entries as the mean's divisor: a data-parallel rank
// passes the minibatch's token count over all ranks, so the losses (and gradients) of
// the ranks sum to those of the whole minibatch.

struct PolicyLoss {
  double loss = 0;  // −mean(min(ρ·A, clip(ρ, 1−ε, 1+ε)·A)), ρ = exp(logp − logp_old)
  double clip_fraction = 0;  // fraction of tokens with |ρ − 1| > ε
  double approx_kl = 0;      // mean ½(logp − logp_old)²
  std::vector<float> dlogp;  // d loss / d logp: −ρ·A/N where the unclipped term is the min, else 0
};
PolicyLoss ppo_policy_loss(const std::vector<float>& logp, const std::vector<float>& logp_old,
                           const std::vector<float>& advantages, const std::vector<float>& mask,
                           float clip, double count = 0);

struct ValueLoss {
  double loss = 0;           // ½·mean(max((v − R)², (clip(v, v_old−ε, v_old+ε) − R)²))
  double clip_fraction = 0;  // fraction of tokens where the clipped term is the larger
  std::vector<float> dvalues;  // d loss / d v
};
ValueLoss ppo_value_loss(const std::vector<float>& values, const std::vector<float>& values_old,
                         const std::vector<float>& returns, const std::vector<float>& mask,
                         float clip, double count = 0);

// ---- KL coefficient and reward statistics ----

// β fixed (target <= 0), or adapted to a target KL (Ziegler et al. 2019):
//   β ← β·(1 + clip(KL/target − 1, −0.2, 0.2)·n_steps/horizon)
struct KlController {
  // The adaptive β stays within [kMinBeta, kMaxBeta]: with a target the policy cannot
  // reach, the proportional rule grows β geometrically (×1.32 per iteration at 64
  // sequences and horizon 40: 1e10 after 100 iterations, seen on the H100 demo), and the
  // per-token rewards −β·KL then swamp the value model.
  static constexpr double kMinBeta = 1e-6, kMaxBeta = 10.0;
  double beta = 0.001;
  double target = 0;  // <= 0: fixed β
  double horizon = 10000;
  void update(double kl, int64_t n_steps);
};

// Running mean and variance of the PM scores (Chan et al. parallel merge), for optional
// reward normalisation: r ← (r − mean)/std. Its three numbers go into checkpoints.
struct RunningMoments {
  double count = 0, mean = 0, m2 = 0;
  void update(const std::vector<float>& xs);
  double std() const;              // sqrt(m2/count), 1 while count < 2
  float normalize(float x) const;  // (x − mean) / max(std, 1e-6)
};

// ---- scoring ----

// Scores finished dialogues: prompts[i] + responses[i] → one reward per dialogue. The PM
// scorer is the default; tests plug in rules.
using Scorer =
    std::function<std::vector<float>(const std::vector<std::vector<int32_t>>& prompts,
                                     const std::vector<std::vector<int32_t>>& responses)>;

// The PM scores prompt + response + <|endofcontext|> at the last token, exactly the
// sequences hh-prepare pm builds (left-truncated to the PM's context, the end kept),
// `micro_batch` dialogues per forward pass. Keeps a reference to pm.
Scorer pm_scorer(GPT& pm, int32_t end_of_context_id, int micro_batch = 16);

// Per-token log π(response[t] | prompt, response[<t]) under `model` for each sequence
// (no gradient), `micro_batch` sequences per forward pass. prompt+response must fit the
// context (throws naming the sequence).
std::vector<std::vector<float>> response_logprobs(
    GPT& model, const std::vector<std::vector<int32_t>>& prompts,
    const std::vector<std::vector<int32_t>>& responses, int micro_batch = 16);

// ---- one rollout ----

struct Rollout {
  std::vector<std::vector<int32_t>> prompts;
  std::vector<std::vector<int32_t>> actions;     // every sampled token (what PPO trains)
  std::vector<std::vector<int32_t>> responses;   // the response the PM scores
  std::vector<std::vector<float>> sampler_logp;  // the sampler's log π of each action
  std::vector<std::string> response_texts;
  std::vector<float> scores;         // raw PM scores
  std::vector<float> rewards_final;  // scores after optional normalisation
  std::vector<std::vector<float>> logp_old, logp_ref, values, advantages, returns;
  std::vector<double> kl;  // Σ_t (log π_old − log π₀) per sequence
  double entropy = 0;      // mean over action tokens of H(π_old(·|s_t))
};

// ---- the trainer ----

struct PpoTrainOptions {
  std::string policy_init;  // hh-sft checkpoint: the policy and the frozen reference π₀
  std::string pm_path;      // hh-pm checkpoint (may be "" when `scorer` is given)
  std::string value_init;   // value model init ("" = pm_path; when that is "" too: the
                            // policy's trunk with a fresh scalar head)
  std::string tokenizer_path;
  std::string prompts_path;  // hh-prepare prompts dataset
  Scorer scorer;             // replaces the PM when set (tests)

  int64_t iterations = 30, prompts_per_iter = 16, epochs = 4, minibatch = 8;
  SamplingOptions sampling;  // max_new_tokens etc.; the seed is drawn per iteration
  bool truncate_prompts =
      false;  // false: a prompt that leaves no room for the response is an error
  int64_t max_prompt_tokens = 0;  // > 0: keep only the last this-many prompt tokens (CPU demos)
  float gamma = 1.0f, lambda = 0.95f, clip = 0.2f, value_clip = 0.2f;
  KlController kl;
  bool normalize_reward = false;
  AdamWConfig policy_adamw, value_adamw;
  int64_t warmup = 0;        // iterations of linear LR warmup
  float min_lr_frac = 1.0f;  // cosine decay to this fraction of the LR (1 = constant)
  int64_t log_every = 1, sample_every = 10, ckpt_every = 0;
  int keep_ckpts = 2;
  uint64_t seed = 1234;
  bool resume = false;
  NanPolicy nan_policy = NanPolicy::Stop;
  std::string run_dir = "runs/ppo";
  bool quiet = false;
  std::string config_json;
  // Data parallelism: each rank rolls out batch/world prompts; advantage whitening, reward
  // normalisation and the KL controller see every rank's rollout; the minibatches are
  // the same global ones as on one process.
  Parallelism parallel;
};

struct PpoIterationStats {
  int64_t iteration = 0;  // 1-based, after this iteration
  double reward = 0;      // mean raw PM score
  double kl = 0;          // mean Σ_t (log π − log π₀) per sequence
  double sqrt_kl = 0;     // √max(kl, 0)
  double beta = 0;        // β used for this iteration's rewards
  double entropy = 0, clip_fraction = 0, approx_kl = 0, policy_loss = 0, value_loss = 0;
  double value_clip_fraction = 0, explained_variance = 0, response_length = 0;
  double rollout_s = 0, scoring_s = 0, update_s = 0;
  // max |log π_old − the sampler's log-prob| over the rollout's tokens: the policy's
  // forward and the KV-cache sampler must agree (float error only).
  double sampler_logp_diff = 0;
  bool skipped = false;  // non-finite reward or loss: no update
  Json to_json() const;
};

struct PpoTrainResult {
  int64_t iterations_done = 0;
  bool interrupted = false;
  std::vector<PpoIterationStats> history;  // one per iteration taken in this invocation
};

PpoTrainResult train_ppo(Backend& backend, const PpoTrainOptions& options);

}  // namespace hh
