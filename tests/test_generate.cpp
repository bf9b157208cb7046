// Generation with a KV cache (src/model/generate.h) on the CPU backend: cached decoding
// against full recomputation, sampling rules, seeds, stops, truncation, bad input, and the
// Hugging Face GPT-2 export/import round trip.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/fileio.h"
#include "core/json.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "model/checkpoint.h"
#include "model/generate.h"
#include "model/gpt.h"
#include "ops/ops.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

namespace hh {
namespace {

bool fast_mode() { return std::getenv("HH_TEST_FAST") != nullptr; }

std::string temp_path(const std::string& name) {
  const std::string dir = std::string(HH_BINARY_DIR) + "/test_generate_tmp";
  make_dirs(dir);
  return dir + "/" + name;
}

// Bytes as tokens 0..255 plus <|endoftext|> = 256: vocab 257, padded to 320.
Tokenizer byte_tokenizer() {
  std::vector<uint8_t> identity(256);
  for (int i = 0; i < 256; i++) identity[i] = static_cast<uint8_t>(i);
  return Tokenizer::from_parts(identity, {}, {kEndOfText});
}

// A BPE tokenizer with merges, so tokens span several bytes.
Tokenizer merged_tokenizer() {
  std::vector<std::string> texts;
  for (int i = 0; i < 30; i++)
    texts.push_back(
        "\n\nHuman: how are you doing today, friend?\n\nAssistant: I am well, thanks "
        "for asking. How can I help you " +
        std::to_string(i) + "?");
  std::vector<std::string_view> views(texts.begin(), texts.end());
  BpeTrainOptions opt;
  opt.vocab_size = 340;
  return Tokenizer::train(views, opt);
}

GPTConfig tiny_config(int vocab, int max_seq_len = 64) {
  GPTConfig c;
  c.n_layer = 2;
  c.n_head = 4;
  c.n_embd = 32;
  c.max_seq_len = max_seq_len;
  c.set_vocab_size(vocab);
  return c;
}

// A random model whose matrices are scaled up from GPT-2's init, so that attention is far
// from uniform and the logits vary a lot from token to token; its biases and LayerNorm
// parameters get noise too (GPT-2's init leaves them 0 and 1), so that a decode path that
// drops a bias or takes another layer's LayerNorm shows.
GPT random_model(Backend& be, const GPTConfig& cfg, uint64_t seed, float matrix_scale = 8.0f) {
  GPT model(be, cfg, false);
  model.init_random(seed);
  Rng rng(seed ^ 0xb1a5ull);
  for (const ParamTensor& t : model.param_tensors()) {
    std::vector<float> v = model.get_param(t.name);
    const bool gain = t.name.size() > 6 && t.name.compare(t.name.size() - 6, 6, "weight") == 0;
    for (float& x : v) {
      if (t.decay)
        x *= matrix_scale;
      else
        x += static_cast<float>((gain ? 0.2 : 0.1) * rng.normal());
    }
    model.set_param(t.name, v);
  }
  return model;
}

std::vector<int32_t> random_tokens(Rng& rng, int n, int vocab) {
  std::vector<int32_t> ids(n);
  for (int& id : ids) id = static_cast<int32_t>(rng.below(vocab));
  return ids;
}

// Logits at the last token of each sequence, by the model's full (uncached) forward.
std::vector<float> full_logits(GPT& model, const std::vector<std::vector<int32_t>>& seqs) {
  Batch batch;
  batch.B = static_cast<int>(seqs.size());
  for (const auto& s : seqs) batch.T = std::max(batch.T, static_cast<int>(s.size()));
  batch.tokens.assign(static_cast<size_t>(batch.B) * batch.T, 0);
  std::vector<int32_t> rows;
  for (int b = 0; b < batch.B; b++) {
    std::copy(seqs[b].begin(), seqs[b].end(), batch.tokens.begin() + b * batch.T);
    batch.lengths.push_back(static_cast<int32_t>(seqs[b].size()));
    rows.push_back(b * batch.T + static_cast<int32_t>(seqs[b].size()) - 1);
  }
  model.forward_logits(batch);
  return model.logits_rows(rows);
}

// max |a - b| / max(|b|, 1e-3)
double rel_err(const std::vector<float>& got, const std::vector<float>& ref) {
  EXPECT_EQ(got.size(), ref.size());
  double diff = 0, scale = 1e-3;
  for (size_t i = 0; i < std::min(got.size(), ref.size()); i++) {
    diff = std::max(diff, std::fabs(static_cast<double>(got[i]) - ref[i]));
    scale = std::max(scale, std::fabs(static_cast<double>(ref[i])));
  }
  return diff / scale;
}

template <typename F>
void expect_error(F&& what, const std::string& needle) {
  try {
    what();
    ADD_FAILURE() << "expected hh::Error containing '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos)
        << "message '" << e.what() << "' lacks '" << needle << "'";
  }
}

class GenerateTest : public ::testing::Test {
 protected:
  GenerateTest()
      : be_(make_cpu_backend()),
        tok_(byte_tokenizer()),
        model_(random_model(*be_, tiny_config(tok_.vocab_size()), 11)) {}
  // model_'s parameters on another backend.
  std::unique_ptr<GPT> model_on(Backend& be) const {
    auto copy = std::make_unique<GPT>(be, model_.config(), false);
    for (const ParamTensor& t : model_.param_tensors())
      copy->set_param(t.name, model_.get_param(t.name));
    return copy;
  }
  std::unique_ptr<Backend> be_;
  Tokenizer tok_;
  GPT model_;
};

// A backend ("cpu", "cuda") made with the environment switch `name` set to `value` (the
// switches are read when a backend is made); the variable is restored afterwards.
std::unique_ptr<Backend> backend_with(const std::string& device, const char* name,
                                      const char* value) {
  const char* saved = std::getenv(name);
  const std::string saved_value = saved ? saved : "";
  setenv(name, value, 1);
  auto be = make_backend(device);
  if (saved)
    setenv(name, saved_value.c_str(), 1);
  else
    unsetenv(name);
  return be;
}

// ---------------------------------------------------------------------------------------
// The cache

// Prefill and decode steps against the model's full forward on the same backend, for
// prompts of different lengths; every other step leaves sequence 1 out.
void check_cache_matches_full_recompute(GPT& model, const Tokenizer& tok, double tolerance) {
  Generator gen(model, tok);
  Rng rng(3);
  const int V = tok.vocab_size();
  std::vector<std::vector<int32_t>> seqs = {random_tokens(rng, 7, V), random_tokens(rng, 1, V),
                                            random_tokens(rng, 13, V)};
  const int steps = fast_mode() ? 4 : 10;
  std::vector<float> cached = gen.prefill(seqs, 13 + steps);
  EXPECT_LT(rel_err(cached, full_logits(model, seqs)), tolerance) << "prefill";
  for (int step = 0; step < steps; step++) {
    std::vector<int32_t> which =
        step % 2 ? std::vector<int32_t>{0, 2} : std::vector<int32_t>{2, 1, 0};
    std::vector<int32_t> tokens;
    std::vector<std::vector<int32_t>> extended;
    for (int s : which) {
      tokens.push_back(static_cast<int32_t>(rng.below(V)));
      seqs[s].push_back(tokens.back());
      extended.push_back(seqs[s]);
    }
    cached = gen.decode(which, tokens);
    EXPECT_LT(rel_err(cached, full_logits(model, extended)), tolerance) << "decode step " << step;
  }
  for (int s = 0; s < 3; s++) EXPECT_EQ(gen.lengths()[s], static_cast<int>(seqs[s].size()));
  // The cache is full for sequence 2 now (13 + steps tokens): one more is an error.
  expect_error([&] { gen.decode({2}, {1}); }, "is full");
}

TEST_F(GenerateTest, CachedDecodingMatchesFullRecompute) {
  check_cache_matches_full_recompute(model_, tok_, 1e-5);
}

// Two generate() calls with one seed and no stops: the same n tokens, inside the vocabulary.
void expect_seed_reproduces(Generator& gen, const std::vector<std::vector<int32_t>>& prompts, int n,
                            uint64_t seed, int vocab) {
  SamplingOptions opt;
  opt.max_new_tokens = n;
  opt.stop_strings = {};
  opt.stop_at_eot = false;
  opt.seed = seed;
  const auto s1 = gen.generate(prompts, opt), s2 = gen.generate(prompts, opt);
  for (size_t i = 0; i < prompts.size(); i++) {
    EXPECT_EQ(s1[i].generated_ids, s2[i].generated_ids) << "sequence " << i;
    EXPECT_EQ(s1[i].generated_ids.size(), static_cast<size_t>(n)) << "sequence " << i;
    for (int32_t id : s1[i].generated_ids) EXPECT_LT(id, vocab);
  }
}

// The fp16 decode step (ops.h: decode_fp16) on the CPU reference: the weights' fp16 copies and
// fp16 matmul inputs round to 10 mantissa bits, TF32's, so the decoded logits keep to twice
// the TF32 allowance against the full fp32 forward; and they are not the fp32 step's (the
// fp16 ops ran). The prefill stays fp32: exact.
TEST_F(GenerateTest, DecodeOnFp16StorageOnTheCpu) {
  auto half = backend_with("cpu", "HH_CPU_DECODE_FP16", "1");
  ASSERT_TRUE(half->decode_fp16());
  auto model = model_on(*half);
  check_cache_matches_full_recompute(*model, tok_, 4e-3);
  std::vector<std::vector<int32_t>> prompts = {{1, 2, 3, 4}, {5}};
  Generator fp32(model_, tok_), fp16(*model, tok_);
  EXPECT_EQ(fp16.prefill(prompts, 8), fp32.prefill(prompts, 8));
  const std::vector<float> a = fp32.decode({0, 1}, {7, 8}), b = fp16.decode({0, 1}, {7, 8});
  EXPECT_GT(rel_err(b, a), 1e-6) << "the fp16 step gave the fp32 step's logits";
  EXPECT_LT(rel_err(b, a), 4e-3);
  expect_seed_reproduces(fp16, prompts, 6, 4, tok_.vocab_size());  // sampling through it
  // New weights (a training step between two rollouts): the same generator's fp16 copies
  // follow them, exactly as a new generator's do.
  std::vector<float> w = model->get_param("transformer.h.1.mlp.c_fc.weight");
  for (float& x : w) x *= 1.5f;
  model->set_param("transformer.h.1.mlp.c_fc.weight", w);
  Generator fresh(*model, tok_);
  EXPECT_EQ(fp16.prefill(prompts, 8), fresh.prefill(prompts, 8));
  EXPECT_EQ(fp16.decode({0, 1}, {7, 8}), fresh.decode({0, 1}, {7, 8}));
}

// The same on the CUDA backend (when built with CUDA and a GPU is present), plus its
// sample_rows: greedy agrees with the CPU's, and seeds reproduce.
TEST_F(GenerateTest, CudaDecodingMatchesCpu) {
#ifdef HH_WITH_CUDA
  if (!cuda_device_available()) GTEST_SKIP() << "no CUDA device";
  auto cuda = make_backend("cuda");
  const auto gpu_copy = model_on(*cuda);
  GPT& gpu_model = *gpu_copy;
  // TF32 matmuls (the CUDA default) agree with the CPU to ~1e-3.
  check_cache_matches_full_recompute(gpu_model, tok_, 2e-3);
  std::vector<std::vector<int32_t>> prompts = {{1, 2, 3, 4}, {5}};
  Generator cpu_gen(model_, tok_), gpu_gen(gpu_model, tok_);
  std::vector<float> a = cpu_gen.prefill(prompts, 8), b = gpu_gen.prefill(prompts, 8);
  EXPECT_LT(rel_err(b, a), 1e-2);
  expect_seed_reproduces(gpu_gen, prompts, 8, 2, tok_.vocab_size());
  // HH_CUDA_KV_HALF=1: an fp16 cache rounds k and v to TF32's 10 mantissa bits once more
  // (the prefill's attention products already round them so), so the decoded logits get
  // up to twice the TF32 allowance against the full forward.
  auto half = backend_with("cuda", "HH_CUDA_KV_HALF", "1");
  ASSERT_EQ(half->kv_value_bytes(), 2u);
  check_cache_matches_full_recompute(*model_on(*half), tok_, 4e-3);
  // HH_CUDA_DECODE_FP16=1: the fp16 decode step, as on the CPU reference (above), and against
  // it. The GPU's prefill ran TF32 products (the switch needs TF32), the CPU's exact ones,
  // so the caches already differ by the TF32 error: the allowance is the fp16 step's (4e-3),
  // not the ops' own (DecodeOnFp16Storage in test_ops_cuda).
  auto fp16 = backend_with("cuda", "HH_CUDA_DECODE_FP16", "1");
  ASSERT_TRUE(fp16->decode_fp16());
  const auto fp16_model = model_on(*fp16);
  check_cache_matches_full_recompute(*fp16_model, tok_, 4e-3);
  auto cpu_fp16 = backend_with("cpu", "HH_CPU_DECODE_FP16", "1");
  const auto cpu_fp16_model = model_on(*cpu_fp16);
  Generator want(*cpu_fp16_model, tok_), got(*fp16_model, tok_);
  want.prefill(prompts, 8);
  got.prefill(prompts, 8);
  EXPECT_LT(rel_err(got.decode({0, 1}, {7, 8}), want.decode({0, 1}, {7, 8})), 4e-3);
#else
  GTEST_SKIP() << "hh was built without CUDA";
#endif
}

// Options under which the sequences of a batch stop at different steps: a few single bytes
// are stop strings (a few percent per step), the rest run to max_new_tokens.
SamplingOptions staggered_stops(uint64_t seed) {
  SamplingOptions opt;
  opt.max_new_tokens = 32;
  opt.stop_strings = {"a", "e", "i", "o", "u", "A", "E", "I"};
  opt.stop_at_eot = true;
  opt.seed = seed;
  return opt;
}

// n prompts of 1..9 tokens.
std::vector<std::vector<int32_t>> random_prompts(Rng& rng, int n, int V) {
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < n; i++)
    prompts.push_back(random_tokens(rng, 1 + static_cast<int>(rng.below(9)), V));
  return prompts;
}

// Running one decode step ahead (the next step queued before the host reads this one's
// samples, dead rows dropped a step later) gives the step-by-step loop's samples: staggered
// stops make rows die inside steps queued ahead, max_new_tokens ends the rest. A step
// keeps a dead row one step longer, and the row count changes the matmul's blocking, so
// the log-probs may differ in the last bits (never enough here to change a draw).
TEST_F(GenerateTest, RunAheadGivesTheStepByStepSamples) {
  Generator ahead(model_, tok_), step_by_step(model_, tok_);
  step_by_step.set_run_ahead(false);
  const int V = tok_.vocab_size();
  Rng rng(24);
  for (float temperature : {1.0f, 0.0f}) {
    for (uint64_t seed : {5, 6}) {
      SamplingOptions opt = staggered_stops(seed);
      opt.temperature = temperature;
      const auto prompts = random_prompts(rng, 12, V);
      const auto want = step_by_step.generate(prompts, opt);
      const auto got = ahead.generate(prompts, opt);
      std::set<std::string> reasons;
      for (size_t b = 0; b < prompts.size(); b++) {
        const std::string what = "temperature " + std::to_string(temperature) + " seed " +
                                 std::to_string(seed) + " sequence " + std::to_string(b);
        EXPECT_EQ(got[b].generated_ids, want[b].generated_ids) << what;
        ASSERT_EQ(got[b].generated_logprobs.size(), want[b].generated_logprobs.size()) << what;
        for (size_t i = 0; i < want[b].generated_logprobs.size(); i++)
          EXPECT_NEAR(got[b].generated_logprobs[i], want[b].generated_logprobs[i],
                      1e-5 * std::fabs(want[b].generated_logprobs[i]))
              << what << " token " << i;
        EXPECT_EQ(got[b].response_text, want[b].response_text) << what;
        EXPECT_EQ(got[b].finish_reason, want[b].finish_reason) << what;
        reasons.insert(want[b].finish_reason);
      }
      EXPECT_EQ(ahead.last_new_tokens(), step_by_step.last_new_tokens());
      // Rows died inside steps queued ahead (stops) and at the length limit.
      EXPECT_TRUE(reasons.count("stop") && reasons.count("length"))
          << "temperature " << temperature << " seed " << seed << ": not both kinds of finish";
    }
  }
}

// CUDA graphs of the decode step (HH_CUDA_GRAPHS, read when a backend is made) replay the
// same kernels on the same buffers: ids, log-probs and logits are bit-identical to running
// each step's ops one by one, while the number of rows shrinks as sequences finish (several
// row counts, each captured on its second step), after a batch of another size (the graphs
// of the old buffers are dropped), and on the public prefill/decode path.
TEST_F(GenerateTest, CudaGraphsMatchEagerBitForBit) {
#ifdef HH_WITH_CUDA
  if (!cuda_device_available()) GTEST_SKIP() << "no CUDA device";
  std::unique_ptr<Backend> be[2] = {backend_with("cuda", "HH_CUDA_GRAPHS", "0"),
                                    backend_with("cuda", "HH_CUDA_GRAPHS", "1")};
  ASSERT_FALSE(be[0]->graphs_enabled());
  ASSERT_TRUE(be[1]->graphs_enabled());
  std::unique_ptr<GPT> models[2] = {model_on(*be[0]), model_on(*be[1])};
  std::unique_ptr<Generator> gens[2] = {std::make_unique<Generator>(*models[0], tok_),
                                        std::make_unique<Generator>(*models[1], tok_)};
  Generator &off = *gens[0], &on = *gens[1];
  const int V = tok_.vocab_size();
  Rng rng(17);

  // Sampling on the device (temperature 1, greedy) and on the host (top-k: the graph ends
  // at the logits), batches of 12, 16 (larger: every buffer moves) and 5.
  std::vector<SamplingOptions> options = {staggered_stops(1), staggered_stops(2),
                                          staggered_stops(3)};
  options[1].temperature = 0.0f;
  options[2].top_k = 20;
  int call = 0;
  for (int batch : {12, 16, 5}) {
    for (const SamplingOptions& opt : options) {
      const std::string what =
          "call " + std::to_string(call++) + " (batch " + std::to_string(batch) + ")";
      const auto prompts = random_prompts(rng, batch, V);
      const int64_t replays = on.graph_replays();
      const auto want = off.generate(prompts, opt);
      const auto got = on.generate(prompts, opt);
      ASSERT_EQ(got.size(), want.size());
      std::vector<size_t> lengths;
      for (int b = 0; b < batch; b++) {
        EXPECT_EQ(got[b].generated_ids, want[b].generated_ids) << what << " sequence " << b;
        EXPECT_EQ(got[b].generated_logprobs, want[b].generated_logprobs)
            << what << " sequence " << b;
        EXPECT_EQ(got[b].response_text, want[b].response_text) << what << " sequence " << b;
        EXPECT_EQ(got[b].finish_reason, want[b].finish_reason) << what << " sequence " << b;
        lengths.push_back(want[b].generated_ids.size());
      }
      // The batch shrank (several row counts) and some count ran long enough to replay.
      std::sort(lengths.begin(), lengths.end());
      lengths.erase(std::unique(lengths.begin(), lengths.end()), lengths.end());
      EXPECT_GE(lengths.size(), 2u) << what << ": every sequence stopped at the same step";
      EXPECT_GT(on.graph_replays(), replays) << what << ": no decode step was replayed";
    }
  }
  EXPECT_EQ(off.graph_replays(), 0);

  // A batch with the cache layout of the last one (same size, same rounded max_len) replays
  // the graphs captured for it. A step's key is captured when it is seen the second time,
  // and a row count may first appear in this call, so after two calls every key of the
  // call has its graph: the third captures nothing.
  {
    const auto prompts = random_prompts(rng, 5, V);
    const SamplingOptions opt = staggered_stops(5);
    const auto want = off.generate(prompts, opt);
    for (int call_again = 0; call_again < 3; call_again++) {
      const int64_t captures = on.graph_captures(), replays = on.graph_replays();
      const auto got = on.generate(prompts, opt);
      for (int b = 0; b < 5; b++) EXPECT_EQ(got[b].generated_ids, want[b].generated_ids);
      EXPECT_GT(on.graph_replays(), replays);
      if (call_again == 2) {
        EXPECT_EQ(on.graph_captures(), captures) << "the same layout captured again";
      }
    }
  }

  // The public path: logits after each step, rows 5,5,5,4,4,4,3,2,2,2,1,1,1 (and the
  // leftover sequences in another order), then a second batch of another size.
  for (int batch : {5, 3}) {
    const auto prompts = random_prompts(rng, batch, V);
    const std::vector<float> a = off.prefill(prompts, 40), b = on.prefill(prompts, 40);
    EXPECT_EQ(b, a) << "prefill of " << batch;
    const int64_t replays = on.graph_replays();
    int step = 0;
    for (int M : {5, 5, 5, 4, 4, 4, 3, 2, 2, 2, 1, 1, 1}) {
      if (M > batch) continue;
      std::vector<int32_t> seqs, tokens;
      for (int i = 0; i < M; i++) {
        seqs.push_back(step % 2 ? M - 1 - i : i);
        tokens.push_back(static_cast<int32_t>(rng.below(V)));
      }
      EXPECT_EQ(on.decode(seqs, tokens), off.decode(seqs, tokens))
          << "batch " << batch << " step " << step;
      step++;
    }
    EXPECT_GT(on.graph_replays(), replays) << "batch " << batch;
    EXPECT_EQ(on.lengths(), off.lengths());
  }
  // Freed buffers take the graphs with them; the next call still matches.
  on.release_memory();
  off.release_memory();
  const auto prompts = random_prompts(rng, 4, V);
  const auto want = off.generate(prompts, staggered_stops(4));
  const auto got = on.generate(prompts, staggered_stops(4));
  for (int b = 0; b < 4; b++) EXPECT_EQ(got[b].generated_ids, want[b].generated_ids);
#else
  GTEST_SKIP() << "hh was built without CUDA";
#endif
}

// HH_CUDA_PDL=1 (programmatic dependent launch of our decode-step kernels, in graphs and
// eagerly) changes when kernels start, never what they compute: the same bits as plain
// launches, sampling on the device and on the host.
TEST_F(GenerateTest, CudaPdlMatchesPlainLaunches) {
#ifdef HH_WITH_CUDA
  if (!cuda_device_available()) GTEST_SKIP() << "no CUDA device";
  std::unique_ptr<Backend> be[2] = {backend_with("cuda", "HH_CUDA_PDL", "0"),
                                    backend_with("cuda", "HH_CUDA_PDL", "1")};
  std::unique_ptr<GPT> models[2] = {model_on(*be[0]), model_on(*be[1])};
  std::unique_ptr<Generator> gens[2] = {std::make_unique<Generator>(*models[0], tok_),
                                        std::make_unique<Generator>(*models[1], tok_)};
  Rng rng(23);
  SamplingOptions host = staggered_stops(7);
  host.top_k = 20;
  for (const SamplingOptions& opt : {staggered_stops(6), host}) {
    const auto prompts = random_prompts(rng, 9, tok_.vocab_size());
    const auto want = gens[0]->generate(prompts, opt);
    const auto got = gens[1]->generate(prompts, opt);
    for (size_t b = 0; b < prompts.size(); b++) {
      EXPECT_EQ(got[b].generated_ids, want[b].generated_ids) << "sequence " << b;
      EXPECT_EQ(got[b].generated_logprobs, want[b].generated_logprobs) << "sequence " << b;
    }
  }
#else
  GTEST_SKIP() << "hh was built without CUDA";
#endif
}

TEST_F(GenerateTest, DecodeRejectsBadInput) {
  Generator gen(model_, tok_);
  gen.prefill({{1, 2, 3}, {4}}, 8);
  expect_error([&] { gen.decode({0}, {tok_.vocab_size()}); }, "outside the vocabulary");
  expect_error([&] { gen.decode({5}, {1}); }, "decode of sequence 5");
  expect_error([&] { gen.decode({1, 1}, {1, 2}); }, "listed twice");
  expect_error([&] { gen.prefill({{1, 2}, {}}, 8); }, "prompt 1 is empty");
  expect_error([&] { gen.prefill({{1, 2, 3}}, 2); }, "max_len=2");
  // The op itself: attention_decode appends each row to its slot, so two rows of one slot
  // (which would read each other's append on a GPU) are refused.
  Backend& be = model_.backend();
  const int C = 8, NH = 2, max_len = 4;
  Buffer<float> qkv(be, 2 * 3 * C), kc(be, 2 * max_len * C), vc(be, 2 * max_len * C),
      out(be, 2 * C);
  be.fill_zero(qkv.data(), qkv.bytes());
  const int32_t slots[2] = {1, 1}, positions[2] = {0, 1};
  expect_error(
      [&] {
        be.attention_decode(out.data(), qkv.data(), kc.data(), vc.data(), slots, positions, 2,
                            max_len, C, NH);
      },
      "slot 1 has two rows");
}

// Logprobs are log softmax of the unmodified logits at the sampled token.
class LogprobsTest : public GenerateTest, public ::testing::WithParamInterface<int> {};

// top_k 20 samples on the host, top_k 0 (temperature only) on the backend; with top_k the
// samples are among the k largest logits.
TEST_P(LogprobsTest, LogprobsMatchTheFullForward) {
  Generator gen(model_, tok_);
  SamplingOptions opt;
  opt.temperature = 0.7f;
  opt.top_k = GetParam();
  opt.max_new_tokens = 6;
  opt.stop_strings = {};
  opt.stop_at_eot = false;
  opt.seed = 5;
  std::vector<std::vector<int32_t>> prompts = {{10, 20, 30}, {40}};
  auto out = gen.generate(prompts, opt);
  for (int b = 0; b < 2; b++) {
    ASSERT_EQ(out[b].generated_ids.size(), 6u);
    ASSERT_EQ(out[b].generated_logprobs.size(), 6u);
    std::vector<int32_t> seq = prompts[b];
    for (int i = 0; i < 6; i++) {
      std::vector<float> logits = full_logits(model_, {seq});
      const float want = token_logprob(logits.data(), tok_.vocab_size(), out[b].generated_ids[i]);
      EXPECT_NEAR(out[b].generated_logprobs[i], want, 1e-4) << "b=" << b << " i=" << i;
      if (opt.top_k > 0) {  // the sample is one of the k largest logits
        const float chosen = logits[out[b].generated_ids[i]];
        const int above =
            static_cast<int>(std::count_if(logits.begin(), logits.begin() + tok_.vocab_size(),
                                           [&](float z) { return z > chosen; }));
        EXPECT_LT(above, opt.top_k) << "b=" << b << " i=" << i;
      }
      seq.push_back(out[b].generated_ids[i]);
    }
    EXPECT_EQ(out[b].finish_reason, "length");
  }
}
INSTANTIATE_TEST_SUITE_P(HostAndDevice, LogprobsTest, ::testing::Values(20, 0));

// ---------------------------------------------------------------------------------------
// Sampling rules

TEST(SampleToken, TemperatureTopKTopPOnAKnownDistribution) {
  // p = (0.5, 0.3, 0.2) at temperature 1.
  const std::vector<float> logits = {std::log(0.5f), std::log(0.3f), std::log(0.2f)};
  std::vector<std::pair<float, int32_t>> scratch;
  SamplingOptions opt;
  EXPECT_EQ(sample_token(logits.data(), 3, opt, 0.0, &scratch), 0);
  EXPECT_EQ(sample_token(logits.data(), 3, opt, 0.49, &scratch), 0);
  EXPECT_EQ(sample_token(logits.data(), 3, opt, 0.6, &scratch), 1);
  EXPECT_EQ(sample_token(logits.data(), 3, opt, 0.85, &scratch), 2);
  // Temperature 0.5: p ∝ p² = (.658, .237, .105).
  opt.temperature = 0.5f;
  EXPECT_EQ(sample_token(logits.data(), 3, opt, 0.6, &scratch), 0);
  EXPECT_EQ(sample_token(logits.data(), 3, opt, 0.9, &scratch), 2);
  // top-k 2 at temperature 1: (0.5, 0.3)/0.8 -> uniform 0.7 lands on token 1, 0.99 too.
  opt.temperature = 1.0f;
  opt.top_k = 2;
  EXPECT_EQ(sample_token(logits.data(), 3, opt, 0.7, &scratch), 1);
  EXPECT_EQ(sample_token(logits.data(), 3, opt, 0.99, &scratch), 1);
  EXPECT_EQ(sample_token(logits.data(), 3, opt, 0.5, &scratch), 0);
  // top-p 0.7: the smallest prefix reaching 0.7 is {0, 1} (0.8).
  opt.top_k = 0;
  opt.top_p = 0.7f;
  EXPECT_EQ(sample_token(logits.data(), 3, opt, 0.99, &scratch), 1);
  EXPECT_EQ(sample_token(logits.data(), 3, opt, 0.6, &scratch), 0);
  opt.top_p = 0.4f;  // {0} alone
  EXPECT_EQ(sample_token(logits.data(), 3, opt, 0.99, &scratch), 0);
  // Greedy ignores the random number.
  opt.top_p = 1.0f;
  opt.temperature = 0.0f;
  EXPECT_EQ(sample_token(logits.data(), 3, opt, 0.99, &scratch), 0);
  // Token order does not matter: the largest logit in the middle.
  const std::vector<float> shuffled = {std::log(0.2f), std::log(0.5f), std::log(0.3f)};
  opt.temperature = 1.0f;
  opt.top_p = 0.4f;
  EXPECT_EQ(sample_token(shuffled.data(), 3, opt, 0.99, &scratch), 1);
}

// Against a plain reference (sort the whole vocabulary, cut, walk) on a flat distribution,
// where the nucleus holds thousands of tokens (sample_token sorts only a prefix at first).
TEST(SampleToken, TopPAndTopKMatchAFullSortReference) {
  const int V = 5000;
  Rng rng(17);
  std::vector<float> logits(V);
  for (float& x : logits) x = 0.5f * rng.normal();
  std::vector<std::pair<float, int32_t>> scratch;
  for (int top_k : {0, 40, 3000}) {
    for (float top_p : {1.0f, 0.9f, 0.3f, 0.01f}) {
      if (top_k == 0 && top_p == 1.0f) continue;  // the unsorted path, tested above
      SamplingOptions opt;
      opt.temperature = 0.8f;
      opt.top_k = top_k;
      opt.top_p = top_p;
      std::vector<int32_t> order(V);
      for (int v = 0; v < V; v++) order[v] = v;
      std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
        return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
      });
      const int n = top_k > 0 ? top_k : V;
      std::vector<double> p(n);
      double sum = 0;
      for (int i = 0; i < n; i++)
        sum += p[i] = std::exp((logits[order[i]] - logits[order[0]]) / 0.8);
      int kept = n;
      double cum = 0;
      for (int i = 0; i < n; i++) {
        cum += p[i];
        if (cum >= top_p * sum) {
          kept = i + 1;
          break;
        }
      }
      for (int draw = 0; draw < 50; draw++) {
        const double u = rng.uniform_double();
        double mass = 0;
        for (int i = 0; i < kept; i++) mass += p[i];
        int32_t want = order[kept - 1];
        double c = 0;
        for (int i = 0; i < kept; i++) {
          c += p[i];
          if (c > u * mass) {
            want = order[i];
            break;
          }
        }
        ASSERT_EQ(sample_token(logits.data(), V, opt, u, &scratch), want)
            << "top_k " << top_k << " top_p " << top_p << " u " << u;
      }
    }
  }
}

