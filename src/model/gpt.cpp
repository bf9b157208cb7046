// GPT-2 forward and backward over hh::Backend ops. See gpt.h and docs/model.md.
#include "model/gpt.h"

#include <cmath>
#include <map>
#include <type_traits>

#include "core/error.h"
#include "core/rng.h"
#include "core/safetensors.h"

namespace hh {

namespace {

constexpr size_t kTensorAlign = 64;  // every tensor starts at a multiple of 64 floats

size_t round_up(size_t x, size_t m) { return (x + m - 1) / m * m; }

// Grow-only device buffer: reallocates (contents lost) only when n exceeds its size.
template <typename T>
void grow(Buffer<T>& buf, Backend& be, size_t n) {
  if (buf.size() < n) buf = Buffer<T>(be, n);
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); i++) s += (i ? "," : "") + std::to_string(shape[i]);
  return s + "]";
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Hugging Face's Conv1D layers store W[IC][OC]; ours are W[OC][IC].
bool is_conv1d_weight(const std::string& name) {
  return ends_with(name, ".attn.c_attn.weight") || ends_with(name, ".attn.c_proj.weight") ||
         ends_with(name, ".mlp.c_fc.weight") || ends_with(name, ".mlp.c_proj.weight");
}

// dst[c][r] = src[r][c] for src [rows][cols].
std::vector<float> transpose(const std::vector<float>& src, int64_t rows, int64_t cols) {
  std::vector<float> dst(src.size());
  for (int64_t r = 0; r < rows; r++)
    for (int64_t c = 0; c < cols; c++) dst[c * rows + r] = src[r * cols + c];
  return dst;
}

}  // namespace

// ---------------------------------------------------------------------------------------
// GPTConfig

GPTConfig GPTConfig::preset(const std::string& name) {
  GPTConfig c;
  if (name == "tiny") {
    c.n_layer = 2, c.n_head = 4, c.n_embd = 64, c.max_seq_len = 256;
  } else if (name == "small") {
    c.n_layer = 4, c.n_head = 4, c.n_embd = 256, c.max_seq_len = 512;
  } else if (name == "gpt2-124m") {
    c.n_layer = 12, c.n_head = 12, c.n_embd = 768, c.max_seq_len = 1024;
  } else {
    HH_FAIL("unknown model preset '", name, "' (expected tiny, small or gpt2-124m)");
  }
  return c;
}

GPTConfig GPTConfig::preset(const std::string& name, int vocab_size) {
  GPTConfig c = preset(name);
  c.set_vocab_size(vocab_size);
  return c;
}

// padded_vocab_size = the smallest multiple of 64 >= vocab_size (GPU-friendly matmuls).
void GPTConfig::set_vocab_size(int vocab) {
  HH_CHECK(vocab > 0, "model config: vocab_size must be positive, got ", vocab);
  vocab_size = vocab;
  padded_vocab_size = static_cast<int>(round_up(static_cast<size_t>(vocab), 64));
}

void GPTConfig::validate() const {
  HH_CHECK(n_layer >= 1 && n_layer <= 1000, "model config: n_layer must be in [1, 1000], got ",
           n_layer);
  HH_CHECK(n_head >= 1, "model config: n_head must be positive, got ", n_head);
  HH_CHECK(n_embd >= 1 && n_embd <= 65536, "model config: n_embd must be in [1, 65536], got ",
           n_embd);
  HH_CHECK(n_embd % n_head == 0, "model config: n_embd=", n_embd,
           " is not a multiple of n_head=", n_head);
  HH_CHECK(vocab_size >= 1 && vocab_size <= (1 << 24),
           "model config: vocab_size must be in [1, 2^24], got ", vocab_size,
           " (set it with set_vocab_size)");
  HH_CHECK(padded_vocab_size >= vocab_size && padded_vocab_size % 64 == 0,
           "model config: padded_vocab_size=", padded_vocab_size,
           " must be a multiple of 64 and >= vocab_size=", vocab_size);
  HH_CHECK(max_seq_len >= 1 && max_seq_len <= (1 << 20),
           "model config: max_seq_len must be in [1, 2^20], got ", max_seq_len);
}

Json GPTConfig::to_json() const {
  Json j = Json::object();
  j["n_layer"] = n_layer;
  j["n_head"] = n_head;
  j["n_embd"] = n_embd;
  j["vocab_size"] = vocab_size;
  j["padded_vocab_size"] = padded_vocab_size;
  j["max_seq_len"] = max_seq_len;
  return j;
}

GPTConfig GPTConfig::from_json(const Json& j, const std::string& what) {
  HH_CHECK(j.is_object(), what, ": model config must be a JSON object");
  auto field = [&](const char* key) -> int {
    const Json* v = j.find(key);
    HH_CHECK(v != nullptr, what, ": model config has no field '", key, "'");
    HH_CHECK(v->is_int32(), what, ": model config field '", key, "' must be an integer, got ",
             v->dump());
    return static_cast<int>(v->as_int());
  };
  GPTConfig c;
  c.n_layer = field("n_layer");
  c.n_head = field("n_head");
  c.n_embd = field("n_embd");
  c.vocab_size = field("vocab_size");
  c.padded_vocab_size = field("padded_vocab_size");
  c.max_seq_len = field("max_seq_len");
  try {
    c.validate();
  } catch (const Error& e) {
    HH_FAIL(what, ": ", e.what());
  }
  return c;
}

