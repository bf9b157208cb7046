#include "data/dataset.h"

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "core/error.h"
#include "core/fileio.h"
#include "core/rng.h"
#include "tokenizer/tokenizer.h"  // kEndOfText, kEndOfContext (header constants only)

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "dataset files are little-endian and read by memcpy");

namespace hh {

namespace {

constexpr char kMagic[8] = {'H', 'H', 'D', 'A', 'T', 'A', '\0', '\0'};
constexpr size_t kMaxMetaBytes = 1 << 20;

std::string hex64(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

bool is_blank(std::string_view s) {
  return s.find_first_not_of(" \t\r\n") == std::string_view::npos;
}

}  // namespace

const char* dataset_kind_name(DatasetKind kind) {
  switch (kind) {
    case DatasetKind::Sft:
      return "sft";
    case DatasetKind::Pm:
      return "pm";
    case DatasetKind::Prompts:
      return "prompts";
  }
  return "unknown";
}

TokenSpan TokenDataset::sequence(size_t i) const {
  HH_CHECK(i < num_sequences(), "dataset: sequence ", i, " out of range (", num_sequences(),
           " sequences)");
  return TokenSpan{tokens.data() + offsets[i], static_cast<size_t>(offsets[i + 1] - offsets[i])};
}

MaskSpan TokenDataset::sequence_mask(size_t i) const {
  HH_CHECK(kind == DatasetKind::Sft, "dataset: only sft datasets have masks");
  HH_CHECK(i < num_sequences(), "dataset: sequence ", i, " out of range (", num_sequences(),
           " sequences)");
  return MaskSpan{mask.data() + offsets[i], static_cast<size_t>(offsets[i + 1] - offsets[i])};
}

void TokenDataset::add(const std::vector<int32_t>& ids, const std::vector<uint8_t>* seq_mask) {
  HH_CHECK((kind == DatasetKind::Sft) == (seq_mask != nullptr),
           "dataset: a mask is given exactly for sft sequences");
  if (seq_mask) {
    HH_CHECK(seq_mask->size() == ids.size(), "dataset: mask has ", seq_mask->size(),
             " entries for ", ids.size(), " tokens");
    mask.insert(mask.end(), seq_mask->begin(), seq_mask->end());
  }
  tokens.insert(tokens.end(), ids.begin(), ids.end());
  offsets.push_back(tokens.size());
}

// Header, metadata, offsets, tokens, (mask), then FNV-1a 64 of all of the above.
std::vector<uint8_t> serialize_dataset(const TokenDataset& ds) {
  HH_CHECK(
      ds.offsets.size() >= 1 && ds.offsets.front() == 0 && ds.offsets.back() == ds.tokens.size(),
      "dataset: offsets do not cover the tokens");
  HH_CHECK(ds.kind != DatasetKind::Sft || ds.mask.size() == ds.tokens.size(),
           "dataset: sft mask has ", ds.mask.size(), " entries for ", ds.tokens.size(), " tokens");
  ByteWriter w;
  w.bytes(kMagic, sizeof(kMagic));
  w.u32(kDatasetVersion);
  w.u32(static_cast<uint32_t>(ds.kind));
  w.u64(ds.tokenizer_fingerprint);
  w.u32(ds.vocab_size);
  w.u64(ds.num_sequences());
  w.u64(ds.tokens.size());
  w.str(ds.meta_json);
  w.bytes(ds.offsets.data(), ds.offsets.size() * sizeof(uint64_t));
  w.bytes(ds.tokens.data(), ds.tokens.size() * sizeof(int32_t));
  if (ds.kind == DatasetKind::Sft) w.bytes(ds.mask.data(), ds.mask.size());
  uint64_t checksum = fnv1a64(w.buffer().data(), w.buffer().size());
  w.u64(checksum);
  return std::move(w.buffer());
}

// Structure first (so a truncated file is called truncated), then the checksum, then the
// meaning of the values (which only a buggy writer or a crafted file gets wrong).
TokenDataset parse_dataset(const uint8_t* data, size_t size, const std::string& what) {
  ByteReader r(data, size, what);
  if (size < sizeof(kMagic) || std::memcmp(data, kMagic, sizeof(kMagic)) != 0) {
    HH_FAIL(what, ": not an hh token dataset (bad magic; expected \"HHDATA\")");
  }
  r.skip(sizeof(kMagic));
  uint32_t version = r.u32();
  if (version != kDatasetVersion) {
    r.fail(str_cat("dataset format version ", version, "; this build reads version ",
                   kDatasetVersion));
  }
  TokenDataset ds;
  uint32_t kind = r.u32();
  if (kind < 1 || kind > 3) r.fail(str_cat("unknown dataset kind ", kind));
  ds.kind = static_cast<DatasetKind>(kind);
  ds.tokenizer_fingerprint = r.u64();
  ds.vocab_size = r.u32();
  if (ds.vocab_size == 0) r.fail("vocab size is 0");
  uint64_t n_seq = r.u64();
  uint64_t n_tok = r.u64();
  // Bound the counts by the file size before any arithmetic that could overflow.
  if (n_seq >= size / sizeof(uint64_t) || n_tok > size / sizeof(int32_t)) {
    r.fail(str_cat("header counts (", n_seq, " sequences, ", n_tok, " tokens) exceed the file (",
                   size, " bytes): truncated or corrupt"));
  }
  if (ds.kind != DatasetKind::Sft && n_seq % 2 != 0) {
    r.fail(str_cat(dataset_kind_name(ds.kind), " dataset has an odd number of sequences (", n_seq,
                   "); records are pairs"));
  }
  uint32_t meta_len = r.u32();
  if (meta_len > kMaxMetaBytes || meta_len > r.remaining()) {
    r.fail(str_cat("metadata length ", meta_len, " exceeds the file: truncated or corrupt"));
  }
  size_t meta_at = r.offset();
  const uint8_t* meta = r.skip(meta_len);
  ds.meta_json.assign(reinterpret_cast<const char*>(meta), meta_len);
  uint64_t body = (n_seq + 1) * sizeof(uint64_t) + n_tok * sizeof(int32_t) +
                  (ds.kind == DatasetKind::Sft ? n_tok : 0) + sizeof(uint64_t);
  uint64_t expected = meta_at + meta_len + body;
  if (expected != size) {
    HH_FAIL(what, ": file is ", size, " bytes but its header (", n_seq, " sequences, ", n_tok,
            " tokens) implies ", expected, ": ", size < expected ? "truncated" : "trailing bytes",
            " (corrupt or cut-short file)");
  }
  uint64_t stored = 0;
  std::memcpy(&stored, data + size - sizeof(uint64_t), sizeof(uint64_t));
  uint64_t computed = fnv1a64(data, size - sizeof(uint64_t));
  if (stored != computed) {
    HH_FAIL(what, ": checksum mismatch (stored ", stored, ", computed ", computed,
            "): the file is corrupt");
  }

  size_t offsets_at = r.offset();
  ds.offsets.resize(n_seq + 1);
  r.bytes(ds.offsets.data(), ds.offsets.size() * sizeof(uint64_t));
  if (ds.offsets[0] != 0) HH_FAIL(what, ": offsets[0] is ", ds.offsets[0], ", expected 0");
  for (uint64_t i = 0; i < n_seq; ++i) {
    if (ds.offsets[i + 1] < ds.offsets[i] || ds.offsets[i + 1] > n_tok) {
      HH_FAIL(what, ": offsets[", i + 1, "] = ", ds.offsets[i + 1], " (at byte ",
              offsets_at + (i + 1) * sizeof(uint64_t), ") is not in [offsets[", i,
              "] = ", ds.offsets[i], ", ", n_tok, "]");
    }
  }
  if (ds.offsets[n_seq] != n_tok) {
    HH_FAIL(what, ": last offset is ", ds.offsets[n_seq], ", expected the token count ", n_tok);
  }
  size_t tokens_at = r.offset();
  ds.tokens.resize(n_tok);
  r.bytes(ds.tokens.data(), n_tok * sizeof(int32_t));
  for (uint64_t t = 0; t < n_tok; ++t) {
    int32_t id = ds.tokens[t];
    if (id < 0 || static_cast<uint32_t>(id) >= ds.vocab_size) {
      HH_FAIL(what, ": token ", t, " (at byte ", tokens_at + t * sizeof(int32_t), ") is ", id,
              ", outside the vocabulary [0, ", ds.vocab_size, ")");
    }
  }
  if (ds.kind == DatasetKind::Sft) {
    size_t mask_at = r.offset();
    ds.mask.resize(n_tok);
    r.bytes(ds.mask.data(), n_tok);
    for (uint64_t t = 0; t < n_tok; ++t) {
      if (ds.mask[t] > 1) {
        HH_FAIL(what, ": mask byte ", t, " (at byte ", mask_at + t, ") is ", int(ds.mask[t]),
                ", expected 0 or 1");
      }
    }
  }
  return ds;
}

void save_dataset(const std::string& path, const TokenDataset& ds) {
  std::vector<uint8_t> bytes = serialize_dataset(ds);
  write_file_atomic(path, bytes.data(), bytes.size());
}

TokenDataset load_dataset(const std::string& path, DatasetKind expected, uint64_t fingerprint,
                          uint32_t vocab_size) {
  TokenDataset ds = load_dataset_unchecked(path, expected);
  if (ds.tokenizer_fingerprint != fingerprint || ds.vocab_size != vocab_size) {
    HH_FAIL("dataset ", path, " was made with another tokenizer (fingerprint ",
            hex64(ds.tokenizer_fingerprint), ", vocab ", ds.vocab_size,
            "; this tokenizer: ", hex64(fingerprint), ", vocab ", vocab_size,
            "); run hh-prepare again with this tokenizer");
  }
  return ds;
}

TokenDataset read_dataset_file(const std::string& path) {
  std::vector<uint8_t> bytes = read_file_bytes(path);
  return parse_dataset(bytes.data(), bytes.size(), path);
}

TokenDataset load_dataset_unchecked(const std::string& path, DatasetKind expected) {
  TokenDataset ds = read_dataset_file(path);
  if (ds.kind != expected) {
    HH_FAIL(path, ": is a ", dataset_kind_name(ds.kind), " dataset, expected ",
            dataset_kind_name(expected));
  }
  return ds;
}

SftDataset::SftDataset(TokenDataset ds) : ds_(std::move(ds)) {
  HH_CHECK(ds_.kind == DatasetKind::Sft, "SftDataset: got a ", dataset_kind_name(ds_.kind),
           " dataset");
}
PmDataset::PmDataset(TokenDataset ds) : ds_(std::move(ds)) {
  HH_CHECK(ds_.kind == DatasetKind::Pm, "PmDataset: got a ", dataset_kind_name(ds_.kind),
           " dataset");
}
PromptDataset::PromptDataset(TokenDataset ds) : ds_(std::move(ds)) {
  HH_CHECK(ds_.kind == DatasetKind::Prompts, "PromptDataset: got a ", dataset_kind_name(ds_.kind),
           " dataset");
}

// ---------------------------------------------------------------------------------------
// Tokenizing

// ids = enc(preamble) ++ for each turn: enc(marker) ++ enc(text). The mask marks assistant
// text, and the "\n\nHuman:" that ends an assistant turn (the model learns to hand the
// turn back, which is where generation's stop string cuts).
TokenizedDialogue tokenize_dialogue(const Dialogue& dialogue, const TextEncoder& encoder) {
  TokenizedDialogue out;
  auto append = [&](std::string_view text, uint8_t m) {
    if (text.empty()) return;
    std::vector<int32_t> ids = encoder.encode(text);
    out.ids.insert(out.ids.end(), ids.begin(), ids.end());
    out.mask.insert(out.mask.end(), ids.size(), m);
  };
  append(dialogue.preamble, 0);
  Role previous = Role::Human;
  bool first = true;
  for (const Turn& turn : dialogue.turns) {
    bool ends_assistant_turn = !first && previous == Role::Assistant && turn.role == Role::Human;
    append(turn.role == Role::Human ? kHumanMarker : kAssistantMarker, ends_assistant_turn);
    append(turn.text, turn.role == Role::Assistant);
    previous = turn.role;
    first = false;
  }
  return out;
}

TokenizedDialogue tokenize_dialogue(std::string_view text, const TextEncoder& encoder) {
  return tokenize_dialogue(parse_dialogue(text), encoder);
}

bool truncate_left(std::vector<int32_t>* ids, size_t max_len, std::vector<uint8_t>* mask) {
  if (ids->size() <= max_len) return false;
  size_t cut = ids->size() - max_len;
  ids->erase(ids->begin(), ids->begin() + static_cast<std::ptrdiff_t>(cut));
  if (mask) mask->erase(mask->begin(), mask->begin() + static_cast<std::ptrdiff_t>(cut));
  return true;
}

// ---------------------------------------------------------------------------------------
// Building

int64_t BuildStats::skipped_total() const {
  int64_t n = 0;
  for (const auto& [reason, lines] : skipped) n += static_cast<int64_t>(lines.size());
  return n;
}

namespace {

// What one input pair turns into: records (sft --which both: two; else one), each either
// skipped with a reason or a few sequences (sft: 1 with its mask; pm, prompts: 2).
struct Record {
  std::string skip;
  std::vector<std::vector<int32_t>> seqs;
  std::vector<std::vector<uint8_t>> masks;  // sft only, one per sequence
  size_t counted = 0;                       // leading sequences that count in the stats
  bool truncated = false;
};
using RecordFn = std::function<void(const HhPair&, std::vector<Record>*)>;

// Tokenizes every pair in parallel (encode() must be thread-safe; the Tokenizer's is),
// then assembles the records in input order, so the file does not depend on the thread
// count. Skips and errors are handled in order too: --strict stops at the first one.
TokenDataset build_records(DatasetKind kind, const char* name, const std::vector<HhPair>& pairs,
                           const TextEncoder& encoder, const BuildOptions& options,
                           BuildStats* stats, const RecordFn& make_records) {
  HH_CHECK(encoder.vocab_size > 0, "dataset: encoder has no vocabulary size");
  TokenDataset ds;
  ds.kind = kind;
  ds.tokenizer_fingerprint = encoder.fingerprint;
  ds.vocab_size = encoder.vocab_size;
  *stats = BuildStats{};
  stats->pairs_in = static_cast<int64_t>(pairs.size());

  std::vector<std::vector<Record>> records(pairs.size());
  std::vector<std::string> errors(pairs.size());
  const int64_t n = static_cast<int64_t>(pairs.size());
#pragma omp parallel for schedule(dynamic, 8)
  for (int64_t i = 0; i < n; ++i) {
    try {
      make_records(pairs[i], &records[i]);
    } catch (const std::exception& e) {  // exceptions must not leave the parallel loop
      errors[i] = e.what();
    }
  }

  for (size_t i = 0; i < pairs.size(); ++i) {
    const HhPair& pair = pairs[i];
    if (!errors[i].empty()) throw Error(str_cat("input line ", pair.line, ": ", errors[i]));
    if (pair.prompts_differ) stats->prompts_differ.push_back(pair.line);
    for (Record& rec : records[i]) {
      if (!rec.skip.empty()) {
        HH_CHECK(!options.strict, "input line ", pair.line, ": ", rec.skip,
                 " (strict mode stops instead of skipping)");
        stats->skipped[rec.skip].push_back(pair.line);
        continue;
      }
      for (size_t s = 0; s < rec.seqs.size(); ++s) {
        ds.add(rec.seqs[s], rec.masks.empty() ? nullptr : &rec.masks[s]);
        if (s < rec.counted) {
          int64_t len = static_cast<int64_t>(rec.seqs[s].size());
          ++stats->sequences;
          stats->tokens += len;
          stats->max_length = std::max(stats->max_length, len);
        }
      }
      ++stats->examples;
      if (rec.truncated) ++stats->truncated;
    }
    records[i].clear();  // free memory as we go
    records[i].shrink_to_fit();
  }
  if (stats->examples == 0) {
    std::string reasons;
    for (const auto& [reason, lines] : stats->skipped) {
      reasons += str_cat(reasons.empty() ? "" : ", ", reason, ": ", lines.size());
    }
    HH_FAIL("no ", name, " examples: all ", stats->pairs_in, " pairs were skipped (",
            reasons.empty() ? "no input pairs" : reasons, ")");
  }
  return ds;
}

}  // namespace

// Each dialogue + <|endoftext|> (a target when the last turn is the assistant's, so the
// model learns to stop), left-truncated so the final response survives. Skips dialogues
// whose final response is empty.
TokenDataset build_sft(const std::vector<HhPair>& pairs, const TextEncoder& encoder,
                       const BuildOptions& options, BuildStats* stats) {
  HH_CHECK(options.max_len >= 2, "--max-len must be at least 2, got ", options.max_len);
  HH_CHECK(encoder.eot_id >= 0, "the tokenizer has no ", kEndOfText, " token");
  auto one = [&](const std::string& text, const std::string& response, const char* empty) {
    Record rec;
    if (is_blank(response)) {
      rec.skip = empty;
      return rec;
    }
    Dialogue dialogue = parse_dialogue(text);
    TokenizedDialogue td = tokenize_dialogue(dialogue, encoder);
    bool assistant_last = !dialogue.turns.empty() && dialogue.turns.back().role == Role::Assistant;
    td.ids.push_back(encoder.eot_id);
    td.mask.push_back(assistant_last ? 1 : 0);
    rec.truncated = truncate_left(&td.ids, options.max_len, &td.mask);
    rec.seqs.push_back(std::move(td.ids));
    rec.masks.push_back(std::move(td.mask));
    rec.counted = 1;
    return rec;
  };
  return build_records(
      DatasetKind::Sft, "sft", pairs, encoder, options, stats,
      [&](const HhPair& pair, std::vector<Record>* out) {
        out->push_back(one(pair.chosen, pair.chosen_response, "empty chosen response"));
        if (options.which == SftWhich::Both) {
          out->push_back(one(pair.rejected, pair.rejected_response, "empty rejected response"));
        }
      });
}

// chosen, rejected: dialogue tokens, left-truncated to max_len - 1, + <|endofcontext|>, so
// the PM's score position (the last token) exists in every record. Skips identical pairs
// and empty responses (pair_problem), and pairs that truncation made identical.
TokenDataset build_pm(const std::vector<HhPair>& pairs, const TextEncoder& encoder,
                      const BuildOptions& options, BuildStats* stats) {
  HH_CHECK(options.max_len >= 2, "--max-len must be at least 2, got ", options.max_len);
  HH_CHECK(encoder.end_of_context_id >= 0, "the tokenizer has no ", kEndOfContext,
           " special token, where the preference model reads its score; make a tokenizer "
           "that has it (hh-bpe)");
  return build_records(
      DatasetKind::Pm, "pm", pairs, encoder, options, stats,
      [&](const HhPair& pair, std::vector<Record>* out) {
        Record rec;
        rec.skip = pair_problem(pair);
        if (rec.skip.empty()) {
          std::vector<int32_t> chosen = tokenize_dialogue(pair.chosen, encoder).ids;
          std::vector<int32_t> rejected = tokenize_dialogue(pair.rejected, encoder).ids;
          bool cut = truncate_left(&chosen, options.max_len - 1);
          rec.truncated = truncate_left(&rejected, options.max_len - 1) || cut;
          chosen.push_back(encoder.end_of_context_id);
          rejected.push_back(encoder.end_of_context_id);
          if (chosen == rejected) rec.skip = "chosen and rejected identical after truncation";
          rec.seqs = {std::move(chosen), std::move(rejected)};
          rec.counted = 2;
        }
        out->push_back(std::move(rec));
      });
}

// The prompt is a token prefix of the chosen dialogue (segment-wise tokenizing), so
// prompt + reference == tokenize_dialogue(chosen) exactly.
TokenDataset build_prompts(const std::vector<HhPair>& pairs, const TextEncoder& encoder,
                           const BuildOptions& options, BuildStats* stats) {
  HH_CHECK(options.max_prompt_len >= 1, "--max-prompt-len must be at least 1");
  return build_records(DatasetKind::Prompts, "prompts", pairs, encoder, options, stats,
                       [&](const HhPair& pair, std::vector<Record>* out) {
                         std::vector<int32_t> full = tokenize_dialogue(pair.chosen, encoder).ids;
                         std::vector<int32_t> prompt = tokenize_dialogue(pair.prompt, encoder).ids;
                         HH_CHECK(prompt.size() <= full.size() &&
                                      std::equal(prompt.begin(), prompt.end(), full.begin()),
                                  "the prompt's tokens are not a prefix of the dialogue's");
                         Record rec;
                         std::vector<int32_t> reference(
                             full.begin() + static_cast<std::ptrdiff_t>(prompt.size()), full.end());
                         rec.truncated = truncate_left(&prompt, options.max_prompt_len);
                         rec.seqs = {std::move(prompt), std::move(reference)};
                         rec.counted = 1;
                         out->push_back(std::move(rec));
                       });
}

// ---------------------------------------------------------------------------------------
// BatchSampler

BatchSampler::BatchSampler(size_t n_items, size_t batch_size, uint64_t seed, int rank, int world,
                           bool shuffle)
    : n_items_(n_items),
      batch_size_(batch_size),
      seed_(seed),
      rank_(rank),
      world_(world),
      shuffle_(shuffle) {
  HH_CHECK(n_items > 0, "BatchSampler: the dataset is empty");
  HH_CHECK(batch_size > 0, "BatchSampler: batch size must be positive");
  HH_CHECK(world >= 1 && rank >= 0 && rank < world, "BatchSampler: rank ", rank,
           " is not in [0, world=", world, ")");
}

// Fisher-Yates with an Rng seeded from (seed, epoch): any epoch can be rebuilt on its own.
std::vector<size_t> BatchSampler::epoch_order(uint64_t epoch) const {
  std::vector<size_t> order(n_items_);
  for (size_t i = 0; i < n_items_; ++i) order[i] = i;
  if (!shuffle_) return order;
  Rng rng(seed_ ^ (0x9e3779b97f4a7c15ull * (epoch + 1)));
  for (size_t i = n_items_ - 1; i > 0; --i) {
    size_t j = static_cast<size_t>(rng.below(i + 1));
    std::swap(order[i], order[j]);
  }
  return order;
}

size_t BatchSampler::item_at(uint64_t epoch, uint64_t position) {
  if (epoch != cached_epoch_) {
    cached_order_ = epoch_order(epoch);
    cached_epoch_ = epoch;
  }
  return cached_order_[position];
}

std::vector<size_t> BatchSampler::next_batch() {
  // This rank's run starts rank * batch_size items into the global batch.
  uint64_t start = cursor_.position + static_cast<uint64_t>(rank_) * batch_size_;
  uint64_t epoch = cursor_.epoch + start / n_items_;
  uint64_t position = start % n_items_;
  std::vector<size_t> batch;
  batch.reserve(batch_size_);
  for (size_t k = 0; k < batch_size_; ++k) {
    batch.push_back(item_at(epoch, position));
    if (++position == n_items_) {
      position = 0;
      ++epoch;
    }
  }
  uint64_t next = cursor_.position + global_batch_size();
  cursor_.epoch += next / n_items_;
  cursor_.position = next % n_items_;
  return batch;
}

void BatchSampler::set_cursor(Cursor c) {
  HH_CHECK(c.position < n_items_, "BatchSampler: cursor position ", c.position,
           " is past the dataset (", n_items_, " items); was it saved for another dataset?");
  cursor_ = c;
}

}  // namespace hh
