// Token datasets: what hh-prepare writes and the trainers read, plus the batch sampler.
//
// Three kinds share one file format (docs/data.md):
//   sft     one sequence per dialogue, with a per-token mask marking assistant tokens
//   pm      records of two sequences: chosen, rejected (each ends in <|endofcontext|>)
//   prompts records of two sequences: prompt (ends in "\n\nAssistant:"), and the
//           reference (chosen) response that followed it in the data
//
// File layout, all little-endian:
//   "HHDATA\0\0"  magic (8 bytes)
//   u32 version (1), u32 kind (sft=1, pm=2, prompts=3)
//   u64 tokenizer fingerprint, u32 vocab size
//   u64 number of sequences S, u64 number of tokens T
//   u32 length + bytes: metadata JSON (source file, flags, counts; informational)
//   u64 offsets[S + 1]      sequence i is tokens[offsets[i], offsets[i+1])
//   i32 tokens[T]
//   u8  mask[T]             sft only: 1 = the token is a training target
//   u64 FNV-1a 64 of every byte before it
// load() checks all of it (magic, version, kind, counts against the file size, offsets
// starting at 0, monotone and ending at T, every token in [0, vocab), mask bytes 0/1,
// checksum) and names the file and the field or byte offset that is wrong.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "data/hh_rlhf.h"

namespace hh {

class Tokenizer;

// A read-only view of n contiguous values (C++17 has no std::span).
template <typename T>
struct Span {
  const T* ptr = nullptr;
  size_t len = 0;
  const T* data() const { return ptr; }
  size_t size() const { return len; }
  bool empty() const { return len == 0; }
  const T* begin() const { return ptr; }
  const T* end() const { return ptr + len; }
  const T& operator[](size_t i) const { return ptr[i]; }
  std::vector<T> to_vector() const { return std::vector<T>(ptr, ptr + len); }
};
using TokenSpan = Span<int32_t>;
using MaskSpan = Span<uint8_t>;

enum class DatasetKind : uint32_t { Sft = 1, Pm = 2, Prompts = 3 };
const char* dataset_kind_name(DatasetKind kind);  // "sft", "pm", "prompts"

inline constexpr uint32_t kDatasetVersion = 1;

// The in-memory form of any dataset file: sequences packed in one token array.
struct TokenDataset {
  DatasetKind kind = DatasetKind::Sft;
  uint64_t tokenizer_fingerprint = 0;
  uint32_t vocab_size = 0;
  std::string meta_json = "{}";
  std::vector<uint64_t> offsets = {0};  // num_sequences() + 1 entries
  std::vector<int32_t> tokens;
  std::vector<uint8_t> mask;  // sft: one per token; empty otherwise

  size_t num_sequences() const { return offsets.size() - 1; }
  TokenSpan sequence(size_t i) const;
  MaskSpan sequence_mask(size_t i) const;  // sft only
  // Appends a sequence (mask: one 0/1 byte per id, for sft; nullptr otherwise).
  void add(const std::vector<int32_t>& ids, const std::vector<uint8_t>* seq_mask = nullptr);
};

std::vector<uint8_t> serialize_dataset(const TokenDataset& ds);
// Validates everything listed at the top. `what` names the source in errors.
TokenDataset parse_dataset(const uint8_t* data, size_t size, const std::string& what);
void save_dataset(const std::string& path, const TokenDataset& ds);  // atomic
// Loads and validates; throws unless the file is of kind `expected`. With a tokenizer,
// also refuses a dataset made with another one (fingerprint or vocab size differs):
// "dataset X was made with another tokenizer".
TokenDataset load_dataset(const std::string& path, DatasetKind expected,
                          const Tokenizer* tokenizer);
// The same check against a fingerprint and vocabulary size given directly.
TokenDataset load_dataset(const std::string& path, DatasetKind expected, uint64_t fingerprint,
                          uint32_t vocab_size);
// Validates the file but accepts any tokenizer (inspection tools).
TokenDataset load_dataset_unchecked(const std::string& path, DatasetKind expected);
// Validates the file, whatever its kind and tokenizer.
TokenDataset read_dataset_file(const std::string& path);

// ---------------------------------------------------------------------------------------
// Typed readers for the trainers.

class SftDataset {
 public:
  static SftDataset load(const std::string& path, const Tokenizer* tokenizer = nullptr);
  explicit SftDataset(TokenDataset ds);
  size_t size() const { return ds_.num_sequences(); }
  TokenSpan sequence(size_t i) const { return ds_.sequence(i); }
  MaskSpan mask(size_t i) const { return ds_.sequence_mask(i); }  // 1 = train on this token
  const TokenDataset& raw() const { return ds_; }

 private:
  TokenDataset ds_;
};

class PmDataset {
 public:
  static PmDataset load(const std::string& path, const Tokenizer* tokenizer = nullptr);
  explicit PmDataset(TokenDataset ds);
  size_t size() const { return ds_.num_sequences() / 2; }
  TokenSpan chosen(size_t i) const { return ds_.sequence(2 * i); }
  TokenSpan rejected(size_t i) const { return ds_.sequence(2 * i + 1); }
  const TokenDataset& raw() const { return ds_; }

 private:
  TokenDataset ds_;
};

class PromptDataset {
 public:
  static PromptDataset load(const std::string& path, const Tokenizer* tokenizer = nullptr);
  explicit PromptDataset(TokenDataset ds);
  size_t size() const { return ds_.num_sequences() / 2; }
  TokenSpan prompt(size_t i) const { return ds_.sequence(2 * i); }
  // The chosen response from the data (no end token), e.g. for win rates against it.
  TokenSpan reference(size_t i) const { return ds_.sequence(2 * i + 1); }
  const TokenDataset& raw() const { return ds_; }

