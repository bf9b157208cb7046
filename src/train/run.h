// What every trainer (hh-sft, hh-pm, hh-ppo) shares: the flags for device, model size,
// optimizer and run bookkeeping; the run directory with its checkpoints and metrics; and
// the stop flag that Ctrl-C sets.
//
// Run directory layout:
//   <run>/config.json                 the flags of the first invocation
//   <run>/metrics.jsonl               one JSON object per logged step (appended on resume)
//   <run>/checkpoints/step-00000100/  model.safetensors + optim.safetensors
//   <run>/latest                      name of the newest complete checkpoint directory
//   <run>/model.safetensors           the final model (what the next stage reads)
// A checkpoint directory is complete before `latest` (written atomically) names it, so a
// crash or Ctrl-C at any moment leaves the previous checkpoint loadable.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/flags.h"
#include "core/metrics.h"
#include "data/dataset.h"
#include "dist/dist.h"
#include "model/gpt.h"
#include "ops/ops.h"
#include "train/optimizer.h"

namespace hh {

// --device=auto|cpu|cuda
void add_device_flag(Flags& flags);
std::unique_ptr<Backend> backend_from_flags(const Flags& flags);

// --model=tiny|small|gpt2-124m and --layers/--heads/--width/--ctx overrides.
void add_model_flags(Flags& flags, const std::string& default_preset);
GPTConfig model_config_from_flags(const Flags& flags, int vocab_size);
// The dimensions the command line names: each of --layers/--heads/--width/--ctx given, and
// all four with --model (a preset names them all).
struct ModelFlagsGiven {
  bool n_layer = false, n_head = false, n_embd = false, max_seq_len = false;
};
ModelFlagsGiven model_flags_given(const Flags& flags);

// --lr --min-lr-frac --warmup --weight-decay --grad-clip --beta1 --beta2
void add_optimizer_flags(Flags& flags, double default_lr);
AdamWConfig adamw_config_from_flags(const Flags& flags);
// A warmup longer than the run never reaches --lr: say so on stderr (a warning, not an
// error: a short trial run of a long configuration is a fair thing to ask for).
void warn_if_warmup_outlasts_the_run(int64_t warmup, int64_t steps);

// What a stage's --steps and --batch count (their --help text), and whether it evaluates on
// a dev set (--eval-every).
struct RunFlagText {
  std::string steps = "optimizer steps";
  std::string batch = "sequences per optimizer step";
  bool eval = true;
};

// --run-dir --steps --batch --log-every [--eval-every] --ckpt-every --keep-ckpts --seed
// --resume --on-nan=skip|stop
void add_run_flags(Flags& flags, const std::string& default_run_dir, int64_t default_steps,
                   int64_t default_batch, const RunFlagText& text = {});

// --dist=auto|single|mpi|nccl --dist-timeout --nccl-id-file --check-sync-every
void add_dist_flags(Flags& flags);

// How a trainer runs across ranks: the communicator (null: one process) and the debug
// check of identical replicas every N steps (0: off).
struct Parallelism {
  Communicator* comm = nullptr;
  int64_t check_sync_every = 0;
  Communicator& get() const { return comm ? *comm : single_communicator(); }
};

// This process's backend and communicator from --device and the dist flags: the rank
// comes from the launcher (dist.h); with several ranks, --device cuda/auto means GPU
// LOCAL_RANK. The backend outlives the communicator (declared first).
struct ProcessGroup {
  DistEnv env;
  std::unique_ptr<Backend> backend;
  std::unique_ptr<Communicator> comm;
  Parallelism parallelism() const;
  int64_t check_sync_every = 0;
};
ProcessGroup process_group_from_flags(const Flags& flags);

// A per-step count of every rank's part of the global batch, with a clear error when the
// global batch does not split evenly: batch / world.
int64_t per_rank_batch(int64_t batch, const Communicator& comm, const char* flag);

// Every rank must run the same job: the flags (`config_json`) and the training data
// (`data_hash`, e.g. its tokenizer fingerprint and token count) are compared with rank
// 0's; a difference stops every rank with an error naming the ranks.
void check_same_job(Communicator& comm, const std::string& config_json, uint64_t data_hash,
                    const std::string& data_path);

// Order-sensitive hash of a dataset's shape (tokenizer fingerprint, sequence offsets).
uint64_t dataset_hash(const TokenDataset& data);

// After every rank built its model and optimizer: rank 0's parameters and moments are
// copied to all, and the step counts compared, so replicas start identical.
void sync_replicas(Communicator& comm, GPT& model, AdamW& opt);
// The --check-sync-every debug check after `step` (a no-op when off or for one rank).
void check_sync(const Parallelism& parallel, const GPT& model, int64_t step);
// " | 4 ranks (nccl)" for a start-up line; "" for one process.
std::string describe_ranks(const Communicator& comm);

// Before the first step: `need` bytes (GPT::bytes_to_train for `seqs` sequences of `seq`
// tokens), plus a margin for the backend's scratch, must fit in what the backend has free;
// else an error that names both sizes and the flags that shrink the step.
void check_training_fits(Backend& backend, size_t need, int seqs, int seq,
                         const std::string& program);

// What to do when the loss or the gradient norm is NaN/Inf.
enum class NanPolicy { Skip, Stop };
NanPolicy nan_policy_from_flags(const Flags& flags);

// What the step-loop trainers (hh-sft, hh-pm) share: the data and starting point, the run,
// the schedule, the optimizer, bookkeeping.
struct TrainLoopOptions {
  std::string train_path, dev_path;  // datasets from hh-prepare (dev may be "")
  std::string
      init;         // hh checkpoint (a PM takes an LM's trunk) or HF GPT-2 safetensors; "" = random
  GPTConfig model;  // used for random / HF init (vocab taken from the data)
  ModelFlagsGiven model_given;  // what of `model` the command line named (checked against a
                                // checkpoint, which brings its own architecture)
  int64_t steps = 100, batch = 8, micro_batch = 8, seq = 256;
  AdamWConfig adamw;
  float min_lr_frac = 0.1f;
  int64_t warmup = 20;
  int64_t log_every = 10, eval_every = 100, ckpt_every = 200;
  int keep_ckpts = 2;
  uint64_t seed = 1234;
  bool resume = false;
  NanPolicy nan_policy = NanPolicy::Skip;
  std::string run_dir;
  bool quiet = false;       // no progress lines (tests)
  std::string config_json;  // the flags, recorded as <run>/config.json
  Parallelism parallel;     // data parallelism (default: one process)
};
// Fills the shared options from the flags of add_run_flags and add_optimizer_flags (and
// --seq / --micro-batch when the binary defines them; --micro-batch 0 means --batch).
void loop_options_from_flags(const Flags& flags, TrainLoopOptions* options);

class RunDir {
 public:
  // Creates the directory. A fresh run (resume=false) refuses a directory that already
  // holds a checkpoint, so earlier work is never overwritten by accident: any step-*
  // entry counts, named by `latest` or not. --resume needs `latest`; without it (a save
  // interrupted before `latest`) the error names the newest step directory that looks
  // complete and how to resume from it.
  RunDir(const std::string& path, bool resume, bool is_writer = true);
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }
  MetricsLogger& metrics() { return *metrics_; }
  // Writes config.json (the flags as JSON); a resumed run keeps the one it has.
  void write_config(const std::string& json) const;

