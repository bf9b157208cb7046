#include "train/run.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "core/error.h"
#include "core/fileio.h"
#include "core/metrics.h"
#include "core/safetensors.h"
#include "dist/grad_sync.h"
#include "model/checkpoint.h"

namespace hh {

namespace fs = std::filesystem;

void add_device_flag(Flags& flags) {
  flags.add_string("device", "auto", "cpu, cuda, or auto (cuda when a GPU is present)");
}

std::unique_ptr<Backend> backend_from_flags(const Flags& flags) {
  return make_backend(flags.get_string("device"));
}

void add_dist_flags(Flags& flags) {
  flags.add_string("dist", "auto",
                   "data parallelism: auto (single for one rank, nccl on GPUs, mpi on CPUs), "
                   "single, mpi, nccl");
  flags.add_float("dist-timeout", 600, "seconds a rank waits for the others before failing");
  flags.add_string("nccl-id-file", "",
                   "NCCL without MPI: a fresh path on a shared filesystem for the unique id");
  flags.add_int("check-sync-every", 0,
                "debug: every N steps check that all ranks hold identical parameters (0: off)");
}

Parallelism ProcessGroup::parallelism() const {
  Parallelism p;
  p.comm = comm.get();
  p.check_sync_every = check_sync_every;
  return p;
}

ProcessGroup process_group_from_flags(const Flags& flags) {
  ProcessGroup g;
  g.env = detect_dist_env();
  std::string device = flags.get_string("device");
  // Several ranks on a node: rank LOCAL_RANK takes GPU LOCAL_RANK of those it sees (modulo
  // their number, so a launcher that gives each rank one GPU through CUDA_VISIBLE_DEVICES
  // works too). An explicit cuda:N is left alone.
#ifdef HH_WITH_CUDA
  const int gpus = cuda_device_count();
  if (g.env.world > 1 && gpus > 0 && (device == "cuda" || device == "auto"))
    device = "cuda:" + std::to_string(g.env.local_rank % gpus);
#endif
  g.backend = make_backend(device);
  CommOptions co;
  co.timeout_s = flags.get_float("dist-timeout");
  co.nccl_id_file = flags.get_string("nccl-id-file");
  g.comm = make_communicator(flags.get_string("dist"), *g.backend, g.env, co);
  g.check_sync_every = flags.get_int("check-sync-every");
  HH_CHECK(g.check_sync_every >= 0, "--check-sync-every must be >= 0");
  return g;
}

int64_t per_rank_batch(int64_t batch, const Communicator& comm, const char* flag) {
  HH_CHECK(batch % comm.world() == 0, "--", flag, "=", batch, " must be a multiple of the ",
           "number of ranks (", comm.world(), "): each rank takes an equal share");
  return batch / comm.world();
}

void check_same_job(Communicator& comm, const std::string& config_json, uint64_t data_hash,
                    const std::string& data_path) {
  check_same_on_all_ranks(comm, fnv1a64(config_json.data(), config_json.size()), "the flags");
  check_same_on_all_ranks(comm, data_hash, "the training data " + data_path);
}

uint64_t dataset_hash(const TokenDataset& data) {
  return fnv1a64(data.offsets.data(), data.offsets.size() * sizeof(uint64_t),
                 data.tokenizer_fingerprint);
}

void sync_replicas(Communicator& comm, GPT& model, AdamW& opt) {
  if (comm.world() == 1) return;
  check_same_on_all_ranks(comm, static_cast<uint64_t>(opt.step), "the starting step");
  broadcast_parameters(comm, model);
  broadcast_buffer(comm, opt.m);
  broadcast_buffer(comm, opt.v);
}

void check_sync(const Parallelism& parallel, const GPT& model, int64_t step) {
  if (parallel.check_sync_every > 0 && step % parallel.check_sync_every == 0)
    check_replicas_identical(parallel.get(), model, str_cat("after step ", step));
}

void check_training_fits(Backend& backend, size_t need, int seqs, int seq,
                         const std::string& program) {
  const size_t available = backend.available_bytes();
  const size_t margin = need / 20 + (size_t(64) << 20);  // scratch, workspace, fragmentation
  if (available == SIZE_MAX || need + margin <= available) return;
  HH_FAIL(program, ": the model does not fit: a training step of ", seqs, " sequences x ", seq,
          " tokens needs about ", format_gib(need), " more on ", backend.name(),
          " (activations, their gradients, logits or scores) and ", format_gib(available),
          " are free; lower --micro-batch (the step's activations scale with it, --batch can "
          "stay) or --seq, or train a smaller model");
}

std::string describe_ranks(const Communicator& comm) {
  return comm.world() == 1 ? "" : str_cat(" | ", comm.world(), " ranks (", comm.name(), ")");
}

void add_model_flags(Flags& flags, const std::string& default_preset) {
  flags.add_string("model", default_preset, "model size preset: tiny, small, gpt2-124m");
  flags.add_int("layers", 0, "transformer layers (0: from --model)");
  flags.add_int("heads", 0, "attention heads (0: from --model)");
  flags.add_int("width", 0, "model width n_embd (0: from --model)");
  flags.add_int("ctx", 0, "context length (0: from --model)");
}

ModelFlagsGiven model_flags_given(const Flags& flags) {
  const bool preset = flags.is_set("model");
  return {preset || flags.is_set("layers"), preset || flags.is_set("heads"),
          preset || flags.is_set("width"), preset || flags.is_set("ctx")};
}

GPTConfig model_config_from_flags(const Flags& flags, int vocab_size) {
  GPTConfig c = GPTConfig::preset(flags.get_string("model"), vocab_size);
  auto override_dim = [&](const char* name, int* field) {
    int64_t v = flags.get_int(name);
    HH_CHECK(v >= 0 && v <= (1 << 20), "--", name, "=", v, " is out of range");
    if (v > 0) *field = static_cast<int>(v);
  };
  override_dim("layers", &c.n_layer);
  override_dim("heads", &c.n_head);
  override_dim("width", &c.n_embd);
  override_dim("ctx", &c.max_seq_len);
  c.validate();
  return c;
}

void add_optimizer_flags(Flags& flags, double default_lr) {
  flags.add_float("lr", default_lr, "peak learning rate");
  flags.add_float("min-lr-frac", 0.1, "final learning rate as a fraction of --lr (cosine)");
  flags.add_int("warmup", 20, "linear warmup steps");
  flags.add_float("weight-decay", 0.1, "AdamW weight decay (2-D tensors only)");
  flags.add_float("grad-clip", 1.0, "clip the global gradient norm to this (0: off)");
  flags.add_float("beta1", 0.9, "AdamW beta1");
  flags.add_float("beta2", 0.95, "AdamW beta2");
}

AdamWConfig adamw_config_from_flags(const Flags& flags) {
  AdamWConfig c;
  c.lr = static_cast<float>(flags.get_float("lr"));
  c.weight_decay = static_cast<float>(flags.get_float("weight-decay"));
  c.grad_clip = static_cast<float>(flags.get_float("grad-clip"));
  c.beta1 = static_cast<float>(flags.get_float("beta1"));
  c.beta2 = static_cast<float>(flags.get_float("beta2"));
  HH_CHECK(c.lr > 0 && c.lr < 1, "--lr=", c.lr, " must be in (0, 1)");
  HH_CHECK(c.weight_decay >= 0, "--weight-decay must be >= 0");
  HH_CHECK(c.grad_clip >= 0, "--grad-clip must be >= 0");
  HH_CHECK(c.beta1 >= 0 && c.beta1 < 1 && c.beta2 >= 0 && c.beta2 < 1,
           "--beta1 and --beta2 must be in [0, 1)");
  double frac = flags.get_float("min-lr-frac");
  HH_CHECK(frac >= 0 && frac <= 1, "--min-lr-frac must be in [0, 1]");
  HH_CHECK(flags.get_int("warmup") >= 0, "--warmup must be >= 0");
  return c;
}

void warn_if_warmup_outlasts_the_run(int64_t warmup, int64_t steps) {
  if (warmup > steps)
    std::fprintf(stderr,
                 "hh: warning: --warmup %lld > --steps %lld: the learning rate never reaches "
                 "--lr (it peaks at %.3g of it)\n",
                 static_cast<long long>(warmup), static_cast<long long>(steps),
                 static_cast<double>(steps) / static_cast<double>(warmup));
}

void add_run_flags(Flags& flags, const std::string& default_run_dir, int64_t default_steps,
                   int64_t default_batch, const RunFlagText& text) {
  flags.add_string("run-dir", default_run_dir, "run directory: checkpoints, metrics, final model");
  flags.add_int("steps", default_steps, text.steps);
  flags.add_int("batch", default_batch, text.batch);
  flags.add_int("log-every", 10, "log a metrics line every N steps");
  if (text.eval)
    flags.add_int("eval-every", 100, "evaluate on the dev set every N steps (0: only at the end)");
  flags.add_int("ckpt-every", 200, "checkpoint every N steps (0: only at the end)");
  flags.add_int("keep-ckpts", 2, "checkpoints to keep");
  flags.add_int("seed", 1234, "seed for initialisation, data order and sampling");
  flags.add_bool("resume", false, "continue from the run directory's latest checkpoint");
  flags.add_string("on-nan", "skip", "NaN/Inf loss or gradient: skip the step, or stop");
}

NanPolicy nan_policy_from_flags(const Flags& flags) {
  std::string v = flags.get_string("on-nan");
  if (v == "skip") return NanPolicy::Skip;
  if (v == "stop") return NanPolicy::Stop;
  HH_FAIL("--on-nan=", v, ": expected skip or stop");
}

void loop_options_from_flags(const Flags& f, TrainLoopOptions* o) {
  o->steps = f.get_int("steps");
  o->batch = f.get_int32("batch");
  HH_CHECK(o->steps > 0, "--steps must be > 0");
  HH_CHECK(o->batch > 0, "--batch must be > 0");
  if (f.has("micro-batch")) {
    int64_t micro = f.get_int32("micro-batch");
    HH_CHECK(micro >= 0, "--micro-batch must be >= 0");
    o->micro_batch = micro > 0 ? micro : o->batch;
  } else {
    o->micro_batch = o->batch;
  }
  if (f.has("seq")) o->seq = f.get_int32("seq");
  o->adamw = adamw_config_from_flags(f);
  o->min_lr_frac = static_cast<float>(f.get_float("min-lr-frac"));
  o->warmup = f.get_int("warmup");
  warn_if_warmup_outlasts_the_run(o->warmup, o->steps);
  o->log_every = f.get_int("log-every");
  o->eval_every = f.get_int("eval-every");
  o->ckpt_every = f.get_int("ckpt-every");
  HH_CHECK(o->log_every >= 0 && o->eval_every >= 0 && o->ckpt_every >= 0,
           "--log-every, --eval-every and --ckpt-every must be >= 0");
  o->keep_ckpts = f.get_int32("keep-ckpts");
  HH_CHECK(o->keep_ckpts >= 1, "--keep-ckpts must be >= 1");
  o->seed = static_cast<uint64_t>(f.get_int("seed"));
  o->resume = f.get_bool("resume");
  o->nan_policy = nan_policy_from_flags(f);
  o->run_dir = f.get_string("run-dir");
  o->config_json = f.to_json();
}

RunDir::RunDir(const std::string& path, bool resume, bool is_writer)
    : path_(path), writer_(is_writer), resume_(resume) {
  HH_CHECK(!path.empty(), "--run-dir is empty");
  if (writer_) make_dirs(path_ + "/checkpoints");
  const std::string latest = latest_checkpoint();
  if (!resume && !latest.empty()) {
    HH_FAIL(path_, " already holds a checkpoint (", latest,
            "): pass --resume to continue it, or choose another --run-dir");
  }
  if (latest.empty()) {
    // Step directories without `latest`: a save that stopped before `latest` named its
    // directory (normally only a run's first save can leave this). Whether that directory is
    // complete only `latest` could say (PPO adds files to it), so neither a fresh run
    // (which would overwrite it) nor --resume (which would have to guess) takes it.
    const std::vector<std::string> steps = checkpoint_dirs();
    if (!steps.empty()) {
      std::string complete;
      for (auto it = steps.rbegin(); it != steps.rend() && complete.empty(); ++it) {
        const std::string dir = path_ + "/checkpoints/" + *it;
        if (file_exists(dir + "/model.safetensors") && file_exists(dir + "/optim.safetensors"))
          complete = *it;
      }
      HH_FAIL(resume ? "--resume: " : "", path_, "/checkpoints holds ", steps.back(),
              " but there is no ", file("latest"), " naming a checkpoint (an interrupted save?); ",
              complete.empty() ? "none of its step directories is complete"
                               : "the newest with a model and optimizer state is " + complete,
              ". To continue that run, write a complete checkpoint's name into ", file("latest"),
              " and pass --resume; to start over, remove ", path_,
              "/checkpoints or choose another --run-dir");
    }
  }
  HH_CHECK(!resume || !latest.empty(), "--resume: ", path_, " has no checkpoint to resume");
  metrics_ = writer_
                 ? std::make_unique<MetricsLogger>(path_ + "/metrics.jsonl", /*truncate=*/!resume)
                 : std::make_unique<MetricsLogger>();
}

std::vector<std::string> RunDir::checkpoint_dirs() const {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(path_ + "/checkpoints", ec)) {
    std::string n = e.path().filename().string();
    if (n.rfind("step-", 0) == 0) names.push_back(n);
  }
  std::sort(names.begin(), names.end());
  return names;
}

