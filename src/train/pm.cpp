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
#include "train/loop.h"

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

namespace {

// Every pair has two non-empty sequences (checked here, the error can name the file).
void check_pm_pairs(const PmDataset& data, const std::string& path) {
  for (size_t i = 0; i < data.size(); ++i)
    HH_CHECK(!data.chosen(i).empty() && !data.rejected(i).empty(), path, ": pair ", i, ": the ",
             data.chosen(i).empty() ? "chosen" : "rejected", " sequence is empty");
}

}  // namespace

PmTrainResult train_pm(Backend& backend, const PmTrainOptions& o) {
  PmDataset train = PmDataset::load(o.train_path);
  HH_CHECK(train.size() > 0, o.train_path,
           ": the dataset has no pairs (hh-prepare pm skipped "
           "them all, or it is not a pm dataset)");
  check_pm_pairs(train, o.train_path);
  std::unique_ptr<PmDataset> dev;
  if (!o.dev_path.empty()) {
    dev = std::make_unique<PmDataset>(PmDataset::load(o.dev_path));
    HH_CHECK(dev->size() > 0, o.dev_path, ": the dev dataset has no pairs");
    check_pm_pairs(*dev, o.dev_path);
    check_same_tokenizer(dev->raw(), o.dev_path, train.raw(), o.train_path);
  }
  LoopSetup setup;
  setup.program = "hh-pm";
  setup.stage = "pm";
  // An LM checkpoint gives the trunk (the head stays random); a PM or our resume, all of it.
  setup.scalar_head = true;
  setup.seqs_per_item = 2;
  setup.raw = &train.raw();
  setup.n_items = train.size();
  setup.items_name = "train pairs";
  setup.dev_items = dev ? dev->size() : 0;
  setup.unit = "pairs";
  setup.counter = "pairs";
  TrainLoop loop(backend, o, setup);
  GPT& model = loop.model();
  Communicator& comm = loop.comm();

  PmTrainResult result;
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
    loop.run_dir().metrics().log(rec);
    if (final_eval && comm.is_root()) {
      Json j = result.last_dev.to_json();
      j["step"] = step;
      j["data"] = o.dev_path;
      write_file_atomic(loop.run_dir().file("eval.json"), j.dump() + "\n");
    }
    if (!loop.quiet())
      std::fprintf(stderr, "step %lld | val_loss %.4f | val_acc %.4f | val_margin %.4f\n",
                   static_cast<long long>(step), result.last_dev.loss, result.last_dev.accuracy,
                   result.last_dev.mean_margin);
  };

  // Micro-batch i of a step of P pairs (over all ranks) contributes pᵢ/P of its mean loss.
  std::vector<float> cho, rej, d_cho, d_rej, dscores;
  auto step = [&](const std::vector<size_t>& idx) {
    const double P = static_cast<double>(idx.size()) * comm.world();
    double loss_sum = 0, correct = 0, margin_sum = 0;
    const auto micros = split(idx, loop.micro_batch());
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
      if (&micro == &micros.back()) loop.arm_overlap();
      model.backward_scores(dscores);
    }
    loop.finish_gradients();
    std::vector<double> sums = {loss_sum, correct, margin_sum};
    all_sum(comm, &sums);
    StepOutcome out;
    out.loss = static_cast<float>(sums[0] / P);
    out.items = P;
    out.metrics = {{"accuracy", sums[1] / P}, {"margin", sums[2] / P}};
    return out;
  };

  LoopResult r = loop.run(step, evaluate);
  result.steps_done = r.steps_done;
  result.interrupted = r.interrupted;
  result.train_losses = r.losses;
  for (double a : r.metrics["accuracy"]) result.train_accuracies.push_back(static_cast<float>(a));
  result.pairs_per_second = r.items_per_second;
  return result;
}

}  // namespace hh
