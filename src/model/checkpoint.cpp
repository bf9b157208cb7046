// Model checkpoints (see checkpoint.h and docs/model.md).
#include "model/checkpoint.h"

#include <set>
#include <vector>

#include "core/error.h"
#include "core/json.h"
#include "core/safetensors.h"

namespace hh {

namespace {

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); i++) s += (i ? "," : "") + std::to_string(shape[i]);
  return s + "]";
}

bool scalar_head_of(const SafeTensorsFile& file) {
  auto it = file.metadata().find("scalar_head");
  if (it == file.metadata().end()) return file.has("score.weight");
  HH_CHECK(it->second == "true" || it->second == "false", file.source(),
           ": metadata scalar_head must be \"true\" or \"false\", got \"", it->second, "\"");
  return it->second == "true";
}

bool is_score(const std::string& name) { return name.rfind("score.", 0) == 0; }

// The config in the file's header, after checking that the file holds exactly the tensors
// a model of that config has (names, dtypes and shapes; the reader has matched every
// tensor's byte size to its shape). Models are built from this config, so a damaged or
// forged header must not get as far as allocating what it claims.
GPTConfig config_of(const SafeTensorsFile& file) {
  const std::string& what = file.source();
  auto it = file.metadata().find("config");
  HH_CHECK(it != file.metadata().end(), what,
           ": not an hh model checkpoint (no \"config\" in __metadata__)");
  const GPTConfig config =
      GPTConfig::from_json(Json::parse(it->second, what + ": metadata config"), what);
  const bool head = scalar_head_of(file);
  std::set<std::string> names;
  for (const ParamTensor& t : GPT::parameter_layout(config, head)) {
    HH_CHECK(file.has(t.name), what, ": missing tensor '", t.name, "', which the config in its ",
             "header (", config.describe(), head ? ", scalar head" : "", ") has");
    const TensorInfo& info = file.info(t.name);
    HH_CHECK(info.dtype == DType::F32, what, ": tensor '", t.name, "' has dtype ",
             dtype_name(info.dtype), ", expected F32");
    HH_CHECK(info.shape == t.shape, what, ": tensor '", t.name, "' has shape ",
             shape_str(info.shape), ", the config in its header (", config.describe(), ") needs ",
             shape_str(t.shape));
    names.insert(t.name);
  }
  for (const auto& entry : file.tensors())
    HH_CHECK(names.count(entry.first), what, ": unexpected tensor '", entry.first, "' for the ",
             "config in its header (", config.describe(), ")",
             is_score(entry.first) ? ", which has no scalar head" : "");
  return config;
}

// Checks every tensor of `file` against the model, then uploads them all at once.
void load_from_file(GPT& model, const SafeTensorsFile& file, bool trunk_only) {
  const std::string& what = file.source();
  const GPTConfig file_config = config_of(file);
  HH_CHECK(file_config == model.config(), what, ": model config mismatch: the file has ",
           file_config.describe(), ", the model has ", model.config().describe());
  Backend& be = model.backend();
  std::vector<float> host(model.params().size());
  be.copy_to_host(host.data(), model.params().data(), model.params().bytes());
  for (const ParamTensor& t : model.param_tensors()) {
    if (trunk_only && is_score(t.name)) continue;
    HH_CHECK(file.has(t.name), what, ": missing tensor '", t.name, "'");
    const TensorInfo& info = file.info(t.name);
    HH_CHECK(info.dtype == DType::F32, what, ": tensor '", t.name, "' has dtype ",
             dtype_name(info.dtype), ", expected F32");
    HH_CHECK(info.shape == t.shape, what, ": tensor '", t.name, "' has shape ",
             shape_str(info.shape), ", the model expects ", shape_str(t.shape));
    std::vector<float> values = file.read_f32(t.name, t.shape);
    check_finite(values.data(), values.size(), what, t.name);
    std::copy(values.begin(), values.end(), host.begin() + t.offset);
  }
  for (const auto& entry : file.tensors()) {
    const std::string& name = entry.first;
    if (trunk_only && is_score(name)) continue;
    HH_CHECK(model.has_param(name), what, ": unexpected tensor '", name, "'",
             (is_score(name) ? " (the file has a scalar head, the model has none)" : ""));
  }
  be.copy_to_device(model.params().data(), host.data(), host.size() * sizeof(float));
}

}  // namespace

void save_model(const std::string& path, const GPT& model,
                const std::map<std::string, std::string>& metadata) {
  SafeTensorsWriter w;
  for (const auto& [key, value] : metadata) {
    HH_CHECK(key != "config" && key != "scalar_head", "save_model(", path, "): metadata key '", key,
             "' is reserved");
    w.set_metadata(key, value);
  }
  w.set_metadata("config", model.config().to_json().dump());
  w.set_metadata("scalar_head", model.has_scalar_head() ? "true" : "false");
  for (const ParamTensor& t : model.param_tensors()) {
    std::vector<float> values = model.get_param(t.name);
    w.add_f32(t.name, t.shape, values.data());
  }
  w.save(path);
}

void check_preference_model(const GPT& model, const std::map<std::string, std::string>& meta,
                            const std::string& path) {
  HH_CHECK(model.has_scalar_head(), path,
           " has no scalar head: it is a language model, not a preference model (hh-pm train)");
  auto stage = meta.find("stage");
  HH_CHECK(stage == meta.end() || stage->second != "ppo", path,
           " is a PPO value model (stage \"ppo\"), not a preference model (hh-pm train)");
}

void check_language_model(const GPT& model, const std::string& path) {
  HH_CHECK(!model.has_scalar_head(), path,
           " has a scalar head: it is a preference or value model, not a language model");
}

GPT load_model(const std::string& path, Backend& backend,
               std::map<std::string, std::string>* metadata) {
  SafeTensorsFile file = SafeTensorsFile::load(path);
  const GPTConfig config = config_of(file);  // checked against the tensors before allocating
  GPT model(backend, config, scalar_head_of(file));
  load_from_file(model, file, false);
  if (metadata) *metadata = file.metadata();
  return model;
}

void load_weights_into(GPT& model, const std::string& path, bool trunk_only) {
  load_from_file(model, SafeTensorsFile::load(path), trunk_only);
}

std::map<std::string, std::string> read_checkpoint_metadata(const std::string& path) {
  return SafeTensorsFile::load(path).metadata();
}

GPTConfig read_checkpoint_config(const std::string& path) {
  return config_of(SafeTensorsFile::load(path));
}

}  // namespace hh
