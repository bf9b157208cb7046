// PPO (src/train/ppo.h) and hh-eval helpers (src/train/evaluate.h): the losses and their
// gradients against PyTorch, GAE against a hand-worked example, the KL controller and
// reward statistics, the whole loop on a synthetic task, exact resume, and bad input.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/fileio.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "data/dataset.h"
#include "model/checkpoint.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"
#include "train/evaluate.h"
#include "train/ppo.h"

namespace fs = std::filesystem;

namespace {

bool fast_mode() { return std::getenv("HH_TEST_FAST") != nullptr; }

using hh::test::TempDir;

std::string fixture(const std::string& name) {
  return std::string(HH_SOURCE_DIR) + "/tests/fixtures/" + name;
}

using hh::test::byte_tokenizer;
using hh::test::letter_fraction;

// The task directory of test_util.h, with the options every test starts from.
struct Task : hh::test::PpoTask {
  using PpoTask::PpoTask;

  // A random scalar-head model of the policy's shape, and where it is saved as a PM of
  // the task's tokenizer.
  hh::GPT random_pm(uint64_t seed) const {
    hh::GPT pm(*be, hh::read_checkpoint_config(policy_path), true);
    pm.init_random(seed);
    return pm;
  }
  std::string save_pm(const hh::GPT& pm, const std::string& name) const {
    const std::string path = tmp.file(name);
    hh::save_model(path, pm, {{"stage", "pm"}, {"tokenizer", std::to_string(tok.fingerprint())}});
    return path;
  }

  // The first n prompts of the task's dataset.
  std::vector<std::vector<int32_t>> first_prompts(size_t n) const {
    hh::PromptDataset ds = hh::PromptDataset::load(prompts_path, &tok);
    std::vector<std::vector<int32_t>> prompts;
    for (size_t i = 0; i < n; ++i) prompts.push_back(ds.prompt(i).to_vector());
    return prompts;
  }

  hh::PpoTrainOptions options(const std::string& run) const {
    hh::PpoTrainOptions o;
    o.policy_init = policy_path;
    o.tokenizer_path = tok_path;
    o.prompts_path = prompts_path;
    o.scorer = letter_fraction;
    o.iterations = 4;
    o.prompts_per_iter = 16;
    o.epochs = 2;
    o.minibatch = 8;
    o.sampling.max_new_tokens = 12;
    o.policy_adamw.lr = 3e-3f;
    o.value_adamw.lr = 3e-3f;
    o.kl.beta = 0.02;
    o.run_dir = tmp.path() + "/" + run;
    o.quiet = true;
    o.sample_every = 0;
    return o;
  }
};

}  // namespace

// ---------------------------------------------------------------------------------------
// Losses against PyTorch

TEST(PpoLosses, PolicyLossAndGradientMatchPyTorch) {
  hh::SafeTensorsFile f = hh::SafeTensorsFile::load(fixture("ppo_losses.safetensors"));
  const float clip = f.read_f32("clip")[0];
  hh::PolicyLoss pl = hh::ppo_policy_loss(f.read_f32("logp"), f.read_f32("logp_old"),
                                          f.read_f32("advantages"), f.read_f32("mask"), clip);
  EXPECT_NEAR(pl.loss, f.read_f32("policy_loss")[0], 1e-5);
  EXPECT_NEAR(pl.clip_fraction, f.read_f32("clip_fraction")[0], 1e-6);
  EXPECT_NEAR(pl.approx_kl, f.read_f32("approx_kl")[0], 1e-6);
  // The fixture has clipped tokens on both sides, so some gradients are exactly zero.
  EXPECT_GT(pl.clip_fraction, 0.1);
  std::vector<float> want = f.read_f32("dlogp");
  ASSERT_EQ(pl.dlogp.size(), want.size());
  int zeros = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_NEAR(pl.dlogp[i], want[i], 1e-6 + 1e-5 * std::fabs(want[i])) << i;
    zeros += want[i] == 0.0f;
  }
  EXPECT_GT(zeros, 5);
}

TEST(PpoLosses, ValueLossAndGradientMatchPyTorch) {
  hh::SafeTensorsFile f = hh::SafeTensorsFile::load(fixture("ppo_losses.safetensors"));
  const float clip = f.read_f32("clip")[1];
  hh::ValueLoss vl = hh::ppo_value_loss(f.read_f32("values"), f.read_f32("values_old"),
                                        f.read_f32("returns"), f.read_f32("mask"), clip);
  EXPECT_NEAR(vl.loss, f.read_f32("value_loss")[0], 1e-5);
  std::vector<float> want = f.read_f32("dvalues");
  ASSERT_EQ(vl.dvalues.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i)
    EXPECT_NEAR(vl.dvalues[i], want[i], 1e-6 + 1e-5 * std::fabs(want[i])) << i;
  EXPECT_GT(vl.clip_fraction, 0.0);
}

TEST(PpoLosses, RatioOneGivesMinusMeanAdvantage) {
  // logp == logp_old: ρ = 1, loss = −mean(A) over the mask, d/dlogp = −A/N.
  std::vector<float> logp = {-1, -2, -3}, adv = {1, -2, 4}, mask = {1, 1, 0};
  hh::PolicyLoss pl = hh::ppo_policy_loss(logp, logp, adv, mask, 0.2f);
  EXPECT_NEAR(pl.loss, 0.5, 1e-9);
  EXPECT_NEAR(pl.dlogp[0], -0.5, 1e-7);
  EXPECT_NEAR(pl.dlogp[1], 1.0, 1e-7);
  EXPECT_EQ(pl.dlogp[2], 0.0f);
  EXPECT_EQ(pl.clip_fraction, 0.0);
  EXPECT_THROW(hh::ppo_policy_loss(logp, logp, adv, {0, 0, 0}, 0.2f), hh::Error);
  EXPECT_THROW(hh::ppo_policy_loss(logp, {1}, adv, mask, 0.2f), hh::Error);
}

