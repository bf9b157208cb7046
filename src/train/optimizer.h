// AdamW with global-norm gradient clipping over the model's flat buffers, the learning-
// rate schedule, and the optimizer-state file that makes a resumed run continue exactly.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "model/gpt.h"

namespace hh {

struct AdamWConfig {
  float lr = 3e-4f;
  float beta1 = 0.9f;
  float beta2 = 0.95f;
  float eps = 1e-8f;
  float weight_decay = 0.1f;  // decoupled, on the decayed range only (2-D tensors)
  float grad_clip = 1.0f;     // max global L2 norm; 0 = no clipping
};

class AdamW {
 public:
  // Moments m, v are allocated on the model's backend (zero) and mirror its params.
  AdamW(GPT& model, const AdamWConfig& config);

  // One update: norm = ‖g‖₂ over the whole gradient buffer; if it is NaN/Inf, nothing
  // changes (no step) and the norm is returned for the caller to report. Otherwise, as
  // torch.nn.utils.clip_grad_norm_: g *= grad_clip/(norm + 1e-6) when that is < 1 (as
  // AdamWParams::grad_scale, so the buffer itself is left as it was); then step += 1 and
  // adamw_update on [0, decay_size) with weight_decay and on the rest with none. Returns the
  // pre-clip norm. Call model.zero_grad() afterwards.
  float clip_and_step(float lr);
  // The same in two halves, for a caller that must see several models' norms before it
  // steps any (PPO: the policy and the value model step together or not at all).
  float grad_norm() const;                   // ‖g‖₂ over the whole gradient buffer
  void clip_and_step(float lr, float norm);  // norm = grad_norm(), finite

  GPT& model() { return *model_; }
  const GPT& model() const { return *model_; }

  AdamWConfig config;
  int64_t step = 0;  // updates taken so far (AdamW's bias correction uses step after ++)
  Buffer<float> m, v;

 private:
  GPT* model_;
};

// Learning rate for update number `step` (0-based): linear warmup from max_lr/warmup to
// max_lr over `warmup` steps, then cosine decay to min_lr_fraction·max_lr at `total`
// (and flat after it).
float lr_at(int64_t step, float max_lr, int64_t warmup, int64_t total, float min_lr_fraction);

// What a trainer saves beside the optimizer moments to resume exactly.
struct TrainState {
  std::array<uint64_t, 4> rng_state{};  // Rng::state()
  std::vector<uint64_t> data_cursor;    // e.g. epoch, position, shuffle seed
  std::map<std::string, double> extra;  // e.g. "kl_coef", "reward_mean"
  std::map<std::string, uint64_t> extra_u64;
};

// safetensors: tensors "m", "v" (F32, the flat buffers); __metadata__ "config" (the
// model's), "step", "rng_state", "data_cursor" (comma-separated decimals),
// "extra.<key>" (%.17g, exact) and "extra_u64.<key>". Atomic write.
void save_optimizer(const std::string& path, const AdamW& opt, const TrainState& state);
// Restores m, v and step into `opt` (its model's config must match the file's) and the
// trainer state into *state (when given). Names the file and the problem on failure;
// nothing is changed when it throws.
void load_optimizer(const std::string& path, AdamW& opt, TrainState* state);

}  // namespace hh
