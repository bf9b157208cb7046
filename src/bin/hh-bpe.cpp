// hh-bpe: train, use and import byte-level BPE tokenizers.
//
//   hh-bpe train --input harmless-train.jsonl.gz --vocab-size 8192 --out tok.bin
//   hh-bpe encode --tokenizer tok.bin [--jsonl] [--stats] < in > out
//   hh-bpe decode --tokenizer tok.bin [--jsonl] < ids > text
//   hh-bpe import-gpt2 [--encoder encoder.json --vocab vocab.bpe] --out gpt2.bin

#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/fileio.h"
#include "core/flags.h"
#include "core/json.h"
#include "data/hh_rlhf.h"
#include "tokenizer/tokenizer.h"

namespace hh {
namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::vector<std::string> split_commas(const std::string& s) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos <= s.size() && !s.empty()) {
    size_t comma = s.find(',', pos);
    if (comma == std::string::npos) comma = s.size();
    if (comma > pos) out.push_back(s.substr(pos, comma - pos));
    pos = comma + 1;
  }
  return out;
}

// A whole file, gunzipped when it is gzip (hh_data's LineReader: a truncated or corrupt
// stream fails, naming the file).
std::string read_maybe_gz(const std::string& path) { return LineReader(path).read_all(); }

std::string read_stdin() {
  std::string out;
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), stdin)) > 0) out.append(buf, n);
  HH_CHECK(!std::ferror(stdin), "reading standard input failed");
  return out;
}

void write_stdout(const std::string& s) {
  if (!s.empty())
    HH_CHECK(std::fwrite(s.data(), 1, s.size(), stdout) == s.size(),
             "writing standard output failed");
}

// Reports a skipped line on stderr (the first few individually) and counts it.
struct SkipReport {
  int64_t skipped = 0;
  void skip(const std::string& where, const std::string& why) {
    // Parse errors already start with the location.
    std::string message = why.rfind(where, 0) == 0 ? why : where + ": " + why;
    if (++skipped <= 10) std::fprintf(stderr, "hh-bpe: skipping %s\n", message.c_str());
  }
  void summary() const {
    if (skipped > 10)
      std::fprintf(stderr, "hh-bpe: skipped %lld lines in all\n", (long long)skipped);
  }
};

// The texts of one JSON line: the text field, else HH's "chosen" and "rejected".
bool texts_of_line(std::string_view line, const std::string& where, const std::string& field,
                   std::vector<std::string>& out, SkipReport& report) {
  Json row;
  try {
    row = Json::parse(line, where);
  } catch (const Error& e) {
    report.skip(where, e.what());
    return false;
  }
  if (!row.is_object()) {
    report.skip(where, "not a JSON object");
    return false;
  }
  if (const Json* text = row.find(field); text && text->is_string()) {
    out.push_back(text->as_string());
    return true;
  }
  const Json* chosen = row.find("chosen");
  const Json* rejected = row.find("rejected");
  if (chosen && rejected && chosen->is_string() && rejected->is_string()) {
    out.push_back(chosen->as_string());
    out.push_back(rejected->as_string());
    return true;
  }
  report.skip(where, "no string field \"" + field + "\" (nor \"chosen\" and \"rejected\")");
  return false;
}

// fn(line, where) for each line of `text` that is not blank; where = "<source>:<number>".
template <typename Fn>
void for_each_nonblank_line(std::string_view text, const std::string& source, Fn fn) {
  size_t line_no = 0;
  for (size_t pos = 0; pos < text.size();) {
    size_t eol = text.find('\n', pos);
    if (eol == std::string::npos) eol = text.size();
    const std::string_view line = text.substr(pos, eol - pos);
    pos = eol + 1;
    ++line_no;
    if (line.find_first_not_of(" \t\r") != std::string_view::npos)
      fn(line, str_cat(source, ":", line_no));
  }
}

