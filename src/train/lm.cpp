#include "train/lm.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "core/error.h"
#include "core/fileio.h"
#include "core/safetensors.h"
#include "dist/grad_sync.h"
#include "model/checkpoint.h"
#include "train/loop.h"

namespace hh {

Batch make_lm_batch(const SftDataset& data, const std::vector<size_t>& indices, int64_t seq,
                    bool masked) {
  HH_CHECK(!indices.empty(), "make_lm_batch: empty batch");
  Batch b;
  b.B = static_cast<int>(indices.size());
  int T = 1;
  for (size_t i : indices)
    T = std::max<int>(T, static_cast<int>(std::min<int64_t>(data.sequence(i).size(), seq)));
  b.T = T;
  b.tokens.assign(static_cast<size_t>(b.B) * T, 0);
  b.targets.assign(static_cast<size_t>(b.B) * T, -1);
  b.lengths.resize(b.B);
  for (int r = 0; r < b.B; ++r) {
    TokenSpan ids = data.sequence(indices[r]);
    MaskSpan mask = data.mask(indices[r]);
    size_t len = std::min<size_t>(ids.size(), static_cast<size_t>(seq));
    size_t start = ids.size() - len;  // keep the end
    HH_CHECK(len >= 1, "sequence ", indices[r], " is empty");
    b.lengths[r] = static_cast<int32_t>(len);
    for (size_t t = 0; t < len; ++t) {
      b.tokens[r * T + t] = ids[start + t];
      if (t + 1 < len && (!masked || mask[start + t + 1]))
        b.targets[r * T + t] = ids[start + t + 1];
    }
  }
  return b;
}

namespace {

int64_t count_targets(const Batch& b) {
  return std::count_if(b.targets.begin(), b.targets.end(), [](int32_t t) { return t >= 0; });
}

// Splits a batch of indices into micro-batches of at most `micro` sequences.
std::vector<std::vector<size_t>> split(const std::vector<size_t>& idx, int64_t micro) {
  std::vector<std::vector<size_t>> out;
  for (size_t i = 0; i < idx.size(); i += micro)
    out.emplace_back(idx.begin() + i, idx.begin() + std::min(idx.size(), i + micro));
  return out;
}

// Before training: no sequence of `data` (read from `path`) is empty, and its first `n`
// sequences hold a target token, as make_lm_batch would place them (within the last `seq`
// tokens, masked or not). Otherwise a batch would fail naming only an index, and a loss
// over no targets would be reported as 0.
void check_lm_data(const SftDataset& data, const std::string& path, size_t n, int64_t seq,
                   bool masked, const std::string& scope) {
  HH_CHECK(data.size() > 0, path, ": no sequences");
  bool has_target = false;
  for (size_t i = 0; i < data.size(); ++i) {
    const size_t len = data.sequence(i).size();
    HH_CHECK(len > 0, path, ": sequence ", i, " is empty");
    if (has_target || i >= n || len < 2) continue;
    if (!masked) {
      has_target = true;
      continue;
    }
    MaskSpan mask = data.mask(i);
    const size_t start = len - std::min<size_t>(len, static_cast<size_t>(seq));
    has_target = std::find(mask.begin() + start + 1, mask.end(), uint8_t{1}) != mask.end();
  }
  HH_CHECK(has_target, path, ": no target tokens in ", scope, " (",
           masked ? "the loss mask marks no token after the first of any sequence"
                  : "no sequence has 2 tokens",
           masked ? ", counting the last --seq=" + std::to_string(seq) + " tokens of each)" : ")");
}

}  // namespace

double evaluate_lm(GPT& model, const SftDataset& data, int64_t seq, bool masked, int64_t batch,
                   int64_t max_batches, Communicator& comm) {
  size_t n = data.size();
  if (max_batches > 0) n = std::min<size_t>(n, static_cast<size_t>(max_batches * batch));
  double loss_sum = 0, count = 0;
  const size_t W = static_cast<size_t>(comm.world()), R = static_cast<size_t>(comm.rank());
  for (size_t i = 0; i < n; i += batch) {
    if ((i / batch) % W != R) continue;  // batch k belongs to rank k mod world
    std::vector<size_t> idx;
    for (size_t j = i; j < std::min(n, i + batch); ++j) idx.push_back(j);
    Batch b = make_lm_batch(data, idx, seq, masked);
    int64_t c = count_targets(b);
    if (c == 0) continue;
    loss_sum += static_cast<double>(model.forward(b)) * c;
    count += c;
  }
  std::vector<double> sums = {loss_sum, count};
  all_sum(comm, &sums);
  HH_CHECK(sums[1] > 0, "evaluate_lm: no target tokens in the ", n,
           " sequences scored: their loss is undefined");
  return sums[0] / sums[1];
}

LmTrainResult train_lm(Backend& backend, const LmTrainOptions& o) {
  HH_CHECK(o.seq >= 2, "--seq must be >= 2");
  SftDataset train = SftDataset::load(o.train_path);
  check_lm_data(train, o.train_path, train.size(), o.seq, o.masked,
                str_cat("its ", train.size(), " sequences"));
  std::unique_ptr<SftDataset> dev;
  if (!o.dev_path.empty()) {
    dev = std::make_unique<SftDataset>(SftDataset::load(o.dev_path));
    check_same_tokenizer(dev->raw(), o.dev_path, train.raw(), o.train_path);
    // What evaluate_lm scores: the first eval_batches micro-batches, or all.
    size_t n = dev->size();
    std::string scope = str_cat("its ", n, " sequences");
    if (o.eval_batches > 0 && static_cast<size_t>(o.eval_batches * o.micro_batch) < n) {
      n = static_cast<size_t>(o.eval_batches * o.micro_batch);
      scope = str_cat("the first ", n, " sequences, which --eval-batches=", o.eval_batches,
                      " evaluates");
    }
    check_lm_data(*dev, o.dev_path, n, o.seq, o.masked, scope);
  }
  LoopSetup setup;
  setup.program = "hh-sft";
  setup.stage = o.stage;
  setup.raw = &train.raw();
  setup.n_items = train.size();
  setup.items_name = "train seqs";
  setup.dev_items = dev ? dev->size() : 0;
  setup.unit = "tok";
  setup.counter = "tokens";
  TrainLoop loop(backend, o, setup);
  GPT& model = loop.model();
  Communicator& comm = loop.comm();

  LmTrainResult result;
  auto evaluate = [&](int64_t step, bool) {
    if (!dev) return;
    result.last_dev_loss =
        evaluate_lm(model, *dev, o.seq, o.masked, o.micro_batch, o.eval_batches, comm);
    Json rec;
    rec["step"] = step;
    rec["val_loss"] = result.last_dev_loss;
    loop.run_dir().metrics().log(rec);
    if (!loop.quiet())
      std::fprintf(stderr, "step %lld | val_loss %.4f\n", static_cast<long long>(step),
                   result.last_dev_loss);
  };

  // Each micro-batch's loss is scaled by the step's target count over ALL ranks, so the
  // gradients summed over ranks are those of the whole batch's mean loss.
  auto step = [&](const std::vector<size_t>& idx) {
    std::vector<Batch> batches;
    double rank_targets = 0, loss_sum = 0, tokens = 0;
    for (auto& m : split(idx, loop.micro_batch())) {
      batches.push_back(make_lm_batch(train, m, o.seq, o.masked));
      rank_targets += static_cast<double>(count_targets(batches.back()));
    }
    const double total_targets = all_sum(comm, rank_targets);
    for (size_t k = 0; k < batches.size(); ++k) {
      const Batch& b = batches[k];
      for (int32_t len : b.lengths) tokens += len;
      const int64_t c = count_targets(b);
      if (c == 0) continue;
      loss_sum += static_cast<double>(model.forward(b)) * c;
      if (k + 1 == batches.size()) loop.arm_overlap();
      model.backward(static_cast<float>(static_cast<double>(c) / total_targets));
    }
    loop.finish_gradients();
    std::vector<double> sums = {loss_sum, tokens};
    all_sum(comm, &sums);
    StepOutcome out;
    out.loss = total_targets > 0 ? static_cast<float>(sums[0] / total_targets) : 0.f;
    out.items = sums[1];
    return out;
  };

  LoopResult r = loop.run(step, evaluate);
  result.steps_done = r.steps_done;
  result.interrupted = r.interrupted;
  result.train_losses = r.losses;
  return result;
}

}  // namespace hh