bool GPTConfig::operator==(const GPTConfig& o) const {
  return n_layer == o.n_layer && n_head == o.n_head && n_embd == o.n_embd &&
         vocab_size == o.vocab_size && padded_vocab_size == o.padded_vocab_size &&
         max_seq_len == o.max_seq_len;
}

std::string GPTConfig::describe() const {
  return str_cat("n_layer=", n_layer, " n_head=", n_head, " n_embd=", n_embd,
                 " vocab_size=", vocab_size, " padded_vocab_size=", padded_vocab_size,
                 " max_seq_len=", max_seq_len);
}

// ---------------------------------------------------------------------------------------
// Parameters

// Layout: [decayed: wte, wpe, per layer the 4 linear weights, score.weight] then
// [not decayed: per layer LayerNorms and biases, ln_f, score.bias].
std::vector<ParamTensor> GPT::parameter_layout(const GPTConfig& config, bool scalar_head) {
  config.validate();
  std::vector<ParamTensor> tensors;
  size_t end = 0;
  auto add = [&](std::string name, std::vector<int64_t> shape, bool decay) {
    ParamTensor t;
    t.name = std::move(name);
    t.numel = 1;
    for (int64_t d : shape) t.numel *= static_cast<size_t>(d);
    t.shape = std::move(shape);
    t.offset = round_up(end, kTensorAlign);
    t.decay = decay;
    end = t.offset + t.numel;
    tensors.push_back(std::move(t));
  };
  const int64_t C = config.n_embd, L = config.n_layer;
  auto layer = [](int l, const char* what) { return str_cat("transformer.h.", l, ".", what); };
  add("transformer.wte.weight", {config.padded_vocab_size, C}, true);
  add("transformer.wpe.weight", {config.max_seq_len, C}, true);
  for (int l = 0; l < L; l++) {
    add(layer(l, "attn.c_attn.weight"), {3 * C, C}, true);
    add(layer(l, "attn.c_proj.weight"), {C, C}, true);
    add(layer(l, "mlp.c_fc.weight"), {4 * C, C}, true);
    add(layer(l, "mlp.c_proj.weight"), {C, 4 * C}, true);
  }
  if (scalar_head) add("score.weight", {1, C}, true);
  for (int l = 0; l < L; l++) {
    add(layer(l, "ln_1.weight"), {C}, false);
    add(layer(l, "ln_1.bias"), {C}, false);
    add(layer(l, "attn.c_attn.bias"), {3 * C}, false);
    add(layer(l, "attn.c_proj.bias"), {C}, false);
    add(layer(l, "ln_2.weight"), {C}, false);
    add(layer(l, "ln_2.bias"), {C}, false);
    add(layer(l, "mlp.c_fc.bias"), {4 * C}, false);
    add(layer(l, "mlp.c_proj.bias"), {C}, false);
  }
  add("transformer.ln_f.weight", {C}, false);
  add("transformer.ln_f.bias", {C}, false);
  if (scalar_head) add("score.bias", {1}, false);
  return tensors;
}

GPT::GPT(Backend& backend, const GPTConfig& config, bool scalar_head)
    : backend_(&backend), config_(config), scalar_head_(scalar_head) {
  tensors_ = parameter_layout(config_, scalar_head_);
  const int L = config_.n_layer;
  auto layer = [](int l, const char* what) { return str_cat("transformer.h.", l, ".", what); };
  // Every tensor starts aligned, so the first undecayed one starts where the decayed part
  // ends.
  for (const ParamTensor& t : tensors_) {
    if (!t.decay) {
      decay_size_ = t.offset;
      break;
    }
  }
  total_floats_ = round_up(tensors_.back().offset + tensors_.back().numel, kTensorAlign);

  wte_ = param("transformer.wte.weight").offset;
  wpe_ = param("transformer.wpe.weight").offset;
  lnf_w_ = param("transformer.ln_f.weight").offset;
  lnf_b_ = param("transformer.ln_f.bias").offset;
  if (scalar_head_) {
    score_w_ = param("score.weight").offset;
    score_b_ = param("score.bias").offset;
  }
  for (int l = 0; l < L; l++) {
    auto off = [&](const char* what) { return param(layer(l, what)).offset; };
    layer_offsets_.push_back({off("ln_1.weight"), off("ln_1.bias"), off("attn.c_attn.weight"),
                              off("attn.c_attn.bias"), off("attn.c_proj.weight"),
                              off("attn.c_proj.bias"), off("ln_2.weight"), off("ln_2.bias"),
                              off("mlp.c_fc.weight"), off("mlp.c_fc.bias"),
                              off("mlp.c_proj.weight"), off("mlp.c_proj.bias")});
  }

  params_ = Buffer<float>(backend, total_floats_);
  grads_ = Buffer<float>(backend, total_floats_);
  backend.fill_zero(params_.data(), params_.bytes());
  backend.fill_zero(grads_.data(), grads_.bytes());
}