// Step 3 of an iteration (rewards with the KL penalty, GAE, returns, whitening) against
// PyTorch, on sequences of different lengths, one of them empty; γ ≠ 1 and γ ≠ λ.
TEST(PpoAdvantages, RolloutAdvantagesMatchPyTorch) {
  hh::SafeTensorsFile f = hh::SafeTensorsFile::load(fixture("ppo_advantages.safetensors"));
  const std::vector<float> lengths = f.read_f32("lengths"), bgl = f.read_f32("beta_gamma_lambda");
  const std::vector<float> logp = f.read_f32("logp"), logp_ref = f.read_f32("logp_ref"),
                           values = f.read_f32("values");
  std::vector<std::vector<float>> lp, lr, v;
  size_t start = 0;
  for (float len : lengths) {
    const auto a = static_cast<std::ptrdiff_t>(start), b = a + static_cast<std::ptrdiff_t>(len);
    lp.emplace_back(logp.begin() + a, logp.begin() + b);
    lr.emplace_back(logp_ref.begin() + a, logp_ref.begin() + b);
    v.emplace_back(values.begin() + a, values.begin() + b);
    start += static_cast<size_t>(len);
  }
  ASSERT_EQ(start, logp.size());
  const hh::RolloutAdvantages ra =
      hh::rollout_advantages(lp, lr, v, f.read_f32("scores"), bgl[0], bgl[1], bgl[2]);
  std::vector<float> adv, ret;
  for (size_t i = 0; i < lp.size(); ++i) {
    ASSERT_EQ(ra.advantages[i].size(), lp[i].size()) << i;
    adv.insert(adv.end(), ra.advantages[i].begin(), ra.advantages[i].end());
    ret.insert(ret.end(), ra.returns[i].begin(), ra.returns[i].end());
  }
  const std::vector<float> want_adv = f.read_f32("advantages"), want_ret = f.read_f32("returns"),
                           want_kl = f.read_f32("kl");
  ASSERT_EQ(adv.size(), want_adv.size());
  for (size_t k = 0; k < adv.size(); ++k) {
    EXPECT_NEAR(adv[k], want_adv[k], 1e-5) << k;
    EXPECT_NEAR(ret[k], want_ret[k], 1e-5) << k;
  }
  ASSERT_EQ(ra.kl.size(), want_kl.size());
  for (size_t i = 0; i < want_kl.size(); ++i) EXPECT_NEAR(ra.kl[i], want_kl[i], 1e-5) << i;
  EXPECT_EQ(ra.tokens, static_cast<double>(logp.size()));
  EXPECT_NEAR(ra.explained_variance, f.read_f32("explained_variance")[0], 1e-5);

  // No actions at all: nothing to whiten, and no error.
  const std::vector<std::vector<float>> none(2);
  const hh::RolloutAdvantages empty =
      hh::rollout_advantages(none, none, none, {1.0f, 2.0f}, 0.1, 1.0f, 0.95f);
  EXPECT_EQ(empty.tokens, 0.0);
  EXPECT_EQ(empty.kl, std::vector<double>(2, 0.0));
}

// pm_scorer reads the PM's score where hh-pm trains it: at the <|endofcontext|> token after
// prompt + response, left-truncated to the context − 1 tokens, each dialogue scoring as it
// would alone (right padding and the batch's other rows change nothing).
TEST(PmScorer, ScoresEachDialogueAtItsEndOfContextToken) {
  auto be = hh::make_cpu_backend();
  hh::GPTConfig cfg = hh::test::tiny_lm_config();
  cfg.max_seq_len = 16;
  hh::GPT pm(*be, cfg, /*scalar_head=*/true);
  pm.init_random(3);
  const int32_t eoc = 39;
  const std::vector<std::vector<int32_t>> prompts = {
      {1, 2, 3}, {4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14}, {7}};
  const std::vector<std::vector<int32_t>> responses = {
      {20, 21}, {22, 23, 24, 25, 26, 27, 28}, {}};  // the second: 18 tokens, 3 cut
  const std::vector<float> scores = hh::pm_scorer(pm, eoc, 2)(prompts, responses);
  ASSERT_EQ(scores.size(), prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    std::vector<int32_t> seq = prompts[i];
    seq.insert(seq.end(), responses[i].begin(), responses[i].end());
    if (seq.size() > 15) seq.erase(seq.begin(), seq.end() - 15);
    seq.push_back(eoc);
    EXPECT_NEAR(
        scores[i],
        pm.forward_scores(hh::Batch::single(seq), {static_cast<int32_t>(seq.size()) - 1})[0], 1e-5)
        << i;
  }
  EXPECT_NE(scores[0], scores[2]);
}

// ---------------------------------------------------------------------------------------
// GAE, whitening, KL controller, reward statistics

