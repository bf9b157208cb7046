// Tests of the byte-level BPE tokenizer: pre-tokenization rules, training, round trips,
// GPT-2 import against tiktoken's ids, and rejection of bad files and options.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"
#include "core/fileio.h"
#include "core/json.h"
#include "tokenizer/pretokenizer.h"
#include "tokenizer/tokenizer.h"

namespace hh {
namespace {

const std::string kGpt2Dir = HH_SOURCE_DIR "/../shared/data/gpt2";

bool fast_mode() { return std::getenv("HH_TEST_FAST") != nullptr; }

std::vector<std::string> split(std::string_view text) {
  std::vector<std::string> out;
  for (std::string_view piece : pretokenize(text)) out.emplace_back(piece);
  return out;
}

// A small corpus with repetition, punctuation, digits, Unicode and whitespace runs.
std::vector<std::string> small_corpus() {
  std::vector<std::string> texts;
  const char* lines[] = {
      "\n\nHuman: How do I bake bread at home?\n\nAssistant: You'll need flour, water, "
      "yeast and salt.  Mix them, knead for 10 minutes, and let it rise.",
      "\n\nHuman: What's the capital of France?\n\nAssistant: Paris is the capital.",
      "Café naïve résumé — déjà vu. Ελληνικά και русский текст 12345 ٣٤٥",
      "    indented code();\n\tif (x == 1) { return y; }\n",
      "I can't, I won't, we've, they're, I'm, he'd, she'll.",
  };
  for (int rep = 0; rep < 20; ++rep)
    for (const char* line : lines) texts.push_back(std::string(line) + " #" + std::to_string(rep));
  return texts;
}

std::vector<std::string_view> views(const std::vector<std::string>& texts) {
  return std::vector<std::string_view>(texts.begin(), texts.end());
}

Tokenizer train_small(int vocab_size = 400) {
  std::vector<std::string> texts = small_corpus();
  BpeTrainOptions opt;
  opt.vocab_size = vocab_size;
  opt.min_frequency = 2;
  opt.specials = {kEndOfContext};
  return Tokenizer::train(views(texts), opt);
}

std::string temp_path(const std::string& name) {
  return std::string(HH_BINARY_DIR) + "/test_tokenizer_" + name;
}

TEST(Pretokenizer, Gpt2Rules) {
  using V = std::vector<std::string>;
  EXPECT_EQ(split("Hello world"), (V{"Hello", " world"}));
  EXPECT_EQ(split("I'll can't we've you're I'm he'd it's"),
            (V{"I", "'ll", " can", "'t", " we", "'ve", " you", "'re", " I", "'m", " he", "'d",
               " it", "'s"}));
  // Contractions are case-sensitive and only at the start of a token.
  EXPECT_EQ(split("IT'S"), (V{"IT", "'", "S"}));
  EXPECT_EQ(split("?'s"), (V{"?'", "s"}));
  EXPECT_EQ(split("abc 123 4x"), (V{"abc", " 123", " 4", "x"}));
  EXPECT_EQ(split("!!! ?? a"), (V{"!!!", " ??", " a"}));
  // "\s+(?!\S)": a run before a non-space leaves its last character to the next token.
  EXPECT_EQ(split("a   b"), (V{"a", "  ", " b"}));
  EXPECT_EQ(split("\n\nHuman:"), (V{"\n", "\n", "Human", ":"}));
  EXPECT_EQ(split("x \n\n y"), (V{"x", " \n\n", " y"}));
  EXPECT_EQ(split("end  "), (V{"end", "  "}));
  EXPECT_EQ(split("\t\tx"), (V{"\t", "\t", "x"}));
  // Unicode letters, numbers and White_Space (U+00A0 no-break space, U+3000).
  EXPECT_EQ(split("naïve Ελλάδα ٣٤"), (V{"naïve", " Ελλάδα", " ٣٤"}));
  EXPECT_EQ(split("a\xC2\xA0"
                  "b"),
            (V{"a", "\xC2\xA0", "b"}));
  EXPECT_EQ(split("x\xE3\x80\x80\xE3\x80\x80y"), (V{"x", "\xE3\x80\x80", "\xE3\x80\x80", "y"}));
  EXPECT_EQ(split("€5"), (V{"€", "5"}));
  // Invalid UTF-8 bytes are "other" symbols, one per byte.
  EXPECT_EQ(split("ab\xFF\xFE cd \x80x"), (V{"ab", "\xFF\xFE", " cd", " \x80", "x"}));
  EXPECT_EQ(split(""), V{});
}

TEST(Pretokenizer, CodePointClasses) {
  EXPECT_EQ(code_point_class('a'), CharClass::kLetter);
  EXPECT_EQ(code_point_class('7'), CharClass::kNumber);
  EXPECT_EQ(code_point_class(' '), CharClass::kSpace);
  EXPECT_EQ(code_point_class('\v'), CharClass::kSpace);
  EXPECT_EQ(code_point_class('_'), CharClass::kOther);
  EXPECT_EQ(code_point_class(0x00E9), CharClass::kLetter);  // é
  EXPECT_EQ(code_point_class(0x0663), CharClass::kNumber);  // Arabic-Indic three
  EXPECT_EQ(code_point_class(0x2160), CharClass::kNumber);  // Roman numeral one (Nl)
  EXPECT_EQ(code_point_class(0x4E00), CharClass::kLetter);  // CJK range start
  EXPECT_EQ(code_point_class(0x9FA5), CharClass::kLetter);  // inside the CJK range
  EXPECT_EQ(code_point_class(0x2028), CharClass::kSpace);
  EXPECT_EQ(code_point_class(0x200B), CharClass::kOther);    // zero width space: not \s
  EXPECT_EQ(code_point_class(0x1F600), CharClass::kOther);   // emoji
  EXPECT_EQ(code_point_class(0x20000), CharClass::kLetter);  // CJK extension B
  EXPECT_EQ(code_point_class(0x1D7CE), CharClass::kNumber);  // mathematical bold zero
}

// Against the regex itself, run by an independent engine (Python's `regex` module;
// scripts/reference/pretokenizer_reference.py): the class of every code point, and the
// split of 2000 random texts built from the characters that decide a split (contractions
// in both cases, every Unicode space and its look-alikes, marks, Nd/Nl/No numbers of
// several planes, emoji with modifiers and joiners, runs of spaces).
TEST(Pretokenizer, MatchesTheRegexOnEveryCodePointAndRandomTexts) {
  std::ifstream in(HH_SOURCE_DIR "/tests/fixtures/pretokenizer_regex.jsonl");
  ASSERT_TRUE(in) << "tests/fixtures/pretokenizer_regex.jsonl (make fixtures)";
  std::string line;
  ASSERT_TRUE(std::getline(in, line));
  // Every code point outside the listed ranges (and the surrogates, which UTF-8 cannot
  // encode) is "other".
  std::vector<CharClass> want(0x110000, CharClass::kOther);
  const Json classes = Json::parse(line, "classes");
  for (const Json& r : classes.at("classes").as_array()) {
    const std::string& c = r.as_array()[2].as_string();
    const CharClass cls = c == "L"   ? CharClass::kLetter
                          : c == "N" ? CharClass::kNumber
                                     : CharClass::kSpace;
    for (int64_t cp = r.as_array()[0].as_int(); cp <= r.as_array()[1].as_int(); cp++)
      want[cp] = cls;
  }
  int class_mismatches = 0;
  for (uint32_t cp = 0; cp < 0x110000; cp++) {
    if (cp >= 0xD800 && cp <= 0xDFFF) continue;
    if (code_point_class(cp) != want[cp] && ++class_mismatches <= 10)
      ADD_FAILURE() << "U+" << std::hex << cp << ": class " << int(code_point_class(cp))
                    << ", the regex says " << int(want[cp]);
  }
  EXPECT_EQ(class_mismatches, 0);
  int texts = 0, split_mismatches = 0;
  while (std::getline(in, line)) {
    const Json j = Json::parse(line, "pretokenizer_regex.jsonl");
    std::vector<std::string> pieces;
    for (const Json& p : j.at("pieces").as_array()) pieces.push_back(p.as_string());
    texts++;
    if (split(j.at("text").as_string()) != pieces && ++split_mismatches <= 10)
      ADD_FAILURE() << "text " << j.at("text").dump() << ": regex gives "
                    << Json(Json::Array(j.at("pieces").as_array())).dump();
  }
  EXPECT_EQ(texts, 2000);
  EXPECT_EQ(split_mismatches, 0);
}

TEST(Trainer, ClassicExampleMerges) {
  // "aaabdaaabac": (a,a) is most frequent; then (a,b) and (256,a) tie at 2 and the
  // smaller left id wins.
  BpeTrainOptions opt;
  opt.vocab_size = 256 + 1 + 3;
  opt.min_frequency = 1;
  std::vector<std::string_view> texts = {"aaabdaaabac"};
  Tokenizer tok = Tokenizer::train(texts, opt);
  ASSERT_EQ(tok.num_merges(), 3);
  EXPECT_EQ(tok.merges()[0], (std::pair<int32_t, int32_t>{'a', 'a'}));
  EXPECT_EQ(tok.merges()[1], (std::pair<int32_t, int32_t>{'a', 'b'}));
  EXPECT_EQ(tok.merges()[2], (std::pair<int32_t, int32_t>{256, 257}));
  EXPECT_EQ(tok.decode_token(258), "aaab");
  EXPECT_EQ(tok.eot_id(), 259);
  EXPECT_EQ(tok.encode("aaabdaaabac"), (std::vector<int32_t>{258, 'd', 258, 'a', 'c'}));
}

TEST(Trainer, MinFrequencyStopsMerging) {
  BpeTrainOptions opt;
  opt.vocab_size = 1000;
  opt.min_frequency = 3;
  std::vector<std::string_view> texts = {"xyxyxy abab"};  // (x,y):3 (y,x):2 (a,b):2
  Tokenizer tok = Tokenizer::train(texts, opt);
  ASSERT_EQ(tok.num_merges(), 1);
  EXPECT_EQ(tok.merges()[0], (std::pair<int32_t, int32_t>{'x', 'y'}));
  EXPECT_EQ(tok.vocab_size(), 256 + 1 + 1);
}

TEST(Trainer, DeterministicAndOrderIndependent) {
  std::vector<std::string> texts = small_corpus();
  BpeTrainOptions opt;
  opt.vocab_size = 500;
  opt.min_frequency = 2;
  Tokenizer a = Tokenizer::train(views(texts), opt);
  Tokenizer b = Tokenizer::train(views(texts), opt);
  std::mt19937 rng(7);
  std::shuffle(texts.begin(), texts.end(), rng);
  Tokenizer c = Tokenizer::train(views(texts), opt);
  EXPECT_GT(a.num_merges(), 100);
  EXPECT_EQ(a.serialize(), b.serialize());
  EXPECT_EQ(a.fingerprint(), c.fingerprint());
  EXPECT_EQ(a.merges(), c.merges());
}

TEST(Trainer, MergesCompressTrainingText) {
  Tokenizer tok = train_small();
  size_t bytes = 0, tokens = 0;
  for (const std::string& text : small_corpus()) {
    std::vector<int32_t> ids = tok.encode(text);
    EXPECT_EQ(tok.decode(ids), text);
    bytes += text.size();
    tokens += ids.size();
  }
  EXPECT_LT(tokens * 2, bytes);
  // Frequent words became single tokens.
  EXPECT_EQ(tok.encode(" capital").size(), 1u);
  EXPECT_EQ(tok.encode("Assistant").size(), 1u);
}

TEST(Trainer, RejectsBadOptions) {
  std::vector<std::string_view> texts = {"hello hello"};
  BpeTrainOptions opt;
  opt.specials = {kEndOfContext};
  opt.vocab_size = 257;  // < 256 + 2 specials
  EXPECT_THROW(Tokenizer::train(texts, opt), Error);
  opt.vocab_size = 258;  // exactly bytes + specials: no merges, fine
  Tokenizer tok = Tokenizer::train(texts, opt);
  EXPECT_EQ(tok.vocab_size(), 258);
  EXPECT_EQ(tok.special_id(kEndOfContext), 257);
  opt.vocab_size = 300;
  opt.min_frequency = 0;
  EXPECT_THROW(Tokenizer::train(texts, opt), Error);
  opt.min_frequency = 1;
  opt.specials = {"<|a|>", "<|a|>"};
  EXPECT_THROW(Tokenizer::train(texts, opt), Error);
  opt.specials = {""};
  EXPECT_THROW(Tokenizer::train(texts, opt), Error);
}

TEST(Tokenizer, DefaultIsPlainBytes) {
  Tokenizer tok;
  EXPECT_EQ(tok.vocab_size(), 256);
  EXPECT_EQ(tok.encode("hi\xFF"), (std::vector<int32_t>{'h', 'i', 0xFF}));
  EXPECT_EQ(tok.decode({'h', 'i'}), "hi");
  EXPECT_FALSE(tok.has_special(kEndOfText));
  EXPECT_THROW(tok.eot_id(), Error);
  tok = train_small();  // assignable
  EXPECT_EQ(tok.vocab_size(), 400);
}

// The fingerprint that datasets and checkpoints record tells tokenizers apart by their
// byte order, merges and special tokens (names and order: they decide the special ids).
TEST(Tokenizer, FingerprintCoversBytesMergesAndSpecials) {
  std::vector<uint8_t> bytes(256);
  for (int i = 0; i < 256; i++) bytes[i] = static_cast<uint8_t>(i);
  const std::vector<std::pair<int32_t, int32_t>> merges = {{'a', 'b'}, {256, 'c'}};
  const uint64_t base =
      Tokenizer::from_parts(bytes, merges, {kEndOfText, kEndOfContext}).fingerprint();
  EXPECT_EQ(Tokenizer::from_parts(bytes, merges, {kEndOfText, kEndOfContext}).fingerprint(), base);
  EXPECT_NE(Tokenizer::from_parts(bytes, merges, {kEndOfContext, kEndOfText}).fingerprint(), base);
  EXPECT_NE(Tokenizer::from_parts(bytes, merges, {kEndOfText, "<|other|>"}).fingerprint(), base);
  EXPECT_NE(Tokenizer::from_parts(bytes, merges, {kEndOfText}).fingerprint(), base);
  EXPECT_NE(Tokenizer::from_parts(bytes, {{'a', 'b'}}, {kEndOfText, kEndOfContext}).fingerprint(),
            base);
  std::swap(bytes[1], bytes[2]);
  EXPECT_NE(Tokenizer::from_parts(bytes, merges, {kEndOfText, kEndOfContext}).fingerprint(), base);
}

TEST(Encoder, ThreadsAgreeWithSerial) {
  // encode() is const with a per-thread cache: parallel results equal serial ones, and two
  // tokenizers used alternately on one thread do not share cached ids.
  Tokenizer a = train_small(400);
  Tokenizer b = train_small(300);
  std::vector<std::string> texts = small_corpus();
  std::vector<std::vector<int32_t>> serial;
  for (const auto& t : texts) serial.push_back(a.encode(t));
  for (const auto& t : texts) ASSERT_EQ(b.decode(b.encode(t)), t);
  for (size_t i = 0; i < texts.size(); ++i) ASSERT_EQ(a.encode(texts[i]), serial[i]);
  std::vector<std::vector<std::vector<int32_t>>> results(4);
  std::vector<std::thread> threads;
  for (int k = 0; k < 4; ++k)
    threads.emplace_back([&, k] {
      for (const auto& t : texts) results[k].push_back(a.encode(t));
    });
  for (auto& th : threads) th.join();
  for (int k = 0; k < 4; ++k) EXPECT_EQ(results[k], serial);
}

TEST(Trainer, EmptyCorpus) {
  BpeTrainOptions opt;
  Tokenizer tok = Tokenizer::train({}, opt);
  EXPECT_EQ(tok.num_merges(), 0);
  EXPECT_EQ(tok.vocab_size(), 257);
  EXPECT_TRUE(tok.encode("").empty());
  EXPECT_EQ(tok.decode({}), "");
}

// decode(encode(x)) == x for random byte strings, mostly invalid UTF-8, plus mixtures of
// valid pieces, long runs (the heap merge path) and random splices.
void check_round_trip(const Tokenizer& tok, int cases) {
  std::mt19937 rng(1234);
  const std::vector<std::string> pieces = {
      "the",  " ",    "  ",       "\n",     "é",  "€", "'s", "123", "\xF0\x9F\x98\x80",
      "\xFF", "\xC3", "\xE2\x82", "Human:", "\t", "!!"};
  for (int c = 0; c < cases; ++c) {
    std::string text;
    int mode = c % 3;
    int len = static_cast<int>(rng() % 200);
    for (int i = 0; i < len; ++i) {
      if (mode == 0)
        text += static_cast<char>(rng() & 0xFF);
      else if (mode == 1)
        text += pieces[rng() % pieces.size()];
      else
        text +=
            (rng() % 4 == 0) ? static_cast<char>(rng() & 0xFF) : 'a' + static_cast<char>(rng() % 3);
    }
    std::vector<int32_t> ids = tok.encode(text);
    for (int32_t id : ids) ASSERT_TRUE(id >= 0 && id < tok.vocab_size());
    ASSERT_EQ(tok.decode(ids), text) << "case " << c;
    ASSERT_EQ(tok.encode(text), ids) << "cache changed the result, case " << c;
  }
  for (std::string run : {std::string(5000, ' '), std::string(3000, '='), std::string(2000, 'a'),
                          std::string(1500, '\xFF')}) {
    ASSERT_EQ(tok.decode(tok.encode(run)), run);
  }
}

TEST(Encoder, RoundTripRandomBytesTrained) {
  Tokenizer tok = train_small();
  check_round_trip(tok, fast_mode() ? 300 : 3000);
}

TEST(Encoder, SpecialStringsAreNotSpecial) {
  Tokenizer tok = train_small();
  int32_t eot = tok.eot_id();
  int32_t eoc = tok.special_id(kEndOfContext);
  EXPECT_EQ(eot, 256 + tok.num_merges());
  EXPECT_EQ(eoc, eot + 1);
  EXPECT_EQ(tok.vocab_size(), eoc + 1);
  std::vector<int32_t> ids = tok.encode("a<|endoftext|>b");
  for (int32_t id : ids) EXPECT_NE(id, eot);
  EXPECT_EQ(tok.decode({eot}), kEndOfText);
  EXPECT_EQ(tok.decode_token(eoc), kEndOfContext);
  EXPECT_TRUE(tok.has_special(kEndOfContext));
  EXPECT_FALSE(tok.has_special("<|nope|>"));
  EXPECT_THROW(tok.special_id("<|nope|>"), Error);
  EXPECT_THROW(tok.decode({tok.vocab_size()}), Error);
  EXPECT_THROW(tok.decode({-1}), Error);
  EXPECT_THROW(tok.decode_token(-5), Error);
}

// GPT-2's merge loop written as plainly as possible: merge the lowest-ranked adjacent pair
// (leftmost on ties) until none is left.
std::vector<int32_t> naive_bpe(const Tokenizer& tok, const std::string& word) {
  std::map<std::pair<int32_t, int32_t>, int32_t> rank;
  for (size_t r = 0; r < tok.merges().size(); ++r) rank[tok.merges()[r]] = static_cast<int32_t>(r);
  std::vector<int32_t> ids;
  for (char c : word) {
    std::vector<int32_t> one = tok.encode(std::string(1, c));
    ids.push_back(one.at(0));
  }
  while (true) {
    int32_t best = -1;
    size_t at = 0;
    for (size_t i = 0; i + 1 < ids.size(); ++i) {
      auto it = rank.find({ids[i], ids[i + 1]});
      if (it != rank.end() && (best < 0 || it->second < best)) {
        best = it->second;
        at = i;
      }
    }
    if (best < 0) return ids;
    ids[at] = 256 + best;
    ids.erase(ids.begin() + static_cast<long>(at) + 1);
  }
}

TEST(Encoder, ShortAndLongWordsMatchNaiveBpe) {
  // Single pre-tokens of every length, through the array path (<= 64 bytes) and the heap
  // path (longer), against the naive loop.
  BpeTrainOptions opt;
  opt.vocab_size = 320;
  opt.min_frequency = 1;
  std::mt19937 rng(99);
  std::vector<std::string> corpus;
  for (int i = 0; i < 200; ++i) {
    std::string w;
    for (int j = 0; j < 30; ++j) w += static_cast<char>('a' + rng() % 3);
    corpus.push_back(w);
  }
  Tokenizer tok = Tokenizer::train(views(corpus), opt);
  ASSERT_GT(tok.num_merges(), 50);
  for (int len : {2, 3, 17, 63, 64, 65, 100, 400, 1000}) {
    for (int rep = 0; rep < 5; ++rep) {
      std::string w;
      for (int j = 0; j < len; ++j) w += static_cast<char>('a' + rng() % 3);
      ASSERT_EQ(tok.encode(w), naive_bpe(tok, w)) << "length " << len;
    }
  }
  std::string run(200, 'a');
  EXPECT_EQ(tok.encode(run), naive_bpe(tok, run));
}

TEST(File, SaveLoadRoundTrip) {
  Tokenizer tok = train_small();
  std::string path = temp_path("roundtrip.bin");
  tok.save(path);
  Tokenizer back = Tokenizer::load(path);
  EXPECT_EQ(back.fingerprint(), tok.fingerprint());
  EXPECT_EQ(back.vocab_size(), tok.vocab_size());
  EXPECT_EQ(back.merges(), tok.merges());
  EXPECT_EQ(back.specials(), tok.specials());
  std::string text = small_corpus()[0];
  EXPECT_EQ(back.encode(text), tok.encode(text));
  std::remove(path.c_str());
}

TEST(File, RejectsTruncatedAndCorrupted) {
  Tokenizer tok = train_small(300);
  std::vector<uint8_t> good = tok.serialize();
  EXPECT_NO_THROW(Tokenizer::deserialize(good.data(), good.size(), "good"));
  // Every truncation.
  size_t step = fast_mode() ? 7 : 1;
  for (size_t n = 0; n < good.size(); n += step) {
    EXPECT_THROW(Tokenizer::deserialize(good.data(), n, "truncated"), Error) << n;
  }
  // Every single-byte corruption (xor) is caught, by the checksum if nothing else.
  for (size_t i = 0; i < good.size(); i += step) {
    std::vector<uint8_t> bad = good;
    bad[i] ^= 0x5A;
    EXPECT_THROW(Tokenizer::deserialize(bad.data(), bad.size(), "corrupt"), Error) << i;
  }
  // Extra trailing bytes.
  std::vector<uint8_t> longer = good;
  longer.push_back(0);
  EXPECT_THROW(Tokenizer::deserialize(longer.data(), longer.size(), "longer"), Error);
  // Error messages name the file and say what is wrong.
  std::vector<uint8_t> bad_magic = good;
  bad_magic[0] = 'X';
  try {
    Tokenizer::deserialize(bad_magic.data(), bad_magic.size(), "tok.bin");
    FAIL() << "bad magic accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tok.bin"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("magic"), std::string::npos) << e.what();
  }
  EXPECT_THROW(Tokenizer::load(temp_path("does_not_exist.bin")), Error);
}

TEST(File, RejectsStructurallyBadFileWithValidChecksum) {
  // A merge that refers to a later token, with a recomputed checksum: the structure check,
  // not the checksum, must catch it.
  Tokenizer tok = train_small(300);
  std::vector<uint8_t> bytes = tok.serialize();
  size_t first_merge = 8 + 4 + 4 + 4 + 256;
  uint32_t bad_left = 100000;
  std::memcpy(bytes.data() + first_merge, &bad_left, 4);
  uint64_t sum = fnv1a64(bytes.data(), bytes.size() - 8);
  std::memcpy(bytes.data() + bytes.size() - 8, &sum, 8);
  try {
    Tokenizer::deserialize(bytes.data(), bytes.size(), "tok.bin");
    FAIL() << "bad merge accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("merge 0"), std::string::npos) << e.what();
  }
}

class Gpt2 : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!file_exists(kGpt2Dir + "/encoder.json") || !file_exists(kGpt2Dir + "/vocab.bpe"))
      GTEST_SKIP() << "GPT-2 files not found in " << kGpt2Dir;
  }
  static const Tokenizer& gpt2() {
    static Tokenizer tok = Tokenizer::import_gpt2(kGpt2Dir + "/encoder.json",
                                                  kGpt2Dir + "/vocab.bpe", {kEndOfContext});
    return tok;
  }
};

