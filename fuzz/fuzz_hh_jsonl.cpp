// HH-RLHF files, as hh-prepare and hh-bpe read them: read_hh_pairs on a file of any bytes,
// plain or gzip (told apart by the magic bytes), lenient and strict. Properties of each
// pair read: chosen = prompt + chosen response, rejected = prompt + rejected response, the
// prompt ends in "\n\nAssistant:", and line numbers rise; strict mode reads a file only
// when the lenient mode skipped nothing, and then the same pairs.
#include <zlib.h>

#include "data/hh_rlhf.h"
#include "fuzz/fuzz.h"

namespace {

hh::fuzz::Bytes gzip(const std::string& text) {
  z_stream z{};
  if (deflateInit2(&z, 9, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK) std::abort();
  hh::fuzz::Bytes out(deflateBound(&z, text.size()) + 32);
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(text.data()));
  z.avail_in = static_cast<uInt>(text.size());
  z.next_out = out.data();
  z.avail_out = static_cast<uInt>(out.size());
  if (deflate(&z, Z_FINISH) != Z_STREAM_END) std::abort();
  out.resize(z.total_out);
  deflateEnd(&z);
  return out;
}

}  // namespace

namespace hh::fuzz {

std::vector<Bytes> seeds() {
  const std::string a =
      R"({"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!", "rejected": "\n\nHuman: Hi\n\nAssistant: Go away."})"
      "\n";
  const std::string b =
      R"({"chosen": "\n\nHuman: Q\n\nAssistant: A\n\nHuman: Q2\n\nAssistant: yes", "rejected": "\n\nHuman: Q\n\nAssistant: A\n\nHuman: Q2\n\nAssistant: no"})"
      "\r\n\n";
  Bytes two_members = gzip(a);
  const Bytes second = gzip(b);
  two_members.insert(two_members.end(), second.begin(), second.end());
  return {bytes_of(a + b), gzip(a + b), two_members, bytes_of(a + "{\"chosen\": 1}\n[]\n" + b)};
}

}  // namespace hh::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = hh::fuzz::scratch_file(data, size);
  hh::HhReadResult lenient, strict;
  const bool read =
      hh::fuzz::returns_or_throws_hh_error([&] { lenient = hh::read_hh_pairs(path, false); });
  const bool read_strict =
      hh::fuzz::returns_or_throws_hh_error([&] { strict = hh::read_hh_pairs(path, true); });
  if (!read) {
    FUZZ_REQUIRE(!read_strict, "strict mode read what the lenient one refused");
    return 0;
  }
  FUZZ_REQUIRE(read_strict == lenient.skipped.empty(), "strict mode ",
               read_strict ? "read" : "refused", " a file with ", lenient.skipped.size(),
               " skipped lines");
  int64_t last = 0;
  for (const hh::HhPair& p : lenient.pairs) {
    FUZZ_REQUIRE(p.line > last && p.line <= lenient.lines, "line ", p.line);
    last = p.line;
    FUZZ_REQUIRE(p.chosen == p.prompt + p.chosen_response, "line ", p.line);
    FUZZ_REQUIRE(p.rejected == p.prompt + p.rejected_response, "line ", p.line);
    FUZZ_REQUIRE(p.prompt.size() >= hh::kAssistantMarker.size() &&
                     p.prompt.compare(p.prompt.size() - hh::kAssistantMarker.size(),
                                      std::string::npos, hh::kAssistantMarker) == 0,
                 "line ", p.line, ": the prompt does not end in the assistant marker");
  }
  if (read_strict) FUZZ_REQUIRE(strict.pairs.size() == lenient.pairs.size(), "pair counts");
  return 0;
}
