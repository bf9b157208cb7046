// The preference-model stage (Bai et al. 2022, §2.2 and appendix A): a GPT with a scalar
// head that scores a whole dialogue at its final <|endofcontext|> token, trained on pairs
// so that the response a human preferred scores higher:
//
//   loss = mean over pairs of log(1 + exp(r_rejected − r_chosen))   (= softplus)
//
// A step of P pairs is processed `micro_batch` pairs at a time; each micro-batch is one
// model batch of 2p sequences, the p chosen ones first and then the p rejected ones
// (right-padded), so both sequences of a pair always go through the model together.
// Micro-batch i contributes pᵢ/P of its mean loss, so accumulation gives the gradient of
// one big batch.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/json.h"
#include "data/dataset.h"
#include "model/gpt.h"
#include "train/optimizer.h"
#include "train/run.h"

namespace hh {

// ---- the pairwise loss ----

// Mean over pairs of softplus(r_rejected[i] − r_chosen[i]), in double, computed stably
// (softplus(x) = max(x, 0) + log1p(exp(−|x|))). The two vectors must have equal, nonzero
// size.
double pairwise_loss_forward(const std::vector<float>& r_chosen,
                             const std::vector<float>& r_rejected);

// Gradient of loss_scale · pairwise_loss_forward(...) with respect to each score:
//   d/dr_chosen[i]   = −loss_scale · sigmoid(r_rejected[i] − r_chosen[i]) / n
//   d/dr_rejected[i] = +loss_scale · sigmoid(r_rejected[i] − r_chosen[i]) / n
// loss_scale weights a micro-batch in gradient accumulation (n_micro / n_step).
void pairwise_loss_backward(const std::vector<float>& r_chosen,
                            const std::vector<float>& r_rejected, float loss_scale,
                            std::vector<float>* d_chosen, std::vector<float>* d_rejected);

// ---- batches ----

// One model batch for pairs `indices` of `data`: rows [0, P) are the chosen sequences,
// rows [P, 2P) the rejected ones, each left-truncated to `seq` tokens (the end, where
// <|endofcontext|> sits, survives) and right-padded to the longest. score_rows[r] is the
// flattened position r·T + length[r] − 1 of each row's last token.
struct PmBatch {
  Batch batch;
  std::vector<int32_t> score_rows;  // 2P
  int64_t tokens = 0;               // real (unpadded) tokens in the batch
};
PmBatch make_pm_batch(const PmDataset& data, const std::vector<size_t>& indices, int64_t seq);

// A dialogue text as the PM sees it, exactly as hh-prepare pm builds its sequences: the
// data library's tokenize_dialogue, left-truncated to max_len − 1 tokens, then
// <|endofcontext|> (the encoder must have it).
std::vector<int32_t> pm_sequence(std::string_view dialogue, const TextEncoder& encoder,
                                 size_t max_len);

// Scores of the chosen and rejected sequences of `indices` (one forward pass).
void score_pairs(GPT& model, const PmDataset& data, const std::vector<size_t>& indices, int64_t seq,
                 std::vector<float>* r_chosen, std::vector<float>* r_rejected);

// ---- evaluation ----

// Calibration of p = sigmoid(r_chosen − r_rejected), the PM's probability that the chosen
// response is the better one, in 10 equal bins over [0, 1]. In the data the chosen
// response always won, so a one-sided table would only ever observe 1s. The table is
// therefore symmetric: each pair enters twice, once as (p, chosen won = 1) and once in
// the swapped order as (1 − p, 0). Bin k's observed frequency is the fraction of its
// entries with outcome 1; a calibrated PM has observed ≈ mean predicted in every bin. For
// bins above 0.5 the observed frequency is the PM's accuracy on the pairs whose confidence
// max(p, 1 − p) falls in that bin; bin 9 − k mirrors bin k.
struct CalibrationBin {
  double lo = 0, hi = 0;
  int64_t count = 0;  // entries (pairs counted in either order)
  double mean_predicted = 0;
  double observed = 0;  // fraction of entries where the predicted side won
};
struct Calibration {
  std::array<CalibrationBin, 10> bins;
  double ece = 0;  // expected calibration error: Σ count/total · |observed − mean_predicted|
};
Calibration calibration_table(const std::vector<double>& margins);

struct PmEvalResult {
  int64_t pairs = 0;
  double loss = 0;         // mean softplus(r_rej − r_cho)
  double accuracy = 0;     // fraction of pairs with r_cho > r_rej (a tie counts 1/2)
  double mean_margin = 0;  // mean r_cho − r_rej
  Calibration calibration;
  std::vector<double> margins;  // r_cho − r_rej per pair, in dataset order

  // {"pairs":..,"loss":..,"accuracy":..,"mean_margin":..,"ece":..,
  //  "calibration":[{"lo":..,"hi":..,"count":..,"mean_predicted":..,"observed":..},...]}
  Json to_json() const;
  // A readable table (several lines, no trailing JSON).
  std::string to_text() const;
};

// Scores the first min(max_pairs, size) pairs of `data` in order (all when max_pairs is 0),
// `batch` pairs per forward pass.
// With several ranks, batch k is scored by rank k mod world; every rank gets the result.
PmEvalResult evaluate_pm(GPT& model, const PmDataset& data, int64_t seq, int64_t batch,
                         int64_t max_pairs, Communicator& comm = single_communicator());

// The baseline "prefer the shorter response": the fraction of the first max_pairs pairs
// (all when 0) whose chosen sequence has fewer tokens than the rejected one (ties count
// 1/2). Both sequences share the prompt, so this compares the responses' lengths.
double shorter_response_accuracy(const PmDataset& data, int64_t max_pairs);

// ---- training ----

struct PmTrainOptions : TrainLoopOptions {  // batch and micro_batch count pairs
  PmTrainOptions() {
    batch = micro_batch = 16;
    run_dir = "runs/pm";
  }
  int64_t eval_pairs = 0;  // dev pairs per evaluation (0: all)
};

struct PmTrainResult {
  int64_t steps_done = 0;
  bool interrupted = false;
  std::vector<float> train_losses;      // one per step taken in this invocation
  std::vector<float> train_accuracies;  // idem
  bool has_dev = false;
  PmEvalResult last_dev;  // the final dev evaluation (also written to <run>/eval.json)
  double pairs_per_second = 0;
};

PmTrainResult train_pm(Backend& backend, const PmTrainOptions& options);

}  // namespace hh
