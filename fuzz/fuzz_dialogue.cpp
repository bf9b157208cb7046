// Dialogue text, split into turns and into prompt and responses (hh-prepare, hh-chat, the
// PM's scoring): the input is chosen, a 0 byte, then rejected. Properties: the turns put
// back together with their markers give the text; a pair that splits is prompt + response
// on both sides, and pair_problem takes any split pair.
#include <algorithm>
#include <string>

#include "data/hh_rlhf.h"
#include "fuzz/fuzz.h"

namespace hh::fuzz {

std::vector<Bytes> seeds() {
  std::string s = "\n\nHuman: Hi\n\nAssistant: Hello!";
  s += '\0';
  s += "\n\nHuman: Hi\n\nAssistant: Go away.\n\nHuman: ?\n\nAssistant:";
  return {bytes_of(s), bytes_of("preamble\n\nAssistant:\n\nHuman:\n\nHuman: x")};
}

}  // namespace hh::fuzz

namespace {

void check_turns(const std::string& text) {
  const hh::Dialogue d = hh::parse_dialogue(text);
  std::string rebuilt = d.preamble;
  for (const hh::Turn& t : d.turns)
    rebuilt +=
        std::string(t.role == hh::Role::Human ? hh::kHumanMarker : hh::kAssistantMarker) + t.text;
  FUZZ_REQUIRE(rebuilt == text, "the turns do not put the text back together");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const uint8_t* zero = std::find(data, data + size, uint8_t{0});
  const std::string chosen(data, zero);
  const std::string rejected =
      zero == data + size ? std::string() : std::string(zero + 1, data + size);
  check_turns(chosen);
  check_turns(rejected);
  hh::HhPair pair;
  std::string reason;
  FUZZ_REQUIRE(hh::fuzz::returns_or_throws_hh_error(
                   [&] { reason = hh::split_pair(chosen, rejected, &pair); }),
               "split_pair threw");
  if (!reason.empty()) return 0;
  FUZZ_REQUIRE(pair.chosen == chosen && pair.rejected == rejected, "the pair changed");
  FUZZ_REQUIRE(chosen == pair.prompt + pair.chosen_response, "chosen is not prompt + response");
  FUZZ_REQUIRE(rejected == pair.prompt + pair.rejected_response,
               "rejected is not prompt + response");
  hh::pair_problem(pair);
  return 0;
}