// Training texts from plain text files (one text each) and .jsonl(.gz) files.
std::vector<std::string> read_training_texts(const std::vector<std::string>& paths,
                                             const std::string& field, SkipReport& report) {
  std::vector<std::string> texts;
  for (const std::string& path : paths) {
    std::string data = read_maybe_gz(path);
    if (!ends_with(path, ".jsonl") && !ends_with(path, ".jsonl.gz")) {
      texts.push_back(std::move(data));
      continue;
    }
    for_each_nonblank_line(data, path, [&](std::string_view line, const std::string& where) {
      texts_of_line(line, where, field, texts, report);
    });
  }
  return texts;
}

// Where GPT-2's files are by default: gpt2/ in the shared data folder (find_shared_data_dir:
// $HH_DATA_DIR, else ../shared/data from here or from the binary), or "" when not there.
std::string default_gpt2_file(const std::string& name) {
  const std::string dir = find_shared_data_dir();
  const std::string path = dir + "/gpt2/" + name;
  return !dir.empty() && file_exists(path) ? path : "";
}

void append_ids_json(std::string& out, const std::vector<int32_t>& ids) {
  out += '[';
  char buf[16];
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i) out += ',';
    auto r = std::to_chars(buf, buf + sizeof(buf), ids[i]);
    out.append(buf, r.ptr);
  }
  out += "]\n";
}

int cmd_train(int argc, char** argv) {
  Flags flags("hh-bpe train", "Learn a byte-level BPE tokenizer from text.");
  flags.add_string("input", "",
                   "comma-separated input files: plain text, .jsonl (text field), "
                   "HH .jsonl.gz (chosen + rejected); positional arguments too");
  flags.add_string("text-field", "text", "JSON field holding the text in .jsonl inputs");
  flags.add_int("vocab-size", 8192, "vocabulary size: 256 bytes + merges + special tokens");
  flags.add_int("min-frequency", 2, "stop when the most frequent pair occurs fewer times");
  flags.add_string("special", kEndOfContext,
                   "comma-separated special tokens after <|endoftext|> (always present)");
  flags.add_string("out", "tokenizer.bin", "output tokenizer file");
  flags.takes_positional();
  std::vector<std::string> inputs = flags.parse(argc, argv);
  for (const std::string& p : split_commas(flags.get_string("input"))) inputs.push_back(p);
  HH_CHECK(!inputs.empty(), "--input: no input files given");
  std::vector<std::pair<std::string, std::string>> named_inputs;
  for (const std::string& in : inputs) named_inputs.emplace_back("input", in);
  check_output_path("--out", flags.get_string("out"), named_inputs);
  HH_CHECK(flags.get_int("vocab-size") > 0 && flags.get_int("vocab-size") <= (1 << 24),
           "--vocab-size ", flags.get_int("vocab-size"), " is out of range");

  SkipReport report;
  auto read_start = std::chrono::steady_clock::now();
  std::vector<std::string> texts =
      read_training_texts(inputs, flags.get_string("text-field"), report);
  report.summary();
  double read_seconds = seconds_since(read_start);
  size_t bytes = 0;
  for (const auto& t : texts) bytes += t.size();
  std::string names;
  for (const std::string& in : inputs) names += (names.empty() ? "" : ", ") + in;
  HH_CHECK(bytes > 0, "no training text in ", names, " (empty, or every line skipped)");

  BpeTrainOptions opt;
  opt.vocab_size = flags.get_int32("vocab-size");
  opt.min_frequency = flags.get_int("min-frequency");
  opt.specials = split_commas(flags.get_string("special"));
  auto start = std::chrono::steady_clock::now();
  Tokenizer tok = Tokenizer::train(std::vector<std::string_view>(texts.begin(), texts.end()), opt);
  double train_seconds = seconds_since(start);
  tok.save(flags.get_string("out"));

  Json summary = Json::object();
  summary["texts"] = Json(static_cast<int64_t>(texts.size()));
  summary["skipped_lines"] = Json(report.skipped);
  summary["bytes"] = Json(static_cast<int64_t>(bytes));
  summary["merges"] = Json(tok.num_merges());
  summary["vocab_size"] = Json(tok.vocab_size());
  summary["read_seconds"] = Json(read_seconds);
  summary["train_seconds"] = Json(train_seconds);
  char fp[32];
  std::snprintf(fp, sizeof(fp), "%016llx", (unsigned long long)tok.fingerprint());
  summary["fingerprint"] = Json(std::string(fp));
  summary["out"] = Json(flags.get_string("out"));
  std::fprintf(stderr, "%s\n", summary.dump().c_str());
  if (tok.vocab_size() < opt.vocab_size)
    std::fprintf(stderr, "hh-bpe: note: only %d merges reached --min-frequency %lld\n",
                 tok.num_merges(), (long long)opt.min_frequency);
  return 0;
}

