// The HH-RLHF dataset (Bai et al. 2022; github.com/anthropics/hh-rlhf): reading its jsonl
// or jsonl.gz files, splitting dialogues into turns and pairs into prompt + two responses.
//
// Each line is {"chosen": "\n\nHuman: ...\n\nAssistant: ...", "rejected": "..."}: the same
// conversation with two different final assistant responses, the first preferred by a
// crowdworker. The shared prompt runs up to and including the last "\n\nAssistant:".
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

namespace hh {

inline constexpr std::string_view kHumanMarker = "\n\nHuman:";
inline constexpr std::string_view kAssistantMarker = "\n\nAssistant:";

// Reads a text file line by line, plain or gzip (detected by the magic bytes 1f 8b, not
// the name; concatenated gzip members are read in order). A gzip stream cut short or a
// CRC mismatch throws hh::Error naming the file, so a truncated download never passes
// for a shorter dataset. Lines lose their "\n" (and a "\r" before it).
class LineReader {
 public:
  explicit LineReader(const std::string& path);
  ~LineReader();
  LineReader(const LineReader&) = delete;
  LineReader& operator=(const LineReader&) = delete;

  // Next line into *line; false at the end of the input.
  bool next(std::string* line);
  // Everything not yet read, as it is (no line splitting), with the same gzip checks.
  std::string read_all();
  int64_t line_number() const { return line_number_; }  // 1-based number of the last line
  bool is_gzip() const { return gzip_; }

 private:
  bool fill();  // appends more decoded bytes to pending_; false at the end of input

  std::string path_;
  FILE* file_ = nullptr;
  bool gzip_ = false;
  bool eof_ = false;
  void* zstream_ = nullptr;    // z_stream*, kept out of the header
  bool zstream_done_ = false;  // the current gzip member ended
  std::vector<unsigned char> in_buf_;
  size_t in_len_ = 0;
  std::string pending_;
  size_t pending_pos_ = 0;
  int64_t line_number_ = 0;
  uint64_t compressed_read_ = 0;
};

// Byte offset of the first invalid UTF-8 sequence in s (overlong forms, surrogates and
// code points above U+10FFFF are invalid), or std::string::npos if s is valid.
size_t find_invalid_utf8(std::string_view s);

// One turn of a dialogue: the speaker and the text after its "Human:"/"Assistant:" marker
// up to the next marker (usually with a leading space).
enum class Role { Human, Assistant };
struct Turn {
  Role role;
  std::string text;
};
struct Dialogue {
  std::string preamble;  // text before the first marker (empty in HH-RLHF)
  std::vector<Turn> turns;
};

// Splits at every "\n\nHuman:" and "\n\nAssistant:" (leftmost first). Never fails; a text
// without markers gives no turns and all of it as the preamble.
Dialogue parse_dialogue(std::string_view text);

// One line of HH-RLHF, split.
struct HhPair {
  int64_t line = 0;              // 1-based line number in the source file
  std::string chosen, rejected;  // the full dialogues
  // prompt = the longest common prefix of chosen and rejected, cut after its last
  // "\n\nAssistant:"; chosen == prompt + chosen_response, rejected == prompt + rejected_response.
  std::string prompt, chosen_response, rejected_response;
  // True when chosen or rejected has another "\n\nAssistant:" after the prompt, i.e. one of
  // the responses spans several turns (a handful of pairs in the paper's data do).
  bool prompts_differ = false;
};

// Splits a pair. Returns "" on success, else the reason the pair cannot be split.
std::string split_pair(const std::string& chosen, const std::string& rejected, HhPair* pair);

// Why a well-formed pair is unusable for a preference model, or "": identical dialogues,
// an empty (all-whitespace) chosen or rejected response.
std::string pair_problem(const HhPair& pair);

struct HhSkip {
  int64_t line;
  std::string reason;
};
struct HhReadResult {
  std::vector<HhPair> pairs;
  std::vector<HhSkip> skipped;  // malformed lines, in order
  int64_t lines = 0;            // lines read, blank ones included
};

// Reads every pair of an HH-RLHF jsonl(.gz) file. A malformed line (invalid UTF-8, bad
// JSON, not an object, a missing or non-string "chosen"/"rejected", no shared
// "\n\nAssistant:" prompt) is recorded in `skipped` with its line number; with
// strict=true it throws instead ("<path>:<line>: <reason>"). Blank lines are ignored. A
// file with no pairs at all throws either way.
HhReadResult read_hh_pairs(const std::string& path, bool strict = false);

// The folder of shared data (holds hh-rlhf/ and gpt2/): $HH_DATA_DIR if set, else the
// first of ../shared/data relative to the working directory or to the executable's folder
// and its two parents that exists; "" if none does.
std::string find_shared_data_dir();

}  // namespace hh
