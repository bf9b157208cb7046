// hh-chat: talk to a trained model, or sample responses for a file of prompts.
//
//   hh-chat --model runs/sft/model.safetensors --tokenizer tok.bin        interactive
//   hh-chat --model M --tokenizer T --prompts-file p.jsonl --out r.jsonl  batch
//   hh-chat --model M --export-hf out/          Hugging Face GPT-2 files (weights + config)
//   hh-chat --model M --dump-logits 1,2,3       logits as JSON (scripts/reference/check_hf_gpt2.py)
//   hh-chat --random-model gpt2-124m --bench    tokens/s on random prompts (bench_generate.sh)
//
// --model takes an hh checkpoint or a Hugging Face GPT-2 safetensors file (its config from
// config.json beside it, or the "hh_config" metadata hh's export writes). --tokenizer takes
// an hh tokenizer file or a folder with GPT-2's encoder.json and vocab.bpe.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/fileio.h"
#include "core/flags.h"
#include "core/json.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "data/dataset.h"
#include "data/hh_rlhf.h"
#include "model/checkpoint.h"
#include "model/generate.h"
#include "model/gpt.h"
#include "tokenizer/tokenizer.h"

namespace hh {
namespace {

// "\n" and "\\" escapes in a flag value, so --stop '\n\nHuman:' works from a shell.
std::string unescape(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); i++) {
    if (s[i] == '\\' && i + 1 < s.size()) {
      const char c = s[++i];
      out += c == 'n' ? '\n' : c == 't' ? '\t' : c;
    } else {
      out += s[i];
    }
  }
  return out;
}

std::string dir_of(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? "." : path.substr(0, slash);
}

// The model config of a Hugging Face GPT-2 file: hh's export metadata, else the
// transformers config.json (given, or beside the weights).
GPTConfig hf_model_config(const SafeTensorsFile& file, const std::string& path,
                          std::string config_path) {
  auto it = file.metadata().find("hh_config");
  if (config_path.empty() && it != file.metadata().end())
    return GPTConfig::from_json(Json::parse(it->second, path + " hh_config"), path);
  if (config_path.empty()) config_path = dir_of(path) + "/config.json";
  HH_CHECK(file_exists(config_path), path,
           " is not an hh checkpoint (no \"config\" metadata) and has no config.json beside it "
           "(looked for ",
           config_path, "; pass --hf-config)");
  Json j = Json::parse(read_file_text(config_path), config_path);
  auto field = [&](const char* key, const char* alt) -> int {
    const Json* v = j.find(key);
    if (!v && alt) v = j.find(alt);
    HH_CHECK(v && v->is_number(), config_path, ": no integer field '", key, "'");
    HH_CHECK(v->is_int32(), config_path, ": field '", key,
             "' must be an integer that fits an int, got ", v->dump());
    return static_cast<int>(v->as_int());
  };
  GPTConfig c;
  c.n_layer = field("n_layer", "num_hidden_layers");
  c.n_head = field("n_head", "num_attention_heads");
  c.n_embd = field("n_embd", "hidden_size");
  c.max_seq_len = field("n_positions", "n_ctx");
  c.set_vocab_size(field("vocab_size", nullptr));
  c.validate();
  return c;
}

struct LoadedModel {
  std::unique_ptr<GPT> model;
  std::map<std::string, std::string> metadata;  // empty for Hugging Face files
};

LoadedModel load_any_model(const std::string& path, const std::string& hf_config,
                           Backend& backend) {
  LoadedModel out;
  auto meta = read_checkpoint_metadata(path);
  if (meta.count("config")) {
    out.model = std::make_unique<GPT>(load_model(path, backend, &out.metadata));
    return out;
  }
  SafeTensorsFile file = SafeTensorsFile::load(path);
  out.model = std::make_unique<GPT>(backend, hf_model_config(file, path, hf_config), false);
  out.model->import_hf_gpt2(file);
  return out;
}

Tokenizer load_any_tokenizer(const std::string& path) {
  if (file_exists(path + "/encoder.json"))
    return Tokenizer::import_gpt2(path + "/encoder.json", path + "/vocab.bpe");
  return Tokenizer::load(path);
}

