// Byte-level BPE tokenizer (GPT-2 style): pre-tokenize with GPT-2's rules, map bytes to
// base tokens 0..255 order-free via the byte table, apply merges in rank order.
// Owner: src/tokenizer. This header is the contract the rest of hh codes against.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace hh {

class Tokenizer {
 public:
  Tokenizer();
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

  int vocab_size() const;                            // including special tokens
  int32_t special_id(std::string_view name) const;  // throws if not a special token
  bool has_special(std::string_view name) const;
  int32_t eot_id() const;                            // "<|endoftext|>"
  // A hash of merges + specials: datasets and checkpoints record it to catch mismatches.
  uint64_t fingerprint() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// Special tokens hh uses.
inline constexpr const char* kEndOfText = "<|endoftext|>";
inline constexpr const char* kEndOfContext = "<|endofcontext|>";  // the PM scores here

}  // namespace hh
