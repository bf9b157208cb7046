// SafeTensorsFile::parse on any bytes: checkpoints, optimizer state, HF GPT-2 files, test
// fixtures all come through it. Properties: every tensor of a file that parses can be read
// at its dtype, and writing the file again (SafeTensorsWriter, the tensors in offset order)
// gives a file that parses to the same metadata, tensors and bytes.
#include <algorithm>
#include <cstring>

#include "core/safetensors.h"
#include "fuzz/fuzz.h"

namespace hh::fuzz {

std::vector<Bytes> seeds() {
  SafeTensorsWriter w;
  w.set_metadata("config", R"({"n_layer":1})");
  w.set_metadata("stage", "sft");
  const float f[6] = {1, -2, 0.5f, 3e-8f, 65504, -0.f};
  w.add_f32("a.weight", {2, 3}, f);
  w.add("empty", DType::F32, {0, 5}, nullptr, 0);
  const int32_t ids[3] = {0, 50256, -7};
  w.add("ids", DType::I32, {3}, ids, sizeof ids);
  const int64_t big[2] = {1, 1ll << 40};
  w.add("i64", DType::I64, {2}, big, sizeof big);
  const uint16_t halves[4] = {0x3c00, 0x7bff, 0x0001, 0xfc00};
  w.add("h", DType::F16, {2, 2}, halves, sizeof halves);
  w.add("b", DType::BF16, {1, 2}, halves, 4);
  const uint8_t bytes[3] = {1, 2, 255};
  w.add("u8", DType::U8, {3}, bytes, 3);
  SafeTensorsWriter plain;
  plain.add_f32("x", {}, f);
  return {w.serialize(), plain.serialize(), SafeTensorsWriter().serialize()};
}

}  // namespace hh::fuzz

namespace {

void read_each(const hh::SafeTensorsFile& file) {
  for (const auto& [name, info] : file.tensors()) {
    switch (info.dtype) {
      case hh::DType::F32:
      case hh::DType::F16:
      case hh::DType::BF16:
        FUZZ_REQUIRE(file.read_f32(name, info.shape).size() == size_t(info.numel()), name);
        break;
      case hh::DType::I32:
        FUZZ_REQUIRE(file.read_i32(name).size() == size_t(info.numel()), name);
        break;
      case hh::DType::I64: {  // may hold values past int32: hh::Error is fine
        const std::string& tensor = name;
        hh::fuzz::returns_or_throws_hh_error([&] { file.read_i32(tensor); });
        break;
      }
      case hh::DType::U8:
        break;
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using hh::SafeTensorsFile;
  SafeTensorsFile file;
  if (!hh::fuzz::returns_or_throws_hh_error(
          [&] { file = SafeTensorsFile::parse(hh::fuzz::Bytes(data, data + size), "input"); }))
    return 0;
  read_each(file);

  std::vector<std::pair<std::string, hh::TensorInfo>> order(file.tensors().begin(),
                                                            file.tensors().end());
  std::sort(order.begin(), order.end(),
            [](const auto& a, const auto& b) {  // as the reader orders them (empty ones first)
              return a.second.begin != b.second.begin ? a.second.begin < b.second.begin
                                                      : a.second.end < b.second.end;
            });
  hh::SafeTensorsWriter w;
  for (const auto& [key, value] : file.metadata()) w.set_metadata(key, value);
  for (const auto& [name, info] : order)
    w.add(name, info.dtype, info.shape, file.data(name), info.end - info.begin);
  SafeTensorsFile again;
  FUZZ_REQUIRE(hh::fuzz::returns_or_throws_hh_error(
                   [&] { again = SafeTensorsFile::parse(w.serialize(), "rewritten"); }),
               "the rewritten file does not parse");
  FUZZ_REQUIRE(again.metadata() == file.metadata(), "metadata changed");
  FUZZ_REQUIRE(again.tensors().size() == file.tensors().size(), "tensor count changed");
  for (const auto& [name, info] : file.tensors()) {
    FUZZ_REQUIRE(again.has(name), "lost tensor ", name);
    const hh::TensorInfo& b = again.info(name);
    FUZZ_REQUIRE(b.dtype == info.dtype && b.shape == info.shape && b.begin == info.begin &&
                     b.end == info.end,
                 "tensor ", name, " changed");
    FUZZ_REQUIRE(info.end == info.begin ||
                     std::memcmp(again.data(name), file.data(name), info.end - info.begin) == 0,
                 "tensor ", name, "'s bytes changed");
  }
  return 0;
}
