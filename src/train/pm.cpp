#include "train/pm.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>

#include "core/error.h"
#include "core/fileio.h"
#include "core/safetensors.h"
#include "dist/grad_sync.h"
#include "model/checkpoint.h"
#include "tokenizer/tokenizer.h"

namespace hh {

namespace {

// softplus(x) = log(1 + eˣ) = max(x, 0) + log1p(e^−|x|): no overflow for large |x|.
double softplus(double x) { return std::max(x, 0.0) + std::log1p(std::exp(-std::fabs(x))); }

// sigmoid(x) = 1 / (1 + e^−x), evaluated on the side where the exponential is ≤ 1.
double sigmoid(double x) {
  if (x >= 0) return 1.0 / (1.0 + std::exp(-x));
  double e = std::exp(x);
  return e / (1.0 + e);
}

void check_pair_scores(const std::vector<float>& r_chosen, const std::vector<float>& r_rejected) {
  HH_CHECK(!r_chosen.empty(), "pairwise loss: no pairs");
  HH_CHECK(r_chosen.size() == r_rejected.size(), "pairwise loss: ", r_chosen.size(),
           " chosen scores but ", r_rejected.size(), " rejected scores");
}

// Splits a batch of indices into micro-batches of at most `micro` items.
std::vector<std::vector<size_t>> split(const std::vector<size_t>& idx, int64_t micro) {
  std::vector<std::vector<size_t>> out;
  for (size_t i = 0; i < idx.size(); i += static_cast<size_t>(micro))
    out.emplace_back(idx.begin() + i, idx.begin() + std::min(idx.size(), i + micro));
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------------------
// The pairwise loss

// loss = (1/n) Σᵢ softplus(r_rej[i] − r_cho[i])
double pairwise_loss_forward(const std::vector<float>& r_chosen,
                             const std::vector<float>& r_rejected) {
  check_pair_scores(r_chosen, r_rejected);
  double sum = 0;
  for (size_t i = 0; i < r_chosen.size(); ++i)
    sum += softplus(static_cast<double>(r_rejected[i]) - r_chosen[i]);
  return sum / static_cast<double>(r_chosen.size());
}

// d softplus(x)/dx = sigmoid(x) with x = r_rej − r_cho: dx/dr_cho = −1, dx/dr_rej = +1.
void pairwise_loss_backward(const std::vector<float>& r_chosen,
                            const std::vector<float>& r_rejected, float loss_scale,
                            std::vector<float>* d_chosen, std::vector<float>* d_rejected) {
  check_pair_scores(r_chosen, r_rejected);
  const size_t n = r_chosen.size();
  d_chosen->resize(n);
  d_rejected->resize(n);
  const double scale = static_cast<double>(loss_scale) / static_cast<double>(n);
  for (size_t i = 0; i < n; ++i) {
    double s = sigmoid(static_cast<double>(r_rejected[i]) - r_chosen[i]);
    (*d_chosen)[i] = static_cast<float>(-scale * s);
    (*d_rejected)[i] = static_cast<float>(scale * s);
  }
}

// ---------------------------------------------------------------------------------------
// Batches

// Rows [0, P): chosen; [P, 2P): rejected; each keeps its last `seq` tokens.
PmBatch make_pm_batch(const PmDataset& data, const std::vector<size_t>& indices, int64_t seq) {
  HH_CHECK(!indices.empty(), "make_pm_batch: empty batch");
  HH_CHECK(seq >= 1, "make_pm_batch: seq must be >= 1");
  const size_t P = indices.size();
  std::vector<TokenSpan> rows;
  rows.reserve(2 * P);
  for (size_t i : indices) {
    HH_CHECK(i < data.size(), "make_pm_batch: pair ", i, " is outside the dataset (", data.size(),
             " pairs)");
    rows.push_back(data.chosen(i));
  }
  for (size_t i : indices) rows.push_back(data.rejected(i));

  PmBatch out;
  Batch& b = out.batch;
  b.B = static_cast<int>(rows.size());
  int T = 1;
  for (size_t r = 0; r < rows.size(); ++r) {
    HH_CHECK(!rows[r].empty(), "pair ", indices[r % P], ": the ", r < P ? "chosen" : "rejected",
             " sequence is empty");
    T = std::max<int>(T, static_cast<int>(std::min<int64_t>(rows[r].size(), seq)));
  }
  b.T = T;
  b.tokens.assign(static_cast<size_t>(b.B) * T, 0);
  b.lengths.resize(b.B);
  out.score_rows.resize(b.B);
  for (int r = 0; r < b.B; ++r) {
    TokenSpan ids = rows[r];
    size_t len = std::min<size_t>(ids.size(), static_cast<size_t>(seq));
    size_t start = ids.size() - len;  // keep the end
    b.lengths[r] = static_cast<int32_t>(len);
    std::copy(ids.begin() + start, ids.end(), b.tokens.begin() + static_cast<size_t>(r) * T);
    out.score_rows[r] = r * T + static_cast<int32_t>(len) - 1;
    out.tokens += static_cast<int64_t>(len);
  }
  return out;
}

std::vector<int32_t> pm_sequence(std::string_view dialogue, const TextEncoder& encoder,
                                 size_t max_len) {
  HH_CHECK(encoder.end_of_context_id >= 0, "the tokenizer has no ", kEndOfContext,
           " token, where the preference model reads its score");
  HH_CHECK(max_len >= 2, "pm_sequence: max_len must be >= 2, got ", max_len);
  std::vector<int32_t> ids = tokenize_dialogue(dialogue, encoder).ids;
  truncate_left(&ids, max_len - 1);
  ids.push_back(encoder.end_of_context_id);
  return ids;
}

void score_pairs(GPT& model, const PmDataset& data, const std::vector<size_t>& indices, int64_t seq,
                 std::vector<float>* r_chosen, std::vector<float>* r_rejected) {
  PmBatch pb = make_pm_batch(data, indices, seq);
  std::vector<float> scores = model.forward_scores(pb.batch, pb.score_rows);
  const size_t P = indices.size();
  r_chosen->assign(scores.begin(), scores.begin() + P);
  r_rejected->assign(scores.begin() + P, scores.end());
}

// ---------------------------------------------------------------------------------------
// Evaluation

// Each pair adds (p, 1) and (1 − p, 0) with p = sigmoid(margin); bin = ⌊10·q⌋ (q = 1 in
// the last bin).
Calibration calibration_table(const std::vector<double>& margins) {
  Calibration c;
  std::array<double, 10> sum_pred{}, sum_won{};
  for (int k = 0; k < 10; ++k) {
    c.bins[k].lo = k / 10.0;
    c.bins[k].hi = (k + 1) / 10.0;
  }
  auto add = [&](double q, double won) {
    int k = std::min(9, std::max(0, static_cast<int>(std::floor(q * 10.0))));
    c.bins[k].count += 1;
    sum_pred[k] += q;
    sum_won[k] += won;
  };
  for (double m : margins) {
    double p = sigmoid(m);
    add(p, 1.0);
    add(1.0 - p, 0.0);
  }
  int64_t total = 0;
  for (const auto& b : c.bins) total += b.count;
  for (int k = 0; k < 10; ++k) {
    CalibrationBin& b = c.bins[k];
    if (b.count == 0) continue;
    b.mean_predicted = sum_pred[k] / b.count;
    b.observed = sum_won[k] / b.count;
    c.ece += static_cast<double>(b.count) / total * std::fabs(b.observed - b.mean_predicted);
  }
  return c;
}

Json PmEvalResult::to_json() const {
  Json j;
  j["pairs"] = pairs;
  j["loss"] = loss;
  j["accuracy"] = accuracy;
  j["mean_margin"] = mean_margin;
  j["ece"] = calibration.ece;
  Json bins = Json::array();
  for (const CalibrationBin& b : calibration.bins) {
    Json jb;
    jb["lo"] = b.lo;
    jb["hi"] = b.hi;
    jb["count"] = b.count;
    jb["mean_predicted"] = b.mean_predicted;
    jb["observed"] = b.observed;
    bins.push_back(jb);
  }
  j["calibration"] = bins;
  return j;
}

std::string PmEvalResult::to_text() const {
  std::string s = str_cat("pairs        ", pairs, "\n");
  char line[160];
  std::snprintf(line, sizeof line, "loss         %.4f\naccuracy     %.4f\nmean margin  %.4f\n",
                loss, accuracy, mean_margin);
  s += line;
  s += "calibration  (each pair counted as (p, chosen won) and (1-p, rejected won); "
       "p = sigmoid(r_chosen - r_rejected))\n";
  s += "  bin          count  mean_predicted  observed\n";
  for (const CalibrationBin& b : calibration.bins) {
    if (b.count == 0) {
      std::snprintf(line, sizeof line, "  [%.1f, %.1f)  %7lld  %14s  %8s\n", b.lo, b.hi, 0LL, "-",
                    "-");
    } else {
      std::snprintf(line, sizeof line, "  [%.1f, %.1f)  %7lld  %14.4f  %8.4f\n", b.lo, b.hi,
                    static_cast<long long>(b.count), b.mean_predicted, b.observed);
    }
    s += line;
  }
  std::snprintf(line, sizeof line, "ECE          %.4f\n", calibration.ece);
  s += line;
  return s;
}

PmEvalResult evaluate_pm(GPT& model, const PmDataset& data, int64_t seq, int64_t batch,
                         int64_t max_pairs, Communicator& comm) {
  HH_CHECK(batch > 0, "evaluate_pm: batch must be > 0");
  size_t n = data.size();
  if (max_pairs > 0) n = std::min<size_t>(n, static_cast<size_t>(max_pairs));
  HH_CHECK(n > 0, "evaluate_pm: the dataset has no pairs");
  PmEvalResult r;
  r.pairs = static_cast<int64_t>(n);
  // Batch k is scored by rank k mod world; the margins (0 where another rank scores the
  // pair) are summed over ranks, so every rank ends with all of them.
  r.margins.assign(n, 0.0);
  const size_t B = static_cast<size_t>(batch), W = static_cast<size_t>(comm.world());
  std::vector<float> cho, rej;
  for (size_t i = 0; i < n; i += B) {
    if ((i / B) % W != static_cast<size_t>(comm.rank())) continue;
    std::vector<size_t> idx;
    for (size_t j = i; j < std::min(n, i + B); ++j) idx.push_back(j);
    score_pairs(model, data, idx, seq, &cho, &rej);
    for (size_t k = 0; k < idx.size(); ++k)
      r.margins[idx[k]] = static_cast<double>(cho[k]) - rej[k];
  }
  all_sum(comm, &r.margins);
  // softplus(r_rej − r_cho) = softplus(−margin): the loss follows from the margins.
  double loss_sum = 0, correct = 0, margin_sum = 0;
  for (double m : r.margins) {
    loss_sum += softplus(-m);
    margin_sum += m;
    correct += m > 0 ? 1.0 : (m == 0 ? 0.5 : 0.0);
  }
  r.loss = loss_sum / n;
  r.accuracy = correct / n;
  r.mean_margin = margin_sum / n;
  r.calibration = calibration_table(r.margins);
  return r;
}

double shorter_response_accuracy(const PmDataset& data, int64_t max_pairs) {
  size_t n = data.size();
  if (max_pairs > 0) n = std::min<size_t>(n, static_cast<size_t>(max_pairs));
  HH_CHECK(n > 0, "shorter_response_accuracy: the dataset has no pairs");
  double correct = 0;
  for (size_t i = 0; i < n; ++i) {
    size_t c = data.chosen(i).size(), r = data.rejected(i).size();
    correct += c < r ? 1.0 : (c == r ? 0.5 : 0.0);
  }
  return correct / n;
}

// ---------------------------------------------------------------------------------------
// Training

PmTrainResult train_pm(Backend& backend, const PmTrainOptions& o) {
  HH_CHECK(o.steps > 0, "--steps must be > 0");
  HH_CHECK(o.batch > 0 && o.micro_batch > 0, "--batch and --micro-batch must be > 0");
  HH_CHECK(o.seq >= 2, "--seq must be >= 2");

  PmDataset train = PmDataset::load(o.train_path);
  HH_CHECK(train.size() > 0, o.train_path,
           ": the dataset has no pairs (hh-prepare pm skipped "
           "them all, or it is not a pm dataset)");
  const TokenDataset& raw = train.raw();
  std::unique_ptr<PmDataset> dev;
  if (!o.dev_path.empty()) {
    dev = std::make_unique<PmDataset>(PmDataset::load(o.dev_path));
    HH_CHECK(dev->size() > 0, o.dev_path, ": the dev dataset has no pairs");
    check_same_tokenizer(dev->raw(), o.dev_path, raw, o.train_path);
  }
  const std::string fingerprint = std::to_string(raw.tokenizer_fingerprint);

  // Data parallelism as in train_lm: each rank takes batch/world pairs of every step, and
  // scales its loss by the step's global pair count.
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
  // An LM checkpoint gives the trunk (the head stays random); a PM or our resume, all of it.
  GPT model = build_model(backend, start, /*scalar_head=*/true, o.seed);

  AdamW opt(model, o.adamw);
  BatchSampler sampler(train.size(), static_cast<size_t>(rank_batch), o.seed, comm.rank(),
                       comm.world());
  TrainState state;
  double pairs_seen = 0;
  if (!resume_dir.empty()) {
    load_optimizer(resume_dir + "/optim.safetensors", opt, &state);
    restore_cursor(sampler, state, resume_dir);
    pairs_seen = state.extra.count("pairs_seen") ? state.extra["pairs_seen"] : 0;
  }
  sync_replicas(comm, model, opt);
  GradientSync grad_sync(comm, model);
  run.write_config(o.config_json);
  const int64_t start_step = opt.step;
  if (!quiet) {
    std::fprintf(stderr, "hh-pm: %s | %zu params | %zu train pairs%s | %s from step %lld%s\n",
                 cfg.describe().c_str(), model.num_parameters(), train.size(),
                 dev ? (", " + std::to_string(dev->size()) + " dev").c_str() : "",
                 resume_dir.empty() ? "starting" : "resuming", static_cast<long long>(start_step),
                 describe_ranks(comm).c_str());
  }

  auto metadata = [&](int64_t step) {
    return std::map<std::string, std::string>{
        {"stage", "pm"}, {"step", std::to_string(step)}, {"tokenizer", fingerprint}};
  };
  auto checkpoint = [&](int64_t step) {
    state.data_cursor = saved_cursor(sampler);
    state.extra["pairs_seen"] = pairs_seen;
    run.save_checkpoint(step, model, opt, state, metadata(step), o.keep_ckpts);
  };

  PmTrainResult result;
  Progress progress(o.steps);
  progress.start(start_step, 0);
  double pairs_this_run = 0;
  auto evaluate = [&](int64_t step, bool final_eval) {
    if (!dev) return;
    result.last_dev = evaluate_pm(model, *dev, o.seq, o.micro_batch, o.eval_pairs, comm);
    result.has_dev = true;
    Json rec;
    rec["step"] = step;
    rec["val_loss"] = result.last_dev.loss;
    rec["val_accuracy"] = result.last_dev.accuracy;
    rec["val_margin"] = result.last_dev.mean_margin;
    rec["val_ece"] = result.last_dev.calibration.ece;
    run.metrics().log(rec);
    if (final_eval && comm.is_root()) {
      Json j = result.last_dev.to_json();
      j["step"] = step;
      j["data"] = o.dev_path;
      write_file_atomic(run.file("eval.json"), j.dump() + "\n");
    }
    if (!quiet)
      std::fprintf(stderr, "step %lld | val_loss %.4f | val_acc %.4f | val_margin %.4f\n",
                   static_cast<long long>(step), result.last_dev.loss, result.last_dev.accuracy,
                   result.last_dev.mean_margin);
  };

  std::vector<float> cho, rej, d_cho, d_rej, dscores;
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
    const double P = static_cast<double>(idx.size()) * comm.world();  // the step's pairs
    double loss_sum = 0, correct = 0, margin_sum = 0;
    model.zero_grad();
    const auto micros = split(idx, micro_batch);
    for (const auto& micro : micros) {
      PmBatch pb = make_pm_batch(train, micro, o.seq);
      std::vector<float> scores = model.forward_scores(pb.batch, pb.score_rows);
      const size_t p = micro.size();
      cho.assign(scores.begin(), scores.begin() + p);
      rej.assign(scores.begin() + p, scores.end());
      loss_sum += pairwise_loss_forward(cho, rej) * static_cast<double>(p);
      for (size_t k = 0; k < p; ++k) {
        double m = static_cast<double>(cho[k]) - rej[k];
        margin_sum += m;
        correct += m > 0 ? 1.0 : (m == 0 ? 0.5 : 0.0);
      }
      pairwise_loss_backward(cho, rej, static_cast<float>(static_cast<double>(p) / P), &d_cho,
                             &d_rej);
      dscores = d_cho;
      dscores.insert(dscores.end(), d_rej.begin(), d_rej.end());
      if (&micro == &micros.back()) grad_sync.arm();  // overlap the last backward with NCCL
      model.backward_scores(dscores);
    }
    grad_sync.finish();
    std::vector<double> sums = {loss_sum, correct, margin_sum};
    all_sum(comm, &sums);
    loss_sum = sums[0], correct = sums[1], margin_sum = sums[2];
    float loss = static_cast<float>(loss_sum / P);
    float accuracy = static_cast<float>(correct / P);
    float margin = static_cast<float>(margin_sum / P);
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
    pairs_seen += P;
    pairs_this_run += P;
    result.train_losses.push_back(loss);
    result.train_accuracies.push_back(accuracy);
    const int64_t done = step + 1;
    progress.update(done, pairs_this_run);
    result.pairs_per_second = progress.items_per_second();
    if (o.log_every > 0 && (done % o.log_every == 0 || done == o.steps || done == start_step + 1)) {
      Json rec;
      rec["step"] = done;
      rec["loss"] = loss;
      rec["accuracy"] = accuracy;
      rec["margin"] = margin;
      rec["lr"] = lr;
      rec["grad_norm"] = norm;
      rec["pairs"] = pairs_seen;
      rec["pairs_per_s"] = progress.items_per_second();
      rec["skipped"] = skipped;
      run.metrics().log(rec);
      if (!quiet)
        std::fprintf(stderr, "%s | loss %.4f | acc %.3f | margin %.3f | lr %.2e | norm %.3f\n",
                     progress.line("pairs").c_str(), loss, accuracy, margin, lr, norm);
    }
    check_sync(o.parallel, model, done);
    if (o.eval_every > 0 && done % o.eval_every == 0 && done != o.steps) evaluate(done, false);
    if (o.ckpt_every > 0 && done % o.ckpt_every == 0 && done != o.steps) checkpoint(done);
  }
  result.steps_done = o.steps - start_step;
  evaluate(o.steps, true);
  checkpoint(o.steps);
  run.save_final(model, metadata(o.steps));
  return result;
}

}  // namespace hh
