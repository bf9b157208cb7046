// Token datasets (hh-prepare's output, every trainer's input): parse_dataset on any bytes.
// Property: a dataset that parses serialises to the very bytes it was read from (the
// format has one encoding per dataset).
#include "data/dataset.h"
#include "fuzz/fuzz.h"

namespace hh::fuzz {

std::vector<Bytes> seeds() {
  std::vector<Bytes> out;
  for (DatasetKind kind : {DatasetKind::Sft, DatasetKind::Pm, DatasetKind::Prompts}) {
    TokenDataset ds;
    ds.kind = kind;
    ds.tokenizer_fingerprint = 0x1234567890abcdefull;
    ds.vocab_size = 300;
    ds.meta_json = R"({"source":"harmless-train.jsonl.gz","pairs":2})";
    const std::vector<int32_t> a = {1, 2, 299, 0}, b = {7}, c = {};
    const std::vector<uint8_t> ma = {0, 0, 1, 1}, mb = {1}, mc = {};
    const bool sft = kind == DatasetKind::Sft;
    ds.add(a, sft ? &ma : nullptr);
    ds.add(b, sft ? &mb : nullptr);
    if (kind != DatasetKind::Pm) ds.add(c, sft ? &mc : nullptr);
    if (kind == DatasetKind::Prompts) ds.add(b);
    out.push_back(serialize_dataset(ds));
  }
  return out;
}

}  // namespace hh::fuzz

namespace {

void check(const uint8_t* data, size_t size) {
  hh::TokenDataset ds;
  if (!hh::fuzz::returns_or_throws_hh_error([&] { ds = hh::parse_dataset(data, size, "input"); }))
    return;
  const hh::fuzz::Bytes again = hh::serialize_dataset(ds);
  FUZZ_REQUIRE(again == hh::fuzz::Bytes(data, data + size), "read ", size, " bytes, wrote ",
               again.size(), " different ones");
  for (size_t i = 0; i < ds.num_sequences(); i++) {
    for (int32_t id : ds.sequence(i))
      FUZZ_REQUIRE(id >= 0 && uint32_t(id) < ds.vocab_size, "id ", id, " in sequence ", i);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  hh::fuzz::as_is_and_with_checksum_fixed(data, size, check);
  return 0;
}
