// Byte-level BPE: building from parts, the encoder (pre-tokens -> cached BPE), the
// decoder and the binary file format.
#include "tokenizer/tokenizer.h"

#include <atomic>
#include <cstring>
#include <queue>

#include "core/error.h"
#include "core/fileio.h"
#include "tokenizer/pretokenizer.h"
#include "tokenizer/tokenizer_impl.h"

namespace hh {
namespace {

constexpr char kMagic[8] = {'H', 'H', 'T', 'O', 'K', 0, 0, 0};
constexpr uint32_t kVersion = 1;
constexpr uint32_t kMaxMerges = 1u << 24;
constexpr uint32_t kMaxSpecials = 1u << 16;
constexpr size_t kMaxSpecialLength = 256;
// Pre-tokens up to this many bytes use the simple O(n^2) merge loop on the stack.
constexpr size_t kShortWord = 64;

std::atomic<uint64_t> next_instance_id{1};

// A fast hash of a short byte string (8 bytes at a time, multiply-xorshift mixing).
inline uint64_t hash_bytes(const uint8_t* s, size_t n) {
  uint64_t h = 0x9E3779B97F4A7C15ull ^ (n * 0xFF51AFD7ED558CCDull);
  while (n >= 8) {
    uint64_t v;
    std::memcpy(&v, s, 8);
    h = (h ^ v) * 0xBF58476D1CE4E5B9ull;
    h ^= h >> 29;
    s += 8;
    n -= 8;
  }
  uint64_t v = 0;
  std::memcpy(&v, s, n);
  h = (h ^ v) * 0x94D049BB133111EBull;
  h ^= h >> 32;
  return h;
}

// Per-thread cache pre-token bytes -> ids, for the tokenizer that used it last. encode()
// is const and may run on many threads at once, so each thread keeps its own.
struct EncodeCache {
  struct Slot {
    uint64_t hash = 0;
    uint32_t key_offset = 0, key_length = 0;  // into keys
    uint32_t ids_offset = 0, ids_length = 0;  // into ids; key_length 0 = empty slot
  };
  static constexpr size_t kMaxKeyBytes = 32u << 20;  // start over beyond this

  uint64_t owner = 0;
  std::vector<Slot> slots;
  std::string keys;
  std::vector<int32_t> ids;
  size_t count = 0;