TEST_F(Gpt2, ImportLayout) {
  const Tokenizer& tok = gpt2();
  EXPECT_EQ(tok.num_merges(), 50000);
  EXPECT_EQ(tok.eot_id(), 50256);
  EXPECT_EQ(tok.special_id(kEndOfContext), 50257);
  EXPECT_EQ(tok.vocab_size(), 50258);
  EXPECT_EQ(tok.encode("Hello world"), (std::vector<int32_t>{15496, 995}));
  EXPECT_EQ(tok.decode_token(0), "!");
  EXPECT_EQ(tok.decode_token(198), "\n");
}

TEST_F(Gpt2, MatchesTiktokenReference) {
  std::string path = kGpt2Dir + "/tiktoken-gpt2-reference.jsonl";
  if (!file_exists(path)) GTEST_SKIP() << "missing " << path;
  const Tokenizer& tok = gpt2();
  std::ifstream in(path);
  std::string line;
  int line_no = 0, mismatches = 0;
  while (std::getline(in, line)) {
    ++line_no;
    Json row = Json::parse(line, path + ":" + std::to_string(line_no));
    const std::string& text = row.at("text").as_string();
    std::vector<int32_t> expected;
    for (const Json& id : row.at("ids").as_array())
      expected.push_back(static_cast<int32_t>(id.as_int()));
    std::vector<int32_t> got = tok.encode(text);
    if (got != expected && ++mismatches <= 5) {
      ADD_FAILURE() << path << ":" << line_no << " ids differ from tiktoken for text: " << text;
    }
    EXPECT_EQ(tok.decode(got), text);
  }
  EXPECT_GT(line_no, 100);
  EXPECT_EQ(mismatches, 0);
}