// Raw user text becomes "\n\nHuman: <text>\n\nAssistant:"; text that already has HH
// markers is a dialogue, completed with "\n\nAssistant:" if it does not end in one.
std::string as_dialogue(const std::string& prompt) {
  const bool has_markers = prompt.find(kHumanMarker) != std::string::npos ||
                           prompt.find(kAssistantMarker) != std::string::npos;
  if (!has_markers) return std::string(kHumanMarker) + " " + prompt + std::string(kAssistantMarker);
  const std::string_view tail = kAssistantMarker;
  if (prompt.size() >= tail.size() &&
      prompt.compare(prompt.size() - tail.size(), tail.size(), tail.data(), tail.size()) == 0)
    return prompt;
  return prompt + std::string(kAssistantMarker);
}

// Tokenized exactly like the training data (segment by segment, see tokenize_dialogue).
std::vector<int32_t> encode_dialogue(const Tokenizer& tok, const std::string& dialogue) {
  return tokenize_dialogue(dialogue, TextEncoder::from(tok)).ids;
}

std::vector<int32_t> parse_ids(const std::string& s) {
  std::vector<int32_t> ids;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    size_t used = 0;
    long v = 0;
    try {
      v = std::stol(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    HH_CHECK(used == item.size() && !item.empty() && v >= 0 && v <= INT32_MAX, "--dump-logits: '",
             item, "' is not a token id (expected comma-separated integers >= 0)");
    ids.push_back(static_cast<int32_t>(v));
  }
  HH_CHECK(!ids.empty(), "--dump-logits: no token ids given");
  return ids;
}

// {"tokens": [...], "vocab_size": V, "logits": [[V floats] per position]}
int dump_logits(GPT& model, const std::vector<int32_t>& ids) {
  model.forward_logits(Batch::single(ids));
  std::vector<int32_t> rows(ids.size());
  for (size_t i = 0; i < rows.size(); i++) rows[i] = static_cast<int32_t>(i);
  std::vector<float> logits = model.logits_rows(rows);
  const int V = model.config().vocab_size;
  std::string out = "{\"vocab_size\":" + std::to_string(V) + ",\"logits\":[";
  char buf[32];
  for (size_t t = 0; t < ids.size(); t++) {
    out += t ? ",[" : "[";
    for (int v = 0; v < V; v++) {
      const float x = logits[t * V + v];
      HH_CHECK(std::isfinite(x), "--dump-logits: the logit of token ", v, " at position ", t,
               " is ", x, " (a model with non-finite weights?)");
      std::snprintf(buf, sizeof buf, "%s%.9g", v ? "," : "", x);
      out += buf;
    }
    out += "]";
  }
  out += "]}\n";
  std::fwrite(out.data(), 1, out.size(), stdout);
  return 0;
}

void print_throughput(const char* what, int64_t tokens, double seconds) {
  std::fprintf(stderr, "hh-chat: %s: %lld new tokens in %.3f s = %.1f tokens/s\n", what,
               static_cast<long long>(tokens), seconds, seconds > 0 ? tokens / seconds : 0.0);
}

int run_batch(Generator& gen, const Tokenizer& tok, const SamplingOptions& opt,
              const std::string& in_path, const std::string& out_path, int batch_size) {
  HH_CHECK(!out_path.empty(), "--prompts-file needs --out");
  HH_CHECK(batch_size >= 1, "--batch-size must be >= 1, got ", batch_size);
  std::vector<Json> items;
  std::vector<std::vector<int32_t>> prompts;
  {
    const std::string text = read_file_text(in_path);  // names the path (a folder, missing)
    HH_CHECK(text.compare(0, 2, "\x1f\x8b") != 0, in_path,
             ": gzip-compressed; --prompts-file reads plain JSONL (gunzip it first)");
    std::istringstream in(text);
    std::string line;
    int64_t number = 0;
    while (std::getline(in, line)) {
      number++;
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      const std::string where = in_path + ":" + std::to_string(number);
      Json item = Json::parse(line, where);
      HH_CHECK(item.is_object(), where, ": expected a JSON object like {\"prompt\": \"...\"}");
      const Json* prompt = item.find("prompt");
      HH_CHECK(prompt && prompt->is_string(), where, ": no string field \"prompt\"");
      HH_CHECK(!prompt->as_string().empty(), where, ": the prompt is empty");
      prompts.push_back(encode_dialogue(tok, as_dialogue(prompt->as_string())));
      items.push_back(std::move(item));
    }
  }
  HH_CHECK(!items.empty(), in_path, ": no prompts");
  std::string out;
  int64_t tokens = 0;
  double seconds = 0;
  SamplingOptions batch_opt = opt;
  for (size_t start = 0; start < prompts.size(); start += batch_size) {
    const size_t end = std::min(prompts.size(), start + static_cast<size_t>(batch_size));
    std::vector<std::vector<int32_t>> chunk(prompts.begin() + start, prompts.begin() + end);
    batch_opt.seed = opt.seed + start;  // each batch its own streams; reproducible
    std::vector<GeneratedSample> samples = gen.generate(chunk, batch_opt);
    tokens += gen.last_new_tokens();
    seconds += gen.last_seconds();
    for (size_t i = 0; i < samples.size(); i++) {
      Json item = items[start + i];
      item["response"] = samples[i].response_text;
      item["finish_reason"] = samples[i].finish_reason;
      if (samples[i].prompt_truncated) item["prompt_truncated"] = true;
      out += item.dump() + "\n";
    }
    std::fprintf(stderr, "hh-chat: %zu/%zu prompts\n", end, prompts.size());
  }
  write_file_atomic(out_path, out);
  print_throughput("batch", tokens, seconds);
  return 0;
}

constexpr const char* kChatCommands =
    "/reset starts over, /help shows this, /quit or /exit (or EOF) ends.";

int run_interactive(Generator& gen, const Tokenizer& tok, const SamplingOptions& opt) {
  const bool tty = isatty(0);
  if (tty) std::fprintf(stderr, "hh-chat: type a message; %s\n", kChatCommands);
  std::string history;
  std::string line;
  SamplingOptions turn_opt = opt;
  int turn = 0;
  while (true) {
    if (tty) std::fprintf(stderr, "\nHuman: ");
    if (!std::getline(std::cin, line)) break;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line == "/quit" || line == "/exit") break;
    if (line == "/reset") {
      history.clear();
      std::fprintf(stderr, "hh-chat: (history cleared)\n");
      continue;
    }
    if (line == "/help") {
      std::fprintf(stderr, "hh-chat: %s\n", kChatCommands);
      continue;
    }
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    history += std::string(kHumanMarker) + " " + line + std::string(kAssistantMarker);
    std::vector<int32_t> ids = encode_dialogue(tok, history);
    std::fputs("Assistant:", stdout);
    std::fflush(stdout);
    turn_opt.seed = opt.seed + turn++;
    std::vector<GeneratedSample> out =
        gen.generate({ids}, turn_opt, [](int, const std::string& piece) {
          std::fwrite(piece.data(), 1, piece.size(), stdout);
          std::fflush(stdout);
        });
    std::fputs("\n", stdout);
    std::fflush(stdout);
    history += out[0].response_text;
  }
  return 0;
}

