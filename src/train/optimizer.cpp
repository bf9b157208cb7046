// AdamW, the LR schedule and the optimizer-state file (see optimizer.h).
#include "train/optimizer.h"

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "core/error.h"
#include "core/json.h"
#include "core/safetensors.h"

namespace hh {

AdamW::AdamW(GPT& model, const AdamWConfig& cfg) : config(cfg), model_(&model) {
  HH_CHECK(cfg.lr >= 0 && std::isfinite(cfg.lr), "AdamW: lr must be >= 0, got ", cfg.lr);
  HH_CHECK(cfg.beta1 >= 0 && cfg.beta1 < 1, "AdamW: beta1 must be in [0, 1), got ", cfg.beta1);
  HH_CHECK(cfg.beta2 >= 0 && cfg.beta2 < 1, "AdamW: beta2 must be in [0, 1), got ", cfg.beta2);
  HH_CHECK(cfg.eps > 0, "AdamW: eps must be > 0, got ", cfg.eps);
  HH_CHECK(cfg.weight_decay >= 0, "AdamW: weight_decay must be >= 0, got ", cfg.weight_decay);
  HH_CHECK(cfg.grad_clip >= 0, "AdamW: grad_clip must be >= 0 (0 = off), got ", cfg.grad_clip);
  Backend& be = model.backend();
  m = Buffer<float>(be, model.params().size());
  v = Buffer<float>(be, model.params().size());
  be.fill_zero(m.data(), m.bytes());
  be.fill_zero(v.data(), v.bytes());
}

// clip (global norm, as torch's clip_grad_norm_), then the two AdamW ranges.
float AdamW::clip_and_step(float lr) {
  const float norm = grad_norm();
  if (std::isfinite(norm)) clip_and_step(lr, norm);
  return norm;
}

float AdamW::grad_norm() const {
  return static_cast<float>(
      std::sqrt(model_->backend().sum_squares(model_->grads().data(), model_->grads().size())));
}

void AdamW::clip_and_step(float lr, float norm) {
  Backend& be = model_->backend();
  float* g = model_->grads().data();
  const size_t n = model_->grads().size();
  AdamWParams hp;
  if (config.grad_clip > 0) {
    const float coef = config.grad_clip / (norm + 1e-6f);
    if (coef < 1.0f) hp.grad_scale = coef;  // applied inside the update: no pass over g
  }
  step++;
  hp.lr = lr;
  hp.beta1 = config.beta1;
  hp.beta2 = config.beta2;
  hp.eps = config.eps;
  hp.step = step;
  float* p = model_->params().data();
  const size_t nd = model_->decay_size();
  hp.weight_decay = config.weight_decay;
  be.adamw_update(p, g, m.data(), v.data(), nd, hp);
  hp.weight_decay = 0.0f;
  be.adamw_update(p + nd, g + nd, m.data() + nd, v.data() + nd, n - nd, hp);
}

// warmup: max_lr·(step+1)/warmup; then min + ½(1 + cos(π·progress))·(max − min).
float lr_at(int64_t step, float max_lr, int64_t warmup, int64_t total, float min_lr_fraction) {
  if (step < warmup) return max_lr * static_cast<float>(step + 1) / static_cast<float>(warmup);
  const float min_lr = max_lr * min_lr_fraction;
  if (step >= total) return min_lr;
  const double progress = static_cast<double>(step - warmup) /
                          static_cast<double>(std::max<int64_t>(1, total - warmup));
  const double cosine = 0.5 * (1.0 + std::cos(M_PI * progress));
  return static_cast<float>(min_lr + cosine * (max_lr - min_lr));
}

// ---------------------------------------------------------------------------------------
// Optimizer-state file

namespace {

std::string join_u64(const uint64_t* v, size_t n) {
  std::string s;
  for (size_t i = 0; i < n; i++) s += (i ? "," : "") + std::to_string(v[i]);
  return s;
}

uint64_t parse_u64(const std::string& s, const std::string& what) {
  HH_CHECK(!s.empty() && s.find_first_not_of("0123456789") == std::string::npos, what,
           ": expected an unsigned integer, got \"", s, "\"");
  errno = 0;
  const unsigned long long v = std::strtoull(s.c_str(), nullptr, 10);
  HH_CHECK(errno == 0, what, ": integer out of range: \"", s, "\"");
  return v;
}

std::vector<uint64_t> split_u64(const std::string& s, const std::string& what) {
  std::vector<uint64_t> out;
  if (s.empty()) return out;
  size_t begin = 0;
  while (true) {
    const size_t comma = s.find(',', begin);
    out.push_back(parse_u64(s.substr(begin, comma - begin), what));
    if (comma == std::string::npos) break;
    begin = comma + 1;
  }
  return out;
}

// A finite number (what save_optimizer's %.17g writes): a NaN or infinite trainer value (a
// KL coefficient, a reward statistic) would poison the resumed run without a word.
double parse_f64(const std::string& s, const std::string& what) {
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  HH_CHECK(!s.empty() && end == s.c_str() + s.size(), what, ": expected a number, got \"", s, "\"");
  HH_CHECK(std::isfinite(v), what, ": expected a finite number, got \"", s, "\"");
  return v;
}

const std::string& meta(const SafeTensorsFile& f, const std::string& key) {
  auto it = f.metadata().find(key);
  HH_CHECK(it != f.metadata().end(), f.source(), ": optimizer state has no \"", key,
           "\" in __metadata__");
  return it->second;
}

}  // namespace

void save_optimizer(const std::string& path, const AdamW& opt, const TrainState& state) {
  const GPT& model = opt.model();
  Backend& be = model.backend();
  SafeTensorsWriter w;
  w.set_metadata("config", model.config().to_json().dump());
  w.set_metadata("scalar_head", model.has_scalar_head() ? "true" : "false");
  w.set_metadata("step", std::to_string(opt.step));
  w.set_metadata("rng_state", join_u64(state.rng_state.data(), state.rng_state.size()));
  w.set_metadata("data_cursor", join_u64(state.data_cursor.data(), state.data_cursor.size()));
  for (const auto& [key, value] : state.extra) {
    char buf[64];
    std::snprintf(buf, sizeof(buf), "%.17g", value);
    w.set_metadata("extra." + key, buf);
  }
  for (const auto& [key, value] : state.extra_u64)
    w.set_metadata("extra_u64." + key, std::to_string(value));
  const int64_t n = static_cast<int64_t>(opt.m.size());
  std::vector<float> host(opt.m.size());
  be.copy_to_host(host.data(), opt.m.data(), opt.m.bytes());
  w.add_f32("m", {n}, host.data());
  be.copy_to_host(host.data(), opt.v.data(), opt.v.bytes());
  w.add_f32("v", {n}, host.data());
  w.save(path);
}

void load_optimizer(const std::string& path, AdamW& opt, TrainState* state) {
  SafeTensorsFile f = SafeTensorsFile::load(path);
  const std::string& what = f.source();
  GPT& model = opt.model();
  const GPTConfig config =
      GPTConfig::from_json(Json::parse(meta(f, "config"), what + ": metadata config"), what);
  HH_CHECK(config == model.config(), what, ": optimizer state is for another model: the file has ",
           config.describe(), ", the model has ", model.config().describe());
  const bool head = meta(f, "scalar_head") == "true";
  HH_CHECK(head == model.has_scalar_head(), what, ": optimizer state is for a model ",
           (head ? "with" : "without"), " a scalar head, this one is the other kind");
  const std::vector<int64_t> shape = {static_cast<int64_t>(opt.m.size())};
  for (const char* name : {"m", "v"}) {
    HH_CHECK(f.has(name), what, ": missing tensor '", name, "'");
    HH_CHECK(f.info(name).dtype == DType::F32, what, ": tensor '", name, "' has dtype ",
             dtype_name(f.info(name).dtype), ", expected F32");
  }
  for (const auto& entry : f.tensors())
    HH_CHECK(entry.first == "m" || entry.first == "v", what, ": unexpected tensor '", entry.first,
             "'");
  std::vector<float> m = f.read_f32("m", shape), v = f.read_f32("v", shape);
  check_finite(m.data(), m.size(), what, "m");
  check_finite(v.data(), v.size(), what, "v");
  const uint64_t step = parse_u64(meta(f, "step"), what + ": metadata step");
  HH_CHECK(step <= static_cast<uint64_t>(INT64_MAX), what, ": metadata step ", step,
           " is out of range");
  TrainState s;
  std::vector<uint64_t> rng = split_u64(meta(f, "rng_state"), what + ": metadata rng_state");
  HH_CHECK(rng.size() == 4, what, ": metadata rng_state has ", rng.size(), " words, expected 4");
  for (int i = 0; i < 4; i++) s.rng_state[i] = rng[i];
  s.data_cursor = split_u64(meta(f, "data_cursor"), what + ": metadata data_cursor");
  for (const auto& [key, value] : f.metadata()) {
    if (key.rfind("extra.", 0) == 0)
      s.extra[key.substr(6)] = parse_f64(value, what + ": metadata " + key);
    else if (key.rfind("extra_u64.", 0) == 0)
      s.extra_u64[key.substr(10)] = parse_u64(value, what + ": metadata " + key);
  }
  Backend& be = model.backend();
  be.copy_to_device(opt.m.data(), m.data(), opt.m.bytes());
  be.copy_to_device(opt.v.data(), v.data(), opt.v.bytes());
  opt.step = static_cast<int64_t>(step);
  if (state) *state = std::move(s);
}

}  // namespace hh