// The backend's sample_rows (Gumbel-max) draws from softmax(logits / T): frequencies over
// many seeds match the probabilities; its log-probs are log softmax at temperature 1; and
// the padded columns never win although they hold the largest values.
void check_sample_rows(Backend* be) {
  const int V = 3, Vp = 64, M = fast_mode() ? 4000 : 20000;
  std::vector<float> row(Vp, 50.0f);  // padded columns: would win if they took part
  row[0] = std::log(0.5f), row[1] = std::log(0.3f), row[2] = std::log(0.2f);
  std::vector<float> logits;
  for (int m = 0; m < M; m++) logits.insert(logits.end(), row.begin(), row.end());
  Buffer<float> logits_dev(*be, logits.size()), logprobs_dev(*be, M);
  Buffer<int32_t> tokens_dev(*be, M);
  Buffer<uint64_t> seeds_dev(*be, M);
  be->copy_to_device(logits_dev.data(), logits.data(), logits.size() * sizeof(float));
  Rng rng(99);
  std::vector<uint64_t> seeds(M);
  for (uint64_t& s : seeds) s = rng.next_u64();
  be->copy_to_device(seeds_dev.data(), seeds.data(), M * sizeof(uint64_t));
  for (float temperature : {1.0f, 0.5f, 0.0f}) {
    be->sample_rows(tokens_dev.data(), logprobs_dev.data(), logits_dev.data(), seeds_dev.data(),
                    temperature, M, V, Vp);
    std::vector<int32_t> tokens(M);
    std::vector<float> logprobs(M);
    be->copy_to_host(tokens.data(), tokens_dev.data(), M * sizeof(int32_t));
    be->copy_to_host(logprobs.data(), logprobs_dev.data(), M * sizeof(float));
    std::vector<double> freq(V, 0.0);
    for (int m = 0; m < M; m++) {
      ASSERT_GE(tokens[m], 0);
      ASSERT_LT(tokens[m], V);
      freq[tokens[m]] += 1.0 / M;
      EXPECT_NEAR(logprobs[m], row[tokens[m]], 1e-5);  // the row is already log-normalised
    }
    std::vector<double> want = {0.5, 0.3, 0.2};
    if (temperature == 0.5f) want = {0.25 / 0.38, 0.09 / 0.38, 0.04 / 0.38};
    if (temperature == 0.0f) want = {1, 0, 0};
    for (int v = 0; v < V; v++)
      EXPECT_NEAR(freq[v], want[v], fast_mode() ? 0.03 : 0.015)
          << "T=" << temperature << " v=" << v;
  }
}