// Random prompts of --prompt-len tokens, --batch-size of them, exactly --max-new-tokens each
// (no stops): the generation benchmark of scripts/bench_generate.sh. One JSON line out.
int run_bench(Generator& gen, const GPT& model, const SamplingOptions& opt, int batch_size,
              int prompt_len, int repeats) {
  HH_CHECK(batch_size >= 1 && prompt_len >= 1,
           "--bench needs --batch-size >= 1 and "
           "--prompt-len >= 1");
  Rng rng(opt.seed);
  const int V = model.config().vocab_size;
  std::vector<std::vector<int32_t>> prompts(batch_size, std::vector<int32_t>(prompt_len));
  for (auto& p : prompts)
    for (int32_t& id : p) id = static_cast<int32_t>(rng.below(V - 1));
  SamplingOptions bench = opt;
  bench.stop_strings = {};
  bench.stop_at_eot = false;
  gen.generate(prompts, bench);  // warm-up: allocations, cuBLAS heuristics
  int64_t tokens = 0;
  double seconds = 0;
  for (int r = 0; r < repeats; r++) {
    bench.seed = opt.seed + r;
    gen.generate(prompts, bench);
    model.backend().synchronize();
    tokens += gen.last_new_tokens();
    seconds += gen.last_seconds();
  }
  print_throughput("bench", tokens, seconds);
  Json j = Json::object();
  j["device"] = model.backend().name();
  j["config"] = model.config().to_json();
  j["batch"] = batch_size;
  j["prompt_len"] = prompt_len;
  j["max_new_tokens"] = opt.max_new_tokens;
  j["new_tokens"] = tokens;
  j["seconds"] = seconds;
  j["tokens_per_s"] = seconds > 0 ? tokens / seconds : 0.0;
  j["graph_replays"] = gen.graph_replays();  // decode steps replayed as CUDA graphs
  std::printf("%s\n", j.dump().c_str());
  return 0;
}

}  // namespace
}  // namespace hh

