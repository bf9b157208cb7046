// Tests of src/core: JSON, flags, RNG, safetensors, file I/O and metrics.
#include <dirent.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"
#include "core/fileio.h"
#include "core/flags.h"
#include "core/half.h"
#include "core/json.h"
#include "core/metrics.h"
#include "core/rng.h"
#include "core/safetensors.h"
#include "test_util.h"

namespace hh {
namespace {

bool fast_mode() {
  const char* v = std::getenv("HH_TEST_FAST");
  return v && *v && std::strcmp(v, "0") != 0;
}

// Runs fn, expects an hh::Error, and returns its message ("" and a failure otherwise).
std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected hh::Error, got another exception: " << e.what();
    return "";
  }
  ADD_FAILURE() << "expected hh::Error, nothing was thrown";
  return "";
}

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

using hh::test::TempDir;

// ============================================================================ JSON

TEST(Json, RoundTripKeepsValues) {
  const std::string text =
      R"({"b":[1,-2.5,1e-07,123456789012,true,false,null],"a":{"nested":"x\"y\\z\n\t\u0001"},)"
      R"("num":0.1})";
  Json v = Json::parse(text, "doc");
  EXPECT_EQ(v.at("b").as_array().size(), 7u);
  EXPECT_EQ(v.at("b").as_array()[3].as_int(), 123456789012);
  EXPECT_EQ(v.at("b").as_array()[2].as_number(), 1e-7);
  EXPECT_EQ(v.at("num").as_number(), 0.1);
  EXPECT_EQ(v.at("a").at("nested").as_string(), std::string("x\"y\\z\n\t\x01"));
  EXPECT_TRUE(v.at("b").as_array()[6].is_null());
  std::string dumped = v.dump();
  EXPECT_TRUE(contains(dumped, "123456789012,")) << dumped;  // integers print without ".0"
  Json again = Json::parse(dumped, "dumped");
  EXPECT_EQ(again.dump(), dumped);
  EXPECT_EQ(again.at("b").as_array()[2].as_number(), 1e-7);  // doubles round-trip exactly
  EXPECT_EQ(again.at("a").at("nested").as_string(), v.at("a").at("nested").as_string());
}

TEST(Json, DoublesRoundTripBitExactly) {
  Rng rng(7);
  for (int i = 0; i < 1000; ++i) {
    double x = (rng.uniform_double() - 0.5) * std::pow(10.0, static_cast<int>(rng.below(40)) - 20);
    Json j(x);
    EXPECT_EQ(Json::parse(j.dump()).as_number(), x) << j.dump();
  }
}

// Integers keep every bit: a double holds 53, and a seed of 8888888888888888888 recorded
// as a double (8888888888888888832 when read back) would be another run's seed (found by
// fuzz_flags' round trip through a run directory's config.json).
TEST(Json, IntegersPast2To53AreExact) {
  for (int64_t v : {int64_t{8888888888888888888}, int64_t{INT64_MAX}, int64_t{INT64_MIN},
                    int64_t{(1ll << 53) + 1}, int64_t{-1}, int64_t{0}}) {
    const Json j(v);
    EXPECT_EQ(j.dump(), std::to_string(v));
    EXPECT_EQ(Json::parse(j.dump()).as_int(), v);
    EXPECT_EQ(Json::parse("[" + std::to_string(v) + "]").dump(), "[" + std::to_string(v) + "]");
  }
  EXPECT_EQ(Json(uint64_t{1} << 63).dump(), "9.2233720368547758e+18");  // past int64: a double
  // Past int64, or written with a fraction or an exponent: a double, integral only < 2^53.
  EXPECT_TRUE(contains(error_of([] { Json::parse("9223372036854775808").as_int(); }), "integer"));
  EXPECT_TRUE(contains(error_of([] { Json::parse("8.8888888888888888e18").as_int(); }), "integer"));
  EXPECT_EQ(Json::parse("1e3").as_int(), 1000);
  EXPECT_EQ(Json::parse("-0").dump(), "0");
  // is_int32: what a model dimension or a token id may be.
  for (const char* ok : {"0", "-2147483648", "2147483647", "1e3", "-7.0"})
    EXPECT_TRUE(Json::parse(ok).is_int32()) << ok;
  for (const char* bad : {"2147483648", "-2147483649", "4294967298", "1.5", "\"7\"", "null"})
    EXPECT_FALSE(Json::parse(bad).is_int32()) << bad;
  // The flags a run directory records.
  Flags f("hh-test", "seeds");
  f.add_int("seed", 1, "seed");
  f.parse(std::vector<std::string>{"--seed=8888888888888888888"});
  EXPECT_EQ(f.to_json(), R"({"seed":8888888888888888888})");
  EXPECT_EQ(Json::parse(f.to_json()).at("seed").as_int(), 8888888888888888888);
}

TEST(Json, UnicodeEscapes) {
  EXPECT_EQ(Json::parse(R"("\u00e9")").as_string(), "\xC3\xA9");
  EXPECT_EQ(Json::parse(R"("\u20AC")").as_string(), "\xE2\x82\xAC");
  EXPECT_EQ(Json::parse(R"("\u0041\u0000b")").as_string(), std::string("A\0b", 3));
  // Surrogate pair U+1F600 -> 4-byte UTF-8.
  EXPECT_EQ(Json::parse(R"("\ud83d\ude00")").as_string(), "\xF0\x9F\x98\x80");
  EXPECT_EQ(Json::parse(R"("\uD834\uDD1E!")").as_string(), "\xF0\x9D\x84\x9E!");
  // Lone surrogates are replaced by U+FFFD (as documented in json.cpp), never mis-decoded.
  EXPECT_EQ(Json::parse(R"("\ud83dx")").as_string(), "\xEF\xBF\xBDx");
  EXPECT_EQ(Json::parse(R"("\ude00")").as_string(), "\xEF\xBF\xBD");
  EXPECT_EQ(Json::parse(R"("\ud83d\u0041")").as_string(),
            "\xEF\xBF\xBD"
            "A");
  // Raw UTF-8 passes through and dumps unchanged.
  Json s("caf\xC3\xA9 \xE2\x9C\x93 \xF0\x9F\x98\x80");
  EXPECT_EQ(s.dump(), "\"caf\xC3\xA9 \xE2\x9C\x93 \xF0\x9F\x98\x80\"");
  EXPECT_EQ(Json::parse(s.dump()).as_string(), s.as_string());
  // Bytes that are not well-formed UTF-8 dump as U+FFFD (UTF-8 EF BF BD), one per byte (a
  // cut character, a stray continuation byte, an overlong form, a surrogate, past U+10FFFF).
  for (const char* bad :
       {"\xE2\x9C", "\x9C", "\xC0\xAF", "\xED\xA0\x80", "\xF4\x90\x80\x80", "\xFF"}) {
    const std::string text = std::string("a") + bad + "b";
    const std::string want = "\"a" + [&] {
      std::string r;
      for (size_t k = 0; k < std::strlen(bad); k++) r += "\xEF\xBF\xBD";
      return r;
    }() + "b\"";
    EXPECT_EQ(Json(text).dump(), want) << text;
  }
}