TEST(SampleRows, GumbelMaxFollowsTheSoftmax) {
  auto be = make_cpu_backend();
  check_sample_rows(be.get());
#ifdef HH_WITH_CUDA
  if (cuda_device_available()) {
    auto cuda = make_backend("cuda");
    check_sample_rows(cuda.get());
  }
#endif
}

TEST(SampleToken, OptionsAreValidated) {
  SamplingOptions opt;
  opt.temperature = -1;
  expect_error([&] { opt.validate(); }, "temperature");
  opt = SamplingOptions();
  opt.top_p = 0;
  expect_error([&] { opt.validate(); }, "top_p");
  opt = SamplingOptions();
  opt.top_k = -2;
  expect_error([&] { opt.validate(); }, "top_k");
  opt = SamplingOptions();
  opt.max_new_tokens = 0;
  expect_error([&] { opt.validate(); }, "max_new_tokens");
}

TEST_F(GenerateTest, SameSeedSameSampleOtherSeedOtherSample) {
  Generator gen(model_, tok_);
  SamplingOptions opt;
  opt.max_new_tokens = 16;
  opt.stop_strings = {};
  opt.stop_at_eot = false;
  opt.seed = 42;
  std::vector<std::vector<int32_t>> prompts = {{1, 2, 3}, {4, 5}};
  auto a = gen.generate(prompts, opt);
  auto b = gen.generate(prompts, opt);
  opt.seed = 43;
  auto c = gen.generate(prompts, opt);
  for (int i = 0; i < 2; i++) {
    EXPECT_EQ(a[i].generated_ids, b[i].generated_ids);
    EXPECT_EQ(a[i].response_text, b[i].response_text);
    EXPECT_NE(a[i].generated_ids, c[i].generated_ids);
  }
  // Both sequences of a batch have their own streams.
  EXPECT_NE(a[0].generated_ids, a[1].generated_ids);
  // A sequence's sample does not depend on the rest of its batch: alone at the same index
  // it gets the same stream, and its logits agree to float rounding, so the samples match.
  gen.release_memory();  // and the next call allocates again
  auto alone = gen.generate({prompts[0]}, opt);
  EXPECT_EQ(alone[0].generated_ids, c[0].generated_ids);
  EXPECT_EQ(gen.last_new_tokens(), 16);
}