int main(int argc, char** argv) {
  return hh::run_main("hh-chat", [&] {
    hh::Flags f("hh-chat",
                "Chat with a model (dialogue formatted as \"\\n\\nHuman: ...\\n\\nAssistant:\", "
                "replies streamed),\nor sample a response for each line of a JSONL file.");
    f.add_string("model", "", "hh checkpoint or Hugging Face GPT-2 safetensors file");
    f.add_string("hf-config", "",
                 "transformers config.json for a Hugging Face --model "
                 "(default: beside it)");
    f.add_string("random-model", "",
                 "instead of --model: a random model of this preset "
                 "(tiny, small, gpt2-124m), for benchmarks");
    f.add_int("vocab-size", 0,
              "vocabulary of --random-model without --tokenizer (a synthetic "
              "byte-pair tokenizer of that size stands in)");
    f.add_string("tokenizer", "",
                 "hh tokenizer file, or a folder with GPT-2's encoder.json + "
                 "vocab.bpe");
    f.add_string("device", "auto", "cpu, cuda or auto");
    f.add_float("temperature", 0.7, "sampling temperature (0 = greedy)");
    f.add_int("top-k", 0, "sample among the k most likely tokens (0 = all)");
    f.add_float("top-p", 0.95, "nucleus sampling: the smallest set with this much probability");
    f.add_int("max-new-tokens", 128, "tokens per response at most");
    f.add_string("stop", "\\n\\nHuman:", "stop string (escapes \\n, \\t; empty = none)");
    f.add_int("seed", 1, "sampling seed (the same seed gives the same responses)");
    f.add_string("prompts-file", "",
                 "batch mode: JSONL lines {\"prompt\": \"...\"} (a user "
                 "message, or an HH dialogue ending in \"\\n\\nAssistant:\")");
    f.add_string("out", "",
                 "batch mode: output JSONL (each input object + \"response\", "
                 "\"finish_reason\")");
    f.add_int("batch-size", 32, "prompts per generation batch (batch and bench modes)");
    f.add_string("export-hf", "",
                 "write the model as Hugging Face GPT-2 files into this folder "
                 "(model.safetensors + config.json) and exit");
    f.add_string("dump-logits", "",
                 "print the logits at every position of these comma-separated "
                 "token ids as JSON and exit");
    f.add_bool("bench", false, "generation benchmark on random prompts (prints JSON)");
    f.add_int("prompt-len", 64, "bench: prompt tokens");
    f.add_int("repeats", 3, "bench: timed repetitions after one warm-up");
    f.parse(argc, argv);
    // A mode given an empty value is a mistake, not a request to chat interactively.
    for (const char* mode : {"export-hf", "dump-logits", "prompts-file", "out"})
      HH_CHECK(!f.is_set(mode) || !f.get_string(mode).empty(), "--", mode, " needs a value");

    auto backend = hh::make_backend(f.get_string("device"));
    const std::string model_path = f.get_string("model");
    const std::string random_preset = f.get_string("random-model");
    HH_CHECK(model_path.empty() != random_preset.empty(),
             "give exactly one of --model and --random-model (see --help)");

    // The tokenizer first: a random model takes its vocabulary from it.
    std::unique_ptr<hh::Tokenizer> tok;
    const std::string tok_path = f.get_string("tokenizer");
    if (!tok_path.empty()) {
      tok = std::make_unique<hh::Tokenizer>(hh::load_any_tokenizer(tok_path));
    } else if (!random_preset.empty() && f.get_int("vocab-size") > 0) {
      tok = std::make_unique<hh::Tokenizer>(
          hh::synthetic_tokenizer(f.get_int32("vocab-size"), {hh::kEndOfText}));
    }

    hh::LoadedModel loaded;
    if (!model_path.empty()) {
      loaded = hh::load_any_model(model_path, f.get_string("hf-config"), *backend);
    } else {
      HH_CHECK(tok, "--random-model needs --tokenizer or --vocab-size");
      hh::GPTConfig cfg = hh::GPTConfig::preset(random_preset, tok->vocab_size());
      loaded.model = std::make_unique<hh::GPT>(*backend, cfg, false);
      loaded.model->init_random(static_cast<uint64_t>(f.get_int("seed")));
    }
    hh::GPT& model = *loaded.model;
    // hh-chat samples text, and GPT-2's LM-head layout (--export-hf) has no scalar head.
    hh::check_language_model(model, "--model " + model_path);

    if (!f.get_string("export-hf").empty()) {
      const std::string dir = f.get_string("export-hf");
      // Never over another model (an hh run directory holds a model.safetensors too).
      for (const char* name : {"/model.safetensors", "/config.json"})
        HH_CHECK(!hh::file_exists(dir + name), "--export-hf ", dir, ": ", dir, name,
                 " already exists; export into a new or empty directory");
      hh::make_dirs(dir);
      model.export_hf_gpt2(dir + "/model.safetensors");
      hh::write_file_atomic(dir + "/config.json", model.hf_config_json() + "\n");
      std::fprintf(stderr, "hh-chat: wrote %s/model.safetensors and %s/config.json\n", dir.c_str(),
                   dir.c_str());
      return 0;
    }
    if (!f.get_string("dump-logits").empty())
      return hh::dump_logits(model, hh::parse_ids(f.get_string("dump-logits")));

    HH_CHECK(tok, "--tokenizer is required to chat (see --help)");
    auto fp = loaded.metadata.find("tokenizer");
    if (fp != loaded.metadata.end()) {
      HH_CHECK(fp->second == std::to_string(tok->fingerprint()), model_path,
               " was trained with another tokenizer (fingerprint ", fp->second, ") than ", tok_path,
               " (fingerprint ", tok->fingerprint(), ")");
    } else if (!model_path.empty() && !loaded.metadata.empty()) {
      std::fprintf(stderr,
                   "hh-chat: warning: %s records no tokenizer; cannot check that %s "
                   "matches it\n",
                   model_path.c_str(), tok_path.c_str());
    }
    hh::Generator gen(model, *tok);  // checks vocab_size against the tokenizer

    hh::SamplingOptions opt;
    opt.temperature = static_cast<float>(f.get_float("temperature"));
    opt.top_k = f.get_int32("top-k");
    opt.top_p = static_cast<float>(f.get_float("top-p"));
    opt.max_new_tokens = f.get_int32("max-new-tokens");
    opt.seed = static_cast<uint64_t>(f.get_int("seed"));
    opt.stop_strings = {hh::unescape(f.get_string("stop"))};
    opt.validate();

    HH_CHECK(f.get_string("out").empty() || !f.get_string("prompts-file").empty(),
             "--out writes batch mode's responses: it needs --prompts-file (see --help)");
    if (f.get_bool("bench")) {
      HH_CHECK(f.get_int32("repeats") >= 1, "--repeats must be >= 1");
      return hh::run_bench(gen, model, opt, f.get_int32("batch-size"), f.get_int32("prompt-len"),
                           f.get_int32("repeats"));
    }
    if (!f.get_string("prompts-file").empty()) {
      hh::check_output_path("--out", f.get_string("out"),
                            {{"--prompts-file", f.get_string("prompts-file")},
                             {"--model", model_path},
                             {"--tokenizer", tok_path}});
      return hh::run_batch(gen, *tok, opt, f.get_string("prompts-file"), f.get_string("out"),
                           f.get_int32("batch-size"));
    }
    return hh::run_interactive(gen, *tok, opt);
  });
}
