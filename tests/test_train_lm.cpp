// The LM trainer end to end on a synthetic dataset: it learns, gradient accumulation
// matches one big batch, a resumed run reproduces the uninterrupted one bit for bit, and
// a run directory with a checkpoint is never overwritten by accident.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>

#include "core/error.h"
#include "core/fileio.h"
#include "core/rng.h"
#include "data/dataset.h"
#include "ops/ops.h"
#include "test_util.h"
#include "train/lm.h"

namespace fs = std::filesystem;

namespace {

using hh::test::TempDir;

std::string make_dataset(const std::string& dir, int n, uint64_t seed) {
  return hh::test::make_pattern_dataset(dir, n, seed);
}

hh::LmTrainOptions tiny_options(const std::string& data, const std::string& run_dir) {
  hh::LmTrainOptions o;
  o.train_path = data;
  o.dev_path = data;
  o.model = hh::test::tiny_lm_config();
  o.steps = 12;
  o.batch = 4;
  o.micro_batch = 4;
  o.seq = 32;
  o.adamw.lr = 3e-3f;
  o.warmup = 2;
  o.log_every = 1;
  o.eval_every = 0;
  o.ckpt_every = 0;
  o.eval_batches = 2;
  o.run_dir = run_dir;
  o.quiet = true;
  return o;
}

}  // namespace

TEST(TrainLm, LearnsAPattern) {
  TempDir tmp;
  auto be = hh::make_cpu_backend();
  std::string data = make_dataset(tmp.path(), 64, 1);
  auto o = tiny_options(data, tmp.path() + "/run");
  o.steps = 60;
  o.masked = false;
  hh::LmTrainResult r = hh::train_lm(*be, o);
  ASSERT_EQ(r.train_losses.size(), static_cast<size_t>(o.steps));
  EXPECT_GT(r.train_losses.front(), 3.0f);  // ≈ log(40) = 3.69 at init
  EXPECT_LT(r.last_dev_loss, 0.6 * r.train_losses.front());
  EXPECT_TRUE(fs::exists(tmp.path() + "/run/model.safetensors"));
  EXPECT_TRUE(fs::exists(tmp.path() + "/run/metrics.jsonl"));
}

TEST(TrainLm, MaskedBatchesTargetOnlyMaskedTokens) {
  TempDir tmp;
  std::string data = make_dataset(tmp.path(), 4, 2);
  hh::SftDataset ds = hh::SftDataset::load(data);
  hh::Batch b = hh::make_lm_batch(ds, {0, 1, 2}, 16, /*masked=*/true);
  for (int r = 0; r < b.B; ++r) {
    hh::TokenSpan ids = ds.sequence(r);
    hh::MaskSpan mask = ds.mask(r);
    size_t len = std::min<size_t>(ids.size(), 16), start = ids.size() - len;
    EXPECT_EQ(b.lengths[r], static_cast<int32_t>(len));
    for (size_t t = 0; t < static_cast<size_t>(b.T); ++t) {
      int32_t want = (t + 1 < len && mask[start + t + 1]) ? ids[start + t + 1] : -1;
      EXPECT_EQ(b.targets[r * b.T + t], want) << "row " << r << " t " << t;
    }
    // The end of the sequence survives truncation.
    EXPECT_EQ(b.tokens[r * b.T + len - 1], ids[ids.size() - 1]);
  }
}

TEST(TrainLm, GradientAccumulationMatchesOneBatch) {
  TempDir tmp;
  auto be = hh::make_cpu_backend();
  std::string data = make_dataset(tmp.path(), 32, 3);
  auto a = tiny_options(data, tmp.path() + "/a");
  a.steps = 4;
  auto b = a;
  b.run_dir = tmp.path() + "/b";
  b.micro_batch = 1;
  auto ra = hh::train_lm(*be, a);
  auto rb = hh::train_lm(*be, b);
  ASSERT_EQ(ra.train_losses.size(), rb.train_losses.size());
  for (size_t i = 0; i < ra.train_losses.size(); ++i)
    EXPECT_NEAR(ra.train_losses[i], rb.train_losses[i], 2e-4 * ra.train_losses[i]) << i;
}

TEST(TrainLm, ResumeIsBitExact) {
  TempDir tmp;
  auto be = hh::make_cpu_backend();
  std::string data = make_dataset(tmp.path(), 32, 4);
  auto full = tiny_options(data, tmp.path() + "/full");
  full.steps = 8;
  auto rf = hh::train_lm(*be, full);

  auto first = full;
  first.run_dir = tmp.path() + "/split";
  first.steps = 8;
  first.ckpt_every = 4;
  // Train to step 4 by asking for 8 steps and resuming from the step-4 checkpoint: the
  // schedule (cosine over 8 steps) must be the same, so run all 8 and then redo 4..8.
  auto r1 = hh::train_lm(*be, first);
  ASSERT_EQ(r1.train_losses.size(), 8u);
  // Drop the final checkpoint so `latest` points at step 4, as after an interruption.
  fs::remove_all(tmp.path() + "/split/checkpoints/step-00000008");
  hh::write_file_atomic(tmp.path() + "/split/latest", "step-00000004\n");
  auto second = first;
  second.resume = true;
  auto r2 = hh::train_lm(*be, second);
  ASSERT_EQ(r2.train_losses.size(), 4u);
  for (size_t i = 0; i < 4; ++i) EXPECT_EQ(r2.train_losses[i], rf.train_losses[4 + i]) << i;
}

// A step whose activations cannot fit is refused before training, naming the sizes and the
// flags that shrink it; nothing is written to the run directory.
TEST(TrainLm, AModelThatDoesNotFitSaysSoBeforeTraining) {
  TempDir tmp;
  auto be = hh::make_cpu_backend();
  std::string data = make_dataset(tmp.path(), 8, 3);
  auto o = tiny_options(data, tmp.path() + "/run");
  o.batch = o.micro_batch = 1 << 22;  // 4M sequences x 32 tokens: terabytes of activations
  try {
    hh::train_lm(*be, o);
    FAIL() << "expected an error";
  } catch (const hh::Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("does not fit"), std::string::npos) << msg;
    EXPECT_NE(msg.find("4194304 sequences x 32 tokens"), std::string::npos) << msg;
    EXPECT_NE(msg.find("--micro-batch"), std::string::npos) << msg;
  }
  EXPECT_FALSE(fs::exists(tmp.path() + "/run/config.json"));
  EXPECT_FALSE(fs::exists(tmp.path() + "/run/latest"));
}

TEST(TrainLm, RefusesToOverwriteARun) {
  TempDir tmp;
  auto be = hh::make_cpu_backend();
  std::string data = make_dataset(tmp.path(), 8, 5);
  auto o = tiny_options(data, tmp.path() + "/run");
  o.steps = 1;
  hh::train_lm(*be, o);
  EXPECT_THROW(hh::train_lm(*be, o), hh::Error);
  auto o2 = o;
  o2.run_dir = tmp.path() + "/empty";
  o2.resume = true;
  EXPECT_THROW(hh::train_lm(*be, o2), hh::Error);
}

TEST(TrainLm, RejectsVocabularyMismatch) {
  TempDir tmp;
  auto be = hh::make_cpu_backend();
  std::string data = make_dataset(tmp.path(), 8, 6);
  auto o = tiny_options(data, tmp.path() + "/run");
  o.model.set_vocab_size(41);
  EXPECT_THROW(hh::train_lm(*be, o), hh::Error);
}