TEST_F(GenerateTest, TopK1AndTinyTopPEqualGreedy) {
  Generator gen(model_, tok_);
  SamplingOptions greedy;
  greedy.temperature = 0;
  greedy.max_new_tokens = 12;
  greedy.stop_strings = {};
  greedy.stop_at_eot = false;
  std::vector<std::vector<int32_t>> prompts = {{7, 8, 9, 10}, {11}};
  auto want = gen.generate(prompts, greedy);
  SamplingOptions k1 = greedy;
  k1.temperature = 1.3f;
  k1.top_k = 1;
  k1.seed = 9;
  SamplingOptions p0 = greedy;
  p0.temperature = 1.0f;
  p0.top_p = 1e-6f;
  p0.seed = 10;
  auto got_k = gen.generate(prompts, k1);
  auto got_p = gen.generate(prompts, p0);
  // And sampling at temperature 1 is not greedy (so the comparison means something).
  SamplingOptions free = greedy;
  free.temperature = 1.0f;
  free.seed = 10;
  auto sampled = gen.generate(prompts, free);
  for (int b = 0; b < 2; b++) {
    EXPECT_EQ(got_k[b].generated_ids, want[b].generated_ids);
    EXPECT_EQ(got_p[b].generated_ids, want[b].generated_ids);
    EXPECT_NE(sampled[b].generated_ids, want[b].generated_ids);
  }
}

