#include "dist/grad_sync.h"

#include <algorithm>

#include "core/error.h"
#include "core/fileio.h"

namespace hh {

GradientSync::GradientSync(Communicator& comm, GPT& model)
    : comm_(&comm),
      model_(&model),
      active_(comm.name() != "single"),
      overlap_(active_ && comm.overlaps()) {
  // The complement of the layer ranges in [0, size): the tensors the last bucket carries.
  std::vector<std::pair<size_t, size_t>> layers;
  for (int l = 0; l < model.config().n_layer; ++l)
    for (const auto& r : model.layer_param_ranges(l)) layers.push_back(r);
  std::sort(layers.begin(), layers.end());
  size_t at = 0;
  for (const auto& r : layers) {
    if (r.first > at) rest_.emplace_back(at, r.first);
    at = std::max(at, r.second);
  }
  if (at < model.grads().size()) rest_.emplace_back(at, model.grads().size());
  if (overlap_) model.set_layer_backward_hook([this](int l) { send(l); });
}

GradientSync::~GradientSync() {
  if (overlap_) model_->set_layer_backward_hook(nullptr);
}

void GradientSync::arm() {
  if (!active_ || !overlap_) return;
  armed_ = true;
  next_layer_ = model_->config().n_layer - 1;
}

void GradientSync::send(int layer) {
  if (!armed_) return;
  HH_CHECK(layer == next_layer_, "GradientSync: layer ", layer, " finished while layer ",
           next_layer_, " was expected (one backward pass per arm())");
  send_layer(layer);
  --next_layer_;
}

void GradientSync::send_layer(int layer) {
  for (const auto& r : model_->layer_param_ranges(layer))
    comm_->all_reduce_device_async(model_->grads().data() + r.first, r.second - r.first);
}

void GradientSync::finish() {
  if (!active_) return;
  float* g = model_->grads().data();
  if (!overlap_) {
    comm_->all_reduce_device(g, model_->grads().size());
    return;
  }
  if (!armed_) next_layer_ = model_->config().n_layer - 1;
  for (; next_layer_ >= 0; --next_layer_) send_layer(next_layer_);
  for (const auto& r : rest_) comm_->all_reduce_device_async(g + r.first, r.second - r.first);
  comm_->wait_all();
  armed_ = false;
}

void broadcast_parameters(Communicator& comm, GPT& model) {
  broadcast_buffer(comm, model.params());
}

void broadcast_buffer(Communicator& comm, Buffer<float>& buffer) {
  if (comm.world() > 1 && buffer.size() > 0) comm.broadcast_device(buffer.data(), buffer.size(), 0);
}

void check_replicas_identical(Communicator& comm, const GPT& model, const std::string& when) {
  if (comm.world() == 1) return;
  std::vector<float> host(model.params().size());
  model.backend().copy_to_host(host.data(), model.params().data(), host.size() * sizeof(float));
  check_same_on_all_ranks(comm, fnv1a64(host.data(), host.size() * sizeof(float)),
                          "the parameters " + when);
}

}  // namespace hh