const ParamTensor& GPT::param(const std::string& name) const {
  for (const ParamTensor& t : tensors_)
    if (t.name == name) return t;
  HH_FAIL("model has no parameter '", name, "'",
          (name.rfind("score.", 0) == 0 ? " (it was built without a scalar head)" : ""));
}

bool GPT::has_param(const std::string& name) const {
  for (const ParamTensor& t : tensors_)
    if (t.name == name) return true;
  return false;
}

size_t GPT::num_parameters() const {
  size_t n = 0;
  for (const ParamTensor& t : tensors_) n += t.numel;
  return n;
}

std::vector<float> GPT::get_param(const std::string& name) const {
  const ParamTensor& t = param(name);
  std::vector<float> out(t.numel);
  backend_->copy_to_host(out.data(), params_.data() + t.offset, t.numel * sizeof(float));
  return out;
}

void GPT::set_param(const std::string& name, const std::vector<float>& values) {
  const ParamTensor& t = param(name);
  HH_CHECK(values.size() == t.numel, "set_param(", name, "): got ", values.size(),
           " values, the tensor ", shape_str(t.shape), " has ", t.numel);
  backend_->copy_to_device(params_.data() + t.offset, values.data(), t.numel * sizeof(float));
}

std::vector<float> GPT::get_grad(const std::string& name) const {
  const ParamTensor& t = param(name);
  std::vector<float> out(t.numel);
  backend_->copy_to_host(out.data(), grads_.data() + t.offset, t.numel * sizeof(float));
  return out;
}

// GPT-2 init (Radford et al. 2019): N(0, 0.02) for matrices and embeddings, residual
// projections scaled by 1/√(2·n_layer), biases 0, LayerNorm weights 1. One Rng stream in
// buffer order, so the result depends only on the seed and the config.
void GPT::init_random(uint64_t seed) {
  Rng rng(seed);
  std::vector<float> host(total_floats_, 0.0f);
  const float std_base = 0.02f;
  const float std_resid = 0.02f / std::sqrt(2.0f * static_cast<float>(config_.n_layer));
  for (const ParamTensor& t : tensors_) {
    float* p = host.data() + t.offset;
    if (ends_with(t.name, "ln_1.weight") || ends_with(t.name, "ln_2.weight") ||
        ends_with(t.name, "ln_f.weight")) {
      for (size_t i = 0; i < t.numel; i++) p[i] = 1.0f;
    } else if (!t.decay) {
      // biases (and LayerNorm biases) stay 0
    } else {
      const bool resid =
          ends_with(t.name, "attn.c_proj.weight") || ends_with(t.name, "mlp.c_proj.weight");
      const float std = resid ? std_resid : std_base;
      size_t n = t.numel;
      if (t.name == "transformer.wte.weight")  // padded rows stay zero
        n = static_cast<size_t>(config_.vocab_size) * config_.n_embd;
      for (size_t i = 0; i < n; i++) p[i] = std * rng.normal();
    }
  }
  backend_->copy_to_device(params_.data(), host.data(), host.size() * sizeof(float));
}

void GPT::zero_grad() { backend_->fill_zero(grads_.data(), grads_.bytes()); }

// ---------------------------------------------------------------------------------------
// Activations

// The activation buffers and their element counts, each list in one place: what a
// forward over B×T allocates, what the backward adds, the LM head's logits, the scalar
// head's M rows. plan_activations & co. grow them; bytes_to_train adds them up.
template <typename F>
void GPT::forward_buffers(int B, int T, F&& f) {
  const size_t N = static_cast<size_t>(B) * T, C = config_.n_embd, L = config_.n_layer;
  const size_t saved = backend_->attention_saved_floats(B, T, config_.n_head);
  f(tokens_, N);
  f(targets_, N);
  f(lengths_, B);
  f(encoded_, N * C);
  f(ln1_, L * N * C);
  f(ln1_mean_, L * N);
  f(ln1_rstd_, L * N);
  f(qkv_, L * N * 3 * C);
  f(atty_, L * N * C);
  f(att_saved_, L * saved);
  f(residual2_, L * N * C);
  f(ln2_, L * N * C);
  f(ln2_mean_, L * N);
  f(ln2_rstd_, L * N);
  f(fch_, L * N * 4 * C);
  f(fch_gelu_, L * N * 4 * C);
  f(residual3_, L * N * C);
  f(lnf_, N * C);
  f(lnf_mean_, N);
  f(lnf_rstd_, N);
  f(losses_, N);
  f(dlosses_, N);
}

template <typename F>
void GPT::backward_buffers(int B, int T, F&& f) {
  const size_t N = static_cast<size_t>(B) * T, C = config_.n_embd;
  f(dresidual_, N * C);
  f(dbuf_c_, N * C);
  f(dbuf_4c_, N * 4 * C);
}