namespace {

// Flags a resumed run may change: how long it runs, what it logs and keeps, where it runs.
// Everything else (data, model, optimizer, schedule, seed, sampling) is the run's own.
bool may_change_on_resume(const std::string& flag) {
  static const char* kFree[] = {
      "steps",        "resume",       "run-dir",      "log-every",        "eval-every",
      "ckpt-every",   "keep-ckpts",   "sample-every", "device",           "dist",
      "dist-timeout", "nccl-id-file", "on-nan",       "check-sync-every", "micro-batch",
      "eval-batches", "eval-pairs"};
  return std::find(std::begin(kFree), std::end(kFree), flag) != std::end(kFree);
}

// Two flag values are the same: equal, or paths to the same file.
bool same_flag_value(const Json& a, const Json& b) {
  if (a.dump() == b.dump()) return true;
  if (!a.is_string() || !b.is_string()) return false;
  std::error_code ec;
  return fs::equivalent(a.as_string(), b.as_string(), ec) && !ec;
}

}  // namespace

void RunDir::write_config(const std::string& json) const {
  if (!writer_ || json.empty()) return;
  // A fresh run replaces what an earlier attempt without a checkpoint left; a resumed run
  // keeps the flags it started with, and may not change those that shape its result (it
  // would continue silently as another run while config.json describes the first).
  std::string p = file("config.json");
  if (!resume_ || !file_exists(p)) {
    write_file_atomic(p, json + "\n");
    return;
  }
  const Json saved = Json::parse(read_file_text(p), p), now = Json::parse(json, "the flags");
  // A damaged record must not switch the check off.
  HH_CHECK(saved.is_object(), p, ": not a JSON object of flags (a damaged run directory?)");
  if (!now.is_object()) return;
  std::string differ;
  for (const auto& [flag, value] : now.as_object()) {
    const Json* before = saved.find(flag);
    if (may_change_on_resume(flag) || !before || same_flag_value(*before, value)) continue;
    // --init only starts a run: leaving it out on resume is fine (another one is not).
    if (flag == "init" && value.is_string() && value.as_string().empty()) continue;
    differ += str_cat(differ.empty() ? "" : ", ", "--", flag, "=", value.dump(), " (the run has ",
                      before->dump(), ")");
  }
  HH_CHECK(differ.empty(), "--resume: ", path_, " was started with other settings: ", differ,
           ". A resumed run continues with its own settings (", p,
           "): pass the same values, or start a new --run-dir");
}