// wte's padded rows are set so that, unmasked, the padded logits would win every draw.
TEST_F(GenerateTest, PaddedVocabularyIsNeverSampled) {
  const GPTConfig& cfg = model_.config();
  const int V = cfg.vocab_size, Vp = cfg.padded_vocab_size, C = cfg.n_embd;
  ASSERT_LT(V, Vp);
  // ln_f = 0·x + 1: every hidden state is the all-ones vector, so logit[v] = Σ_c wte[v][c].
  model_.set_param("transformer.ln_f.weight", std::vector<float>(C, 0.0f));
  model_.set_param("transformer.ln_f.bias", std::vector<float>(C, 1.0f));
  std::vector<float> wte = model_.get_param("transformer.wte.weight");
  for (size_t i = static_cast<size_t>(V) * C; i < wte.size(); i++) wte[i] = 10.0f;
  model_.set_param("transformer.wte.weight", wte);
  // Check the premise: the full forward's padded logits are huge.
  model_.forward_logits(Batch::single({1, 2}));
  std::vector<float> all(static_cast<size_t>(2) * Vp);
  be_->copy_to_host(all.data(), model_.logits_device(), all.size() * sizeof(float));
  EXPECT_GT(all[Vp + V], 100.0f);

  Generator gen(model_, tok_);
  // Device sampling (temperature only) and host sampling (top-k, top-p) alike.
  for (float temperature : {0.0f, 1.0f, 5.0f, 3.0f, 4.0f}) {
    SamplingOptions opt;
    opt.temperature = temperature;
    if (temperature == 3.0f) opt.top_k = 100;
    if (temperature == 4.0f) opt.top_p = 0.99f;
    opt.max_new_tokens = 20;
    opt.stop_strings = {};
    opt.stop_at_eot = false;
    opt.seed = 1;
    for (const GeneratedSample& s : gen.generate({{1, 2}, {3}}, opt)) {
      ASSERT_EQ(s.generated_ids.size(), 20u);
      for (int32_t id : s.generated_ids) EXPECT_LT(id, V) << "temperature " << temperature;
    }
  }
}