template <typename F>
void GPT::lm_head_buffers(int B, int T, F&& f) {
  f(logits_, static_cast<size_t>(B) * T * config_.padded_vocab_size);
}

template <typename F>
void GPT::score_buffers(int M, F&& f) {
  const size_t C = config_.n_embd;
  f(rows_, M);
  f(gathered_, M * C);
  f(dgathered_, M * C);
  f(scores_, M);
  f(dscores_, M);
}

void GPT::plan_activations(int B, int T) {
  att_saved_per_layer_ = backend_->attention_saved_floats(B, T, config_.n_head);
  forward_buffers(B, T, [this](auto& buf, size_t n) { grow(buf, *backend_, n); });
}

size_t GPT::bytes_to_train(int B, int T, int score_rows, bool with_backward) {
  size_t bytes = 0;
  // Bytes a buffer still has to grow by (grow() replaces it, but the old one is freed).
  auto add = [&bytes](auto& buf, size_t n) {
    using Elem = typename std::remove_reference_t<decltype(buf)>::value_type;
    if (n > buf.size()) bytes += (n - buf.size()) * sizeof(Elem);
  };
  forward_buffers(B, T, add);
  if (with_backward) backward_buffers(B, T, add);
  if (score_rows > 0)
    score_buffers(score_rows, add);
  else
    lm_head_buffers(B, T, add);
  return bytes;
}

GPT::LayerActs GPT::layer_acts(int l) {
  const size_t N = static_cast<size_t>(B_) * T_, C = config_.n_embd;
  LayerActs a;
  a.ln1 = ln1_.data() + l * N * C;
  a.ln1_mean = ln1_mean_.data() + l * N;
  a.ln1_rstd = ln1_rstd_.data() + l * N;
  a.qkv = qkv_.data() + l * N * 3 * C;
  a.atty = atty_.data() + l * N * C;
  a.att_saved = att_saved_.data() + l * att_saved_per_layer_;
  a.residual2 = residual2_.data() + l * N * C;
  a.ln2 = ln2_.data() + l * N * C;
  a.ln2_mean = ln2_mean_.data() + l * N;
  a.ln2_rstd = ln2_rstd_.data() + l * N;
  a.fch = fch_.data() + l * N * 4 * C;
  a.fch_gelu = fch_gelu_.data() + l * N * 4 * C;
  a.residual3 = residual3_.data() + l * N * C;
  return a;
}

void GPT::ensure_grad_scratch() {
  backward_buffers(B_, T_, [this](auto& buf, size_t n) { grow(buf, *backend_, n); });
}

// Validates a batch (naming the bad field and position) and copies it to the device.
// Padded positions get token 0 and no target, so whatever the caller put there is inert.
void GPT::check_and_upload(const Batch& batch, bool need_targets) {
  const int B = batch.B, T = batch.T, V = config_.vocab_size;
  mode_ = Mode::None;  // a batch that fails validation leaves nothing to backpropagate
  host_losses_.clear();
  HH_CHECK(B >= 1, "batch: B must be >= 1, got ", B);
  HH_CHECK(T >= 1 && T <= config_.max_seq_len, "batch: sequence length T=", T,
           " must be in [1, max_seq_len=", config_.max_seq_len, "]");
  const size_t N = static_cast<size_t>(B) * T;
  HH_CHECK(batch.tokens.size() == N, "batch: tokens has ", batch.tokens.size(),
           " entries, expected B*T = ", N);
  HH_CHECK(batch.lengths.size() == static_cast<size_t>(B), "batch: lengths has ",
           batch.lengths.size(), " entries, expected B = ", B);
  HH_CHECK(!need_targets || !batch.targets.empty(), "batch: forward() needs targets");
  HH_CHECK(batch.targets.empty() || batch.targets.size() == N, "batch: targets has ",
           batch.targets.size(), " entries, expected B*T = ", N);
  HH_CHECK(batch.loss_weights.empty() || batch.loss_weights.size() == N, "batch: loss_weights has ",
           batch.loss_weights.size(), " entries, expected B*T = ", N);
  host_tokens_.assign(N, 0);
  host_targets_.assign(N, -1);
  host_weights_.assign(N, 0.0f);
  host_lengths_.assign(batch.lengths.begin(), batch.lengths.end());
  target_count_ = 0;
  weight_sum_ = 0;
  for (int b = 0; b < B; b++) {
    const int len = batch.lengths[b];
    HH_CHECK(len >= 1 && len <= T, "batch: lengths[", b, "]=", len, " is outside [1, T=", T, "]");
    for (int t = 0; t < len; t++) {
      const size_t i = static_cast<size_t>(b) * T + t;
      const int32_t tok = batch.tokens[i];
      HH_CHECK(tok >= 0 && tok < V, "batch: token id ", tok, " at (b=", b, ", t=", t,
               ") is outside the vocabulary [0, ", V, ")");
      host_tokens_[i] = tok;
      if (batch.targets.empty() || batch.targets[i] < 0) continue;
      const int32_t target = batch.targets[i];
      HH_CHECK(target < V, "batch: target ", target, " at (b=", b, ", t=", t,
               ") is outside the vocabulary [0, ", V, ")");
      float w = 1.0f;
      if (!batch.loss_weights.empty()) {
        w = batch.loss_weights[i];
        HH_CHECK(std::isfinite(w) && w >= 0.0f, "batch: loss_weights at (b=", b, ", t=", t, ") is ",
                 w, ", must be finite and >= 0");
      }
      host_targets_[i] = target;
      host_weights_[i] = w;
      target_count_++;
      weight_sum_ += w;
    }
  }
  B_ = B;
  T_ = T;
  plan_activations(B, T);
  backend_->copy_to_device(tokens_.data(), host_tokens_.data(), N * sizeof(int32_t));
  backend_->copy_to_device(targets_.data(), host_targets_.data(), N * sizeof(int32_t));
  backend_->copy_to_device(lengths_.data(), host_lengths_.data(), B * sizeof(int32_t));
}

