// Byte-level BPE tokenizer (GPT-2 style): pre-tokenize with GPT-2's rules, map bytes to
// base tokens 0..255 order-free via the byte table, apply merges in rank order.
// Owner: src/tokenizer. This header is the contract the rest of hh codes against.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace hh {

// Options of Tokenizer::train.
struct BpeTrainOptions {
  int vocab_size = 8192;      // 256 byte tokens + merges + special tokens
  int64_t min_frequency = 2;  // stop when the most frequent pair occurs fewer times
  // Special tokens after "<|endoftext|>" (always present, first), e.g. kEndOfContext.
  std::vector<std::string> specials;
};

class Tokenizer {
 public:
  Tokenizer();  // the plain byte tokenizer: 256 tokens, no merges, no special tokens
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  // The binary tokenizer file (magic, version, merges, special tokens). load() validates
  // it and names the file and offset on failure; save() writes atomically.
  static Tokenizer load(const std::string& path);
  void save(const std::string& path) const;

  // Plain text to ids. Special-token strings in `text` are NOT treated specially (so data
  // can never inject an end-of-text); use special_id() to append them.
  std::vector<int32_t> encode(std::string_view text) const;
  // Ids back to the exact bytes (special tokens decode to their strings).
  std::string decode(const std::vector<int32_t>& ids) const;
  std::string decode_token(int32_t id) const;

  // Learns merges from texts (pre-tokenized with GPT-2's rules): counts each distinct
  // pre-token once with its frequency, then repeatedly merges the most frequent adjacent
  // pair (ties: smaller left id, then smaller right id), updating pair counts only in the
  // words that contain the merged pair, via a max-heap with lazy invalidation.
  // Deterministic: the result depends only on the multiset of texts.
  static Tokenizer train(const std::vector<std::string_view>& texts,
                         const BpeTrainOptions& options);
  // GPT-2's encoder.json + vocab.bpe: ids identical to GPT-2's (<|endoftext|> = 50256);
  // extra_specials get the ids after it.
  static Tokenizer import_gpt2(const std::string& encoder_json_path,
                               const std::string& vocab_bpe_path,
                               const std::vector<std::string>& extra_specials = {});
  // Builds a tokenizer from its parts and validates them: base token i stands for byte
  // id_to_byte[i] (a permutation of 0..255); merge r joins two earlier tokens into token
  // 256 + r; special k gets id 256 + merges.size() + k.
  static Tokenizer from_parts(const std::vector<uint8_t>& id_to_byte,
                              const std::vector<std::pair<int32_t, int32_t>>& merges,
                              const std::vector<std::string>& specials);
  // The file image that save() writes / load() reads; `what` names it in errors.
  std::vector<uint8_t> serialize() const;
  static Tokenizer deserialize(const uint8_t* data, size_t size, const std::string& what);

  int vocab_size() const;                           // including special tokens
  int32_t special_id(std::string_view name) const;  // throws if not a special token
  bool has_special(std::string_view name) const;
  int32_t eot_id() const;  // "<|endoftext|>"
  // A hash of merges + specials: datasets and checkpoints record it to catch mismatches.
  uint64_t fingerprint() const;
  int num_merges() const;
  const std::vector<std::pair<int32_t, int32_t>>& merges() const;
  const std::vector<std::string>& specials() const;  // in id order

  struct Impl;

 private:
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Special tokens hh uses.
inline constexpr const char* kEndOfText = "<|endoftext|>";
inline constexpr const char* kEndOfContext = "<|endofcontext|>";  // the PM scores here

// A stand-in tokenizer of exactly `vocab` tokens for benchmarks of random models: the 256
// bytes, merges of byte pairs (each decodes to 2 bytes), then `specials` (the last ids).
Tokenizer synthetic_tokenizer(int vocab, const std::vector<std::string>& specials);

}  // namespace hh