TEST(Gae, MatchesAHandWorkedExample) {
  // rewards (0, 0, 1), values (0.5, 0.4, 0.3), γ = 1, λ = 0.5, V_3 = 0:
  //   δ2 = 1 + 0 − 0.3 = 0.7              A2 = 0.7
  //   δ1 = 0 + 0.3 − 0.4 = −0.1           A1 = −0.1 + 0.5·0.7 = 0.25
  //   δ0 = 0 + 0.4 − 0.5 = −0.1           A0 = −0.1 + 0.5·0.25 = 0.025
  //   returns = A + V = (0.525, 0.65, 1.0)
  std::vector<float> ret;
  std::vector<float> a = hh::gae_advantages({0, 0, 1}, {0.5f, 0.4f, 0.3f}, 1.0f, 0.5f, &ret);
  ASSERT_EQ(a.size(), 3u);
  EXPECT_NEAR(a[0], 0.025, 1e-6);
  EXPECT_NEAR(a[1], 0.25, 1e-6);
  EXPECT_NEAR(a[2], 0.7, 1e-6);
  EXPECT_NEAR(ret[0], 0.525, 1e-6);
  EXPECT_NEAR(ret[1], 0.65, 1e-6);
  EXPECT_NEAR(ret[2], 1.0, 1e-6);
  // γ = 0.9, λ = 1: the returns are the discounted Monte Carlo returns (0.81, 0.9, 1):
  //   A2 = 0.7, A1 = (0.27 − 0.4) + 0.9·0.7 = 0.5, A0 = (0.36 − 0.5) + 0.9·0.5 = 0.31
  a = hh::gae_advantages({0, 0, 1}, {0.5f, 0.4f, 0.3f}, 0.9f, 1.0f, &ret);
  EXPECT_NEAR(a[0], 0.31, 1e-6);
  EXPECT_NEAR(a[1], 0.5, 1e-6);
  EXPECT_NEAR(ret[0], 0.81, 1e-6);
  EXPECT_NEAR(ret[1], 0.9, 1e-6);
  EXPECT_TRUE(hh::gae_advantages({}, {}, 1.0f, 0.95f).empty());
  EXPECT_THROW(hh::gae_advantages({1, 2}, {1}, 1.0f, 0.95f), hh::Error);
}

TEST(Whiten, ZeroMeanUnitVarianceOverTheMask) {
  std::vector<float> x = {1, 2, 3, 100};
  hh::whiten(&x, {1, 1, 1, 0});
  EXPECT_NEAR(x[0], -std::sqrt(1.5), 1e-5);
  EXPECT_NEAR(x[1], 0.0, 1e-6);
  EXPECT_NEAR(x[2], std::sqrt(1.5), 1e-5);
  EXPECT_EQ(x[3], 0.0f);
}

TEST(KlController, FixedOrAdaptiveAsZiegler) {
  hh::KlController fixed;
  fixed.beta = 0.1;
  fixed.update(100.0, 1000);
  EXPECT_EQ(fixed.beta, 0.1);
  hh::KlController ad;
  ad.beta = 0.1;
  ad.target = 6;
  ad.horizon = 1000;
  ad.update(12.0, 100);  // error clipped to +0.2: β·(1 + 0.2·100/1000)
  EXPECT_NEAR(ad.beta, 0.1 * 1.02, 1e-12);
  ad.update(6.6, 100);  // error 0.1
  EXPECT_NEAR(ad.beta, 0.1 * 1.02 * 1.01, 1e-12);
  ad.update(0.0, 1000);  // error −1 → −0.2
  EXPECT_NEAR(ad.beta, 0.1 * 1.02 * 1.01 * 0.8, 1e-12);
  // An unreachable target: β grows geometrically, but no further than kMaxBeta.
  for (int i = 0; i < 200; i++) ad.update(100.0, 1000);
  EXPECT_EQ(ad.beta, hh::KlController::kMaxBeta);
  for (int i = 0; i < 400; i++) ad.update(0.0, 1000);
  EXPECT_EQ(ad.beta, hh::KlController::kMinBeta);
}

TEST(RunningMoments, MergedBatchesEqualOnePass) {
  hh::RunningMoments m;
  m.update({1, 2, 3});
  m.update({4, 5});
  EXPECT_NEAR(m.mean, 3.0, 1e-12);
  EXPECT_NEAR(m.std(), std::sqrt(2.0), 1e-12);
  EXPECT_EQ(m.count, 5);
  EXPECT_FLOAT_EQ(m.normalize(3.0f + std::sqrt(2.0f)), 1.0f);
  EXPECT_FLOAT_EQ(m.normalize(0.0f), static_cast<float>(-3.0 / std::sqrt(2.0)));
  hh::RunningMoments one;  // std 1 until two values are in
  one.update({4});
  EXPECT_FLOAT_EQ(one.normalize(5.0f), 1.0f);
}

// ---------------------------------------------------------------------------------------
// The loop

