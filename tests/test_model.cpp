// GPT-2 model, scalar head, AdamW and checkpoints, against PyTorch fixtures
// (scripts/reference/gpt2_reference.py) and by self-consistency (padding, accumulation,
// resume) on the CPU backend.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/fileio.h"
#include "core/json.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "model/checkpoint.h"
#include "model/gpt.h"
#include "ops/ops.h"
#include "train/optimizer.h"

namespace hh {
namespace {

const std::string kFixtures = std::string(HH_SOURCE_DIR) + "/tests/fixtures/";

std::string temp_path(const std::string& name) {
  const std::string dir = std::string(HH_BINARY_DIR) + "/test_model_tmp";
  make_dirs(dir);
  return dir + "/" + name;
}

// Max |a-b| over max |ref| (a relative error per tensor: single elements near zero do
// not blow it up). Both zero -> 0.
double rel_err(const std::vector<float>& got, const std::vector<float>& ref) {
  double max_diff = 0, max_ref = 0;
  for (size_t i = 0; i < ref.size(); i++) {
    max_diff = std::max(max_diff, std::fabs(static_cast<double>(got[i]) - ref[i]));
    max_ref = std::max(max_ref, std::fabs(static_cast<double>(ref[i])));
  }
  if (max_ref == 0) return max_diff;
  return max_diff / max_ref;
}

// Expects `what` to throw hh::Error whose message contains every one of `needles`.
template <typename F>
void expect_error(F&& what, const std::vector<std::string>& needles) {
  try {
    what();
    ADD_FAILURE() << "expected hh::Error containing '" << needles[0] << "'";
  } catch (const Error& e) {
    for (const std::string& n : needles)
      EXPECT_NE(std::string(e.what()).find(n), std::string::npos)
          << "message '" << e.what() << "' lacks '" << n << "'";
  }
}

struct Fixture {
  SafeTensorsFile lm, grads, adamw, score;
  GPTConfig config;
  Batch batch;
};

// Loads the four reference files (shared by the tests).
const Fixture& fixture() {
  static std::unique_ptr<Fixture> f;
  if (!f) {
    f = std::make_unique<Fixture>();
    f->lm = SafeTensorsFile::load(kFixtures + "gpt2_lm.safetensors");
    f->grads = SafeTensorsFile::load(kFixtures + "gpt2_lm_grads.safetensors");
    f->adamw = SafeTensorsFile::load(kFixtures + "gpt2_adamw.safetensors");
    f->score = SafeTensorsFile::load(kFixtures + "gpt2_score.safetensors");
    f->config = GPTConfig::from_json(Json::parse(f->lm.metadata().at("config")), "fixture");
    const TensorInfo& tok = f->lm.info("tokens");
    f->batch.B = static_cast<int>(tok.shape[0]);
    f->batch.T = static_cast<int>(tok.shape[1]);
    f->batch.tokens = f->lm.read_i32("tokens");
    f->batch.lengths = f->lm.read_i32("lengths");
    f->batch.targets = f->lm.read_i32("targets");
  }
  return *f;
}

// A model with the fixture's weights (with the scalar head).
GPT fixture_model(Backend& be) {
  const Fixture& f = fixture();
  GPT model(be, f.config, true);
  for (const ParamTensor& t : model.param_tensors())
    model.set_param(t.name, f.lm.read_f32(t.name, t.shape));
  return model;
}

class ModelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!file_exists(kFixtures + "gpt2_lm.safetensors"))
      GTEST_FAIL() << "missing fixtures; run: /usr/bin/python3 "
                      "scripts/reference/gpt2_reference.py tests/fixtures";
    be = make_cpu_backend();
  }
  std::unique_ptr<Backend> be;
};

// ---------------------------------------------------------------------------------------
// Against PyTorch

TEST_F(ModelTest, LogitsAndLossMatchPyTorch) {
  const Fixture& f = fixture();
  GPT model = fixture_model(*be);
  const float loss = model.forward(f.batch);
  const float ref_loss = f.lm.read_f32("loss")[0];
  EXPECT_NEAR(loss, ref_loss, 1e-5 * std::fabs(ref_loss));
  EXPECT_EQ(model.target_count(), 22);

  const std::vector<float> losses = model.token_losses();
  const std::vector<float> ref_losses = f.lm.read_f32("token_losses");
  EXPECT_LT(rel_err(losses, ref_losses), 1e-5);

  // Logits of the real positions only (padded rows are not defined by the reference).
  const int T = f.batch.T, V = f.config.vocab_size;
  std::vector<int32_t> rows;
  for (int b = 0; b < f.batch.B; b++)
    for (int t = 0; t < f.batch.lengths[b]; t++) rows.push_back(b * T + t);
  const std::vector<float> logits = model.logits_rows(rows);
  const std::vector<float> ref_all = f.lm.read_f32("logits");
  std::vector<float> ref;
  for (int32_t r : rows)
    ref.insert(ref.end(), ref_all.begin() + r * V, ref_all.begin() + (r + 1) * V);
  EXPECT_LT(rel_err(logits, ref), 1e-5);
}

// The fixture's weights as a Hugging Face GPT2LMHeadModel file (written by the reference
// script: HF names, Conv1D matrices [IC][OC], the vocabulary unpadded) import to exactly
// the fixture's parameters, and so to PyTorch's losses. Export then gives back that file.
TEST_F(ModelTest, HuggingFaceFileImportsToThePyTorchModel) {
  const Fixture& f = fixture();
  const SafeTensorsFile hf = SafeTensorsFile::load(kFixtures + "gpt2_hf.safetensors");
  GPT model(*be, f.config, false);
  model.import_hf_gpt2(hf);
  for (const ParamTensor& t : model.param_tensors())
    EXPECT_EQ(model.get_param(t.name), f.lm.read_f32(t.name, t.shape)) << t.name;
  EXPECT_LT(rel_err(std::vector<float>{model.forward(f.batch)}, f.lm.read_f32("loss")), 1e-5);
  EXPECT_LT(rel_err(model.token_losses(), f.lm.read_f32("token_losses")), 1e-5);

  const std::string path = temp_path("hf_again.safetensors");
  model.export_hf_gpt2(path);
  const SafeTensorsFile again = SafeTensorsFile::load(path);
  for (const auto& [name, info] : hf.tensors()) {
    ASSERT_EQ(again.info(name).shape, info.shape) << name;
    EXPECT_EQ(again.read_f32(name), hf.read_f32(name)) << name;
  }
  const Json config = Json::parse(model.hf_config_json());
  EXPECT_EQ(config.at("n_layer").as_int(), f.config.n_layer);
  EXPECT_EQ(config.at("n_head").as_int(), f.config.n_head);
  EXPECT_EQ(config.at("n_embd").as_int(), f.config.n_embd);
  EXPECT_EQ(config.at("n_positions").as_int(), f.config.max_seq_len);
  EXPECT_EQ(config.at("vocab_size").as_int(), f.config.vocab_size);
}

