// The language-model stage: pretraining on whole dialogues, or supervised fine-tuning
// with the loss on assistant tokens only (the mask hh-prepare stores).
//
// One optimizer step = `batch` sequences, processed `micro_batch` at a time (gradient
// accumulation). The loss is the mean next-token cross-entropy over all target tokens of
// the step: micro-batch i with nᵢ targets contributes nᵢ/Σn of its mean, so accumulation
// gives the same gradient as one big batch.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "data/dataset.h"
#include "model/gpt.h"
#include "train/optimizer.h"
#include "train/run.h"

namespace hh {

struct LmTrainOptions : TrainLoopOptions {
  LmTrainOptions() { run_dir = "runs/sft"; }
  bool masked = true;         // true: SFT (assistant tokens); false: every token
  int64_t eval_batches = 0;   // dev batches per evaluation (0: all)
  std::string stage = "sft";  // recorded in checkpoint metadata
};

struct LmTrainResult {
  int64_t steps_done = 0;
  bool interrupted = false;
  std::vector<float> train_losses;  // one per step taken in this invocation
  double last_dev_loss = -1;        // -1 when there is no dev set
};

LmTrainResult train_lm(Backend& backend, const LmTrainOptions& options);

// A batch of dataset sequences: each left-truncated to `seq` tokens (the end survives),
// right-padded to the longest; target of position t is token t+1 when it is trained on
// (mask[t+1] when masked, always otherwise), else -1.
Batch make_lm_batch(const SftDataset& data, const std::vector<size_t>& indices, int64_t seq,
                    bool masked);

// Mean target-token loss over the first max_batches·batch sequences of `data` in order
// (all when max_batches is 0).
// With several ranks, batch k is scored by rank k mod world and the sums are combined.
double evaluate_lm(GPT& model, const SftDataset& data, int64_t seq, bool masked, int64_t batch,
                   int64_t max_batches, Communicator& comm = single_communicator());

}  // namespace hh