// JSON text is UTF-8 (RFC 8259): a malformed sequence inside a string is refused at its
// offset, never read as bytes that dump() would then write as U+FFFD (found by fuzz_json's
// round trip through a safetensors header).
TEST(Json, InvalidUtf8InAStringIsAnErrorAtItsOffset) {
  for (const char* bad :
       {"\xE2\x9C", "\x9C", "\xC0\xAF", "\xED\xA0\x80", "\xF4\x90\x80\x80", "\xFF"}) {
    const std::string text = std::string("{\"k\": \"ab") + bad + "c\"}";
    try {
      Json::parse(text, "in.json");
      ADD_FAILURE() << "accepted " << text;
    } catch (const hh::Error& e) {
      EXPECT_NE(std::string(e.what()).find("in.json: invalid JSON at byte 9: invalid UTF-8"),
                std::string::npos)
          << e.what();
    }
  }
  EXPECT_EQ(Json::parse("\"\xC3\xA9\xF0\x9F\x98\x80\"").as_string(), "\xC3\xA9\xF0\x9F\x98\x80");
}

TEST(Json, MalformedInputNamesSourceAndOffset) {
  struct Case {
    const char* text;
    long offset;  // expected byte offset, -1 = only check that one is given
  };
  const Case cases[] = {
      {"", 0},
      {"{", 1},
      {"[1,]", 3},
      {"{\"a\":1,}", 7},
      {"{a:1}", 1},
      {"[1 2]", 3},
      {"{\"a\" 1}", 5},
      {"1 2", 2},
      {"tru", 0},
      {"nul", 0},
      {"\"abc", 4},
      {"\"\\x\"", -1},
      {"\"\\u12\"", -1},
      {"\"a\nb\"", -1},
      {"-", 1},
      {"1.", 2},
      {".5", 0},
      {"1e", 2},
      {"+1", 0},
      {"NaN", 0},
      {"'a'", 0},
      {"[", 1},
      {"{\"a\":}", 5},
      {"[1]]", 3},
      {"\"\\uZZZZ\"", -1},
      {"{\"a\":1 \"b\":2}", -1},
      {"01", 0},
      {"-012", 1},
      {"[00]", 1},
  };
  for (const auto& c : cases) {
    std::string msg = error_of([&] { Json::parse(c.text, "input.json:3"); });
    EXPECT_TRUE(contains(msg, "input.json:3")) << "'" << c.text << "': " << msg;
    EXPECT_TRUE(contains(msg, "at byte ")) << "'" << c.text << "': " << msg;
    if (c.offset >= 0) {
      EXPECT_TRUE(contains(msg, "at byte " + std::to_string(c.offset) + ":"))
          << "'" << c.text << "': " << msg;
    }
  }
}

TEST(Json, DeepNestingIsRefusedNotACrash) {
  std::string ok = std::string(100, '[') + std::string(100, ']');
  EXPECT_EQ(Json::parse(ok).size(), 1u);
  std::string deep = std::string(100000, '[') + std::string(100000, ']');
  EXPECT_TRUE(contains(error_of([&] { Json::parse(deep, "deep"); }), "nesting too deep"));
  std::string deep_obj;
  for (int i = 0; i < 100000; ++i) deep_obj += "{\"a\":";
  EXPECT_TRUE(contains(error_of([&] { Json::parse(deep_obj, "deep"); }), "nesting too deep"));
}

TEST(Json, TypedAccessErrors) {
  Json v = Json::parse(R"({"x":1.5,"s":"t"})");
  EXPECT_TRUE(contains(error_of([&] { v.at("x").as_int(); }), "integer"));
  EXPECT_TRUE(contains(error_of([&] { v.at("s").as_number(); }), "number"));
  EXPECT_TRUE(contains(error_of([&] { v.at("missing"); }), "missing"));
  EXPECT_EQ(v.find("missing"), nullptr);
}

// =========================================================================== Flags

Flags make_flags() {
  Flags f("hh-test", "Tests the flag parser.");
  f.add_int("steps", 1000, "optimizer steps");
  f.add_float("lr", 3e-4, "learning rate");
  f.add_string("data", "", "training dataset");
  f.add_bool("verbose", false, "print more");
  f.add_bool("shuffle", true, "shuffle the data");
  f.add_usage("hh-test [flags] INPUT...");
  f.takes_positional();
  return f;
}

TEST(Flags, DefaultsAndValues) {
  Flags f = make_flags();
  auto pos = f.parse(std::vector<std::string>{});
  EXPECT_TRUE(pos.empty());
  EXPECT_EQ(f.get_int("steps"), 1000);
  EXPECT_EQ(f.get_float("lr"), 3e-4);
  EXPECT_EQ(f.get_string("data"), "");
  EXPECT_FALSE(f.get_bool("verbose"));
  EXPECT_TRUE(f.get_bool("shuffle"));
  EXPECT_FALSE(f.is_set("steps"));

  Flags g = make_flags();
  pos = g.parse(
      {"in1", "--steps=5", "--lr", "-0.5", "--data", "a=b", "--verbose", "--no-shuffle", "in2"});
  EXPECT_EQ(pos, (std::vector<std::string>{"in1", "in2"}));
  EXPECT_EQ(g.get_int("steps"), 5);
  EXPECT_EQ(g.get_float("lr"), -0.5);
  EXPECT_EQ(g.get_string("data"), "a=b");
  EXPECT_TRUE(g.get_bool("verbose"));
  EXPECT_FALSE(g.get_bool("shuffle"));
  EXPECT_TRUE(g.is_set("steps"));
  EXPECT_TRUE(g.is_set("shuffle"));
}

TEST(Flags, ArgcArgvAndDoubleDash) {
  Flags f = make_flags();
  const char* argv[] = {"prog", "--steps", "-3", "x", "--", "--verbose", "-h"};
  auto pos = f.parse(7, const_cast<char**>(argv));
  EXPECT_EQ(f.get_int("steps"), -3);
  EXPECT_FALSE(f.get_bool("verbose"));
  EXPECT_EQ(pos, (std::vector<std::string>{"x", "--verbose", "-h"}));
}

TEST(Flags, BoolSpellings) {
  for (auto [arg, want] : std::vector<std::pair<std::string, bool>>{{"--verbose=true", true},
                                                                    {"--verbose=1", true},
                                                                    {"--verbose=false", false},
                                                                    {"--verbose=0", false},
                                                                    {"--verbose", true},
                                                                    {"--no-verbose", false}}) {
    Flags f = make_flags();
    f.parse({arg});
    EXPECT_EQ(f.get_bool("verbose"), want) << arg;
  }
  Flags f = make_flags();
  EXPECT_TRUE(contains(error_of([&] { f.parse({"--verbose=yes"}); }), "--verbose"));
  Flags g = make_flags();
  EXPECT_TRUE(contains(error_of([&] { g.parse({"--no-verbose=true"}); }), "takes no value"));
  Flags h = make_flags();  // --no- only exists for booleans
  EXPECT_TRUE(contains(error_of([&] { h.parse({"--no-steps"}); }), "unknown flag --no-steps"));
}