TEST_F(Gpt2, RoundTripRandomBytes) { check_round_trip(gpt2(), fast_mode() ? 200 : 2000); }

TEST_F(Gpt2, SaveLoadKeepsIds) {
  const Tokenizer& tok = gpt2();
  std::vector<uint8_t> bytes = tok.serialize();
  Tokenizer back = Tokenizer::deserialize(bytes.data(), bytes.size(), "gpt2");
  EXPECT_EQ(back.fingerprint(), tok.fingerprint());
  std::string text = "\n\nHuman: Isn't it 42°C in Zürich?  \n\nAssistant: No.";
  EXPECT_EQ(back.encode(text), tok.encode(text));
}

// An id in encoder.json that is not an integer (a string, a fraction, past int32) is an
// error naming the file and the token, for a byte token, a merged token and the end token.
TEST_F(Gpt2, NonIntegerIdsNameTheFileAndToken) {
  const Json encoder = Json::parse(read_file_text(kGpt2Dir + "/encoder.json"));
  const std::string path = temp_path("bad_encoder.json");
  for (const char* token : {"!", "Ġthe", "<|endoftext|>"}) {
    for (const Json& bad : {Json("7"), Json(1.5), Json(int64_t{1} << 40)}) {
      Json changed = encoder;
      changed[token] = bad;
      write_file_atomic(path, changed.dump());
      std::string err;
      try {
        Tokenizer::import_gpt2(path, kGpt2Dir + "/vocab.bpe");
      } catch (const Error& e) {
        err = e.what();
      }
      EXPECT_NE(
          err.find(path + ": token '" + token + "' has id " + bad.dump() + ", not an integer id"),
          std::string::npos)
          << token << " " << bad.dump() << ": " << err;
    }
  }
  std::remove(path.c_str());
}

