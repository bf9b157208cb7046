// Sampling from a GPT with a KV cache: a batch of prompts of different lengths, one new
// token per sequence per step, on any hh::Backend.
//
//   Generator gen(model, tokenizer);
//   SamplingOptions opt;            // temperature 1, no top-k/top-p, stop "\n\nHuman:"
//   opt.seed = 7;
//   std::vector<GeneratedSample> out = gen.generate(prompt_ids, opt);
//   out[0].response_text, out[0].finish_reason, out[0].logprobs ...
//
// How: prefill runs the prompts (right-padded to the longest) through the transformer with
// the model's usual batched ops, one layer at a time, writing each layer's keys and values
// into the cache (KVCache: per layer K and V [slots][max_len][C]); each decode step then
// embeds one token per active sequence at its own position and runs the layers on those
// rows only, attending over the cache (ops attention_decode / kv_cache_write /
// embedding_forward_at in ops.h). Finished sequences leave the batch.
//
// Sampling happens on the host from the first vocab_size logits of each row (padded
// vocabulary entries are never candidates): temperature (0 = greedy argmax), then top-k,
// then top-p (nucleus), then one draw. Each sequence b has its own random stream
// Rng(mix(seed, b)), so a seed reproduces every sample exactly and a sequence's sample does
// not depend on when the other sequences of its batch finish.
//
// On a backend with graphs (CUDA; HH_CUDA_GRAPHS=0 turns them off) a decode step -- the
// layers, the logits and, when sampling on the device, sample_rows -- is captured once per
// row count M and replayed with one launch; the per-step inputs (tokens, positions, slots,
// seeds) are uploaded to fixed buffers first. Graphs give bit-identical results.
//
// Stops, per sequence: <|endoftext|> sampled ("eot"), a stop string appearing in the
// decoded response ("stop"; the response is cut before it), max_new_tokens ("length").
// Prompts longer than max_seq_len - max_new_tokens lose their oldest tokens (a warning on
// stderr, once per call); an empty prompt is an error. docs/generation.md has more.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "model/gpt.h"
#include "ops/ops.h"

namespace hh {

class Tokenizer;

struct SamplingOptions {
  float temperature = 1.0f;  // 0 = greedy (argmax); otherwise logits / temperature
  int top_k = 0;             // keep the k most likely tokens; 0 = all
  float top_p = 1.0f;        // keep the smallest set whose probability reaches top_p; 1 = all
  int max_new_tokens = 128;  // per sequence, >= 1
  std::vector<std::string> stop_strings = {"\n\nHuman:"};  // empty strings are ignored
  bool stop_at_eot = true;  // stop when <|endoftext|> is sampled (it is not in the response)
  uint64_t seed = 0;
  // Sequence b draws from stream stream_offset + b: a data-parallel rank passes the global
  // index of its first prompt, so a prompt's sample does not depend on the world size.
  int stream_offset = 0;
  // Validates the ranges (temperature >= 0, top_k >= 0, 0 < top_p <= 1, ...), naming the
  // bad field.
  void validate() const;
  // Samples come from the model's own distribution (temperature 1, no top-k, no top-p):
  // what a KL of, or a PPO ratio against, that model's probabilities needs.
  bool samples_the_model() const { return temperature == 1.0f && top_k == 0 && top_p >= 1.0f; }
};

struct GeneratedSample {
  std::vector<int32_t> prompt_ids;  // the prompt as run (after any left truncation)
  bool prompt_truncated = false;
  // The response: the sampled tokens before the stop (no <|endoftext|>, no token that
  // reaches into a stop string), and its text, cut right before the stop string. When a
  // stop string starts inside a token, response_text keeps that token's bytes before it
  // while response_ids drops the token.
  std::vector<int32_t> response_ids;
  std::string response_text;
  std::string finish_reason;  // "stop" (stop string), "eot" (<|endoftext|>), "length"
  // log p(token) under the unmodified model (temperature 1, no top-k/top-p), one per
  // response_ids entry.
  std::vector<float> logprobs;
  // Everything sampled, including the <|endoftext|> or the tokens of the stop string, and
  // their log-probs (response_ids is a prefix of it).
  std::vector<int32_t> generated_ids;
  std::vector<float> generated_logprobs;
};

// Called as text becomes final: (sequence index, the next piece of its response text).
// Text that could still turn out to be the start of a stop string is held back, so the
// pieces of a sequence concatenate to exactly its response_text.
using StreamCallback = std::function<void(int sequence, const std::string& piece)>;

// Keys and values of every layer for a batch of sequences: K and V [slots][max_len][C]
// per layer, on the model's backend.
class KVCache {
 public:
  KVCache() = default;
  // (Re)allocates when the shape grows; contents are undefined until written. Values are
  // in the backend's cache format (Backend::kv_value_bytes() each).
  void reserve(Backend& backend, int n_layer, int slots, int max_len, int C);
  void* keys(int layer) { return reinterpret_cast<char*>(k_.data()) + layer * layer_bytes(); }
  void* values(int layer) { return reinterpret_cast<char*>(v_.data()) + layer * layer_bytes(); }
  int slots() const { return slots_; }
  int max_len() const { return max_len_; }
  size_t bytes() const { return k_.bytes() + v_.bytes(); }
  void release() {
    k_.reset();
    v_.reset();
    slots_ = max_len_ = 0;
  }

