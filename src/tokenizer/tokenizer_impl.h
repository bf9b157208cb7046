// Internals of the tokenizer shared by tokenizer.cpp (encoder, decoder, files) and
// bpe_trainer.cpp / gpt2_import.cpp.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace hh {

// Open-addressing hash map from an adjacent pair of ids (left << 32 | right) to the merge
// rank; the merged token's id is 256 + rank. Built once, then read-only.
class PairRankMap {
 public:
  static constexpr uint32_t kNone = 0xFFFFFFFFu;

  void reset(size_t expected) {
    size_t cap = 16;
    while (cap < expected * 2 + 16) cap *= 2;
    keys_.assign(cap, kEmpty);
    ranks_.assign(cap, kNone);
    mask_ = cap - 1;
  }
  // Returns false when the pair is already present.
  bool insert(int32_t left, int32_t right, uint32_t rank) {
    uint64_t key = pack(left, right);
    for (size_t i = slot(key);; i = (i + 1) & mask_) {
      if (keys_[i] == key) return false;
      if (keys_[i] == kEmpty) {
        keys_[i] = key;
        ranks_[i] = rank;
        return true;
      }
    }
  }
  uint32_t rank(int32_t left, int32_t right) const {
    uint64_t key = pack(left, right);
    for (size_t i = slot(key);; i = (i + 1) & mask_) {
      if (keys_[i] == key) return ranks_[i];
      if (keys_[i] == kEmpty) return kNone;
    }
  }

 private:
  static constexpr uint64_t kEmpty = ~0ull;
  static uint64_t pack(int32_t l, int32_t r) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(l)) << 32) | static_cast<uint32_t>(r);
  }
  size_t slot(uint64_t key) const {
    return static_cast<size_t>((key * 0x9E3779B97F4A7C15ull) >> 20) & mask_;
  }
  std::vector<uint64_t> keys_;
  std::vector<uint32_t> ranks_;
  size_t mask_ = 0;
};

struct Tokenizer::Impl {
  uint8_t id_to_byte[256];
  int32_t byte_to_id[256];
  std::vector<std::pair<int32_t, int32_t>> merges;
  std::vector<std::string> specials;
  // Bytes of every token (merges and specials too): token_bytes[offset[id], offset[id+1]).
  std::string token_bytes;
  std::vector<uint32_t> token_offset;
  PairRankMap ranks;
  uint64_t fingerprint = 0;
  uint64_t instance_id = 0;  // keys the per-thread encode cache

  // BPE over one pre-token: appends its ids to out.
  void encode_word(const uint8_t* s, size_t n, std::vector<int32_t>& out) const;
  void encode_word_long(const uint8_t* s, size_t n, std::vector<int32_t>& out) const;
};

}  // namespace hh
