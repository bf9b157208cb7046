#include "train/loop.h"

#include <cmath>
#include <cstdio>

#include "core/error.h"
#include "core/metrics.h"

namespace hh {

namespace {

// The rank's share of --batch, after checking that every rank runs the same job.
int64_t rank_batch_of(Communicator& comm, const TrainLoopOptions& o, const LoopSetup& s) {
  HH_CHECK(o.steps > 0, "--steps must be > 0");
  HH_CHECK(o.batch > 0 && o.micro_batch > 0, "--batch and --micro-batch must be > 0");
  HH_CHECK(o.seq >= 2, "--seq must be >= 2");
  HH_CHECK(s.raw != nullptr && s.n_items > 0, o.train_path, ": no training data");
  const int64_t rank_batch = per_rank_batch(o.batch, comm, "batch");
  check_same_job(comm, o.config_json, dataset_hash(*s.raw), o.train_path);
  return rank_batch;
}

}  // namespace

TrainLoop::TrainLoop(Backend& backend, const TrainLoopOptions& o, const LoopSetup& setup)
    : o_(o),
      setup_(setup),
      comm_(o.parallel.get()),
      rank_batch_(rank_batch_of(comm_, o, setup)),
      micro_batch_(std::min(o.micro_batch, rank_batch_)),
      quiet_(o.quiet || !comm_.is_root()),
      run_(o.run_dir, o.resume, comm_.is_root()),
      start_(find_starting_point(run_, o.resume, o.init, o.model, o.model_given,
                                 setup.raw->tokenizer_fingerprint, setup.raw->vocab_size,
                                 o.train_path, o.seq)),
      model_(build_model(backend, start_, setup.scalar_head, o.seed)),
      opt_(model_, o.adamw),
      sampler_(setup.n_items, static_cast<size_t>(rank_batch_), o.seed, comm_.rank(),
               comm_.world()),
      grad_sync_(comm_, model_) {
  if (!start_.resume_dir.empty()) {
    load_optimizer(start_.resume_dir + "/optim.safetensors", opt_, &state_);
    check_resume_step(o.run_dir, start_.resume_dir, opt_.step, o.steps);
    restore_cursor(sampler_, state_, start_.resume_dir);
    const std::string key = setup_.counter + "_seen";
    seen_ = state_.extra.count(key) ? state_.extra[key] : 0;
  }
  sync_replicas(comm_, model_, opt_);
  const int seqs = static_cast<int>(micro_batch_) * setup_.seqs_per_item;
  check_training_fits(backend, model_.bytes_to_train(seqs, o.seq, setup_.scalar_head ? seqs : 0),
                      seqs, o.seq, setup_.program);
  run_.write_config(o.config_json);
  if (!quiet_) {
    std::fprintf(stderr, "%s: %s | %zu params | %zu %s%s | %s from step %lld%s\n",
                 setup_.program.c_str(), start_.config.describe().c_str(), model_.num_parameters(),
                 setup_.n_items, setup_.items_name.c_str(),
                 setup_.dev_items ? (", " + std::to_string(setup_.dev_items) + " dev").c_str() : "",
                 start_.resume_dir.empty() ? "starting" : "resuming",
                 static_cast<long long>(opt_.step), describe_ranks(comm_).c_str());
  }
}

std::map<std::string, std::string> TrainLoop::metadata(int64_t step) const {
  return {{"stage", setup_.stage},
          {"step", std::to_string(step)},
          {"tokenizer", std::to_string(setup_.raw->tokenizer_fingerprint)}};
}

void TrainLoop::checkpoint(int64_t step) {
  state_.data_cursor = saved_cursor(sampler_);
  state_.extra[setup_.counter + "_seen"] = seen_;
  run_.save_checkpoint(step, model_, opt_, state_, metadata(step), o_.keep_ckpts);
}

LoopResult TrainLoop::run(const std::function<StepOutcome(const std::vector<size_t>&)>& step_fn,
                          const std::function<void(int64_t, bool)>& evaluate) {
  LoopResult result;
  const int64_t start_step = opt_.step;
  if (start_step == o_.steps) {
    // A finished run resumed: no training, no evaluation, and checkpoints/step-N (already
    // `latest`) is not rewritten. The final model is, with the same weights and metadata,
    // in case the run stopped between its last checkpoint and the final save.
    if (!quiet_)
      std::fprintf(stderr, "%s: the run finished at step %lld: nothing to train\n",
                   setup_.program.c_str(), static_cast<long long>(start_step));
    run_.save_final(model_, metadata(o_.steps));
    return result;
  }
  Progress progress(o_.steps);
  progress.start(start_step, 0);
  double items_this_run = 0;
  for (int64_t step = start_step; step < o_.steps; ++step) {
    if (stop_requested(comm_)) {
      if (!quiet_)
        std::fprintf(stderr, "interrupted: saving a checkpoint at step %lld\n",
                     static_cast<long long>(step));
      checkpoint(step);
      result.interrupted = true;
      return result;
    }
    std::vector<size_t> idx = sampler_.next_batch();
    model_.zero_grad();
    const StepOutcome out = step_fn(idx);
    const float lr = lr_at(step, o_.adamw.lr, o_.warmup, o_.steps, o_.min_lr_frac);
    float norm = 0;
    bool skipped = !std::isfinite(out.loss);
    if (!skipped) {
      norm = opt_.clip_and_step(lr);
      skipped = !std::isfinite(norm);
    }
    if (skipped) {
      std::fprintf(stderr, "step %lld: non-finite %s (loss %g, grad norm %g)%s\n",
                   static_cast<long long>(step), std::isfinite(out.loss) ? "gradient norm" : "loss",
                   out.loss, norm,
                   o_.nan_policy == NanPolicy::Stop ? ": stopping" : ": step skipped");
      HH_CHECK(o_.nan_policy != NanPolicy::Stop, "non-finite loss or gradient at step ", step,
               "; the last checkpoint is intact");
      opt_.step += 1;  // keep the schedule moving; the weights are unchanged
    }
    seen_ += out.items;
    items_this_run += out.items;
    result.losses.push_back(out.loss);
    for (const auto& m : out.metrics) result.metrics[m.first].push_back(m.second);
    const int64_t done = step + 1;
    progress.update(done, items_this_run);
    result.items_per_second = progress.items_per_second();
    if (o_.log_every > 0 &&
        (done % o_.log_every == 0 || done == o_.steps || done == start_step + 1)) {
      Json rec;
      rec["step"] = done;
      rec["loss"] = out.loss;
      std::string extras;
      for (const auto& m : out.metrics) {
        rec[m.first] = m.second;
        char buf[64];
        std::snprintf(buf, sizeof buf, " | %s %.3f", m.first.c_str(), m.second);
        extras += buf;
      }
      rec["lr"] = lr;
      rec["grad_norm"] = norm;
      rec[setup_.counter] = seen_;
      rec[setup_.unit + "_per_s"] = progress.items_per_second();
      rec["skipped"] = skipped;
      run_.metrics().log(rec);
      if (!quiet_)
        std::fprintf(stderr, "%s | loss %.4f%s | lr %.2e | norm %.3f\n",
                     progress.line(setup_.unit.c_str()).c_str(), out.loss, extras.c_str(), lr,
                     norm);
    }
    check_sync(o_.parallel, model_, done);
    if (evaluate && o_.eval_every > 0 && done % o_.eval_every == 0 && done != o_.steps)
      evaluate(done, false);
    if (o_.ckpt_every > 0 && done % o_.ckpt_every == 0 && done != o_.steps) checkpoint(done);
  }
  result.steps_done = o_.steps - start_step;
  if (evaluate) evaluate(o_.steps, true);
  checkpoint(o_.steps);
  run_.save_final(model_, metadata(o_.steps));
  return result;
}

}  // namespace hh