std::string RunDir::latest_checkpoint() const {
  std::string p = file("latest");
  if (!file_exists(p)) return "";
  std::string name = read_file_text(p);
  while (!name.empty() && (name.back() == '\n' || name.back() == ' ')) name.pop_back();
  HH_CHECK(name.rfind("step-", 0) == 0 && name.find('/') == std::string::npos, p,
           ": not a checkpoint name: '", name, "'");
  std::string dir = path_ + "/checkpoints/" + name;
  HH_CHECK(file_exists(dir + "/model.safetensors") && file_exists(dir + "/optim.safetensors"), p,
           " names ", dir, ", which is incomplete");
  return dir;
}

void RunDir::save_checkpoint(int64_t step, const GPT& model, const AdamW& opt,
                             const TrainState& state,
                             const std::map<std::string, std::string>& metadata, int keep,
                             const std::function<void(const std::string&)>& extra) const {
  if (!writer_) return;
  char name[32];
  std::snprintf(name, sizeof name, "step-%08lld", static_cast<long long>(step));
  std::string dir = path_ + "/checkpoints/" + name;
  make_dirs(dir);
  save_model(dir + "/model.safetensors", model, metadata);
  save_optimizer(dir + "/optim.safetensors", opt, state);
  if (extra) extra(dir);
  write_file_atomic(file("latest"), std::string(name) + "\n");
  // Prune: keep the newest `keep` step directories (names sort by step).
  std::vector<std::string> dirs;
  for (const auto& e : fs::directory_iterator(path_ + "/checkpoints")) {
    std::string n = e.path().filename().string();
    if (e.is_directory() && n.rfind("step-", 0) == 0) dirs.push_back(n);
  }
  std::sort(dirs.begin(), dirs.end());
  for (size_t i = 0; i + static_cast<size_t>(std::max(keep, 1)) < dirs.size(); ++i) {
    if (dirs[i] == name) continue;
    std::error_code ec;
    fs::remove_all(path_ + "/checkpoints/" + dirs[i], ec);
  }
}