TEST_F(ModelTest, EveryGradientMatchesPyTorch) {
  const Fixture& f = fixture();
  GPT model = fixture_model(*be);
  model.forward(f.batch);
  model.backward();
  double worst = 0;
  std::string worst_name;
  for (const ParamTensor& t : model.param_tensors()) {
    const std::vector<float> ref = f.grads.read_f32("grad." + t.name, t.shape);
    const double err = rel_err(model.get_grad(t.name), ref);
    // fp32 against fp64 through two layers: observed ~1e-6; 1e-4 leaves room for other
    // summation orders (blocked matmuls, threads).
    EXPECT_LT(err, 1e-4) << t.name;
    if (err > worst) worst = err, worst_name = t.name;
  }
  std::printf("worst gradient rel err %.3g (%s)\n", worst, worst_name.c_str());
  // A gradient that is wrong by a constant factor or a sign must not pass.
  EXPECT_GT(rel_err(model.get_grad("transformer.h.0.ln_1.bias"),
                    f.grads.read_f32("grad.transformer.h.1.ln_1.bias")),
            1e-2);
}

TEST_F(ModelTest, AdamWMatchesPyTorch) {
  const Fixture& f = fixture();
  GPT model = fixture_model(*be);
  AdamWConfig cfg;
  cfg.lr = f.adamw.read_f32("lr")[0];
  cfg.weight_decay = f.adamw.read_f32("weight_decay")[0];
  cfg.grad_clip = f.adamw.read_f32("grad_clip")[0];
  AdamW opt(model, cfg);
  // Two steps on the reference gradients, the second scaled down: the first is clipped,
  // the second not, and the moments mix two magnitudes (a constant gradient would hide
  // beta1, beta2 and the clip from Adam's update).
  const std::vector<float> scales = f.adamw.read_f32("grad_scales"),
                           norms = f.adamw.read_f32("grad_norms");
  ASSERT_EQ(scales.size(), 2u);
  ASSERT_GT(norms[0], cfg.grad_clip);
  ASSERT_LT(norms[1], cfg.grad_clip);
  for (int step = 0; step < 2; step++) {
    for (const ParamTensor& t : model.param_tensors()) {
      std::vector<float> g = f.grads.read_f32("grad." + t.name, t.shape);
      for (float& x : g) x *= scales[step];
      be->copy_to_device(model.grads().data() + t.offset, g.data(), g.size() * sizeof(float));
    }
    const float norm = opt.clip_and_step(cfg.lr);
    EXPECT_NEAR(norm, norms[step], 1e-5 * norm);
  }
  EXPECT_EQ(opt.step, 2);
  double worst = 0;
  for (const ParamTensor& t : model.param_tensors()) {
    const std::vector<float> ref = f.adamw.read_f32(t.name, t.shape);
    const std::vector<float> before = f.lm.read_f32(t.name, t.shape);
    const std::vector<float> got = model.get_param(t.name);
    // Compare the change made by the optimizer, ~2e-3 per element. The weights (up to
    // ~1.5) are stored as float32, ulp ~1.2e-7, so the change carries a few 1e-4 of
    // rounding relative to its size (observed 4e-4).
    std::vector<float> d_got(got.size()), d_ref(got.size());
    for (size_t i = 0; i < got.size(); i++)
      d_got[i] = got[i] - before[i], d_ref[i] = ref[i] - before[i];
    const double err = rel_err(d_got, d_ref);
    EXPECT_LT(err, 2e-3) << t.name;
    worst = std::max(worst, err);
  }
  std::printf("worst AdamW update rel err %.3g\n", worst);
}

TEST_F(ModelTest, ScalarHeadMatchesPyTorch) {
  const Fixture& f = fixture();
  GPT model = fixture_model(*be);
  const std::vector<int32_t> rows = f.score.read_i32("rows");
  const std::vector<float> scores = model.forward_scores(f.batch, rows);
  EXPECT_LT(rel_err(scores, f.score.read_f32("scores")), 1e-5);
  model.backward_scores(f.score.read_f32("dscores"));
  for (const ParamTensor& t : model.param_tensors())
    EXPECT_LT(rel_err(model.get_grad(t.name), f.score.read_f32("grad." + t.name, t.shape)), 1e-4)
        << t.name;
}

// ---------------------------------------------------------------------------------------
// Self-consistency

// The shorter sequence (length 11) alone, at T=11 and padded to T=16, gives the same
// losses, logits and score as next to the longer one.
TEST_F(ModelTest, PaddingNeverChangesAResult) {
  const Fixture& f = fixture();
  GPT model = fixture_model(*be);
  const int T = f.batch.T, V = f.config.vocab_size, len = f.batch.lengths[1];
  ASSERT_LT(len, T);
  model.forward(f.batch);
  const std::vector<float> batched_losses = model.token_losses();
  std::vector<int32_t> rows;
  for (int t = 0; t < len; t++) rows.push_back(T + t);
  const std::vector<float> batched_logits = model.logits_rows(rows);
  const float batched_score = model.forward_scores(f.batch, {T + len - 1})[0];

  for (int alone_T : {len, T}) {
    Batch one;
    one.B = 1;
    one.T = alone_T;
    one.lengths = {len};
    one.tokens.assign(alone_T, 7);  // garbage in the padding must not matter
    one.targets.assign(alone_T, 3);
    for (int t = 0; t < len; t++) {
      one.tokens[t] = f.batch.tokens[T + t];
      one.targets[t] = f.batch.targets[T + t];
    }
    model.forward(one);
    const std::vector<float> losses = model.token_losses();
    std::vector<int32_t> own_rows;
    for (int t = 0; t < len; t++) {
      EXPECT_NEAR(losses[t], batched_losses[T + t], 1e-5) << "T=" << alone_T << " t=" << t;
      own_rows.push_back(t);
    }
    for (int t = len; t < alone_T; t++) EXPECT_EQ(losses[t], 0.0f) << "padding has no loss";
    const std::vector<float> logits = model.logits_rows(own_rows);
    for (size_t i = 0; i < logits.size(); i++)
      ASSERT_NEAR(logits[i], batched_logits[i], 1e-5) << "T=" << alone_T << " index " << i / V;
    const float score = model.forward_scores(one, {len - 1})[0];
    EXPECT_NEAR(score, batched_score, 1e-5) << "T=" << alone_T;
  }
}