 private:
  size_t layer_bytes() const { return static_cast<size_t>(slots_) * max_len_ * C_ * value_bytes_; }
  Buffer<float> k_, v_;  // raw storage, sized in floats
  int n_layer_ = 0, slots_ = 0, max_len_ = 0, C_ = 0;
  size_t value_bytes_ = sizeof(float);
};

class Generator {
 public:
  // Keeps references to both. The model's vocab_size must equal the tokenizer's (throws).
  Generator(GPT& model, const Tokenizer& tokenizer);
  ~Generator();
  Generator(const Generator&) = delete;
  Generator& operator=(const Generator&) = delete;

  // Samples a response for each prompt (token ids, e.g. tokenized with
  // tokenize_dialogue and ending in "\n\nAssistant:"). One call = one batch.
  std::vector<GeneratedSample> generate(const std::vector<std::vector<int32_t>>& prompts,
                                        const SamplingOptions& options,
                                        const StreamCallback& on_text = nullptr);

  // ---- the two model steps, public for tests and for tools that score with the cache ----
  // Runs the prompts (each non-empty, length <= max_len <= max_seq_len) into a fresh cache
  // of max_len positions; returns the logits at each prompt's last token, [B * vocab_size].
  std::vector<float> prefill(const std::vector<std::vector<int32_t>>& prompts, int max_len);
  // Appends tokens[i] to sequence seqs[i] (its next position; the sequence must have room)
  // and returns the logits there, [seqs.size() * vocab_size]. Sequences not listed are
  // left alone.
  std::vector<float> decode(const std::vector<int32_t>& seqs, const std::vector<int32_t>& tokens);
  // Current length (prompt + appended tokens) of each sequence of the last prefill.
  const std::vector<int32_t>& lengths() const { return lengths_; }

  // Frees the cache and the scratch buffers (they grow to the largest batch seen; a trainer
  // that alternates generation and training can give the memory back in between).
  void release_memory();

  // Generated tokens and the time of the last generate() (prefill included), for tokens/s.
  int64_t last_new_tokens() const { return last_new_tokens_; }
  double last_seconds() const { return last_seconds_; }
  // Decode steps run as a graph replay, and graphs captured, so far (0 without graphs), for
  // tests and benchmarks.
  int64_t graph_replays() const { return graph_replays_; }
  int64_t graph_captures() const { return graph_captures_; }
  // Whether generate() may queue the next decode step before reading the last one's samples
  // (see generate(); on by default). The samples are the same either way.
  void set_run_ahead(bool on) { run_ahead_ = on; }

