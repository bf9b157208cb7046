#include "train/ppo.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <memory>

#include "core/error.h"
#include "core/fileio.h"
#include "core/rng.h"
#include "data/dataset.h"
#include "dist/grad_sync.h"
#include "model/checkpoint.h"
#include "tokenizer/tokenizer.h"

namespace hh {

// ---------------------------------------------------------------------------------------
// Advantages

// δ_t = r_t + γ·V_{t+1} − V_t, A_t = δ_t + γλ·A_{t+1}, swept backwards from A_L = V_L = 0.
std::vector<float> gae_advantages(const std::vector<float>& rewards,
                                  const std::vector<float>& values, float gamma, float lambda,
                                  std::vector<float>* returns) {
  HH_CHECK(rewards.size() == values.size(), "gae_advantages: ", rewards.size(), " rewards but ",
           values.size(), " values");
  const size_t L = rewards.size();
  std::vector<float> adv(L);
  double next_value = 0, next_adv = 0;
  for (size_t k = L; k-- > 0;) {
    double delta = rewards[k] + gamma * next_value - values[k];
    next_adv = delta + static_cast<double>(gamma) * lambda * next_adv;
    next_value = values[k];
    adv[k] = static_cast<float>(next_adv);
  }
  if (returns) {
    returns->resize(L);
    for (size_t k = 0; k < L; ++k) (*returns)[k] = adv[k] + values[k];
  }
  return adv;
}

// (x − mean)/sqrt(var + 1e-8) over masked entries, population variance, in double.
void whiten(std::vector<float>* x, const std::vector<float>& mask, Communicator& comm) {
  HH_CHECK(x->size() == mask.size(), "whiten: ", x->size(), " values but ", mask.size(),
           " mask entries");
  std::vector<double> n_sum = {0, 0};
  for (size_t i = 0; i < x->size(); ++i)
    if (mask[i] != 0) n_sum[0] += 1, n_sum[1] += (*x)[i];
  all_sum(comm, &n_sum);
  const double n = n_sum[0];
  HH_CHECK(n > 0, "whiten: no entries to whiten");
  const double mean = n_sum[1] / n;
  double sq = 0;
  for (size_t i = 0; i < x->size(); ++i)
    if (mask[i] != 0) sq += ((*x)[i] - mean) * ((*x)[i] - mean);
  sq = all_sum(comm, sq);
  const double rstd = 1.0 / std::sqrt(sq / n + 1e-8);
  for (size_t i = 0; i < x->size(); ++i)
    (*x)[i] = mask[i] != 0 ? static_cast<float>(((*x)[i] - mean) * rstd) : 0.0f;
}

RolloutAdvantages rollout_advantages(const std::vector<std::vector<float>>& logp,
                                     const std::vector<std::vector<float>>& logp_ref,
                                     const std::vector<std::vector<float>>& values,
                                     const std::vector<float>& final_rewards, double beta,
                                     float gamma, float lambda, Communicator& comm) {
  const size_t N = final_rewards.size();
  HH_CHECK(logp.size() == N && logp_ref.size() == N && values.size() == N,
           "rollout_advantages: ", N, " rewards but ", logp.size(), " / ", logp_ref.size(), " / ",
           values.size(), " sequences of log-probabilities / reference / values");
  RolloutAdvantages ra;
  ra.advantages.resize(N);
  ra.returns.resize(N);
  ra.kl.assign(N, 0.0);
  std::vector<float> all_adv;
  double ret_sum = 0, ret_sq = 0, res_sum = 0, res_sq = 0;
  for (size_t i = 0; i < N; ++i) {
    const size_t L = logp[i].size();
    HH_CHECK(logp_ref[i].size() == L, "rollout_advantages: sequence ", i, " has ", L,
             " log-probabilities but ", logp_ref[i].size(), " reference ones");
    std::vector<float> rewards(L);
    for (size_t t = 0; t < L; ++t) {
      const double log_ratio = logp[i][t] - logp_ref[i][t];
      ra.kl[i] += log_ratio;
      rewards[t] = static_cast<float>(-beta * log_ratio);
    }
    if (L > 0) rewards[L - 1] += final_rewards[i];
    ra.advantages[i] = gae_advantages(rewards, values[i], gamma, lambda, &ra.returns[i]);
    all_adv.insert(all_adv.end(), ra.advantages[i].begin(), ra.advantages[i].end());
    for (size_t t = 0; t < L; ++t) {
      const double r = ra.returns[i][t], e = r - values[i][t];
      ret_sum += r, ret_sq += r * r, res_sum += e, res_sq += e * e;
    }
  }
  std::vector<double> sums = {static_cast<double>(all_adv.size()), ret_sum, ret_sq, res_sum,
                              res_sq};
  all_sum(comm, &sums);
  const double nt = ra.tokens = sums[0];
  if (nt > 1) {
    const double var_ret = sums[2] / nt - (sums[1] / nt) * (sums[1] / nt);
    const double var_res = sums[4] / nt - (sums[3] / nt) * (sums[3] / nt);
    ra.explained_variance = var_ret > 0 ? 1.0 - var_res / var_ret : 0.0;
  }
  if (nt > 0) {
    whiten(&all_adv, std::vector<float>(all_adv.size(), 1.0f), comm);
    size_t pos = 0;
    for (auto& adv : ra.advantages)
      for (float& a : adv) a = all_adv[pos++];
  }
  return ra;
}

// ---------------------------------------------------------------------------------------
// Losses

namespace {

double masked_count(const std::vector<float>& mask) {
  double n = 0;
  for (float m : mask) n += m != 0;
  return n;
}

template <typename... V>
void check_sizes(const char* what, size_t n, const V&... vs) {
  for (size_t s : {vs.size()...})
    HH_CHECK(s == n, what, ": inputs have different sizes (", n, " vs ", s, ")");
}

}  // namespace

// loss = −(1/N) Σ min(ρA, clip(ρ)A); the unclipped term is the min (or they are equal)
// ⇔ its gradient ρA flows: d/dlogp = −ρA/N, otherwise the clipped constant: 0.
PolicyLoss ppo_policy_loss(const std::vector<float>& logp, const std::vector<float>& logp_old,
                           const std::vector<float>& advantages, const std::vector<float>& mask,
                           float clip, double count) {
  check_sizes("ppo_policy_loss", logp.size(), logp_old, advantages, mask);
  const double n = count > 0 ? count : masked_count(mask);
  HH_CHECK(n > 0, "ppo_policy_loss: no tokens (the mask is all zero)");
  PolicyLoss out;
  out.dlogp.assign(logp.size(), 0.0f);
  double loss = 0, clipped = 0, approx_kl = 0;
  for (size_t i = 0; i < logp.size(); ++i) {
    if (mask[i] == 0) continue;
    const double log_ratio = static_cast<double>(logp[i]) - logp_old[i];
    const double ratio = std::exp(log_ratio);
    const double a = advantages[i];
    const double ratio_clipped = std::min(std::max(ratio, 1.0 - clip), 1.0 + clip);
    const double unclipped_term = ratio * a, clipped_term = ratio_clipped * a;
    loss -= std::min(unclipped_term, clipped_term);
    if (unclipped_term <= clipped_term) out.dlogp[i] = static_cast<float>(-ratio * a / n);
    clipped += std::fabs(ratio - 1.0) > clip;
    approx_kl += 0.5 * log_ratio * log_ratio;
  }
  out.loss = loss / n;
  out.clip_fraction = clipped / n;
  out.approx_kl = approx_kl / n;
  return out;
}

// loss = ½(1/N) Σ max((v−R)², (v_c−R)²), v_c = clip(v, v_old−ε, v_old+ε). The gradient
// follows the larger term: (v−R)/N, or (v_c−R)/N where v_c still moves with v (inside
// the band), 0 where v_c is clamped.
ValueLoss ppo_value_loss(const std::vector<float>& values, const std::vector<float>& values_old,
                         const std::vector<float>& returns, const std::vector<float>& mask,
                         float clip, double count) {
  check_sizes("ppo_value_loss", values.size(), values_old, returns, mask);
  const double n = count > 0 ? count : masked_count(mask);
  HH_CHECK(n > 0, "ppo_value_loss: no tokens (the mask is all zero)");
  ValueLoss out;
  out.dvalues.assign(values.size(), 0.0f);
  double loss = 0, clipped = 0;
  for (size_t i = 0; i < values.size(); ++i) {
    if (mask[i] == 0) continue;
    const double v = values[i], v_old = values_old[i], r = returns[i];
    const double lo = v_old - clip, hi = v_old + clip;
    const double v_clipped = std::min(std::max(v, lo), hi);
    const double e1 = (v - r) * (v - r), e2 = (v_clipped - r) * (v_clipped - r);
    if (e1 >= e2) {
      loss += 0.5 * e1;
      out.dvalues[i] = static_cast<float>((v - r) / n);
    } else {
      loss += 0.5 * e2;
      clipped += 1;
      const bool inside = v >= lo && v <= hi;
      out.dvalues[i] = inside ? static_cast<float>((v_clipped - r) / n) : 0.0f;
    }
  }
  out.loss = loss / n;
  out.clip_fraction = clipped / n;
  return out;
}

// ---------------------------------------------------------------------------------------
// KL controller and reward statistics

// Ziegler et al. 2019, eq. 2: proportional control of log β toward the target KL.
void KlController::update(double kl, int64_t n_steps) {
  if (target <= 0) return;
  const double error = std::min(std::max(kl / target - 1.0, -0.2), 0.2);
  beta *= 1.0 + error * static_cast<double>(n_steps) / horizon;
  beta = std::min(std::max(beta, kMinBeta), kMaxBeta);
}

// Merges the batch's (n, mean, M2) into the running ones (Chan et al. 1979).
void RunningMoments::update(const std::vector<float>& xs) {
  if (xs.empty()) return;
  double n = 0, mean = 0, m2 = 0;
  for (float x : xs) {
    n += 1;
    double d = x - mean;
    mean += d / n;
    m2 += d * (x - mean);
  }
  const double total = count + n, delta = mean - this->mean;
  this->mean += delta * n / total;
  this->m2 += m2 + delta * delta * count * n / total;
  count = total;
}

double RunningMoments::std() const { return count < 2 ? 1.0 : std::sqrt(m2 / count); }

float RunningMoments::normalize(float x) const {
  return static_cast<float>((x - mean) / std::max(std(), 1e-6));
}

// ---------------------------------------------------------------------------------------
// Batches of prompt + actions

namespace {

// Sequences prompt[i] + actions[i] for i in `indices`, right-padded; targets at row
// P+t−1 = action t. rows[k] lists the flattened rows of sequence k's actions in order.
struct ActionBatch {
  Batch batch;
  std::vector<std::vector<int32_t>> rows;
  std::vector<int32_t> flat_rows;
};

ActionBatch make_action_batch(const std::vector<std::vector<int32_t>>& prompts,
                              const std::vector<std::vector<int32_t>>& actions,
                              const std::vector<size_t>& indices, int max_seq_len,
                              const char* model_name) {
  ActionBatch ab;
  Batch& b = ab.batch;
  b.B = static_cast<int>(indices.size());
  b.T = 1;
  for (size_t i : indices) {
    const size_t len = prompts[i].size() + actions[i].size();
    HH_CHECK(!prompts[i].empty(), "sequence ", i, ": empty prompt");
    HH_CHECK(len <= static_cast<size_t>(max_seq_len), "sequence ", i, ": prompt (",
             prompts[i].size(), " tokens) + response (", actions[i].size(), " tokens) exceeds the ",
             model_name, "'s context of ", max_seq_len, " tokens");
    b.T = std::max(b.T, static_cast<int>(len));
  }
  b.tokens.assign(static_cast<size_t>(b.B) * b.T, 0);
  b.targets.assign(static_cast<size_t>(b.B) * b.T, -1);
  b.lengths.resize(b.B);
  ab.rows.resize(b.B);
  for (int r = 0; r < b.B; ++r) {
    const auto& p = prompts[indices[r]];
    const auto& a = actions[indices[r]];
    const int P = static_cast<int>(p.size());
    b.lengths[r] = static_cast<int32_t>(p.size() + a.size());
    std::copy(p.begin(), p.end(), b.tokens.begin() + static_cast<size_t>(r) * b.T);
    std::copy(a.begin(), a.end(), b.tokens.begin() + static_cast<size_t>(r) * b.T + P);
    for (size_t t = 0; t < a.size(); ++t) {
      const int32_t row = r * b.T + P + static_cast<int>(t) - 1;
      b.targets[row] = a[t];
      ab.rows[r].push_back(row);
      ab.flat_rows.push_back(row);
    }
  }
  return ab;
}

// Splits [0, n) into runs of at most `size`.
std::vector<std::vector<size_t>> chunks(size_t n, int64_t size) {
  std::vector<std::vector<size_t>> out;
  for (size_t i = 0; i < n; i += static_cast<size_t>(size)) {
    out.emplace_back();
    for (size_t j = i; j < std::min(n, i + static_cast<size_t>(size)); ++j) out.back().push_back(j);
  }
  return out;
}

// log π(action) of each action of the batch's sequences: −token_loss at its row.
std::vector<std::vector<float>> batch_logprobs(GPT& model, const ActionBatch& ab) {
  model.forward(ab.batch);
  std::vector<float> losses = model.token_losses();
  std::vector<std::vector<float>> out(ab.rows.size());
  for (size_t k = 0; k < ab.rows.size(); ++k)
    for (int32_t row : ab.rows[k]) out[k].push_back(-losses[row]);
  return out;
}

// Every rank's values in global order: rank r's `local` lands at [first, first + n) of a
// zero vector of n·world entries, and the vectors are summed over ranks.
std::vector<double> gather_global(Communicator& comm, const std::vector<double>& local,
                                  size_t first) {
  std::vector<double> all(local.size() * static_cast<size_t>(comm.world()), 0.0);
  std::copy(local.begin(), local.end(), all.begin() + static_cast<std::ptrdiff_t>(first));
  all_sum(comm, &all);
  return all;
}
std::vector<float> gather_global(Communicator& comm, const std::vector<float>& local,
                                 size_t first) {
  std::vector<double> all =
      gather_global(comm, std::vector<double>(local.begin(), local.end()), first);
  return std::vector<float>(all.begin(), all.end());
}

// Sets every gradient to NaN: a rank whose loss is not finite makes the step's summed
// gradient norm NaN on all ranks (the optimizer then skips the step everywhere).
void poison(GPT& model) {
  Backend& be = model.backend();
  be.scale(model.grads().data(), std::numeric_limits<float>::quiet_NaN(), model.grads().size());
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

std::vector<std::vector<float>> response_logprobs(
    GPT& model, const std::vector<std::vector<int32_t>>& prompts,
    const std::vector<std::vector<int32_t>>& responses, int micro_batch) {
  HH_CHECK(prompts.size() == responses.size(), "response_logprobs: ", prompts.size(),
           " prompts but ", responses.size(), " responses");
  std::vector<std::vector<float>> out(prompts.size());
  for (const auto& idx : chunks(prompts.size(), std::max(1, micro_batch))) {
    ActionBatch ab =
        make_action_batch(prompts, responses, idx, model.config().max_seq_len, "model");
    auto lp = batch_logprobs(model, ab);
    for (size_t k = 0; k < idx.size(); ++k) out[idx[k]] = std::move(lp[k]);
  }
  return out;
}

Scorer pm_scorer(GPT& pm, int32_t end_of_context_id, int micro_batch) {
  HH_CHECK(pm.has_scalar_head(), "the preference model has no scalar head");
  HH_CHECK(end_of_context_id >= 0 && end_of_context_id < pm.config().vocab_size,
           "pm_scorer: <|endofcontext|> id ", end_of_context_id, " is outside the PM's vocabulary");
  GPT* model = &pm;
  return [model, end_of_context_id, micro_batch](
             const std::vector<std::vector<int32_t>>& prompts,
             const std::vector<std::vector<int32_t>>& responses) {
    HH_CHECK(prompts.size() == responses.size(), "pm_scorer: ", prompts.size(), " prompts but ",
             responses.size(), " responses");
    const size_t ctx = static_cast<size_t>(model->config().max_seq_len);
    std::vector<float> scores(prompts.size());
    for (const auto& idx : chunks(prompts.size(), std::max(1, micro_batch))) {
      std::vector<std::vector<int32_t>> seqs;
      for (size_t i : idx) {
        std::vector<int32_t> s = prompts[i];
        s.insert(s.end(), responses[i].begin(), responses[i].end());
        truncate_left(&s, ctx - 1);  // as hh-prepare pm: keep the end, then the end token
        s.push_back(end_of_context_id);
        seqs.push_back(std::move(s));
      }
      Batch b;
      b.B = static_cast<int>(seqs.size());
      for (const auto& s : seqs) b.T = std::max(b.T, static_cast<int>(s.size()));
      b.tokens.assign(static_cast<size_t>(b.B) * b.T, 0);
      std::vector<int32_t> rows;
      for (int r = 0; r < b.B; ++r) {
        std::copy(seqs[r].begin(), seqs[r].end(), b.tokens.begin() + static_cast<size_t>(r) * b.T);
        b.lengths.push_back(static_cast<int32_t>(seqs[r].size()));
        rows.push_back(r * b.T + static_cast<int32_t>(seqs[r].size()) - 1);
      }
      std::vector<float> s = model->forward_scores(b, rows);
      for (size_t k = 0; k < idx.size(); ++k) scores[idx[k]] = s[k];
    }
    return scores;
  };
}

Json PpoIterationStats::to_json() const {
  Json j;
  j["step"] = iteration;
  j["reward"] = reward;
  j["kl"] = kl;
  j["sqrt_kl"] = sqrt_kl;
  j["beta"] = beta;
  j["entropy"] = entropy;
  j["clip_fraction"] = clip_fraction;
  j["approx_kl"] = approx_kl;
  j["policy_loss"] = policy_loss;
  j["value_loss"] = value_loss;
  j["value_clip_fraction"] = value_clip_fraction;
  j["explained_variance"] = explained_variance;
  j["response_length"] = response_length;
  j["rollout_s"] = rollout_s;
  j["scoring_s"] = scoring_s;
  j["update_s"] = update_s;
  j["sampler_logp_diff"] = sampler_logp_diff;
  j["skipped"] = skipped;
  return j;
}

// ---------------------------------------------------------------------------------------
// The trainer

namespace {

std::string fingerprint_of(const std::map<std::string, std::string>& meta) {
  auto it = meta.find("tokenizer");
  return it == meta.end() ? "" : it->second;
}

void check_tokenizer(const std::map<std::string, std::string>& meta, const std::string& fp,
                     const std::string& path, const std::string& what) {
  std::string f = fingerprint_of(meta);
  HH_CHECK(f.empty() || f == fp, what, " ", path, " was trained with another tokenizer (", f,
           ") than --tokenizer (", fp, ")");
}

}  // namespace

PpoTrainResult train_ppo(Backend& backend, const PpoTrainOptions& o) {
  HH_CHECK(o.iterations > 0, "--steps (PPO iterations) must be > 0");
  HH_CHECK(o.prompts_per_iter > 0 && o.minibatch > 0 && o.epochs > 0,
           "--batch, --minibatch and --epochs must be > 0");
  HH_CHECK(o.gamma >= 0 && o.gamma <= 1 && o.lambda >= 0 && o.lambda <= 1,
           "--gamma and --lambda must be in [0, 1]");
  HH_CHECK(o.clip > 0 && o.value_clip > 0, "--clip and --value-clip must be > 0");
  HH_CHECK(o.log_every >= 0 && o.sample_every >= 0 && o.ckpt_every >= 0,
           "--log-every, --sample-every and --ckpt-every must be >= 0");
  HH_CHECK(o.keep_ckpts >= 1, "--keep-ckpts must be >= 1");
  HH_CHECK(!o.policy_init.empty(), "--policy is required (an hh-sft checkpoint)");
  HH_CHECK(!o.pm_path.empty() || o.scorer, "--pm is required (an hh-pm checkpoint)");
  o.sampling.validate();
  HH_CHECK(o.sampling.samples_the_model(), "PPO samples from the policy itself (its ratio and KL ",
           "are of π's own probabilities): --temperature 1, --top-k 0, --top-p 1; got ",
           o.sampling.temperature, ", ", o.sampling.top_k, ", ", o.sampling.top_p);

  Tokenizer tok = Tokenizer::load(o.tokenizer_path);
  const std::string fp = std::to_string(tok.fingerprint());
  PromptDataset prompts = PromptDataset::load(o.prompts_path, &tok);
  HH_CHECK(prompts.size() > 0, o.prompts_path, ": no prompts");
  // An empty prompt leaves the sampler nothing to start from. Checked here, the error can
  // name the file and the prompt's index in it, not its place in a rollout.
  for (size_t i = 0; i < prompts.size(); ++i)
    HH_CHECK(!prompts.prompt(i).empty(), o.prompts_path, ": prompt ", i, " is empty");

  // Everything is checked before the run directory is touched: the frozen reference π₀
  // and the policy (both from --policy), the PM, the value model, the prompt lengths.
  auto policy_meta = read_checkpoint_metadata(o.policy_init);
  check_tokenizer(policy_meta, fp, o.policy_init, "the policy");
  GPT reference = load_model(o.policy_init, backend);
  check_language_model(reference, "the policy " + o.policy_init);
  HH_CHECK(reference.config().vocab_size == tok.vocab_size(), "the policy ", o.policy_init,
           " has a vocabulary of ", reference.config().vocab_size, ", the tokenizer ",
           tok.vocab_size());
  GPT policy(backend, reference.config(), /*scalar_head=*/false);
  load_weights_into(policy, o.policy_init);
  const GPTConfig& cfg = policy.config();

  std::unique_ptr<GPT> pm;
  Scorer scorer = o.scorer;
  if (!scorer) {
    auto pm_meta = read_checkpoint_metadata(o.pm_path);
    check_tokenizer(pm_meta, fp, o.pm_path, "the preference model");
    pm = std::make_unique<GPT>(load_model(o.pm_path, backend));
    check_preference_model(*pm, pm_meta, o.pm_path);
    HH_CHECK(pm->config().vocab_size == cfg.vocab_size, "the preference model ", o.pm_path,
             " has a vocabulary of ", pm->config().vocab_size, ", the policy ", cfg.vocab_size);
    HH_CHECK(tok.has_special(kEndOfContext), "the tokenizer has no ", kEndOfContext,
             " token, where the preference model reads its score");
    scorer = pm_scorer(*pm, tok.special_id(kEndOfContext), static_cast<int>(o.minibatch));
  }

  const std::string value_path = !o.value_init.empty() ? o.value_init : o.pm_path;
  std::unique_ptr<GPT> value;
  if (value_path.empty()) {
    value = std::make_unique<GPT>(backend, cfg, /*scalar_head=*/true);
    value->init_random(o.seed ^ 0x5eedull);
    load_weights_into(*value, o.policy_init, /*trunk_only=*/true);
  } else {
    check_tokenizer(read_checkpoint_metadata(value_path), fp, value_path, "the value model");
    value = std::make_unique<GPT>(load_model(value_path, backend));
    HH_CHECK(value->has_scalar_head(), "the value model ", value_path,
             " has no scalar head (expected a PM checkpoint)");
    HH_CHECK(value->config().vocab_size == cfg.vocab_size, "the value model ", value_path,
             " has a vocabulary of ", value->config().vocab_size, ", the policy ", cfg.vocab_size);
    HH_CHECK(value->config().max_seq_len >= cfg.max_seq_len, "the value model ", value_path,
             " has a context of ", value->config().max_seq_len,
             " tokens, shorter than the policy's ", cfg.max_seq_len);
  }

  const int max_new = o.sampling.max_new_tokens;
  HH_CHECK(max_new < cfg.max_seq_len, "--max-new-tokens=", max_new,
           " leaves no room for a prompt in the policy's context of ", cfg.max_seq_len);
  const size_t max_prompt = static_cast<size_t>(cfg.max_seq_len - max_new);
  // The length of prompt i as the rollout uses it (after --max-prompt-tokens).
  auto prompt_length = [&](size_t i) {
    size_t n = prompts.prompt(i).size();
    return o.max_prompt_tokens > 0 ? std::min(n, static_cast<size_t>(o.max_prompt_tokens)) : n;
  };
  for (size_t i = 0; i < prompts.size() && !o.truncate_prompts; ++i)
    HH_CHECK(prompt_length(i) <= max_prompt, o.prompts_path, ": prompt ", i, " has ",
             prompt_length(i), " tokens; with --max-new-tokens=", max_new,
             " the policy's context of ", cfg.max_seq_len, " allows ", max_prompt,
             " (use --truncate-prompts to keep the end)");

  // Data parallelism: rank r rolls out prompts [r·n, (r+1)·n) of each global batch
  // (n = batch/world), sampling them from the streams one process would use for them.
  Communicator& comm = o.parallel.get();
  const size_t rank_prompts =
      static_cast<size_t>(per_rank_batch(o.prompts_per_iter, comm, "batch"));
  const size_t first_global = static_cast<size_t>(comm.rank()) * rank_prompts;
  const bool quiet = o.quiet || !comm.is_root();
  check_same_job(comm, o.config_json, dataset_hash(prompts.raw()), o.prompts_path);

  RunDir run(o.run_dir, o.resume, comm.is_root());
  const std::string resume_dir = o.resume ? run.latest_checkpoint() : "";
  if (!resume_dir.empty()) {
    load_weights_into(policy, resume_dir + "/model.safetensors");
    load_weights_into(*value, resume_dir + "/value.safetensors");
  }

  AdamW popt(policy, o.policy_adamw), vopt(*value, o.value_adamw);
  {
    // Every model's step at one minibatch of the longest sequence the rollout can make.
    size_t longest_prompt = 0;
    for (size_t i = 0; i < prompts.size(); ++i)
      longest_prompt = std::max(longest_prompt, std::min(prompt_length(i), max_prompt));
    const int T = static_cast<int>(std::min<size_t>(cfg.max_seq_len, longest_prompt + max_new));
    const int mb = static_cast<int>(o.minibatch);
    size_t need = policy.bytes_to_train(mb, T) + value->bytes_to_train(mb, T, mb * T) +
                  reference.bytes_to_train(mb, T, 0, /*with_backward=*/false);
    if (pm) need += pm->bytes_to_train(mb, T, mb, /*with_backward=*/false);
    check_training_fits(backend, need, mb, T, "hh-ppo");
  }
  BatchSampler sampler(prompts.size(), rank_prompts, o.seed, comm.rank(), comm.world());
  Rng rng(o.seed);
  TrainState state;
  KlController kl_ctl = o.kl;
  RunningMoments moments;
  int64_t start_iter = 0;
  if (!resume_dir.empty()) {
    load_optimizer(resume_dir + "/optim.safetensors", popt, &state);
    load_optimizer(resume_dir + "/value_optim.safetensors", vopt, nullptr);
    HH_CHECK(state.data_cursor.size() == 2 && state.extra.count("iteration"), resume_dir,
             ": optimizer state lacks the PPO fields (data cursor, iteration)");
    sampler.set_cursor({state.data_cursor[0], state.data_cursor[1]});
    rng.set_state(state.rng_state);
    kl_ctl.beta = state.extra["kl_coef"];
    moments.count = state.extra["reward_count"];
    moments.mean = state.extra["reward_mean"];
    moments.m2 = state.extra["reward_m2"];
    start_iter = static_cast<int64_t>(state.extra["iteration"]);
    check_resume_step(o.run_dir, resume_dir, start_iter, o.iterations);
  }
  sync_replicas(comm, policy, popt);
  sync_replicas(comm, *value, vopt);
  GradientSync policy_sync(comm, policy), value_sync(comm, *value);
  run.write_config(o.config_json);
  MetricsLogger samples_log =
      comm.is_root() ? MetricsLogger(run.file("samples.jsonl")) : MetricsLogger();
  Generator gen(policy, tok);
  if (!quiet)
    std::fprintf(stderr, "hh-ppo: policy %s | %zu prompts | %s from iteration %lld%s\n",
                 cfg.describe().c_str(), prompts.size(),
                 resume_dir.empty() ? "starting" : "resuming", static_cast<long long>(start_iter),
                 describe_ranks(comm).c_str());

  auto metadata = [&](int64_t it) {
    return std::map<std::string, std::string>{
        {"stage", "ppo"}, {"step", std::to_string(it)}, {"tokenizer", fp}};
  };
  auto checkpoint = [&](int64_t it) {
    state.data_cursor = saved_cursor(sampler);
    state.rng_state = rng.state();
    state.extra["iteration"] = static_cast<double>(it);
    state.extra["kl_coef"] = kl_ctl.beta;
    state.extra["reward_count"] = moments.count;
    state.extra["reward_mean"] = moments.mean;
    state.extra["reward_m2"] = moments.m2;
    // The value model joins the policy's directory before `latest` names it.
    run.save_checkpoint(it, policy, popt, state, metadata(it), o.keep_ckpts,
                        [&](const std::string& dir) {
                          save_model(dir + "/value.safetensors", *value, metadata(it));
                          save_optimizer(dir + "/value_optim.safetensors", vopt, TrainState{});
                        });
  };

  PpoTrainResult result;
  if (start_iter == o.iterations && !quiet)
    std::fprintf(stderr, "hh-ppo: the run finished at iteration %lld: nothing to train\n",
                 static_cast<long long>(start_iter));
  for (int64_t it = start_iter; it < o.iterations; ++it) {
    if (stop_requested(comm)) {
      if (!quiet)
        std::fprintf(stderr, "interrupted: saving a checkpoint at iteration %lld\n",
                     static_cast<long long>(it));
      checkpoint(it);
      result.interrupted = true;
      return result;
    }
    PpoIterationStats st;
    st.iteration = it + 1;
    st.beta = kl_ctl.beta;
    Rollout ro;

    // ---- 1. rollout ----
    auto t0 = std::chrono::steady_clock::now();
    for (size_t i : sampler.next_batch()) {
      std::vector<int32_t> p = prompts.prompt(i).to_vector();
      if (o.max_prompt_tokens > 0) truncate_left(&p, static_cast<size_t>(o.max_prompt_tokens));
      if (p.size() > max_prompt) {
        HH_CHECK(o.truncate_prompts, o.prompts_path, ": prompt ", i, " has ", p.size(),
                 " tokens; with --max-new-tokens=", max_new, " the policy's context of ",
                 cfg.max_seq_len, " allows ", max_prompt,
                 " (use --truncate-prompts to keep the end)");
        truncate_left(&p, max_prompt);
      }
      ro.prompts.push_back(std::move(p));
    }
    const size_t N = ro.prompts.size();  // this rank's
    const double n_global = static_cast<double>(N) * comm.world();
    SamplingOptions so = o.sampling;
    so.seed = rng.next_u64();
    so.stream_offset = static_cast<int>(first_global);
    std::vector<GeneratedSample> gs = gen.generate(ro.prompts, so);
    for (auto& g : gs) {
      ro.actions.push_back(g.generated_ids);
      ro.sampler_logp.push_back(g.generated_logprobs);
      ro.responses.push_back(g.response_ids);
      ro.response_texts.push_back(g.response_text);
    }
    st.rollout_s = seconds_since(t0);

    // ---- 2. scoring ----
    t0 = std::chrono::steady_clock::now();
    ro.scores = scorer(ro.prompts, ro.responses);
    HH_CHECK(ro.scores.size() == N, "the scorer returned ", ro.scores.size(), " scores for ", N,
             " dialogues");
    size_t bad = N;
    for (size_t i = 0; i < N && bad == N; ++i)
      if (!std::isfinite(ro.scores[i])) bad = i;
    if (bad != N) {
      std::fprintf(stderr, "iteration %lld: reward of dialogue %zu is %g%s\n",
                   static_cast<long long>(it + 1), bad, ro.scores[bad],
                   o.nan_policy == NanPolicy::Stop ? ": stopping" : ": iteration skipped");
      HH_CHECK(o.nan_policy != NanPolicy::Stop, "non-finite reward (", ro.scores[bad],
               ") for dialogue ", bad, " at iteration ", it + 1, "; the last checkpoint is intact");
      st.skipped = true;
    }
    st.skipped = any_rank(comm, st.skipped);
    ro.rewards_final = ro.scores;
    if (!st.skipped && o.normalize_reward) {
      moments.update(gather_global(comm, ro.scores, first_global));
      for (float& r : ro.rewards_final) r = moments.normalize(r);
    }
    ro.logp_old.resize(N);
    ro.logp_ref.resize(N);
    ro.values.resize(N);
    double entropy_sum = 0, n_tokens = 0;
    for (const auto& idx : chunks(N, o.minibatch)) {
      ActionBatch ab = make_action_batch(ro.prompts, ro.actions, idx, cfg.max_seq_len, "policy");
      if (ab.flat_rows.empty()) continue;
      auto lp = batch_logprobs(policy, ab);
      const std::vector<float> entropies = policy.token_entropies();
      for (int32_t row : ab.flat_rows) entropy_sum += entropies[row];
      auto lr = batch_logprobs(reference, ab);
      std::vector<float> v = value->forward_scores(ab.batch, ab.flat_rows);
      size_t pos = 0;
      for (size_t k = 0; k < idx.size(); ++k) {
        for (size_t t = 0; t < lp[k].size(); ++t)
          st.sampler_logp_diff = std::max<double>(st.sampler_logp_diff,
                                                  std::fabs(lp[k][t] - ro.sampler_logp[idx[k]][t]));
        ro.logp_old[idx[k]] = std::move(lp[k]);
        ro.logp_ref[idx[k]] = std::move(lr[k]);
        const size_t L = ab.rows[k].size();
        ro.values[idx[k]].assign(v.begin() + pos, v.begin() + pos + L);
        pos += L;
        n_tokens += L;
      }
    }
    std::vector<double> ent = {entropy_sum, n_tokens};
    all_sum(comm, &ent);
    ro.entropy = ent[1] > 0 ? ent[0] / ent[1] : 0;
    comm.all_reduce_host(&st.sampler_logp_diff, 1, ReduceOp::Max);
    st.scoring_s = seconds_since(t0);

    // ---- 3. rewards and advantages ----
    RolloutAdvantages ra = rollout_advantages(ro.logp_old, ro.logp_ref, ro.values, ro.rewards_final,
                                              kl_ctl.beta, o.gamma, o.lambda, comm);
    ro.kl = std::move(ra.kl);
    ro.advantages = std::move(ra.advantages);
    ro.returns = std::move(ra.returns);
    for (size_t i = 0; i < N; ++i) {
      st.reward += ro.scores[i];
      st.kl += ro.kl[i];
      st.response_length += static_cast<double>(ro.responses[i].size());
    }
    // Means over every rank's sequences.
    std::vector<double> sums = {st.reward, st.kl, st.response_length};
    all_sum(comm, &sums);
    st.reward = sums[0] / n_global, st.kl = sums[1] / n_global;
    st.response_length = sums[2] / n_global;
    st.sqrt_kl = std::sqrt(std::max(st.kl, 0.0));
    st.entropy = ro.entropy;
    st.explained_variance = ra.explained_variance;
    if (ra.tokens == 0) st.skipped = true;  // every response empty: nothing to train

    // ---- 4. update ----
    // The minibatches are slices of one permutation of the GLOBAL rollout (every rank
    // draws the same one); a rank trains on its own sequences of each slice, with the
    // losses divided by the slice's token count over all ranks, so the summed gradient is
    // the one process's. A rank with no sequence in a slice still joins its all-reduce.
    t0 = std::chrono::steady_clock::now();
    const float lr_policy = lr_at(it, o.policy_adamw.lr, o.warmup, o.iterations, o.min_lr_frac);
    const float lr_value = lr_at(it, o.value_adamw.lr, o.warmup, o.iterations, o.min_lr_frac);
    const size_t n_all = N * static_cast<size_t>(comm.world());
    std::vector<double> lengths(N);
    for (size_t i = 0; i < N; ++i) lengths[i] = static_cast<double>(ro.actions[i].size());
    const std::vector<double> all_lengths = gather_global(comm, lengths, first_global);
    int64_t n_updates = 0;
    for (int64_t epoch = 0; epoch < o.epochs && !st.skipped; ++epoch) {
      std::vector<size_t> order(n_all);
      for (size_t i = 0; i < n_all; ++i) order[i] = i;
      for (size_t i = n_all; i > 1; --i) std::swap(order[i - 1], order[rng.below(i)]);
      for (size_t start = 0; start < n_all && !st.skipped;
           start += static_cast<size_t>(o.minibatch)) {
        std::vector<size_t> idx;  // this rank's sequences of the slice
        double slice_tokens = 0;
        for (size_t k = start; k < std::min(n_all, start + static_cast<size_t>(o.minibatch)); ++k) {
          slice_tokens += all_lengths[order[k]];
          if (order[k] >= first_global && order[k] < first_global + N)
            idx.push_back(order[k] - first_global);
        }
        if (slice_tokens == 0) continue;  // only empty responses: nothing to train
        ActionBatch ab;
        if (!idx.empty())
          ab = make_action_batch(ro.prompts, ro.actions, idx, cfg.max_seq_len, "policy");
        std::vector<float> logp_old, adv, v_old, ret, mask(ab.flat_rows.size(), 1.0f);
        for (size_t i : idx) {
          logp_old.insert(logp_old.end(), ro.logp_old[i].begin(), ro.logp_old[i].end());
          adv.insert(adv.end(), ro.advantages[i].begin(), ro.advantages[i].end());
          v_old.insert(v_old.end(), ro.values[i].begin(), ro.values[i].end());
          ret.insert(ret.end(), ro.returns[i].begin(), ro.returns[i].end());
        }
        const bool has_rows = !ab.flat_rows.empty();
        // Policy: d loss/d token_loss = −d loss/d logp. A non-finite loss poisons this
        // rank's gradient, so the norm after the all-reduce is NaN on every rank and all
        // of them skip together.
        policy.zero_grad();
        PolicyLoss pl;
        if (has_rows) {
          policy.forward(ab.batch);
          std::vector<float> losses = policy.token_losses();
          std::vector<float> logp(ab.flat_rows.size());
          for (size_t k = 0; k < logp.size(); ++k) logp[k] = -losses[ab.flat_rows[k]];
          pl = ppo_policy_loss(logp, logp_old, adv, mask, o.clip, slice_tokens);
          std::vector<float> dlosses(losses.size(), 0.0f);
          for (size_t k = 0; k < logp.size(); ++k) dlosses[ab.flat_rows[k]] = -pl.dlogp[k];
          if (std::isfinite(pl.loss)) {
            policy_sync.arm();
            policy.backward_token_losses(dlosses);
          } else {
            poison(policy);
          }
        }
        policy_sync.finish();
        // Value model.
        value->zero_grad();
        ValueLoss vl;
        if (has_rows) {
          std::vector<float> v = value->forward_scores(ab.batch, ab.flat_rows);
          vl = ppo_value_loss(v, v_old, ret, mask, o.value_clip, slice_tokens);
          if (std::isfinite(vl.loss)) {
            value_sync.arm();
            value->backward_scores(vl.dvalues);
          } else {
            poison(*value);
          }
        }
        value_sync.finish();
        // Both models step, or neither: a value gradient that overflows must not leave
        // the policy one step ahead of it.
        const float pnorm = popt.grad_norm(), vnorm = vopt.grad_norm();
        if (!std::isfinite(pnorm) || !std::isfinite(vnorm)) {
          std::fprintf(
              stderr,
              "iteration %lld: non-finite loss or gradient (policy %g / %g, value %g / %g)%s\n",
              static_cast<long long>(it + 1), pl.loss, pnorm, vl.loss, vnorm,
              o.nan_policy == NanPolicy::Stop ? ": stopping" : ": rest of the update skipped");
          HH_CHECK(o.nan_policy != NanPolicy::Stop, "non-finite loss or gradient at iteration ",
                   it + 1, "; the last checkpoint is intact");
          st.skipped = true;
          break;
        }
        popt.clip_and_step(lr_policy, pnorm);
        vopt.clip_and_step(lr_value, vnorm);
        // This rank's share of each slice mean (summed over ranks below).
        st.policy_loss += pl.loss;
        st.clip_fraction += pl.clip_fraction;
        st.approx_kl += pl.approx_kl;
        st.value_loss += vl.loss;
        st.value_clip_fraction += vl.clip_fraction;
        ++n_updates;
      }
    }
    policy.zero_grad();
    value->zero_grad();
    std::vector<double> losses = {st.policy_loss, st.clip_fraction, st.approx_kl, st.value_loss,
                                  st.value_clip_fraction};
    all_sum(comm, &losses);
    if (n_updates > 0) {
      const double n = static_cast<double>(n_updates);
      st.policy_loss = losses[0] / n, st.clip_fraction = losses[1] / n;
      st.approx_kl = losses[2] / n, st.value_loss = losses[3] / n;
      st.value_clip_fraction = losses[4] / n;
    }
    if (!st.skipped) kl_ctl.update(st.kl, static_cast<int64_t>(n_all));
    st.update_s = seconds_since(t0);
    result.history.push_back(st);

    const int64_t done = it + 1;
    if (o.log_every > 0 &&
        (done % o.log_every == 0 || done == o.iterations || done == start_iter + 1)) {
      run.metrics().log(st.to_json());
      if (!quiet)
        std::fprintf(stderr,
                     "iter %lld/%lld | reward %.4f | kl %.4f | beta %.4g | ent %.3f | clip %.3f | "
                     "vloss %.4f | ev %.3f | len %.1f | rollout %.2fs score %.2fs update %.2fs%s\n",
                     static_cast<long long>(done), static_cast<long long>(o.iterations), st.reward,
                     st.kl, st.beta, st.entropy, st.clip_fraction, st.value_loss,
                     st.explained_variance, st.response_length, st.rollout_s, st.scoring_s,
                     st.update_s, st.skipped ? " (skipped)" : "");
    }
    if (o.sample_every > 0 && (done % o.sample_every == 0 || done == o.iterations)) {
      for (size_t i = 0; i < std::min<size_t>(N, 4); ++i) {
        Json s;
        s["step"] = done;
        std::vector<int32_t> tail(ro.prompts[i].end() - std::min<size_t>(ro.prompts[i].size(), 64),
                                  ro.prompts[i].end());
        s["prompt_tail"] = tok.decode(tail);
        s["response"] = ro.response_texts[i];
        s["reward"] = ro.scores[i];
        s["kl"] = ro.kl[i];
        samples_log.log(s);
      }
    }
    check_sync(o.parallel, policy, done);
    check_sync(o.parallel, *value, done);
    if (o.ckpt_every > 0 && done % o.ckpt_every == 0 && done != o.iterations) checkpoint(done);
  }
  result.iterations_done = o.iterations - start_iter;
  // A finished run resumed (start_iter == o.iterations) trained nothing: its last
  // checkpoint is `latest` already and stays as it is; the final models are written again
  // (the same weights) in case the run stopped before writing them.
  if (start_iter < o.iterations) checkpoint(o.iterations);
  run.save_final(policy, metadata(o.iterations));
  if (comm.is_root()) save_model(run.file("value.safetensors"), *value, metadata(o.iterations));
  return result;
}

}  // namespace hh