// Two half batches with backward(count_i/total) accumulate the gradient of one batch.
TEST_F(ModelTest, GradientAccumulationEqualsFullBatch) {
  const Fixture& f = fixture();
  GPT full = fixture_model(*be);
  full.forward(f.batch);
  full.backward();

  GPT halves = fixture_model(*be);
  const int T = f.batch.T;
  int64_t counts[2];
  Batch half[2];
  for (int b = 0; b < 2; b++) {
    half[b].B = 1;
    half[b].T = T;
    half[b].lengths = {f.batch.lengths[b]};
    half[b].tokens.assign(f.batch.tokens.begin() + b * T, f.batch.tokens.begin() + (b + 1) * T);
    half[b].targets.assign(f.batch.targets.begin() + b * T, f.batch.targets.begin() + (b + 1) * T);
    counts[b] = 0;
    for (int32_t t : half[b].targets) counts[b] += t >= 0;
  }
  ASSERT_NE(counts[0], counts[1]) << "unequal halves make the weighting matter";
  for (int b = 0; b < 2; b++) {
    halves.forward(half[b]);
    EXPECT_EQ(halves.target_count(), counts[b]);
    halves.backward(static_cast<float>(counts[b]) / static_cast<float>(counts[0] + counts[1]));
  }
  for (const ParamTensor& t : full.param_tensors())
    EXPECT_LT(rel_err(halves.get_grad(t.name), full.get_grad(t.name)), 1e-5) << t.name;

  // zero_grad clears everything.
  halves.zero_grad();
  std::vector<float> g(halves.grads().size());
  be->copy_to_host(g.data(), halves.grads().data(), halves.grads().bytes());
  EXPECT_TRUE(std::all_of(g.begin(), g.end(), [](float x) { return x == 0.0f; }));
}

// Weighted mean: weights 2 on one sequence's tokens equal that sequence counted twice.
TEST_F(ModelTest, LossWeightsGiveWeightedMean) {
  const Fixture& f = fixture();
  GPT model = fixture_model(*be);
  Batch b = f.batch;
  model.forward(b);
  const std::vector<float> l = model.token_losses();
  b.loss_weights.assign(b.B * b.T, 1.0f);
  for (int t = 0; t < b.T; t++) b.loss_weights[t] = 2.0f;
  const float weighted = model.forward(b);
  double num = 0, den = 0;
  for (int i = 0; i < b.B * b.T; i++) {
    if (b.targets[i] < 0 || (i % b.T) >= b.lengths[i / b.T]) continue;
    num += b.loss_weights[i] * l[i];
    den += b.loss_weights[i];
  }
  EXPECT_NEAR(weighted, num / den, 1e-6);
  EXPECT_DOUBLE_EQ(model.weight_sum(), den);
}

// Finite differences on the per-token backward (the PPO path): d/dθ Σ cᵢ·lᵢ.
TEST_F(ModelTest, TokenLossBackwardMatchesFiniteDifferences) {
  const Fixture& f = fixture();
  GPT model = fixture_model(*be);
  const size_t N = static_cast<size_t>(f.batch.B) * f.batch.T;
  std::vector<float> c(N);
  Rng rng(5);
  for (float& x : c) x = rng.normal();
  auto objective = [&]() {
    model.forward(f.batch);
    const std::vector<float> l = model.token_losses();
    double s = 0;
    for (size_t i = 0; i < N; i++) s += static_cast<double>(c[i]) * l[i];
    return s;
  };
  objective();
  model.zero_grad();
  model.backward_token_losses(c);
  const std::string name = "transformer.h.1.mlp.c_fc.bias";
  const std::vector<float> grad = model.get_grad(name);
  std::vector<float> p = model.get_param(name);
  for (int i : {0, 17, 100}) {
    const float h = 1e-2f, orig = p[i];
    p[i] = orig + h;
    model.set_param(name, p);
    const double up = objective();
    p[i] = orig - h;
    model.set_param(name, p);
    const double down = objective();
    p[i] = orig;
    model.set_param(name, p);
    EXPECT_NEAR(grad[i], (up - down) / (2 * h), 2e-3 * std::max(1.0f, std::fabs(grad[i])))
        << name << "[" << i << "]";
  }
}

// ---------------------------------------------------------------------------------------
// Configuration, layout, init, errors

TEST(GPTConfigTest, PresetsValidationAndJson) {
  GPTConfig c = GPTConfig::preset("gpt2-124m", 50257);
  EXPECT_EQ(c.n_layer, 12);
  EXPECT_EQ(c.n_embd, 768);
  EXPECT_EQ(c.padded_vocab_size, 50304);
  EXPECT_EQ(GPTConfig::preset("tiny", 64).padded_vocab_size, 64);
  EXPECT_EQ(GPTConfig::preset("small", 65).padded_vocab_size, 128);
  EXPECT_EQ(GPTConfig::from_json(c.to_json()), c);
  expect_error([] { GPTConfig::preset("huge"); }, {"huge"});
  expect_error([] { GPTConfig::preset("tiny").validate(); }, {"vocab_size"});
  GPTConfig bad = GPTConfig::preset("tiny", 100);
  bad.n_head = 3;
  expect_error([&] { bad.validate(); }, {"n_embd=64", "n_head=3"});
  Json j = c.to_json();
  j.as_object().erase("n_head");
  expect_error([&] { GPTConfig::from_json(j, "ckpt.safetensors"); },
               {"ckpt.safetensors", "n_head"});
}

// A preference model has a scalar head and is not PPO's value model (same shape, stage
// "ppo"): a value model passed as --pm would score with returns, not preferences.
TEST(CheckpointRoles, PreferenceModelIsNotALanguageOrValueModel) {
  auto be = make_cpu_backend();
  GPT pm(*be, GPTConfig::preset("tiny", 100), true), lm(*be, GPTConfig::preset("tiny", 100), false);
  check_preference_model(pm, {{"stage", "pm"}}, "pm.safetensors");
  check_preference_model(pm, {}, "hf-or-test.safetensors");  // no stage: judged by the head
  expect_error(
      [&] {
        check_preference_model(pm, {{"stage", "ppo"}}, "run/value.safetensors");
      },
      {"run/value.safetensors", "PPO value model"});
  expect_error(
      [&] {
        check_preference_model(lm, {{"stage", "sft"}}, "sft.safetensors");
      },
      {"sft.safetensors", "no scalar head"});
  check_language_model(lm, "sft.safetensors");
  expect_error([&] { check_language_model(pm, "--model pm.safetensors"); },
               {"--model pm.safetensors", "not a language model"});
}