 private:
  // prefill/decode up to the device logits_ [rows, Vp]; host_logits copies them out.
  // With seeds (one per row), decode_device also samples the new logits on the device
  // (sample_rows into sampled_dev_, see fetch_samples).
  void prefill_device(const std::vector<std::vector<int32_t>>& prompts, int max_len);
  void decode_device(const std::vector<int32_t>& seqs, const std::vector<int32_t>* tokens,
                     const std::vector<uint64_t>* seeds = nullptr, float temperature = 0.0f);
  void layer_forward(int l, int rows, const std::function<void()>& attend);
  // The decode step's block on fp16 storage (Backend::decode_fp16), attend writing fp16 to
  // atty_; ln_, atty_ and fch_gelu_ then hold fp16 values (half their size).
  void layer_forward_half(int l, int rows, const std::function<void()>& attend);
  void plan_prefill(int B, int T);
  bool plan_decode(int M);  // true when a buffer moved
  // logits_ from the final LayerNorm and the tied head; half: on the weights' fp16 copies.
  void compute_logits(const float* hidden, int M, bool half = false);
  // The fp16 copy of a parameter (Backend::decode_fp16): the same offset in half_params_.
  const void* half_of(const float* param) const;
  std::vector<float> host_logits(int M);
  // sample_rows over the M rows of logits_ with the seeds at seeds_dev() (uploaded before).
  void sample_device(int M, float temperature);
  // The last sample_device's ids and log-probs, on the host: request queues the copy
  // (work queued after it overlaps it), receive waits for it and unpacks.
  void request_samples(int M);
  void receive_samples(int M, std::vector<int32_t>* ids, std::vector<float>* logprobs);
  // Runs a decode step's device work (`ops`): eagerly, or through the graph cached for key.
  using StepKey = std::tuple<int, bool, uint32_t>;  // M, samples, temperature's bits
  void run_step(const StepKey& key, const std::function<void()>& ops);
  // Destroys every cached graph (they bake in buffer pointers and the cache's layout).
  void drop_graphs();
  // Device layout of a step's inputs for M rows, in 64-bit words of step_in_dev_:
  // seeds [M] | tokens [M] positions [M] slots [M] (int32).
  static size_t step_in_words(int M) {
    return static_cast<size_t>(M) + (3 * static_cast<size_t>(M) + 1) / 2;
  }
  uint64_t* seeds_dev() { return step_in_dev_.data(); }
  int32_t* step_ints_dev(int M) { return reinterpret_cast<int32_t*>(step_in_dev_.data() + M); }

  GPT& model_;
  const Tokenizer& tokenizer_;
  KVCache cache_;
  std::vector<int32_t> lengths_;  // per sequence of the current batch
  int max_len_ = 0;

  // Device scratch, grow-only. Prefill uses [B*T] rows, decode [M] rows.
  Buffer<int32_t> tokens_dev_, positions_dev_, slots_dev_, lengths_dev_, rows_dev_;
  Buffer<uint64_t> step_in_dev_;  // a step's inputs, see step_in_words
  Buffer<int32_t> sampled_dev_;   // ids [M] | log-probs [M] (floats) of sample_device
  std::vector<int32_t> step_ints_, sampled_host_;
  std::vector<uint64_t> step_in_;
  Buffer<float> x_, x2_, ln_, mean_, rstd_, qkv_, atty_, fch_, fch_gelu_, att_saved_;
  Buffer<float> last_, logits_;
  std::vector<float> host_logits_;
  // Backend::decode_fp16: every parameter as fp16, refreshed at each prefill (the model may
  // have changed since: PPO updates the policy between rollouts); decode steps read these.
  Buffer<uint16_t> half_params_;
  bool decode_half_ = false;

  int64_t last_new_tokens_ = 0;
  double last_seconds_ = 0;

  // Decode-step graphs: a key's first step runs eagerly (sizing every buffer, filling
  // cuBLASLt's plan cache), its second is captured; later ones replay.
  struct StepGraph {
    int seen = 0;
    void* graph = nullptr;  // Backend::graph_end_capture's handle
  };
  std::map<StepKey, StepGraph> step_graphs_;
  int64_t graph_replays_ = 0, graph_captures_ = 0;
  bool run_ahead_ = true;
};

// Reads per-sequence random streams for seed and sequence index b (exposed for tests).
uint64_t sample_stream_seed(uint64_t seed, int b);

// Draws one token from logits [V] (the real vocabulary only) with the options'
// temperature/top-k/top-p; `uniform` in [0, 1) is the one random number used. Greedy
// (temperature 0, or top_k 1) ignores it.
int32_t sample_token(const float* logits, int V, const SamplingOptions& options, double uniform,
                     std::vector<std::pair<float, int32_t>>* scratch);

// log softmax(logits[:V])[token], in double.
float token_logprob(const float* logits, int V, int32_t token);

}  // namespace hh
