#include "train/lm.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "core/error.h"
#include "core/fileio.h"
#include "core/safetensors.h"
#include "dist/grad_sync.h"
#include "model/checkpoint.h"

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
  return sums[1] > 0 ? sums[0] / sums[1] : 0.0;
}

LmTrainResult train_lm(Backend& backend, const LmTrainOptions& o) {
  HH_CHECK(o.steps > 0, "--steps must be > 0");
  HH_CHECK(o.batch > 0 && o.micro_batch > 0, "--batch and --micro-batch must be > 0");
  HH_CHECK(o.seq >= 2, "--seq must be >= 2");

  SftDataset train = SftDataset::load(o.train_path);
  HH_CHECK(train.size() > 0, o.train_path, ": no sequences");
  const TokenDataset& raw = train.raw();
  std::unique_ptr<SftDataset> dev;
  if (!o.dev_path.empty()) {
    dev = std::make_unique<SftDataset>(SftDataset::load(o.dev_path));
    check_same_tokenizer(dev->raw(), o.dev_path, raw, o.train_path);
  }
  const std::string fingerprint = std::to_string(raw.tokenizer_fingerprint);

  // Data parallelism: rank r takes its share of every batch (BatchSampler), and each
  // micro-batch's loss is scaled by the step's GLOBAL target count, so the gradients
  // summed over ranks are those of the whole batch on one process.
  Communicator& comm = o.parallel.get();
  const int64_t rank_batch = per_rank_batch(o.batch, comm, "batch");
  const int64_t micro_batch = std::min(o.micro_batch, rank_batch);
  const bool quiet = o.quiet || !comm.is_root();
  check_same_job(comm, o.config_json, dataset_hash(raw), o.train_path);

  RunDir run(o.run_dir, o.resume, comm.is_root());

  const StartingPoint start =
      find_starting_point(run, o.resume, o.init, o.model, raw.tokenizer_fingerprint, raw.vocab_size,
                          o.train_path, o.seq);
  const std::string& resume_dir = start.resume_dir;
  const GPTConfig& cfg = start.config;
  GPT model = build_model(backend, start, /*scalar_head=*/false, o.seed);

  AdamW opt(model, o.adamw);
  BatchSampler sampler(train.size(), static_cast<size_t>(rank_batch), o.seed, comm.rank(),
                       comm.world());
  TrainState state;
  double tokens_seen = 0;
  if (!resume_dir.empty()) {
    load_optimizer(resume_dir + "/optim.safetensors", opt, &state);
    restore_cursor(sampler, state, resume_dir);
    tokens_seen = state.extra.count("tokens_seen") ? state.extra["tokens_seen"] : 0;
  }
  sync_replicas(comm, model, opt);
  GradientSync grad_sync(comm, model);
  run.write_config(o.config_json);
  const int64_t start_step = opt.step;
  if (!quiet) {
    std::fprintf(stderr, "hh-sft: %s | %zu params | %zu train seqs%s | %s from step %lld%s\n",
                 cfg.describe().c_str(), model.num_parameters(), train.size(),
                 dev ? (", " + std::to_string(dev->size()) + " dev").c_str() : "",
                 resume_dir.empty() ? "starting" : "resuming", static_cast<long long>(start_step),
                 describe_ranks(comm).c_str());
  }

  auto metadata = [&](int64_t step) {
    return std::map<std::string, std::string>{
        {"stage", o.stage}, {"step", std::to_string(step)}, {"tokenizer", fingerprint}};
  };
  auto checkpoint = [&](int64_t step) {
    state.data_cursor = saved_cursor(sampler);
    state.extra["tokens_seen"] = tokens_seen;
    run.save_checkpoint(step, model, opt, state, metadata(step), o.keep_ckpts);
  };

  LmTrainResult result;
  Progress progress(o.steps);
  progress.start(start_step, 0);
  double tokens_this_run = 0;
  auto evaluate = [&](int64_t step) {
    if (!dev) return;
    result.last_dev_loss =
        evaluate_lm(model, *dev, o.seq, o.masked, o.micro_batch, o.eval_batches, comm);
    Json rec;
    rec["step"] = step;
    rec["val_loss"] = result.last_dev_loss;
    run.metrics().log(rec);
    if (!quiet)
      std::fprintf(stderr, "step %lld | val_loss %.4f\n", static_cast<long long>(step),
                   result.last_dev_loss);
  };

  for (int64_t step = start_step; step < o.steps; ++step) {
    if (stop_requested(comm)) {
      if (!quiet)
        std::fprintf(stderr, "interrupted: saving a checkpoint at step %lld\n",
                     static_cast<long long>(step));
      checkpoint(step);
      result.interrupted = true;
      return result;
    }
    std::vector<size_t> idx = sampler.next_batch();
    auto micro = split(idx, micro_batch);
    std::vector<Batch> batches;
    double rank_targets = 0;
    for (auto& m : micro) {
      batches.push_back(make_lm_batch(train, m, o.seq, o.masked));
      rank_targets += static_cast<double>(count_targets(batches.back()));
    }
    const double total_targets = all_sum(comm, rank_targets);
    double loss_sum = 0;
    double step_tokens = 0;
    model.zero_grad();
    for (size_t k = 0; k < batches.size(); ++k) {
      const Batch& b = batches[k];
      for (int32_t len : b.lengths) step_tokens += len;
      int64_t c = count_targets(b);
      if (c == 0) continue;
      float loss = model.forward(b);
      loss_sum += static_cast<double>(loss) * c;
      if (k + 1 == batches.size()) grad_sync.arm();  // overlap the last backward with NCCL
      model.backward(static_cast<float>(static_cast<double>(c) / total_targets));
    }
    grad_sync.finish();
    std::vector<double> sums = {loss_sum, step_tokens};
    all_sum(comm, &sums);
    loss_sum = sums[0], step_tokens = sums[1];
    float loss = total_targets > 0 ? static_cast<float>(loss_sum / total_targets) : 0.f;
    float lr = lr_at(step, o.adamw.lr, o.warmup, o.steps, o.min_lr_frac);
    float norm = 0;
    bool skipped = false;
    if (!std::isfinite(loss)) {
      skipped = true;
    } else {
      norm = opt.clip_and_step(lr);
      skipped = !std::isfinite(norm);
    }
    if (skipped) {
      std::fprintf(stderr, "step %lld: non-finite %s (loss %g, grad norm %g)%s\n",
                   static_cast<long long>(step), std::isfinite(loss) ? "gradient norm" : "loss",
                   loss, norm, o.nan_policy == NanPolicy::Stop ? ": stopping" : ": step skipped");
      HH_CHECK(o.nan_policy != NanPolicy::Stop, "non-finite loss or gradient at step ", step,
               "; the last checkpoint is intact");
      opt.step += 1;  // keep the schedule moving; the weights are unchanged
    }
    tokens_seen += step_tokens;
    tokens_this_run += step_tokens;
    result.train_losses.push_back(loss);
    const int64_t done = step + 1;
    progress.update(done, tokens_this_run);
    if (o.log_every > 0 && (done % o.log_every == 0 || done == o.steps || done == start_step + 1)) {
      Json rec;
      rec["step"] = done;
      rec["loss"] = loss;
      rec["lr"] = lr;
      rec["grad_norm"] = norm;
      rec["tokens"] = tokens_seen;
      rec["tok_per_s"] = progress.items_per_second();
      rec["skipped"] = skipped;
      run.metrics().log(rec);
      if (!quiet)
        std::fprintf(stderr, "%s | loss %.4f | lr %.2e | norm %.3f\n", progress.line("tok").c_str(),
                     loss, lr, norm);
    }
    check_sync(o.parallel, model, done);
    if (o.eval_every > 0 && done % o.eval_every == 0 && done != o.steps) evaluate(done);
    if (o.ckpt_every > 0 && done % o.ckpt_every == 0 && done != o.steps) checkpoint(done);
  }
  result.steps_done = o.steps - start_step;
  evaluate(o.steps);
  checkpoint(o.steps);
  run.save_final(model, metadata(o.steps));
  return result;
}

}  // namespace hh