TEST(GPTLayoutTest, DecayedTensorsAreContiguousAndFirst) {
  auto be = make_cpu_backend();
  GPT model(*be, GPTConfig::preset("tiny", 100), true);
  size_t seen = 0;
  for (const ParamTensor& t : model.param_tensors()) {
    const bool matrix = t.shape.size() == 2;
    EXPECT_EQ(t.decay, matrix) << t.name;
    if (t.decay)
      EXPECT_LE(t.offset + t.numel, model.decay_size()) << t.name;
    else
      EXPECT_GE(t.offset, model.decay_size()) << t.name;
    EXPECT_LE(t.offset + t.numel, model.params().size());
    EXPECT_EQ(t.offset % 64, 0u);
    seen += t.numel;
  }
  EXPECT_EQ(seen, model.num_parameters());
  EXPECT_EQ(model.param("transformer.wte.weight").shape, (std::vector<int64_t>{128, 64}));
  EXPECT_EQ(model.param("transformer.h.1.attn.c_attn.weight").shape,
            (std::vector<int64_t>{192, 64}));
  EXPECT_EQ(model.param("score.weight").shape, (std::vector<int64_t>{1, 64}));
  GPT lm(*be, GPTConfig::preset("tiny", 100), false);
  expect_error([&] { lm.param("score.weight"); }, {"score.weight", "scalar head"});
  // 2 layers of 12·C² + 13·C, embeddings 128·C + 256·C, ln_f 2·C
  EXPECT_EQ(lm.num_parameters(), 2u * (12 * 64 * 64 + 13 * 64) + 128 * 64 + 256 * 64 + 128);
}

TEST(GPTInitTest, DeterministicGpt2Init) {
  auto be = make_cpu_backend();
  const GPTConfig cfg = GPTConfig::preset("tiny", 100);
  GPT a(*be, cfg, true), b(*be, cfg, true), c(*be, cfg, true);
  a.init_random(42);
  b.init_random(42);
  c.init_random(43);
  std::vector<float> pa(a.params().size()), pb(pa.size()), pc(pa.size());
  be->copy_to_host(pa.data(), a.params().data(), a.params().bytes());
  be->copy_to_host(pb.data(), b.params().data(), b.params().bytes());
  be->copy_to_host(pc.data(), c.params().data(), c.params().bytes());
  EXPECT_EQ(pa, pb);
  EXPECT_NE(pa, pc);
  auto stddev = [](const std::vector<float>& x) {
    double s = 0;
    for (float v : x) s += static_cast<double>(v) * v;
    return std::sqrt(s / x.size());
  };
  // Every tensor, by its role: LayerNorm gains 1, biases 0, the two projections into the
  // residual stream 0.02/√(2·layers) = 0.01, every other matrix 0.02 (wte over its real
  // rows; the padded ones stay 0).
  const std::vector<float> wte = a.get_param("transformer.wte.weight");
  for (size_t i = 100 * 64; i < wte.size(); i++) ASSERT_EQ(wte[i], 0.0f) << "padded row";
  auto ends_with = [](const std::string& s, const std::string& tail) {
    return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
  };
  int checked = 0;
  for (const auto& t : a.param_tensors()) {
    std::vector<float> w = a.get_param(t.name);
    if (t.name == "transformer.wte.weight") w.resize(100 * 64);
    if (ends_with(t.name, "ln_1.weight") || ends_with(t.name, "ln_2.weight") ||
        ends_with(t.name, "ln_f.weight")) {
      for (float v : w) ASSERT_EQ(v, 1.0f) << t.name;
    } else if (ends_with(t.name, "bias")) {
      for (float v : w) ASSERT_EQ(v, 0.0f) << t.name;
    } else {
      // Four standard errors of a sample std (σ/√(2n)): tight for the 64×64 matrices,
      // looser for the 64 entries of score.weight.
      const double want = ends_with(t.name, "c_proj.weight") ? 0.01 : 0.02;
      EXPECT_NEAR(stddev(w), want, 4 * want / std::sqrt(2.0 * w.size())) << t.name;
    }
    ++checked;
  }
  EXPECT_EQ(checked, 2 * 12 + 6);  // 12 per layer; wte, wpe, ln_f and score (2 each)
}

// bytes_to_train is what a first step allocates (the CPU backend allocates nothing else
// through alloc_bytes), and nothing once the buffers have that size.
TEST(GPTMemoryTest, BytesToTrainIsWhatAStepAllocates) {
  for (bool scalar_head : {false, true}) {
    auto be = make_cpu_backend();
    GPTConfig cfg = GPTConfig::preset("tiny", 100);
    cfg.max_seq_len = 16;
    GPT model(*be, cfg, scalar_head);
    model.init_random(1);
    const int B = 3, T = 12;
    Batch b;
    b.B = B, b.T = T;
    b.tokens.assign(B * T, 1);
    b.targets.assign(B * T, 2);
    b.lengths = {12, 7, 1};
    const std::vector<int32_t> rows = {11, T + 6, 2 * T};  // each sequence's last token
    const size_t before = be->peak_bytes();
    const size_t need = scalar_head ? model.bytes_to_train(B, T, static_cast<int>(rows.size()))
                                    : model.bytes_to_train(B, T);
    EXPECT_GT(need, 0u);
    if (scalar_head) {
      model.forward_scores(b, rows);
      model.backward_scores({1.0f, -1.0f, 0.5f});
    } else {
      model.forward(b);
      model.backward();
    }
    // The CPU backend rounds each allocation up to 64 bytes (about 30 buffers here).
    const size_t used = be->peak_bytes() - before;
    EXPECT_GE(used, need) << (scalar_head ? "scalar head" : "LM head");
    EXPECT_LT(used, need + 64 * 32) << (scalar_head ? "scalar head" : "LM head");
    EXPECT_EQ(scalar_head ? model.bytes_to_train(B, T, 3) : model.bytes_to_train(B, T), 0u);
    // Forward only needs less; a larger batch needs more again.
    EXPECT_GT(model.bytes_to_train(2 * B, T, scalar_head ? 3 : 0),
              model.bytes_to_train(2 * B, T, scalar_head ? 3 : 0, /*with_backward=*/false));
  }
}