// ---------------------------------------------------------------------------------------
// Forward

// encoded = wte[tokens] + wpe; per layer (pre-LN):
//   x2 = x + proj(attn(ln_1(x))),  x3 = x2 + mlp_proj(gelu(fc(ln_2(x2))));
// lnf = ln_f(x after the last layer).
void GPT::trunk_forward() {
  Backend& be = *backend_;
  const int B = B_, T = T_, C = config_.n_embd, NH = config_.n_head;
  const int N = B * T;
  const float* p = params_.data();
  be.embedding_forward(encoded_.data(), tokens_.data(), p + wte_, p + wpe_, B, T, C);
  const float* residual = encoded_.data();
  for (int l = 0; l < config_.n_layer; l++) {
    const LayerOffsets& o = layer_offsets_[l];
    LayerActs a = layer_acts(l);
    be.layernorm_forward(a.ln1, a.ln1_mean, a.ln1_rstd, residual, p + o.ln1_w, p + o.ln1_b, N, C);
    be.matmul_forward(a.qkv, a.ln1, p + o.qkv_w, p + o.qkv_b, N, C, 3 * C);
    be.attention_forward(a.atty, a.att_saved, a.qkv, lengths_.data(), B, T, C, NH);
    be.matmul_residual_forward(a.residual2, a.atty, p + o.attproj_w, p + o.attproj_b, residual, N,
                               C, C);
    be.layernorm_forward(a.ln2, a.ln2_mean, a.ln2_rstd, a.residual2, p + o.ln2_w, p + o.ln2_b, N,
                         C);
    be.matmul_gelu_forward(a.fch, a.fch_gelu, a.ln2, p + o.fc_w, p + o.fc_b, N, C, 4 * C);
    be.matmul_residual_forward(a.residual3, a.fch_gelu, p + o.fcproj_w, p + o.fcproj_b, a.residual2,
                               N, 4 * C, C);
    residual = a.residual3;
  }
  be.layernorm_forward(lnf_.data(), lnf_mean_.data(), lnf_rstd_.data(), residual, p + lnf_w_,
                       p + lnf_b_, N, C);
}

// logits = lnf · wteᵀ (the tied LM head), [N, Vp]; padded columns are 0 and never used.
void GPT::forward_logits(const Batch& batch) {
  check_and_upload(batch, false);
  const size_t N = static_cast<size_t>(B_) * T_;
  lm_head_buffers(B_, T_, [this](auto& buf, size_t n) { grow(buf, *backend_, n); });
  trunk_forward();
  backend_->matmul_forward(logits_.data(), lnf_.data(), params_.data() + wte_, nullptr,
                           static_cast<int>(N), config_.n_embd, config_.padded_vocab_size);
  mode_ = Mode::Logits;
}

// loss = Σᵢ wᵢ·lᵢ / Σᵢ wᵢ over positions with a target, lᵢ = -log softmax(logitsᵢ)[targetᵢ].
float GPT::forward(const Batch& batch) {
  HH_CHECK(!batch.targets.empty(), "batch: forward() needs targets");
  forward_logits(batch);
  const size_t N = static_cast<size_t>(B_) * T_;
  backend_->crossentropy_forward(losses_.data(), logits_.data(), targets_.data(),
                                 static_cast<int>(N), config_.vocab_size,
                                 config_.padded_vocab_size);
  host_losses_.resize(N);
  backend_->copy_to_host(host_losses_.data(), losses_.data(), N * sizeof(float));
  double sum = 0;
  for (size_t i = 0; i < N; i++) sum += static_cast<double>(host_weights_[i]) * host_losses_[i];
  mode_ = Mode::Loss;
  return weight_sum_ > 0 ? static_cast<float>(sum / weight_sum_) : 0.0f;
}

std::vector<float> GPT::token_losses() const {
  HH_CHECK(!host_losses_.empty(), "token_losses(): no forward() with targets has run");
  return host_losses_;
}

