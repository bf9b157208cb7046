// Tests of src/data: the HH-RLHF reader, token dataset files, dataset building and the
// batch sampler. Synthetic byte-level encoders test the logic; the shared HH files and a
// small trained tokenizer test it end to end (skipped when the shared data is missing).
#include <gtest/gtest.h>
#include <omp.h>
#include <zlib.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/fileio.h"
#include "core/json.h"
#include "data/dataset.h"
#include "data/hh_rlhf.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

namespace hh {
namespace {

bool fast_mode() {
  const char* v = std::getenv("HH_TEST_FAST");
  return v && *v && std::string(v) != "0";
}

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

// The message of the hh::Error that f throws ("" and a test failure if none is thrown).
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected an hh::Error";
  return "";
}

using hh::test::TempDir;

void write_text(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  f << text;
}

// gzip-compresses text into path (one member).
void write_gzip(const std::string& path, const std::string& text, const char* mode = "wb") {
  gzFile g = gzopen(path.c_str(), mode);
  ASSERT_NE(g, nullptr);
  if (!text.empty()) {
    ASSERT_EQ(gzwrite(g, text.data(), static_cast<unsigned>(text.size())), int(text.size()));
  }
  ASSERT_EQ(gzclose(g), Z_OK);
}

std::string shared_hh_dir() { return std::string(HH_SOURCE_DIR) + "/../shared/data/hh-rlhf"; }

#define SKIP_WITHOUT_SHARED_DATA()                                          \
  if (!file_exists(shared_hh_dir() + "/harmless-dev.jsonl.gz")) {           \
    GTEST_SKIP() << "shared HH-RLHF data not found at " << shared_hh_dir(); \
  }

std::string jsonl_line(const std::string& chosen, const std::string& rejected) {
  std::string out = "{\"chosen\": ";
  json_escape(out, chosen);
  out += ", \"rejected\": ";
  json_escape(out, rejected);
  out += "}\n";
  return out;
}

// A byte-level encoder: id = byte, then <|endoftext|> = 256, <|endofcontext|> = 257.
TextEncoder byte_encoder(bool with_end_of_context = true) {
  TextEncoder e;
  e.encode = [](std::string_view text) {
    std::vector<int32_t> ids;
    for (unsigned char c : text) ids.push_back(c);
    return ids;
  };
  e.eot_id = 256;
  e.end_of_context_id = with_end_of_context ? 257 : -1;
  e.vocab_size = 258;
  e.fingerprint = 0x1234abcdull;
  return e;
}

std::string bytes_of(TokenSpan ids) {
  std::string s;
  for (int32_t id : ids) {
    EXPECT_LT(id, 256);
    s += static_cast<char>(id);
  }
  return s;
}

HhPair split_ok(const std::string& chosen, const std::string& rejected, int64_t line = 1) {
  HhPair p;
  std::string reason = split_pair(chosen, rejected, &p);
  EXPECT_EQ(reason, "");
  p.line = line;
  return p;
}

// ---------------------------------------------------------------------------------------
// Parsing

TEST(Dialogue, SplitsTurnsAtMarkers) {
  Dialogue d =
      parse_dialogue("\n\nHuman: hi there\n\nAssistant: hello!\n\nHuman: bye\n\nAssistant:");
  EXPECT_EQ(d.preamble, "");
  ASSERT_EQ(d.turns.size(), 4u);
  EXPECT_EQ(d.turns[0].role, Role::Human);
  EXPECT_EQ(d.turns[0].text, " hi there");
  EXPECT_EQ(d.turns[1].role, Role::Assistant);
  EXPECT_EQ(d.turns[1].text, " hello!");
  EXPECT_EQ(d.turns[2].text, " bye");
  EXPECT_EQ(d.turns[3].role, Role::Assistant);
  EXPECT_EQ(d.turns[3].text, "");

  Dialogue p = parse_dialogue("no markers: Human: here");
  EXPECT_EQ(p.preamble, "no markers: Human: here");
  EXPECT_TRUE(p.turns.empty());
}

TEST(Dialogue, SplitPairAtLastSharedAssistantMarker) {
  HhPair p;
  std::string prompt = "\n\nHuman: q\n\nAssistant: a\n\nHuman: q2\n\nAssistant:";
  ASSERT_EQ(split_pair(prompt + " yes", prompt + " no", &p), "");
  EXPECT_EQ(p.prompt, prompt);
  EXPECT_EQ(p.chosen_response, " yes");
  EXPECT_EQ(p.rejected_response, " no");
  EXPECT_FALSE(p.prompts_differ);

  // The chosen response goes on for another turn: the prompt is still the shared part.
  std::string shared = "\n\nHuman: q\n\nAssistant:";
  ASSERT_EQ(split_pair(shared + " a\n\nHuman: more\n\nAssistant: b", shared + " c", &p), "");
  EXPECT_EQ(p.prompt, shared);
  EXPECT_EQ(p.chosen_response, " a\n\nHuman: more\n\nAssistant: b");
  EXPECT_TRUE(p.prompts_differ);

  EXPECT_NE(split_pair("\n\nHuman: x", "\n\nHuman: y", &p), "");
  EXPECT_NE(split_pair("\n\nHuman: x\n\nAssistant: a", "\n\nHuman: y\n\nAssistant: a", &p), "");
}

TEST(Dialogue, PairProblems) {
  std::string prompt = "\n\nHuman: q\n\nAssistant:";
  EXPECT_EQ(pair_problem(split_ok(prompt + " a", prompt + " b")), "");
  EXPECT_EQ(pair_problem(split_ok(prompt + " a", prompt + " a")),
            "chosen and rejected are identical");
  EXPECT_EQ(pair_problem(split_ok(prompt + " ", prompt + " b")), "empty chosen response");
  EXPECT_EQ(pair_problem(split_ok(prompt + " a", prompt + "\n")), "empty rejected response");
}

TEST(Utf8, FindsInvalidSequences) {
  EXPECT_EQ(find_invalid_utf8("plain ascii"), std::string::npos);
  EXPECT_EQ(find_invalid_utf8("caf\xc3\xa9 \xe2\x80\x99 \xf0\x9f\x98\x80"), std::string::npos);
  EXPECT_EQ(find_invalid_utf8("ab\xff"), 2u);            // never valid
  EXPECT_EQ(find_invalid_utf8("a\xc3"), 1u);             // cut short
  EXPECT_EQ(find_invalid_utf8("\xc0\xaf"), 0u);          // overlong '/'
  EXPECT_EQ(find_invalid_utf8("x\xed\xa0\x80"), 1u);     // UTF-16 surrogate
  EXPECT_EQ(find_invalid_utf8("\xf4\x90\x80\x80"), 0u);  // above U+10FFFF
  EXPECT_EQ(find_invalid_utf8("\xe2\x28\xa1"), 0u);      // bad continuation
}

TEST(HhReader, SharedFilesSplitIntoPromptAndResponses) {
  SKIP_WITHOUT_SHARED_DATA();
  struct Expect {
    const char* name;
    size_t pairs;
    std::vector<int64_t> multi_turn;
  };
  for (const Expect& ex : {Expect{"harmless-train.jsonl.gz", 1800, {1255, 1689}},
                           Expect{"harmless-dev.jsonl.gz", 200, {151, 153}}}) {
    SCOPED_TRACE(ex.name);
    HhReadResult r = read_hh_pairs(shared_hh_dir() + "/" + ex.name, /*strict=*/true);
    EXPECT_EQ(r.pairs.size(), ex.pairs);
    EXPECT_TRUE(r.skipped.empty());
    std::vector<int64_t> multi_turn;
    for (size_t i = 0; i < r.pairs.size(); ++i) {
      const HhPair& p = r.pairs[i];
      EXPECT_EQ(p.line, static_cast<int64_t>(i + 1));
      ASSERT_GE(p.prompt.size(), kAssistantMarker.size());
      EXPECT_EQ(p.prompt.substr(p.prompt.size() - kAssistantMarker.size()), kAssistantMarker);
      EXPECT_EQ(p.prompt.rfind(std::string(kHumanMarker), 0), 0u) << "line " << p.line;
      EXPECT_EQ(p.chosen, p.prompt + p.chosen_response);
      EXPECT_EQ(p.rejected, p.prompt + p.rejected_response);
      if (p.prompts_differ) multi_turn.push_back(p.line);
    }
    EXPECT_EQ(multi_turn, ex.multi_turn);
  }
}

TEST(HhReader, SharedTrainHasFourEmptyResponses) {
  SKIP_WITHOUT_SHARED_DATA();
  HhReadResult r = read_hh_pairs(shared_hh_dir() + "/harmless-train.jsonl.gz");
  std::vector<int64_t> problems;
  for (const HhPair& p : r.pairs) {
    if (!pair_problem(p).empty()) problems.push_back(p.line);
  }
  EXPECT_EQ(problems, (std::vector<int64_t>{87, 517, 926, 1104}));
}

TEST(HhReader, MalformedLinesReportedWithLineNumbers) {
  TempDir dir;
  std::string prompt = "\n\nHuman: q\n\nAssistant:";
  std::string text = jsonl_line(prompt + " a", prompt + " b") +                // 1 ok
                     "{\"chosen\": \"x\", \"rejected\": \n" +                  // 2 bad JSON
                     "{\"chosen\": \"\\n\\nHuman: q\\n\\nAssistant: a\"}\n" +  // 3 missing
                     "{\"chosen\": 5, \"rejected\": \"x\"}\n" +                // 4 non-string
                     "[1, 2]\n" +                                              // 5 not an object
                     "\n" +                                                    // 6 blank: ignored
                     "{\"chosen\": \"caf\xff\", \"rejected\": \"x\"}\n" +      // 7 bad UTF-8
                     jsonl_line("\n\nHuman: no reply", "\n\nHuman: none") +    // 8 no Assistant
                     jsonl_line(prompt + " c", prompt + " d") +                // 9 ok
                     jsonl_line(prompt + " e", prompt + " f").substr(0, 30);   // 10 cut, no \n
  write_text(dir.file("bad.jsonl"), text);
  HhReadResult r = read_hh_pairs(dir.file("bad.jsonl"));
  EXPECT_EQ(r.lines, 10);
  ASSERT_EQ(r.pairs.size(), 2u);
  EXPECT_EQ(r.pairs[0].line, 1);
  EXPECT_EQ(r.pairs[1].line, 9);
  EXPECT_EQ(r.pairs[1].chosen_response, " c");
  ASSERT_EQ(r.skipped.size(), 7u);
  std::vector<int64_t> lines;
  for (const auto& s : r.skipped) lines.push_back(s.line);
  EXPECT_EQ(lines, (std::vector<int64_t>{2, 3, 4, 5, 7, 8, 10}));
  EXPECT_TRUE(contains(r.skipped[0].reason, "invalid JSON")) << r.skipped[0].reason;
  EXPECT_TRUE(contains(r.skipped[1].reason, "missing field \"rejected\"")) << r.skipped[1].reason;
  EXPECT_TRUE(contains(r.skipped[2].reason, "\"chosen\" is not a string")) << r.skipped[2].reason;
  EXPECT_TRUE(contains(r.skipped[3].reason, "not a JSON object")) << r.skipped[3].reason;
  EXPECT_TRUE(contains(r.skipped[4].reason, "invalid UTF-8")) << r.skipped[4].reason;
  EXPECT_TRUE(contains(r.skipped[5].reason, "Assistant")) << r.skipped[5].reason;

  std::string err = error_of([&] { read_hh_pairs(dir.file("bad.jsonl"), /*strict=*/true); });
  EXPECT_TRUE(contains(err, "bad.jsonl:2:")) << err;
  EXPECT_TRUE(contains(err, "strict")) << err;
}

TEST(HhReader, EmptyAndPairlessInputsAreErrors) {
  TempDir dir;
  write_text(dir.file("empty.jsonl"), "");
  EXPECT_TRUE(contains(error_of([&] { read_hh_pairs(dir.file("empty.jsonl")); }), "empty input"));
  write_gzip(dir.file("empty.jsonl.gz"), "");
  EXPECT_TRUE(
      contains(error_of([&] { read_hh_pairs(dir.file("empty.jsonl.gz")); }), "empty input"));
  write_text(dir.file("junk.jsonl"), "not json\n{}\n");
  std::string err = error_of([&] { read_hh_pairs(dir.file("junk.jsonl")); });
  EXPECT_TRUE(contains(err, "no usable pairs")) << err;
  EXPECT_TRUE(contains(err, "line 1")) << err;
  EXPECT_TRUE(
      contains(error_of([&] { read_hh_pairs(dir.file("missing.jsonl")); }), "missing.jsonl"));
}

TEST(LineReader, GzipMembersCrlfAndLastLineWithoutNewline) {
  TempDir dir;
  write_gzip(dir.file("a.gz"), "one\r\ntwo\n");
  write_gzip(dir.file("a.gz"), "three\nfour", "ab");  // a second gzip member
  LineReader r(dir.file("a.gz"));
  EXPECT_TRUE(r.is_gzip());
  std::vector<std::string> lines;
  std::string line;
  while (r.next(&line)) lines.push_back(line);
  EXPECT_EQ(lines, (std::vector<std::string>{"one", "two", "three", "four"}));
  EXPECT_EQ(r.line_number(), 4);
}

TEST(LineReader, LongLinesAcrossChunks) {
  TempDir dir;
  std::string big(200000, 'x');
  write_gzip(dir.file("big.gz"), big + "\n" + big + "y\n");
  LineReader r(dir.file("big.gz"));
  std::string line;
  ASSERT_TRUE(r.next(&line));
  EXPECT_EQ(line, big);
  ASSERT_TRUE(r.next(&line));
  EXPECT_EQ(line, big + "y");
  EXPECT_FALSE(r.next(&line));
}

// The error reading every line of `path` gives ("" when there is none).
std::string error_reading_lines(const std::string& path) {
  return error_of([&] {
    LineReader r(path);
    std::string line;
    while (r.next(&line)) {
    }
  });
}

TEST(LineReader, TruncatedGzipIsAnError) {
  TempDir dir;
  std::string text;
  for (int i = 0; i < 2000; ++i) text += "line " + std::to_string(i * 7919 % 10007) + "\n";
  write_gzip(dir.file("full.gz"), text);
  std::vector<uint8_t> bytes = read_file_bytes(dir.file("full.gz"));
  // Cut short anywhere (even inside the 8-byte CRC/length trailer): an error, not fewer lines.
  for (size_t keep :
       {bytes.size() / 2, bytes.size() - 9, bytes.size() - 4, bytes.size() - 1, size_t{12}}) {
    SCOPED_TRACE(keep);
    write_file_atomic(dir.file("cut.gz"), bytes.data(), keep);
    std::string err = error_reading_lines(dir.file("cut.gz"));
    EXPECT_TRUE(contains(err, "cut short")) << err;
    EXPECT_TRUE(contains(err, "cut.gz")) << err;
  }
  // A flipped byte in the compressed data: corrupt data or a CRC mismatch.
  bytes[bytes.size() / 2] ^= 0x55;
  write_file_atomic(dir.file("flip.gz"), bytes.data(), bytes.size());
  std::string err = error_reading_lines(dir.file("flip.gz"));
  EXPECT_TRUE(contains(err, "corrupt gzip")) << err;
}

// Bytes after the last gzip member that do not start another one are refused, naming
// where they start: one byte, or a block of zeros, or text.
TEST(LineReader, TrailingGarbageAfterGzipIsAnError) {
  TempDir dir;
  write_gzip(dir.file("ok.gz"), "one\ntwo\n");
  const std::vector<uint8_t> gz = read_file_bytes(dir.file("ok.gz"));
  for (const std::string& tail :
       {std::string("\n"), std::string(512, '\0'), std::string("garbage")}) {
    SCOPED_TRACE(tail.size());
    std::vector<uint8_t> bytes = gz;
    bytes.insert(bytes.end(), tail.begin(), tail.end());
    write_file_atomic(dir.file("tail.gz"), bytes.data(), bytes.size());
    std::string err = error_reading_lines(dir.file("tail.gz"));
    EXPECT_TRUE(contains(err, "tail.gz")) << err;
    EXPECT_TRUE(contains(err, "trailing garbage")) << err;
    EXPECT_TRUE(contains(err, "from compressed byte " + std::to_string(gz.size()))) << err;
  }
}

TEST(HhReader, SharedGzipCutInHalfIsAnError) {
  SKIP_WITHOUT_SHARED_DATA();
  TempDir dir;
  std::vector<uint8_t> bytes = read_file_bytes(shared_hh_dir() + "/harmless-dev.jsonl.gz");
  write_file_atomic(dir.file("half.jsonl.gz"), bytes.data(), bytes.size() / 2);
  std::string err = error_of([&] { read_hh_pairs(dir.file("half.jsonl.gz")); });
  EXPECT_TRUE(contains(err, "half.jsonl.gz")) << err;
  EXPECT_TRUE(contains(err, "cut short")) << err;
}

// ---------------------------------------------------------------------------------------
// Tokenizing and building (synthetic byte-level encoder)

TEST(Tokenize, MaskMarksAssistantTextAndTheHumanMarkerEndingIt) {
  TextEncoder enc = byte_encoder();
  std::string text = "\n\nHuman: hi\n\nAssistant: yo\n\nHuman: ok?\n\nAssistant: sure";
  TokenizedDialogue td = tokenize_dialogue(text, enc);
  ASSERT_EQ(td.ids.size(), text.size());  // segment-wise, still every byte once
  ASSERT_EQ(td.mask.size(), td.ids.size());
  std::string all, masked;
  for (size_t i = 0; i < td.ids.size(); ++i) {
    all += static_cast<char>(td.ids[i]);
    if (td.mask[i]) masked += static_cast<char>(td.ids[i]);
  }
  EXPECT_EQ(all, text);
  EXPECT_EQ(masked, " yo\n\nHuman: sure");
}

TEST(Tokenize, TruncateLeftKeepsTheEnd) {
  std::vector<int32_t> ids = {1, 2, 3, 4, 5};
  std::vector<uint8_t> mask = {0, 0, 1, 1, 0};
  EXPECT_FALSE(truncate_left(&ids, 5, &mask));
  EXPECT_TRUE(truncate_left(&ids, 3, &mask));
  EXPECT_EQ(ids, (std::vector<int32_t>{3, 4, 5}));
  EXPECT_EQ(mask, (std::vector<uint8_t>{1, 1, 0}));
}

std::vector<HhPair> sample_pairs() {
  std::string p1 = "\n\nHuman: what is 2+2?\n\nAssistant:";
  std::string p2 = "\n\nHuman: a long question " + std::string(100, 'q') + "\n\nAssistant:";
  return {split_ok(p1 + " 4", p1 + " 5", 1), split_ok(p2 + " short", p2 + " other", 2),
          split_ok(p1 + " same", p1 + " same", 3), split_ok(p1 + " ", p1 + " x", 4)};
}

TEST(Build, PmTruncatesFromTheLeftAndEndsWithEndOfContext) {
  TextEncoder enc = byte_encoder();
  BuildOptions opt;
  opt.max_len = 64;
  BuildStats stats;
  std::vector<HhPair> pairs = sample_pairs();
  PmDataset pm(build_pm(pairs, enc, opt, &stats));
  ASSERT_EQ(pm.size(), 2u);
  EXPECT_EQ(stats.examples, 2);
  EXPECT_EQ(stats.truncated, 1);
  EXPECT_EQ(stats.skipped_total(), 2);
  EXPECT_EQ(stats.skipped.at("chosen and rejected are identical"), std::vector<int64_t>{3});
  EXPECT_EQ(stats.skipped.at("empty chosen response"), std::vector<int64_t>{4});
  // Short pair: the whole dialogue + <|endofcontext|>.
  TokenSpan c0 = pm.chosen(0);
  EXPECT_EQ(c0[c0.size() - 1], 257);
  EXPECT_EQ(bytes_of(TokenSpan{c0.data(), c0.size() - 1}), pairs[0].chosen);
  // Long pair: exactly max_len tokens, the end of the dialogue survives.
  for (TokenSpan s : {pm.chosen(1), pm.rejected(1)}) {
    ASSERT_EQ(s.size(), 64u);
    EXPECT_EQ(s[63], 257);
  }
  std::string tail = bytes_of(TokenSpan{pm.rejected(1).data(), 63});
  EXPECT_EQ(tail, pairs[1].rejected.substr(pairs[1].rejected.size() - 63));
  EXPECT_EQ(stats.tokens, int64_t(c0.size() + pm.rejected(0).size() + 128));

  opt.strict = true;
  std::string err = error_of([&] { build_pm(pairs, enc, opt, &stats); });
  EXPECT_TRUE(contains(err, "line 3")) << err;
  EXPECT_TRUE(contains(err, "identical")) << err;

  opt.strict = false;
  EXPECT_TRUE(contains(error_of([&] { build_pm(pairs, byte_encoder(false), opt, &stats); }),
                       kEndOfContext));
  std::vector<HhPair> bad = {pairs[2], pairs[3]};
  std::string none = error_of([&] { build_pm(bad, enc, opt, &stats); });
  EXPECT_TRUE(contains(none, "all 2 pairs were skipped")) << none;
}

TEST(Build, SftEndsWithEndOfTextAndMasksAssistantTokens) {
  TextEncoder enc = byte_encoder();
  BuildOptions opt;
  opt.max_len = 40;
  BuildStats stats;
  std::vector<HhPair> pairs = sample_pairs();
  SftDataset sft(build_sft(pairs, enc, opt, &stats));
  EXPECT_EQ(sft.size(), 3u);  // line 4's chosen response is empty
  EXPECT_EQ(stats.skipped.at("empty chosen response"), std::vector<int64_t>{4});
  TokenSpan s0 = sft.sequence(0);
  MaskSpan m0 = sft.mask(0);
  EXPECT_EQ(s0[s0.size() - 1], 256);
  EXPECT_EQ(m0[m0.size() - 1], 1);
  EXPECT_EQ(bytes_of(TokenSpan{s0.data(), s0.size() - 1}), pairs[0].chosen);
  std::string masked;
  for (size_t i = 0; i + 1 < s0.size(); ++i) {
    if (m0[i]) masked += static_cast<char>(s0[i]);
  }
  EXPECT_EQ(masked, " 4");
  EXPECT_EQ(sft.sequence(1).size(), 40u);  // truncated, ends with the response + eot
  EXPECT_EQ(stats.truncated, 1);

  opt.which = SftWhich::Both;
  SftDataset both(build_sft(pairs, enc, opt, &stats));
  EXPECT_EQ(both.size(), 7u);  // 4 pairs x 2 minus line 4's empty chosen
  EXPECT_EQ(bytes_of(TokenSpan{both.sequence(1).data(), both.sequence(1).size() - 1}),
            pairs[0].rejected);
}

TEST(Build, PromptsArePrefixesAndKeepTheReference) {
  TextEncoder enc = byte_encoder();
  BuildOptions opt;
  opt.max_prompt_len = 48;
  BuildStats stats;
  std::vector<HhPair> pairs = sample_pairs();
  pairs.push_back(split_ok("\n\nHuman: q\n\nAssistant: a\n\nHuman: more\n\nAssistant: b",
                           "\n\nHuman: q\n\nAssistant: c", 5));
  PromptDataset prompts(build_prompts(pairs, enc, opt, &stats));
  ASSERT_EQ(prompts.size(), 5u);
  EXPECT_EQ(stats.prompts_differ, std::vector<int64_t>{5});
  EXPECT_EQ(bytes_of(prompts.prompt(0)), pairs[0].prompt);
  EXPECT_EQ(bytes_of(prompts.reference(0)), " 4");
  EXPECT_EQ(prompts.prompt(1).size(), 48u);
  EXPECT_EQ(bytes_of(prompts.prompt(1)), pairs[1].prompt.substr(pairs[1].prompt.size() - 48));
  EXPECT_EQ(stats.truncated, 1);
  EXPECT_EQ(bytes_of(prompts.prompt(4)), "\n\nHuman: q\n\nAssistant:");
  EXPECT_EQ(bytes_of(prompts.reference(4)), " a\n\nHuman: more\n\nAssistant: b");
}

// ---------------------------------------------------------------------------------------
// Dataset files

TokenDataset small_sft() {
  TokenDataset ds;
  ds.kind = DatasetKind::Sft;
  ds.vocab_size = 300;
  ds.tokenizer_fingerprint = 0xfeedbeefull;
  ds.meta_json = "{\"test\":1}";
  std::vector<int32_t> a = {1, 2, 3, 299};
  std::vector<uint8_t> ma = {0, 1, 1, 1};
  std::vector<int32_t> b = {};
  std::vector<uint8_t> mb = {};
  std::vector<int32_t> c = {7, 8};
  std::vector<uint8_t> mc = {1, 0};
  ds.add(a, &ma);
  ds.add(b, &mb);
  ds.add(c, &mc);
  return ds;
}

// Rewrites the trailing checksum so a test can reach the checks after it.
void fix_checksum(std::vector<uint8_t>* bytes) {
  uint64_t sum = fnv1a64(bytes->data(), bytes->size() - 8);
  std::memcpy(bytes->data() + bytes->size() - 8, &sum, 8);
}

// Byte offsets of the sections of a serialized dataset (see dataset.h).
size_t offsets_at(const TokenDataset& ds) {
  return 8 + 4 + 4 + 8 + 4 + 8 + 8 + 4 + ds.meta_json.size();
}
size_t tokens_at(const TokenDataset& ds) { return offsets_at(ds) + 8 * ds.offsets.size(); }

TEST(DatasetFile, RoundTripAllKinds) {
  TempDir dir;
  TokenDataset sft = small_sft();
  save_dataset(dir.file("a.sft.bin"), sft);
  SftDataset back(load_dataset(dir.file("a.sft.bin"), DatasetKind::Sft, 0xfeedbeefull, 300));
  ASSERT_EQ(back.size(), 3u);
  EXPECT_EQ(back.sequence(0).to_vector(), (std::vector<int32_t>{1, 2, 3, 299}));
  EXPECT_EQ(back.mask(0).to_vector(), (std::vector<uint8_t>{0, 1, 1, 1}));
  EXPECT_TRUE(back.sequence(1).empty());
  EXPECT_EQ(back.sequence(2).to_vector(), (std::vector<int32_t>{7, 8}));
  EXPECT_EQ(back.raw().meta_json, "{\"test\":1}");

  TextEncoder enc = byte_encoder();
  BuildStats stats;
  TokenDataset pm = build_pm(sample_pairs(), enc, BuildOptions{}, &stats);
  save_dataset(dir.file("a.pm.bin"), pm);
  PmDataset pm_back(load_dataset(dir.file("a.pm.bin"), DatasetKind::Pm, enc.fingerprint, 258));
  ASSERT_EQ(pm_back.size(), 2u);
  EXPECT_EQ(pm_back.chosen(1).to_vector(), pm.sequence(2).to_vector());
  EXPECT_EQ(pm_back.rejected(1).to_vector(), pm.sequence(3).to_vector());

  TokenDataset prompts = build_prompts(sample_pairs(), enc, BuildOptions{}, &stats);
  save_dataset(dir.file("a.prompts.bin"), prompts);
  PromptDataset pr(
      load_dataset(dir.file("a.prompts.bin"), DatasetKind::Prompts, enc.fingerprint, 258));
  EXPECT_EQ(pr.size(), 4u);
  EXPECT_EQ(read_dataset_file(dir.file("a.prompts.bin")).kind, DatasetKind::Prompts);
}

TEST(DatasetFile, EveryTruncationAndEveryFlippedByteIsRejected) {
  std::vector<uint8_t> good = serialize_dataset(small_sft());
  ASSERT_NO_THROW(parse_dataset(good.data(), good.size(), "good"));
  for (size_t keep = 0; keep < good.size(); ++keep) {
    std::vector<uint8_t> cut(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(keep));
    EXPECT_THROW(parse_dataset(cut.data(), cut.size(), "cut"), Error) << "kept " << keep;
  }
  std::string err = error_of([&] { parse_dataset(good.data(), good.size() - 5, "x.bin"); });
  EXPECT_TRUE(contains(err, "x.bin")) << err;
  EXPECT_TRUE(contains(err, "truncated")) << err;
  for (size_t pos = 0; pos < good.size(); ++pos) {
    for (uint8_t flip : {uint8_t{0x01}, uint8_t{0x80}}) {
      std::vector<uint8_t> bad = good;
      bad[pos] ^= flip;
      EXPECT_THROW(parse_dataset(bad.data(), bad.size(), "flip"), Error) << "byte " << pos;
    }
  }
  std::vector<uint8_t> bad = good;
  bad[tokens_at(small_sft()) + 1] ^= 0x10;  // inside a token: only the checksum sees it
  err = error_of([&] { parse_dataset(bad.data(), bad.size(), "flip.bin"); });
  EXPECT_TRUE(contains(err, "checksum mismatch")) << err;
  std::vector<uint8_t> longer = good;
  longer.push_back(0);
  EXPECT_TRUE(contains(error_of([&] { parse_dataset(longer.data(), longer.size(), "l"); }),
                       "trailing bytes"));
}

TEST(DatasetFile, HeaderFieldsAreChecked) {
  std::vector<uint8_t> good = serialize_dataset(small_sft());
  auto parse_error = [](std::vector<uint8_t> bytes) {
    fix_checksum(&bytes);
    return error_of([&] { parse_dataset(bytes.data(), bytes.size(), "ds.bin"); });
  };
  std::vector<uint8_t> b = good;
  b[0] = 'X';
  EXPECT_TRUE(contains(parse_error(b), "bad magic"));
  b = good;
  b[8] = 2;  // version
  EXPECT_TRUE(contains(parse_error(b), "version 2"));
  b = good;
  b[12] = 9;  // kind
  EXPECT_TRUE(contains(parse_error(b), "unknown dataset kind 9"));
  b = good;
  b[12] = 2;  // sft -> pm: 3 sequences is odd, and there is no mask section
  EXPECT_TRUE(contains(parse_error(b), "odd number"));
}

TEST(DatasetFile, ValuesAreCheckedBehindAValidChecksum) {
  TokenDataset ds = small_sft();
  std::vector<uint8_t> good = serialize_dataset(ds);
  auto parse_error = [](std::vector<uint8_t> bytes) {
    fix_checksum(&bytes);
    return error_of([&] { parse_dataset(bytes.data(), bytes.size(), "ds.bin"); });
  };
  // A token outside [0, vocab).
  std::vector<uint8_t> b = good;
  int32_t big = 300;
  std::memcpy(b.data() + tokens_at(ds) + 4 * 2, &big, 4);
  std::string err = parse_error(b);
  EXPECT_TRUE(contains(err, "token 2")) << err;
  EXPECT_TRUE(contains(err, "outside the vocabulary")) << err;
  int32_t negative = -1;
  std::memcpy(b.data() + tokens_at(ds), &negative, 4);
  EXPECT_TRUE(contains(parse_error(b), "is -1"));
  // Offsets going backwards: {0, 4, 4, 6} -> {0, 5, 4, 6}.
  b = good;
  uint64_t five = 5;
  std::memcpy(b.data() + offsets_at(ds) + 8, &five, 8);
  err = parse_error(b);
  EXPECT_TRUE(contains(err, "offsets[2]")) << err;
  // First offset not 0.
  b = good;
  uint64_t one = 1;
  std::memcpy(b.data() + offsets_at(ds), &one, 8);
  EXPECT_TRUE(contains(parse_error(b), "offsets[0]"));
  // A mask byte that is not 0/1.
  b = good;
  b[b.size() - 8 - 1] = 7;
  EXPECT_TRUE(contains(parse_error(b), "mask byte 5"));
}

TEST(DatasetFile, WrongKindAndOtherTokenizerAreRefused) {
  TempDir dir;
  save_dataset(dir.file("x.bin"), small_sft());
  std::string err =
      error_of([&] { load_dataset(dir.file("x.bin"), DatasetKind::Pm, 0xfeedbeefull, 300); });
  EXPECT_TRUE(contains(err, "is a sft dataset, expected pm")) << err;
  err = error_of([&] { load_dataset(dir.file("x.bin"), DatasetKind::Sft, 0x1111ull, 300); });
  EXPECT_TRUE(contains(err, "was made with another tokenizer")) << err;
  EXPECT_TRUE(contains(err, "x.bin")) << err;
  err = error_of([&] { load_dataset(dir.file("x.bin"), DatasetKind::Sft, 0xfeedbeefull, 301); });
  EXPECT_TRUE(contains(err, "another tokenizer")) << err;
  EXPECT_TRUE(contains(error_of([&] { read_dataset_file(dir.file("none.bin")); }), "none.bin"));
}

// ---------------------------------------------------------------------------------------
// BatchSampler

TEST(BatchSampler, EveryIndexOncePerEpochAndDeterministic) {
  const size_t n = 103, batch = 10;
  BatchSampler a(n, batch, 42), b(n, batch, 42), other(n, batch, 43);
  std::vector<size_t> stream_a, stream_b, stream_other;
  for (int step = 0; step < 31; ++step) {  // 310 indices: 3 full epochs + 1
    for (size_t i : a.next_batch()) stream_a.push_back(i);
    for (size_t i : b.next_batch()) stream_b.push_back(i);
    for (size_t i : other.next_batch()) stream_other.push_back(i);
  }
  EXPECT_EQ(stream_a, stream_b);
  EXPECT_NE(stream_a, stream_other);
  for (int epoch = 0; epoch < 3; ++epoch) {
    std::vector<size_t> seen(stream_a.begin() + epoch * n, stream_a.begin() + (epoch + 1) * n);
    EXPECT_EQ(std::vector<size_t>(seen.begin(), seen.end()), a.epoch_order(epoch));
    std::sort(seen.begin(), seen.end());
    for (size_t i = 0; i < n; ++i) ASSERT_EQ(seen[i], i) << "epoch " << epoch;
  }
  EXPECT_NE(a.epoch_order(0), a.epoch_order(1));
  EXPECT_EQ(a.epoch(), 3u);
  EXPECT_EQ(a.cursor().position, 310u - 3 * n);

  BatchSampler plain(5, 2, 0, 0, 1, /*shuffle=*/false);
  EXPECT_EQ(plain.next_batch(), (std::vector<size_t>{0, 1}));
  EXPECT_EQ(plain.next_batch(), (std::vector<size_t>{2, 3}));
  EXPECT_EQ(plain.next_batch(), (std::vector<size_t>{4, 0}));  // into epoch 1
  EXPECT_EQ(plain.epoch(), 1u);
}

TEST(BatchSampler, RanksAreDisjointShardsOfTheSingleRankBatch) {
  const size_t n = 50;
  const int world = 4;
  const size_t per_rank = 3;
  BatchSampler single(n, per_rank * world, 7);
  std::vector<BatchSampler> ranks;
  for (int r = 0; r < world; ++r) ranks.emplace_back(n, per_rank, 7, r, world);
  for (int step = 0; step < 20; ++step) {
    std::vector<size_t> want = single.next_batch();
    std::vector<size_t> got;
    for (auto& s : ranks) {
      std::vector<size_t> part = s.next_batch();
      ASSERT_EQ(part.size(), per_rank);
      got.insert(got.end(), part.begin(), part.end());
    }
    EXPECT_EQ(got, want) << "step " << step;
  }
  // With n a multiple of the global batch no batch straddles two epochs, so the ranks'
  // shards are disjoint and one epoch's shards together are every index once.
  std::vector<BatchSampler> even;
  for (int r = 0; r < world; ++r) even.emplace_back(48, per_rank, 9, r, world);
  for (int epoch = 0; epoch < 2; ++epoch) {
    std::vector<size_t> all;
    for (int step = 0; step < 4; ++step) {
      for (auto& s : even) {
        std::vector<size_t> part = s.next_batch();
        all.insert(all.end(), part.begin(), part.end());
      }
    }
    std::sort(all.begin(), all.end());
    for (size_t i = 0; i < 48; ++i) ASSERT_EQ(all[i], i) << "epoch " << epoch;
  }
  EXPECT_THROW(BatchSampler(n, 2, 0, 4, 4), Error);
  EXPECT_THROW(BatchSampler(0, 2, 0), Error);
  EXPECT_THROW(BatchSampler(n, 0, 0), Error);
}

TEST(BatchSampler, ResumeFromCursorGivesTheSameStream) {
  BatchSampler full(37, 8, 5, 1, 2);
  for (int i = 0; i < 6; ++i) full.next_batch();
  BatchSampler::Cursor saved = full.cursor();
  std::vector<std::vector<size_t>> rest;
  for (int i = 0; i < 10; ++i) rest.push_back(full.next_batch());

  BatchSampler resumed(37, 8, 5, 1, 2);
  resumed.set_cursor(saved);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(resumed.next_batch(), rest[i]) << "batch " << i;
  EXPECT_THROW(resumed.set_cursor(BatchSampler::Cursor{0, 37}), Error);
}

// ---------------------------------------------------------------------------------------
// End to end with a real (small, trained) tokenizer and the shared data.

Tokenizer small_tokenizer(const std::vector<HhPair>& pairs, int vocab_size) {
  std::vector<std::string_view> texts;
  for (const HhPair& p : pairs) texts.push_back(p.chosen);
  BpeTrainOptions opt;
  opt.vocab_size = vocab_size;
  opt.specials = {kEndOfContext};
  return Tokenizer::train(texts, opt);
}

TEST(EndToEnd, SharedDevWithTrainedTokenizer) {
  SKIP_WITHOUT_SHARED_DATA();
  HhReadResult read = read_hh_pairs(shared_hh_dir() + "/harmless-dev.jsonl.gz");
  if (fast_mode()) read.pairs.resize(40);
  Tokenizer tok = small_tokenizer(read.pairs, 400);
  TextEncoder enc = TextEncoder::from(tok);
  ASSERT_EQ(enc.end_of_context_id, tok.special_id(kEndOfContext));
  BuildOptions opt;
  opt.max_len = 256;
  TempDir dir;

  BuildStats stats;
  save_dataset(dir.file("dev.sft.bin"), build_sft(read.pairs, enc, opt, &stats));
  SftDataset sft = SftDataset::load(dir.file("dev.sft.bin"), &tok);
  ASSERT_EQ(sft.size(), read.pairs.size());
  for (size_t i = 0; i < sft.size(); ++i) {
    std::vector<int32_t> ids = sft.sequence(i).to_vector();
    EXPECT_LE(ids.size(), 256u);
    EXPECT_EQ(ids.back(), tok.eot_id());
    std::string want = read.pairs[i].chosen + kEndOfText;
    std::string text = tok.decode(ids);
    EXPECT_EQ(text, want.substr(want.size() - text.size())) << "pair " << i;
    // The masked tokens are assistant text: the final response is always in them.
    std::string masked;
    MaskSpan m = sft.mask(i);
    for (size_t t = 0; t < ids.size(); ++t) {
      if (m[t]) masked += tok.decode_token(ids[t]);
    }
    std::string resp = read.pairs[i].chosen_response + kEndOfText;
    if (!read.pairs[i].prompts_differ && resp.size() < 200) {
      EXPECT_EQ(masked.substr(masked.size() - std::min(masked.size(), resp.size())), resp);
    }
  }

  save_dataset(dir.file("dev.pm.bin"), build_pm(read.pairs, enc, opt, &stats));
  PmDataset pm = PmDataset::load(dir.file("dev.pm.bin"), &tok);
  EXPECT_EQ(pm.size(), read.pairs.size());
  for (size_t i = 0; i < pm.size(); ++i) {
    EXPECT_EQ(pm.chosen(i)[pm.chosen(i).size() - 1], enc.end_of_context_id);
    EXPECT_EQ(pm.rejected(i)[pm.rejected(i).size() - 1], enc.end_of_context_id);
    EXPECT_LE(pm.chosen(i).size(), 256u);
  }

  save_dataset(dir.file("dev.prompts.bin"), build_prompts(read.pairs, enc, opt, &stats));
  PromptDataset prompts = PromptDataset::load(dir.file("dev.prompts.bin"), &tok);
  ASSERT_EQ(prompts.size(), read.pairs.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    std::string text = tok.decode(prompts.prompt(i).to_vector());
    const std::string& want = read.pairs[i].prompt;
    EXPECT_EQ(text, want.substr(want.size() - text.size()));
    EXPECT_EQ(tok.decode(prompts.reference(i).to_vector()), read.pairs[i].chosen_response);
  }

  // Tokenizing runs in parallel; the file must not depend on the thread count.
  int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  TokenDataset one_thread = build_pm(read.pairs, enc, opt, &stats);
  omp_set_num_threads(3);
  TokenDataset three_threads = build_pm(read.pairs, enc, opt, &stats);
  omp_set_num_threads(threads);
  EXPECT_EQ(serialize_dataset(one_thread), serialize_dataset(three_threads));

  // Another tokenizer: refused by name.
  Tokenizer other = small_tokenizer(read.pairs, 420);
  std::string err = error_of([&] { PmDataset::load(dir.file("dev.pm.bin"), &other); });
  EXPECT_TRUE(contains(err, "made with another tokenizer")) << err;

  // No <|endofcontext|>: pm refuses to build.
  std::vector<std::string_view> texts = {read.pairs[0].chosen};
  BpeTrainOptions plain;
  plain.vocab_size = 300;
  Tokenizer without = Tokenizer::train(texts, plain);
  err = error_of([&] { build_pm(read.pairs, TextEncoder::from(without), opt, &stats); });
  EXPECT_TRUE(contains(err, kEndOfContext)) << err;
}

// Runs the hh-prepare binary when it has been built (ctest builds all targets).
TEST(EndToEnd, HhPrepareBinary) {
  SKIP_WITHOUT_SHARED_DATA();
  std::string exe = std::string(HH_BINARY_DIR) + "/hh-prepare";
  if (!file_exists(exe)) GTEST_SKIP() << exe << " not built";
  HhReadResult read = read_hh_pairs(shared_hh_dir() + "/harmless-dev.jsonl.gz");
  read.pairs.resize(50);
  TempDir dir;
  small_tokenizer(read.pairs, 350).save(dir.file("tok.bin"));
  std::string input = shared_hh_dir() + "/harmless-dev.jsonl.gz";
  std::string cmd = exe + " pm --input " + input + " --tokenizer " + dir.file("tok.bin") +
                    " --out " + dir.file("dev.pm.bin") + " --max-len 128 > " +
                    dir.file("out.json") + " 2> " + dir.file("err.txt");
  ASSERT_EQ(std::system(cmd.c_str()), 0) << read_file_text(dir.file("err.txt"));
  Json summary = Json::parse(read_file_text(dir.file("out.json")));
  EXPECT_EQ(summary.at("examples").as_int(), 200);
  EXPECT_EQ(summary.at("pairs").as_int(), 200);
  EXPECT_GT(summary.at("truncated").as_int(), 0);
  EXPECT_EQ(summary.at("multi_turn_responses").size(), 2u);
  PmDataset pm = PmDataset::load(dir.file("dev.pm.bin"), nullptr);
  EXPECT_EQ(pm.size(), 200u);

  // info: the summary as JSON on stdout; with the tokenizer, the first pair decoded on
  // stderr (and the fingerprint checked).
  cmd = exe + " info " + dir.file("dev.pm.bin") + " --tokenizer " + dir.file("tok.bin") + " > " +
        dir.file("info.json") + " 2> " + dir.file("err.txt");
  ASSERT_EQ(std::system(cmd.c_str()), 0) << read_file_text(dir.file("err.txt"));
  Json info = Json::parse(read_file_text(dir.file("info.json")));
  EXPECT_EQ(info.at("kind").as_string(), "pm");
  EXPECT_EQ(info.at("sequences").as_int(), 400);
  EXPECT_EQ(info.at("tokens").as_int(), static_cast<int64_t>(pm.raw().tokens.size()));
  const std::string shown = read_file_text(dir.file("err.txt"));
  EXPECT_TRUE(contains(shown, "--- sequence 1 (")) << shown;
  EXPECT_TRUE(contains(shown, "Human:")) << shown;
  Tokenizer other =
      small_tokenizer(std::vector<HhPair>(read.pairs.begin(), read.pairs.begin() + 10), 300);
  other.save(dir.file("other.bin"));
  cmd = exe + " info " + dir.file("dev.pm.bin") + " --tokenizer " + dir.file("other.bin") +
        " > /dev/null 2> " + dir.file("err.txt");
  EXPECT_EQ(test::run_shell(cmd), 1);
  EXPECT_TRUE(contains(read_file_text(dir.file("err.txt")), dir.file("dev.pm.bin")))
      << read_file_text(dir.file("err.txt"));

  // No --input: harmless-train from the shared data folder. From / with the binary in
  // dir/a/b/c, the folder is found two levels above the binary's (dir/shared/data).
  std::filesystem::create_directories(dir.file("a/b/c"));
  std::filesystem::create_directories(dir.file("shared"));
  std::filesystem::create_symlink(std::filesystem::absolute(shared_hh_dir() + "/.."),
                                  dir.file("shared/data"));
  std::filesystem::copy_file(exe, dir.file("a/b/c/hh-prepare"));

  cmd = "cd / && " + dir.file("a/b/c/hh-prepare") + " prompts --tokenizer " + dir.file("tok.bin") +
        " --out " + dir.file("train.prompts.bin") + " > " + dir.file("out.json") + " 2> " +
        dir.file("err.txt");
  ASSERT_EQ(std::system(cmd.c_str()), 0) << read_file_text(dir.file("err.txt"));
  EXPECT_EQ(Json::parse(read_file_text(dir.file("out.json"))).at("examples").as_int(), 1800);
  // One level too deep: not found, and said so.
  std::filesystem::create_directories(dir.file("a/b/c/d"));
  std::filesystem::copy_file(exe, dir.file("a/b/c/d/hh-prepare"));
  cmd = "cd / && " + dir.file("a/b/c/d/hh-prepare") + " prompts --tokenizer " +
        dir.file("tok.bin") + " --out " + dir.file("x.bin") + " > /dev/null 2> " +
        dir.file("err.txt");
  EXPECT_EQ(test::run_shell(cmd), 1);
  EXPECT_TRUE(contains(read_file_text(dir.file("err.txt")), "no shared data folder found"))
      << read_file_text(dir.file("err.txt"));
  cmd = "HH_DATA_DIR=" + dir.file("nowhere") + " " + exe + " prompts --tokenizer " +
        dir.file("tok.bin") + " --out " + dir.file("x.bin") + " > /dev/null 2> " +
        dir.file("err.txt");
  EXPECT_EQ(test::run_shell(cmd), 1);
  EXPECT_TRUE(contains(read_file_text(dir.file("err.txt")),
                       dir.file("nowhere") + "/hh-rlhf/harmless-train.jsonl.gz"))
      << read_file_text(dir.file("err.txt"));
  EXPECT_FALSE(file_exists(dir.file("x.bin")));

  // A truncated input: exit status 1 and a message naming the file.
  std::vector<uint8_t> bytes = read_file_bytes(input);
  write_file_atomic(dir.file("half.jsonl.gz"), bytes.data(), bytes.size() / 2);
  cmd = exe + " sft --input " + dir.file("half.jsonl.gz") + " --tokenizer " + dir.file("tok.bin") +
        " --out " + dir.file("x.bin") + " > /dev/null 2> " + dir.file("err.txt");
  int status = std::system(cmd.c_str());
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 1) << status;
  std::string err = read_file_text(dir.file("err.txt"));
  EXPECT_TRUE(contains(err, "cut short")) << err;
  EXPECT_FALSE(file_exists(dir.file("x.bin")));
}

}  // namespace
}  // namespace hh
