// What several test suites share: a temporary directory, the synthetic datasets of the
// trainer tests, the byte-level tokenizer and the rule reward of the PPO tests.
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/wait.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/json.h"
#include "core/rng.h"
#include "data/dataset.h"
#include "model/checkpoint.h"
#include "model/gpt.h"
#include "ops/ops.h"
#include "tokenizer/tokenizer.h"

namespace hh::test {

// A fresh directory under /tmp, removed (with everything in it) when the test ends.
class TempDir {
 public:
  TempDir() {
    char name[] = "/tmp/hh_test_XXXXXX";
    char* p = mkdtemp(name);
    if (!p) throw std::runtime_error("mkdtemp failed");
    path_ = p;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::permissions(path_, std::filesystem::perms::owner_all,
                                 std::filesystem::perm_options::add, ec);
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }
  std::vector<std::string> list() const {
    std::vector<std::string> names;
    for (const auto& e : std::filesystem::directory_iterator(path_))
      names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
  }

 private:
  std::string path_;
};

// A binary of this build (HH_BINARY_DIR): the tests that run one skip when it is not built.
inline std::string built_binary(const std::string& name) {
  return std::string(HH_BINARY_DIR) + "/" + name;
}

// Runs a shell command line: its exit status, or -1 when it did not exit (a signal).
inline int run_shell(const std::string& cmd) {
  const int status = std::system(cmd.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// Runs `cmd` in the background (stdout discarded, stderr to `err`), waits until `file`
// holds something (a trainer's first metrics line), sends it `signals` SIGINTs (Ctrl-C)
// and returns its exit status. A command that ends before `file` fills is not signalled.
inline int interrupt_once_logged(const std::string& cmd, const std::string& file, int signals,
                                 const std::string& err) {
  std::string kills;
  for (int i = 0; i < signals; ++i) kills += "kill -INT $pid; ";
  return run_shell(cmd + " > /dev/null 2> " + err + " & pid=$!; while [ ! -s " + file +
                   " ] && kill -0 $pid 2> /dev/null; do sleep 0.01; done; " + kills + "wait $pid");
}

// The lines of a JSONL text, each parsed.
inline std::vector<Json> parse_jsonl(const std::string& text) {
  std::vector<Json> lines;
  for (size_t at = 0; at < text.size();) {
    size_t end = text.find('\n', at);
    if (end == std::string::npos) end = text.size();
    lines.push_back(Json::parse(text.substr(at, end - at)));
    at = end + 1;
  }
  return lines;
}

// The last line of a program's output (trailing newlines aside), parsed: the JSON summary
// every hh binary ends with.
inline Json last_json_line(std::string text) {
  while (!text.empty() && text.back() == '\n') text.pop_back();
  return Json::parse(text.substr(text.rfind('\n') + 1), "the last line of the output");
}

// Every regular file under `dir`, as relative path -> contents: two snapshots compare
// equal when nothing in between wrote, removed or added a file there.
inline std::map<std::string, std::string> snapshot_files(const std::string& dir) {
  std::map<std::string, std::string> files;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir)) {
    if (!e.is_regular_file()) continue;
    std::ifstream in(e.path(), std::ios::binary);
    std::ostringstream bytes;
    bytes << in.rdbuf();
    files[std::filesystem::relative(e.path(), dir).string()] = bytes.str();
  }
  return files;
}

// Expects `what` to throw hh::Error whose message contains every one of `needles`; returns
// the message.
template <typename F>
std::string expect_error_with(F&& what, const std::vector<std::string>& needles) {
  try {
    what();
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const std::string& n : needles)
      if (msg.find(n) == std::string::npos)
        ADD_FAILURE() << "message '" << msg << "' lacks '" << n << "'";
    return msg;
  }
  ADD_FAILURE() << "expected hh::Error containing '" << needles.at(0) << "'";
  return "";
}

// The trainers' tests' language model: GPT "tiny" over a 40-token vocabulary, context 64.
inline GPTConfig tiny_lm_config() {
  GPTConfig c = GPTConfig::preset("tiny", 40);
  c.max_seq_len = 64;
  return c;
}

