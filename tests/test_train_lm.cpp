// The LM trainer end to end on a synthetic dataset: it learns, gradient accumulation
// matches one big batch, a resumed run reproduces the uninterrupted one bit for bit, and
// a run directory with a checkpoint is never overwritten by accident.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>

#include "core/error.h"
#include "core/fileio.h"
#include "core/rng.h"
#include "data/dataset.h"
#include "ops/ops.h"
#include "test_util.h"
#include "train/lm.h"
#include "train/loop.h"
#include "train/optimizer.h"
#include "train/run.h"

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

// A run in tmp/run of `steps` steps on 8 pattern sequences, checkpointed at every step:
// what the resume and run-directory tests start from.
hh::LmTrainOptions checkpointed_options(const TempDir& tmp, uint64_t data_seed, int64_t steps) {
  auto o = tiny_options(make_dataset(tmp.path(), 8, data_seed), tmp.path() + "/run");
  o.steps = steps;
  o.ckpt_every = 1;
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

// Resuming with --steps below the checkpoint's step is refused before anything is written
// (it used to save step 1 over the older checkpoint with step-2 weights and move `latest`
// back); --steps equal to it trains nothing and leaves the run as it was.
TEST(TrainLm, ResumeWithFewerStepsThanTheCheckpointIsRefused) {
  TempDir tmp;
  auto be = hh::make_cpu_backend();
  auto o = checkpointed_options(tmp, 7, 2);
  hh::train_lm(*be, o);
  const auto before = hh::test::snapshot_files(o.run_dir);
  ASSERT_TRUE(before.count("checkpoints/step-00000001/model.safetensors"));
  ASSERT_EQ(before.at("latest"), "step-00000002\n");

  auto fewer = o;
  fewer.resume = true;
  fewer.steps = 1;
  hh::test::expect_error_with([&] { hh::train_lm(*be, fewer); },
                              {o.run_dir, "step-00000002", "at step 2", "--steps=1"});
  EXPECT_EQ(hh::test::snapshot_files(o.run_dir), before);

  auto same = o;
  same.resume = true;
  hh::LmTrainResult r = hh::train_lm(*be, same);
  EXPECT_EQ(r.steps_done, 0);
  EXPECT_TRUE(r.train_losses.empty());
  EXPECT_EQ(hh::test::snapshot_files(o.run_dir), before);  // the final model: same bytes
}

// A checkpoint brings its architecture: model flags that name another one are an error (they
// were silently ignored), the same one is fine, and what no flag names is not compared.
TEST(TrainLm, ModelFlagsThatContradictTheCheckpointAreRefused) {
  TempDir tmp;
  auto be = hh::make_cpu_backend();
  std::string data = make_dataset(tmp.path(), 8, 9);
  auto o = tiny_options(data, tmp.path() + "/first");
  o.steps = 1;
  hh::train_lm(*be, o);
  auto init = tiny_options(data, tmp.path() + "/second");
  init.steps = 1;
  init.init = o.run_dir + "/model.safetensors";
  init.model_given.n_layer = true;  // --layers
  init.model.n_layer = o.model.n_layer + 1;
  hh::test::expect_error_with([&] { hh::train_lm(*be, init); },
                              {init.init,
                               "--layers gives n_layer=" + std::to_string(o.model.n_layer + 1) +
                                   ", it has " + std::to_string(o.model.n_layer),
                               "leave them out with --init"});
  init.model = o.model;  // the same architecture named: fine
  EXPECT_EQ(hh::train_lm(*be, init).steps_done, 1);
  // Only what is named is compared: --ctx alone, equal to the checkpoint's, beside a preset
  // default (not given) of another width.
  init.run_dir = tmp.path() + "/fourth";
  init.model_given = {false, false, false, true};
  init.model.n_embd = o.model.n_embd * 2;
  EXPECT_EQ(hh::train_lm(*be, init).steps_done, 1);
  auto unnamed = tiny_options(data, tmp.path() + "/third");
  unnamed.steps = 1;
  unnamed.init = init.init;
  unnamed.model.n_layer = o.model.n_layer + 1;  // a preset's default, not given: ignored
  EXPECT_EQ(hh::train_lm(*be, unnamed).steps_done, 1);
}

// A resumed run keeps its settings: flags that shape the result (lr, data, batch) may not
// change, paths may be spelled differently, and how long it runs or logs may change.
TEST(TrainLm, ResumeRefusesChangedSettings) {
  TempDir tmp;
  auto be = hh::make_cpu_backend();
  auto o = checkpointed_options(tmp, 11, 1);
  const std::string data = o.train_path;
  auto flags = [&](const std::string& train, double lr, int64_t steps,
                   const std::string& init = "start.safetensors") {
    return hh::str_cat(R"({"init":")", init, R"(","lr":)", lr, R"(,"steps":)", steps,
                       R"(,"train":")", train, R"("})");
  };
  o.config_json = flags(data, 1e-3, 1);
  hh::train_lm(*be, o);
  const auto before = hh::test::snapshot_files(o.run_dir);

  auto resume = o;
  resume.resume = true;
  resume.steps = 2;
  resume.config_json = flags(data, 5e-3, 2);
  hh::test::expect_error_with([&] { hh::train_lm(*be, resume); },
                              {"--resume", "--lr=0.005 (the run has 0.001)", "config.json"});
  EXPECT_EQ(hh::test::snapshot_files(o.run_dir), before);
  resume.config_json = flags(data, 1e-3, 2, "other.safetensors");
  hh::test::expect_error_with([&] { hh::train_lm(*be, resume); }, {"--init=\"other.safetensors\""});
  // A damaged config.json does not turn the check off.
  const std::string config = o.run_dir + "/config.json", kept = hh::read_file_text(config);
  hh::write_file_atomic(config, "[1, 2]\n");
  hh::test::expect_error_with([&] { hh::train_lm(*be, resume); },
                              {config, "not a JSON object of flags"});
  hh::write_file_atomic(config, kept);
  // The same file through another path, more steps, and --init left out: fine.
  resume.config_json = flags(tmp.path() + "/./" + fs::path(data).filename().string(), 1e-3, 2, "");
  EXPECT_EQ(hh::train_lm(*be, resume).steps_done, 1);
}

// A save interrupted before `latest` leaves step directories that nothing names: a fresh run
// must not overwrite them, and --resume (which only trusts `latest`) says how to go on.
TEST(TrainLm, CheckpointsWithoutLatestAreNeverOverwritten) {
  TempDir tmp;
  auto be = hh::make_cpu_backend();
  auto o = checkpointed_options(tmp, 8, 2);
  hh::train_lm(*be, o);
  fs::remove(o.run_dir + "/latest");
  const auto before = hh::test::snapshot_files(o.run_dir);

  hh::test::expect_error_with([&] { hh::train_lm(*be, o); },
                              {o.run_dir, "step-00000002", "latest", "--resume", "--run-dir"});
  EXPECT_EQ(hh::test::snapshot_files(o.run_dir), before);
  auto resume = o;
  resume.resume = true;
  hh::test::expect_error_with([&] { hh::train_lm(*be, resume); },
                              {"--resume", o.run_dir, "interrupted save",
                               "the newest with a model and optimizer state "
                               "is step-00000002"});
  EXPECT_EQ(hh::test::snapshot_files(o.run_dir), before);

  // Only a partial directory (the model written, not the optimizer state): still refused.
  fs::remove_all(o.run_dir + "/checkpoints/step-00000001");
  fs::remove(o.run_dir + "/checkpoints/step-00000002/optim.safetensors");
  hh::test::expect_error_with([&] { hh::train_lm(*be, o); },
                              {"step-00000002", "none of its step directories is complete"});
  // Named by hand, the complete checkpoint resumes.
  auto o3 = o;
  o3.run_dir = tmp.path() + "/run3";
  hh::train_lm(*be, o3);
  fs::remove(o3.run_dir + "/latest");
  hh::write_file_atomic(o3.run_dir + "/latest", "step-00000001\n");
  o3.resume = true;
  EXPECT_EQ(hh::train_lm(*be, o3).steps_done, 1);
}

// A damaged `latest` is never trusted: one that names no step directory, or a directory
// missing the optimizer state, stops --resume (and a fresh run) with its path, and the run
// is left as it was.
TEST(TrainLm, ADamagedLatestIsRefused) {
  TempDir tmp;
  auto be = hh::make_cpu_backend();
  auto o = checkpointed_options(tmp, 8, 2);
  hh::train_lm(*be, o);
  auto resume = o;
  resume.resume = true;
  resume.steps = 3;
  const std::string latest = o.run_dir + "/latest";
  hh::write_file_atomic(latest, "../../etc\n");
  auto before = hh::test::snapshot_files(o.run_dir);
  hh::test::expect_error_with([&] { hh::train_lm(*be, resume); },
                              {latest, "not a checkpoint name"});
  hh::test::expect_error_with([&] { hh::train_lm(*be, o); }, {latest, "not a checkpoint name"});
  EXPECT_EQ(hh::test::snapshot_files(o.run_dir), before);
  hh::write_file_atomic(latest, "step-00000002\n");
  fs::remove(o.run_dir + "/checkpoints/step-00000002/optim.safetensors");
  before = hh::test::snapshot_files(o.run_dir);
  hh::test::expect_error_with([&] { hh::train_lm(*be, resume); },
                              {latest, "step-00000002", "incomplete"});
  EXPECT_EQ(hh::test::snapshot_files(o.run_dir), before);
}

// A dev set without a single target token would report val_loss 0: an error at the start
// that names the file.
TEST(TrainLm, DevSetWithoutTargetsIsAnError) {
  TempDir tmp;
  auto be = hh::make_cpu_backend();
  std::string data = make_dataset(tmp.path(), 8, 9);
  auto o = tiny_options(data, tmp.path() + "/run");
  o.steps = 1;

  hh::TokenDataset empty;
  empty.kind = hh::DatasetKind::Sft;
  empty.vocab_size = 40;
  empty.tokenizer_fingerprint = 77;
  o.dev_path = tmp.file("empty.sft.bin");
  hh::save_dataset(o.dev_path, empty);
  hh::test::expect_error_with([&] { hh::train_lm(*be, o); }, {o.dev_path, "no sequences"});

  hh::TokenDataset unmasked = empty;
  std::vector<uint8_t> zeros(10, 0);
  for (int i = 0; i < 3; ++i) unmasked.add({1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, &zeros);
  o.dev_path = tmp.file("unmasked.sft.bin");
  hh::save_dataset(o.dev_path, unmasked);
  hh::test::expect_error_with([&] { hh::train_lm(*be, o); },
                              {o.dev_path, "no target tokens", "its 3 sequences"});
  // --mode=pretrain trains on every token: the same file is a valid dev set then.
  auto pretrain = o;
  pretrain.masked = false;
  EXPECT_GT(hh::train_lm(*be, pretrain).last_dev_loss, 0.0);

  // Targets only beyond what --eval-batches evaluates.
  hh::TokenDataset late = unmasked;
  std::vector<uint8_t> ones(10, 1);
  late.add({1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, &ones);
  o.dev_path = tmp.file("late.sft.bin");
  hh::save_dataset(o.dev_path, late);
  o.micro_batch = 2;
  o.eval_batches = 1;
  o.run_dir = tmp.path() + "/run2";
  hh::test::expect_error_with([&] { hh::train_lm(*be, o); },
                              {o.dev_path, "the first 2 sequences", "--eval-batches=1"});
  EXPECT_FALSE(fs::exists(o.run_dir + "/latest"));
}

// An empty sequence is named with its file (it was "sequence 1 is empty").
TEST(TrainLm, EmptySequenceErrorsNameTheDataset) {
  TempDir tmp;
  auto be = hh::make_cpu_backend();
  std::string data = make_dataset(tmp.path(), 8, 10);
  hh::TokenDataset ds;
  ds.kind = hh::DatasetKind::Sft;
  ds.vocab_size = 40;
  ds.tokenizer_fingerprint = 77;
  std::vector<uint8_t> mask = {0, 1, 1}, none;
  ds.add({1, 2, 3}, &mask);
  ds.add({}, &none);
  const std::string bad = tmp.file("bad.sft.bin");
  hh::save_dataset(bad, ds);

  auto o = tiny_options(data, tmp.path() + "/run");
  o.steps = 1;
  o.dev_path = bad;
  hh::test::expect_error_with([&] { hh::train_lm(*be, o); }, {bad, "sequence 1 is empty"});
  o.train_path = bad;
  o.dev_path = data;
  hh::test::expect_error_with([&] { hh::train_lm(*be, o); }, {bad, "sequence 1 is empty"});
}

// The held-out loss is the mean over every target token, not over batches: sequences of
// different lengths, in batches of 3, against each sequence scored alone.
TEST(TrainLm, EvaluationAveragesOverTargetTokens) {
  TempDir tmp;
  auto be = hh::make_cpu_backend();
  const hh::SftDataset data = hh::SftDataset::load(make_dataset(tmp.path(), 7, 5));
  hh::GPT model(*be, hh::test::tiny_lm_config(), false);
  model.init_random(9);
  for (bool masked : {false, true}) {
    double loss_sum = 0, targets = 0;
    for (size_t i = 0; i < data.size(); ++i) {
      const hh::Batch alone = hh::make_lm_batch(data, {i}, 32, masked);
      double c = 0;
      for (int32_t t : alone.targets) c += t >= 0;
      loss_sum += model.forward(alone) * c;
      targets += c;
    }
    EXPECT_NEAR(hh::evaluate_lm(model, data, 32, masked, 3, 0), loss_sum / targets, 1e-5)
        << (masked ? "masked" : "every token");
  }
}

// A skipped step (non-finite loss, --on-nan=skip) still counts: the optimizer's step, which
// checkpoints record and --resume starts from, moves on, so a finished run with a skipped
// step resumes as finished instead of training one step more.
TEST(TrainLoop, ASkippedStepStillCounts) {
  TempDir tmp;
  auto be = hh::make_cpu_backend();
  const hh::SftDataset data = hh::SftDataset::load(make_dataset(tmp.path(), 8, 3));
  hh::TrainLoopOptions o = tiny_options("", tmp.path() + "/run");
  o.steps = 4;
  hh::LoopSetup setup;
  setup.program = "test";
  setup.stage = "sft";
  setup.raw = &data.raw();
  setup.n_items = data.size();
  setup.unit = "tok";
  setup.counter = "tokens";
  int calls = 0;
  auto step = [&](const std::vector<size_t>&) {
    ++calls;
    return hh::StepOutcome{calls == 2 ? std::nanf("") : 1.0f, 10.0, {}};
  };
  {
    hh::TrainLoop loop(*be, o, setup);
    EXPECT_EQ(loop.run(step, {}).losses.size(), 4u);
  }
  o.resume = true;
  hh::TrainLoop again(*be, o, setup);
  EXPECT_EQ(again.run(step, {}).losses.size(), 0u) << "the finished run trained again";
  EXPECT_EQ(calls, 4);
}

// A warmup longer than the run is allowed (a short trial of a long configuration) but said;
// one exactly as long reaches --lr at the last step, so it is not.
TEST(TrainFlags, WarmupLongerThanTheRunIsAWarning) {
  testing::internal::CaptureStderr();
  hh::warn_if_warmup_outlasts_the_run(100, 10);
  const std::string said = testing::internal::GetCapturedStderr();
  EXPECT_NE(said.find("--warmup 100 > --steps 10"), std::string::npos) << said;
  EXPECT_NE(said.find("peaks at 0.1 of it"), std::string::npos) << said;
  EXPECT_FLOAT_EQ(hh::lr_at(9, 1.0f, 100, 10, 0.1f), 0.1f);

  testing::internal::CaptureStderr();
  hh::warn_if_warmup_outlasts_the_run(10, 10);
  hh::warn_if_warmup_outlasts_the_run(0, 10);
  EXPECT_EQ(testing::internal::GetCapturedStderr(), "");
  EXPECT_FLOAT_EQ(hh::lr_at(9, 1.0f, 10, 10, 0.1f), 1.0f);
}

// Ctrl-C during training (hh-sft, the binary): the step in progress finishes, a checkpoint
// is saved and named, the exit status is 130, `latest` names it and nothing half-written
// is left; --resume then finishes the very run an uninterrupted one makes. A second Ctrl-C
// exits at once, and whatever `latest` names stays loadable.
TEST(TrainLm, CtrlCSavesACheckpointAndResumeFinishesTheSameRun) {
  const std::string exe = hh::test::built_binary("hh-sft");
  if (!hh::file_exists(exe)) GTEST_SKIP() << exe << " not built";
  TempDir tmp;
  const std::string data = hh::test::make_pattern_dataset(tmp.path(), 32, 5);
  const std::string sft = exe + " --device cpu --mode sft --train " + data +
                          " --model tiny --ctx 64 --seq 32 --batch 4 --steps 300 --lr 1e-3"
                          " --log-every 1 --eval-every 0 --run-dir ";
  const std::string a = tmp.file("a"), b = tmp.file("b"), err = tmp.file("err.txt");
  ASSERT_EQ(hh::test::run_shell(sft + a + " --ckpt-every 0 > /dev/null 2> " + err), 0)
      << hh::read_file_text(err);

  ASSERT_EQ(
      hh::test::interrupt_once_logged(sft + b + " --ckpt-every 0", b + "/metrics.jsonl", 1, err),
      130)
      << hh::read_file_text(err);
  // `latest` is "step-NNNNNNNN\n".
  auto latest_model = [](const std::string& run) {
    std::string name = hh::read_file_text(run + "/latest");
    return run + "/checkpoints/" + name.substr(0, name.find('\n')) + "/model.safetensors";
  };
  const std::string latest = hh::read_file_text(b + "/latest");
  const std::string message = hh::read_file_text(err);
  const int64_t step = std::stoll(latest.substr(latest.find("step-") + 5));
  EXPECT_GE(step, 1);
  EXPECT_LT(step, 300);
  EXPECT_NE(message.find("interrupted: saving a checkpoint at step " + std::to_string(step)),
            std::string::npos)
      << message;
  EXPECT_FALSE(fs::exists(b + "/model.safetensors"));  // the run is not finished
  for (const auto& e : fs::recursive_directory_iterator(b))
    EXPECT_EQ(e.path().string().find(".tmp"), std::string::npos) << e.path();
  auto be = hh::make_cpu_backend();
  hh::load_model(latest_model(b), *be);

  ASSERT_EQ(hh::test::run_shell(sft + b + " --ckpt-every 0 --resume > /dev/null 2> " + err), 0)
      << hh::read_file_text(err);
  EXPECT_EQ(hh::read_file_bytes(b + "/model.safetensors"),
            hh::read_file_bytes(a + "/model.safetensors"));

  // Two Ctrl-C in a row.
  const std::string c = tmp.file("c");
  EXPECT_EQ(
      hh::test::interrupt_once_logged(sft + c + " --ckpt-every 2", c + "/metrics.jsonl", 2, err),
      130)
      << hh::read_file_text(err);
  if (fs::exists(c + "/latest")) hh::load_model(latest_model(c), *be);
}

// --keep-ckpts: after each save only the newest N step directories remain (`latest` names
// the newest), and a resumed run goes on pruning its own.
TEST(TrainLm, KeepCkptsKeepsTheNewestCheckpoints) {
  TempDir tmp;
  auto be = hh::make_cpu_backend();
  auto checkpoints = [](const std::string& run) {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(run + "/checkpoints"))
      names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
  };
  auto o = checkpointed_options(tmp, 11, 5);
  o.keep_ckpts = 2;
  hh::train_lm(*be, o);
  EXPECT_EQ(checkpoints(o.run_dir), (std::vector<std::string>{"step-00000004", "step-00000005"}));
  EXPECT_EQ(hh::read_file_text(o.run_dir + "/latest"), "step-00000005\n");
  auto more = o;
  more.resume = true;
  more.steps = 7;
  EXPECT_EQ(hh::train_lm(*be, more).steps_done, 2);
  EXPECT_EQ(checkpoints(o.run_dir), (std::vector<std::string>{"step-00000006", "step-00000007"}));

  auto one = o;
  one.run_dir = tmp.path() + "/one";
  one.keep_ckpts = 1;
  hh::train_lm(*be, one);
  EXPECT_EQ(checkpoints(one.run_dir), std::vector<std::string>{"step-00000005"});
}

// hh-bench, the benchmark binary the scripts run: each mode runs on a tiny model and ends
// in one JSON line with its counts (timings are printed, never checked).
TEST(HhBench, EveryModeRunsAndEndsInAJsonLine) {
  const std::string exe = hh::test::built_binary("hh-bench");
  if (!hh::file_exists(exe)) GTEST_SKIP() << exe << " not built";
  TempDir tmp;
  const std::string common =
      " --device cpu --layers 2 --heads 2 --width 64"
      " --batch 4 --seq 32 --steps 2 --warmup 1 > " +
      tmp.file("out.txt") + " 2> " + tmp.file("err.txt");
  auto last_json = [&](const std::string& mode) {
    EXPECT_EQ(hh::test::run_shell(exe + " " + mode + " --vocab 300" + common), 0)
        << mode << ": " << hh::read_file_text(tmp.file("err.txt"));
    return hh::test::last_json_line(hh::read_file_text(tmp.file("out.txt")));
  };
  hh::Json train = last_json("train");
  // GPT-2's count, V·C + T·C + L·(12C² + 13C) + 2C, with V = 300 padded to 320.
  const int64_t C = 64, L = 2, T = 32, V = 320;
  EXPECT_EQ(train.at("parameters").as_int(), V * C + T * C + L * (12 * C * C + 13 * C) + 2 * C);
  EXPECT_EQ(train.at("steps").as_int(), 2);
  EXPECT_TRUE(std::isfinite(train.at("final_loss").as_number()));
  EXPECT_TRUE(last_json("train --pm").find("pairs_per_s"));
  hh::Json ppo = last_json("ppo --prompt-len 8 --new-tokens 8 --epochs 1 --minibatch 4");
  EXPECT_EQ(ppo.at("prompts").as_int(), 4);
  EXPECT_EQ(ppo.at("new_tokens").as_int(), 8);
  for (const char* phase : {"rollout_s", "scoring_s", "update_s"})
    EXPECT_TRUE(ppo.find(phase)) << phase;
  EXPECT_EQ(hh::test::run_shell(exe + " ppo --vocab 100 --prompt-len 8 --new-tokens 8" + common),
            1);  // below the 256 bytes and 2 specials
  EXPECT_NE(hh::read_file_text(tmp.file("err.txt")).find("vocabulary 100"), std::string::npos);
}