TEST(GPTErrorTest, BadBatchesAreClearErrors) {
  auto be = make_cpu_backend();
  GPTConfig cfg = GPTConfig::preset("tiny", 100);
  cfg.max_seq_len = 8;
  GPT model(*be, cfg, false);
  model.init_random(1);
  auto make = [](int B, int T) {
    Batch b;
    b.B = B, b.T = T;
    b.tokens.assign(B * T, 1);
    b.targets.assign(B * T, 2);
    b.lengths.assign(B, T);
    return b;
  };
  EXPECT_NO_THROW(model.forward(make(2, 8)));
  expect_error([&] { model.forward(make(1, 9)); }, {"T=9", "max_seq_len=8"});
  Batch b = make(2, 4);
  b.lengths[1] = 0;
  expect_error([&] { model.forward(b); }, {"lengths[1]=0"});
  b.lengths[1] = 5;
  expect_error([&] { model.forward(b); }, {"lengths[1]=5"});
  b = make(2, 4);
  b.tokens[5] = 100;
  expect_error([&] { model.forward(b); }, {"token id 100", "b=1, t=1"});
  b = make(2, 4);
  b.tokens[5] = -3;
  expect_error([&] { model.forward(b); }, {"token id -3"});
  b = make(2, 4);
  b.targets[2] = 100;
  expect_error([&] { model.forward(b); }, {"target 100"});
  b = make(2, 4);
  b.tokens.pop_back();
  expect_error([&] { model.forward(b); }, {"tokens has 7"});
  b = make(2, 4);
  b.targets.clear();
  expect_error([&] { model.forward(b); }, {"needs targets"});
  expect_error([&] { model.forward_scores(make(1, 4), {0}); }, {"scalar head"});
  GPT pm(*be, cfg, true);
  b = make(2, 4);
  b.lengths[0] = 2;
  expect_error([&] { pm.forward_scores(b, {2}); }, {"row 2", "padded"});
  expect_error([&] { pm.forward_scores(b, {8}); }, {"row 8"});
  expect_error([&] { pm.backward(); }, {"backward()"});
  model.forward(make(1, 4));
  model.backward();
  expect_error([&] { model.backward(); }, {"once per forward"});
  // A batch that fails validation leaves nothing to backpropagate or read.
  model.forward(make(1, 4));
  expect_error([&] { model.forward(make(1, 9)); }, {"T=9"});
  expect_error([&] { model.backward(); }, {"backward()"});
  expect_error([&] { model.token_losses(); }, {"token_losses"});
}

// ---------------------------------------------------------------------------------------
// Optimizer

TEST(OptimizerTest, LearningRateSchedule) {
  EXPECT_FLOAT_EQ(lr_at(0, 1.0f, 10, 110, 0.1f), 0.1f);
  EXPECT_FLOAT_EQ(lr_at(9, 1.0f, 10, 110, 0.1f), 1.0f);
  EXPECT_FLOAT_EQ(lr_at(10, 1.0f, 10, 110, 0.1f), 1.0f);
  EXPECT_NEAR(lr_at(60, 1.0f, 10, 110, 0.1f), 0.55f, 1e-6);  // halfway down the cosine
  EXPECT_NEAR(lr_at(110, 1.0f, 10, 110, 0.1f), 0.1f, 1e-6);
  EXPECT_NEAR(lr_at(500, 1.0f, 10, 110, 0.1f), 0.1f, 1e-6);
  EXPECT_FLOAT_EQ(lr_at(0, 1.0f, 0, 100, 0.0f), 1.0f);
}

TEST(OptimizerTest, NonFiniteGradientSkipsTheStep) {
  auto be = make_cpu_backend();
  GPT model(*be, GPTConfig::preset("tiny", 100), false);
  model.init_random(3);
  AdamW opt(model, AdamWConfig{});
  std::vector<float> before(model.params().size());
  be->copy_to_host(before.data(), model.params().data(), model.params().bytes());
  std::vector<float> g = model.get_grad("transformer.ln_f.bias");
  g[3] = NAN;
  be->copy_to_device(model.grad_data("transformer.ln_f.bias"), g.data(), g.size() * 4);
  EXPECT_TRUE(std::isnan(opt.clip_and_step(1e-3f)));
  EXPECT_EQ(opt.step, 0);
  std::vector<float> after(before.size());
  be->copy_to_host(after.data(), model.params().data(), model.params().bytes());
  EXPECT_EQ(before, after);
}

// ---------------------------------------------------------------------------------------
// Checkpoints

Batch random_batch(Rng& rng, int B, int T, int V) {
  Batch b;
  b.B = B, b.T = T;
  for (int i = 0; i < B; i++) b.lengths.push_back(1 + static_cast<int>(rng.below(T)));
  for (int i = 0; i < B * T; i++) {
    b.tokens.push_back(static_cast<int32_t>(rng.below(V)));
    b.targets.push_back(static_cast<int32_t>(rng.below(V)));
  }
  return b;
}

std::vector<float> all_params(const GPT& m) {
  std::vector<float> p(m.params().size());
  m.backend().copy_to_host(p.data(), m.params().data(), m.params().bytes());
  return p;
}

void train_step(GPT& model, AdamW& opt, Rng& rng) {
  Batch b = random_batch(rng, 2, 12, model.config().vocab_size);
  model.zero_grad();
  model.forward(b);
  model.backward();
  opt.clip_and_step(lr_at(opt.step, 1e-3f, 2, 10, 0.1f));
}

// Save at step 2, resume in fresh objects: step 3 gives bit-identical parameters.
TEST(CheckpointTest, ResumeIsBitExact) {
  auto be = make_cpu_backend();
  GPTConfig cfg = GPTConfig::preset("tiny", 100);
  cfg.max_seq_len = 16;
  GPT model(*be, cfg, false);
  model.init_random(11);
  AdamW opt(model, AdamWConfig{});
  Rng rng(99);
  train_step(model, opt, rng);
  train_step(model, opt, rng);
  const std::string model_path = temp_path("resume_model.safetensors");
  const std::string opt_path = temp_path("resume_opt.safetensors");
  save_model(model_path, model, {{"stage", "sft"}, {"step", "2"}, {"tokenizer", "abc123"}});
  TrainState state;
  state.rng_state = rng.state();
  state.data_cursor = {7, 0xfedcba9876543210ull};
  state.extra = {{"kl_coef", 0.1 / 3}, {"reward_mean", -1.5e-300}};
  state.extra_u64 = {{"tokens_seen", 12345678901234ull}};
  save_optimizer(opt_path, opt, state);
  train_step(model, opt, rng);
  const std::vector<float> uninterrupted = all_params(model);

  std::map<std::string, std::string> meta;
  GPT resumed = load_model(model_path, *be, &meta);
  EXPECT_EQ(meta.at("stage"), "sft");
  EXPECT_EQ(meta.at("tokenizer"), "abc123");
  EXPECT_EQ(resumed.config(), cfg);
  EXPECT_FALSE(resumed.has_scalar_head());
  AdamW resumed_opt(resumed, AdamWConfig{});
  TrainState loaded;
  load_optimizer(opt_path, resumed_opt, &loaded);
  EXPECT_EQ(resumed_opt.step, 2);
  EXPECT_EQ(loaded.data_cursor, state.data_cursor);
  EXPECT_EQ(loaded.extra, state.extra);  // exact doubles
  EXPECT_EQ(loaded.extra_u64, state.extra_u64);
  Rng resumed_rng;
  resumed_rng.set_state(loaded.rng_state);
  train_step(resumed, resumed_opt, resumed_rng);
  EXPECT_EQ(all_params(resumed), uninterrupted);
  EXPECT_EQ(read_checkpoint_config(model_path), cfg);
}