TEST(Flags, NumbersMustParseWhole) {
  for (const char* bad : {"1.5", "12abc", "", " 3", "0x10", "99999999999999999999", "1e3"}) {
    Flags f = make_flags();
    std::string msg = error_of([&] { f.parse({std::string("--steps=") + bad}); });
    EXPECT_TRUE(contains(msg, "--steps")) << bad << ": " << msg;
    EXPECT_TRUE(contains(msg, "not an integer")) << bad << ": " << msg;
  }
  for (const char* bad : {"abc", "nan", "inf", "-inf", "1e999", "", "1.5x", "NaN"}) {
    Flags f = make_flags();
    std::string msg = error_of([&] { f.parse({std::string("--lr=") + bad}); });
    EXPECT_TRUE(contains(msg, "--lr")) << bad << ": " << msg;
  }
  Flags f = make_flags();
  f.parse({"--lr=1e-3", "--steps=-42"});
  EXPECT_EQ(f.get_float("lr"), 1e-3);
  EXPECT_EQ(f.get_int("steps"), -42);
}

TEST(Flags, UnknownMissingRepeated) {
  Flags a = make_flags();
  std::string msg = error_of([&] { a.parse({"--stpes=3"}); });
  EXPECT_TRUE(contains(msg, "unknown flag --stpes")) << msg;
  EXPECT_TRUE(contains(msg, "did you mean --steps?")) << msg;
  Flags b = make_flags();
  msg = error_of([&] { b.parse({"--zzzzzzzz=3"}); });
  EXPECT_TRUE(contains(msg, "unknown flag --zzzzzzzz")) << msg;
  EXPECT_FALSE(contains(msg, "did you mean")) << msg;
  Flags c = make_flags();
  msg = error_of([&] { c.parse({"--steps"}); });
  EXPECT_TRUE(contains(msg, "--steps is missing its value")) << msg;
  Flags d = make_flags();
  msg = error_of([&] { d.parse({"--data", "--verbose"}); });
  EXPECT_TRUE(contains(msg, "--data is missing its value")) << msg;
  Flags e = make_flags();
  msg = error_of([&] { e.parse({"--steps=1", "--steps=2"}); });
  EXPECT_TRUE(contains(msg, "--steps given twice")) << msg;
  Flags g = make_flags();
  msg = error_of([&] { g.parse({"--verbose", "--no-verbose"}); });
  EXPECT_TRUE(contains(msg, "--verbose given twice")) << msg;
  Flags h = make_flags();
  msg = error_of([&] { h.parse({"-x"}); });
  EXPECT_TRUE(contains(msg, "-x")) << msg;
  Flags i = make_flags();
  EXPECT_EQ(i.parse({"-"}), (std::vector<std::string>{"-"}));  // "-" is positional (stdin)
}

// A program without positional arguments refuses them, so nothing on the command line is
// silently dropped; a boolean word after a bare boolean flag is refused everywhere.
TEST(Flags, StrayArgumentsAndBareBooleans) {
  auto without_positional = [] {
    Flags f("hh-test", "No positional arguments.");
    f.add_bool("resume", false, "continue");
    f.add_int("steps", 1, "steps");
    return f;
  };
  Flags a = without_positional();
  std::string msg = error_of([&] { a.parse({"--steps=2", "extra.bin"}); });
  EXPECT_TRUE(contains(msg, "unexpected argument 'extra.bin'")) << msg;
  Flags b = without_positional();
  msg = error_of([&] { b.parse({"--resume", "false"}); });
  EXPECT_TRUE(contains(msg, "--resume is a boolean: write --resume=false")) << msg;
  Flags c = without_positional();
  msg = error_of([&] { c.parse({"--", "x"}); });
  EXPECT_TRUE(contains(msg, "unexpected argument 'x'")) << msg;
  Flags d = make_flags();  // takes positional arguments, but not a boolean's word
  msg = error_of([&] { d.parse({"--verbose", "0"}); });
  EXPECT_TRUE(contains(msg, "--verbose is a boolean: write --verbose=0")) << msg;
  Flags e = make_flags();
  EXPECT_EQ(e.parse({"--verbose", "in.txt"}), (std::vector<std::string>{"in.txt"}));
  EXPECT_TRUE(e.get_bool("verbose"));
  Flags g = without_positional();
  g.parse({"--resume", "--steps=3"});
  EXPECT_TRUE(g.get_bool("resume"));
}

TEST(Flags, Int32RangeIsChecked) {
  for (const char* big : {"2147483648", "4294967297", "-2147483649"}) {
    Flags f = make_flags();
    f.parse({std::string("--steps=") + big});
    EXPECT_EQ(f.get_int("steps"), std::stoll(big));
    std::string msg = error_of([&] { f.get_int32("steps"); });
    EXPECT_TRUE(contains(msg, std::string("--steps=") + big + " is out of range")) << msg;
  }
  Flags f = make_flags();
  f.parse({"--steps=-2147483648"});
  EXPECT_EQ(f.get_int32("steps"), INT32_MIN);
}

TEST(Flags, HelpListsFlagsWithDefaults) {
  Flags f = make_flags();
  std::string help = f.help();
  for (const char* want :
       {"hh-test", "Tests the flag parser.", "--steps=<int>", "optimizer steps (default: 1000)",
        "--lr=<float>", "(default: 0.0003)", "--data=<string>", "(default: \"\")",
        "--verbose=<bool>", "print more (default: false)", "(default: true)",
        "hh-test [flags] INPUT..."}) {
    EXPECT_TRUE(contains(help, want)) << "missing '" << want << "' in:\n" << help;
  }
  // Flags are listed in the order they were added.
  EXPECT_LT(help.find("--steps"), help.find("--lr"));
  EXPECT_LT(help.find("--lr"), help.find("--data"));
}

TEST(FlagsDeathTest, HelpExitsZero) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  Flags f = make_flags();
  EXPECT_EXIT(f.parse({"--help"}), ::testing::ExitedWithCode(0), "");
  EXPECT_EXIT(f.parse({"x", "-h"}), ::testing::ExitedWithCode(0), "");
}

TEST(Flags, SetGetAndJson) {
  Flags f = make_flags();
  f.parse({"--steps=7", "--data=x\"y"});
  f.set("lr", "0.25");
  EXPECT_EQ(f.get_float("lr"), 0.25);
  EXPECT_FALSE(f.is_set("lr"));
  EXPECT_TRUE(contains(error_of([&] { f.set("steps", "many"); }), "not an integer"));
  EXPECT_TRUE(contains(error_of([&] { f.get_int("lr"); }), "--lr"));
  EXPECT_TRUE(contains(error_of([&] { f.get_int("nope"); }), "--nope"));
  Json j = Json::parse(f.to_json(), "to_json");
  EXPECT_EQ(j.at("steps").as_int(), 7);
  EXPECT_EQ(j.at("lr").as_number(), 0.25);
  EXPECT_EQ(j.at("data").as_string(), "x\"y");
  EXPECT_EQ(j.at("verbose").as_bool(), false);
  EXPECT_EQ(j.at("shuffle").as_bool(), true);
  EXPECT_EQ(j.size(), 5u);
}

