// The preference-model stage: the pairwise loss and its gradient against PyTorch, the
// calibration table, batch layout, scores independent of padding and batch neighbours,
// learning a synthetic preference, exact resume, and initialisation from an LM.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>

#include "core/error.h"
#include "core/fileio.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "data/dataset.h"
#include "model/checkpoint.h"
#include "ops/ops.h"
#include "test_util.h"
#include "train/pm.h"

namespace fs = std::filesystem;

namespace {

constexpr int kVocab = 50;
constexpr int32_t kEndOfContext = 1;  // the score position
constexpr int32_t kMarker = 5;        // present in every chosen response, never in rejected
constexpr uint64_t kFingerprint = 77;

bool fast_mode() { return std::getenv("HH_TEST_FAST") != nullptr; }

using hh::test::TempDir;

// Pairs sharing a random prompt; the chosen response holds kMarker at a random position,
// the rejected one is random tokens from [10, 50). The responses' lengths are drawn
// independently, so length carries no signal. Both end in kEndOfContext.
hh::TokenDataset synthetic_pairs(int n, uint64_t seed) {
  hh::TokenDataset ds;
  ds.kind = hh::DatasetKind::Pm;
  ds.vocab_size = kVocab;
  ds.tokenizer_fingerprint = kFingerprint;
  hh::Rng rng(seed);
  auto token = [&] { return static_cast<int32_t>(10 + rng.below(kVocab - 10)); };
  for (int i = 0; i < n; ++i) {
    std::vector<int32_t> prompt(4 + rng.below(12));
    for (auto& t : prompt) t = token();
    std::vector<int32_t> chosen = prompt, rejected = prompt;
    int chosen_len = 3 + static_cast<int>(rng.below(8));
    int rejected_len = 3 + static_cast<int>(rng.below(8));
    int marker_at = static_cast<int>(rng.below(chosen_len));
    for (int t = 0; t < chosen_len; ++t) chosen.push_back(t == marker_at ? kMarker : token());
    for (int t = 0; t < rejected_len; ++t) rejected.push_back(token());
    chosen.push_back(kEndOfContext);
    rejected.push_back(kEndOfContext);
    ds.add(chosen);
    ds.add(rejected);
  }
  return ds;
}

std::string save_pairs(const std::string& dir, const std::string& name, int n, uint64_t seed) {
  std::string path = dir + "/" + name + ".pm.bin";
  hh::save_dataset(path, synthetic_pairs(n, seed));
  return path;
}

hh::GPTConfig tiny_config() {
  hh::GPTConfig c = hh::GPTConfig::preset("tiny", kVocab);
  c.max_seq_len = 64;
  return c;
}

hh::PmTrainOptions tiny_options(const std::string& train, const std::string& dev,
                                const std::string& run_dir) {
  hh::PmTrainOptions o;
  o.train_path = train;
  o.dev_path = dev;
  o.model = tiny_config();
  o.steps = 8;
  o.batch = 8;
  o.micro_batch = 8;
  o.seq = 64;
  o.adamw.lr = 3e-3f;
  o.warmup = 2;
  o.log_every = 1;
  o.eval_every = 0;
  o.ckpt_every = 0;
  o.run_dir = run_dir;
  o.quiet = true;
  return o;
}

std::string fixture(const std::string& name) {
  return std::string(HH_SOURCE_DIR) + "/tests/fixtures/" + name;
}

std::vector<double> to_double(const std::vector<float>& v) { return {v.begin(), v.end()}; }

}  // namespace

// ---------------------------------------------------------------------------------------
// The loss