// Trainer values that are not finite numbers (strtod reads "nan" and "inf") and a step past
// int64 are refused, naming the key: a resumed PPO run would otherwise go on with a NaN KL
// coefficient, or a negative step (found by fuzz_optimizer, docs/fuzzing.md).
TEST(CheckpointTest, DamagedTrainerStateIsRefused) {
  auto be = make_cpu_backend();
  GPT model(*be, GPTConfig::preset("tiny", 100), false);
  AdamW opt(model, AdamWConfig{});
  TrainState state;
  state.rng_state = {1, 2, 3, 4};
  state.extra = {{"kl_coef", 0.05}};
  const std::string good = temp_path("trainer_state_good.safetensors");
  save_optimizer(good, opt, state);
  // The same file with one metadata value replaced.
  auto with_meta = [&](const std::string& key, const std::string& value) {
    const SafeTensorsFile f = SafeTensorsFile::load(good);
    SafeTensorsWriter w;
    for (const auto& [k, v] : f.metadata()) w.set_metadata(k, k == key ? value : v);
    for (const char* name : {"m", "v"})
      w.add(name, DType::F32, f.info(name).shape, f.data(name),
            f.info(name).end - f.info(name).begin);
    const std::string path = temp_path("trainer_state_" + key + ".safetensors");
    w.save(path);
    return path;
  };
  for (const char* bad : {"nan", "-inf", "inf", "1e999"}) {
    const std::string path = with_meta("extra.kl_coef", bad);
    expect_error([&] { load_optimizer(path, opt, &state); },
                 {path, "metadata extra.kl_coef", "finite number", bad});
  }
  const std::string far = with_meta("step", "9223372036854775808");
  expect_error([&] { load_optimizer(far, opt, &state); }, {far, "metadata step", "out of range"});
  // The largest step and tiny values still load.
  load_optimizer(with_meta("step", "9223372036854775807"), opt, &state);
  EXPECT_EQ(opt.step, INT64_MAX);
  load_optimizer(with_meta("extra.kl_coef", "4.9406564584124654e-324"), opt, &state);
  EXPECT_EQ(state.extra.at("kl_coef"), 4.9406564584124654e-324);
}

// An LM checkpoint initialises a PM's trunk; its head keeps its own init.
TEST(CheckpointTest, TrunkOnlyLoadsIntoScalarHeadModel) {
  auto be = make_cpu_backend();
  GPTConfig cfg = GPTConfig::preset("tiny", 100);
  GPT lm(*be, cfg, false);
  lm.init_random(5);
  const std::string path = temp_path("trunk_lm.safetensors");
  save_model(path, lm);
  GPT pm(*be, cfg, true);
  pm.init_random(6);
  const std::vector<float> head = pm.get_param("score.weight");
  expect_error([&] { load_weights_into(pm, path); }, {path, "missing tensor 'score.weight'"});
  load_weights_into(pm, path, true);
  EXPECT_EQ(pm.get_param("transformer.h.1.mlp.c_fc.weight"),
            lm.get_param("transformer.h.1.mlp.c_fc.weight"));
  EXPECT_EQ(pm.get_param("score.weight"), head);
  // And the PM's file into an LM: only with trunk_only.
  const std::string pm_path = temp_path("trunk_pm.safetensors");
  save_model(pm_path, pm);
  expect_error([&] { load_weights_into(lm, pm_path); }, {pm_path, "unexpected tensor 'score."});
  EXPECT_NO_THROW(load_weights_into(lm, pm_path, true));
}

std::vector<uint8_t> slurp(const std::string& path) { return read_file_bytes(path); }
void spit(const std::string& path, const std::vector<uint8_t>& bytes) {
  write_file_atomic(path, bytes.data(), bytes.size());
}