TEST(Flags, RunMainReportsErrors) {
  EXPECT_EQ(run_main("prog", [] { return 3; }), 3);
  ::testing::internal::CaptureStderr();
  int rc = run_main("prog", []() -> int { HH_FAIL("bad input ", 42); });
  std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(rc, 1);
  EXPECT_TRUE(contains(err, "prog: error: bad input 42")) << err;
  ::testing::internal::CaptureStderr();
  rc = run_main("prog", []() -> int { throw std::bad_alloc(); });
  err = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(rc, 1);
  EXPECT_TRUE(contains(err, "prog: error: out of memory")) << err;
  ::testing::internal::CaptureStderr();
  rc = run_main("prog", []() -> int { throw std::out_of_range("index 9"); });
  err = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(rc, 1);
  EXPECT_TRUE(contains(err, "prog: error: index 9")) << err;
}

// ============================================================================= Rng

TEST(Rng, GoldenOutputsSeed42) {
  // From scripts/reference/core_reference.py: an independent Python implementation of
  // splitmix64 seeding + xoshiro256** (Blackman & Vigna 2018), seed 42.
  const uint64_t want[8] = {0x15780b2e0c2ec716ull, 0x6104d9866d113a7eull, 0xae17533239e499a1ull,
                            0xecb8ad4703b360a1ull, 0xfde6dc7fe2ec5e64ull, 0xc50da53101795238ull,
                            0xb82154855a65ddb2ull, 0xd99a2743ebe60087ull};
  Rng rng(42);
  EXPECT_EQ(rng.state()[0], 0xbdd732262feb6e95ull);
  EXPECT_EQ(rng.state()[3], 0x581ce1ff0e4ae394ull);
  for (uint64_t w : want) EXPECT_EQ(rng.next_u64(), w);
  const uint64_t want_below[8] = {83, 378, 680, 924, 991, 769, 719, 850};  // same script
  Rng r2(42);
  for (uint64_t w : want_below) EXPECT_EQ(r2.below(1000), w);
}

TEST(Rng, StateRestoresStream) {
  Rng a(123);
  for (int i = 0; i < 10; ++i) a.next_u64();
  auto saved = a.state();
  uint64_t x = a.next_u64(), y = a.next_u64();
  Rng b(999);
  b.set_state(saved);
  EXPECT_EQ(b.next_u64(), x);
  EXPECT_EQ(b.next_u64(), y);
  EXPECT_NE(Rng(1).next_u64(), Rng(2).next_u64());
}

TEST(Rng, RangesAndMoments) {
  Rng rng(5);
  for (uint64_t n : {1ull, 2ull, 3ull, 7ull, 1000ull, (1ull << 63) + 1}) {
    for (int i = 0; i < 1000; ++i) ASSERT_LT(rng.below(n), n);
  }
  std::vector<int> counts(3);
  for (int i = 0; i < 30000; ++i) counts[rng.below(3)]++;
  for (int c : counts) EXPECT_NEAR(c, 10000, 600);
  for (int i = 0; i < 10000; ++i) {
    float u = rng.uniform();
    ASSERT_GE(u, 0.0f);
    ASSERT_LT(u, 1.0f);
  }
  const int n = 100000;
  double sum = 0, sum_sq = 0;
  for (int i = 0; i < n; ++i) {
    double z = rng.normal();
    ASSERT_TRUE(std::isfinite(z));
    sum += z;
    sum_sq += z * z;
  }
  double mean = sum / n, var = sum_sq / n - mean * mean;
  EXPECT_NEAR(mean, 0.0, 0.02);
  EXPECT_NEAR(var, 1.0, 0.03);
}

// ====================================================================== safetensors

// A file with the given header text and data section, laid out by hand.
std::vector<uint8_t> raw_safetensors(const std::string& header, size_t data_bytes,
                                     uint64_t header_len_override = UINT64_MAX) {
  ByteWriter w;
  w.u64(header_len_override == UINT64_MAX ? header.size() : header_len_override);
  w.bytes(header.data(), header.size());
  for (size_t i = 0; i < data_bytes; ++i) w.buffer().push_back(static_cast<uint8_t>(i));
  return w.buffer();
}

SafeTensorsWriter sample_writer() {
  SafeTensorsWriter w;
  w.set_metadata("stage", "pm");
  w.set_metadata("quote\"key", "caf\xC3\xA9");
  std::vector<float> a = {1.5f, -0.0f, 3e-39f, std::nanf("0x123"), 1e30f, -7.25f};
  w.add_f32("layer.0.w", {2, 3}, a.data());
  float s = 4.0f;
  w.add_f32("scalar", {}, &s);
  w.add_f32("empty", {3, 0}, nullptr);
  std::vector<int64_t> ids = {-1, 5, 1 << 30};
  w.add("ids", DType::I64, {3}, ids.data(), ids.size() * 8);
  std::vector<int32_t> i32 = {7, -8};
  w.add("i32", DType::I32, {2}, i32.data(), 8);
  uint16_t halves[3] = {0x3c00, 0xc000, 0x0001};  // 1, -2, smallest subnormal
  w.add("h", DType::F16, {3}, halves, 6);
  uint8_t u8[3] = {1, 2, 3};
  w.add("u8", DType::U8, {1, 3}, u8, 3);
  return w;
}

