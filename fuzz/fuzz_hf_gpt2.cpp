// A Hugging Face GPT-2 safetensors file, as hh-chat and --init import one: GPT::
// import_hf_gpt2 into a model of a fixed small config, from any bytes. Property: a file
// that imports exports (export_hf_gpt2) to one that imports to the same weights.
#include <memory>

#include "core/fileio.h"
#include "core/half.h"
#include "core/safetensors.h"
#include "fuzz/fuzz.h"
#include "model/gpt.h"

namespace {

std::unique_ptr<hh::GPT> small_model() {
  return std::make_unique<hh::GPT>(hh::fuzz::cpu_backend(), hh::fuzz::small_gpt_config(), false);
}

}  // namespace

namespace hh::fuzz {

std::vector<Bytes> seeds() {
  std::unique_ptr<GPT> model = small_model();
  model->init_random(4);
  const std::string path = scratch_file(nullptr, 0, "seed");
  model->export_hf_gpt2(path);
  const Bytes f32 = read_file_bytes(path);
  // The same weights stored as F16 (HF files often are), 2-byte tensors after the others.
  const SafeTensorsFile file = SafeTensorsFile::parse(f32, "seed");
  SafeTensorsWriter w;
  for (const auto& [name, info] : file.tensors()) {
    std::vector<uint16_t> h;
    for (float x : file.read_f32(name)) h.push_back(float_to_half(x));
    w.add(name, DType::F16, info.shape, h.data(), h.size() * 2);
  }
  return {f32, w.serialize()};
}

}  // namespace hh::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::unique_ptr<hh::GPT> model = small_model();
  if (!hh::fuzz::returns_or_throws_hh_error([&] {
        model->import_hf_gpt2(
            hh::SafeTensorsFile::parse(hh::fuzz::Bytes(data, data + size), "input"));
      }))
    return 0;
  const std::string path = hh::fuzz::scratch_file(nullptr, 0, "exported");
  model->export_hf_gpt2(path);
  std::unique_ptr<hh::GPT> again = small_model();
  FUZZ_REQUIRE(hh::fuzz::returns_or_throws_hh_error(
                   [&] { again->import_hf_gpt2(hh::SafeTensorsFile::load(path)); }),
               "the exported file does not import");
  for (const hh::ParamTensor& t : model->param_tensors())
    FUZZ_REQUIRE(again->get_param(t.name) == model->get_param(t.name), t.name, " changed");
  return 0;
}