TEST(PairwiseLoss, ForwardAndGradientMatchPyTorch) {
  std::string path = fixture("pm_loss.safetensors");
  if (!fs::exists(path))
    GTEST_FAIL() << "missing " << path
                 << "; run: /usr/bin/python3 scripts/reference/pm_reference.py";
  hh::SafeTensorsFile f = hh::SafeTensorsFile::load(path);
  std::vector<float> cho = f.read_f32("r_chosen"), rej = f.read_f32("r_rejected");
  const double want_loss = f.read_f32("loss")[0];
  EXPECT_NEAR(hh::pairwise_loss_forward(cho, rej), want_loss, 1e-6 * want_loss);

  std::vector<float> d_cho, d_rej;
  hh::pairwise_loss_backward(cho, rej, 1.0f, &d_cho, &d_rej);
  std::vector<float> want_cho = f.read_f32("d_chosen"), want_rej = f.read_f32("d_rejected");
  ASSERT_EQ(d_cho.size(), want_cho.size());
  for (size_t i = 0; i < d_cho.size(); ++i) {
    EXPECT_NEAR(d_cho[i], want_cho[i], 1e-7 + 1e-6 * std::fabs(want_cho[i])) << i;
    EXPECT_NEAR(d_rej[i], want_rej[i], 1e-7 + 1e-6 * std::fabs(want_rej[i])) << i;
  }
  // The large margins of the fixture: no overflow, and the gradient survives.
  EXPECT_GT(std::fabs(d_cho[1]), 0.9f / cho.size());
  EXPECT_TRUE(std::isfinite(d_cho[0]) && std::isfinite(d_rej[1]));

  const float scale = f.read_f32("scale")[0];
  hh::pairwise_loss_backward(cho, rej, scale, &d_cho, &d_rej);
  want_cho = f.read_f32("scaled_d_chosen");
  want_rej = f.read_f32("scaled_d_rejected");
  for (size_t i = 0; i < d_cho.size(); ++i) {
    EXPECT_NEAR(d_cho[i], want_cho[i], 1e-7 + 1e-6 * std::fabs(want_cho[i])) << i;
    EXPECT_NEAR(d_rej[i], want_rej[i], 1e-7 + 1e-6 * std::fabs(want_rej[i])) << i;
  }
}

TEST(PairwiseLoss, RejectsEmptyOrMismatchedScores) {
  std::vector<float> d1, d2;
  EXPECT_THROW(hh::pairwise_loss_forward({}, {}), hh::Error);
  EXPECT_THROW(hh::pairwise_loss_forward({1.f, 2.f}, {1.f}), hh::Error);
  EXPECT_THROW(hh::pairwise_loss_backward({1.f}, {1.f, 2.f}, 1.f, &d1, &d2), hh::Error);
}

TEST(Calibration, MatchesPyTorchTable) {
  std::string path = fixture("pm_loss.safetensors");
  if (!fs::exists(path)) GTEST_FAIL() << "missing " << path;
  hh::SafeTensorsFile f = hh::SafeTensorsFile::load(path);
  hh::Calibration c = hh::calibration_table(to_double(f.read_f32("calib_margins")));
  std::vector<float> count = f.read_f32("calib_count"), pred = f.read_f32("calib_mean_predicted"),
                     observed = f.read_f32("calib_observed");
  int64_t total = 0;
  for (int k = 0; k < 10; ++k) {
    EXPECT_EQ(c.bins[k].count, static_cast<int64_t>(count[k])) << "bin " << k;
    EXPECT_NEAR(c.bins[k].mean_predicted, pred[k], 1e-6) << "bin " << k;
    EXPECT_NEAR(c.bins[k].observed, observed[k], 1e-6) << "bin " << k;
    EXPECT_NEAR(c.bins[k].lo, k / 10.0, 1e-12);
    total += c.bins[k].count;
  }
  EXPECT_EQ(total, 400);  // every pair counted twice
  EXPECT_NEAR(c.ece, f.read_f32("calib_ece")[0], 1e-6);
}

TEST(Calibration, ConfidentAndRightIsCalibratedInTheTopBin) {
  // Margin 10: p ≈ 0.99995, always right → bin 9 observes 1, bin 0 observes 0.
  hh::Calibration c = hh::calibration_table(std::vector<double>(5, 10.0));
  EXPECT_EQ(c.bins[9].count, 5);
  EXPECT_EQ(c.bins[0].count, 5);
  EXPECT_DOUBLE_EQ(c.bins[9].observed, 1.0);
  EXPECT_DOUBLE_EQ(c.bins[0].observed, 0.0);
  EXPECT_LT(c.ece, 1e-4);
  // Confidently wrong: the PM says 0.9995 for the side that lost.
  hh::Calibration wrong = hh::calibration_table(std::vector<double>(5, -7.6));
  EXPECT_DOUBLE_EQ(wrong.bins[9].observed, 0.0);
  EXPECT_GT(wrong.ece, 0.99);
}

// ---------------------------------------------------------------------------------------
// Batches and scores