  void clear(uint64_t new_owner) {
    owner = new_owner;
    slots.assign(1 << 10, Slot{});
    keys.clear();
    ids.clear();
    count = 0;
  }
  const Slot* find(const uint8_t* s, size_t n, uint64_t h) const {
    size_t mask = slots.size() - 1;
    for (size_t i = h & mask;; i = (i + 1) & mask) {
      const Slot& slot = slots[i];
      if (slot.key_length == 0) return nullptr;
      if (slot.hash == h && slot.key_length == n &&
          std::memcmp(keys.data() + slot.key_offset, s, n) == 0)
        return &slot;
    }
  }
  void insert(const uint8_t* s, size_t n, uint64_t h, const int32_t* word_ids, size_t count_ids) {
    if (keys.size() + n > kMaxKeyBytes) clear(owner);
    if ((count + 1) * 2 > slots.size()) grow();
    Slot slot;
    slot.hash = h;
    slot.key_offset = static_cast<uint32_t>(keys.size());
    slot.key_length = static_cast<uint32_t>(n);
    slot.ids_offset = static_cast<uint32_t>(ids.size());
    slot.ids_length = static_cast<uint32_t>(count_ids);
    keys.append(reinterpret_cast<const char*>(s), n);
    ids.insert(ids.end(), word_ids, word_ids + count_ids);
    place(slot);
    ++count;
  }
  void place(const Slot& slot) {
    size_t mask = slots.size() - 1;
    size_t i = slot.hash & mask;
    while (slots[i].key_length != 0) i = (i + 1) & mask;
    slots[i] = slot;
  }
  void grow() {
    std::vector<Slot> old(slots.size() * 2);
    old.swap(slots);
    for (const Slot& slot : old)
      if (slot.key_length != 0) place(slot);
  }
};

EncodeCache& thread_cache(uint64_t owner) {
  static thread_local EncodeCache cache;
  if (cache.owner != owner) cache.clear(owner);
  return cache;
}

}  // namespace

// Short pre-token: ids[] holds the current parts and rank[i] the rank of (ids[i],
// ids[i+1]); repeatedly merge the lowest-ranked pair (leftmost on ties), as GPT-2 does.
void Tokenizer::Impl::encode_word(const uint8_t* s, size_t n, std::vector<int32_t>& out) const {
  if (n == 1) {
    out.push_back(byte_to_id[s[0]]);
    return;
  }
  if (n > kShortWord) {
    encode_word_long(s, n, out);
    return;
  }
  int32_t ids[kShortWord];
  uint32_t rank[kShortWord];
  size_t m = n;
  for (size_t i = 0; i < n; ++i) ids[i] = byte_to_id[s[i]];
  for (size_t i = 0; i + 1 < m; ++i) rank[i] = ranks.rank(ids[i], ids[i + 1]);
  while (m > 1) {
    uint32_t best = PairRankMap::kNone;
    size_t at = 0;
    for (size_t i = 0; i + 1 < m; ++i) {
      if (rank[i] < best) {
        best = rank[i];
        at = i;
      }
    }
    if (best == PairRankMap::kNone) break;
    ids[at] = 256 + static_cast<int32_t>(best);
    // Remove part at+1 and the pair rank that started there.
    std::memmove(ids + at + 1, ids + at + 2, (m - at - 2) * sizeof(int32_t));
    if (m >= at + 3) std::memmove(rank + at + 1, rank + at + 2, (m - at - 3) * sizeof(uint32_t));
    --m;
    if (at + 1 < m) rank[at] = ranks.rank(ids[at], ids[at + 1]);
    if (at > 0) rank[at - 1] = ranks.rank(ids[at - 1], ids[at]);
  }
  out.insert(out.end(), ids, ids + m);
}

// Long pre-token (e.g. a long run of spaces or symbols): parts in a doubly linked list and
// candidate merges in a min-heap of (rank, position), checked when popped. Ranks only
// grow as merges happen, so popping (rank, position) order equals GPT-2's
// lowest-rank-leftmost rule, in O(n log n).
void Tokenizer::Impl::encode_word_long(const uint8_t* s, size_t n,
                                       std::vector<int32_t>& out) const {
  std::vector<int32_t> ids(n);
  std::vector<int32_t> prev(n), next(n);
  for (size_t i = 0; i < n; ++i) {
    ids[i] = byte_to_id[s[i]];
    prev[i] = static_cast<int32_t>(i) - 1;
    next[i] = i + 1 < n ? static_cast<int32_t>(i + 1) : -1;
  }
  struct Candidate {
    uint32_t rank;
    int32_t pos;  // left part
    int32_t left, right;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> heap;
  auto push = [&](int32_t pos) {
    if (pos < 0 || next[pos] < 0) return;
    uint32_t r = ranks.rank(ids[pos], ids[next[pos]]);
    if (r != PairRankMap::kNone) heap.push({r, pos, ids[pos], ids[next[pos]]});
  };
  for (size_t i = 0; i + 1 < n; ++i) push(static_cast<int32_t>(i));
  std::vector<bool> alive(n, true);
  while (!heap.empty()) {
    Candidate c = heap.top();
    heap.pop();
    int32_t right = next[c.pos];
    if (!alive[c.pos] || right < 0 || ids[c.pos] != c.left || ids[right] != c.right) continue;
    ids[c.pos] = 256 + static_cast<int32_t>(c.rank);
    alive[right] = false;
    next[c.pos] = next[right];
    if (next[right] >= 0) prev[next[right]] = c.pos;
    push(prev[c.pos]);
    push(c.pos);
  }
  for (int32_t i = 0; i >= 0; i = next[i]) out.push_back(ids[i]);
}

// A default-constructed tokenizer is the plain byte tokenizer: 256 tokens, no merges, no
// special tokens (so it is always safe to use).
Tokenizer::Tokenizer() {
  std::vector<uint8_t> identity(256);
  for (int i = 0; i < 256; ++i) identity[i] = static_cast<uint8_t>(i);
  impl_ = std::move(from_parts(identity, {}, {}).impl_);
}
Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

Tokenizer Tokenizer::from_parts(const std::vector<uint8_t>& id_to_byte,
                                const std::vector<std::pair<int32_t, int32_t>>& merges,
                                const std::vector<std::string>& specials) {
  HH_CHECK(id_to_byte.size() == 256, "tokenizer: byte table has ", id_to_byte.size(),
           " entries, expected 256");
  HH_CHECK(merges.size() <= kMaxMerges, "tokenizer: too many merges (", merges.size(), ")");
  HH_CHECK(specials.size() <= kMaxSpecials, "tokenizer: too many special tokens");
  Tokenizer tok(std::make_unique<Impl>());
  Impl& t = *tok.impl_;
  bool seen[256] = {};
  for (int i = 0; i < 256; ++i) {
    uint8_t b = id_to_byte[i];
    HH_CHECK(!seen[b], "tokenizer: byte ", int(b), " has two base tokens");
    seen[b] = true;
    t.id_to_byte[i] = b;
    t.byte_to_id[b] = i;
  }
  t.merges = merges;
  t.specials = specials;
  t.ranks.reset(merges.size());
  t.token_offset.reserve(256 + merges.size() + specials.size() + 1);
  t.token_offset.push_back(0);
  for (int i = 0; i < 256; ++i) {
    t.token_bytes.push_back(static_cast<char>(t.id_to_byte[i]));
    t.token_offset.push_back(static_cast<uint32_t>(t.token_bytes.size()));
  }
  for (size_t r = 0; r < merges.size(); ++r) {
    int32_t left = merges[r].first, right = merges[r].second;
    int64_t limit = 256 + static_cast<int64_t>(r);
    HH_CHECK(left >= 0 && left < limit && right >= 0 && right < limit, "tokenizer: merge ", r, " (",
             left, ", ", right, ") refers to a token that does not exist yet");
    HH_CHECK(t.ranks.insert(left, right, static_cast<uint32_t>(r)), "tokenizer: merge ", r, " (",
             left, ", ", right, ") is a duplicate");
    HH_CHECK(t.token_bytes.size() < (1ull << 31), "tokenizer: tokens too long");
    // Copy through a temporary: appending a substring of itself may reallocate.
    std::string joined =
        t.token_bytes.substr(t.token_offset[left], t.token_offset[left + 1] - t.token_offset[left]);
    joined.append(t.token_bytes, t.token_offset[right],
                  t.token_offset[right + 1] - t.token_offset[right]);
    t.token_bytes += joined;
    t.token_offset.push_back(static_cast<uint32_t>(t.token_bytes.size()));
  }
  for (size_t k = 0; k < specials.size(); ++k) {
    const std::string& name = specials[k];
    HH_CHECK(!name.empty() && name.size() <= kMaxSpecialLength, "tokenizer: special token ", k,
             " has length ", name.size(), " (must be 1..", kMaxSpecialLength, ")");
    for (size_t j = 0; j < k; ++j)
      HH_CHECK(specials[j] != name, "tokenizer: special token '", name, "' appears twice");
    t.token_bytes += name;
    t.token_offset.push_back(static_cast<uint32_t>(t.token_bytes.size()));
  }
  // Fingerprint: FNV-1a over the byte table, the merges and the special names.
  ByteWriter w;
  w.bytes(t.id_to_byte, 256);
  for (const auto& m : merges) {
    w.i32(m.first);
    w.i32(m.second);
  }
  for (const auto& name : specials) w.str(name);
  t.fingerprint = fnv1a64(w.buffer().data(), w.buffer().size());
  t.instance_id = next_instance_id.fetch_add(1);
  return tok;
}

std::vector<int32_t> Tokenizer::encode(std::string_view text) const {
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 16);
  const Impl& t = *impl_;
  EncodeCache& cache = thread_cache(t.instance_id);
  const uint8_t* s = reinterpret_cast<const uint8_t*>(text.data());
  size_t n = text.size();
  size_t pos = 0;
  std::vector<int32_t> word;
  while (pos < n) {
    size_t end = next_pretoken_end(s, n, pos);
    const uint8_t* p = s + pos;
    size_t len = end - pos;
    pos = end;
    if (len == 1) {
      out.push_back(t.byte_to_id[p[0]]);
      continue;
    }
    uint64_t h = hash_bytes(p, len);
    if (const EncodeCache::Slot* slot = cache.find(p, len, h)) {
      const int32_t* ids = cache.ids.data() + slot->ids_offset;
      out.insert(out.end(), ids, ids + slot->ids_length);
      continue;
    }
    word.clear();
    t.encode_word(p, len, word);
    out.insert(out.end(), word.begin(), word.end());
    if (len <= 256) cache.insert(p, len, h, word.data(), word.size());
  }
  return out;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  const Impl& t = *impl_;
  int32_t vocab = vocab_size();
  size_t total = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    int32_t id = ids[i];
    HH_CHECK(id >= 0 && id < vocab, "decode: id ", id, " at position ", i,
             " is outside the vocabulary (0..", vocab - 1, ")");
    total += t.token_offset[id + 1] - t.token_offset[id];
  }
  std::string out;
  out.reserve(total);
  for (int32_t id : ids)
    out.append(t.token_bytes, t.token_offset[id], t.token_offset[id + 1] - t.token_offset[id]);
  return out;
}