TEST(SafeTensors, RoundTripIsBitExact) {
  TempDir dir;
  SafeTensorsWriter w = sample_writer();
  std::string path = dir.file("m.safetensors");
  w.save(path);
  std::vector<uint8_t> bytes = read_file_bytes(path);
  EXPECT_EQ(bytes, w.serialize());
  uint64_t header_len = ByteReader(bytes.data(), bytes.size(), "x").u64();
  EXPECT_EQ(header_len % 8, 0u);  // padded like the HF library
  std::string header(bytes.begin() + 8, bytes.begin() + 8 + header_len);
  EXPECT_EQ(header.substr(0, header.find_last_not_of(' ') + 1).back(), '}') << header;

  SafeTensorsFile f = SafeTensorsFile::load(path);
  EXPECT_EQ(f.source(), path);
  EXPECT_EQ(f.metadata().at("stage"), "pm");
  EXPECT_EQ(f.metadata().at("quote\"key"), "caf\xC3\xA9");
  EXPECT_EQ(f.tensors().size(), 7u);
  const TensorInfo& t = f.info("layer.0.w");
  EXPECT_EQ(t.dtype, DType::F32);
  EXPECT_EQ(t.shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(t.numel(), 6);
  std::vector<float> a = {1.5f, -0.0f, 3e-39f, std::nanf("0x123"), 1e30f, -7.25f};
  std::vector<float> back = f.read_f32("layer.0.w", {2, 3});
  ASSERT_EQ(back.size(), 6u);
  EXPECT_EQ(std::memcmp(back.data(), a.data(), 24), 0);  // NaN payload, -0 and denormal kept
  EXPECT_EQ(f.read_f32("scalar"), std::vector<float>{4.0f});
  EXPECT_EQ(f.info("scalar").numel(), 1);
  EXPECT_TRUE(f.read_f32("empty", {3, 0}).empty());
  EXPECT_EQ(f.read_i32("ids"), (std::vector<int32_t>{-1, 5, 1 << 30}));
  EXPECT_EQ(f.read_i32("i32"), (std::vector<int32_t>{7, -8}));
  std::vector<float> h = f.read_f32("h");
  EXPECT_EQ(h[0], 1.0f);
  EXPECT_EQ(h[1], -2.0f);
  EXPECT_EQ(h[2], std::ldexp(1.0f, -24));
  EXPECT_EQ(std::memcmp(f.data("u8"), "\x01\x02\x03", 3), 0);
  EXPECT_FALSE(f.has("nope"));
  EXPECT_TRUE(contains(error_of([&] { f.info("nope"); }), path + ": no tensor 'nope'"));
  EXPECT_TRUE(contains(error_of([&] { f.read_f32("ids"); }), "dtype I64"));
  EXPECT_TRUE(contains(error_of([&] { f.read_i32("layer.0.w"); }), "dtype F32"));
  EXPECT_TRUE(contains(error_of([&] {
                         f.read_f32("layer.0.w", {3, 2});
                       }),
                       path + ": tensor 'layer.0.w' has shape [2,3], expected [3,2]"));
}

TEST(SafeTensors, ReadsFileWrittenByPython) {
  std::string path = std::string(HH_SOURCE_DIR) + "/tests/fixtures/core_python.safetensors";
  SafeTensorsFile f = SafeTensorsFile::load(path);
  EXPECT_EQ(f.metadata().at("stage"), "sft");
  EXPECT_EQ(f.metadata().at("note"), "caf\xC3\xA9 \xE2\x9C\x93");
  EXPECT_EQ(f.metadata().at("step"), "12");
  EXPECT_EQ(f.tensors().size(), 12u);
  std::vector<float> w = f.read_f32("weight", {2, 3});
  for (int k = 0; k < 6; ++k) EXPECT_EQ(w[k], static_cast<float>(0.25 * k - 1.1)) << k;
  EXPECT_EQ(f.read_f32("scalar", {}), std::vector<float>{2.75f});
  EXPECT_EQ(f.info("scalar").shape.size(), 0u);
  EXPECT_EQ(f.info("empty").shape, (std::vector<int64_t>{0, 4}));
  // F16/BF16 widening matches PyTorch's float32 conversion bit for bit (incl. inf, -0,
  // subnormals).
  for (auto [narrow, wide] :
       {std::pair<const char*, const char*>{"half", "f16_as_f32"}, {"brain", "bf16_as_f32"}}) {
    std::vector<float> got = f.read_f32(narrow), want = f.read_f32(wide);
    ASSERT_EQ(got.size(), want.size());
    EXPECT_EQ(std::memcmp(got.data(), want.data(), 4 * got.size()), 0) << narrow;
  }
  EXPECT_EQ(f.read_f32("half")[2], 65504.0f);
  EXPECT_EQ(f.read_i32("ids64"), (std::vector<int32_t>{-7, 0, 2147483647}));
  EXPECT_EQ(f.read_i32("ids32"), (std::vector<int32_t>{1, -2, 3, 50257}));
  EXPECT_EQ(f.info("bytes").dtype, DType::U8);
  EXPECT_EQ(f.data("bytes")[2], 255);
}

// float_to_half against PyTorch's float32 -> float16 (round to nearest even) on values over
// the whole range: subnormal and normal ties, the overflow edge (65520 and up: inf).
TEST(Half, RoundingMatchesPyTorch) {
  const std::string path = std::string(HH_SOURCE_DIR) + "/tests/fixtures/core_python.safetensors";
  SafeTensorsFile f = SafeTensorsFile::load(path);
  const std::vector<float> x = f.read_f32("rounding_f32");
  const TensorInfo& info = f.info("rounding_f16");
  ASSERT_EQ(info.dtype, DType::F16);
  ASSERT_EQ(static_cast<size_t>(info.numel()), x.size());
  const uint8_t* want = f.data("rounding_f16");
  for (size_t i = 0; i < x.size(); i++) {
    const uint16_t expected = static_cast<uint16_t>(want[2 * i] | (want[2 * i + 1] << 8));
    EXPECT_EQ(float_to_half(x[i]), expected) << "x = " << x[i] << " (index " << i << ")";
  }
}

// Every finite half survives float_to_half(half_to_float(h)); the midpoint between two
// neighbours goes to the even one, and just above it to the upper one.
TEST(Half, RoundTripsEveryHalfAndBreaksTiesToEven) {
  for (uint32_t h = 0; h < 0x10000u; h++) {
    if ((h & 0x7c00u) == 0x7c00u && (h & 0x3ffu) != 0) continue;  // NaN
    ASSERT_EQ(float_to_half(half_to_float(static_cast<uint16_t>(h))), h) << std::hex << h;
  }
  for (uint32_t h = 0; h < 0x7bffu; h++) {
    const double lo = half_to_float(static_cast<uint16_t>(h));
    const double hi = half_to_float(static_cast<uint16_t>(h + 1));
    const float mid = static_cast<float>((lo + hi) / 2);  // exact in float
    ASSERT_EQ(float_to_half(mid), (h & 1u) ? h + 1 : h) << std::hex << h;
    ASSERT_EQ(float_to_half(std::nextafter(mid, 1e9f)), h + 1) << std::hex << h;
    ASSERT_EQ(float_to_half(-mid), ((h & 1u) ? h + 1 : h) | 0x8000u) << std::hex << h;
  }
  EXPECT_EQ(float_to_half(65519.996f), 0x7bffu);
  EXPECT_EQ(float_to_half(65520.0f), 0x7c00u);
  EXPECT_EQ(float_to_half(-1e30f), 0xfc00u);
  EXPECT_EQ(float_to_half(std::ldexp(1.0f, -25)), 0u);  // a tie with 0: even
  EXPECT_EQ(float_to_half(std::nextafter(std::ldexp(1.0f, -25), 1.0f)), 1u);
  EXPECT_TRUE(std::isnan(half_to_float(float_to_half(std::nanf("")))));
}

TEST(SafeTensors, CorruptionIsRejectedWithFileName) {
  const std::string what = "bad.safetensors";
  const std::string ok_entry = R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  struct Case {
    std::vector<uint8_t> bytes;
    const char* expect;
  };
  std::vector<Case> cases = {
      {{1, 2, 3, 4, 5}, "too short"},
      {raw_safetensors("{}", 0, 200ull << 20), "exceeds the limit"},
      {raw_safetensors("{}", 0, 9), "runs past the end of the file"},
      {raw_safetensors("{\"a\":", 0), "invalid JSON"},
      {raw_safetensors("[1,2]", 0), "not a JSON object"},
      {raw_safetensors("{\"__metadata__\":[],\"a\":1}", 0), "__metadata__ is not an object"},
      {raw_safetensors("{\"__metadata__\":{\"k\":1}}", 0), "not a string"},
      {raw_safetensors("{\"a\":[1]}", 0), "entry is not an object"},
      {raw_safetensors(R"({"a":{"dtype":"F32","shape":[2]}})", 8), "exactly the keys"},
      {raw_safetensors(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1}})", 8),
       "exactly the keys"},
      {raw_safetensors(R"({"a":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}})", 8),
       "unknown dtype \"F64\""},
      {raw_safetensors(R"({"a":{"dtype":7,"shape":[1],"data_offsets":[0,4]}})", 4),
       "unknown dtype"},
      {raw_safetensors(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8),
       "not a non-negative integer"},
      {raw_safetensors(R"({"a":{"dtype":"F32","shape":[1.5],"data_offsets":[0,8]}})", 8),
       "not a non-negative integer"},
      {raw_safetensors(R"({"a":{"dtype":"F32","shape":"2","data_offsets":[0,8]}})", 8),
       "shape is not an array"},
      {raw_safetensors(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", 8),
       "data_offsets must be"},
      {raw_safetensors(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,"8"]}})", 8),
       "not non-negative integers"},
      {raw_safetensors(R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", 8),
       "end before they begin"},
      {raw_safetensors(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8),
       "span 8 bytes but F32 [3] needs 12"},
      {raw_safetensors(
           R"({"a":{"dtype":"U8","shape":[4503599627370496,4503599627370496],"data_offsets":[0,8]}})",
           8),
       "more than 2^64"},
      // An empty span: once the element count overflows, the byte count is never formed
      // (it stays 0), so only the overflow flag tells this shape from an empty tensor.
      {raw_safetensors(
           R"({"a":{"dtype":"U8","shape":[4294967296,4294967296],"data_offsets":[0,0]}})", 0),
       "more than 2^64"},
      {raw_safetensors(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 8),
       "run past the end of the data"},
      {raw_safetensors(
           "{" + ok_entry + R"(,"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12),
       "overlaps"},
      {raw_safetensors(
           "{" + ok_entry + R"(,"b":{"dtype":"F32","shape":[1],"data_offsets":[12,16]}})", 16),
       "gap in the data: bytes [8,12)"},
      {raw_safetensors("{" + ok_entry + "}", 11), "3 trailing bytes"},
      {raw_safetensors("{}", 1), "1 trailing bytes"},
      {raw_safetensors(R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},)"
                       R"("b":{"dtype":"F32","shape":[1],"data_offsets":[2,6]}})",
                       6),
       "misaligned"},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    std::string msg = error_of([&] { SafeTensorsFile::parse(cases[i].bytes, what); });
    EXPECT_EQ(msg.rfind(what + ": ", 0), 0u) << "case " << i << ": " << msg;
    EXPECT_TRUE(contains(msg, cases[i].expect))
        << "case " << i << " wants '" << cases[i].expect << "': " << msg;
  }
  // The valid neighbours of those cases load (so the checks above are not vacuous).
  EXPECT_EQ(SafeTensorsFile::parse(raw_safetensors("{" + ok_entry + "}", 8), what).tensors().size(),
            1u);
  EXPECT_EQ(SafeTensorsFile::parse(raw_safetensors("{}", 0), what).tensors().size(), 0u);
  EXPECT_EQ(SafeTensorsFile::parse(
                raw_safetensors(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                                R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},)"
                                R"("z":{"dtype":"F32","shape":[0],"data_offsets":[8,8]}})",
                                8),
                what)
                .tensors()
                .size(),
            3u);
  // A missing file names the path and the system error.
  std::string msg = error_of([] { SafeTensorsFile::load("/nonexistent/x.safetensors"); });
  EXPECT_TRUE(contains(msg, "/nonexistent/x.safetensors: No such file or directory")) << msg;
}