TEST(PmBatch, ChosenFirstThenRejectedWithTheEndKept) {
  hh::PmDataset data(synthetic_pairs(5, 1));
  const int64_t seq = 9;  // shorter than most sequences: exercises left truncation
  std::vector<size_t> idx = {3, 0, 4};
  hh::PmBatch pb = hh::make_pm_batch(data, idx, seq);
  ASSERT_EQ(pb.batch.B, 6);
  ASSERT_EQ(pb.score_rows.size(), 6u);
  for (int r = 0; r < pb.batch.B; ++r) {
    size_t pair = idx[r % 3];
    hh::TokenSpan ids = r < 3 ? data.chosen(pair) : data.rejected(pair);
    const size_t len = std::min<size_t>(ids.size(), seq);
    EXPECT_EQ(pb.batch.lengths[r], static_cast<int32_t>(len)) << r;
    EXPECT_EQ(pb.score_rows[r], r * pb.batch.T + static_cast<int32_t>(len) - 1) << r;
    for (size_t t = 0; t < len; ++t)
      EXPECT_EQ(pb.batch.tokens[r * pb.batch.T + t], ids[ids.size() - len + t]) << r << "," << t;
    EXPECT_EQ(pb.batch.tokens[pb.score_rows[r]], kEndOfContext) << r;
  }
  EXPECT_THROW(hh::make_pm_batch(data, {}, seq), hh::Error);
  EXPECT_THROW(hh::make_pm_batch(data, {5}, seq), hh::Error);
}

TEST(PmScores, IndependentOfPaddingAndBatchNeighbours) {
  auto be = hh::make_cpu_backend();
  hh::GPT model(*be, tiny_config(), /*scalar_head=*/true);
  model.init_random(11);
  hh::PmDataset data(synthetic_pairs(12, 2));
  // Pair 0 alone, then batched between pairs chosen to be longer (more padding for it).
  std::vector<float> cho_alone, rej_alone, cho, rej;
  hh::score_pairs(model, data, {0}, 64, &cho_alone, &rej_alone);
  std::vector<size_t> longest;
  for (size_t i = 1; i < data.size(); ++i)
    if (data.chosen(i).size() > data.chosen(0).size() + 2 ||
        data.rejected(i).size() > data.rejected(0).size() + 2)
      longest.push_back(i);
  ASSERT_GE(longest.size(), 2u) << "the synthetic data should have longer pairs";
  std::vector<size_t> idx = {longest[0], 0, longest[1]};
  hh::score_pairs(model, data, idx, 64, &cho, &rej);
  EXPECT_NEAR(cho[1], cho_alone[0], 1e-5f);
  EXPECT_NEAR(rej[1], rej_alone[0], 1e-5f);
  // And the scores are not all the same number (the test could not fail otherwise).
  EXPECT_GT(std::fabs(cho[0] - cho[1]) + std::fabs(rej[0] - rej[1]), 1e-4f);
}