void RunDir::save_final(const GPT& model,
                        const std::map<std::string, std::string>& metadata) const {
  if (!writer_) return;
  save_model(file("model.safetensors"), model, metadata);
}

void check_resume_step(const std::string& run_dir, const std::string& checkpoint, int64_t step,
                       int64_t steps) {
  HH_CHECK(step <= steps, "--resume: ", run_dir, "'s latest checkpoint ", checkpoint,
           " is at step ", step, ", past --steps=", steps,
           " (ending there would save newer weights as an older checkpoint): pass --steps >= ",
           step, " (", step, " trains nothing), or choose another --run-dir");
}

StartingPoint find_starting_point(const RunDir& run, bool resume, const std::string& init,
                                  const GPTConfig& flags_config, const ModelFlagsGiven& flags_given,
                                  uint64_t data_fingerprint, uint32_t data_vocab,
                                  const std::string& data_path, int64_t seq) {
  StartingPoint sp;
  sp.config = flags_config;
  sp.resume_dir = resume ? run.latest_checkpoint() : "";
  sp.weights = !sp.resume_dir.empty() ? sp.resume_dir + "/model.safetensors" : init;
  if (!sp.weights.empty()) {
    auto meta = read_checkpoint_metadata(sp.weights);
    if (meta.count("config")) {
      sp.config = read_checkpoint_config(sp.weights);
      std::string differ;
      auto compare = [&](bool given, const char* flag, int named, const char* field, int has) {
        if (given && named != has)
          differ += str_cat(differ.empty() ? "" : ", ", flag, " gives ", field, "=", named,
                            ", it has ", has);
      };
      const GPTConfig& c = sp.config;
      compare(flags_given.n_layer, "--layers", flags_config.n_layer, "n_layer", c.n_layer);
      compare(flags_given.n_head, "--heads", flags_config.n_head, "n_head", c.n_head);
      compare(flags_given.n_embd, "--width", flags_config.n_embd, "n_embd", c.n_embd);
      compare(flags_given.max_seq_len, "--ctx", flags_config.max_seq_len, "max_seq_len",
              c.max_seq_len);
      HH_CHECK(differ.empty(), "the model flags contradict ", sp.weights, " (", differ,
               "; --model names all four): a checkpoint brings its own architecture, so leave ",
               "them out with ", resume ? "--resume" : "--init");
      auto tok = meta.find("tokenizer");
      HH_CHECK(tok == meta.end() || tok->second == std::to_string(data_fingerprint), sp.weights,
               " was trained with another tokenizer than the dataset ", data_path);
      auto head = meta.find("scalar_head");
      sp.has_head = head != meta.end() && head->second == "true";
    } else {
      sp.hf = true;  // a Hugging Face GPT-2 file: the flags give the architecture
    }
  }
  HH_CHECK(sp.config.vocab_size == static_cast<int>(data_vocab), "the model's vocabulary (",
           sp.config.vocab_size, ") differs from the dataset's (", data_vocab, ")");
  HH_CHECK(seq <= sp.config.max_seq_len, "--seq=", seq, " exceeds the model's context ",
           sp.config.max_seq_len);
  return sp;
}