std::string Tokenizer::decode_token(int32_t id) const {
  const Impl& t = *impl_;
  HH_CHECK(id >= 0 && id < vocab_size(), "decode_token: id ", id, " is outside the vocabulary (0..",
           vocab_size() - 1, ")");
  return t.token_bytes.substr(t.token_offset[id], t.token_offset[id + 1] - t.token_offset[id]);
}

int Tokenizer::vocab_size() const { return static_cast<int>(impl_->token_offset.size()) - 1; }

int32_t Tokenizer::special_id(std::string_view name) const {
  const Impl& t = *impl_;
  for (size_t k = 0; k < t.specials.size(); ++k)
    if (t.specials[k] == name) return static_cast<int32_t>(256 + t.merges.size() + k);
  HH_FAIL("tokenizer has no special token '", name, "'");
}

bool Tokenizer::has_special(std::string_view name) const {
  for (const auto& s : impl_->specials)
    if (s == name) return true;
  return false;
}

int32_t Tokenizer::eot_id() const { return special_id(kEndOfText); }
uint64_t Tokenizer::fingerprint() const { return impl_->fingerprint; }
int Tokenizer::num_merges() const { return static_cast<int>(impl_->merges.size()); }
const std::vector<std::pair<int32_t, int32_t>>& Tokenizer::merges() const { return impl_->merges; }
const std::vector<std::string>& Tokenizer::specials() const { return impl_->specials; }