// An SFT dataset (vocabulary 40) of n sequences of a repeating pattern "a b c a b c ..."
// with a random start: predictable after two tokens, so a trained model's loss falls far
// below log(40). The second half of each sequence is the "assistant" (masked) part.
// Written to dir/data.sft.bin; returns the path.
inline std::string make_pattern_dataset(const std::string& dir, int n, uint64_t seed) {
  TokenDataset ds;
  ds.kind = DatasetKind::Sft;
  ds.vocab_size = 40;
  ds.tokenizer_fingerprint = 77;
  Rng rng(seed);
  for (int i = 0; i < n; ++i) {
    int len = 12 + static_cast<int>(rng.below(20));
    int period = 2 + static_cast<int>(rng.below(3));
    int base = static_cast<int>(rng.below(30));
    std::vector<int32_t> ids;
    std::vector<uint8_t> mask;
    for (int t = 0; t < len; ++t) {
      ids.push_back(base + t % period);
      mask.push_back(t >= len / 2);
    }
    ds.add(ids, &mask);
  }
  std::string path = dir + "/data.sft.bin";
  save_dataset(path, ds);
  return path;
}

// Bytes 0..255, then <|endoftext|> = 256 and <|endofcontext|> = 257.
inline Tokenizer byte_tokenizer() {
  std::vector<uint8_t> identity(256);
  for (int i = 0; i < 256; i++) identity[i] = static_cast<uint8_t>(i);
  return Tokenizer::from_parts(identity, {}, {kEndOfText, kEndOfContext});
}

// The synthetic PPO task: a response earns the fraction of its tokens that are lowercase
// letters ('a'..'z', 26 of 258 tokens: ≈ 0.1 for a uniform policy).
inline std::vector<float> letter_fraction(const std::vector<std::vector<int32_t>>& prompts,
                                          const std::vector<std::vector<int32_t>>& responses) {
  std::vector<float> out;
  for (size_t i = 0; i < prompts.size(); ++i) {
    double n = 0;
    for (int32_t t : responses[i]) n += t >= 'a' && t <= 'z';
    out.push_back(responses[i].empty() ? 0.0f : static_cast<float>(n / responses[i].size()));
  }
  return out;
}

// A PPO task directory: the byte tokenizer, a random tiny policy saved as an "SFT"
// checkpoint (context `ctx`), and n_prompts prompts of `prompt_len` random uppercase
// letters (each with a reference answer "ok").
struct PpoTask {
  TempDir tmp;
  Tokenizer tok = byte_tokenizer();
  std::string tok_path, policy_path, prompts_path;
  std::unique_ptr<Backend> be = make_cpu_backend();

  explicit PpoTask(int n_prompts = 64, int prompt_len = 8, int ctx = 64) {
    tok_path = tmp.file("tok.bin");
    tok.save(tok_path);
    GPTConfig c = GPTConfig::preset("tiny", tok.vocab_size());
    c.max_seq_len = ctx;
    GPT policy(*be, c, false);
    policy.init_random(3);
    policy_path = tmp.file("sft.safetensors");
    save_model(policy_path, policy,
               {{"stage", "sft"}, {"tokenizer", std::to_string(tok.fingerprint())}});
    TokenDataset ds;
    ds.kind = DatasetKind::Prompts;
    ds.vocab_size = static_cast<uint32_t>(tok.vocab_size());
    ds.tokenizer_fingerprint = tok.fingerprint();
    Rng rng(5);
    for (int i = 0; i < n_prompts; ++i) {
      std::vector<int32_t> p(static_cast<size_t>(prompt_len)), ref = {'o', 'k'};
      for (auto& t : p) t = static_cast<int32_t>('A' + rng.below(26));
      ds.add(p);
      ds.add(ref);
    }
    prompts_path = tmp.file("prompts.bin");
    save_dataset(prompts_path, ds);
  }
};

}  // namespace hh::test