// ---------------------------------------------------------------------------------------
// Stops and streaming

// Samples once with no stops, picks a stop string out of the middle of that text, and
// samples again with the same seed: sampling must stop at the token that completes the
// first match, the response must end right before the earliest-starting match, and the
// streamed pieces must add up to the response. The stop string is listed before its own
// last two characters, which complete at the same token: the earlier start must win.
void check_stop_string(GPT& model, const Tokenizer& tok) {
  Generator gen(model, tok);
  SamplingOptions opt;
  opt.max_new_tokens = 24;
  opt.stop_strings = {};
  opt.stop_at_eot = false;
  opt.seed = 77;
  const std::vector<std::vector<int32_t>> prompts = {tok.encode("\n\nHuman: hi\n\nAssistant:"),
                                                     tok.encode("x")};
  auto free = gen.generate(prompts, opt);
  std::vector<std::string> full(2);
  for (int b = 0; b < 2; b++) {
    ASSERT_EQ(free[b].generated_ids.size(), 24u);
    full[b] = tok.decode(free[b].generated_ids);
    EXPECT_EQ(free[b].response_text, full[b]);
  }
  size_t pick = std::string::npos;
  for (size_t i = full[0].size() / 2; i + 3 <= full[0].size() && pick == std::string::npos; ++i)
    if (full[0].find(full[0].substr(i + 1, 2)) == i + 1) pick = i;
  ASSERT_NE(pick, std::string::npos) << full[0];
  const std::string stop = full[0].substr(pick, 3);
  opt.stop_strings = {"never-appears-here", stop, stop.substr(1)};
  std::vector<std::string> streamed(2);
  auto cut = gen.generate(prompts, opt, [&](int b, const std::string& piece) {
    ASSERT_TRUE(b == 0 || b == 1);
    streamed[b] += piece;
  });
  for (int b = 0; b < 2; b++) {
    const GeneratedSample& s = cut[b];
    // The rule, token by token: stop after the first token whose text completes a match;
    // cut at the earliest start of any match in the text so far.
    std::string text;
    size_t n = 0, at = std::string::npos;
    while (n < free[b].generated_ids.size() && at == std::string::npos) {
      text += tok.decode_token(free[b].generated_ids[n++]);
      for (const std::string& st : opt.stop_strings) at = std::min(at, text.find(st));
    }
    if (at == std::string::npos) {
      EXPECT_EQ(s.finish_reason, "length");
      EXPECT_EQ(s.response_text, full[b]);
      continue;
    }
    EXPECT_EQ(s.finish_reason, "stop") << b;
    EXPECT_EQ(s.response_text, full[b].substr(0, at)) << b;
    EXPECT_EQ(s.generated_ids.size(), n) << b;
    // response_ids: the tokens that end at or before the cut.
    std::vector<int32_t> want;
    size_t end = 0;
    for (int32_t id : free[b].generated_ids) {
      end += tok.decode_token(id).size();
      if (end > at) break;
      want.push_back(id);
    }
    EXPECT_EQ(s.response_ids, want) << b;
    EXPECT_EQ(s.logprobs.size(), want.size());
    EXPECT_EQ(streamed[b], s.response_text) << b;
  }
  EXPECT_EQ(cut[0].finish_reason, "stop");  // sequence 0 contains the stop by construction
  EXPECT_EQ(cut[0].response_text, full[0].substr(0, full[0].find(stop)));
}

TEST_F(GenerateTest, StopStringTrimsTheResponseByteTokens) { check_stop_string(model_, tok_); }

TEST(Generate, StopStringTrimsTheResponseMergedTokens) {
  auto be = make_cpu_backend();
  Tokenizer tok = merged_tokenizer();
  ASSERT_GT(tok.num_merges(), 20);
  GPT model = random_model(*be, tiny_config(tok.vocab_size()), 5);
  check_stop_string(model, tok);
}

// Streaming holds back text that may turn into a stop string and releases it once it
// cannot.
TEST_F(GenerateTest, StreamingPiecesAddUpWithoutStops) {
  Generator gen(model_, tok_);
  SamplingOptions opt;
  opt.max_new_tokens = 10;
  opt.stop_at_eot = false;
  opt.seed = 3;
  std::string streamed;
  int calls = 0;
  auto out = gen.generate({{65, 66}}, opt, [&](int b, const std::string& piece) {
    EXPECT_EQ(b, 0);
    EXPECT_FALSE(piece.empty());
    streamed += piece;
    calls++;
  });
  EXPECT_EQ(streamed, out[0].response_text);
  EXPECT_GE(calls, 1);
}

TEST_F(GenerateTest, EndOfTextStopsAndIsNotInTheResponse) {
  // Make <|endoftext|> the certain next token: its wte row dominates every logit.
  const GPTConfig& cfg = model_.config();
  const int C = cfg.n_embd, eot = tok_.eot_id();
  model_.set_param("transformer.ln_f.weight", std::vector<float>(C, 0.0f));
  model_.set_param("transformer.ln_f.bias", std::vector<float>(C, 1.0f));
  std::vector<float> wte = model_.get_param("transformer.wte.weight");
  for (int c = 0; c < C; c++) wte[static_cast<size_t>(eot) * C + c] = 10.0f;
  model_.set_param("transformer.wte.weight", wte);
  Generator gen(model_, tok_);
  SamplingOptions opt;
  opt.seed = 4;
  opt.max_new_tokens = 16;
  auto out = gen.generate({{1, 2, 3}}, opt);
  EXPECT_EQ(out[0].finish_reason, "eot");
  EXPECT_TRUE(out[0].response_ids.empty());
  EXPECT_EQ(out[0].response_text, "");
  EXPECT_EQ(out[0].generated_ids, std::vector<int32_t>{eot});
  opt.stop_at_eot = false;
  opt.max_new_tokens = 3;
  out = gen.generate({{1, 2, 3}}, opt);
  EXPECT_EQ(out[0].finish_reason, "length");
  EXPECT_EQ(out[0].response_text, "<|endoftext|><|endoftext|><|endoftext|>");
}

