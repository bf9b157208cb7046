// The optimizer-step loop that hh-sft and hh-pm share: model and optimizer from the run
// directory (resume), init file or random init; the data-parallel setup; and around every
// step the stop request, the schedule, NaN/Inf handling, the metrics line, evaluation,
// checkpoints, and the final save. A trainer supplies only what one step computes.
//
//   TrainLoop loop(backend, options, setup);           // loads / resumes, syncs replicas
//   loop.run([&](const std::vector<size_t>& idx) {     // this rank's items of the step
//     ... forward/backward of idx, loop.arm_overlap() before the last backward ...
//     loop.finish_gradients();                         // Σ over ranks
//     return StepOutcome{loss, items, {{"accuracy", acc}}};   // over all ranks
//   }, evaluate);
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "data/dataset.h"
#include "dist/grad_sync.h"
#include "model/gpt.h"
#include "train/optimizer.h"
#include "train/run.h"

namespace hh {

// What distinguishes a trainer to the loop.
struct LoopSetup {
  std::string program;       // "hh-sft": start-up line
  std::string stage;         // checkpoint metadata "stage"
  bool scalar_head = false;  // scored at one row per sequence (the PM) instead of the LM head
  int seqs_per_item = 1;     // sequences in one item: 2 for a pair
  const TokenDataset* raw = nullptr;  // the training data (tokenizer, hash)
  size_t n_items = 0;                 // sequences or pairs to sample from
  std::string items_name;             // "train seqs": start-up line
  size_t dev_items = 0;               // 0: no dev set
  std::string unit;     // "tok" / "pairs": progress line and metrics key (unit + "_per_s")
  std::string counter;  // "tokens" / "pairs": metrics key; "<counter>_seen" in checkpoints
};

// One step, over all ranks. A non-finite loss skips the step (or stops, --on-nan=stop).
struct StepOutcome {
  float loss = 0;
  double items = 0;  // tokens or pairs processed (progress and throughput)
  std::vector<std::pair<std::string, double>> metrics;  // logged after the loss, e.g. accuracy
};

struct LoopResult {
  int64_t steps_done = 0;
  bool interrupted = false;
  std::vector<float> losses;                           // one per step of this invocation
  std::map<std::string, std::vector<double>> metrics;  // StepOutcome::metrics, per step
  double items_per_second = 0;
};

class TrainLoop {
 public:
  TrainLoop(Backend& backend, const TrainLoopOptions& options, const LoopSetup& setup);

  GPT& model() { return model_; }
  Communicator& comm() { return comm_; }
  RunDir& run_dir() { return run_; }
  bool quiet() const { return quiet_; }
  // This rank's micro-batch: --micro-batch, at most the rank's share of --batch.
  int64_t micro_batch() const { return micro_batch_; }

  // Before the backward pass of a step's last micro-batch (overlaps NCCL with it).
  void arm_overlap() { grad_sync_.arm(); }
  // Σ of the gradients over ranks; call once per step, before any other collective.
  void finish_gradients() { grad_sync_.finish(); }

  // `step` gets this rank's item indices of each step, the gradients zeroed. `evaluate`
  // (step, final) runs every --eval-every steps and at the end; it may be empty.
  LoopResult run(const std::function<StepOutcome(const std::vector<size_t>&)>& step,
                 const std::function<void(int64_t, bool)>& evaluate);

 private:
  void checkpoint(int64_t step);
  std::map<std::string, std::string> metadata(int64_t step) const;

  const TrainLoopOptions& o_;
  LoopSetup setup_;
  Communicator& comm_;
  int64_t rank_batch_, micro_batch_;
  bool quiet_;
  RunDir run_;
  StartingPoint start_;
  GPT model_;
  AdamW opt_;
  BatchSampler sampler_;
  TrainState state_;
  GradientSync grad_sync_;
  double seen_ = 0;  // items over all invocations of the run
};

}  // namespace hh
