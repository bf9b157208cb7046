// Model checkpoints: one safetensors file holding every parameter under its hh name
// (GPT2LMHeadModel names, hh's [OC][IC] layout, wte with padded_vocab_size rows) and a
// "__metadata__" with the model config and whatever the trainer adds:
//   {"config": "<GPTConfig JSON>", "scalar_head": "true"|"false",
//    "stage": "sft", "step": "1200", "tokenizer": "<fingerprint>", ...}
// (safetensors metadata values are strings). Writes are atomic (temp file, fsync, rename).
// Loading names the file and the problem: unreadable/corrupt file (the safetensors
// reader), config mismatch, missing or unexpected tensors, wrong dtype or shape.
// The optimizer state lives in a second file: see src/train/optimizer.h.
#pragma once

#include <map>
#include <string>

#include "model/gpt.h"

namespace hh {

// metadata must not use the keys "config" or "scalar_head" (save_model writes them).
void save_model(const std::string& path, const GPT& model,
                const std::map<std::string, std::string>& metadata = {});

// Builds a model from the file's config (and head) and loads its weights. The file's
// metadata is copied to *metadata when given.
GPT load_model(const std::string& path, Backend& backend,
               std::map<std::string, std::string>* metadata = nullptr);

// Loads the weights of `path` into an existing model; the file's config must equal the
// model's. trunk_only: load everything but score.* and ignore whether the file has a
// scalar head (initialises a PM from an LM checkpoint, or a policy from a PM's trunk).
// Nothing is changed when it throws.
void load_weights_into(GPT& model, const std::string& path, bool trunk_only = false);

// Fails, naming `path`, unless the model is a preference model: a scalar head, and not PPO's
// value model (the same shape, with metadata stage "ppo": it predicts returns, not which
// response is preferred). `meta` is the file's metadata.
void check_preference_model(const GPT& model, const std::map<std::string, std::string>& meta,
                            const std::string& path);

// Fails, naming `path`, unless the model is a language model (no scalar head): what samples
// text (a policy, hh-chat's model).
void check_language_model(const GPT& model, const std::string& path);

// The metadata / model config of a checkpoint without loading the weights into a model.
std::map<std::string, std::string> read_checkpoint_metadata(const std::string& path);
GPTConfig read_checkpoint_config(const std::string& path);

}  // namespace hh
