// Json::parse on any bytes (the safetensors header, every JSONL input, encoder.json, the
// metrics log). Property: what parses prints (dump) to text that parses back to the same
// printed text.
#include <string_view>

#include "core/json.h"
#include "fuzz/fuzz.h"

namespace hh::fuzz {

std::vector<Bytes> seeds() {
  return {
      bytes_of(R"({"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "x"})"),
      bytes_of(R"([1, -2.5e-3, 1e308, true, false, null, "\u00e9\ud83d\ude00", {"a": [[]]}])"),
      bytes_of(R"({"n_layer": 2, "n_head": 4, "n_embd": 64, "vocab_size": 300})"),
      bytes_of(R"("\"\\\/\b\f\n\r\t")"),
      bytes_of("  123456789012345678901234567890 "),
  };
}

}  // namespace hh::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  hh::Json value;
  if (!hh::fuzz::returns_or_throws_hh_error([&] { value = hh::Json::parse(text, "input"); }))
    return 0;
  const std::string printed = value.dump();
  hh::Json again;
  FUZZ_REQUIRE(
      hh::fuzz::returns_or_throws_hh_error([&] { again = hh::Json::parse(printed, "printed"); }),
      "the printed form does not parse: ", printed);
  FUZZ_REQUIRE(again.dump() == printed, "printed ", printed, ", reprinted ", again.dump());
  return 0;
}