// ---------------------------------------------------------------------------------------
// Prompts

TEST_F(GenerateTest, LongPromptsAreTruncatedFromTheLeft) {
  Generator gen(model_, tok_);
  SamplingOptions opt;
  opt.max_new_tokens = 8;
  opt.stop_strings = {};
  opt.stop_at_eot = false;
  opt.seed = 12;
  Rng rng(8);
  const int max_prompt = model_.config().max_seq_len - opt.max_new_tokens;  // 56
  std::vector<int32_t> long_prompt = random_tokens(rng, max_prompt + 9, tok_.vocab_size() - 1);
  std::vector<int32_t> short_prompt = {5, 6, 7};
  auto out = gen.generate({short_prompt, long_prompt}, opt);
  std::vector<int32_t> kept(long_prompt.end() - max_prompt, long_prompt.end());
  EXPECT_FALSE(out[0].prompt_truncated);
  EXPECT_EQ(out[0].prompt_ids, short_prompt);
  EXPECT_TRUE(out[1].prompt_truncated);
  EXPECT_EQ(out[1].prompt_ids, kept);
  EXPECT_EQ(out[1].generated_ids.size(), 8u);
  // The same as giving the kept part directly.
  auto direct = gen.generate({short_prompt, kept}, opt);
  EXPECT_EQ(direct[1].generated_ids, out[1].generated_ids);
  EXPECT_FALSE(direct[1].prompt_truncated);
}

TEST_F(GenerateTest, BadInputGivesClearErrors) {
  Generator gen(model_, tok_);
  SamplingOptions opt;
  opt.max_new_tokens = 16;
  expect_error([&] { gen.generate({{1, 2}, {}}, opt); }, "prompt 1 is empty");
  opt.max_new_tokens = model_.config().max_seq_len;
  expect_error([&] { gen.generate({{1, 2}}, opt); }, "leaves no room");
  opt.max_new_tokens = 16;
  opt.top_p = 2;
  expect_error([&] { gen.generate({{1, 2}}, opt); }, "top_p");
  opt.top_p = 1;
  expect_error([&] { gen.generate({{1, tok_.vocab_size() + 5}}, opt); }, "outside the vocabulary");
  EXPECT_TRUE(gen.generate({}, SamplingOptions()).empty());
  // A model whose vocabulary is not the tokenizer's.
  Tokenizer other = merged_tokenizer();
  expect_error([&] { Generator g(model_, other); }, "differs from the tokenizer");
}

// ---------------------------------------------------------------------------------------
// Hugging Face GPT-2 interop

TEST_F(GenerateTest, HfExportImportRoundTripGivesIdenticalLogits) {
  const std::string path = temp_path("hf_roundtrip.safetensors");
  model_.export_hf_gpt2(path);
  SafeTensorsFile file = SafeTensorsFile::load(path);
  const GPTConfig& cfg = model_.config();
  const int C = cfg.n_embd;
  // HF layout: wte has vocab_size rows, Conv1D weights are [in, out].
  EXPECT_EQ(file.info("transformer.wte.weight").shape, (std::vector<int64_t>{cfg.vocab_size, C}));
  EXPECT_EQ(file.info("transformer.h.0.mlp.c_fc.weight").shape, (std::vector<int64_t>{C, 4 * C}));
  std::vector<float> ours = model_.get_param("transformer.h.0.mlp.c_fc.weight");  // [4C][C]
  std::vector<float> theirs = file.read_f32("transformer.h.0.mlp.c_fc.weight");   // [C][4C]
  EXPECT_EQ(theirs[1 * 4 * C + 7], ours[7 * C + 1]);
  EXPECT_EQ(theirs[5 * 4 * C + 100], ours[100 * C + 5]);
  Json hf_config = Json::parse(model_.hf_config_json());
  EXPECT_EQ(hf_config["n_embd"].as_int(), C);
  EXPECT_EQ(hf_config["vocab_size"].as_int(), cfg.vocab_size);

  GPT imported(*be_, cfg, false);
  imported.import_hf_gpt2(file);
  std::vector<std::vector<int32_t>> seqs = {{1, 2, 3, 4, 5}, {9, 8}};
  std::vector<float> want = full_logits(model_, seqs);
  std::vector<float> got = full_logits(imported, seqs);
  EXPECT_EQ(got, want);
  // And generation from the imported model is the same sample.
  Generator g1(model_, tok_), g2(imported, tok_);
  SamplingOptions opt;
  opt.seed = 21;
  opt.max_new_tokens = 8;
  EXPECT_EQ(g1.generate(seqs, opt)[1].generated_ids, g2.generate(seqs, opt)[1].generated_ids);
}

// ---------------------------------------------------------------------------------------
// The hh-chat binary, when built: batch mode, the interactive loop on a pipe, and the
// tokenizer check.

// The hh-chat binary (the tests skip when it is not built), and a small random model with
// its tokenizer.
class HhChat : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!file_exists(exe)) GTEST_SKIP() << exe << " not built";
  }
  const std::string exe = std::string(HH_BINARY_DIR) + "/hh-chat";
  std::unique_ptr<Backend> be = make_cpu_backend();
  Tokenizer tok = merged_tokenizer();
  GPT model = random_model(*be, tiny_config(tok.vocab_size(), 128), 3, 1.0f);
};

