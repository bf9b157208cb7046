// GPT-2 (pre-LayerNorm transformer, learned positions, tanh-GELU, tied LM head) with a
// hand-written backward pass and an optional scalar head, on any hh::Backend.
//
// Parameters live in one flat device buffer with named views (Hugging Face
// GPT2LMHeadModel names, hh's [OC][IC] layout); gradients mirror it. The buffer is
// ordered so that every weight-decayed tensor (all 2-D tensors: wte, wpe, the four linear
// weights of each layer and score.weight) comes first, [0, decay_size()), and the rest
// (biases, LayerNorm parameters) after it: AdamW is two calls. docs/model.md has the
// layout, the checkpoint format and the Hugging Face interop.
//
// Activations are planned per (B, T) on first use and only ever grow, so a training loop
// allocates nothing after its first step.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "core/json.h"
#include "ops/ops.h"

namespace hh {

class SafeTensorsFile;

struct GPTConfig {
  int n_layer = 0;
  int n_head = 0;
  int n_embd = 0;
  int vocab_size = 0;         // real vocabulary (tokenizer's vocab_size)
  int padded_vocab_size = 0;  // vocab_size rounded up to a multiple of 64
  int max_seq_len = 0;

  // "tiny" (2 layers, 4 heads, 64 wide, ctx 256), "small" (4, 4, 256, ctx 512),
  // "gpt2-124m" (12, 12, 768, ctx 1024). The vocabulary is set separately (0 here).
  static GPTConfig preset(const std::string& name);
  static GPTConfig preset(const std::string& name, int vocab_size);
  // Sets vocab_size and padded_vocab_size = round_up(vocab_size, 64).
  void set_vocab_size(int vocab);
  // Throws hh::Error naming the bad field (non-positive sizes, n_embd % n_head != 0, ...).
  void validate() const;

  Json to_json() const;
  // Throws hh::Error naming `what` (e.g. the checkpoint path) and the missing/bad field.
  static GPTConfig from_json(const Json& j, const std::string& what = "config");
  bool operator==(const GPTConfig& o) const;
  bool operator!=(const GPTConfig& o) const { return !(*this == o); }
  std::string describe() const;  // "n_layer=2 n_head=4 ..."
};

// A named view into the flat parameter (and gradient) buffer.
struct ParamTensor {
  std::string name;
  std::vector<int64_t> shape;
  size_t offset = 0;  // in floats from the start of the buffer
  size_t numel = 0;
  bool decay = false;
};

// One batch of right-padded sequences, on the host; copied to the device by the model.
struct Batch {
  int B = 0, T = 0;
  std::vector<int32_t> tokens;      // B*T; ids of padded positions (t >= length) are ignored
  std::vector<int32_t> lengths;     // B, each in [1, T]
  std::vector<int32_t> targets;     // B*T, -1 = no loss; empty for forward_logits/scores
  std::vector<float> loss_weights;  // B*T, optional: weighted mean of the token losses

  // One sequence, every position real (no padding, no targets).
  static Batch single(const std::vector<int32_t>& ids) {
    Batch b;
    b.B = 1;
    b.T = static_cast<int>(ids.size());
    b.tokens = ids;
    b.lengths = {b.T};
    return b;
  }
};

class GPT {
 public:
  // Allocates parameters and gradients (zero); call init_random or load weights next.
  GPT(Backend& backend, const GPTConfig& config, bool scalar_head);
  // The named tensors (shapes, offsets) a model of `config` holds, without allocating
  // anything: a checkpoint's header is checked against its tensors with it before a model
  // is built from the header. Validates the config.
  static std::vector<ParamTensor> parameter_layout(const GPTConfig& config, bool scalar_head);
  GPT(GPT&&) noexcept = default;
  GPT& operator=(GPT&&) noexcept = default;
  GPT(const GPT&) = delete;
  GPT& operator=(const GPT&) = delete;

  const GPTConfig& config() const { return config_; }
  bool has_scalar_head() const { return scalar_head_; }
  Backend& backend() const { return *backend_; }

