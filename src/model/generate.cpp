// Generation with a KV cache: prefill, decode steps, sampling, stops. See generate.h.
#include "model/generate.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "core/error.h"
#include "core/rng.h"
#include "tokenizer/tokenizer.h"

namespace hh {

namespace {

// Grow-only device buffer: reallocates (contents lost) only when n exceeds its size.
// Returns whether it did (the buffer moved).
template <typename T>
bool grow(Buffer<T>& buf, Backend& be, size_t n) {
  if (buf.size() >= n) return false;
  buf = Buffer<T>();  // free first: the peak never holds both
  buf = Buffer<T>(be, n);
  return true;
}

// Length of the longest suffix of `text` that is a proper prefix of some stop string:
// text that may still become a stop string, so streaming holds it back.
size_t pending_stop_prefix(const std::string& text, const std::vector<std::string>& stops) {
  size_t held = 0;
  for (const std::string& stop : stops) {
    for (size_t k = std::min(stop.size() - 1, text.size()); k > held; k--) {
      if (text.compare(text.size() - k, k, stop, 0, k) == 0) {
        held = k;
        break;
      }
    }
  }
  return held;
}

// Per-sequence state of one generate() call.
struct SequenceState {
  Rng rng;
  std::string text;                // decoded response so far (every sampled token but eot)
  std::vector<size_t> token_ends;  // text end offset after each generated token
  size_t emitted = 0;              // bytes of text already streamed
  bool finished = false;
};

}  // namespace

// ---------------------------------------------------------------------------------------
// Options and sampling

void SamplingOptions::validate() const {
  HH_CHECK(std::isfinite(temperature) && temperature >= 0.0f,
           "sampling: temperature must be >= 0 (0 = greedy), got ", temperature);
  HH_CHECK(top_k >= 0, "sampling: top_k must be >= 0 (0 = off), got ", top_k);
  HH_CHECK(std::isfinite(top_p) && top_p > 0.0f && top_p <= 1.0f,
           "sampling: top_p must be in (0, 1] (1 = off), got ", top_p);
  HH_CHECK(max_new_tokens >= 1, "sampling: max_new_tokens must be >= 1, got ", max_new_tokens);
}

uint64_t sample_stream_seed(uint64_t seed, int b) {
  return seed ^ (0x9e3779b97f4a7c15ull * (static_cast<uint64_t>(b) + 1));
}

// log p(token) = logits[token] - log Σ_v exp(logits[v]), over the real vocabulary.
float token_logprob(const float* logits, int V, int32_t token) {
  double maxval = logits[0];
  for (int v = 1; v < V; v++) maxval = std::max(maxval, static_cast<double>(logits[v]));
  double sum = 0;
  for (int v = 0; v < V; v++) sum += std::exp(logits[v] - maxval);
  return static_cast<float>(logits[token] - maxval - std::log(sum));
}

// Greedy: the first index of the largest logit. Otherwise with z = logits / temperature:
// candidates = all tokens, or the top_k largest z; p ∝ exp(z - max z) over them; top_p
// keeps the smallest prefix (by decreasing p; ties by id) whose mass reaches top_p; the
// draw walks the kept candidates' cumulative mass to uniform · (their total).
int32_t sample_token(const float* logits, int V, const SamplingOptions& options, double uniform,
                     std::vector<std::pair<float, int32_t>>* scratch) {
  if (options.temperature == 0.0f || options.top_k == 1) {
    int32_t best = 0;
    for (int v = 1; v < V; v++)
      if (logits[v] > logits[best]) best = v;
    return best;
  }
  const double inv_t = 1.0 / options.temperature;
  const bool use_top_k = options.top_k > 0 && options.top_k < V;
  const bool use_top_p = options.top_p < 1.0f;
  if (!use_top_k && !use_top_p) {  // plain softmax sampling, in id order: no sort needed
    float maxval = logits[0];
    for (int v = 1; v < V; v++) maxval = std::max(maxval, logits[v]);
    double sum = 0;
    for (int v = 0; v < V; v++) sum += std::exp((logits[v] - maxval) * inv_t);
    const double target = uniform * sum;
    double cum = 0;
    for (int v = 0; v < V; v++) {
      cum += std::exp((logits[v] - maxval) * inv_t);
      if (cum > target) return v;
    }
    return V - 1;  // rounding: the mass ran out just below target
  }
  std::vector<std::pair<float, int32_t>>& cand = *scratch;
  cand.resize(V);
  for (int v = 0; v < V; v++) cand[v] = {logits[v], v};
  auto by_logit_desc = [](const std::pair<float, int32_t>& a, const std::pair<float, int32_t>& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  // The total mass Σ exp((z_i - max z)/T) of the candidates; top-p then sorts only the most
  // likely few (256, 1024, ... until they reach top_p), not the whole vocabulary.
  size_t n = cand.size();
  if (use_top_k) {
    n = static_cast<size_t>(options.top_k);
    std::nth_element(cand.begin(), cand.begin() + (n - 1), cand.end(), by_logit_desc);
    std::sort(cand.begin(), cand.begin() + n, by_logit_desc);
  }
  float maxval = cand[0].first;
  for (size_t i = 1; i < n; i++) maxval = std::max(maxval, cand[i].first);
  double sum = 0;
  for (size_t i = 0; i < n; i++) sum += std::exp((cand[i].first - maxval) * inv_t);
  size_t kept = n;
  double kept_mass = sum;
  if (use_top_p) {
    for (size_t sorted = std::min<size_t>(n, 256);; sorted = std::min(n, sorted * 4)) {
      if (sorted < n)
        std::nth_element(cand.begin(), cand.begin() + (sorted - 1), cand.begin() + n,
                         by_logit_desc);
      std::sort(cand.begin(), cand.begin() + sorted, by_logit_desc);
      double cum = 0;
      kept = 0;
      for (size_t i = 0; i < sorted && kept == 0; i++) {
        cum += std::exp((cand[i].first - maxval) * inv_t);
        if (cum >= options.top_p * sum) kept = i + 1;
      }
      if (kept > 0 || sorted == n) {
        if (kept == 0) kept = n;  // rounding: the whole set
        kept_mass = cum;
        break;
      }
    }
  }
  // Draw among the first `kept` candidates (sorted by decreasing probability).
  const double target = uniform * kept_mass;
  double cum = 0;
  for (size_t i = 0; i < kept; i++) {
    cum += std::exp((cand[i].first - maxval) * inv_t);
    if (cum > target) return cand[i].second;
  }
  return cand[kept - 1].second;
}

// ---------------------------------------------------------------------------------------
// KVCache

void KVCache::reserve(Backend& backend, int n_layer, int slots, int max_len, int C) {
  value_bytes_ = backend.kv_value_bytes();
  const size_t values = static_cast<size_t>(n_layer) * slots * max_len * C;
  const size_t floats = (values * value_bytes_ + sizeof(float) - 1) / sizeof(float);
  n_layer_ = n_layer;
  slots_ = slots;
  max_len_ = max_len;
  C_ = C;
  grow(k_, backend, floats);
  grow(v_, backend, floats);
}

// ---------------------------------------------------------------------------------------
// Generator: the model steps

Generator::Generator(GPT& model, const Tokenizer& tokenizer)
    : model_(model), tokenizer_(tokenizer) {
  HH_CHECK(model.config().vocab_size == tokenizer.vocab_size(),
           "generator: the model's vocab_size=", model.config().vocab_size,
           " differs from the tokenizer's vocab_size=", tokenizer.vocab_size(),
           " (a checkpoint trained with another tokenizer?)");
}

Generator::~Generator() {
  try {
    drop_graphs();
  } catch (...) {  // destructors must not throw; the device reported its error before
  }
}

void Generator::drop_graphs() {
  Backend& be = model_.backend();
  std::map<StepKey, StepGraph> graphs;
  graphs.swap(step_graphs_);  // emptied even if a destroy throws
  for (auto& kv : graphs) be.graph_destroy(kv.second.graph);
}

void Generator::plan_prefill(int B, int T) {
  Backend& be = model_.backend();
  const GPTConfig& cfg = model_.config();
  const size_t N = static_cast<size_t>(B) * T, C = cfg.n_embd;
  grow(step_in_dev_, be, step_in_words(B));  // the first sample's seeds
  grow(sampled_dev_, be, 2 * static_cast<size_t>(B));
  grow(logits_, be, static_cast<size_t>(B) * cfg.padded_vocab_size);
  grow(tokens_dev_, be, N);
  grow(positions_dev_, be, N);
  grow(slots_dev_, be, N);
  grow(lengths_dev_, be, B);
  grow(rows_dev_, be, B);
  grow(x_, be, N * C);
  grow(x2_, be, N * C);
  grow(ln_, be, N * C);
  grow(mean_, be, N);
  grow(rstd_, be, N);
  grow(qkv_, be, N * 3 * C);
  grow(atty_, be, N * C);
  grow(fch_, be, N * 4 * C);
  grow(fch_gelu_, be, N * 4 * C);
  grow(att_saved_, be, be.attention_saved_floats(B, T, cfg.n_head));
  grow(last_, be, B * C);
}

// Every buffer a decode step touches, so that nothing allocates inside a graph capture;
// a buffer that moves takes the graphs (which hold its old address) with it.
bool Generator::plan_decode(int M) {
  Backend& be = model_.backend();
  const size_t C = model_.config().n_embd, Vp = model_.config().padded_vocab_size;
  bool moved = grow(step_in_dev_, be, step_in_words(M));
  moved |= grow(sampled_dev_, be, 2 * static_cast<size_t>(M));
  moved |= grow(x_, be, M * C);
  moved |= grow(x2_, be, M * C);
  moved |= grow(ln_, be, M * C);
  moved |= grow(mean_, be, M);
  moved |= grow(rstd_, be, M);
  moved |= grow(qkv_, be, M * 3 * C);
  moved |= grow(atty_, be, M * C);
  moved |= grow(fch_, be, M * 4 * C);
  moved |= grow(fch_gelu_, be, M * 4 * C);
  moved |= grow(logits_, be, M * Vp);
  if (moved) drop_graphs();
  return moved;
}

void Generator::release_memory() {
  drop_graphs();
  cache_.release();
  for (Buffer<int32_t>* b :
       {&tokens_dev_, &positions_dev_, &slots_dev_, &lengths_dev_, &rows_dev_, &sampled_dev_})
    b->reset();
  for (Buffer<float>* b : {&x_, &x2_, &ln_, &mean_, &rstd_, &qkv_, &atty_, &fch_, &fch_gelu_,
                           &att_saved_, &last_, &logits_})
    b->reset();
  step_in_dev_.reset();
  half_params_.reset();
  lengths_.clear();
  max_len_ = 0;
}

// logits_ = ln_f(hidden) · wteᵀ for M rows, [M, Vp] on the device (plan_* sized logits_).
void Generator::compute_logits(const float* hidden, int M, bool half) {
  Backend& be = model_.backend();
  const GPTConfig& cfg = model_.config();
  const int C = cfg.n_embd, Vp = cfg.padded_vocab_size;
  const float* lnf_w = model_.param_data("transformer.ln_f.weight");
  const float* lnf_b = model_.param_data("transformer.ln_f.bias");
  const float* wte = model_.param_data("transformer.wte.weight");
  if (half) {
    be.layernorm_forward_half(ln_.data(), hidden, lnf_w, lnf_b, M, C);
    be.matmul_forward_half(logits_.data(), ln_.data(), half_of(wte), nullptr, nullptr, M, C, Vp);
    return;
  }
  be.layernorm_forward(ln_.data(), mean_.data(), rstd_.data(), hidden, lnf_w, lnf_b, M, C);
  be.matmul_forward(logits_.data(), ln_.data(), wte, nullptr, M, C, Vp);
}

const void* Generator::half_of(const float* param) const {
  return half_params_.data() + (param - model_.params().data());
}

void Generator::sample_device(int M, float temperature) {
  const GPTConfig& cfg = model_.config();
  model_.backend().sample_rows(sampled_dev_.data(),
                               reinterpret_cast<float*>(sampled_dev_.data() + M), logits_.data(),
                               seeds_dev(), temperature, M, cfg.vocab_size, cfg.padded_vocab_size);
}

void Generator::request_samples(int M) {
  sampled_host_.resize(2 * static_cast<size_t>(M));
  model_.backend().copy_to_host_async(sampled_host_.data(), sampled_dev_.data(),
                                      sampled_host_.size() * sizeof(int32_t));
}

void Generator::receive_samples(int M, std::vector<int32_t>* ids, std::vector<float>* logprobs) {
  model_.backend().wait_host_copy();
  ids->assign(sampled_host_.begin(), sampled_host_.begin() + M);
  logprobs->resize(M);
  std::memcpy(logprobs->data(), sampled_host_.data() + M, M * sizeof(float));
}

// A decode step's device work. Without graphs: run it. With graphs: a key's first step runs
// eagerly (it sizes the backend's scratch and fills cuBLASLt's plan cache, so the capture
// allocates nothing), the second is captured and launched, later ones are replays. A graph
// the backend calls stale (memory freed since its capture) takes all the graphs with it and
// the step runs eagerly.
void Generator::run_step(const StepKey& key, const std::function<void()>& ops) {
  Backend& be = model_.backend();
  if (!be.graphs_enabled()) {
    ops();
    return;
  }
  auto it = step_graphs_.find(key);
  if (it != step_graphs_.end() && it->second.graph) {
    if (be.graph_launch(it->second.graph)) {
      graph_replays_++;
      return;
    }
    drop_graphs();
  }
  StepGraph& g = step_graphs_[key];
  if (g.seen++ == 0) {
    ops();
    return;
  }
  be.graph_begin_capture();
  try {
    ops();
  } catch (...) {
    try {  // close the capture so the stream works again; the error that matters is ops'
      be.graph_destroy(be.graph_end_capture());
    } catch (...) {
    }
    throw;
  }
  g.graph = be.graph_end_capture();
  graph_captures_++;
  HH_CHECK(be.graph_launch(g.graph), "generator: a decode-step graph is stale right after capture");
  graph_replays_++;
}

// The first vocab_size columns of the M rows of logits_, on the host.
std::vector<float> Generator::host_logits(int M) {
  const GPTConfig& cfg = model_.config();
  const int V = cfg.vocab_size, Vp = cfg.padded_vocab_size;
  host_logits_.resize(static_cast<size_t>(M) * Vp);
  model_.backend().copy_to_host(host_logits_.data(), logits_.data(),
                                host_logits_.size() * sizeof(float));
  std::vector<float> out(static_cast<size_t>(M) * V);
  for (int m = 0; m < M; m++)
    std::copy(host_logits_.begin() + static_cast<size_t>(m) * Vp,
              host_logits_.begin() + static_cast<size_t>(m) * Vp + V,
              out.begin() + static_cast<size_t>(m) * V);
  return out;
}

std::vector<float> Generator::prefill(const std::vector<std::vector<int32_t>>& prompts,
                                      int max_len) {
  prefill_device(prompts, max_len);
  return host_logits(static_cast<int>(prompts.size()));
}

std::vector<float> Generator::decode(const std::vector<int32_t>& seqs,
                                     const std::vector<int32_t>& tokens) {
  decode_device(seqs, &tokens);
  return host_logits(static_cast<int>(seqs.size()));
}

namespace {

// Pointers to one layer's parameters.
struct LayerParams {
  const float *ln1_w, *ln1_b, *qkv_w, *qkv_b, *proj_w, *proj_b;
  const float *ln2_w, *ln2_b, *fc_w, *fc_b, *fcproj_w, *fcproj_b;
};

LayerParams layer_params(GPT& model, int l) {
  auto p = [&](const char* what) {
    return static_cast<const float*>(model.param_data(str_cat("transformer.h.", l, ".", what)));
  };
  return {p("ln_1.weight"),      p("ln_1.bias"),          p("attn.c_attn.weight"),
          p("attn.c_attn.bias"), p("attn.c_proj.weight"), p("attn.c_proj.bias"),
          p("ln_2.weight"),      p("ln_2.bias"),          p("mlp.c_fc.weight"),
          p("mlp.c_fc.bias"),    p("mlp.c_proj.weight"),  p("mlp.c_proj.bias")};
}

}  // namespace

// One transformer block over `rows` rows of x_ (in place, through x2_); `attend` turns
// qkv_ into atty_ (prefill: attention over the prompts; decode: over the KV cache), after
// writing the layer's k and v to the cache.
void Generator::layer_forward(int l, int rows, const std::function<void()>& attend) {
  Backend& be = model_.backend();
  const int C = model_.config().n_embd;
  const LayerParams p = layer_params(model_, l);
  be.layernorm_forward(ln_.data(), mean_.data(), rstd_.data(), x_.data(), p.ln1_w, p.ln1_b, rows,
                       C);
  be.matmul_forward(qkv_.data(), ln_.data(), p.qkv_w, p.qkv_b, rows, C, 3 * C);
  attend();
  be.matmul_residual_forward(x2_.data(), atty_.data(), p.proj_w, p.proj_b, x_.data(), rows, C, C);
  be.layernorm_forward(ln_.data(), mean_.data(), rstd_.data(), x2_.data(), p.ln2_w, p.ln2_b, rows,
                       C);
  be.matmul_gelu_forward(fch_.data(), fch_gelu_.data(), ln_.data(), p.fc_w, p.fc_b, rows, C, 4 * C);
  be.matmul_residual_forward(x_.data(), fch_gelu_.data(), p.fcproj_w, p.fcproj_b, x2_.data(), rows,
                             4 * C, C);
}

void Generator::layer_forward_half(int l, int rows, const std::function<void()>& attend) {
  Backend& be = model_.backend();
  const int C = model_.config().n_embd;
  const LayerParams p = layer_params(model_, l);
  be.layernorm_forward_half(ln_.data(), x_.data(), p.ln1_w, p.ln1_b, rows, C);
  be.matmul_forward_half(qkv_.data(), ln_.data(), half_of(p.qkv_w), p.qkv_b, nullptr, rows, C,
                         3 * C);
  attend();
  be.matmul_forward_half(x2_.data(), atty_.data(), half_of(p.proj_w), p.proj_b, x_.data(), rows, C,
                         C);
  be.layernorm_forward_half(ln_.data(), x2_.data(), p.ln2_w, p.ln2_b, rows, C);
  be.matmul_gelu_forward_half(fch_gelu_.data(), ln_.data(), half_of(p.fc_w), half_of(p.fc_b), rows,
                              C, 4 * C);
  be.matmul_forward_half(x_.data(), fch_gelu_.data(), half_of(p.fcproj_w), p.fcproj_b, x2_.data(),
                         rows, 4 * C, C);
}

// The model's forward over right-padded prompts [B, T], one layer at a time; each layer's
// k and v rows go to the cache (padded rows are skipped: position -1). The logits are
// computed for the last real row of each prompt only.
void Generator::prefill_device(const std::vector<std::vector<int32_t>>& prompts, int max_len) {
  const GPTConfig& cfg = model_.config();
  Backend& be = model_.backend();
  const int B = static_cast<int>(prompts.size()), C = cfg.n_embd, NH = cfg.n_head;
  HH_CHECK(B >= 1, "generator: prefill needs at least one prompt");
  HH_CHECK(max_len >= 1 && max_len <= cfg.max_seq_len, "generator: max_len=", max_len,
           " must be in [1, max_seq_len=", cfg.max_seq_len, "]");
  int T = 0;
  for (int b = 0; b < B; b++) {
    const int len = static_cast<int>(prompts[b].size());
    HH_CHECK(len >= 1, "generator: prompt ", b, " is empty");
    HH_CHECK(len <= max_len, "generator: prompt ", b, " has ", len,
             " tokens, more than the cache's max_len=", max_len);
    T = std::max(T, len);
  }
  const int N = B * T;
  std::vector<int32_t> tokens(N, 0), positions(N, -1), slots(N, 0), rows(B);
  lengths_.assign(B, 0);
  for (int b = 0; b < B; b++) {
    const int len = static_cast<int>(prompts[b].size());
    for (int t = 0; t < len; t++) {
      const int32_t tok = prompts[b][t];
      HH_CHECK(tok >= 0 && tok < cfg.vocab_size, "generator: prompt ", b, " has token id ", tok,
               " at position ", t, ", outside the vocabulary [0, ", cfg.vocab_size, ")");
      tokens[b * T + t] = tok;
      positions[b * T + t] = t;
    }
    for (int t = 0; t < T; t++) slots[b * T + t] = b;
    lengths_[b] = len;
    rows[b] = b * T + len - 1;
  }
  // The graphs bake in the cache's layout (slots, max_len): a batch of another layout drops
  // them. With the same layout they stay; a buffer that moves below (cache, prefill
  // buffers) frees memory, which makes the backend call them stale at their next launch.
  if (B != cache_.slots() || max_len != cache_.max_len()) drop_graphs();
  max_len_ = max_len;
  cache_.reserve(be, cfg.n_layer, B, max_len, C);
  plan_prefill(B, T);
  decode_half_ = be.decode_fp16();
  if (decode_half_) {
    const Buffer<float>& params = model_.params();
    if (grow(half_params_, be, params.size())) drop_graphs();
    be.to_half(half_params_.data(), params.data(), params.size());
  }
  be.copy_to_device(tokens_dev_.data(), tokens.data(), N * sizeof(int32_t));
  be.copy_to_device(positions_dev_.data(), positions.data(), N * sizeof(int32_t));
  be.copy_to_device(slots_dev_.data(), slots.data(), N * sizeof(int32_t));
  be.copy_to_device(lengths_dev_.data(), lengths_.data(), B * sizeof(int32_t));
  be.copy_to_device(rows_dev_.data(), rows.data(), B * sizeof(int32_t));

  be.embedding_forward(x_.data(), tokens_dev_.data(), model_.param_data("transformer.wte.weight"),
                       model_.param_data("transformer.wpe.weight"), B, T, C);
  for (int l = 0; l < cfg.n_layer; l++) {
    layer_forward(l, N, [&] {
      be.kv_cache_write(cache_.keys(l), cache_.values(l), qkv_.data(), slots_dev_.data(),
                        positions_dev_.data(), N, max_len, C);
      be.attention_forward(atty_.data(), att_saved_.data(), qkv_.data(), lengths_dev_.data(), B, T,
                           C, NH);
    });
  }
  be.gather_rows(last_.data(), x_.data(), rows_dev_.data(), B, C);
  compute_logits(last_.data(), B);
}

// One token for each listed sequence at its next position: the same layer sequence as
// prefill on M rows, with attention_decode (which appends k, v to the cache) in place of
// kv_cache_write + attention_forward.
// tokens null: the tokens are the last sample_device's ids, still on the device (the rows
// must be those of that step).
void Generator::decode_device(const std::vector<int32_t>& seqs, const std::vector<int32_t>* tokens,
                              const std::vector<uint64_t>* seeds, float temperature) {
  const GPTConfig& cfg = model_.config();
  Backend& be = model_.backend();
  const int M = static_cast<int>(seqs.size()), C = cfg.n_embd, NH = cfg.n_head;
  HH_CHECK(M >= 1 && (!tokens || tokens->size() == seqs.size()), "generator: decode got ",
           seqs.size(), " sequences and ", tokens ? tokens->size() : 0, " tokens");
  HH_CHECK(!seeds || seeds->size() == seqs.size(), "generator: decode got ", seqs.size(),
           " sequences and ", seeds ? seeds->size() : 0, " seeds");
  // One upload: tokens | positions | slots.
  std::vector<int32_t>& ints = step_ints_;
  ints.resize(3 * static_cast<size_t>(M));
  for (int i = 0; i < M; i++) {
    const int s = seqs[i];
    HH_CHECK(s >= 0 && s < static_cast<int>(lengths_.size()), "generator: decode of sequence ", s,
             ", the batch has ", lengths_.size());
    HH_CHECK(lengths_[s] < max_len_, "generator: sequence ", s, " is full (", max_len_, " tokens)");
    const int32_t tok = tokens ? (*tokens)[i] : 0;
    HH_CHECK(tok >= 0 && tok < cfg.vocab_size, "generator: token id ", tok,
             " is outside the vocabulary [0, ", cfg.vocab_size, ")");
    ints[i] = tok;
    ints[M + i] = lengths_[s];
    ints[2 * M + i] = s;
  }
  for (int i = 0; i < M; i++)
    for (int j = 0; j < i; j++)
      HH_CHECK(seqs[i] != seqs[j], "generator: sequence ", seqs[i], " listed twice in decode");
  // With the tokens on the device, this step has the last one's rows, whose buffers are
  // already sized: nothing moves (a moved sampled_dev_ would have lost the tokens).
  HH_CHECK(!plan_decode(M) || tokens, "generator: decode buffers moved under device-side tokens");
  // One upload of everything that changes from step to step: [seeds |] tokens | positions |
  // slots. The step's ops read them from these fixed addresses (never as launch
  // arguments), so a graph captured for M replays any later step of M rows.
  if (seeds) {
    step_in_.resize(step_in_words(M));
    std::copy(seeds->begin(), seeds->end(), step_in_.begin());
    std::memcpy(step_in_.data() + M, ints.data(), ints.size() * sizeof(int32_t));
    be.copy_to_device(seeds_dev(), step_in_.data(),
                      M * sizeof(uint64_t) + ints.size() * sizeof(int32_t));
  } else {
    be.copy_to_device(step_ints_dev(M), ints.data(), ints.size() * sizeof(int32_t));
  }
  if (!tokens) be.copy_on_device(step_ints_dev(M), sampled_dev_.data(), M * sizeof(int32_t));

  uint32_t temperature_bits = 0;
  if (seeds) std::memcpy(&temperature_bits, &temperature, sizeof(temperature_bits));
  run_step(StepKey{M, seeds != nullptr, temperature_bits}, [&] {
    const int32_t* tokens_dev = step_ints_dev(M);
    const int32_t* positions_dev = tokens_dev + M;
    const int32_t* slots_dev = tokens_dev + 2 * M;
    be.embedding_forward_at(x_.data(), tokens_dev, positions_dev,
                            model_.param_data("transformer.wte.weight"),
                            model_.param_data("transformer.wpe.weight"), M, C);
    for (int l = 0; l < cfg.n_layer; l++) {
      if (decode_half_) {
        layer_forward_half(l, M, [&] {
          be.attention_decode_half(atty_.data(), qkv_.data(), cache_.keys(l), cache_.values(l),
                                   slots_dev, positions_dev, M, max_len_, C, NH);
        });
      } else {
        layer_forward(l, M, [&] {
          be.attention_decode(atty_.data(), qkv_.data(), cache_.keys(l), cache_.values(l),
                              slots_dev, positions_dev, M, max_len_, C, NH);
        });
      }
    }
    compute_logits(x_.data(), M, decode_half_);
    if (seeds) sample_device(M, temperature);
  });
  for (int i = 0; i < M; i++) lengths_[seqs[i]]++;
}

// ---------------------------------------------------------------------------------------
// Generator: the sampling loop

std::vector<GeneratedSample> Generator::generate(const std::vector<std::vector<int32_t>>& prompts,
                                                 const SamplingOptions& options,
                                                 const StreamCallback& on_text) {
  options.validate();
  const auto start = std::chrono::steady_clock::now();
  const GPTConfig& cfg = model_.config();
  const int B = static_cast<int>(prompts.size()), V = cfg.vocab_size;
  last_new_tokens_ = 0;
  last_seconds_ = 0;
  std::vector<GeneratedSample> out(B);
  if (B == 0) return out;
  for (int b = 0; b < B; b++) HH_CHECK(!prompts[b].empty(), "generate: prompt ", b, " is empty");
  HH_CHECK(options.max_new_tokens < cfg.max_seq_len,
           "generate: max_new_tokens=", options.max_new_tokens,
           " leaves no room for a prompt in the context of ", cfg.max_seq_len, " tokens");
  const size_t max_prompt = static_cast<size_t>(cfg.max_seq_len - options.max_new_tokens);
  std::vector<std::vector<int32_t>> run(B);
  int truncated = 0;
  size_t longest = 0, longest_original = 0;
  for (int b = 0; b < B; b++) {
    const std::vector<int32_t>& p = prompts[b];
    longest_original = std::max(longest_original, p.size());
    if (p.size() > max_prompt) {
      run[b].assign(p.end() - static_cast<std::ptrdiff_t>(max_prompt), p.end());
      out[b].prompt_truncated = true;
      truncated++;
    } else {
      run[b] = p;
    }
    longest = std::max(longest, run[b].size());
  }
  if (truncated > 0)
    std::fprintf(stderr,
                 "hh: warning: %d prompt(s) longer than %zu tokens (max_seq_len %d - "
                 "max_new_tokens %d) were truncated from the left (longest: %zu tokens)\n",
                 truncated, max_prompt, cfg.max_seq_len, options.max_new_tokens, longest_original);

  std::vector<std::string> stops;
  for (const std::string& s : options.stop_strings)
    if (!s.empty()) stops.push_back(s);
  const int32_t eot = tokenizer_.eot_id();

  // The cache's length, rounded up to a multiple of 64 (within the context), so batches whose
  // longest prompts differ a little share a layout and the decode-step graphs.
  const int needed = static_cast<int>(longest) + options.max_new_tokens;
  const int max_len = std::min(cfg.max_seq_len, (needed + 63) / 64 * 64);
  prefill_device(run, max_len);
  std::vector<SequenceState> state(B);
  std::vector<int32_t> active(B);  // sequences whose logits are the rows of logits_
  for (int b = 0; b < B; b++) {
    state[b].rng.reseed(sample_stream_seed(options.seed, options.stream_offset + b));
    out[b].prompt_ids = run[b];
    active[b] = b;
  }
  // Plain temperature sampling (or greedy) runs on the device (sample_rows: Gumbel-max),
  // so only the ids and log-probs come back; top-k/top-p sample on the host from the
  // copied logits.
  const bool greedy = options.temperature == 0.0f || options.top_k == 1;
  const bool on_device =
      greedy || (options.top_p >= 1.0f && (options.top_k == 0 || options.top_k >= V));
  const float device_temperature = greedy ? 0.0f : options.temperature;
  std::vector<std::pair<float, int32_t>> scratch;
  std::vector<float> logits, sampled_logprobs;
  std::vector<int32_t> sampled;
  // On the device, each step's draw uses one seed per sequence from its own stream; a decode
  // step samples its new logits right away (inside the step's graph), the prefill's logits
  // are sampled here.
  std::vector<uint64_t> seeds;
  auto draw_seeds = [&](const std::vector<int32_t>& seqs) {
    seeds.resize(seqs.size());
    for (size_t i = 0; i < seqs.size(); i++) seeds[i] = state[seqs[i]].rng.next_u64();
  };
  if (on_device) {
    draw_seeds(active);
    model_.backend().copy_to_device(seeds_dev(), seeds.data(), seeds.size() * sizeof(uint64_t));
    sample_device(B, device_temperature);
  }

  // `active` lists the sequence of each row of the step whose results are on the device.
  // Sampling on the device, the loop runs one step ahead where it can: it queues the copy
  // of the step's samples, then the next decode step on the same rows (its tokens are the
  // samples, copied on the device), and only then waits for the copy, so the host's work
  // overlaps the device's. It can when every row is live and none reaches max_new_tokens
  // with this token. A row that then stops (stop string, <|endoftext|>) is dead in the step
  // queued ahead: its sample is ignored, nothing runs ahead from that step, and the step
  // after it drops the row. Each live row draws one seed per step from its own stream, so
  // the samples are those of the step-by-step loop.
  const int max_new = options.max_new_tokens;
  while (!active.empty()) {
    const int M = static_cast<int>(active.size());
    bool ahead = on_device && run_ahead_;
    for (int b : active)
      ahead = ahead && !state[b].finished &&
              static_cast<int>(out[b].generated_ids.size()) + 1 < max_new;
    if (on_device) {
      request_samples(M);
      if (ahead) {
        draw_seeds(active);
        decode_device(active, nullptr, &seeds, device_temperature);
      }
      receive_samples(M, &sampled, &sampled_logprobs);
    } else {
      logits = host_logits(M);
    }
    std::vector<int32_t> next_seqs, next_tokens;
    for (int i = 0; i < M; i++) {
      const int b = active[i];
      SequenceState& st = state[b];
      if (st.finished) continue;  // a dead row of a step queued ahead
      GeneratedSample& s = out[b];
      int32_t tok;
      float logprob;
      if (on_device) {
        tok = sampled[i];
        logprob = sampled_logprobs[i];
      } else {
        const float* row = logits.data() + static_cast<size_t>(i) * V;
        tok = sample_token(row, V, options, st.rng.uniform_double(), &scratch);
        logprob = token_logprob(row, V, tok);
      }
      s.generated_ids.push_back(tok);
      s.generated_logprobs.push_back(logprob);
      last_new_tokens_++;
      if (options.stop_at_eot && tok == eot) {
        s.finish_reason = "eot";
        st.finished = true;
      } else {
        const size_t old_size = st.text.size();
        st.text += tokenizer_.decode_token(tok);
        st.token_ends.push_back(st.text.size());
        // The earliest stop string in the response; only matches that end in the new piece
        // are new, so the search starts where such a match could begin.
        size_t stop_at = std::string::npos;
        for (const std::string& stop : stops) {
          const size_t from = old_size >= stop.size() - 1 ? old_size - (stop.size() - 1) : 0;
          const size_t at = st.text.find(stop, from);
          if (at != std::string::npos) stop_at = std::min(stop_at, at);
        }
        if (stop_at != std::string::npos) {
          s.finish_reason = "stop";
          st.finished = true;
          st.text.resize(stop_at);
        }
      }
      if (!st.finished && static_cast<int>(s.generated_ids.size()) >= options.max_new_tokens) {
        s.finish_reason = "length";
        st.finished = true;
      }
      if (st.finished) {
        // The response: the tokens whose text lies entirely before the cut.
        size_t keep = 0;
        while (keep < st.token_ends.size() && st.token_ends[keep] <= st.text.size()) keep++;
        s.response_ids.assign(s.generated_ids.begin(), s.generated_ids.begin() + keep);
        s.logprobs.assign(s.generated_logprobs.begin(), s.generated_logprobs.begin() + keep);
        s.response_text = st.text;
      } else {
        next_seqs.push_back(b);
        next_tokens.push_back(tok);
      }
      if (on_text) {
        const size_t held = st.finished ? 0 : pending_stop_prefix(st.text, stops);
        const size_t safe_end = st.text.size() - held;
        if (safe_end > st.emitted) {
          on_text(b, st.text.substr(st.emitted, safe_end - st.emitted));
          st.emitted = safe_end;
        }
      }
    }
    if (ahead) continue;  // the step queued ahead has the same rows
    active = next_seqs;
    if (active.empty()) break;
    if (on_device) {
      draw_seeds(active);
      decode_device(active, &next_tokens, &seeds, device_temperature);
    } else {
      decode_device(active, &next_tokens);
    }
  }
  last_seconds_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return out;
}

}  // namespace hh