TEST(TrainPpo, RaisesASyntheticRewardWithBoundedKl) {
  Task task;
  hh::PpoTrainOptions o = task.options("run");
  o.iterations = fast_mode() ? 12 : 20;
  o.prompts_per_iter = 32;
  o.minibatch = 16;
  o.epochs = 2;
  o.kl.beta = 0.03;  // fixed: a response's reward is in [0, 1], its KL penalty β·KL
  hh::PpoTrainResult r = hh::train_ppo(*task.be, o);
  ASSERT_EQ(r.history.size(), static_cast<size_t>(o.iterations));
  double first = 0, last = 0;
  for (int i = 0; i < 3; ++i) {
    first += r.history[i].reward / 3;
    last += r.history[r.history.size() - 1 - i].reward / 3;
  }
  for (const auto& s : r.history) {
    std::printf(
        "iter %lld reward %.3f kl %.3f beta %.4f entropy %.3f clip %.3f len %.1f t %.2f %.2f "
        "%.2f\n",
        static_cast<long long>(s.iteration), s.reward, s.kl, s.beta, s.entropy, s.clip_fraction,
        s.response_length, s.rollout_s, s.scoring_s, s.update_s);
    EXPECT_FALSE(s.skipped);
    EXPECT_TRUE(std::isfinite(s.kl));
    EXPECT_LT(s.kl, 12.0);  // nats per 12-token response
    EXPECT_GT(s.entropy, 0.0);
    EXPECT_LE(s.entropy, std::log(task.tok.vocab_size()) + 1e-6);  // per token: ≤ log V
    EXPECT_GT(s.response_length, 0.0);
    EXPECT_LT(s.sampler_logp_diff, 1e-3);  // KV-cache sampler and full forward agree
  }
  EXPECT_NEAR(first, 26.0 / 258, 0.06);  // a random policy: ≈ uniform over the bytes
  EXPECT_NEAR(r.history[0].entropy, std::log(task.tok.vocab_size()), 0.1);
  EXPECT_GT(last, first + (fast_mode() ? 0.1 : 0.15)) << "first " << first << " last " << last;
  EXPECT_GT(r.history.back().kl, 0.01);  // the policy moved away from π₀
  EXPECT_TRUE(fs::exists(o.run_dir + "/model.safetensors"));
  EXPECT_TRUE(fs::exists(o.run_dir + "/value.safetensors"));
  auto meta = hh::read_checkpoint_metadata(o.run_dir + "/model.safetensors");
  EXPECT_EQ(meta["stage"], "ppo");
  EXPECT_EQ(meta["tokenizer"], std::to_string(task.tok.fingerprint()));
}

// The value model regresses on the returns. With β = 0, γ = λ = 1 and every dialogue
// scored 2, every return is exactly 2 (the whitened advantages have mean 0): a fresh value
// head that starts near 0 must end near 2 at every position of a response.
TEST(TrainPpo, TheValueModelLearnsTheReturns) {
  Task task(16);
  hh::PpoTrainOptions o = task.options("run");
  o.scorer = [](const std::vector<std::vector<int32_t>>& p,
                const std::vector<std::vector<int32_t>>&) {
    return std::vector<float>(p.size(), 2.0f);
  };
  o.kl.beta = 0;
  o.gamma = o.lambda = 1.0f;
  o.iterations = 6;
  o.epochs = 4;
  o.value_adamw.lr = 1e-2f;
  const hh::PpoTrainResult r = hh::train_ppo(*task.be, o);
  ASSERT_EQ(r.history.size(), 6u);
  hh::GPT value = hh::load_model(o.run_dir + "/value.safetensors", *task.be);
  hh::PromptDataset ds = hh::PromptDataset::load(task.prompts_path, &task.tok);
  hh::Batch b;
  b.B = 4;
  b.T = static_cast<int>(ds.prompt(0).size()) + 6;
  std::vector<int32_t> rows;
  for (int i = 0; i < b.B; ++i) {
    std::vector<int32_t> seq = ds.prompt(static_cast<size_t>(i)).to_vector();
    for (int t = 0; static_cast<int>(seq.size()) < b.T; ++t) seq.push_back('a' + (i + t) % 26);
    b.tokens.insert(b.tokens.end(), seq.begin(), seq.begin() + b.T);
    b.lengths.push_back(b.T);
    for (int t = b.T - 7; t < b.T; ++t) rows.push_back(i * b.T + t);
  }
  double mean = 0;
  for (float v : value.forward_scores(b, rows)) mean += v / rows.size();
  EXPECT_NEAR(mean, 2.0, 0.3) << "first value loss " << r.history.front().value_loss << ", last "
                              << r.history.back().value_loss;
}

TEST(TrainPpo, ResumeIsBitExact) {
  Task task;
  hh::PpoTrainOptions full = task.options("full");
  full.normalize_reward = true;
  full.kl.target = 1.0;  // adaptive β: its state must survive too
  full.kl.horizon = 100;
  full.ckpt_every = 2;
  if (fast_mode()) full.prompts_per_iter = 8, full.sampling.max_new_tokens = 6;
  hh::PpoTrainResult rf = hh::train_ppo(*task.be, full);
  ASSERT_EQ(rf.history.size(), 4u);

  hh::PpoTrainOptions split = full;
  split.run_dir = task.tmp.path() + "/split";
  hh::train_ppo(*task.be, split);
  fs::remove_all(split.run_dir + "/checkpoints/step-00000004");
  hh::write_file_atomic(split.run_dir + "/latest", "step-00000002\n");
  split.resume = true;
  hh::PpoTrainResult r2 = hh::train_ppo(*task.be, split);
  ASSERT_EQ(r2.history.size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(r2.history[i].reward, rf.history[2 + i].reward) << i;
    EXPECT_EQ(r2.history[i].kl, rf.history[2 + i].kl) << i;
    EXPECT_EQ(r2.history[i].beta, rf.history[2 + i].beta) << i;
    EXPECT_EQ(r2.history[i].value_loss, rf.history[2 + i].value_loss) << i;
  }
  EXPECT_NE(rf.history[3].beta, rf.history[0].beta);
  hh::GPT a = hh::load_model(full.run_dir + "/model.safetensors", *task.be);
  hh::GPT b = hh::load_model(split.run_dir + "/model.safetensors", *task.be);
  EXPECT_EQ(a.get_param("transformer.h.0.attn.c_attn.weight"),
            b.get_param("transformer.h.0.attn.c_attn.weight"));
  hh::GPT va = hh::load_model(full.run_dir + "/value.safetensors", *task.be);
  hh::GPT vb = hh::load_model(split.run_dir + "/value.safetensors", *task.be);
  EXPECT_EQ(va.get_param("score.weight"), vb.get_param("score.weight"));
}