int cmd_encode(int argc, char** argv) {
  Flags flags("hh-bpe encode", "Text on stdin to token ids (JSON arrays) on stdout.");
  flags.add_string("tokenizer", "", "tokenizer file (from train or import-gpt2)");
  flags.add_bool("jsonl", false, "one JSON object per line in, one JSON array of ids per line out");
  flags.add_string("text-field", "text", "JSON field holding the text with --jsonl");
  flags.add_bool("stats", false, "print {bytes, tokens, seconds, mb_per_s} JSON on stderr");
  flags.parse(argc, argv);
  HH_CHECK(!flags.get_string("tokenizer").empty(), "--tokenizer is required");
  Tokenizer tok = Tokenizer::load(flags.get_string("tokenizer"));
  auto total_start = std::chrono::steady_clock::now();
  std::string input = read_stdin();
  std::string out;
  double encode_seconds = 0;
  int64_t bytes = 0, tokens = 0, lines = 0;
  SkipReport report;
  if (!flags.get_bool("jsonl")) {
    auto start = std::chrono::steady_clock::now();
    std::vector<int32_t> ids = tok.encode(input);
    encode_seconds = seconds_since(start);
    bytes = static_cast<int64_t>(input.size());
    tokens = static_cast<int64_t>(ids.size());
    append_ids_json(out, ids);
  } else {
    const std::string field = flags.get_string("text-field");
    for_each_nonblank_line(input, "stdin", [&](std::string_view line, const std::string& where) {
      Json row;
      try {
        row = Json::parse(line, where);
      } catch (const Error& e) {
        report.skip(where, e.what());
        return;
      }
      const Json* text = row.is_object() ? row.find(field) : nullptr;
      if (!text || !text->is_string()) {
        report.skip(where, "no string field \"" + field + "\"");
        return;
      }
      auto start = std::chrono::steady_clock::now();
      std::vector<int32_t> ids = tok.encode(text->as_string());
      encode_seconds += seconds_since(start);
      bytes += static_cast<int64_t>(text->as_string().size());
      tokens += static_cast<int64_t>(ids.size());
      ++lines;
      append_ids_json(out, ids);
    });
    report.summary();
  }
  write_stdout(out);
  std::fflush(stdout);
  if (flags.get_bool("stats")) {
    Json stats = Json::object();
    stats["bytes"] = Json(bytes);
    stats["tokens"] = Json(tokens);
    stats["lines"] = Json(lines);
    stats["skipped_lines"] = Json(report.skipped);
    stats["seconds"] = Json(encode_seconds);
    stats["mb_per_s"] = Json(encode_seconds > 0 ? bytes / 1e6 / encode_seconds : 0.0);
    stats["total_seconds"] = Json(seconds_since(total_start));
    std::fprintf(stderr, "%s\n", stats.dump().c_str());
  }
  return 0;
}