  // ---- parameters ----
  Buffer<float>& params() { return params_; }
  const Buffer<float>& params() const { return params_; }
  Buffer<float>& grads() { return grads_; }
  const Buffer<float>& grads() const { return grads_; }
  const std::vector<ParamTensor>& param_tensors() const { return tensors_; }
  const ParamTensor& param(const std::string& name) const;  // throws naming the name
  bool has_param(const std::string& name) const;
  float* param_data(const std::string& name) { return params_.data() + param(name).offset; }
  float* grad_data(const std::string& name) { return grads_.data() + param(name).offset; }
  // Decayed tensors occupy [0, decay_size()), the others [decay_size(), params().size()).
  // Gaps between tensors (each tensor starts at a multiple of 64 floats) stay zero.
  size_t decay_size() const { return decay_size_; }
  size_t num_parameters() const;  // Σ numel of the named tensors (without the gaps)

  // Host copies of one tensor, and writing one (size checked).
  std::vector<float> get_param(const std::string& name) const;
  void set_param(const std::string& name, const std::vector<float>& values);
  std::vector<float> get_grad(const std::string& name) const;

  // GPT-2 init: linear weights and embeddings N(0, 0.02), residual projections
  // (attn.c_proj, mlp.c_proj weights) N(0, 0.02/√(2·n_layer)), biases 0, LayerNorm
  // weight 1 bias 0, padded wte rows 0, score.weight N(0, 0.02); deterministic in `seed`.
  void init_random(uint64_t seed);

  // ---- language model ----
  // Forward to the logits and the per-token cross-entropy; returns the mean loss over
  // positions with target >= 0 (the weighted mean Σwᵢlᵢ/Σwᵢ when loss_weights is given;
  // 0 when no position has a target). Positions t >= lengths[b] never count.
  float forward(const Batch& batch);
  // Forward to the logits only (batch.targets may be empty).
  void forward_logits(const Batch& batch);
  // Per-token losses of the last forward() [B*T] (0 where there was no target).
  std::vector<float> token_losses() const;
  // Entropy of the predicted distribution, −Σ p log p, at each position of the last
  // forward() [B*T] (0 where there was no target); computed on the backend. Call it
  // before backward(), which overwrites the logits.
  std::vector<float> token_entropies();
  // Logits of the last forward at rows b*T+t, the first vocab_size columns of each:
  // [rows.size() * vocab_size]. Read them before backward(), which overwrites them.
  std::vector<float> logits_rows(const std::vector<int32_t>& rows) const;
  // The device logits of the last forward, [B*T, padded_vocab_size].
  const float* logits_device() const { return logits_.data(); }
  // Gradient of loss_scale · (the loss forward() returned), accumulated (+=) into grads().
  // loss_scale lets gradient accumulation weight micro-batches (e.g. count_i / total).
  void backward(float loss_scale = 1.0f);
  // Backward from an arbitrary gradient of each per-token loss, dlosses [B*T] (rows
  // without a target are ignored). For PPO: d(objective)/d(-log p(target)).
  void backward_token_losses(const std::vector<float>& dlosses);
  // Number of positions with a target, and Σ weights over them, in the last forward().
  int64_t target_count() const { return target_count_; }
  double weight_sum() const { return weight_sum_; }

  // ---- scalar head: score(row) = ln_f(h)[row] · score.weight + score.bias ----
  // rows are flattened b*T+t and must be real positions (t < lengths[b]); they may repeat.
  std::vector<float> forward_scores(const Batch& batch, const std::vector<int32_t>& rows);
  // Backpropagates dscores [rows.size()] through the head and the trunk (accumulates).
  void backward_scores(const std::vector<float>& dscores);

  void zero_grad();

  // Bytes the backend still has to allocate for a step on B×T: activations, the backward's
  // scratch (with_backward), and the LM head's logits (score_rows = 0) or a scalar head
  // over score_rows rows. Backend scratch (attention's scores, cuBLAS workspace) is not in it.
  size_t bytes_to_train(int B, int T, int score_rows = 0, bool with_backward = true);

  // ---- for data parallelism (src/dist/grad_sync.h) ----
  // Layer l's tensors as [begin, end) offsets into params()/grads(): one range in the
  // decayed part (its four weights), one in the rest (its biases and LayerNorms).
  std::vector<std::pair<size_t, size_t>> layer_param_ranges(int l) const;
  // Called by every backward pass right after layer l's gradients are complete (layers
  // in order L-1 ... 0), so they can be sent to the other ranks while the pass goes on.
  void set_layer_backward_hook(std::function<void(int layer)> hook) {
    layer_backward_hook_ = std::move(hook);
  }