// Reads every tensor of a file that loaded, so ASan sees any out-of-bounds view.
void touch_all(const SafeTensorsFile& f) {
  for (const auto& [name, info] : f.tensors()) {
    if (info.dtype == DType::F32 || info.dtype == DType::F16 || info.dtype == DType::BF16) {
      f.read_f32(name);
    } else if (info.dtype == DType::I32 || info.dtype == DType::I64) {
      try {
        f.read_i32(name);
      } catch (const Error&) {  // an I64 value out of int32 range
      }
    } else {
      volatile uint8_t sink = 0;
      for (size_t i = info.begin; i < info.end; ++i) sink = sink + f.data(name)[i - info.begin];
    }
  }
}

TEST(SafeTensors, TruncationsAndByteFlipsNeverCrash) {
  std::vector<uint8_t> valid = sample_writer().serialize();
  touch_all(SafeTensorsFile::parse(valid, "valid"));
  Rng rng(2024);
  // Every proper prefix of a valid file is invalid.
  const int truncations = fast_mode() ? 100 : 400;
  for (int i = 0; i < truncations; ++i) {
    size_t len = i < 16 ? static_cast<size_t>(i) : rng.below(valid.size());
    std::vector<uint8_t> cut(valid.begin(), valid.begin() + len);
    std::string msg = error_of([&] { SafeTensorsFile::parse(cut, "cut"); });
    ASSERT_EQ(msg.rfind("cut: ", 0), 0u) << "length " << len << ": " << msg;
  }
  // Random byte flips: either the file still loads (and reads back) or hh::Error.
  const int flips = fast_mode() ? 1000 : 5000;
  int rejected = 0;
  for (int i = 0; i < flips; ++i) {
    std::vector<uint8_t> bad = valid;
    int n_flips = 1 + static_cast<int>(rng.below(3));
    for (int k = 0; k < n_flips; ++k) {
      size_t pos = rng.below(bad.size());
      if (rng.below(4) == 0) pos = rng.below(8);  // hit the header length often
      bad[pos] ^= static_cast<uint8_t>(1 + rng.below(255));
    }
    try {
      touch_all(SafeTensorsFile::parse(bad, "flip"));
    } catch (const Error& e) {
      ++rejected;
      ASSERT_EQ(std::string(e.what()).rfind("flip: ", 0), 0u) << e.what();
    }
  }
  EXPECT_GT(rejected, flips / 4);  // most header damage is detected
}

TEST(SafeTensors, WriterRejectsBadInput) {
  SafeTensorsWriter w;
  float x[4] = {};
  EXPECT_TRUE(contains(error_of([&] { w.add("a", DType::F32, {2}, x, 12); }), "needs 8 bytes"));
  EXPECT_TRUE(contains(error_of([&] { w.add("a", DType::F32, {-1}, x, 0); }), "negative"));
  EXPECT_TRUE(contains(error_of([&] { w.add_f32("__metadata__", {1}, x); }), "__metadata__"));
  w.add_f32("a", {1}, x);
  EXPECT_TRUE(contains(error_of([&] { w.add_f32("a", {1}, x); }), "added twice"));
  uint8_t b = 0;
  w.add("b", DType::U8, {1}, &b, 1);
  EXPECT_TRUE(contains(error_of([&] { w.add_f32("c", {1}, x); }), "misaligned"));
  // An empty writer produces a valid empty file.
  SafeTensorsFile f = SafeTensorsFile::parse(SafeTensorsWriter().serialize(), "empty");
  EXPECT_TRUE(f.tensors().empty());
  EXPECT_TRUE(f.metadata().empty());
}

// ========================================================================== fileio