 private:
  TokenDataset ds_;
};

// ---------------------------------------------------------------------------------------
// Tokenizing dialogues (one function for sft, pm and prompts alike).

// What dataset building needs from a tokenizer; tests can plug in a synthetic one.
struct TextEncoder {
  // Must be safe to call from several threads at once (builders tokenize in parallel).
  std::function<std::vector<int32_t>(std::string_view)> encode;
  int32_t eot_id = -1;             // <|endoftext|>
  int32_t end_of_context_id = -1;  // <|endofcontext|>, -1 if the tokenizer lacks it
  uint32_t vocab_size = 0;
  uint64_t fingerprint = 0;
  static TextEncoder from(const Tokenizer& tokenizer);  // keeps a reference to it
};

struct TokenizedDialogue {
  std::vector<int32_t> ids;
  std::vector<uint8_t> mask;  // 1 on assistant-turn text and on the "\n\nHuman:" ending it
};

// Segment-wise: the preamble, then for each turn encode(marker) followed by encode(text),
// concatenated. Masks are therefore exact, and a prompt (ending in "\n\nAssistant:")
// tokenizes to a prefix of the whole dialogue's ids.
TokenizedDialogue tokenize_dialogue(const Dialogue& dialogue, const TextEncoder& encoder);
TokenizedDialogue tokenize_dialogue(std::string_view text, const TextEncoder& encoder);

// Keeps the last max_len items (the end survives); returns true if it cut any.
bool truncate_left(std::vector<int32_t>* ids, size_t max_len, std::vector<uint8_t>* mask = nullptr);

// ---------------------------------------------------------------------------------------
// Building datasets from HH pairs.

enum class SftWhich { Chosen, Both };

struct BuildOptions {
  size_t max_len = 512;         // sft and pm: tokens per sequence, end token included
  size_t max_prompt_len = 384;  // prompts: tokens per prompt
  SftWhich which = SftWhich::Chosen;
  bool strict = false;  // a pair that would be skipped throws instead
};

struct BuildStats {
  int64_t pairs_in = 0;
  int64_t examples = 0;   // sequences (sft), pairs (pm) or prompts written
  int64_t sequences = 0;  // sequences counted in tokens: examples, or 2 x pairs for pm
  int64_t tokens = 0;     // tokens in those sequences (prompts: reference responses not counted)
  int64_t max_length = 0;
  int64_t truncated = 0;                                // sequences cut from the left
  std::map<std::string, std::vector<int64_t>> skipped;  // reason -> source line numbers
  std::vector<int64_t> prompts_differ;  // lines whose responses span several turns (kept)
  double mean_length() const { return sequences ? double(tokens) / double(sequences) : 0.0; }
  int64_t skipped_total() const;
};

// sft: each chosen (or chosen and rejected) dialogue + <|endoftext|>, left-truncated to
// max_len. Skips dialogues whose final assistant response is empty.
TokenDataset build_sft(const std::vector<HhPair>& pairs, const TextEncoder& encoder,
                       const BuildOptions& options, BuildStats* stats);
// pm: chosen and rejected, each left-truncated to max_len - 1, then <|endofcontext|>.
// Skips identical pairs and empty responses (pair_problem). Throws if the tokenizer has
// no <|endofcontext|>.
TokenDataset build_pm(const std::vector<HhPair>& pairs, const TextEncoder& encoder,
                      const BuildOptions& options, BuildStats* stats);
// prompts: the shared prompt left-truncated to max_prompt_len, and the chosen response.
TokenDataset build_prompts(const std::vector<HhPair>& pairs, const TextEncoder& encoder,
                           const BuildOptions& options, BuildStats* stats);

// ---------------------------------------------------------------------------------------
// Batches.

// Deterministic shuffled epochs of [0, n_items), sharded over ranks.
//
// Epoch e is a Fisher-Yates permutation drawn from Rng(hash(seed, e)); the epochs are
// read back to back as one stream. Each step takes the next batch_size * world indices of
// the stream (crossing into the next epoch when one runs out, so every batch is full and
// every index appears once per epoch); rank r gets the r-th run of batch_size of them. So
// batch_size is the PER-RANK batch, and world ranks with batch B/world see exactly the
// indices one rank with batch B sees. The cursor (epoch, position in that epoch) is the
// whole state: save it with a checkpoint and set_cursor() resumes exactly.
class BatchSampler {
 public:
  BatchSampler(size_t n_items, size_t batch_size, uint64_t seed, int rank = 0, int world = 1,
               bool shuffle = true);

  std::vector<size_t> next_batch();  // this rank's batch_size indices

  struct Cursor {
    uint64_t epoch = 0;
    uint64_t position = 0;  // in [0, n_items)
  };
  Cursor cursor() const { return cursor_; }
  void set_cursor(Cursor c);  // throws if position >= n_items
  // The epoch the next batch starts in (== number of full passes so far).
  uint64_t epoch() const { return cursor_.epoch; }
  size_t batch_size() const { return batch_size_; }
  size_t global_batch_size() const { return batch_size_ * static_cast<size_t>(world_); }
  size_t n_items() const { return n_items_; }
  // The permutation of one epoch (identity without shuffle).
  std::vector<size_t> epoch_order(uint64_t epoch) const;

 private:
  size_t item_at(uint64_t epoch, uint64_t position);  // through a cached permutation

  size_t n_items_, batch_size_;
  uint64_t seed_;
  int rank_, world_;
  bool shuffle_;
  Cursor cursor_;
  uint64_t cached_epoch_ = ~uint64_t{0};
  std::vector<size_t> cached_order_;
};

}  // namespace hh
