// GPT-2's tokenizer files, as hh-bpe --gpt2 imports them: the input is encoder.json, a 0
// byte, then vocab.bpe (no 0 byte: all of it is encoder.json and vocab.bpe is empty).
// Property of a pair that imports: the vocabulary is 256 + merges + 1, and text (any
// bytes) encodes and decodes back to itself.
#include <algorithm>
#include <string>

#include "core/json.h"
#include "fuzz/fuzz.h"
#include "tokenizer/tokenizer.h"

namespace {

// GPT-2's byte alphabet: printable Latin-1 bytes stand for themselves, the other 68 bytes
// for code points 256, 257, ... in byte order.
std::string byte_token(int b) {
  const bool printable = (b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || (b >= 0xae);
  int cp = b;
  if (!printable) {
    cp = 256;
    for (int x = 0; x < b; x++) {
      const bool p = (x >= '!' && x <= '~') || (x >= 0xa1 && x <= 0xac) || (x >= 0xae);
      cp += !p;
    }
  }
  std::string s;
  if (cp < 0x80) {
    s += static_cast<char>(cp);
  } else {
    s += static_cast<char>(0xc0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3f));
  }
  return s;
}

}  // namespace

namespace hh::fuzz {

std::vector<Bytes> seeds() {
  Json enc = Json::object();
  for (int b = 0; b < 256; b++) enc[byte_token(b)] = Json(255 - b);
  const std::string space = byte_token(' ');
  const std::vector<std::pair<std::string, std::string>> merges = {
      {"h", "e"}, {space, "t"}, {"he", "l"}, {space + "t", "he"}, {"l", "o"}};
  std::string bpe = "#version: 0.2\n";
  int id = 256;
  for (const auto& [l, r] : merges) {
    bpe += l + " " + r + "\n";
    enc[l + r] = Json(id++);
  }
  enc["<|endoftext|>"] = Json(id);
  std::string input = enc.dump();
  input += '\0';
  input += bpe;
  return {bytes_of(input)};
}

}  // namespace hh::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const uint8_t* zero = std::find(data, data + size, uint8_t{0});
  const std::string encoder = hh::fuzz::scratch_file(data, size_t(zero - data), "encoder.json");
  const std::string vocab =
      zero == data + size
          ? hh::fuzz::scratch_file(nullptr, 0, "vocab.bpe")
          : hh::fuzz::scratch_file(zero + 1, size_t(data + size - zero - 1), "vocab.bpe");
  hh::Tokenizer tok;
  if (!hh::fuzz::returns_or_throws_hh_error(
          [&] { tok = hh::Tokenizer::import_gpt2(encoder, vocab, {hh::kEndOfContext}); }))
    return 0;
  FUZZ_REQUIRE(tok.vocab_size() == 256 + tok.num_merges() + 2, "vocabulary ", tok.vocab_size());
  const std::string text = " the hello there\n\nHuman: hi \xff\xc3(\x00 日本";
  FUZZ_REQUIRE(tok.decode(tok.encode(text)) == text, "decode(encode(text)) differs");
  return 0;
}
