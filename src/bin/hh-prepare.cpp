// hh-prepare: HH-RLHF jsonl(.gz) -> token dataset files for hh-sft, hh-pm and hh-ppo.
//
//   hh-prepare sft     --input harmless-train.jsonl.gz --tokenizer tok.bin --out train.sft.bin
//   hh-prepare pm      --input ... --tokenizer tok.bin --out train.pm.bin [--max-len 512]
//   hh-prepare prompts --input ... --tokenizer tok.bin --out train.prompts.bin
//   hh-prepare info    train.pm.bin [--tokenizer tok.bin]
//
// The summary (examples, tokens, lengths, truncated, skipped with reasons and line
// numbers) goes to stderr; one JSON summary line goes to stdout. Formats: docs/data.md.
#include <cstdio>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/fileio.h"
#include "core/flags.h"
#include "core/json.h"
#include "data/dataset.h"
#include "data/hh_rlhf.h"
#include "tokenizer/tokenizer.h"

namespace {

// "87, 517, 926 ..." : the first few line numbers of a list.
std::string first_lines(const std::vector<int64_t>& lines, size_t limit = 10) {
  std::string s;
  for (size_t i = 0; i < lines.size() && i < limit; ++i) {
    s += hh::str_cat(i ? ", " : "", lines[i]);
  }
  if (lines.size() > limit) s += hh::str_cat(", ... (", lines.size() - limit, " more)");
  return s;
}

std::string base_name(const std::string& path) {
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

hh::Json lines_json(const std::vector<int64_t>& lines) {
  hh::Json a = hh::Json::array();
  for (int64_t l : lines) a.push_back(hh::Json(l));
  return a;
}

// Shows a dataset's header, metadata and its first record (decoded when a tokenizer is
// given; for sft, the trained-on tokens are shown between [[ and ]]).
int run_info(const std::string& path, const std::string& tokenizer_path) {
  std::vector<hh::Tokenizer> tok;
  if (!tokenizer_path.empty()) tok.push_back(hh::Tokenizer::load(tokenizer_path));
  hh::TokenDataset ds = hh::read_dataset_file(path);
  if (!tok.empty()) ds = hh::load_dataset(path, ds.kind, &tok[0]);  // checks the tokenizer
  std::fprintf(stderr, "%s: %s dataset, %zu sequences, %zu tokens, vocab %u, tokenizer %016llx\n",
               path.c_str(), hh::dataset_kind_name(ds.kind), ds.num_sequences(), ds.tokens.size(),
               ds.vocab_size, static_cast<unsigned long long>(ds.tokenizer_fingerprint));
  std::fprintf(stderr, "metadata: %s\n", ds.meta_json.c_str());
  if (!tok.empty() && ds.num_sequences() > 0) {
    size_t shown = ds.kind == hh::DatasetKind::Sft ? 1 : 2;
    for (size_t s = 0; s < shown; ++s) {
      hh::TokenSpan seq = ds.sequence(s);
      std::string text;
      bool in_mask = false;
      for (size_t t = 0; t < seq.size(); ++t) {
        bool m = ds.kind == hh::DatasetKind::Sft && ds.mask[ds.offsets[s] + t];
        if (m != in_mask) text += m ? "[[" : "]]";
        in_mask = m;
        text += tok[0].decode_token(seq[t]);
      }
      if (in_mask) text += "]]";
      std::fprintf(stderr, "--- sequence %zu (%zu tokens) ---\n%s\n", s, seq.size(), text.c_str());
    }
  }
  hh::Json j = hh::Json::object();
  j["file"] = path;
  j["kind"] = hh::dataset_kind_name(ds.kind);
  j["sequences"] = hh::Json(static_cast<uint64_t>(ds.num_sequences()));
  j["tokens"] = hh::Json(static_cast<uint64_t>(ds.tokens.size()));
  j["vocab_size"] = hh::Json(static_cast<uint64_t>(ds.vocab_size));
  std::printf("%s\n", j.dump().c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return hh::run_main("hh-prepare", [&] {
    hh::Flags flags("hh-prepare",
                    "Turn HH-RLHF jsonl(.gz) into token datasets: sft (dialogues + assistant "
                    "mask), pm (chosen/rejected pairs), prompts (for PPO).");
    flags.add_usage("hh-prepare sft|pm|prompts --tokenizer TOK --out FILE [--input JSONL]");
    flags.add_usage("hh-prepare info FILE [--tokenizer TOK]");
    flags.add_string("input", "",
                     "HH-RLHF .jsonl or .jsonl.gz (default: hh-rlhf/harmless-train.jsonl.gz "
                     "in the shared data folder, $HH_DATA_DIR or ../shared/data)");
    flags.add_string("tokenizer", "", "tokenizer file (from hh-bpe)");
    flags.add_string("out", "", "output dataset file");
    flags.add_int("max-len", 512, "sft/pm: tokens per sequence, end token included");
    flags.add_int("max-prompt-len", 384, "prompts: tokens per prompt (cut from the left)");
    flags.add_string("which", "chosen", "sft: dialogues to use: chosen | both");
    flags.add_bool("strict", false, "stop at the first malformed line or skipped pair");
    flags.takes_positional();
    std::vector<std::string> args = flags.parse(argc, argv);
    HH_CHECK(!args.empty(), "missing the command: sft, pm, prompts or info (see --help)");
    const std::string command = args[0];
    if (command == "info") {
      HH_CHECK(args.size() == 2, "usage: hh-prepare info FILE [--tokenizer TOK]");
      return run_info(args[1], flags.get_string("tokenizer"));
    }
    HH_CHECK(args.size() == 1, "unexpected argument '", args[1], "'");
    HH_CHECK(command == "sft" || command == "pm" || command == "prompts", "unknown command '",
             command, "': expected sft, pm, prompts or info");

    std::string input = flags.get_string("input");
    if (input.empty()) {
      std::string dir = hh::find_shared_data_dir();
      HH_CHECK(!dir.empty(),
               "no --input given and no shared data folder found (set HH_DATA_DIR or --input)");
      input = dir + "/hh-rlhf/harmless-train.jsonl.gz";
    }
    const std::string tokenizer_path = flags.get_string("tokenizer");
    const std::string out = flags.get_string("out");
    HH_CHECK(!tokenizer_path.empty(), "--tokenizer is required");
    HH_CHECK(!out.empty(), "--out is required");
    hh::check_output_path("--out", out, {{"--input", input}, {"--tokenizer", tokenizer_path}});
    hh::BuildOptions options;
    int64_t max_len = flags.get_int("max-len");
    int64_t max_prompt_len = flags.get_int("max-prompt-len");
    HH_CHECK(max_len >= 2, "--max-len must be at least 2, got ", max_len);
    HH_CHECK(max_prompt_len >= 1, "--max-prompt-len must be at least 1, got ", max_prompt_len);
    options.max_len = static_cast<size_t>(max_len);
    options.max_prompt_len = static_cast<size_t>(max_prompt_len);
    options.strict = flags.get_bool("strict");
    const std::string which = flags.get_string("which");
    HH_CHECK(which == "chosen" || which == "both", "--which must be chosen or both, got '", which,
             "'");
    options.which = which == "both" ? hh::SftWhich::Both : hh::SftWhich::Chosen;

    hh::Tokenizer tokenizer = hh::Tokenizer::load(tokenizer_path);
    hh::TextEncoder encoder = hh::TextEncoder::from(tokenizer);
    hh::HhReadResult read = hh::read_hh_pairs(input, options.strict);
    hh::BuildStats stats;
    hh::TokenDataset ds;
    try {
      if (command == "sft") ds = hh::build_sft(read.pairs, encoder, options, &stats);
      if (command == "pm") ds = hh::build_pm(read.pairs, encoder, options, &stats);
      if (command == "prompts") ds = hh::build_prompts(read.pairs, encoder, options, &stats);
    } catch (const hh::Error& e) {
      throw hh::Error(hh::str_cat(input, ": ", e.what()));
    }

    hh::Json meta = hh::Json::object();
    meta["tool"] = "hh-prepare";
    meta["kind"] = command;
    meta["source"] = base_name(input);
    meta["max_len"] =
        hh::Json(static_cast<int64_t>(command == "prompts" ? max_prompt_len : max_len));
    if (command == "sft") meta["which"] = which;
    meta["examples"] = hh::Json(stats.examples);
    meta["tokens"] = hh::Json(stats.tokens);
    meta["truncated"] = hh::Json(stats.truncated);
    meta["skipped"] = hh::Json(stats.skipped_total() + static_cast<int64_t>(read.skipped.size()));
    ds.meta_json = meta.dump();
    hh::save_dataset(out, ds);

    // Human summary on stderr.
    const char* unit = command == "pm" ? "pairs" : command == "sft" ? "dialogues" : "prompts";
    std::fprintf(stderr, "hh-prepare %s: %s -> %s\n", command.c_str(), input.c_str(), out.c_str());
    std::fprintf(stderr, "  input: %lld lines, %zu pairs, %zu malformed lines skipped\n",
                 static_cast<long long>(read.lines), read.pairs.size(), read.skipped.size());
    for (size_t i = 0; i < read.skipped.size() && i < 10; ++i) {
      std::fprintf(stderr, "    line %lld: %s\n", static_cast<long long>(read.skipped[i].line),
                   read.skipped[i].reason.c_str());
    }
    std::fprintf(
        stderr,
        "  output: %lld %s, %lld tokens, mean sequence length %.1f, max %lld, truncated %lld "
        "(limit %lld)\n",
        static_cast<long long>(stats.examples), unit, static_cast<long long>(stats.tokens),
        stats.mean_length(), static_cast<long long>(stats.max_length),
        static_cast<long long>(stats.truncated),
        static_cast<long long>(command == "prompts" ? max_prompt_len : max_len));
    for (const auto& [reason, lines] : stats.skipped) {
      std::fprintf(stderr, "  skipped %zu: %s (lines %s)\n", lines.size(), reason.c_str(),
                   first_lines(lines).c_str());
    }
    if (!stats.prompts_differ.empty()) {
      std::fprintf(stderr,
                   "  note: %zu pairs have a response spanning several turns (the dialogues "
                   "diverge before their last \"Assistant:\"); kept (lines %s)\n",
                   stats.prompts_differ.size(), first_lines(stats.prompts_differ).c_str());
    }

    // One JSON line on stdout.
    hh::Json summary = hh::Json::object();
    summary["command"] = command;
    summary["input"] = input;
    summary["output"] = out;
    summary["lines"] = hh::Json(read.lines);
    summary["pairs"] = hh::Json(static_cast<int64_t>(read.pairs.size()));
    summary["malformed_lines"] = lines_json([&] {
      std::vector<int64_t> v;
      for (const auto& s : read.skipped) v.push_back(s.line);
      return v;
    }());
    summary["examples"] = hh::Json(stats.examples);
    summary["tokens"] = hh::Json(stats.tokens);
    summary["mean_length"] = hh::Json(stats.mean_length());
    summary["max_length"] = hh::Json(stats.max_length);
    summary["truncated"] = hh::Json(stats.truncated);
    hh::Json skipped = hh::Json::object();
    for (const auto& [reason, lines] : stats.skipped) skipped[reason] = lines_json(lines);
    summary["skipped"] = skipped;
    summary["multi_turn_responses"] = lines_json(stats.prompts_differ);
    std::printf("%s\n", summary.dump().c_str());
    return 0;
  });
}
