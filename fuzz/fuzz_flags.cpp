// The one flag parser of every binary, on any arguments: the input split at 0 bytes into
// argv (an input holding --help or -h is passed over: it prints and exits, by design).
// Properties of arguments that parse: every value reads back at its type, and the values
// written as --name=value parse again to the same values (what a run directory records is
// what a resume reads).
#include <algorithm>
#include <string>

#include "core/flags.h"
#include "core/json.h"
#include "fuzz/fuzz.h"

namespace {

hh::Flags make_flags() {
  hh::Flags f("hh-fuzz", "flags of every kind");
  f.add_string("data", "train.bin", "a path");
  f.add_int("steps", 1000, "an int");
  f.add_int("seed", -1, "another int");
  f.add_float("lr", 3e-4, "a float");
  f.add_bool("resume", false, "a bool");
  f.add_bool("tf32", true, "a bool that defaults to true");
  f.takes_positional();
  return f;
}

}  // namespace

namespace hh::fuzz {

std::vector<Bytes> seeds() {
  auto argv = [](std::vector<std::string> args) {
    std::string s;
    for (size_t i = 0; i < args.size(); i++) s += (i ? std::string(1, '\0') : "") + args[i];
    return bytes_of(s);
  };
  return {argv({"--data=x.bin", "--steps", "20", "--lr=1e-3", "--resume", "pos"}),
          argv({"--no-tf32", "--seed=-5", "--", "--steps"}),
          argv({"--stpes=3", "-x", "--lr", "nan", "--resume=false"})};
}

}  // namespace hh::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<std::string> args;
  const uint8_t* p = data;
  while (true) {
    const uint8_t* zero = std::find(p, data + size, uint8_t{0});
    args.emplace_back(p, zero);
    if (zero == data + size) break;
    p = zero + 1;
  }
  for (const std::string& a : args)
    if (a == "--help" || a == "-h") return 0;
  if (size == 0) args.clear();

  hh::Flags flags = make_flags();
  if (!hh::fuzz::returns_or_throws_hh_error([&] { flags.parse(args); })) return 0;
  flags.get_string("data");
  flags.get_int("steps");
  flags.get_int("seed");
  flags.get_float("lr");
  flags.get_bool("resume");
  flags.get_bool("tf32");
  const std::string recorded = flags.to_json();
  hh::Json json;
  FUZZ_REQUIRE(
      hh::fuzz::returns_or_throws_hh_error([&] { json = hh::Json::parse(recorded, "to_json"); }),
      "to_json is not JSON: ", recorded);
  std::vector<std::string> again;
  for (const auto& [name, value] : json.as_object()) {
    FUZZ_REQUIRE(value.is_string() || value.is_number() || value.is_bool(), name);
    again.push_back("--" + name + "=" +
                    (value.is_string() ? value.as_string()
                     : value.is_bool() ? std::string(value.as_bool() ? "true" : "false")
                                       : value.dump()));
  }
  hh::Flags reread = make_flags();
  FUZZ_REQUIRE(hh::fuzz::returns_or_throws_hh_error([&] { reread.parse(again); }),
               "the recorded values do not parse: ", recorded);
  FUZZ_REQUIRE(reread.to_json() == recorded, "recorded ", recorded, ", reread ", reread.to_json());
  return 0;
}