// File: magic "HHTOK\0\0\0", u32 version, u32 merges, u32 specials, 256 bytes byte table,
// merges as (u32 left, u32 right), specials as (u32 length, bytes, u32 id), then u64
// FNV-1a of everything before it. All little-endian.
std::vector<uint8_t> Tokenizer::serialize() const {
  const Impl& t = *impl_;
  ByteWriter w;
  w.bytes(kMagic, sizeof(kMagic));
  w.u32(kVersion);
  w.u32(static_cast<uint32_t>(t.merges.size()));
  w.u32(static_cast<uint32_t>(t.specials.size()));
  w.bytes(t.id_to_byte, 256);
  for (const auto& m : t.merges) {
    w.u32(static_cast<uint32_t>(m.first));
    w.u32(static_cast<uint32_t>(m.second));
  }
  for (size_t k = 0; k < t.specials.size(); ++k) {
    w.str(t.specials[k]);
    w.u32(static_cast<uint32_t>(256 + t.merges.size() + k));
  }
  uint64_t checksum = fnv1a64(w.buffer().data(), w.buffer().size());
  w.u64(checksum);
  return std::move(w.buffer());
}

Tokenizer Tokenizer::deserialize(const uint8_t* data, size_t size, const std::string& what) {
  ByteReader r(data, size, what);
  char magic[8];
  if (size < sizeof(magic)) r.fail(str_cat("too short (", size, " bytes) to be a tokenizer file"));
  r.bytes(magic, sizeof(magic));
  if (std::memcmp(magic, kMagic, sizeof(magic)) != 0) r.fail("bad magic: not an hh tokenizer file");
  size_t at = r.offset();
  uint32_t version = r.u32();
  if (version != kVersion)
    HH_FAIL(what, ": at byte ", at, ": unsupported version ", version, " (expected ", kVersion,
            ")");
  const size_t kHeader = 8 + 4 + 4 + 4 + 256;
  if (size < kHeader + 8)
    r.fail(str_cat("truncated: ", size, " bytes, a tokenizer file has at least ", kHeader + 8));
  uint64_t stored;
  std::memcpy(&stored, data + size - 8, 8);  // little-endian hosts only (x86, ARM)
  if (stored != fnv1a64(data, size - 8))
    HH_FAIL(what, ": at byte ", size - 8, ": checksum mismatch (file truncated or corrupted)");
  ByteReader body(data, size - 8, what);
  body.skip(12);
  uint32_t num_merges = body.u32();
  uint32_t num_specials = body.u32();
  if (num_merges > kMaxMerges || num_merges > body.remaining() / 8)
    body.fail(str_cat("merge count ", num_merges, " is impossible for the file size"));
  if (num_specials > kMaxSpecials) body.fail(str_cat("special count ", num_specials, " too large"));
  std::vector<uint8_t> id_to_byte(256);
  body.bytes(id_to_byte.data(), 256);
  std::vector<std::pair<int32_t, int32_t>> merges(num_merges);
  for (uint32_t i = 0; i < num_merges; ++i) {
    size_t off = body.offset();
    uint32_t left = body.u32(), right = body.u32();
    if (left >= 256 + i || right >= 256 + i)
      HH_FAIL(what, ": at byte ", off, ": merge ", i, " (", left, ", ", right,
              ") refers to a token that does not exist yet");
    merges[i] = {static_cast<int32_t>(left), static_cast<int32_t>(right)};
  }
  std::vector<std::string> specials(num_specials);
  for (uint32_t k = 0; k < num_specials; ++k) {
    size_t off = body.offset();
    specials[k] = body.str(kMaxSpecialLength);
    uint32_t id = body.u32();
    if (id != 256 + num_merges + k)
      HH_FAIL(what, ": at byte ", off, ": special token ", k, " has id ", id, ", expected ",
              256 + num_merges + k);
  }
  if (!body.at_end()) body.fail(str_cat(body.remaining(), " unexpected bytes before the checksum"));
  try {
    return from_parts(id_to_byte, merges, specials);
  } catch (const Error& e) {
    HH_FAIL(what, ": ", e.what());
  }
}

Tokenizer Tokenizer::load(const std::string& path) {
  std::vector<uint8_t> bytes = read_file_bytes(path);
  return deserialize(bytes.data(), bytes.size(), path);
}

void Tokenizer::save(const std::string& path) const {
  std::vector<uint8_t> bytes = serialize();
  write_file_atomic(path, bytes.data(), bytes.size());
}

Tokenizer synthetic_tokenizer(int vocab, const std::vector<std::string>& specials) {
  const int fixed = 256 + static_cast<int>(specials.size());
  HH_CHECK(vocab >= fixed && vocab <= fixed + 65536, "vocabulary ", vocab, " must be in [", fixed,
           ", ", fixed + 65536, "] for the synthetic benchmark tokenizer");
  std::vector<uint8_t> identity(256);
  for (int i = 0; i < 256; i++) identity[i] = static_cast<uint8_t>(i);
  std::vector<std::pair<int32_t, int32_t>> merges;
  for (int r = 0; r < vocab - fixed; r++) merges.push_back({r % 256, (r / 256) % 256});
  return Tokenizer::from_parts(identity, merges, specials);
}

}  // namespace hh
