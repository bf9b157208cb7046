#include "train/evaluate.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "core/error.h"
#include "tokenizer/tokenizer.h"

namespace hh {

double best_of_n_kl(int n) {
  HH_CHECK(n >= 1, "best-of-N: N must be >= 1, got ", n);
  return std::log(static_cast<double>(n)) - static_cast<double>(n - 1) / n;
}

Json BestOfNResult::to_json() const {
  Json j;
  j["n"] = n;
  j["prompts"] = prompts;
  j["mean_best"] = mean_best;
  j["mean_all"] = mean_all;
  j["kl"] = has_kl ? Json(kl) : Json();  // null: not a sample of the policy (see has_kl)
  j["sqrt_kl"] = has_kl ? Json(std::sqrt(kl)) : Json();
  Json points = Json::array();
  for (const CurvePoint& c : curve) {
    Json point;
    point["n"] = c.n;
    point["mean_best"] = c.mean_best;
    point["kl"] = has_kl ? Json(best_of_n_kl(c.n)) : Json();
    point["sqrt_kl"] = has_kl ? Json(std::sqrt(best_of_n_kl(c.n))) : Json();
    points.push_back(point);
  }
  j["curve"] = points;
  return j;
}

// Each micro-batch of prompts is repeated n times (prompt-major), sampled in one call;
// sample k of prompt i uses the per-sequence stream of its slot, so every sample differs.
BestOfNResult best_of_n(GPT& policy, const Tokenizer& tok, const Scorer& scorer,
                        const std::vector<std::vector<int32_t>>& prompts, int n,
                        const SamplingOptions& sampling, int micro_batch) {
  HH_CHECK(!prompts.empty(), "best-of-N: no prompts");
  BestOfNResult r;
  r.n = n;
  // log N − (N−1)/N is the KL from the policy only when the N samples are the policy's.
  r.has_kl = sampling.samples_the_model();
  r.kl = r.has_kl ? best_of_n_kl(n) : 0.0;
  r.prompts = static_cast<int64_t>(prompts.size());
  for (int k = 1; k < n; k *= 2) r.curve.push_back({k, 0.0});
  r.curve.push_back({n, 0.0});
  Generator gen(policy, tok);
  SamplingOptions so = sampling;
  const size_t step = static_cast<size_t>(std::max(1, micro_batch));
  for (size_t start = 0; start < prompts.size(); start += step) {
    const size_t end = std::min(prompts.size(), start + step);
    std::vector<std::vector<int32_t>> batch;
    for (size_t i = start; i < end; ++i)
      for (int k = 0; k < n; ++k) batch.push_back(prompts[i]);
    so.seed = sampling.seed + start;
    std::vector<GeneratedSample> gs = gen.generate(batch, so);
    std::vector<std::vector<int32_t>> responses;
    for (const auto& g : gs) responses.push_back(g.response_ids);
    std::vector<float> scores = scorer(batch, responses);
    HH_CHECK(scores.size() == batch.size(), "best-of-N: the scorer returned ", scores.size(),
             " scores for ", batch.size(), " samples");
    for (size_t i = start; i < end; ++i) {
      size_t best = (i - start) * n;
      auto point = r.curve.begin();
      for (int k = 0; k < n; ++k) {
        const size_t s = (i - start) * n + k;
        HH_CHECK(std::isfinite(scores[s]), "best-of-N: non-finite PM score for prompt ", i);
        r.mean_all += scores[s];
        if (scores[s] > scores[best]) best = s;
        if (k + 1 == point->n) (point++)->mean_best += scores[best];  // best of the first k+1
      }
      r.best_scores.push_back(scores[best]);
      r.best_texts.push_back(gs[best].response_text);
      r.mean_best += scores[best];
    }
  }
  r.mean_all /= static_cast<double>(prompts.size()) * n;
  r.mean_best /= static_cast<double>(prompts.size());
  for (BestOfNResult::CurvePoint& c : r.curve) c.mean_best /= static_cast<double>(prompts.size());
  return r;
}

Json CompareResult::to_json() const {
  Json j;
  j["prompts"] = prompts;
  j["reward_a"] = reward_a;
  j["reward_b"] = reward_b;
  if (has_kl) {
    j["kl_a"] = kl_a;
    j["kl_b"] = kl_b;
  }
  j["win_rate_a"] = win_rate;
  j["hard_win_rate_a"] = hard_win_rate;
  return j;
}

namespace {

// One line of at most `width` chars: newlines shown as "\\n", cut with "...".
std::string cell(const std::string& s, int width) {
  std::string out;
  for (char c : s) out += c == '\n' ? std::string("\\n") : std::string(1, c);
  if (static_cast<int>(out.size()) > width) out = out.substr(0, std::max(0, width - 3)) + "...";
  return out;
}

}  // namespace

std::string CompareResult::table(int rows, int width) const {
  std::string out;
  char buf[64];
  for (int i = 0; i < std::min<int>(rows, static_cast<int>(texts_a.size())); ++i) {
    std::snprintf(buf, sizeof buf, "[%d] r_a %+.3f  r_b %+.3f  P(a>b) %.2f\n", i, scores_a[i],
                  scores_b[i], 1.0 / (1.0 + std::exp(-(scores_a[i] - scores_b[i]))));
    out += buf;
    out += "  prompt: ..." + cell(prompt_tails[i], width) + "\n";
    out += "  A: " + cell(texts_a[i], width) + "\n";
    out += "  B: " + cell(texts_b[i], width) + "\n";
  }
  return out;
}

CompareResult compare_policies(GPT& a, GPT& b, GPT* reference, const Tokenizer& tok,
                               const Scorer& scorer,
                               const std::vector<std::vector<int32_t>>& prompts,
                               const SamplingOptions& sampling, int micro_batch) {
  HH_CHECK(!prompts.empty(), "compare: no prompts");
  CompareResult r;
  r.prompts = static_cast<int64_t>(prompts.size());
  double kl_a = 0, kl_b = 0;
  const size_t step = static_cast<size_t>(std::max(1, micro_batch));
  for (int side = 0; side < 2; ++side) {
    GPT& policy = side == 0 ? a : b;
    Generator gen(policy, tok);
    for (size_t start = 0; start < prompts.size(); start += step) {
      std::vector<std::vector<int32_t>> batch(
          prompts.begin() + start, prompts.begin() + std::min(prompts.size(), start + step));
      SamplingOptions so = sampling;
      so.seed = sampling.seed + start;
      std::vector<GeneratedSample> gs = gen.generate(batch, so);
      std::vector<std::vector<int32_t>> responses, actions;
      for (const auto& g : gs) {
        responses.push_back(g.response_ids);
        actions.push_back(g.generated_ids);
        (side == 0 ? r.texts_a : r.texts_b).push_back(g.response_text);
      }
      std::vector<float> scores = scorer(batch, responses);
      for (float s : scores)
        HH_CHECK(std::isfinite(s), "compare: non-finite PM score for policy ",
                 side == 0 ? "A" : "B");
      auto& dst = side == 0 ? r.scores_a : r.scores_b;
      dst.insert(dst.end(), scores.begin(), scores.end());
      // The Monte Carlo KL E_π[log π − log π_ref] needs samples of π itself.
      if (reference && sampling.samples_the_model()) {
        auto lp = response_logprobs(policy, batch, actions, micro_batch);
        auto lr = response_logprobs(*reference, batch, actions, micro_batch);
        for (size_t k = 0; k < lp.size(); ++k)
          for (size_t t = 0; t < lp[k].size(); ++t)
            (side == 0 ? kl_a : kl_b) += lp[k][t] - lr[k][t];
      }
    }
  }
  const double n = static_cast<double>(prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    r.reward_a += r.scores_a[i] / n;
    r.reward_b += r.scores_b[i] / n;
    const double d = static_cast<double>(r.scores_a[i]) - r.scores_b[i];
    r.win_rate += 1.0 / (1.0 + std::exp(-d)) / n;
    r.hard_win_rate += (d > 0 ? 1.0 : d == 0 ? 0.5 : 0.0) / n;
    const auto& p = prompts[i];
    std::vector<int32_t> tail(p.end() - std::min<size_t>(p.size(), 48), p.end());
    r.prompt_tails.push_back(tok.decode(tail));
  }
  if (reference && sampling.samples_the_model())
    r.has_kl = true, r.kl_a = kl_a / n, r.kl_b = kl_b / n;
  return r;
}

}  // namespace hh