// The trainer's gradient (pairwise loss through backward_scores) against central finite
// differences of the loss on a few parameters.
TEST(PmScores, LossGradientMatchesFiniteDifferences) {
  auto be = hh::make_cpu_backend();
  hh::GPT model(*be, tiny_config(), /*scalar_head=*/true);
  model.init_random(12);
  // Bigger head so the scores (and the loss's curvature) are not tiny.
  std::vector<float> head = model.get_param("score.weight");
  for (float& w : head) w *= 25.0f;
  model.set_param("score.weight", head);
  hh::PmDataset data(synthetic_pairs(4, 3));
  std::vector<size_t> idx = {0, 1, 2, 3};
  auto loss_at = [&] {
    std::vector<float> c, r;
    hh::score_pairs(model, data, idx, 64, &c, &r);
    return hh::pairwise_loss_forward(c, r);
  };
  std::vector<float> cho, rej, d_cho, d_rej;
  model.zero_grad();
  hh::score_pairs(model, data, idx, 64, &cho, &rej);
  hh::pairwise_loss_backward(cho, rej, 1.0f, &d_cho, &d_rej);
  std::vector<float> dscores = d_cho;
  dscores.insert(dscores.end(), d_rej.begin(), d_rej.end());
  model.backward_scores(dscores);

  for (const char* name :
       {"score.weight", "transformer.h.1.mlp.c_fc.weight", "transformer.wte.weight"}) {
    std::vector<float> grad = model.get_grad(name);
    std::vector<float> w = model.get_param(name);
    // The largest-gradient entries: finite differences of small ones are all noise.
    std::vector<size_t> order(grad.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::partial_sort(order.begin(), order.begin() + 3, order.end(),
                      [&](size_t a, size_t b) { return std::fabs(grad[a]) > std::fabs(grad[b]); });
    for (int k = 0; k < 3; ++k) {
      size_t i = order[k];
      const float eps = 1e-2f;
      const float w0 = w[i];
      w[i] = w0 + eps;
      model.set_param(name, w);
      double up = loss_at();
      w[i] = w0 - eps;
      model.set_param(name, w);
      double down = loss_at();
      w[i] = w0;
      model.set_param(name, w);
      double fd = (up - down) / (2 * eps);
      EXPECT_NEAR(grad[i], fd, 0.03 * std::fabs(fd) + 1e-4) << name << "[" << i << "]";
    }
  }
}

// ---------------------------------------------------------------------------------------
// Training

TEST(TrainPm, LearnsASyntheticPreference) {
  TempDir tmp;
  auto be = hh::make_cpu_backend();
  std::string train = save_pairs(tmp.path(), "train", 512, 21);
  std::string dev = save_pairs(tmp.path(), "dev", 200, 22);
  auto o = tiny_options(train, dev, tmp.path() + "/run");
  o.steps = fast_mode() ? 20 : 30;  // ≈ 100% dev accuracy from step 10 on
  o.batch = 32;
  o.micro_batch = 32;
  o.warmup = 5;
  hh::PmTrainResult r = hh::train_pm(*be, o);
  ASSERT_EQ(r.train_losses.size(), static_cast<size_t>(o.steps));
  ASSERT_TRUE(r.has_dev);
  EXPECT_NEAR(r.train_losses.front(), std::log(2.0), 0.3);  // random head: scores ≈ equal
  // The training batches' accuracy (the chosen response scored higher) follows the dev one.
  ASSERT_EQ(r.train_accuracies.size(), r.train_losses.size());
  EXPECT_GE(r.train_accuracies.back(), 0.9);
  EXPECT_GE(r.last_dev.accuracy, 0.95);
  EXPECT_GT(r.last_dev.mean_margin, 1.0);
  EXPECT_LT(r.last_dev.loss, 0.35);
  EXPECT_EQ(r.last_dev.pairs, 200);
  EXPECT_TRUE(fs::exists(tmp.path() + "/run/model.safetensors"));
  EXPECT_TRUE(fs::exists(tmp.path() + "/run/eval.json"));
  auto meta = hh::read_checkpoint_metadata(tmp.path() + "/run/model.safetensors");
  EXPECT_EQ(meta["stage"], "pm");
  EXPECT_EQ(meta["scalar_head"], "true");
  // The saved model gives the same dev figures as the trainer's final evaluation.
  hh::GPT saved = hh::load_model(tmp.path() + "/run/model.safetensors", *be);
  hh::PmEvalResult again = hh::evaluate_pm(saved, hh::PmDataset::load(dev), 64, 32, 0);
  EXPECT_NEAR(again.accuracy, r.last_dev.accuracy, 1e-9);
  EXPECT_NEAR(again.loss, r.last_dev.loss, 1e-5);
}

TEST(TrainPm, GradientAccumulationMatchesOneBatch) {
  TempDir tmp;
  auto be = hh::make_cpu_backend();
  std::string train = save_pairs(tmp.path(), "train", 32, 31);
  auto a = tiny_options(train, "", tmp.path() + "/a");
  a.steps = 4;
  auto b = a;
  b.run_dir = tmp.path() + "/b";
  b.micro_batch = 3;  // 3 + 3 + 2: unequal micro-batches
  auto ra = hh::train_pm(*be, a);
  auto rb = hh::train_pm(*be, b);
  ASSERT_EQ(ra.train_losses.size(), rb.train_losses.size());
  for (size_t i = 0; i < ra.train_losses.size(); ++i)
    EXPECT_NEAR(ra.train_losses[i], rb.train_losses[i], 2e-4 * ra.train_losses[i]) << i;
  // Later steps depend on the accumulated gradient of earlier ones.
  EXPECT_NE(ra.train_losses[0], ra.train_losses[3]);
}

TEST(TrainPm, ResumeIsBitExact) {
  TempDir tmp;
  auto be = hh::make_cpu_backend();
  std::string train = save_pairs(tmp.path(), "train", 24, 41);
  auto full = tiny_options(train, "", tmp.path() + "/full");
  auto rf = hh::train_pm(*be, full);

  auto first = full;
  first.run_dir = tmp.path() + "/split";
  first.ckpt_every = 4;
  auto r1 = hh::train_pm(*be, first);
  ASSERT_EQ(r1.train_losses.size(), 8u);
  // Point `latest` back at step 4, as after an interruption there.
  fs::remove_all(tmp.path() + "/split/checkpoints/step-00000008");
  hh::write_file_atomic(tmp.path() + "/split/latest", "step-00000004\n");
  auto second = first;
  second.resume = true;
  auto r2 = hh::train_pm(*be, second);
  ASSERT_EQ(r2.train_losses.size(), 4u);
  for (size_t i = 0; i < 4; ++i) EXPECT_EQ(r2.train_losses[i], rf.train_losses[4 + i]) << i;
  hh::GPT a = hh::load_model(tmp.path() + "/full/model.safetensors", *be);
  hh::GPT b = hh::load_model(tmp.path() + "/split/model.safetensors", *be);
  EXPECT_EQ(a.get_param("score.weight"), b.get_param("score.weight"));
  EXPECT_EQ(a.get_param("transformer.h.0.attn.c_attn.weight"),
            b.get_param("transformer.h.0.attn.c_attn.weight"));
}

TEST(TrainPm, InitFromALanguageModelLoadsTheTrunk) {
  TempDir tmp;
  auto be = hh::make_cpu_backend();
  std::string train = save_pairs(tmp.path(), "train", 16, 51);
  hh::GPT lm(*be, tiny_config(), /*scalar_head=*/false);
  lm.init_random(99);
  const std::string lm_path = tmp.path() + "/lm.safetensors";
  hh::save_model(lm_path, lm, {{"stage", "sft"}, {"tokenizer", std::to_string(kFingerprint)}});

  auto o = tiny_options(train, "", tmp.path() + "/run");
  o.init = lm_path;
  o.steps = 1;
  o.adamw.lr = 1e-9f;  // one negligible update: the PM must still hold the LM's trunk
  o.adamw.weight_decay = 0;
  o.warmup = 0;
  hh::train_pm(*be, o);
  hh::GPT pm = hh::load_model(tmp.path() + "/run/model.safetensors", *be);
  ASSERT_TRUE(pm.has_scalar_head());
  for (const char* name :
       {"transformer.wte.weight", "transformer.h.1.mlp.c_proj.weight", "transformer.ln_f.bias"}) {
    std::vector<float> want = lm.get_param(name), got = pm.get_param(name);
    ASSERT_EQ(want.size(), got.size());
    double max_diff = 0;
    for (size_t i = 0; i < want.size(); ++i)
      max_diff = std::max(max_diff, static_cast<double>(std::fabs(want[i] - got[i])));
    EXPECT_LT(max_diff, 1e-6) << name;
  }
  // The head is a fresh random init, not zeros.
  double head_norm = 0;
  for (float w : pm.get_param("score.weight")) head_norm += w * w;
  EXPECT_GT(head_norm, 1e-4);

  // A checkpoint from another tokenizer is refused.
  hh::save_model(lm_path, lm, {{"stage", "sft"}, {"tokenizer", "12345"}});
  auto o2 = o;
  o2.run_dir = tmp.path() + "/run2";
  EXPECT_THROW(hh::train_pm(*be, o2), hh::Error);
}

TEST(TrainPm, EmptyOrMismatchedDatasetsAreClearErrors) {
  TempDir tmp;
  auto be = hh::make_cpu_backend();
  hh::TokenDataset empty;
  empty.kind = hh::DatasetKind::Pm;
  empty.vocab_size = kVocab;
  empty.tokenizer_fingerprint = kFingerprint;
  hh::save_dataset(tmp.path() + "/empty.pm.bin", empty);
  std::string train = save_pairs(tmp.path(), "train", 8, 61);

  auto o = tiny_options(tmp.path() + "/empty.pm.bin", "", tmp.path() + "/run");
  try {
    hh::train_pm(*be, o);
    ADD_FAILURE() << "an empty dataset must be an error";
  } catch (const hh::Error& e) {
    EXPECT_NE(std::string(e.what()).find("no pairs"), std::string::npos) << e.what();
  }
  // A dev set from another tokenizer.
  hh::TokenDataset other = synthetic_pairs(4, 62);
  other.tokenizer_fingerprint = 78;
  hh::save_dataset(tmp.path() + "/other.pm.bin", other);
  auto o2 = tiny_options(train, tmp.path() + "/other.pm.bin", tmp.path() + "/run2");
  EXPECT_THROW(hh::train_pm(*be, o2), hh::Error);
  // An sft dataset where pairs are expected.
  hh::TokenDataset sft;
  sft.kind = hh::DatasetKind::Sft;
  sft.vocab_size = kVocab;
  sft.tokenizer_fingerprint = kFingerprint;
  std::vector<int32_t> ids = {11, 12, 13};
  std::vector<uint8_t> mask = {0, 1, 1};
  sft.add(ids, &mask);
  hh::save_dataset(tmp.path() + "/x.sft.bin", sft);
  auto o3 = tiny_options(tmp.path() + "/x.sft.bin", "", tmp.path() + "/run3");
  EXPECT_THROW(hh::train_pm(*be, o3), hh::Error);
}

TEST(ShorterBaseline, CountsPairsWhoseChosenIsShorter) {
  hh::TokenDataset ds;
  ds.kind = hh::DatasetKind::Pm;
  ds.vocab_size = kVocab;
  ds.add({11, 1});  // shorter chosen: right
  ds.add({11, 12, 1});
  ds.add({11, 12, 13, 1});  // longer chosen: wrong
  ds.add({11, 1});
  ds.add({11, 12, 1});  // tie: 1/2
  ds.add({11, 13, 1});
  hh::PmDataset data(ds);
  EXPECT_DOUBLE_EQ(hh::shorter_response_accuracy(data, 0), 0.5);
  EXPECT_DOUBLE_EQ(hh::shorter_response_accuracy(data, 1), 1.0);
}

// hh-pm score encodes texts with pm_sequence: it must give exactly what hh-prepare pm
// stored for the same dialogue, truncated or not.
TEST(PmSequence, MatchesWhatHhPrepareBuilds) {
  hh::TextEncoder encoder;  // one token per byte; two special tokens after the bytes
  encoder.encode = [](std::string_view text) {
    return std::vector<int32_t>(text.begin(), text.end());
  };
  encoder.eot_id = 256;
  encoder.end_of_context_id = 257;
  encoder.vocab_size = 258;
  encoder.fingerprint = 5;
  hh::HhPair pair;
  const std::string prompt = "\n\nHuman: How do I bake bread?\n\nAssistant:";
  ASSERT_EQ(hh::split_pair(prompt + " Flour, water, yeast, an oven.", prompt + " No.", &pair), "");
  pair.line = 1;
  for (size_t max_len : {size_t{20}, size_t{4096}}) {
    hh::BuildOptions options;
    options.max_len = max_len;
    hh::BuildStats stats;
    hh::PmDataset data(hh::build_pm({pair}, encoder, options, &stats));
    ASSERT_EQ(data.size(), 1u);
    EXPECT_EQ(hh::pm_sequence(pair.chosen, encoder, max_len), data.chosen(0).to_vector());
    EXPECT_EQ(hh::pm_sequence(pair.rejected, encoder, max_len), data.rejected(0).to_vector());
  }
  EXPECT_EQ(hh::pm_sequence(pair.chosen, encoder, 20).size(), 20u);
  EXPECT_EQ(hh::pm_sequence(pair.chosen, encoder, 20).back(), 257);
  encoder.end_of_context_id = -1;
  EXPECT_THROW(hh::pm_sequence(pair.chosen, encoder, 20), hh::Error);
}

// hh-pm shares the LM trainer's loop: resuming with --steps below the checkpoint's step is
// refused before anything is written, and --steps equal to it trains nothing.
TEST(TrainPm, ResumeWithFewerStepsThanTheCheckpointIsRefused) {
  TempDir tmp;
  auto be = hh::make_cpu_backend();
  std::string train = save_pairs(tmp.path(), "train", 8, 71);
  auto o = tiny_options(train, train, tmp.path() + "/run");
  o.steps = 2;
  o.ckpt_every = 1;
  hh::train_pm(*be, o);
  const auto before = hh::test::snapshot_files(o.run_dir);
  auto fewer = o;
  fewer.resume = true;
  fewer.steps = 1;
  hh::test::expect_error_with([&] { hh::train_pm(*be, fewer); },
                              {o.run_dir, "step-00000002", "at step 2", "--steps=1"});
  EXPECT_EQ(hh::test::snapshot_files(o.run_dir), before);
  auto same = o;
  same.resume = true;
  EXPECT_EQ(hh::train_pm(*be, same).steps_done, 0);
  EXPECT_EQ(hh::test::snapshot_files(o.run_dir), before);  // eval.json too
}

// A dev set of 0 pairs is an error naming it, not accuracy 0.
TEST(TrainPm, EmptyDevSetIsAnErrorNamingIt) {
  TempDir tmp;
  auto be = hh::make_cpu_backend();
  std::string train = save_pairs(tmp.path(), "train", 8, 72);
  hh::TokenDataset empty;
  empty.kind = hh::DatasetKind::Pm;
  empty.vocab_size = kVocab;
  empty.tokenizer_fingerprint = kFingerprint;
  const std::string dev = tmp.path() + "/empty_dev.pm.bin";
  hh::save_dataset(dev, empty);
  auto o = tiny_options(train, dev, tmp.path() + "/run");
  hh::test::expect_error_with([&] { hh::train_pm(*be, o); }, {dev, "no pairs"});
  EXPECT_FALSE(fs::exists(o.run_dir));
}

// A pair with an empty sequence (a hand-made or foreign file) is named by file and index
// before training starts, in the training set and in the dev set.
TEST(TrainPm, EmptySequenceErrorsNameTheDataset) {
  TempDir tmp;
  auto be = hh::make_cpu_backend();
  std::string train = save_pairs(tmp.path(), "train", 8, 73);
  hh::TokenDataset bad = synthetic_pairs(3, 74);
  bad.add({11, 12, kEndOfContext});
  bad.add({});
  const std::string bad_path = tmp.path() + "/bad.pm.bin";
  hh::save_dataset(bad_path, bad);
  auto o = tiny_options(train, bad_path, tmp.path() + "/run");
  hh::test::expect_error_with([&] { hh::train_pm(*be, o); },
                              {bad_path, "pair 3", "rejected sequence is empty"});
  auto o2 = tiny_options(bad_path, train, tmp.path() + "/run2");
  hh::test::expect_error_with([&] { hh::train_pm(*be, o2); },
                              {bad_path, "pair 3", "rejected sequence is empty"});
  EXPECT_FALSE(fs::exists(o.run_dir));
}

// ---------------------------------------------------------------------------------------
// hh-pm score, the binary: each line's score is the PM's score of pm_sequence(text), in
// batches that cut between lines and inside none; gzip input; bad lines and models are
// errors naming them, with nothing written to --output.

TEST(HhPmScore, ScoresAreThePmsOwnAndBadInputIsNamed) {
  const std::string exe = hh::test::built_binary("hh-pm");
  if (!hh::file_exists(exe)) GTEST_SKIP() << exe << " not built";
  TempDir tmp;
  auto be = hh::make_cpu_backend();
  const hh::Tokenizer tok = hh::test::byte_tokenizer();
  tok.save(tmp.file("tok.bin"));
  hh::GPTConfig config = hh::GPTConfig::preset("tiny", tok.vocab_size());
  config.max_seq_len = 48;
  hh::GPT pm(*be, config, true);
  pm.init_random(41);
  const std::map<std::string, std::string> meta = {
      {"stage", "pm"}, {"tokenizer", std::to_string(tok.fingerprint())}};
  hh::save_model(tmp.file("pm.safetensors"), pm, meta);

  const std::string human = "\n\nHuman: Can you help me move house?\n\nAssistant:";
  const std::string long_text = human + std::string(80, 'z') + " (cut from the left)";
  auto quoted = [](const std::string& text) { return hh::Json(text).dump(); };
  const std::vector<std::string> lines = {
      "{\"text\": " + quoted(human + " Yes, gladly.") + ", \"id\": 1}",
      "",
      "{\"chosen\": " + quoted(human + " Sure.") + ", \"rejected\": " + quoted(human + " No.") +
          "}",
      "{\"text\": " + quoted(long_text) + "}",
      "   ",
      "{\"text\": \"no markers at all\"}",
  };
  std::string input;
  for (const std::string& line : lines) input += line + "\n";
  hh::write_file_atomic(tmp.file("in.jsonl"), input);
  const std::string score = exe + " score --device cpu --model " + tmp.file("pm.safetensors") +
                            " --tokenizer " + tmp.file("tok.bin");
  ASSERT_EQ(
      hh::test::run_shell(score + " --batch 2 --input " + tmp.file("in.jsonl") + " --output " +
                          tmp.file("out.jsonl") + " 2> " + tmp.file("err.txt")),
      0)
      << hh::read_file_text(tmp.file("err.txt"));
  const std::string out = hh::read_file_text(tmp.file("out.jsonl"));
  std::vector<hh::Json> scored = hh::test::parse_jsonl(out);
  ASSERT_EQ(scored.size(), 4u) << out;

  // The library's scores, one sequence at a time.
  const hh::TextEncoder encoder = hh::TextEncoder::from(tok);
  auto pm_score = [&](const std::string& text) {
    std::vector<int32_t> seq = hh::pm_sequence(text, encoder, 48);
    return static_cast<double>(
        pm.forward_scores(hh::Batch::single(seq), {static_cast<int32_t>(seq.size()) - 1})[0]);
  };
  EXPECT_EQ(scored[0].at("id").as_int(), 1);
  EXPECT_EQ(scored[0].at("text").as_string(), human + " Yes, gladly.");
  EXPECT_NEAR(scored[0].at("score").as_number(), pm_score(human + " Yes, gladly."), 1e-5);
  EXPECT_NEAR(scored[1].at("score_chosen").as_number(), pm_score(human + " Sure."), 1e-5);
  EXPECT_NEAR(scored[1].at("score_rejected").as_number(), pm_score(human + " No."), 1e-5);
  EXPECT_EQ(scored[1].find("score"), nullptr);
  EXPECT_NEAR(scored[2].at("score").as_number(), pm_score(long_text), 1e-5);
  EXPECT_NEAR(scored[3].at("score").as_number(), pm_score("no markers at all"), 1e-5);
  // Left truncation keeps the end: the long text scores as its last 47 bytes + the end.
  EXPECT_NEAR(pm_score(long_text), pm_score(long_text.substr(long_text.size() - 47)), 1e-5);
  EXPECT_NE(scored[0].at("score").as_number(), scored[3].at("score").as_number());

  // The same file gzipped, written to stdout, a batch size that leaves a last, partial
  // batch (1 + 2 sequences, then 1 + 1): the same lines.
  ASSERT_EQ(
      hh::test::run_shell("gzip -c " + tmp.file("in.jsonl") + " > " + tmp.file("in.jsonl.gz")), 0);
  ASSERT_EQ(hh::test::run_shell(score + " --batch 3 --input " + tmp.file("in.jsonl.gz") + " > " +
                                tmp.file("stdout.jsonl") + " 2> " + tmp.file("err.txt")),
            0)
      << hh::read_file_text(tmp.file("err.txt"));
  std::vector<hh::Json> from_gz =
      hh::test::parse_jsonl(hh::read_file_text(tmp.file("stdout.jsonl")));
  ASSERT_EQ(from_gz.size(), scored.size());
  for (size_t i = 0; i < scored.size(); ++i)
    for (const char* key : {"score", "score_chosen", "score_rejected"}) {
      if (scored[i].find(key)) {
        EXPECT_NEAR(from_gz[i].at(key).as_number(), scored[i].at(key).as_number(), 1e-5) << i;
      }
    }

  // A bad line: exit status 1, the file and line named, no --output written.
  const std::vector<std::pair<std::string, std::string>> bad_lines = {
      {"[1, 2]", "bad.jsonl:3: expected a JSON object"},
      {"{\"text\": 7}", "bad.jsonl:3: \"text\" is not a string"},
      {"{\"chosen\": \"a\"}",
       "bad.jsonl:3: expected a \"text\" field, or \"chosen\" and \"rejected\""},
      {"{\"chosen\": \"a\", \"rejected\": null}",
       "bad.jsonl:3: \"chosen\" and \"rejected\" must be strings"},
      {"{\"text\": \"a\"", "bad.jsonl:3"},
  };
  for (const auto& [line, message] : bad_lines) {
    hh::write_file_atomic(tmp.file("bad.jsonl"), lines[0] + "\n" + lines[2] + "\n" + line + "\n");
    EXPECT_EQ(hh::test::run_shell(score + " --input " + tmp.file("bad.jsonl") + " --output " +
                                  tmp.file("bad_out.jsonl") + " 2> " + tmp.file("err.txt")),
              1)
        << line;
    const std::string err = hh::read_file_text(tmp.file("err.txt"));
    EXPECT_NE(err.find(message), std::string::npos) << err;
    EXPECT_FALSE(hh::file_exists(tmp.file("bad_out.jsonl"))) << line;
  }

  // A language model, a PPO value model, another tokenizer: refused by name.
  hh::GPT lm(*be, config, false);
  lm.init_random(1);
  hh::save_model(tmp.file("lm.safetensors"), lm, meta);
  hh::save_model(tmp.file("value.safetensors"), pm,
                 {{"stage", "ppo"}, {"tokenizer", std::to_string(tok.fingerprint())}});
  hh::save_model(tmp.file("other.safetensors"), pm, {{"stage", "pm"}, {"tokenizer", "12345"}});
  for (const auto& [model, message] : std::vector<std::pair<std::string, std::string>>{
           {"lm.safetensors", "has no scalar head"},
           {"value.safetensors", "is a PPO value model"},
           {"other.safetensors", "was trained with another tokenizer"}}) {
    EXPECT_EQ(hh::test::run_shell(exe + " score --device cpu --model " + tmp.file(model) +
                                  " --tokenizer " + tmp.file("tok.bin") + " --input " +
                                  tmp.file("in.jsonl") + " > /dev/null 2> " + tmp.file("err.txt")),
              1)
        << model;
    const std::string err = hh::read_file_text(tmp.file("err.txt"));
    EXPECT_NE(err.find(tmp.file(model)), std::string::npos) << err;
    EXPECT_NE(err.find(message), std::string::npos) << err;
  }
}
