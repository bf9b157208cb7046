// The parts of src/data that call the tokenizer, kept apart so the rest links without it.
#include "core/error.h"
#include "data/dataset.h"
#include "tokenizer/tokenizer.h"

namespace hh {

TextEncoder TextEncoder::from(const Tokenizer& tokenizer) {
  TextEncoder e;
  e.encode = [&tokenizer](std::string_view text) { return tokenizer.encode(text); };
  e.eot_id = tokenizer.has_special(kEndOfText) ? tokenizer.special_id(kEndOfText) : -1;
  e.end_of_context_id =
      tokenizer.has_special(kEndOfContext) ? tokenizer.special_id(kEndOfContext) : -1;
  HH_CHECK(tokenizer.vocab_size() > 0, "tokenizer has an empty vocabulary");
  e.vocab_size = static_cast<uint32_t>(tokenizer.vocab_size());
  e.fingerprint = tokenizer.fingerprint();
  return e;
}

TokenDataset load_dataset(const std::string& path, DatasetKind expected,
                          const Tokenizer* tokenizer) {
  if (!tokenizer) return load_dataset_unchecked(path, expected);
  return load_dataset(path, expected, tokenizer->fingerprint(),
                      static_cast<uint32_t>(tokenizer->vocab_size()));
}

SftDataset SftDataset::load(const std::string& path, const Tokenizer* tokenizer) {
  return SftDataset(load_dataset(path, DatasetKind::Sft, tokenizer));
}
PmDataset PmDataset::load(const std::string& path, const Tokenizer* tokenizer) {
  return PmDataset(load_dataset(path, DatasetKind::Pm, tokenizer));
}
PromptDataset PromptDataset::load(const std::string& path, const Tokenizer* tokenizer) {
  return PromptDataset(load_dataset(path, DatasetKind::Prompts, tokenizer));
}

}  // namespace hh
