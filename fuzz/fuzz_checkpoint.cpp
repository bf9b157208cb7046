// A model checkpoint, as hh-chat, hh-eval, --init and every resume load it: load_model on a
// file of any bytes. The header's config decides what is allocated, so a forged one must
// be refused before the allocation (checkpoint.cpp's config_of). Property: a checkpoint
// that loads saves to one that loads to the same config, head and weights.
#include <memory>

#include "core/fileio.h"
#include "fuzz/fuzz.h"
#include "model/checkpoint.h"

namespace hh::fuzz {

std::vector<Bytes> seeds() {
  std::vector<Bytes> out;
  for (bool head : {false, true}) {
    GPT model(cpu_backend(), small_gpt_config(), head);
    model.init_random(head ? 2 : 1);
    const std::string path = scratch_file(nullptr, 0, "seed");
    save_model(path, model, {{"stage", head ? "pm" : "sft"}});
    out.push_back(read_file_bytes(path));
  }
  return out;
}

}  // namespace hh::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = hh::fuzz::scratch_file(data, size);
  std::unique_ptr<hh::GPT> model;
  std::map<std::string, std::string> meta;
  if (!hh::fuzz::returns_or_throws_hh_error([&] {
        model = std::make_unique<hh::GPT>(hh::load_model(path, hh::fuzz::cpu_backend(), &meta));
      }))
    return 0;
  // The metadata keys save_model writes itself are not the caller's to pass.
  meta.erase("config");
  meta.erase("scalar_head");
  const std::string resaved = hh::fuzz::scratch_file(nullptr, 0, "resaved");
  hh::save_model(resaved, *model, meta);
  hh::GPT again = hh::load_model(resaved, hh::fuzz::cpu_backend());
  FUZZ_REQUIRE(again.config() == model->config(), "config changed");
  FUZZ_REQUIRE(again.has_scalar_head() == model->has_scalar_head(), "head changed");
  for (const hh::ParamTensor& t : model->param_tensors())
    FUZZ_REQUIRE(again.get_param(t.name) == model->get_param(t.name), t.name, " changed");
  return 0;
}
