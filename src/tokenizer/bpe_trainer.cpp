// BPE training: count pre-tokens, then merge the most frequent adjacent pair again and
// again, updating pair counts only where the merged pair occurs.
#include <algorithm>
#include <queue>
#include <string_view>
#include <unordered_map>

#include "core/error.h"
#include "tokenizer/pretokenizer.h"
#include "tokenizer/tokenizer.h"

namespace hh {
namespace {

inline uint64_t pair_key(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

// Count of one adjacent pair over the corpus (sum of the frequencies of the words it
// occurs in, with multiplicity) and the words it may occur in (a superset: entries go
// stale when merges remove the pair from a word; duplicates possible).
struct PairInfo {
  int64_t count = 0;
  std::vector<int32_t> words;
};

// Max-heap entry; stale when count differs from the pair's current count.
struct HeapEntry {
  int64_t count;
  int32_t left, right;
};
// Priority: higher count, then smaller left id, then smaller right id (deterministic).
struct LowerPriority {
  bool operator()(const HeapEntry& a, const HeapEntry& b) const {
    if (a.count != b.count) return a.count < b.count;
    if (a.left != b.left) return a.left > b.left;
    return a.right > b.right;
  }
};

}  // namespace

Tokenizer Tokenizer::train(const std::vector<std::string_view>& texts,
                           const BpeTrainOptions& options) {
  std::vector<std::string> specials = {kEndOfText};
  for (const std::string& s : options.specials)
    if (s != kEndOfText) specials.push_back(s);
  HH_CHECK(options.vocab_size >= 256 + static_cast<int64_t>(specials.size()), "--vocab-size ",
           options.vocab_size, " is smaller than 256 byte tokens + ", specials.size(),
           " special tokens");
  HH_CHECK(options.min_frequency >= 1, "--min-frequency must be >= 1, got ", options.min_frequency);
  size_t max_merges = static_cast<size_t>(options.vocab_size) - 256 - specials.size();

  // 1. Distinct pre-tokens with their frequencies.
  std::unordered_map<std::string_view, int64_t> word_counts;
  for (std::string_view text : texts) {
    const uint8_t* s = reinterpret_cast<const uint8_t*>(text.data());
    size_t pos = 0;
    while (pos < text.size()) {
      size_t end = next_pretoken_end(s, text.size(), pos);
      if (end - pos > 1) ++word_counts[text.substr(pos, end - pos)];  // 1 byte: no pairs
      pos = end;
    }
  }
  // Sorted by bytes so that the result does not depend on hash order or text order.
  std::vector<std::pair<std::string_view, int64_t>> sorted(word_counts.begin(), word_counts.end());
  std::sort(sorted.begin(), sorted.end());
  std::vector<std::vector<int32_t>> words(sorted.size());
  std::vector<int64_t> freq(sorted.size());
  for (size_t w = 0; w < sorted.size(); ++w) {
    for (char c : sorted[w].first) words[w].push_back(static_cast<uint8_t>(c));
    freq[w] = sorted[w].second;
  }
  word_counts.clear();

  // 2. Initial pair counts and the pair -> words index.
  std::unordered_map<uint64_t, PairInfo> pairs;
  pairs.reserve(1 << 16);
  for (size_t w = 0; w < words.size(); ++w) {
    const std::vector<int32_t>& sym = words[w];
    for (size_t i = 0; i + 1 < sym.size(); ++i) {
      PairInfo& info = pairs[pair_key(sym[i], sym[i + 1])];
      info.count += freq[w];
      if (info.words.empty() || info.words.back() != static_cast<int32_t>(w))
        info.words.push_back(static_cast<int32_t>(w));
    }
  }
  std::priority_queue<HeapEntry, std::vector<HeapEntry>, LowerPriority> heap;
  for (const auto& [key, info] : pairs)
    heap.push(
        {info.count, static_cast<int32_t>(key >> 32), static_cast<int32_t>(key & 0xFFFFFFFFu)});

  // 3. Merge loop.
  std::vector<std::pair<int32_t, int32_t>> merges;
  std::vector<uint32_t> word_stamp(words.size(), 0);
  std::vector<uint64_t> touched;
  while (merges.size() < max_merges && !heap.empty()) {
    HeapEntry top = heap.top();
    heap.pop();
    uint64_t key = pair_key(top.left, top.right);
    auto found = pairs.find(key);
    if (found == pairs.end() || found->second.count != top.count) continue;  // stale
    if (top.count < options.min_frequency) break;
    const int32_t a = top.left, b = top.right;
    const int32_t merged = 256 + static_cast<int32_t>(merges.size());
    merges.push_back({a, b});
    const uint32_t stamp = static_cast<uint32_t>(merges.size());
    std::vector<int32_t> candidates = std::move(found->second.words);
    touched.clear();
    auto add = [&](int32_t l, int32_t r, int64_t delta, int32_t w) {
      uint64_t k = pair_key(l, r);
      PairInfo& info = pairs[k];
      info.count += delta;
      if (delta > 0 && (info.words.empty() || info.words.back() != w)) info.words.push_back(w);
      touched.push_back(k);
    };
    for (int32_t w : candidates) {
      if (word_stamp[w] == stamp) continue;
      word_stamp[w] = stamp;
      std::vector<int32_t>& sym = words[w];
      const int64_t f = freq[w];
      // Left to right, non-overlapping; neighbours are the current (already merged) ones.
      size_t out = 0;
      for (size_t i = 0; i < sym.size();) {
        if (i + 1 < sym.size() && sym[i] == a && sym[i + 1] == b) {
          add(a, b, -f, w);
          if (out > 0) {
            add(sym[out - 1], a, -f, w);
            add(sym[out - 1], merged, f, w);
          }
          if (i + 2 < sym.size()) {
            add(b, sym[i + 2], -f, w);
            add(merged, sym[i + 2], f, w);
          }
          sym[out++] = merged;
          i += 2;
        } else {
          sym[out++] = sym[i++];
        }
      }
      sym.resize(out);
    }
    pairs.erase(key);
    std::sort(touched.begin(), touched.end());
    touched.erase(std::unique(touched.begin(), touched.end()), touched.end());
    for (uint64_t k : touched) {
      auto it = pairs.find(k);
      if (it == pairs.end()) continue;
      if (it->second.count <= 0) {
        pairs.erase(it);
        continue;
      }
      heap.push(
          {it->second.count, static_cast<int32_t>(k >> 32), static_cast<int32_t>(k & 0xFFFFFFFFu)});
    }
  }

  std::vector<uint8_t> identity(256);
  for (int i = 0; i < 256; ++i) identity[i] = static_cast<uint8_t>(i);
  return from_parts(identity, merges, specials);
}

}  // namespace hh