std::vector<float> GPT::token_entropies() {
  HH_CHECK(mode_ == Mode::Loss,
           "token_entropies(): needs a forward() with targets first (backward() overwrites the "
           "logits)");
  const size_t N = static_cast<size_t>(B_) * T_;
  grow(entropies_, *backend_, N);
  backend_->softmax_entropy(entropies_.data(), logits_.data(), targets_.data(), static_cast<int>(N),
                            config_.vocab_size, config_.padded_vocab_size);
  std::vector<float> out(N);
  backend_->copy_to_host(out.data(), entropies_.data(), N * sizeof(float));
  return out;
}

std::vector<float> GPT::logits_rows(const std::vector<int32_t>& rows) const {
  HH_CHECK(mode_ == Mode::Logits || mode_ == Mode::Loss,
           "logits_rows(): needs a forward()/forward_logits() first (backward() overwrites "
           "the logits)");
  const int64_t N = static_cast<int64_t>(B_) * T_;
  const size_t V = config_.vocab_size, Vp = config_.padded_vocab_size;
  std::vector<float> out(rows.size() * V);
  for (size_t m = 0; m < rows.size(); m++) {
    HH_CHECK(rows[m] >= 0 && rows[m] < N, "logits_rows(): row ", rows[m], " is outside [0, B*T=", N,
             ")");
    backend_->copy_to_host(out.data() + m * V, logits_.data() + rows[m] * Vp, V * sizeof(float));
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// Backward

// dlogits = dlosses·(softmax - onehot) in place over the logits; then the tied head:
// dlnf = dlogits·wte, dwte += dlogitsᵀ·lnf; then the trunk.
void GPT::lm_backward_from_dlosses() {
  Backend& be = *backend_;
  const int N = B_ * T_, C = config_.n_embd, Vp = config_.padded_vocab_size;
  ensure_grad_scratch();
  be.crossentropy_backward(logits_.data(), logits_.data(), targets_.data(), dlosses_.data(), N,
                           config_.vocab_size, Vp);
  be.matmul_backward(dbuf_c_.data(), grads_.data() + wte_, nullptr, logits_.data(), lnf_.data(),
                     params_.data() + wte_, N, C, Vp);
  trunk_backward(dbuf_c_.data());
  mode_ = Mode::None;  // the logits buffer now holds dlogits
}

void GPT::backward(float loss_scale) {
  HH_CHECK(mode_ == Mode::Loss,
           "backward(): needs a forward() with targets first (once per forward)");
  const size_t N = static_cast<size_t>(B_) * T_;
  std::vector<float> dl(N, 0.0f);
  if (weight_sum_ > 0)
    for (size_t i = 0; i < N; i++)
      dl[i] = static_cast<float>(loss_scale * host_weights_[i] / weight_sum_);
  backend_->copy_to_device(dlosses_.data(), dl.data(), N * sizeof(float));
  lm_backward_from_dlosses();
}

void GPT::backward_token_losses(const std::vector<float>& dlosses) {
  HH_CHECK(mode_ == Mode::Loss,
           "backward_token_losses(): needs a forward() with targets first (once per forward)");
  const size_t N = static_cast<size_t>(B_) * T_;
  HH_CHECK(dlosses.size() == N, "backward_token_losses(): got ", dlosses.size(),
           " values, expected B*T = ", N);
  std::vector<float> dl(N, 0.0f);
  for (size_t i = 0; i < N; i++) {
    if (host_targets_[i] < 0) continue;
    HH_CHECK(std::isfinite(dlosses[i]), "backward_token_losses(): dlosses[", i, "] is ",
             dlosses[i]);
    dl[i] = dlosses[i];
  }
  backend_->copy_to_device(dlosses_.data(), dl.data(), N * sizeof(float));
  lm_backward_from_dlosses();
}

// Reverse of trunk_forward. dresidual carries the gradient of the residual stream; each
// LayerNorm backward adds its branch into it (dinp +=), matmul/attention/gelu overwrite
// their scratch outputs. Parameter gradients accumulate (+=).
void GPT::trunk_backward(float* dlnf) {
  Backend& be = *backend_;
  const int B = B_, T = T_, C = config_.n_embd, NH = config_.n_head;
  const int N = B * T;
  const float* p = params_.data();
  float* g = grads_.data();
  float* dres = dresidual_.data();
  float* dc = dbuf_c_.data();
  float* d4 = dbuf_4c_.data();
  const int L = config_.n_layer;
  be.fill_zero(dres, static_cast<size_t>(N) * C * sizeof(float));
  be.layernorm_backward(dres, g + lnf_w_, g + lnf_b_, dlnf, layer_acts(L - 1).residual3, p + lnf_w_,
                        lnf_mean_.data(), lnf_rstd_.data(), N, C);
  for (int l = L - 1; l >= 0; l--) {
    const LayerOffsets& o = layer_offsets_[l];
    LayerActs a = layer_acts(l);
    const float* residual = l == 0 ? encoded_.data() : layer_acts(l - 1).residual3;
    // MLP branch: x3 = x2 + fcproj(gelu(fc(ln_2(x2))))
    be.matmul_gelu_backward(d4, g + o.fcproj_w, g + o.fcproj_b, dres, a.fch_gelu, a.fch,
                            p + o.fcproj_w, N, 4 * C, C);
    be.matmul_backward(dc, g + o.fc_w, g + o.fc_b, d4, a.ln2, p + o.fc_w, N, C, 4 * C);
    be.layernorm_backward(dres, g + o.ln2_w, g + o.ln2_b, dc, a.residual2, p + o.ln2_w, a.ln2_mean,
                          a.ln2_rstd, N, C);
    // Attention branch: x2 = x + attproj(attn(qkv(ln_1(x))))
    be.matmul_backward(dc, g + o.attproj_w, g + o.attproj_b, dres, a.atty, p + o.attproj_w, N, C,
                       C);
    be.attention_backward(d4, dc, a.qkv, a.atty, a.att_saved, lengths_.data(), B, T, C, NH);
    be.matmul_backward(dc, g + o.qkv_w, g + o.qkv_b, d4, a.ln1, p + o.qkv_w, N, C, 3 * C);
    be.layernorm_backward(dres, g + o.ln1_w, g + o.ln1_b, dc, residual, p + o.ln1_w, a.ln1_mean,
                          a.ln1_rstd, N, C);
    if (layer_backward_hook_) layer_backward_hook_(l);
  }
  be.embedding_backward(g + wte_, g + wpe_, dres, tokens_.data(), B, T, C);
}

// A layer's four weights are adjacent in the decayed part, its eight vectors adjacent in
// the rest (see the constructor's layout).
std::vector<std::pair<size_t, size_t>> GPT::layer_param_ranges(int l) const {
  HH_CHECK(l >= 0 && l < config_.n_layer, "layer_param_ranges: no layer ", l);
  const LayerOffsets& o = layer_offsets_[l];
  const size_t C = static_cast<size_t>(config_.n_embd);
  return {{o.qkv_w, o.fcproj_w + 4 * C * C}, {o.ln1_w, o.fcproj_b + C}};
}

// ---------------------------------------------------------------------------------------
// Scalar head

// scores[m] = lnf[rows[m]] · score.weight + score.bias.
std::vector<float> GPT::forward_scores(const Batch& batch, const std::vector<int32_t>& rows) {
  HH_CHECK(scalar_head_, "forward_scores(): the model was built without a scalar head");
  HH_CHECK(!rows.empty(), "forward_scores(): no rows given");
  check_and_upload(batch, false);
  const int M = static_cast<int>(rows.size()), C = config_.n_embd;
  for (int m = 0; m < M; m++) {
    const int32_t r = rows[m];
    HH_CHECK(r >= 0 && r < B_ * T_, "forward_scores(): row ", r, " is outside [0, B*T=", B_ * T_,
             ")");
    HH_CHECK(r % T_ < host_lengths_[r / T_], "forward_scores(): row ", r, " (b=", r / T_,
             ", t=", r % T_, ") is a padded position (length ", host_lengths_[r / T_], ")");
  }
  Backend& be = *backend_;
  score_buffers(M, [this](auto& buf, size_t n) { grow(buf, *backend_, n); });
  host_rows_ = rows;
  num_rows_ = M;
  be.copy_to_device(rows_.data(), rows.data(), M * sizeof(int32_t));
  trunk_forward();
  be.gather_rows(gathered_.data(), lnf_.data(), rows_.data(), M, C);
  be.matmul_forward(scores_.data(), gathered_.data(), params_.data() + score_w_,
                    params_.data() + score_b_, M, C, 1);
  std::vector<float> scores(M);
  be.copy_to_host(scores.data(), scores_.data(), M * sizeof(float));
  mode_ = Mode::Scores;
  return scores;
}

// dgathered = dscores·score.weight, dscore.weight += dscoresᵀ·gathered, dscore.bias += Σ;
// dlnf = scatter-add of dgathered to its rows; then the trunk.
void GPT::backward_scores(const std::vector<float>& dscores) {
  HH_CHECK(mode_ == Mode::Scores, "backward_scores(): needs a forward_scores() first");
  HH_CHECK(dscores.size() == static_cast<size_t>(num_rows_), "backward_scores(): got ",
           dscores.size(), " values, expected one per row = ", num_rows_);
  Backend& be = *backend_;
  const int M = num_rows_, C = config_.n_embd;
  const size_t N = static_cast<size_t>(B_) * T_;
  ensure_grad_scratch();
  be.copy_to_device(dscores_.data(), dscores.data(), M * sizeof(float));
  be.matmul_backward(dgathered_.data(), grads_.data() + score_w_, grads_.data() + score_b_,
                     dscores_.data(), gathered_.data(), params_.data() + score_w_, M, C, 1);
  be.fill_zero(dbuf_c_.data(), N * C * sizeof(float));
  be.scatter_add_rows(dbuf_c_.data(), dgathered_.data(), rows_.data(), M, C);
  trunk_backward(dbuf_c_.data());
}

// ---------------------------------------------------------------------------------------
// Hugging Face interop

void GPT::import_hf_gpt2(const SafeTensorsFile& file) {
  const std::string& what = file.source();
  // HF names without the "transformer." prefix (GPT2Model files have none).
  std::map<std::string, std::string> by_name;
  for (const auto& [name, info] : file.tensors()) {
    if (ends_with(name, ".attn.bias") || ends_with(name, ".attn.masked_bias") ||
        name == "lm_head.weight")
      continue;  // causal-mask buffers and the tied head
    std::string key = name.rfind("transformer.", 0) == 0 ? name.substr(12) : name;
    HH_CHECK(by_name.emplace(key, name).second, what, ": tensor '", name,
             "' appears twice (with and without the transformer. prefix)");
  }
  const int64_t C = config_.n_embd;
  std::map<std::string, bool> used;
  for (const ParamTensor& t : tensors_) {
    const bool is_score = t.name.rfind("score.", 0) == 0;
    std::string key = is_score ? t.name : t.name.substr(12);
    auto it = by_name.find(key);
    if (it == by_name.end()) {
      if (is_score) continue;  // an LM file into a scalar-head model: keep the head's init
      HH_FAIL(what, ": missing tensor '", t.name, "' (Hugging Face GPT-2 name)");
    }
    used[key] = true;
    const std::string& name = it->second;
    const TensorInfo& info = file.info(name);
    std::vector<float> values;
    if (t.name == "transformer.wte.weight") {
      std::vector<int64_t> want = {config_.vocab_size, C};
      HH_CHECK(info.shape == want, what, ": tensor '", name, "' has shape ", shape_str(info.shape),
               ", the model expects ", shape_str(want), " (vocab_size x n_embd)");
      values = file.read_f32(name, want);
      values.resize(t.numel, 0.0f);  // padded rows are zero
    } else if (t.name == "transformer.wpe.weight") {
      HH_CHECK(info.shape.size() == 2 && info.shape[1] == C && info.shape[0] >= config_.max_seq_len,
               what, ": tensor '", name, "' has shape ", shape_str(info.shape),
               ", the model expects [>=", config_.max_seq_len, ",", C, "]");
      values = file.read_f32(name);
      values.resize(t.numel);  // a longer context: keep the first max_seq_len positions
    } else if (is_conv1d_weight(t.name)) {
      std::vector<int64_t> want = {t.shape[1], t.shape[0]};  // HF Conv1D: [IC, OC]
      HH_CHECK(info.shape == want, what, ": tensor '", name, "' has shape ", shape_str(info.shape),
               ", expected Conv1D [in, out] = ", shape_str(want));
      values = transpose(file.read_f32(name, want), want[0], want[1]);
    } else {
      HH_CHECK(info.shape == t.shape, what, ": tensor '", name, "' has shape ",
               shape_str(info.shape), ", the model expects ", shape_str(t.shape));
      values = file.read_f32(name, t.shape);
    }
    check_finite(values.data(), values.size(), what, name);
    set_param(t.name, values);
  }
  for (const auto& [key, name] : by_name)
    HH_CHECK(used.count(key), what, ": unexpected tensor '", name, "' for a model with ",
             config_.describe(), (scalar_head_ ? "" : " and no scalar head"));
}

void GPT::export_hf_gpt2(const std::string& path) const {
  SafeTensorsWriter w;
  w.set_metadata("format", "pt");  // transformers checks this
  w.set_metadata("hh_config", config_.to_json().dump());
  for (const ParamTensor& t : tensors_) {
    std::vector<float> values = get_param(t.name);
    if (t.name == "transformer.wte.weight") {
      values.resize(static_cast<size_t>(config_.vocab_size) * config_.n_embd);
      w.add_f32(t.name, {config_.vocab_size, t.shape[1]}, values.data());
    } else if (is_conv1d_weight(t.name)) {
      std::vector<float> hf = transpose(values, t.shape[0], t.shape[1]);
      w.add_f32(t.name, {t.shape[1], t.shape[0]}, hf.data());
    } else {
      w.add_f32(t.name, t.shape, values.data());
    }
  }
  w.save(path);
}

std::string GPT::hf_config_json() const {
  Json j = Json::object();
  Json arch = Json::array();
  arch.push_back(scalar_head_ ? "GPT2ForSequenceClassification" : "GPT2LMHeadModel");
  j["architectures"] = arch;
  j["model_type"] = "gpt2";
  j["vocab_size"] = config_.vocab_size;
  j["n_positions"] = config_.max_seq_len;
  j["n_ctx"] = config_.max_seq_len;
  j["n_embd"] = config_.n_embd;
  j["n_layer"] = config_.n_layer;
  j["n_head"] = config_.n_head;
  j["activation_function"] = "gelu_new";
  j["layer_norm_epsilon"] = 1e-5;
  j["resid_pdrop"] = 0.0;
  j["embd_pdrop"] = 0.0;
  j["attn_pdrop"] = 0.0;
  j["tie_word_embeddings"] = true;
  if (scalar_head_) j["num_labels"] = 1;
  return j.dump();
}

}  // namespace hh
