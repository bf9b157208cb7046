// Shared by the fuzz targets (fuzz/fuzz_*.cpp; docs/fuzzing.md).
//
// Each target's LLVMFuzzerTestOneInput hands the bytes to one reader of input that may be
// damaged or hostile. The contract it checks: the reader either succeeds or throws
// hh::Error (a clear message for the user). Any other exception (std::bad_alloc from a size
// the file claimed, std::out_of_range, ...), a crash or a sanitizer report is a bug. When
// the reader succeeds, the target checks a property where the format has one (writing
// back what was read and reading it again gives the same thing).
//
// Each target also lists seeds: valid inputs made with the project's own writers, so they
// follow the formats as they change. The replay build (fuzz/replay_main.cpp, a ctest per
// target) runs the seeds and every file of fuzz/corpus/<target>/ (inputs that once broke
// a reader, kept as regression cases); the libFuzzer build (`make fuzz`) starts from them.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <typeinfo>
#include <vector>

#include "core/error.h"
#include "model/gpt.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace hh::fuzz {

using Bytes = std::vector<uint8_t>;

// The target's valid inputs (defined by each fuzz_*.cpp).
std::vector<Bytes> seeds();

inline Bytes bytes_of(std::string_view s) { return Bytes(s.begin(), s.end()); }

// The replay names the input it is running here (libFuzzer saves a failing input itself).
extern std::string current_input;

// A property of the target failed: print, with the input's name, and abort.
[[noreturn]] inline void fail(const std::string& what) {
  std::fprintf(stderr, "fuzz: property violated: %s\n", what.c_str());
  if (!current_input.empty()) std::fprintf(stderr, "fuzz: input: %s\n", current_input.c_str());
  std::abort();
}

#define FUZZ_REQUIRE(cond, ...)                                             \
  do {                                                                      \
    if (!(cond)) ::hh::fuzz::fail(::hh::str_cat(#cond, ": ", __VA_ARGS__)); \
  } while (0)

// Runs body(); true when it returned, false when it threw hh::Error. Anything else that
// escapes is a bug: abort.
template <typename F>
bool returns_or_throws_hh_error(F&& body) {
  try {
    body();
    return true;
  } catch (const hh::Error&) {
    return false;
  } catch (const std::exception& e) {
    fail(str_cat(typeid(e).name(), " escaped (not hh::Error): ", e.what()));
  }
}

// hh's binary formats (tokenizer, dataset) end in an FNV-1a 64 checksum of every byte
// before it. Random changes almost never keep it right, so targets also try each input
// with the checksum recomputed: that reaches the checks behind it.
Bytes with_checksum_fixed(const uint8_t* data, size_t size);

// check(data, size) on the input as it is, then with its checksum recomputed.
template <typename F>
void as_is_and_with_checksum_fixed(const uint8_t* data, size_t size, F&& check) {
  check(data, size);
  const Bytes fixed = with_checksum_fixed(data, size);
  check(fixed.data(), fixed.size());
}

// The CPU backend, and the small model config (1 layer, 2 heads, width 8, vocabulary 20,
// context 4) of the targets that load models and their state.
hh::Backend& cpu_backend();
hh::GPTConfig small_gpt_config();

// Writes the bytes to this process's scratch file (readers that take a path) and returns
// its path; `suffix` tells apart several files of one input.
std::string scratch_file(const uint8_t* data, size_t size, const std::string& suffix = "");

}  // namespace hh::fuzz