GPT build_model(Backend& backend, const StartingPoint& start, bool scalar_head, uint64_t seed) {
  GPT model(backend, start.config, scalar_head);
  model.init_random(seed);
  if (start.hf) {
    model.import_hf_gpt2(SafeTensorsFile::load(start.weights));
  } else if (!start.weights.empty()) {
    load_weights_into(model, start.weights, /*trunk_only=*/!(scalar_head && start.has_head));
  }
  return model;
}

std::vector<uint64_t> saved_cursor(const BatchSampler& sampler) {
  return {sampler.cursor().epoch, sampler.cursor().position};
}

void restore_cursor(BatchSampler& sampler, const TrainState& state, const std::string& what) {
  HH_CHECK(state.data_cursor.size() == 2, what, ": optimizer state has no data cursor");
  sampler.set_cursor({state.data_cursor[0], state.data_cursor[1]});
}

void check_same_tokenizer(const TokenDataset& dev, const std::string& dev_path,
                          const TokenDataset& train, const std::string& train_path) {
  HH_CHECK(dev.tokenizer_fingerprint == train.tokenizer_fingerprint &&
               dev.vocab_size == train.vocab_size,
           dev_path, " was made with another tokenizer than ", train_path);
}

namespace {
std::atomic<int> g_stop_signals{0};
extern "C" void on_stop_signal(int) {
  if (g_stop_signals.fetch_add(1) >= 1) {
    const char msg[] = "\nsecond interrupt: exiting now\n";
    ssize_t ignored = write(2, msg, sizeof msg - 1);
    (void)ignored;
    _exit(130);
  }
}
}  // namespace

void install_stop_handler() {
  std::signal(SIGINT, on_stop_signal);
  std::signal(SIGTERM, on_stop_signal);
}

bool stop_requested() { return g_stop_signals.load() > 0; }

bool stop_requested(Communicator& comm) { return any_rank(comm, stop_requested()); }

}  // namespace hh