  // The checkpoint directory `latest` names, or "" when there is no `latest`.
  std::string latest_checkpoint() const;
  // The names of the step-* entries of checkpoints/, sorted (oldest first).
  std::vector<std::string> checkpoint_dirs() const;
  // Saves model + optimizer state as checkpoints/step-N, points `latest` at it, and
  // removes older checkpoint directories beyond `keep`.
  // `extra` (when given) writes further files into the directory before `latest` names it
  // (PPO's value model and its optimizer).
  void save_checkpoint(int64_t step, const GPT& model, const AdamW& opt, const TrainState& state,
                       const std::map<std::string, std::string>& metadata, int keep,
                       const std::function<void(const std::string& dir)>& extra = {}) const;
  // Writes <run>/model.safetensors (atomic).
  void save_final(const GPT& model, const std::map<std::string, std::string>& metadata) const;

 private:
  std::string path_;
  bool writer_;
  bool resume_;
  std::unique_ptr<MetricsLogger> metrics_;
};

// After loading the checkpoint `checkpoint` of a resumed run at `step`: --steps (`steps`)
// below it is an error, since finishing the run would save step `steps` over an older
// checkpoint with newer weights and move `latest` backwards. steps == step is a finished
// run: the trainers train nothing and leave its checkpoints alone.
void check_resume_step(const std::string& run_dir, const std::string& checkpoint, int64_t step,
                       int64_t steps);

// Where a trainer's model comes from: the run's latest checkpoint when resuming, else
// `init` (an hh checkpoint gives its own config; a Hugging Face GPT-2 file takes the
// flags' config), else a random init of the flags' config.
struct StartingPoint {
  GPTConfig config;
  std::string weights;     // file to load, "" for a random init
  std::string resume_dir;  // the checkpoint directory when resuming, else ""
  bool hf = false;         // weights is a Hugging Face GPT-2 file
  bool has_head = false;   // weights has a scalar head (a PM checkpoint)
};
// Checks that the starting checkpoint was made with the dataset's tokenizer (fingerprint,
// vocabulary), that the dimensions named on the command line (flags_given) are the
// checkpoint's, and that `seq` fits the model's context; errors name the files.
StartingPoint find_starting_point(const RunDir& run, bool resume, const std::string& init,
                                  const GPTConfig& flags_config, const ModelFlagsGiven& flags_given,
                                  uint64_t data_fingerprint, uint32_t data_vocab,
                                  const std::string& data_path, int64_t seq);
// The model of a starting point: random init from `seed`, then its weights (the whole
// model when both have a scalar head, else the trunk, leaving a new head random).
GPT build_model(Backend& backend, const StartingPoint& start, bool scalar_head, uint64_t seed);

// The sampler's cursor as TrainState::data_cursor stores it, and back; restore names
// `what` (the checkpoint) when the state has no cursor.
std::vector<uint64_t> saved_cursor(const BatchSampler& sampler);
void restore_cursor(BatchSampler& sampler, const TrainState& state, const std::string& what);

// A dev dataset must come from the training set's tokenizer (fingerprint and vocabulary).
void check_same_tokenizer(const TokenDataset& dev, const std::string& dev_path,
                          const TokenDataset& train, const std::string& train_path);

// SIGINT/SIGTERM set a flag instead of killing the process; trainers check it between
// steps, save a checkpoint and exit. A second Ctrl-C exits at once (nothing half-written
// can result: every file write is atomic).
void install_stop_handler();
bool stop_requested();
// Collective: true on every rank when any rank was asked to stop, so all of them save and
// leave at the same step.
bool stop_requested(Communicator& comm);

}  // namespace hh
