// Keeping data-parallel replicas of a GPT identical: the summed gradient, the initial
// broadcast, and the debug check that every rank holds the same parameters.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "dist/dist.h"
#include "model/gpt.h"

namespace hh {

// Σ over ranks of a model's gradient buffer, bucketed by layer. With NCCL (and MPI) the
// buckets overlap the backward pass: arm() before the backward of a step's last micro-batch, and
// each layer's gradient leaves as soon as that pass has finished it (on NCCL's stream);
// finish() sends the layers not sent yet, then the rest (embeddings, final LayerNorm,
// head), and waits for everything. Every rank therefore issues the same collectives in the
// same order (layer L-1 … 0, then the rest) whether or not it armed or ran a backward pass
// this step (a PPO rank may have no sequence in a minibatch): collectives must match.
// With a communicator that cannot overlap, finish() reduces the whole buffer in one call.
//
// Trainers scale each rank's loss by the GLOBAL count (tokens, pairs) before backward, so
// the sum over ranks is the gradient one process would compute for the whole batch.
class GradientSync {
 public:
  GradientSync(Communicator& comm, GPT& model);
  ~GradientSync();
  GradientSync(const GradientSync&) = delete;
  GradientSync& operator=(const GradientSync&) = delete;

  void arm();
  void finish();
  // False for the single-process communicator: then arm() and finish() do nothing.
  bool active() const { return active_; }

 private:
  void send(int layer);  // the backward pass's hook
  void send_layer(int layer);

  Communicator* comm_;
  GPT* model_;
  bool active_, overlap_, armed_ = false;
  int next_layer_ = -1;  // the next layer to send (layers go L-1 … 0); -1: all sent
  std::vector<std::pair<size_t, size_t>> rest_;  // what no layer bucket covers
};

// Copies rank 0's parameters to every rank (after each rank built or loaded the model).
void broadcast_parameters(Communicator& comm, GPT& model);
// Copies rank 0's contents of a float buffer of the backend (optimizer moments).
void broadcast_buffer(Communicator& comm, Buffer<float>& buffer);
// Throws on every rank, naming the ranks, unless all of them hold bit-identical
// parameters ("at step 40"): the --check-sync-every debug check.
void check_replicas_identical(Communicator& comm, const GPT& model, const std::string& when);

}  // namespace hh