TEST_F(HhChat, BatchInteractiveAndTokenizerCheck) {
  const std::string dir = std::string(HH_BINARY_DIR) + "/test_generate_tmp";
  make_dirs(dir);
  tok.save(dir + "/tok.bin");
  save_model(dir + "/model.safetensors", model,
             {{"tokenizer", std::to_string(tok.fingerprint())}, {"stage", "sft"}});
  write_file_atomic(dir + "/prompts.jsonl",
                    "{\"prompt\": \"how are you?\", \"id\": 7}\n\n"
                    "{\"prompt\": \"\\n\\nHuman: hi\\n\\nAssistant: hello\\n\\nHuman: thanks\"}\n");
  const std::string common = exe + " --model " + dir + "/model.safetensors --tokenizer " + dir +
                             "/tok.bin --device cpu --max-new-tokens 12 --seed 5";
  std::string cmd = common + " --prompts-file " + dir + "/prompts.jsonl --out " + dir +
                    "/out.jsonl 2> " + dir + "/err.txt";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << read_file_text(dir + "/err.txt");
  std::vector<Json> lines = test::parse_jsonl(read_file_text(dir + "/out.jsonl"));
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0].at("id").as_int(), 7);
  EXPECT_EQ(lines[0].at("prompt").as_string(), "how are you?");
  for (const Json& line : lines) {
    EXPECT_TRUE(line.at("response").is_string());
    const std::string reason = line.at("finish_reason").as_string();
    EXPECT_TRUE(reason == "stop" || reason == "eot" || reason == "length") << reason;
  }
  EXPECT_NE(read_file_text(dir + "/err.txt").find("tokens/s"), std::string::npos);

  // The batch responses are the library's: same tokenization, same seed.
  Generator gen(model, tok);
  SamplingOptions opt;
  opt.temperature = 0.7f;
  opt.top_p = 0.95f;
  opt.max_new_tokens = 12;
  opt.seed = 5;
  std::vector<int32_t> ids = tok.encode("\n\nHuman:");
  for (int32_t id : tok.encode(" how are you?")) ids.push_back(id);
  for (int32_t id : tok.encode("\n\nAssistant:")) ids.push_back(id);
  // (The file is JSON: bytes of a character cut between tokens are written as U+FFFD.)
  const std::string response = gen.generate({ids, {1}}, opt)[0].response_text;
  EXPECT_EQ(Json::parse(Json(response).dump()).as_string(), lines[0].at("response").as_string());

  // Interactive on a pipe: two turns, a reset, quit.
  cmd = "printf 'hello\\n\\n/reset\\nagain\\n/quit\\nignored\\n' | " + common + " > " + dir +
        "/chat.txt 2> " + dir + "/err.txt";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << read_file_text(dir + "/err.txt");
  std::string chat = read_file_text(dir + "/chat.txt");
  size_t turns = 0;
  for (size_t p = chat.find("Assistant:"); p != std::string::npos;
       p = chat.find("Assistant:", p + 1))
    turns++;
  EXPECT_GE(turns, 2u) << chat;  // a reply may itself contain "Assistant:"

  // Another tokenizer: refused with a clear message, exit status 1.
  BpeTrainOptions other_opt;
  other_opt.vocab_size = tok.vocab_size();
  std::vector<std::string_view> texts = {"completely different text, different merges"};
  Tokenizer other = Tokenizer::train(texts, other_opt);
  other.save(dir + "/other.bin");
  cmd = exe + " --model " + dir + "/model.safetensors --tokenizer " + dir +
        "/other.bin --device cpu < /dev/null > /dev/null 2> " + dir + "/err.txt";
  int status = std::system(cmd.c_str());
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 1) << status;
  EXPECT_NE(read_file_text(dir + "/err.txt").find("another tokenizer"), std::string::npos)
      << read_file_text(dir + "/err.txt");
}

// A transformers config.json field past int32 is refused, naming the file and field. It
// used to be cut to an int: n_layer = 2^32 + 2 read as 2, and the 2-layer weights loaded.
TEST_F(HhChat, HfConfigFieldsMustFitAnInt) {
  ASSERT_EQ(model.config().n_layer, 2);
  const std::string dir = std::string(HH_BINARY_DIR) + "/test_generate_hf_config";
  make_dirs(dir);
  tok.save(dir + "/tok.bin");
  model.export_hf_gpt2(dir + "/model.safetensors");
  Json config = Json::parse(model.hf_config_json());
  const std::string run = exe + " --model " + dir + "/model.safetensors --hf-config " + dir +
                          "/config.json --tokenizer " + dir + "/tok.bin --device cpu < /dev/null" +
                          " > /dev/null 2> " + dir + "/err.txt";
  write_file_atomic(dir + "/config.json", config.dump());
  ASSERT_EQ(std::system(run.c_str()), 0) << read_file_text(dir + "/err.txt");
  config["n_layer"] = Json(int64_t{(1ll << 32) + 2});
  write_file_atomic(dir + "/config.json", config.dump());
  const int status = std::system(run.c_str());
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 1) << status;
  const std::string err = read_file_text(dir + "/err.txt");
  EXPECT_NE(err.find(dir + "/config.json: field 'n_layer' must be an integer that fits an int, got "
                           "4294967298"),
            std::string::npos)
      << err;
}

// --export-hf writes Hugging Face GPT-2 files that hh-chat loads back to the very same
// logits (--dump-logits, checked against the library's forward); it refuses to overwrite
// an export; --dump-logits refuses ids that are not ids; --bench on a random model makes
// exactly batch x new tokens per repeat.
TEST_F(HhChat, ExportHfLoadsBackToTheSameLogitsAndBenchCountsTokens) {
  using test::run_shell;
  test::TempDir dir;
  tok.save(dir.file("tok.bin"));
  save_model(dir.file("model.safetensors"), model,
             {{"tokenizer", std::to_string(tok.fingerprint())}, {"stage", "sft"}});
  const std::string err = dir.file("err.txt");
  const std::string chat = exe + " --device cpu --tokenizer " + dir.file("tok.bin");
  const std::string to_hf = chat + " --model " + dir.file("model.safetensors") + " --export-hf " +
                            dir.file("hf") + " 2> " + err;
  ASSERT_EQ(run_shell(to_hf), 0) << read_file_text(err);
  const Json config = Json::parse(read_file_text(dir.file("hf/config.json")));
  EXPECT_EQ(config.at("n_layer").as_int(), model.config().n_layer);
  EXPECT_EQ(config.at("vocab_size").as_int(), model.config().vocab_size);
  EXPECT_EQ(run_shell(to_hf), 1);  // the export is there: not overwritten
  EXPECT_NE(read_file_text(err).find(dir.file("hf") + "/model.safetensors"), std::string::npos)
      << read_file_text(err);

  const std::vector<int32_t> ids = {5, 0, tok.vocab_size() - 1, 7, 7};
  model.forward_logits(Batch::single(ids));
  const std::vector<float> want = model.logits_rows({0, 1, 2, 3, 4});
  const int V = model.config().vocab_size;
  for (const std::string& weights :
       {dir.file("model.safetensors"), dir.file("hf/model.safetensors")}) {
    ASSERT_EQ(run_shell(chat + " --model " + weights + " --dump-logits 5,0," +
                        std::to_string(V - 1) + ",7,7 > " + dir.file("logits.json") + " 2> " + err),
              0)
        << read_file_text(err);
    const Json dumped = Json::parse(read_file_text(dir.file("logits.json")));
    EXPECT_EQ(dumped.at("vocab_size").as_int(), V);
    ASSERT_EQ(dumped.at("logits").size(), ids.size());
    std::vector<float> got;
    for (const Json& row : dumped.at("logits").as_array()) {
      ASSERT_EQ(row.size(), static_cast<size_t>(V));
      for (const Json& x : row.as_array()) got.push_back(static_cast<float>(x.as_number()));
    }
    EXPECT_EQ(got, want) << weights;  // %.9g round-trips a float exactly
  }
  // (stdin from /dev/null: were "" taken for no flag, hh-chat would chat, not wait.)
  const std::vector<std::string> bad_ids = {"1,x", "1,,2", "-1", "2147483648", ""};
  for (const std::string& bad : bad_ids) {
    EXPECT_EQ(run_shell(chat + " --model " + dir.file("model.safetensors") + " --dump-logits '" +
                        bad + "' < /dev/null > /dev/null 2> " + err),
              1)
        << bad;
    EXPECT_NE(read_file_text(err).find("--dump-logits"), std::string::npos) << read_file_text(err);
  }

  ASSERT_EQ(run_shell(exe +
                      " --device cpu --random-model tiny --vocab-size 300 --bench "
                      "--batch-size 3 --prompt-len 5 --max-new-tokens 4 --repeats 2 > " +
                      dir.file("bench.json") + " 2> " + err),
            0)
      << read_file_text(err);
  const Json bench = Json::parse(read_file_text(dir.file("bench.json")));
  EXPECT_EQ(bench.at("new_tokens").as_int(), 3 * 4 * 2);
  EXPECT_EQ(bench.at("config").at("vocab_size").as_int(), 300);
  EXPECT_EQ(bench.at("graph_replays").as_int(), 0);  // no CUDA graphs on the CPU
}

}  // namespace
}  // namespace hh