TEST(CheckpointTest, CorruptOrMismatchedFilesAreRejected) {
  auto be = make_cpu_backend();
  GPTConfig cfg = GPTConfig::preset("tiny", 100);
  GPT model(*be, cfg, false);
  model.init_random(8);
  const std::string good = temp_path("good.safetensors");
  save_model(good, model, {{"stage", "sft"}});
  const std::vector<uint8_t> bytes = slurp(good);
  const std::vector<float> before = all_params(model);

  // Truncated.
  const std::string truncated = temp_path("truncated.safetensors");
  spit(truncated, std::vector<uint8_t>(bytes.begin(), bytes.end() - 100));
  expect_error([&] { load_model(truncated, *be); }, {truncated});
  expect_error([&] { load_weights_into(model, truncated); }, {truncated});
  // Header length and header JSON flipped.
  const std::string flipped = temp_path("flipped.safetensors");
  std::vector<uint8_t> f = bytes;
  f[3] ^= 0x40;
  spit(flipped, f);
  expect_error([&] { load_model(flipped, *be); }, {flipped});
  f = bytes;
  f[8] ^= 0x01;  // '{' -> 'z'
  spit(flipped, f);
  expect_error([&] { load_model(flipped, *be); }, {flipped});

  // Rewrites the checkpoint with one change made by `edit` on (name, shape, values).
  SafeTensorsFile src = SafeTensorsFile::load(good);
  auto rewrite = [&](const std::string& path, auto edit) {
    SafeTensorsWriter w;
    for (const auto& [k, v] : src.metadata()) w.set_metadata(k, v);
    for (const ParamTensor& t : model.param_tensors()) {
      std::vector<int64_t> shape = t.shape;
      std::vector<float> values = src.read_f32(t.name);
      if (!edit(w, t.name, shape, values)) continue;
      w.add_f32(t.name, shape, values.data());
    }
    w.save(path);
  };
  const std::string missing = temp_path("missing.safetensors");
  rewrite(missing, [](SafeTensorsWriter&, const std::string& name, auto&, auto&) {
    return name != "transformer.h.1.ln_2.bias";
  });
  expect_error([&] { load_model(missing, *be); }, {missing, "transformer.h.1.ln_2.bias"});
  const std::string extra = temp_path("extra.safetensors");
  rewrite(extra, [](SafeTensorsWriter& w, const std::string& name, auto&, auto&) {
    if (name == "transformer.ln_f.bias") {
      float x = 1;
      w.add_f32("transformer.h.2.ln_1.bias", {1}, &x);
    }
    return true;
  });
  expect_error([&] { load_model(extra, *be); }, {extra, "unexpected tensor 'transformer.h.2"});
  // The shape another config (n_embd 32) would have.
  const std::string shape = temp_path("shape.safetensors");
  rewrite(shape, [](SafeTensorsWriter&, const std::string& name, std::vector<int64_t>& s,
                    std::vector<float>& v) {
    if (name == "transformer.h.0.mlp.c_fc.weight") s = {128, 32}, v.resize(128 * 32);
    return true;
  });
  expect_error([&] { load_model(shape, *be); },
               {shape, "transformer.h.0.mlp.c_fc.weight", "[128,32]", "[256,64]"});
  const std::string dtype = temp_path("dtype.safetensors");
  rewrite(dtype, [](SafeTensorsWriter& w, const std::string& name, auto& s, auto& v) {
    if (name != "transformer.wpe.weight") return true;
    std::vector<int32_t> ints(v.size(), 0);
    w.add(name, DType::I32, s, ints.data(), ints.size() * 4);
    return false;
  });
  expect_error([&] { load_model(dtype, *be); }, {dtype, "transformer.wpe.weight", "I32"});

  // Config mismatch: a checkpoint of another config into this model, and vice versa.
  GPTConfig other = cfg;
  other.n_head = 2;  // same shapes, different model
  GPT other_model(*be, other, false);
  expect_error([&] { load_weights_into(other_model, good); },
               {good, "config mismatch", "n_head=4"});
  GPTConfig wider = GPTConfig::preset("small", 100);
  GPT wide(*be, wider, false);
  expect_error([&] { load_weights_into(wide, good); }, {good, "config mismatch"});
  // A file without hh metadata.
  const std::string bare = temp_path("bare.safetensors");
  SafeTensorsWriter w;
  float x = 0;
  w.add_f32("x", {1}, &x);
  w.save(bare);
  expect_error([&] { load_model(bare, *be); }, {bare, "config"});

  // Nothing above changed the model.
  EXPECT_EQ(all_params(model), before);

  // Optimizer state of another model.
  AdamW opt(model, AdamWConfig{});
  const std::string opt_path = temp_path("opt.safetensors");
  save_optimizer(opt_path, opt, TrainState{});
  AdamW other_opt(other_model, AdamWConfig{});
  expect_error([&] { load_optimizer(opt_path, other_opt, nullptr); }, {opt_path, "another model"});
  const std::vector<uint8_t> ob = slurp(opt_path);
  spit(opt_path, std::vector<uint8_t>(ob.begin(), ob.end() - 1));
  expect_error([&] { load_optimizer(opt_path, opt, nullptr); }, {opt_path});
}

// ---------------------------------------------------------------------------------------
// Hugging Face interop

TEST(HuggingFaceTest, ExportImportRoundTripWithConv1DLayout) {
  auto be = make_cpu_backend();
  GPTConfig cfg = GPTConfig::preset("tiny", 100);
  cfg.max_seq_len = 32;
  GPT model(*be, cfg, true);
  model.init_random(21);
  const std::string path = temp_path("hf_export.safetensors");
  model.export_hf_gpt2(path);

  SafeTensorsFile hf = SafeTensorsFile::load(path);
  EXPECT_EQ(hf.metadata().at("format"), "pt");
  EXPECT_EQ(hf.info("transformer.wte.weight").shape, (std::vector<int64_t>{100, 64}));
  EXPECT_EQ(hf.info("transformer.wpe.weight").shape, (std::vector<int64_t>{32, 64}));
  EXPECT_EQ(hf.info("transformer.h.0.attn.c_attn.weight").shape, (std::vector<int64_t>{64, 192}));
  EXPECT_EQ(hf.info("transformer.h.0.mlp.c_fc.weight").shape, (std::vector<int64_t>{64, 256}));
  EXPECT_EQ(hf.info("transformer.h.0.mlp.c_proj.weight").shape, (std::vector<int64_t>{256, 64}));
  EXPECT_EQ(hf.info("transformer.h.1.attn.c_attn.bias").shape, (std::vector<int64_t>{192}));
  EXPECT_EQ(hf.info("score.weight").shape, (std::vector<int64_t>{1, 64}));
  // Conv1D is [IC][OC]: hf[i][o] == ours[o][i].
  const std::vector<float> ours = model.get_param("transformer.h.1.mlp.c_fc.weight");
  const std::vector<float> theirs = hf.read_f32("transformer.h.1.mlp.c_fc.weight");
  for (int o : {0, 5, 255})
    for (int i : {0, 9, 63}) ASSERT_EQ(theirs[i * 256 + o], ours[o * 64 + i]);
  EXPECT_NE(theirs, ours);
  const Json hf_config = Json::parse(model.hf_config_json());
  EXPECT_EQ(hf_config.at("n_embd").as_int(), 64);
  EXPECT_EQ(hf_config.at("vocab_size").as_int(), 100);

  GPT back(*be, cfg, true);
  back.import_hf_gpt2(hf);
  EXPECT_EQ(all_params(back), all_params(model));

  // GPT2Model-style names (no "transformer."), the causal-mask buffers and a tied
  // lm_head.weight are accepted; an LM file leaves a scalar head as it was.
  SafeTensorsWriter w;
  for (const auto& [name, info] : hf.tensors()) {
    if (name.rfind("score.", 0) == 0) continue;
    const std::vector<float> v = hf.read_f32(name);
    w.add_f32(name.substr(12), info.shape, v.data());
  }
  std::vector<float> mask(32 * 32, 1.0f);
  w.add_f32("h.0.attn.bias", {1, 1, 32, 32}, mask.data());
  w.add_f32("h.0.attn.masked_bias", {1}, mask.data());
  const std::vector<float> wte = hf.read_f32("transformer.wte.weight");
  w.add_f32("lm_head.weight", {100, 64}, wte.data());
  const std::string bare = temp_path("hf_bare.safetensors");
  w.save(bare);
  GPT lm(*be, cfg, true);
  lm.init_random(22);
  const std::vector<float> head = lm.get_param("score.weight");
  lm.import_hf_gpt2(SafeTensorsFile::load(bare));
  EXPECT_EQ(lm.get_param("transformer.h.1.attn.c_proj.weight"),
            model.get_param("transformer.h.1.attn.c_proj.weight"));
  EXPECT_EQ(lm.get_param("score.weight"), head);

  // Wrong vocabulary and extra layers are errors naming the file.
  GPTConfig more_vocab = cfg;
  more_vocab.set_vocab_size(120);
  GPT m2(*be, more_vocab, false);
  expect_error([&] { m2.import_hf_gpt2(hf); }, {path, "transformer.wte.weight", "[100,64]"});
  GPTConfig one_layer = cfg;
  one_layer.n_layer = 1;
  GPT m3(*be, one_layer, true);
  expect_error([&] { m3.import_hf_gpt2(hf); }, {path, "unexpected tensor 'transformer.h.1."});
}

