// hh-pm: the preference model. Three subcommands:
//   hh-pm train --train train.pm.bin --dev dev.pm.bin --init runs/sft/model.safetensors
//   hh-pm eval  --model runs/pm/model.safetensors --data dev.pm.bin
//   hh-pm score --model runs/pm/model.safetensors --tokenizer tok.bin --input d.jsonl
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/fileio.h"
#include "core/flags.h"
#include "core/json.h"
#include "data/dataset.h"
#include "data/hh_rlhf.h"
#include "model/checkpoint.h"
#include "tokenizer/tokenizer.h"
#include "train/pm.h"
#include "train/run.h"

namespace {

const char* kUsage =
    "usage: hh-pm train|eval|score [flags]   (hh-pm <subcommand> --help for its flags)\n"
    "  train  train a preference model on pairs (hh-prepare pm) with the loss\n"
    "         log(1 + exp(r_rejected - r_chosen))\n"
    "  eval   loss, accuracy, mean margin and a calibration table on a pm dataset;\n"
    "         the last line is one JSON object\n"
    "  score  JSONL dialogues in ({\"text\": ...} or {\"chosen\": ..., \"rejected\": ...}),\n"
    "         the same objects with score fields out\n";

std::vector<std::string> rest_of(int argc, char** argv) {
  return std::vector<std::string>(argv + 2, argv + argc);
}

// The model's tokenizer fingerprint must match the dataset's / tokenizer's when recorded.
void check_tokenizer(const std::map<std::string, std::string>& meta, uint64_t fingerprint,
                     const std::string& model_path, const std::string& other) {
  auto it = meta.find("tokenizer");
  HH_CHECK(it == meta.end() || it->second == std::to_string(fingerprint), model_path,
           " was trained with another tokenizer than ", other, " (fingerprint ", it->second, " vs ",
           fingerprint, ")");
}

hh::GPT load_pm(const std::string& path, hh::Backend& backend,
                std::map<std::string, std::string>* meta) {
  hh::GPT model = hh::load_model(path, backend, meta);
  hh::check_preference_model(model, *meta, path);
  return model;
}

int64_t context_from_flag(const hh::Flags& f, const hh::GPT& model) {
  int64_t seq = f.get_int("seq");
  HH_CHECK(seq >= 0, "--seq must be >= 0");
  if (seq == 0) seq = model.config().max_seq_len;
  HH_CHECK(seq >= 2 && seq <= model.config().max_seq_len, "--seq=", seq,
           " must be in [2, the model's context ", model.config().max_seq_len, "]");
  return seq;
}

int run_train(int argc, char** argv) {
  hh::Flags f("hh-pm train",
              "Train a preference model: a GPT with a scalar head read at the final\n"
              "<|endofcontext|> token, loss log(1 + exp(r_rejected - r_chosen)). --batch and\n"
              "--micro-batch count PAIRS (each pair is two sequences in the same forward).\n"
              "Writes checkpoints, metrics.jsonl, eval.json and model.safetensors to --run-dir;\n"
              "--resume continues exactly.");
  f.add_string("train", "", "training pairs (hh-prepare pm)");
  f.add_string("dev", "", "held-out pairs for val_loss/val_accuracy/val_margin (optional)");
  f.add_string("init", "",
               "start from this checkpoint: an hh-sft LM (its trunk; the head starts random), a "
               "PM, or Hugging Face GPT-2 safetensors");
  f.add_int("seq", 256, "maximum tokens per sequence (longer ones keep their end)");
  f.add_int("micro-batch", 0, "pairs per forward/backward (0: = --batch; else accumulate)");
  f.add_int("eval-pairs", 0, "dev pairs per evaluation (0: the whole dev set)");
  hh::add_device_flag(f);
  hh::add_dist_flags(f);
  hh::add_model_flags(f, "tiny");
  hh::add_optimizer_flags(f, 3e-4);
  hh::add_run_flags(f, "runs/pm", 200, 16,
                    {"optimizer steps", "preference pairs per optimizer step"});
  f.parse(rest_of(argc, argv));

  HH_CHECK(!f.get_string("train").empty(), "--train is required (see hh-pm train --help)");
  hh::PmTrainOptions o;
  o.train_path = f.get_string("train");
  o.dev_path = f.get_string("dev");
  o.init = f.get_string("init");
  hh::loop_options_from_flags(f, &o);
  o.eval_pairs = f.get_int("eval-pairs");
  HH_CHECK(o.eval_pairs >= 0, "--eval-pairs must be >= 0");

  // The vocabulary comes from the dataset; the architecture from the flags (or --init).
  hh::PmDataset probe = hh::PmDataset::load(o.train_path);
  o.model = hh::model_config_from_flags(f, static_cast<int>(probe.raw().vocab_size));
  o.model_given = hh::model_flags_given(f);

  hh::ProcessGroup group = hh::process_group_from_flags(f);
  o.parallel = group.parallelism();
  hh::install_stop_handler();
  hh::PmTrainResult r = hh::train_pm(*group.backend, o);
  if (r.interrupted) return 130;
  if (!group.comm->is_root()) return 0;
  hh::Json summary;
  summary["steps"] = r.steps_done;
  summary["final_loss"] = r.train_losses.empty() ? 0.0 : r.train_losses.back();
  summary["pairs_per_s"] = r.pairs_per_second;
  if (r.has_dev) {
    summary["val_loss"] = r.last_dev.loss;
    summary["val_accuracy"] = r.last_dev.accuracy;
    summary["val_margin"] = r.last_dev.mean_margin;
    summary["val_ece"] = r.last_dev.calibration.ece;
  }
  summary["model"] = o.run_dir + "/model.safetensors";
  std::printf("%s\n", summary.dump().c_str());
  return 0;
}

int run_eval(int argc, char** argv) {
  hh::Flags f("hh-pm eval",
              "Evaluate a preference model on pairs: loss, accuracy, mean margin r_chosen -\n"
              "r_rejected, the shorter-response baseline, and a calibration table of\n"
              "p = sigmoid(r_chosen - r_rejected) in 10 bins (each pair counted as (p, chosen\n"
              "won) and (1-p, rejected won)). The last line is one JSON object.");
  f.add_string("model", "", "preference model (hh-pm train's model.safetensors)");
  f.add_string("data", "", "pm dataset (hh-prepare pm)");
  f.add_int("seq", 0, "maximum tokens per sequence (0: the model's context)");
  f.add_int("batch", 16, "pairs per forward pass");
  f.add_int("max-pairs", 0, "evaluate only the first N pairs (0: all)");
  f.add_string("out", "", "also write the JSON object to this file (for plot_calibration.py)");
  hh::add_device_flag(f);
  f.parse(rest_of(argc, argv));
  HH_CHECK(!f.get_string("model").empty(), "--model is required (see hh-pm eval --help)");
  HH_CHECK(!f.get_string("data").empty(), "--data is required (see hh-pm eval --help)");
  HH_CHECK(f.get_int("batch") > 0, "--batch must be > 0");
  HH_CHECK(f.get_int("max-pairs") >= 0, "--max-pairs must be >= 0");
  const std::string model_path = f.get_string("model"), data_path = f.get_string("data");
  hh::check_output_path("--out", f.get_string("out"),
                        {{"--model", model_path}, {"--data", data_path}});

  auto backend = hh::backend_from_flags(f);
  std::map<std::string, std::string> meta;
  hh::GPT model = load_pm(model_path, *backend, &meta);
  hh::PmDataset data = hh::PmDataset::load(data_path);
  HH_CHECK(data.size() > 0, data_path, ": the dataset has no pairs");
  check_tokenizer(meta, data.raw().tokenizer_fingerprint, model_path, data_path);
  HH_CHECK(static_cast<int>(data.raw().vocab_size) == model.config().vocab_size, data_path,
           ": vocabulary ", data.raw().vocab_size, " differs from the model's ",
           model.config().vocab_size);
  const int64_t seq = context_from_flag(f, model);

  hh::PmEvalResult r =
      hh::evaluate_pm(model, data, seq, f.get_int("batch"), f.get_int("max-pairs"));
  double baseline = hh::shorter_response_accuracy(data, f.get_int("max-pairs"));
  std::printf("%s", r.to_text().c_str());
  std::printf("baseline     %.4f  (prefer the shorter response)\n", baseline);
  hh::Json j = r.to_json();
  j["baseline_shorter"] = baseline;
  j["model"] = model_path;
  j["data"] = data_path;
  std::string line = j.dump();
  if (!f.get_string("out").empty()) hh::write_file_atomic(f.get_string("out"), line + "\n");
  std::printf("%s\n", line.c_str());
  return 0;
}

// One input line waiting for its scores: the object and its sequences' positions in the
// pending batch (1 for "text", 2 for "chosen"/"rejected").
struct PendingLine {
  hh::Json object;
  bool pair = false;
  size_t first = 0;
};

int run_score(int argc, char** argv) {
  hh::Flags f(
      "hh-pm score",
      "Score dialogues with a preference model. Each input line is a JSON object with\n"
      "\"text\" (an HH-format dialogue: \"\\n\\nHuman: ...\\n\\nAssistant: ...\"), which gets\n"
      "a \"score\" field, or with \"chosen\" and \"rejected\" (an HH-RLHF line), which get\n"
      "\"score_chosen\" and \"score_rejected\". Texts are tokenized as hh-prepare does,\n"
      "left-truncated to --seq - 1 tokens, and <|endofcontext|> is appended.");
  f.add_string("model", "", "preference model (hh-pm train's model.safetensors)");
  f.add_string("tokenizer", "", "the tokenizer the model was trained with (hh-bpe)");
  f.add_string("input", "", "JSONL (or .jsonl.gz) of dialogues");
  f.add_string("output", "", "output JSONL (default: stdout)");
  f.add_int("seq", 0, "maximum tokens per sequence (0: the model's context)");
  f.add_int("batch", 16, "sequences per forward pass");
  hh::add_device_flag(f);
  f.parse(rest_of(argc, argv));
  for (const char* name : {"model", "tokenizer", "input"})
    HH_CHECK(!f.get_string(name).empty(), "--", name, " is required (see hh-pm score --help)");
  const int64_t batch = f.get_int("batch");
  HH_CHECK(batch > 0, "--batch must be > 0");
  const std::string model_path = f.get_string("model"), output = f.get_string("output");
  hh::check_output_path("--output", output,
                        {{"--input", f.get_string("input")},
                         {"--model", model_path},
                         {"--tokenizer", f.get_string("tokenizer")}});

  auto backend = hh::backend_from_flags(f);
  std::map<std::string, std::string> meta;
  hh::GPT model = load_pm(model_path, *backend, &meta);
  hh::Tokenizer tokenizer = hh::Tokenizer::load(f.get_string("tokenizer"));
  check_tokenizer(meta, tokenizer.fingerprint(), model_path, f.get_string("tokenizer"));
  HH_CHECK(tokenizer.vocab_size() == model.config().vocab_size, f.get_string("tokenizer"),
           ": vocabulary ", tokenizer.vocab_size(), " differs from the model's ",
           model.config().vocab_size);
  hh::TextEncoder encoder = hh::TextEncoder::from(tokenizer);
  HH_CHECK(encoder.end_of_context_id >= 0, f.get_string("tokenizer"), " has no ", hh::kEndOfContext,
           " token, where the preference model reads its score");
  const int64_t seq = context_from_flag(f, model);

  // --output is written once, atomically, when every line is scored (a bad line leaves no
  // half file); stdout gets each batch's lines as they come.
  std::string scored;

  // Sequences accumulate until `batch` of them are pending; then one forward pass scores
  // them and their lines are written in input order.
  std::vector<PendingLine> pending;
  std::vector<std::vector<int32_t>> sequences;
  int64_t lines_out = 0;
  auto flush = [&] {
    if (sequences.empty()) return;
    hh::Batch b;
    b.B = static_cast<int>(sequences.size());
    b.T = 1;
    for (const auto& s : sequences) b.T = std::max<int>(b.T, static_cast<int>(s.size()));
    b.tokens.assign(static_cast<size_t>(b.B) * b.T, 0);
    b.lengths.resize(b.B);
    std::vector<int32_t> rows(b.B);
    for (int r = 0; r < b.B; ++r) {
      std::copy(sequences[r].begin(), sequences[r].end(), b.tokens.begin() + r * b.T);
      b.lengths[r] = static_cast<int32_t>(sequences[r].size());
      rows[r] = r * b.T + b.lengths[r] - 1;
    }
    std::vector<float> scores = model.forward_scores(b, rows);
    for (PendingLine& p : pending) {
      if (p.pair) {
        p.object["score_chosen"] = static_cast<double>(scores[p.first]);
        p.object["score_rejected"] = static_cast<double>(scores[p.first + 1]);
      } else {
        p.object["score"] = static_cast<double>(scores[p.first]);
      }
      const std::string text = p.object.dump() + "\n";
      if (output.empty())
        HH_CHECK(std::fputs(text.c_str(), stdout) >= 0, "writing standard output failed");
      else
        scored += text;
      ++lines_out;
    }
    if (output.empty()) HH_CHECK(std::fflush(stdout) == 0, "writing standard output failed");
    pending.clear();
    sequences.clear();
  };
  auto encode = [&](const std::string& text) {
    return hh::pm_sequence(text, encoder, static_cast<size_t>(seq));
  };

  const std::string input = f.get_string("input");
  hh::LineReader reader(input);
  std::string line;
  while (reader.next(&line)) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = input + ":" + std::to_string(reader.line_number());
    PendingLine p;
    p.object = hh::Json::parse(line, where);
    HH_CHECK(p.object.is_object(), where, ": expected a JSON object");
    const hh::Json* text = p.object.find("text");
    const hh::Json* chosen = p.object.find("chosen");
    const hh::Json* rejected = p.object.find("rejected");
    p.first = sequences.size();
    if (text) {
      HH_CHECK(text->is_string(), where, ": \"text\" is not a string");
      sequences.push_back(encode(text->as_string()));
    } else if (chosen && rejected) {
      HH_CHECK(chosen->is_string() && rejected->is_string(), where,
               ": \"chosen\" and \"rejected\" must be strings");
      p.pair = true;
      sequences.push_back(encode(chosen->as_string()));
      sequences.push_back(encode(rejected->as_string()));
    } else {
      HH_FAIL(where, ": expected a \"text\" field, or \"chosen\" and \"rejected\"");
    }
    pending.push_back(std::move(p));
    if (static_cast<int64_t>(sequences.size()) >= batch) flush();
  }
  flush();
  if (!output.empty()) hh::write_file_atomic(output, scored);
  std::fprintf(stderr, "hh-pm score: %lld lines scored\n", static_cast<long long>(lines_out));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return hh::run_main("hh-pm", [&] {
    std::string cmd = argc >= 2 ? argv[1] : "";
    if (cmd == "train") return run_train(argc, argv);
    if (cmd == "eval") return run_eval(argc, argv);
    if (cmd == "score") return run_score(argc, argv);
    if (cmd == "--help" || cmd == "-h" || cmd == "help") {
      std::printf("%s", kUsage);
      return 0;
    }
    std::fprintf(stderr, "%s", kUsage);
    HH_FAIL(cmd.empty() ? std::string("no subcommand given") : "unknown subcommand '" + cmd + "'",
            ": expected train, eval or score");
  });
}
