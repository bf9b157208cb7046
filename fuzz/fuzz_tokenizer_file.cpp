// Tokenizer files (hh-bpe's output; every stage loads one): Tokenizer::deserialize on any
// bytes, and on the same bytes with the checksum recomputed. Properties of one that loads:
// it serialises to the same bytes, its vocabulary is 256 + merges + specials, and it
// encodes and decodes text (any bytes, special-token strings included) back to itself.
#include "fuzz/fuzz.h"
#include "tokenizer/tokenizer.h"

namespace {

hh::Tokenizer small_tokenizer(std::vector<std::string> specials) {
  const std::vector<std::string_view> texts = {
      "\n\nHuman: How do I bake bread?\n\nAssistant: Mix flour, water, salt and yeast.",
      "\n\nHuman: What's 2+2?\n\nAssistant: It's 4. Anything else?",
      "the the the then there these those them they", "naïve café — 日本語 🙂"};
  hh::BpeTrainOptions options;
  options.vocab_size = 256 + 40 + 1 + static_cast<int>(specials.size());
  options.min_frequency = 1;
  options.specials = std::move(specials);
  return hh::Tokenizer::train(texts, options);
}

}  // namespace

namespace hh::fuzz {

std::vector<Bytes> seeds() {
  return {small_tokenizer({kEndOfContext}).serialize(), small_tokenizer({}).serialize(),
          Tokenizer().serialize()};
}

}  // namespace hh::fuzz

namespace {

void check(const uint8_t* data, size_t size) {
  hh::Tokenizer tok;
  if (!hh::fuzz::returns_or_throws_hh_error(
          [&] { tok = hh::Tokenizer::deserialize(data, size, "input"); }))
    return;
  FUZZ_REQUIRE(tok.serialize() == hh::fuzz::Bytes(data, data + size), "serialises to other bytes");
  FUZZ_REQUIRE(tok.vocab_size() == 256 + tok.num_merges() + int(tok.specials().size()),
               "vocabulary ", tok.vocab_size());
  std::string text = "\n\nHuman: hi there<|endoftext|> \xff\xfe caf\xc3\xa9 \xe6\x97";
  for (const std::string& s : tok.specials()) text += s + " ";
  const std::vector<int32_t> ids = tok.encode(text);
  for (int32_t id : ids)
    FUZZ_REQUIRE(id >= 0 && id < 256 + tok.num_merges(), "id ", id, " is not a text token");
  FUZZ_REQUIRE(tok.decode(ids) == text, "decode(encode(text)) differs");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  hh::fuzz::as_is_and_with_checksum_fixed(data, size, check);
  return 0;
}