  // ---- Hugging Face GPT-2 interop ----
  // Loads GPT2LMHeadModel / GPT2Model weights (names with or without "transformer.",
  // Conv1D weights [IC][OC] transposed to ours, wte's vocab_size rows into our padded
  // table, ".attn.bias"/".attn.masked_bias"/"lm_head.weight" skipped). A scalar head's
  // score.weight [1,C] (and hh's score.bias) load when present. Shapes must match.
  void import_hf_gpt2(const SafeTensorsFile& file);
  // Writes GPT2LMHeadModel-named tensors in HF's layout (wte with vocab_size rows,
  // Conv1D weights [IC][OC]) plus score.weight/score.bias for a scalar head.
  void export_hf_gpt2(const std::string& path) const;
  // A transformers GPT2Config JSON for this model (write it as config.json next to the
  // exported weights to load them with from_pretrained).
  std::string hf_config_json() const;

 private:
  struct LayerActs {
    float *ln1, *ln1_mean, *ln1_rstd, *qkv, *atty, *att_saved, *residual2;
    float *ln2, *ln2_mean, *ln2_rstd, *fch, *fch_gelu, *residual3;
  };
  enum class Mode { None, Logits, Loss, Scores };
  // Offsets (in floats) of one layer's tensors in the flat buffers.
  struct LayerOffsets {
    size_t ln1_w, ln1_b, qkv_w, qkv_b, attproj_w, attproj_b;
    size_t ln2_w, ln2_b, fc_w, fc_b, fcproj_w, fcproj_b;
  };

  void check_and_upload(const Batch& batch, bool need_targets);
  template <typename F>
  void forward_buffers(int B, int T, F&& f);
  template <typename F>
  void backward_buffers(int B, int T, F&& f);
  template <typename F>
  void lm_head_buffers(int B, int T, F&& f);
  template <typename F>
  void score_buffers(int M, F&& f);
  void plan_activations(int B, int T);
  LayerActs layer_acts(int l);
  void ensure_grad_scratch();
  void trunk_forward();
  void lm_backward_from_dlosses();   // dlosses_ uploaded; logits_ hold the logits
  void trunk_backward(float* dlnf);  // dlnf: gradient of the final LayerNorm output

  Backend* backend_;
  GPTConfig config_;
  bool scalar_head_;
  std::vector<ParamTensor> tensors_;
  size_t decay_size_ = 0;
  std::function<void(int)> layer_backward_hook_;
  size_t total_floats_ = 0;
  std::vector<LayerOffsets> layer_offsets_;
  size_t wte_ = 0, wpe_ = 0, lnf_w_ = 0, lnf_b_ = 0, score_w_ = 0, score_b_ = 0;
  Buffer<float> params_, grads_;

  // Shape of the current batch and what the last forward computed.
  int B_ = 0, T_ = 0;
  Mode mode_ = Mode::None;
  int64_t target_count_ = 0;
  double weight_sum_ = 0;
  std::vector<float> host_weights_;  // per-row weight of the last forward (0 = no target)
  std::vector<int32_t> host_tokens_, host_targets_, host_lengths_, host_rows_;

  // Activations (grow-only). Per-layer tensors are stacked: layer l at l·(its size).
  Buffer<int32_t> tokens_, targets_, lengths_, rows_;
  Buffer<float> encoded_, ln1_, ln1_mean_, ln1_rstd_, qkv_, atty_, att_saved_, residual2_, ln2_,
      ln2_mean_, ln2_rstd_, fch_, fch_gelu_, residual3_;
  Buffer<float> lnf_, lnf_mean_, lnf_rstd_, logits_, losses_, dlosses_, entropies_;
  Buffer<float> gathered_, scores_, dscores_, dgathered_;
  // Backward scratch: the residual stream's gradient and branch gradients.
  Buffer<float> dresidual_, dbuf_c_, dbuf_4c_;
  int num_rows_ = 0;                // scalar-head rows of the last forward_scores
  size_t att_saved_per_layer_ = 0;  // attention_saved_floats(B, T, NH) of the current plan
  std::vector<float> host_losses_;  // per-token losses of the last forward()
};

}  // namespace hh