TEST(Gpt2Import, RejectsMissingAndMalformedFiles) {
  std::string enc = temp_path("enc.json"), bpe = temp_path("vocab.bpe");
  EXPECT_THROW(Tokenizer::import_gpt2(enc + ".missing", bpe), Error);
  write_file_atomic(enc, std::string("{\"a\": 0"));
  write_file_atomic(bpe, std::string("#version: 0.2\na b\n"));
  EXPECT_THROW(Tokenizer::import_gpt2(enc, bpe), Error);  // truncated JSON
  write_file_atomic(enc, std::string("{\"a\": 0}"));
  EXPECT_THROW(Tokenizer::import_gpt2(enc, bpe), Error);  // bytes missing
  std::remove(enc.c_str());
  std::remove(bpe.c_str());
}

}  // namespace
}  // namespace hh

namespace hh {
namespace {

// The hh-bpe command line: run it through the shell and check exit codes and outputs.
class HhBpe : public ::testing::Test {
 protected:
  void SetUp() override {
    binary_ = std::string(HH_BINARY_DIR) + "/hh-bpe";
    if (!file_exists(binary_)) GTEST_SKIP() << "hh-bpe not built at " << binary_;
    dir_ = temp_path("cli");
    make_dirs(dir_);
  }
  // Runs "hh-bpe args" and returns its exit status.
  int run(const std::string& args) {
    int status = std::system((binary_ + " " + args).c_str());
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }
  std::string binary_, dir_;
};

TEST_F(HhBpe, TrainEncodeDecodeAndBadInput) {
  std::string corpus = dir_ + "/corpus.jsonl";
  write_file_atomic(corpus, std::string("{\"text\": \"the cat sat on the mat, the cat\"}\n"
                                        "not json at all\n"
                                        "{\"other\": 1}\n"
                                        "{\"chosen\": \"the dog\", \"rejected\": \"the mat\"}\n"));
  std::string tok = dir_ + "/tok.bin";
  ASSERT_EQ(run("train --input " + corpus + " --vocab-size 270 --min-frequency 1 --out " + tok +
                " 2>" + dir_ + "/train.err"),
            0);
  std::string train_err = read_file_text(dir_ + "/train.err");
  EXPECT_NE(train_err.find("corpus.jsonl:2"), std::string::npos) << train_err;
  EXPECT_NE(train_err.find("corpus.jsonl:3"), std::string::npos) << train_err;
  Tokenizer loaded = Tokenizer::load(tok);
  EXPECT_EQ(loaded.vocab_size(), 270);
  EXPECT_TRUE(loaded.has_special(kEndOfContext));

  // Plain encode | decode restores arbitrary bytes.
  std::string raw = "the cat \xFF\xFE sat\n\n  on\xC3 the mat ";
  write_file_atomic(dir_ + "/raw.txt", raw);
  ASSERT_EQ(run("encode --tokenizer " + tok + " < " + dir_ + "/raw.txt > " + dir_ + "/raw.ids"), 0);
  ASSERT_EQ(run("decode --tokenizer " + tok + " < " + dir_ + "/raw.ids > " + dir_ + "/raw.back"),
            0);
  EXPECT_EQ(read_file_text(dir_ + "/raw.back"), raw);

  // --jsonl: good lines give arrays equal to the library's ids, bad lines are skipped and
  // reported, --stats prints a JSON summary.
  write_file_atomic(dir_ + "/in.jsonl",
                    std::string("{\"text\": \"the cat\"}\n{\"nope\": 2}\n\n{\"text\": \"\"}\n"));
  ASSERT_EQ(run("encode --tokenizer " + tok + " --jsonl --stats < " + dir_ + "/in.jsonl > " + dir_ +
                "/out.jsonl 2> " + dir_ + "/enc.err"),
            0);
  std::string expected;
  for (std::string text : {"the cat", ""}) {
    expected += "[";
    std::vector<int32_t> ids = loaded.encode(text);
    for (size_t i = 0; i < ids.size(); ++i) expected += (i ? "," : "") + std::to_string(ids[i]);
    expected += "]\n";
  }
  EXPECT_EQ(read_file_text(dir_ + "/out.jsonl"), expected);
  std::string enc_err = read_file_text(dir_ + "/enc.err");
  EXPECT_NE(enc_err.find("stdin:2"), std::string::npos) << enc_err;
  Json stats = Json::parse(enc_err.substr(enc_err.rfind('{')), "stats");
  EXPECT_EQ(stats.at("bytes").as_int(), 7);
  EXPECT_EQ(stats.at("lines").as_int(), 2);
  EXPECT_EQ(stats.at("skipped_lines").as_int(), 1);

  // Bad tokenizer files, vocabulary sizes and ids: exit 1 with a message, no crash.
  std::vector<uint8_t> bytes = read_file_bytes(tok);
  write_file_atomic(dir_ + "/trunc.bin", bytes.data(), bytes.size() / 2);
  EXPECT_EQ(run("encode --tokenizer " + dir_ + "/trunc.bin < " + dir_ + "/raw.txt > /dev/null 2> " +
                dir_ + "/trunc.err"),
            1);
  EXPECT_NE(read_file_text(dir_ + "/trunc.err").find("trunc.bin"), std::string::npos);
  EXPECT_EQ(
      run("train --input " + corpus + " --vocab-size 200 --out " + dir_ + "/x.bin 2>/dev/null"), 1);
  write_file_atomic(dir_ + "/bad.ids", std::string("[1, 99999]\n"));
  EXPECT_EQ(run("decode --tokenizer " + tok + " < " + dir_ + "/bad.ids > /dev/null 2>&1"), 1);
  EXPECT_EQ(run("no-such-command 2>/dev/null"), 2);
}

// import-gpt2 with no flags finds GPT-2's files in the shared data folder from any working
// directory; the tokenizer it writes encodes tiktoken's reference texts to tiktoken's ids
// through `encode --jsonl`, and `decode --jsonl` gives the texts back.
TEST_F(HhBpe, ImportGpt2FindsTheSharedFilesAndEncodesLikeTiktoken) {
  const std::string reference = kGpt2Dir + "/tiktoken-gpt2-reference.jsonl";
  if (!file_exists(reference)) GTEST_SKIP() << "missing " << reference;
  ASSERT_EQ(run("import-gpt2 --out " + dir_ + "/gpt2.bin 2> " + dir_ + "/import.err"), 0)
      << read_file_text(dir_ + "/import.err");
  ASSERT_EQ(std::system(("cd / && " + binary_ + " import-gpt2 --out " + dir_ +
                         "/gpt2_from_root.bin" + " 2> " + dir_ + "/import.err")
                            .c_str()),
            0)
      << read_file_text(dir_ + "/import.err");
  const Tokenizer tok = Tokenizer::load(dir_ + "/gpt2.bin");
  EXPECT_EQ(tok.vocab_size(), 50258);
  EXPECT_EQ(tok.special_id(kEndOfContext), 50257);
  EXPECT_EQ(read_file_bytes(dir_ + "/gpt2_from_root.bin"), read_file_bytes(dir_ + "/gpt2.bin"));

  ASSERT_EQ(run("encode --tokenizer " + dir_ + "/gpt2.bin --jsonl < " + reference + " > " + dir_ +
                "/ids.jsonl 2> " + dir_ + "/encode.err"),
            0)
      << read_file_text(dir_ + "/encode.err");
  ASSERT_EQ(run("decode --tokenizer " + dir_ + "/gpt2.bin --jsonl < " + dir_ + "/ids.jsonl > " +
                dir_ + "/texts.jsonl 2> " + dir_ + "/decode.err"),
            0)
      << read_file_text(dir_ + "/decode.err");
  std::ifstream want(reference), ids(dir_ + "/ids.jsonl"), texts(dir_ + "/texts.jsonl");
  std::string want_line, ids_line, text_line;
  int lines = 0;
  while (std::getline(want, want_line)) {
    ASSERT_TRUE(std::getline(ids, ids_line) && std::getline(texts, text_line)) << lines;
    const Json row = Json::parse(want_line);
    EXPECT_EQ(Json::parse(ids_line).dump(), row.at("ids").dump()) << row.at("text").as_string();
    EXPECT_EQ(Json::parse(text_line).at("text").as_string(), row.at("text").as_string());
    ++lines;
  }
  EXPECT_GT(lines, 100);
  EXPECT_FALSE(std::getline(ids, ids_line));
}

}  // namespace
}  // namespace hh