TEST(FileIo, ReadErrorsNameThePath) {
  TempDir dir;
  std::string missing = dir.file("missing.bin");
  EXPECT_TRUE(contains(error_of([&] { read_file_bytes(missing); }),
                       missing + ": No such file or directory"));
  EXPECT_TRUE(contains(error_of([&] { read_file_text(dir.path()); }), dir.path() + ": "));
  EXPECT_FALSE(file_exists(missing));
  EXPECT_TRUE(file_exists(dir.path()));
}

TEST(FileIo, AtomicWriteOverwritesAndLeavesNoTemp) {
  TempDir dir;
  std::string path = dir.file("out.txt");
  write_file_atomic(path, std::string_view("first version, long"));
  EXPECT_EQ(read_file_text(path), "first version, long");
  write_file_atomic(path, std::string_view("second"));
  EXPECT_EQ(read_file_text(path), "second");
  write_file_atomic(path, nullptr, 0);
  EXPECT_EQ(read_file_bytes(path).size(), 0u);
  EXPECT_EQ(dir.list(), std::vector<std::string>{"out.txt"});
  // Relative path in the current directory (parent ".") also works.
  std::string rel = "hh_test_core_rel_" + std::to_string(getpid()) + ".txt";
  write_file_atomic(rel, std::string_view("rel"));
  EXPECT_EQ(read_file_text(rel), "rel");
  std::remove(rel.c_str());
}

// The point of writing to a temporary file and renaming it: a writer killed at any moment
// (Ctrl-C twice, an OOM kill, a preempted job) leaves the old file or the new one, whole.
// A child process rewrites an 8 MiB file over and over, alternating two contents, and is
// killed with SIGKILL after a varying delay; the file must always be exactly one of the
// two. (Killed writers leave their temporary file, path.tmp.<pid>, behind; the target is
// never touched until the rename.)
TEST(FileIo, AKilledWriterLeavesTheOldFileOrTheNew) {
  TempDir dir;
  const std::string path = dir.file("checkpoint.bin");
  const std::string a(8 << 20, 'a'), b(8 << 20, 'b');
  write_file_atomic(path, a);
  Rng rng(5);
  for (int kill_no = 0; kill_no < 30; kill_no++) {
    const pid_t child = fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
      for (int i = 0;; i++) write_file_atomic(path, i % 2 ? a : b);
    }
    std::this_thread::sleep_for(std::chrono::microseconds(500 + rng.below(20000)));
    ASSERT_EQ(kill(child, SIGKILL), 0);
    int status = 0;
    ASSERT_EQ(waitpid(child, &status, 0), child);
    const std::string now = read_file_text(path);
    ASSERT_TRUE(now == a || now == b) << "after kill " << kill_no << " the file holds "
                                      << now.size() << " bytes, neither version";
  }
}

TEST(FileIo, FailedAtomicWriteKeepsOldFile) {
  TempDir dir;
  // Directory does not exist.
  std::string nowhere = dir.file("no/such/dir/out.txt");
  EXPECT_TRUE(contains(error_of([&] { write_file_atomic(nowhere, std::string_view("x")); }),
                       nowhere + ": "));
  // Target is a directory: the rename fails, the temp file must be cleaned up.
  make_dirs(dir.file("target"));
  std::string msg =
      error_of([&] { write_file_atomic(dir.file("target"), std::string_view("data")); });
  EXPECT_TRUE(contains(msg, dir.file("target") + ": rename failed")) << msg;
  EXPECT_EQ(dir.list(), std::vector<std::string>{"target"});
  // Directory not writable (root ignores permissions, so only checked for other users).
  std::string path = dir.file("keep.txt");
  write_file_atomic(path, std::string_view("old contents"));
  if (geteuid() != 0) {
    ASSERT_EQ(chmod(dir.path().c_str(), 0555), 0);
    msg = error_of([&] { write_file_atomic(path, std::string_view("new")); });
    chmod(dir.path().c_str(), 0755);
    EXPECT_TRUE(contains(msg, path + ": ")) << msg;
    EXPECT_EQ(read_file_text(path), "old contents");
    EXPECT_EQ(dir.list(), (std::vector<std::string>{"keep.txt", "target"}));
  }
  EXPECT_EQ(read_file_text(path), "old contents");
}

// An output that is an input, however spelled (another path, a hard link, a symbolic
// link), is refused before any work; so are folders and missing parent folders.
TEST(FileIo, OutputPathChecks) {
  TempDir dir;
  const std::string in = dir.file("in.txt");
  write_file_atomic(in, std::string_view("input"));
  const std::vector<std::pair<std::string, std::string>> inputs = {{"--input", in},
                                                                   {"--other", ""}};
  check_output_path("--out", "", inputs);                   // not asked for
  check_output_path("--out", dir.file("new.txt"), inputs);  // a new file
  ASSERT_EQ(::link(in.c_str(), dir.file("hard.txt").c_str()), 0);
  ASSERT_EQ(::symlink(in.c_str(), dir.file("soft.txt").c_str()), 0);
  for (const std::string& same :
       {in, dir.path() + "/./in.txt", dir.file("hard.txt"), dir.file("soft.txt")}) {
    const std::string msg = error_of([&] { check_output_path("--out", same, inputs); });
    EXPECT_TRUE(contains(msg, "--out " + same + " is the same file as --input " + in)) << msg;
  }
  write_file_atomic(dir.file("other.txt"), std::string_view("other"));
  check_output_path("--out", dir.file("other.txt"), inputs);  // exists, but is no input
  EXPECT_TRUE(
      contains(error_of([&] { check_output_path("--out", dir.path(), inputs); }), "is a folder"));
  EXPECT_TRUE(
      contains(error_of([&] { check_output_path("--out", dir.file("no/such/out.txt"), inputs); }),
               "does not exist"));
  EXPECT_EQ(read_file_text(in), "input");
}

TEST(FileIo, MakeDirs) {
  TempDir dir;
  std::string deep = dir.file("a/b/c");
  make_dirs(deep);
  make_dirs(deep + "/");  // idempotent, trailing slash fine
  EXPECT_TRUE(file_exists(deep));
  write_file_atomic(dir.file("a/file"), std::string_view("x"));
  std::string msg = error_of([&] { make_dirs(dir.file("a/file/sub")); });
  EXPECT_TRUE(contains(msg, "not a directory")) << msg;
}

TEST(FileIo, ByteWriterReaderRoundTrip) {
  ByteWriter w;
  w.u32(0x01020304u);
  w.u64(0x1122334455667788ull);
  w.i32(-5);
  w.f32(-1.25f);
  w.f64(3.141592653589793);
  w.str("hello");
  w.str("");
  w.bytes("xyz", 3);
  const std::vector<uint8_t>& b = w.buffer();
  ASSERT_EQ(b.size(), 4u + 8 + 4 + 4 + 8 + 9 + 4 + 3);
  EXPECT_EQ(b[0], 0x04);  // little-endian
  EXPECT_EQ(b[3], 0x01);
  EXPECT_EQ(b[4], 0x88);
  ByteReader r(b.data(), b.size(), "blob");
  EXPECT_EQ(r.u32(), 0x01020304u);
  EXPECT_EQ(r.u64(), 0x1122334455667788ull);
  EXPECT_EQ(r.i32(), -5);
  EXPECT_EQ(r.f32(), -1.25f);
  EXPECT_EQ(r.f64(), 3.141592653589793);
  EXPECT_EQ(r.str(), "hello");
  EXPECT_EQ(r.str(), "");
  EXPECT_EQ(r.offset(), b.size() - 3);
  char xyz[3];
  r.bytes(xyz, 3);
  EXPECT_EQ(std::string(xyz, 3), "xyz");
  EXPECT_TRUE(r.at_end());
  EXPECT_EQ(r.remaining(), 0u);
}

