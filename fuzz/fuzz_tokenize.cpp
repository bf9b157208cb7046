// Encoding any text: the pre-tokenizer (GPT-2's rules over Unicode classes) and the merges
// on input that may be invalid UTF-8, hold special-token strings, control bytes, or long
// runs. Properties: decode(encode(text)) == text exactly, every id is a text token (special
// strings in text never become special ids), and encoding is deterministic.
#include <string_view>

#include "fuzz/fuzz.h"
#include "tokenizer/tokenizer.h"

namespace {

const hh::Tokenizer& tokenizer() {
  static const hh::Tokenizer tok = [] {
    const std::vector<std::string_view> texts = {
        "\n\nHuman: How do I bake bread?\n\nAssistant: Mix flour, water, salt and yeast.",
        "\n\nHuman: What's 2+2?\n\nAssistant: It's 4. Anything else? I'll help, we've done it",
        "   indented    spaces\t\ttabs\r\n 123 4567 89.0 $100 ÷ 3 ≈ 33.3",
        "naïve café — 日本語のテキスト 🙂🙂 Ελληνικά русский",
    };
    hh::BpeTrainOptions options;
    options.vocab_size = 256 + 200 + 2;
    options.min_frequency = 1;
    options.specials = {hh::kEndOfContext};
    return hh::Tokenizer::train(texts, options);
  }();
  return tok;
}

}  // namespace

namespace hh::fuzz {

std::vector<Bytes> seeds() {
  return {bytes_of("\n\nHuman: Can you help me?\n\nAssistant: Sure, what's up?"),
          bytes_of("<|endoftext|><|endofcontext|> it's  \t\r\n 42 ’s café 日本 🙂"),
          bytes_of(std::string_view("\xc0\xaf \xed\xa0\x80 \xf4\x90\x80\x80 \xff abc\0def", 21)),
          bytes_of("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa         ")};
}

}  // namespace hh::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const hh::Tokenizer& tok = tokenizer();
  std::vector<int32_t> ids;
  FUZZ_REQUIRE(hh::fuzz::returns_or_throws_hh_error([&] { ids = tok.encode(text); }),
               "encode refused text");
  const int text_tokens = 256 + tok.num_merges();
  for (int32_t id : ids) FUZZ_REQUIRE(id >= 0 && id < text_tokens, "id ", id);
  FUZZ_REQUIRE(tok.decode(ids) == text, "decode(encode(text)) differs");
  FUZZ_REQUIRE(tok.encode(text) == ids, "encode is not deterministic");
  return 0;
}