// ---------------------------------------------------------------------------------------
// Checkpoint headers and values that cannot be trusted

// Copies the safetensors file `src` to `dst` (every tensor as F32, in name order), letting
// `edit` change the metadata and each tensor's values first.
void copy_edited(const std::string& src, const std::string& dst,
                 const std::function<void(std::map<std::string, std::string>&)>& edit_meta,
                 const std::function<void(const std::string&, std::vector<float>&)>& edit) {
  SafeTensorsFile f = SafeTensorsFile::load(src);
  std::map<std::string, std::string> meta = f.metadata();
  if (edit_meta) edit_meta(meta);
  SafeTensorsWriter w;
  for (const auto& [k, v] : meta) w.set_metadata(k, v);
  for (const auto& [name, info] : f.tensors()) {
    std::vector<float> values = f.read_f32(name);
    if (edit) edit(name, values);
    w.add_f32(name, info.shape, values.data());
  }
  w.save(dst);
}

// A header whose config does not describe the file's tensors is refused before a model is
// allocated for it: n_embd=65536 used to fail as "cpu backend: out of memory allocating
// 412491972608 bytes", without the file's name.
TEST(CheckpointTest, AHeaderClaimingAnotherModelIsRefusedBeforeAllocating) {
  auto be = make_cpu_backend();
  GPTConfig cfg = GPTConfig::preset("tiny", 100);
  GPT model(*be, cfg, false);
  model.init_random(31);
  const std::string good = temp_path("header_good.safetensors");
  save_model(good, model, {{"stage", "sft"}});
  auto claim = [&](const std::string& name, auto change) {
    const std::string path = temp_path(name);
    copy_edited(
        good, path,
        [&](std::map<std::string, std::string>& meta) {
          GPTConfig c = cfg;
          change(c);
          meta["config"] = c.to_json().dump();
        },
        nullptr);
    return path;
  };
  const std::string wide = claim("header_wide.safetensors", [](GPTConfig& c) { c.n_embd = 65536; });
  for (auto load : std::vector<std::function<void()>>{[&] { load_model(wide, *be); },
                                                      [&] { read_checkpoint_config(wide); },
                                                      [&] { load_weights_into(model, wide); }}) {
    try {
      load();
      ADD_FAILURE() << "expected an error";
    } catch (const Error& e) {
      const std::string msg = e.what();
      for (const char* needle :
           {wide.c_str(), "tensor 'transformer.wte.weight'", "[128,64]", "needs [128,65536]"})
        EXPECT_NE(msg.find(needle), std::string::npos) << msg;
      EXPECT_EQ(msg.find("out of memory"), std::string::npos) << msg;
    }
  }
  const std::string deep = claim("header_deep.safetensors", [](GPTConfig& c) { c.n_layer = 900; });
  expect_error([&] { load_model(deep, *be); },
               {deep, "missing tensor 'transformer.h.2.attn.c_attn.weight'", "n_layer=900"});
  const std::string headless = temp_path("header_head.safetensors");
  copy_edited(
      good, headless,
      [](std::map<std::string, std::string>& meta) { meta["scalar_head"] = "true"; }, nullptr);
  expect_error([&] { load_model(headless, *be); }, {headless, "missing tensor 'score.weight'"});
}

// NaN or Inf in a checkpoint is refused on load, naming the file, the tensor and the first
// bad index: such a model samples garbage and its training skips every step.
TEST(CheckpointTest, NonFiniteValuesAreRefused) {
  auto be = make_cpu_backend();
  GPTConfig cfg = GPTConfig::preset("tiny", 100);
  GPT model(*be, cfg, true);
  model.init_random(32);
  const std::vector<float> before = all_params(model);
  const std::string good = temp_path("finite_good.safetensors");
  save_model(good, model, {{"stage", "pm"}});
  auto poison = [&](const std::string& src, const std::string& name, const std::string& tensor,
                    size_t index, float value) {
    const std::string path = temp_path(name);
    copy_edited(src, path, nullptr, [&](const std::string& n, std::vector<float>& v) {
      if (n == tensor) v.at(index) = value;
    });
    return path;
  };
  const std::string nan =
      poison(good, "finite_nan.safetensors", "transformer.h.1.mlp.c_fc.weight", 5, std::nanf(""));
  expect_error([&] { load_model(nan, *be); },
               {nan, "tensor 'transformer.h.1.mlp.c_fc.weight'", "non-finite", "index 5"});
  expect_error([&] { load_weights_into(model, nan); }, {nan, "index 5"});
  const std::string inf = poison(good, "finite_inf.safetensors", "score.bias", 0, -INFINITY);
  expect_error([&] { load_weights_into(model, inf); },
               {inf, "tensor 'score.bias'", "-inf", "index 0"});
  EXPECT_EQ(all_params(model), before);  // a refused file changes nothing

  // Optimizer state: the moments are checked the same way.
  AdamW opt(model, AdamWConfig{});
  const std::string opt_good = temp_path("finite_opt.safetensors");
  save_optimizer(opt_good, opt, TrainState{});
  const std::string opt_bad = poison(opt_good, "finite_opt_bad.safetensors", "v", 3, INFINITY);
  expect_error([&] { load_optimizer(opt_bad, opt, nullptr); }, {opt_bad, "tensor 'v'", "index 3"});

  // A Hugging Face GPT-2 file.
  const std::string hf = temp_path("finite_hf.safetensors");
  model.export_hf_gpt2(hf);
  const std::string hf_bad = poison(hf, "finite_hf_bad.safetensors",
                                    "transformer.h.0.attn.c_attn.weight", 7, std::nanf(""));
  GPT other(*be, cfg, true);
  expect_error([&] { other.import_hf_gpt2(SafeTensorsFile::load(hf_bad)); },
               {hf_bad, "transformer.h.0.attn.c_attn.weight", "non-finite"});
}

}  // namespace
}  // namespace hh