TEST(FileIo, ByteReaderTruncationMessages) {
  uint8_t buf[7] = {1, 0, 0, 0, 9, 9, 9};
  ByteReader r(buf, 7, "tok.bin");
  EXPECT_EQ(r.u32(), 1u);
  EXPECT_EQ(error_of([&] { r.u64(); }), "tok.bin: at byte 4: truncated: need 8 bytes, 3 left");
  EXPECT_EQ(r.offset(), 4u);  // a failed read consumes nothing
  EXPECT_TRUE(contains(error_of([&] { r.skip(4); }), "need 4 bytes, 3 left"));
  r.skip(3);
  EXPECT_TRUE(contains(error_of([&] { r.u32(); }), "at byte 7: truncated: need 4 bytes, 0 left"));
  EXPECT_TRUE(contains(error_of([&] { r.fail("bad magic"); }), "tok.bin: at byte 7: bad magic"));

  ByteWriter w;
  w.u32(100);  // claims 100 bytes, has 2
  w.bytes("ab", 2);
  ByteReader s(w.buffer().data(), w.buffer().size(), "s");
  EXPECT_TRUE(contains(error_of([&] { s.str(); }), "s: at byte 4: truncated"));
  ByteReader t(w.buffer().data(), w.buffer().size(), "t");
  EXPECT_TRUE(contains(error_of([&] { t.str(10); }), "t: at byte 0: string length 100 exceeds"));
}

TEST(FileIo, Fnv1a64KnownVectors) {
  // Published FNV-1a 64-bit test vectors.
  EXPECT_EQ(fnv1a64("", 0), 0xcbf29ce484222325ull);
  EXPECT_EQ(fnv1a64("a", 1), 0xaf63dc4c8601ec8cull);
  EXPECT_EQ(fnv1a64("foobar", 6), 0x85944171f73967e8ull);
  // Chaining through the seed equals hashing the concatenation.
  EXPECT_EQ(fnv1a64("bar", 3, fnv1a64("foo", 3)), fnv1a64("foobar", 6));
}

// ========================================================================= metrics

std::vector<std::string> lines_of(const std::string& path) {
  std::vector<std::string> lines;
  std::string text = read_file_text(path), line;
  for (char c : text) {
    if (c == '\n') {
      lines.push_back(line);
      line.clear();
    } else {
      line += c;
    }
  }
  EXPECT_TRUE(line.empty()) << "file does not end with a newline";
  return lines;
}

TEST(Metrics, LinesParseBackAsJson) {
  TempDir dir;
  std::string path = dir.file("metrics.jsonl");
  {
    MetricsLogger log(path);
    EXPECT_TRUE(log.enabled());
    for (int step = 0; step < 3; ++step) {
      Json rec = Json::object();
      rec["step"] = step;
      rec["loss"] = 2.5 / (step + 1);
      rec["note"] = "a\nb";
      log.log(rec);
    }
    EXPECT_EQ(lines_of(path).size(), 3u);  // flushed per line, before close
  }
  {
    MetricsLogger log(path);  // append: a resumed run continues the file
    Json rec = Json::object();
    rec["step"] = 3;
    log.log(rec);
  }
  auto lines = lines_of(path);
  ASSERT_EQ(lines.size(), 4u);
  for (int i = 0; i < 4; ++i) {
    Json rec = Json::parse(lines[i], path + ":" + std::to_string(i + 1));
    EXPECT_EQ(rec.at("step").as_int(), i);
    if (i < 3) {
      EXPECT_EQ(rec.at("loss").as_number(), 2.5 / (i + 1));
      EXPECT_EQ(rec.at("note").as_string(), "a\nb");
    }
  }
  {
    MetricsLogger log(path, /*truncate=*/true);
    log.log(Json::parse(R"({"fresh":true})"));
  }
  EXPECT_EQ(lines_of(path), std::vector<std::string>{R"({"fresh":true})"});
  MetricsLogger disabled;
  EXPECT_FALSE(disabled.enabled());
  disabled.log(Json::object());
}

TEST(Metrics, PartialLastLineIsEndedOnAppend) {
  TempDir dir;
  std::string path = dir.file("m.jsonl");
  write_file_atomic(path, std::string_view("{\"step\":0}\n{\"step\":1,\"lo"));
  {
    MetricsLogger log(path);
    log.log(Json::parse(R"({"step":2})"));
  }
  auto lines = lines_of(path);
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[2], R"({"step":2})");
  EXPECT_TRUE(contains(error_of([&] { MetricsLogger bad(dir.file("no/dir/m.jsonl")); }),
                       dir.file("no/dir/m.jsonl") + ": "));
}

TEST(Metrics, DurationsAndProgressLine) {
  EXPECT_EQ(format_duration(0), "00:00");
  EXPECT_EQ(format_duration(59.4), "00:59");
  EXPECT_EQ(format_duration(125), "02:05");
  EXPECT_EQ(format_duration(3599.4), "59:59");
  EXPECT_EQ(format_duration(3723), "1:02:03");
  EXPECT_EQ(format_duration(100 * 3600 + 1), "100:00:01");
  EXPECT_EQ(format_duration(-1), "--:--");
  EXPECT_EQ(format_duration(std::nan("")), "--:--");

  Progress p(1000);
  EXPECT_LT(p.eta_seconds(), 0);  // unknown before any step
  p.update(120, 8100.0);
  EXPECT_GE(p.eta_seconds(), 0);
  EXPECT_GE(p.items_per_second(), 0);
  std::string line = p.line("tok");
  EXPECT_EQ(line.rfind("step 120/1000 | ", 0), 0u) << line;
  EXPECT_TRUE(contains(line, " tok/s | ")) << line;
  EXPECT_TRUE(contains(line, " elapsed | ETA ")) << line;
  p.start(500, 1e6);  // resumed run: nothing done since the restart
  EXPECT_LT(p.eta_seconds(), 0);
  EXPECT_EQ(p.line("pairs").rfind("step 500/1000 | 0.0 pairs/s", 0), 0u) << p.line("pairs");
  p.update(1000, 2e6);
  EXPECT_EQ(p.eta_seconds(), 0.0);

  // After a resume the rate is that of the steps since the restart: 100 steps done in the
  // elapsed time, 400 left, so the ETA is 4× the elapsed time (the same clock, read twice).
  Progress r(1000);
  r.start(500, 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  r.update(600, 0);
  const double eta = r.eta_seconds(), elapsed = r.elapsed_seconds();
  ASSERT_GT(elapsed, 0.0);
  EXPECT_NEAR(eta / elapsed, 4.0, 0.05);
}

}  // namespace
}  // namespace hh