int cmd_decode(int argc, char** argv) {
  Flags flags("hh-bpe decode", "JSON arrays of token ids (one per line) on stdin to text.");
  flags.add_string("tokenizer", "", "tokenizer file (from train or import-gpt2)");
  flags.add_bool("jsonl", false,
                 "write {\"text\": ...} per line (default: the raw bytes, concatenated)");
  flags.parse(argc, argv);
  HH_CHECK(!flags.get_string("tokenizer").empty(), "--tokenizer is required");
  Tokenizer tok = Tokenizer::load(flags.get_string("tokenizer"));
  std::string input = read_stdin();
  std::string out;
  for_each_nonblank_line(input, "stdin", [&](std::string_view line, const std::string& where) {
    Json row = Json::parse(line, where);
    HH_CHECK(row.is_array(), where, ": expected a JSON array of token ids");
    std::vector<int32_t> ids;
    ids.reserve(row.size());
    for (const Json& id : row.as_array()) {
      HH_CHECK(id.is_number() && std::floor(id.as_number()) == id.as_number(), where,
               ": expected a JSON array of token ids (integers)");
      HH_CHECK(id.as_number() >= 0 && id.as_number() < tok.vocab_size(), where, ": id ",
               id.as_number(), " is outside the vocabulary");
      ids.push_back(static_cast<int32_t>(id.as_int()));
    }
    std::string text = tok.decode(ids);
    if (flags.get_bool("jsonl")) {
      out += "{\"text\":";
      json_escape(out, text);
      out += "}\n";
    } else {
      out += text;
    }
  });
  write_stdout(out);
  return 0;
}

int cmd_import_gpt2(int argc, char** argv) {
  Flags flags("hh-bpe import-gpt2",
              "Convert GPT-2's encoder.json + vocab.bpe to a tokenizer file.");
  flags.add_string("encoder", default_gpt2_file("encoder.json"), "GPT-2 encoder.json");
  flags.add_string("vocab", default_gpt2_file("vocab.bpe"), "GPT-2 vocab.bpe");
  flags.add_string("special", kEndOfContext,
                   "comma-separated special tokens after <|endoftext|> (50256): ids 50257, ...");
  flags.add_string("out", "gpt2.bin", "output tokenizer file");
  flags.parse(argc, argv);
  HH_CHECK(!flags.get_string("encoder").empty(), "--encoder: no encoder.json given or found");
  HH_CHECK(!flags.get_string("vocab").empty(), "--vocab: no vocab.bpe given or found");
  check_output_path(
      "--out", flags.get_string("out"),
      {{"--encoder", flags.get_string("encoder")}, {"--vocab", flags.get_string("vocab")}});
  Tokenizer tok = Tokenizer::import_gpt2(flags.get_string("encoder"), flags.get_string("vocab"),
                                         split_commas(flags.get_string("special")));
  tok.save(flags.get_string("out"));
  std::fprintf(stderr, "hh-bpe: wrote %s: %d tokens (%d merges), fingerprint %016llx\n",
               flags.get_string("out").c_str(), tok.vocab_size(), tok.num_merges(),
               (unsigned long long)tok.fingerprint());
  return 0;
}

const char* kUsage =
    "usage: hh-bpe COMMAND [flags]   (hh-bpe COMMAND --help for its flags)\n"
    "  train        learn a tokenizer: --input FILES --vocab-size N --min-frequency N --out F\n"
    "  encode       text -> ids: --tokenizer F [--jsonl] [--stats] < in > out\n"
    "  decode       ids -> text: --tokenizer F [--jsonl] < in > out\n"
    "  import-gpt2  GPT-2 encoder.json + vocab.bpe -> tokenizer file\n";

}  // namespace
}  // namespace hh

int main(int argc, char** argv) {
  return hh::run_main("hh-bpe", [&]() -> int {
    if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h") {
      std::fputs(hh::kUsage, argc < 2 ? stderr : stdout);
      return argc < 2 ? 2 : 0;
    }
    std::string command = argv[1];
    // Each command parses argv[2..] (its flags parser skips argv[0], here the command).
    if (command == "train") return hh::cmd_train(argc - 1, argv + 1);
    if (command == "encode") return hh::cmd_encode(argc - 1, argv + 1);
    if (command == "decode") return hh::cmd_decode(argc - 1, argv + 1);
    if (command == "import-gpt2") return hh::cmd_import_gpt2(argc - 1, argv + 1);
    std::fprintf(stderr, "hh-bpe: error: unknown command '%s'\n%s", command.c_str(), hh::kUsage);
    return 2;
  });
}