// ---------------------------------------------------------------------------------------
// Bad input

TEST(TrainPpo, NonFiniteRewardStopsOrSkips) {
  Task task;
  hh::PpoTrainOptions o = task.options("nan");
  o.iterations = 2;
  o.scorer = [](const std::vector<std::vector<int32_t>>& p,
                const std::vector<std::vector<int32_t>>&) {
    std::vector<float> s(p.size(), 0.5f);
    s[3] = std::nanf("");
    return s;
  };
  try {
    hh::train_ppo(*task.be, o);
    FAIL() << "a NaN reward must stop the run";
  } catch (const hh::Error& e) {
    EXPECT_NE(std::string(e.what()).find("non-finite reward"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("dialogue 3"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(o.run_dir + "/model.safetensors"));

  o.nan_policy = hh::NanPolicy::Skip;
  o.run_dir = task.tmp.path() + "/nan_skip";
  hh::PpoTrainResult r = hh::train_ppo(*task.be, o);
  ASSERT_EQ(r.history.size(), 2u);
  EXPECT_TRUE(r.history[0].skipped && r.history[1].skipped);
  hh::GPT before = hh::load_model(task.policy_path, *task.be);
  hh::GPT after = hh::load_model(o.run_dir + "/model.safetensors", *task.be);
  EXPECT_EQ(before.get_param("transformer.wte.weight"), after.get_param("transformer.wte.weight"));
}

TEST(TrainPpo, MismatchedModelsAndLongPromptsAreClearErrors) {
  Task task;
  // A PM trained with another tokenizer.
  const std::string pm_path = task.tmp.path() + "/pm.safetensors";
  hh::save_model(pm_path, task.random_pm(9), {{"stage", "pm"}, {"tokenizer", "12345"}});
  hh::PpoTrainOptions o = task.options("bad_pm");
  o.scorer = nullptr;
  o.pm_path = pm_path;
  try {
    hh::train_ppo(*task.be, o);
    FAIL() << "expected a tokenizer mismatch";
  } catch (const hh::Error& e) {
    EXPECT_NE(std::string(e.what()).find("another tokenizer"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(o.run_dir)) << "nothing is written before the inputs are checked";
  // A value model without a scalar head.
  o = task.options("bad_value");
  o.value_init = task.policy_path;
  try {
    hh::train_ppo(*task.be, o);
    FAIL() << "expected a value-model error";
  } catch (const hh::Error& e) {
    EXPECT_NE(std::string(e.what()).find("no scalar head"), std::string::npos) << e.what();
  }
  // Prompts that leave no room for the response.
  Task long_prompts(16, 60);
  o = long_prompts.options("long");
  try {
    hh::train_ppo(*long_prompts.be, o);
    FAIL() << "expected a prompt-length error";
  } catch (const hh::Error& e) {
    EXPECT_NE(std::string(e.what()).find("--truncate-prompts"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(o.run_dir));
  o.truncate_prompts = true;
  o.iterations = 1;
  EXPECT_EQ(hh::train_ppo(*long_prompts.be, o).history.size(), 1u);
}

// ---------------------------------------------------------------------------------------
// hh-eval: best-of-N and policy comparison

TEST(BestOfN, KlFormulaAndPicksTheBest) {
  EXPECT_EQ(hh::best_of_n_kl(1), 0.0);
  EXPECT_NEAR(hh::best_of_n_kl(4), std::log(4.0) - 0.75, 1e-12);
  EXPECT_NEAR(hh::best_of_n_kl(64), std::log(64.0) - 63.0 / 64, 1e-12);
  EXPECT_THROW(hh::best_of_n_kl(0), hh::Error);

  Task task(8);
  hh::GPT policy = hh::load_model(task.policy_path, *task.be);
  const std::vector<std::vector<int32_t>> prompts = task.first_prompts(8);
  hh::SamplingOptions s;
  s.max_new_tokens = 12;
  s.seed = 11;
  hh::BestOfNResult one = hh::best_of_n(policy, task.tok, letter_fraction, prompts, 1, s, 4);
  EXPECT_EQ(one.mean_best, one.mean_all);
  EXPECT_EQ(one.kl, 0.0);
  hh::BestOfNResult four = hh::best_of_n(policy, task.tok, letter_fraction, prompts, 4, s, 4);
  ASSERT_EQ(four.best_scores.size(), 8u);
  // The best-of-k curve, from every score the judge gave (prompt-major, n per prompt):
  // k = 1, 2, 4 below n = 5, then 5.
  std::vector<float> seen;
  hh::Scorer recording = [&](const std::vector<std::vector<int32_t>>& p,
                             const std::vector<std::vector<int32_t>>& r) {
    std::vector<float> out = letter_fraction(p, r);
    seen.insert(seen.end(), out.begin(), out.end());
    return out;
  };
  hh::BestOfNResult five = hh::best_of_n(policy, task.tok, recording, prompts, 5, s, 3);
  ASSERT_EQ(seen.size(), 40u);
  ASSERT_EQ(five.curve.size(), 4u);
  for (size_t c = 0; c < five.curve.size(); ++c) {
    const int k = five.curve[c].n;
    EXPECT_EQ(k, c < 3 ? 1 << c : 5);
    double want = 0;
    for (size_t i = 0; i < 8; ++i)
      want += *std::max_element(seen.begin() + i * 5, seen.begin() + i * 5 + k) / 8.0;
    EXPECT_NEAR(five.curve[c].mean_best, want, 1e-6) << k;
    if (c > 0) {
      EXPECT_GE(five.curve[c].mean_best, five.curve[c - 1].mean_best);
    }
  }
  EXPECT_DOUBLE_EQ(five.curve.back().mean_best, five.mean_best);
  const hh::Json curve = five.to_json().at("curve");
  ASSERT_EQ(curve.size(), 4u);
  EXPECT_EQ(curve.as_array()[2].at("n").as_int(), 4);
  EXPECT_NEAR(curve.as_array()[2].at("kl").as_number(), hh::best_of_n_kl(4), 1e-12);
  EXPECT_GT(four.mean_best, four.mean_all);  // 8 prompts × 4 samples: some differ
  for (float b : four.best_scores) EXPECT_GE(b, 0.0f);
  EXPECT_TRUE(four.has_kl);
  EXPECT_NEAR(four.kl, hh::best_of_n_kl(4), 1e-12);
  // Greedy samples are not the policy's: the closed-form KL does not apply (null in JSON).
  s.temperature = 0;
  hh::BestOfNResult greedy = hh::best_of_n(policy, task.tok, letter_fraction, prompts, 4, s, 4);
  EXPECT_FALSE(greedy.has_kl);
  EXPECT_TRUE(greedy.to_json().at("kl").is_null());
  EXPECT_EQ(greedy.mean_best, greedy.mean_all);  // four identical samples per prompt
}

TEST(ComparePolicies, APolicyAgainstItselfTiesWithZeroKl) {
  Task task(8);
  hh::GPT a = hh::load_model(task.policy_path, *task.be);
  hh::GPT b = hh::load_model(task.policy_path, *task.be);
  hh::GPT ref = hh::load_model(task.policy_path, *task.be);
  const std::vector<std::vector<int32_t>> prompts = task.first_prompts(6);
  hh::SamplingOptions s;
  s.max_new_tokens = 10;
  s.seed = 5;
  // Scores that differ per response, so a tie is not trivial.
  hh::Scorer scorer = [](const std::vector<std::vector<int32_t>>& p,
                         const std::vector<std::vector<int32_t>>& r) {
    std::vector<float> out;
    for (size_t i = 0; i < p.size(); ++i) {
      double sum = 0;
      for (int32_t t : r[i]) sum += t;
      out.push_back(static_cast<float>(sum / 1000.0));
    }
    return out;
  };
  hh::CompareResult r = hh::compare_policies(a, b, &ref, task.tok, scorer, prompts, s, 4);
  EXPECT_EQ(r.prompts, 6);
  EXPECT_TRUE(r.has_kl);
  EXPECT_EQ(r.kl_a, 0.0);
  EXPECT_EQ(r.reward_a, r.reward_b);
  EXPECT_NEAR(r.win_rate, 0.5, 1e-12);
  EXPECT_NEAR(r.hard_win_rate, 0.5, 1e-12);
  EXPECT_EQ(r.texts_a, r.texts_b);
  std::string table = r.table(2, 40);
  EXPECT_NE(table.find("[1] r_a"), std::string::npos) << table;
  EXPECT_EQ(table.find("[2] r_a"), std::string::npos) << table;
  hh::Json j = hh::Json::parse(r.to_json().dump());
  EXPECT_NEAR(j["win_rate_a"].as_number(), 0.5, 1e-12);
  // top-k samples are not the policy's: no Monte Carlo KL.
  hh::SamplingOptions top_k = s;
  top_k.top_k = 3;
  EXPECT_FALSE(hh::compare_policies(a, b, &ref, task.tok, scorer, prompts, top_k, 4).has_kl);

  // A policy that only ever emits 'z' (greedy on a bumped bias) beats one that never does.
  hh::GPT zed = hh::load_model(task.policy_path, *task.be);
  std::vector<float> wte = zed.get_param("transformer.wte.weight");
  const int C = zed.config().n_embd;
  for (int c = 0; c < C; ++c) wte[static_cast<size_t>('z') * C + c] *= 200.0f;
  zed.set_param("transformer.wte.weight", wte);
  hh::CompareResult r2 =
      hh::compare_policies(zed, b, &ref, task.tok, letter_fraction, prompts, s, 4);
  EXPECT_GE(r2.reward_a, r2.reward_b);
  EXPECT_GT(r2.kl_a, 0.0);
  // The win rates from the scores: mean sigmoid(r_a − r_b), and the fraction r_a > r_b
  // (ties ½); 'z' wins.
  ASSERT_EQ(r2.scores_a.size(), prompts.size());
  double win = 0, hard = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    const double d = static_cast<double>(r2.scores_a[i]) - r2.scores_b[i];
    win += 1.0 / (1.0 + std::exp(-d)) / prompts.size();
    hard += (d > 0 ? 1.0 : d == 0 ? 0.5 : 0.0) / prompts.size();
  }
  EXPECT_NEAR(r2.win_rate, win, 1e-9);
  EXPECT_NEAR(r2.hard_win_rate, hard, 1e-12);
  EXPECT_GT(r2.win_rate, 0.5);
  EXPECT_GT(r2.hard_win_rate, 0.5);
}

// ---------------------------------------------------------------------------------------
// Resume and bad input, continued

// Resuming with --steps (iterations) below the checkpoint's is refused before anything is
// written; equal to it, nothing is trained and the checkpoints stay as they were.
TEST(TrainPpo, ResumeWithFewerIterationsThanTheCheckpointIsRefused) {
  Task task(16);
  hh::PpoTrainOptions o = task.options("run");
  o.iterations = 2;
  o.ckpt_every = 1;
  o.prompts_per_iter = 4;
  o.minibatch = 4;
  o.epochs = 1;
  o.sampling.max_new_tokens = 4;
  hh::train_ppo(*task.be, o);
  const auto before = hh::test::snapshot_files(o.run_dir);
  ASSERT_TRUE(before.count("checkpoints/step-00000001/value.safetensors"));
  auto fewer = o;
  fewer.resume = true;
  fewer.iterations = 1;
  hh::test::expect_error_with([&] { hh::train_ppo(*task.be, fewer); },
                              {o.run_dir, "step-00000002", "at step 2", "--steps=1"});
  EXPECT_EQ(hh::test::snapshot_files(o.run_dir), before);
  auto same = o;
  same.resume = true;
  hh::PpoTrainResult r = hh::train_ppo(*task.be, same);
  EXPECT_EQ(r.iterations_done, 0);
  EXPECT_TRUE(r.history.empty());
  EXPECT_EQ(hh::test::snapshot_files(o.run_dir), before);
}

// An empty prompt is named by file and index before any rollout (it was "generate: prompt 0
// is empty", the index within a rollout).
TEST(TrainPpo, EmptyPromptNamesTheFile) {
  Task task(8);
  hh::TokenDataset ds = hh::load_dataset(task.prompts_path, hh::DatasetKind::Prompts, &task.tok);
  hh::TokenDataset bad;
  bad.kind = hh::DatasetKind::Prompts;
  bad.vocab_size = ds.vocab_size;
  bad.tokenizer_fingerprint = ds.tokenizer_fingerprint;
  for (size_t i = 0; i < ds.num_sequences(); ++i)
    bad.add(i == 6 ? std::vector<int32_t>{} : ds.sequence(i).to_vector());  // prompt 3
  const std::string path = task.tmp.file("empty_prompt.bin");
  hh::save_dataset(path, bad);
  hh::PpoTrainOptions o = task.options("run");
  o.prompts_path = path;
  hh::test::expect_error_with([&] { hh::train_ppo(*task.be, o); }, {path, "prompt 3 is empty"});
  EXPECT_FALSE(fs::exists(o.run_dir));
}

// Run options out of range are errors before anything is read or written (hh-ppo reads its
// own; hh-sft and hh-pm check the same ones in loop_options_from_flags).
TEST(TrainPpo, RunOptionsOutOfRangeAreErrors) {
  Task task(8);
  hh::PpoTrainOptions o = task.options("run");
  o.keep_ckpts = 0;
  hh::test::expect_error_with([&] { hh::train_ppo(*task.be, o); }, {"--keep-ckpts"});
  o = task.options("run");
  o.ckpt_every = -1;
  hh::test::expect_error_with([&] { hh::train_ppo(*task.be, o); }, {"--ckpt-every"});
  o = task.options("run");
  o.sample_every = -2;
  hh::test::expect_error_with([&] { hh::train_ppo(*task.be, o); }, {"--sample-every"});
  EXPECT_FALSE(fs::exists(o.run_dir));
}

// PPO's ratio and KL are of the policy's own probabilities: other sampling is refused.
TEST(TrainPpo, SamplingOtherThanThePolicyIsRefused) {
  Task task(8);
  hh::PpoTrainOptions o = task.options("run");
  o.sampling.temperature = 0.7f;
  hh::test::expect_error_with([&] { hh::train_ppo(*task.be, o); },
                              {"samples from the policy itself", "--temperature 1"});
  EXPECT_FALSE(fs::exists(o.run_dir));
}

// hh-eval bon, the binary: its JSON line is the library's best_of_n with the PM as the
// judge (same prompts, seed and micro-batches), KL log N − (N−1)/N; a sampling that is not
// the policy's reports no KL; an LM given as the PM is refused by name.
TEST(HhEvalBon, IsTheLibrarysBestOfNJudgedByThePm) {
  const std::string exe = hh::test::built_binary("hh-eval");
  if (!hh::file_exists(exe)) GTEST_SKIP() << exe << " not built";
  Task task(8);
  hh::GPT pm = task.random_pm(17);
  const std::string pm_path = task.save_pm(pm, "pm.safetensors");
  const std::string bon = exe + " bon --device cpu --policy " + task.policy_path + " --tokenizer " +
                          task.tok_path + " --prompts " + task.prompts_path +
                          " --n 3 --num-prompts 5 --max-new-tokens 6 --micro-batch 2 --seed 9";
  const std::string out = task.tmp.file("out.txt"), err = task.tmp.file("err.txt");
  ASSERT_EQ(hh::test::run_shell(bon + " --pm " + pm_path + " > " + out + " 2> " + err), 0)
      << hh::read_file_text(err);
  std::string text = hh::read_file_text(out);
  const hh::Json j = hh::test::last_json_line(text);

  hh::GPT policy = hh::load_model(task.policy_path, *task.be);
  const std::vector<std::vector<int32_t>> prompts = task.first_prompts(5);
  hh::SamplingOptions s;
  s.max_new_tokens = 6;
  s.seed = 9;
  const hh::BestOfNResult want =
      hh::best_of_n(policy, task.tok, hh::pm_scorer(pm, task.tok.special_id(hh::kEndOfContext), 2),
                    prompts, 3, s, 2);
  EXPECT_EQ(j.at("n").as_int(), 3);
  EXPECT_EQ(j.at("prompts").as_int(), 5);
  EXPECT_NEAR(j.at("mean_best").as_number(), want.mean_best, 1e-6) << text;
  EXPECT_NEAR(j.at("mean_all").as_number(), want.mean_all, 1e-6) << text;
  EXPECT_GT(j.at("mean_best").as_number(), j.at("mean_all").as_number());
  EXPECT_NEAR(j.at("kl").as_number(), std::log(3.0) - 2.0 / 3.0, 1e-12);
  ASSERT_EQ(j.at("curve").size(), want.curve.size());
  for (size_t c = 0; c < want.curve.size(); ++c) {
    EXPECT_EQ(j.at("curve").as_array()[c].at("n").as_int(), want.curve[c].n);
    EXPECT_NEAR(j.at("curve").as_array()[c].at("mean_best").as_number(), want.curve[c].mean_best,
                1e-6);
  }
  EXPECT_NE(text.find("[0] best score"), std::string::npos) << text;

  // Top-k samples are not the policy's: no KL.
  ASSERT_EQ(hh::test::run_shell(bon + " --top-k 5 --pm " + pm_path + " > " + out + " 2> " + err), 0)
      << hh::read_file_text(err);
  text = hh::read_file_text(out);
  EXPECT_TRUE(hh::test::last_json_line(text).at("kl").is_null()) << text;
  EXPECT_NE(text.find("KL n/a"), std::string::npos) << text;

  // The policy given as the PM: exit status 1, naming the flag and the file.
  EXPECT_EQ(hh::test::run_shell(bon + " --pm " + task.policy_path + " > /dev/null 2> " + err), 1);
  const std::string message = hh::read_file_text(err);
  EXPECT_NE(message.find("--pm " + task.policy_path + " has no scalar head"), std::string::npos)
      << message;
}

// Ctrl-C during hh-ppo (the binary): the iteration in progress finishes, a checkpoint is
// saved, the exit status is 130, and --resume finishes the very run an uninterrupted one
// makes (policy and value model, byte for byte).
TEST(TrainPpo, CtrlCSavesACheckpointAndResumeFinishesTheSameRun) {
  const std::string exe = hh::test::built_binary("hh-ppo");
  if (!hh::file_exists(exe)) GTEST_SKIP() << exe << " not built";
  Task task(16);
  const std::string pm_path = task.save_pm(task.random_pm(23), "pm.safetensors");
  const std::string ppo = exe + " --device cpu --policy " + task.policy_path + " --pm " + pm_path +
                          " --tokenizer " + task.tok_path + " --prompts " + task.prompts_path +
                          " --steps 80 --batch 4 --minibatch 4 --epochs 1 --max-new-tokens 6"
                          " --lr 1e-3 --log-every 1 --ckpt-every 0 --sample-every 0 --run-dir ";
  const std::string a = task.tmp.file("a"), b = task.tmp.file("b"), err = task.tmp.file("err.txt");
  ASSERT_EQ(hh::test::run_shell(ppo + a + " > /dev/null 2> " + err), 0) << hh::read_file_text(err);
  ASSERT_EQ(hh::test::interrupt_once_logged(ppo + b, b + "/metrics.jsonl", 1, err), 130)
      << hh::read_file_text(err);
  const std::string message = hh::read_file_text(err);
  EXPECT_NE(message.find("interrupted: saving a checkpoint at iteration"), std::string::npos)
      << message;
  EXPECT_TRUE(fs::exists(b + "/latest"));
  EXPECT_FALSE(fs::exists(b + "/model.safetensors"));
  ASSERT_EQ(hh::test::run_shell(ppo + b + " --resume > /dev/null 2> " + err), 0)
      << hh::read_file_text(err);
  for (const char* file : {"/model.safetensors", "/value.safetensors"})
    EXPECT_EQ(hh::read_file_bytes(b + file), hh::read_file_bytes(a + file)) << file;
}

// A non-finite loss or gradient in the update, here from a value model whose head is so
// large that (V − R)² overflows: --on-nan=stop ends the run naming the iteration, with no
// model written; --on-nan=skip logs every iteration as skipped and the value model leaves
// as it came.
TEST(TrainPpo, NonFiniteUpdateStopsOrSkips) {
  Task task(16);
  hh::GPT value = task.random_pm(4);
  std::vector<float> head = value.get_param("score.weight");
  for (float& w : head) w *= 1e30f;
  value.set_param("score.weight", head);
  const std::string value_path = task.save_pm(value, "value_init.safetensors");
  hh::PpoTrainOptions o = task.options("nan_stop");
  o.value_init = value_path;
  o.iterations = 2;
  hh::test::expect_error_with(
      [&] { hh::train_ppo(*task.be, o); },
      {"non-finite loss or gradient at iteration 1", "the last checkpoint is intact"});
  EXPECT_FALSE(fs::exists(o.run_dir + "/model.safetensors"));

  o.nan_policy = hh::NanPolicy::Skip;
  o.run_dir = task.tmp.file("nan_skip");
  hh::PpoTrainResult r = hh::train_ppo(*task.be, o);
  ASSERT_EQ(r.history.size(), 2u);
  EXPECT_TRUE(r.history[0].skipped && r.history[1].skipped);
  hh::GPT after = hh::load_model(o.run_dir + "/value.safetensors", *task.be);
  EXPECT_EQ(after.get_param("score.weight"), head);
  EXPECT_EQ(after.get_param("transformer.h.0.mlp.c_fc.weight"),
            value.get_param("transformer.h.0.mlp.c_fc.weight"));
  hh::GPT before = hh::load_model(task.policy_path, *task.be);
  hh::GPT policy = hh::load_model(o.run_dir + "/model.safetensors", *task.be);
  EXPECT_EQ(policy.get_param("transformer.wte.weight"), before.get_param("transformer.wte.weight"));
}
