// hh-eval: policies judged by the preference model. Two subcommands:
//   hh-eval bon     --policy runs/sft/model.safetensors --pm runs/pm/model.safetensors
//                   --tokenizer tok.bin --prompts dev.prompts.bin --n 4
//   hh-eval compare --a runs/ppo/model.safetensors --b runs/sft/model.safetensors
//                   --reference runs/sft/model.safetensors --pm runs/pm/model.safetensors
//                   --tokenizer tok.bin --prompts dev.prompts.bin --n 64
// The last line of each is one JSON object.
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/flags.h"
#include "data/dataset.h"
#include "model/checkpoint.h"
#include "tokenizer/tokenizer.h"
#include "train/evaluate.h"
#include "train/ppo.h"
#include "train/run.h"

namespace {

// Why a KL is not reported: the samples are not the policy's own (hh::SamplingOptions::
// samples_the_model), so log N − (N−1)/N and the Monte Carlo estimate do not apply.
constexpr const char* kNoKl = "sampling with temperature != 1, top-k or top-p is not the policy";

const char* kUsage =
    "usage: hh-eval bon|compare [flags]   (hh-eval <subcommand> --help for its flags)\n"
    "  bon      best-of-N: N samples per prompt, the PM keeps the best; mean PM score of\n"
    "           the chosen sample and KL = log N - (N-1)/N\n"
    "  compare  two policies on held-out prompts: mean PM reward, KL of each to a\n"
    "           reference, win rate of A over B (mean sigmoid(r_a - r_b)), samples side by side\n";

void add_common_flags(hh::Flags& f) {
  f.add_string("pm", "", "preference model (hh-pm checkpoint)");
  f.add_string("tokenizer", "", "tokenizer file (hh-bpe)");
  f.add_string("prompts", "", "held-out prompts (hh-prepare prompts)");
  f.add_int("max-new-tokens", 64, "tokens per response");
  f.add_float("temperature", 1.0, "sampling temperature");
  f.add_int("top-k", 0, "top-k (0: all)");
  f.add_float("top-p", 1.0, "nucleus top-p (1: all)");
  f.add_int("micro-batch", 8, "prompts per generate call");
  f.add_int("seed", 1234, "sampling seed");
  hh::add_device_flag(f);
}

hh::SamplingOptions sampling_from(const hh::Flags& f) {
  hh::SamplingOptions s;
  s.max_new_tokens = f.get_int32("max-new-tokens");
  s.temperature = static_cast<float>(f.get_float("temperature"));
  s.top_k = f.get_int32("top-k");
  s.top_p = static_cast<float>(f.get_float("top-p"));
  s.seed = static_cast<uint64_t>(f.get_int("seed"));
  s.validate();
  return s;
}

// A checkpoint whose tokenizer fingerprint (when recorded) matches the tokenizer's.
hh::GPT load_checked(const std::string& path, hh::Backend& backend, const hh::Tokenizer& tok,
                     bool want_scalar_head, const std::string& what) {
  HH_CHECK(!path.empty(), "--", what, " is required (see --help)");
  std::map<std::string, std::string> meta = hh::read_checkpoint_metadata(path);
  auto it = meta.find("tokenizer");
  HH_CHECK(it == meta.end() || it->second == std::to_string(tok.fingerprint()), "--", what, " ",
           path, " was trained with another tokenizer than --tokenizer");
  hh::GPT model = hh::load_model(path, backend);
  if (want_scalar_head)
    hh::check_preference_model(model, meta, "--" + what + " " + path);
  else
    hh::check_language_model(model, "--" + what + " " + path);
  HH_CHECK(model.config().vocab_size == tok.vocab_size(), "--", what, " ", path,
           " has a vocabulary of ", model.config().vocab_size, ", the tokenizer ",
           tok.vocab_size());
  return model;
}

// What both subcommands set up from add_common_flags: tokenizer, device, PM and its scorer,
// the sampling options.
struct Judge {
  hh::Tokenizer tok;
  std::unique_ptr<hh::Backend> backend;
  std::unique_ptr<hh::GPT> pm;
  hh::SamplingOptions sampling;
  int micro_batch = 8;
  hh::Scorer scorer;
  hh::GPT load(const std::string& flag, const hh::Flags& f) {
    return load_checked(f.get_string(flag), *backend, tok, false, flag);
  }
};
std::unique_ptr<Judge> judge_from(const hh::Flags& f) {
  HH_CHECK(!f.get_string("tokenizer").empty(), "--tokenizer is required (see --help)");
  HH_CHECK(f.get_int32("micro-batch") >= 1, "--micro-batch must be >= 1");
  HH_CHECK(f.get_int32("show") >= 0, "--show must be >= 0");
  auto j = std::make_unique<Judge>(Judge{hh::Tokenizer::load(f.get_string("tokenizer")),
                                         hh::backend_from_flags(f), nullptr, sampling_from(f),
                                         f.get_int32("micro-batch"), nullptr});
  j->pm =
      std::make_unique<hh::GPT>(load_checked(f.get_string("pm"), *j->backend, j->tok, true, "pm"));
  j->scorer = hh::pm_scorer(*j->pm, j->tok.special_id(hh::kEndOfContext), j->micro_batch);
  return j;
}

// The first n prompts, each left-truncated to leave room for the response in `ctx`.
std::vector<std::vector<int32_t>> load_prompts(const std::string& path, const hh::Tokenizer& tok,
                                               int64_t n, int ctx, int max_new) {
  HH_CHECK(!path.empty(), "--prompts is required (see --help)");
  HH_CHECK(n > 0, "the number of prompts must be > 0");
  HH_CHECK(max_new < ctx, "--max-new-tokens=", max_new,
           " leaves no room for a prompt in the context of ", ctx);
  hh::PromptDataset ds = hh::PromptDataset::load(path, &tok);
  std::vector<std::vector<int32_t>> out;
  for (size_t i = 0; i < std::min<size_t>(ds.size(), static_cast<size_t>(n)); ++i) {
    std::vector<int32_t> p = ds.prompt(i).to_vector();
    hh::truncate_left(&p, static_cast<size_t>(ctx - max_new));
    out.push_back(std::move(p));
  }
  HH_CHECK(!out.empty(), path, ": no prompts");
  return out;
}

int run_bon(const std::vector<std::string>& args) {
  hh::Flags f("hh-eval bon",
              "Best-of-N with the PM: N samples per prompt, the highest-scoring is kept. Prints\n"
              "the mean PM score of the chosen samples, of all samples (best-of-1) and the\n"
              "KL of best-of-N from the policy, log N - (N-1)/N; last line one JSON object.");
  f.add_string("policy", "", "the policy (hh-sft or hh-ppo checkpoint)");
  f.add_int("n", 4, "samples per prompt (N)");
  f.add_int("num-prompts", 32, "prompts from the start of --prompts");
  f.add_int("show", 3, "print the chosen response of this many prompts");
  add_common_flags(f);
  f.parse(args);
  const int n = f.get_int32("n");
  HH_CHECK(n >= 1, "--n must be >= 1");
  auto j = judge_from(f);
  hh::GPT policy = j->load("policy", f);
  auto prompts = load_prompts(f.get_string("prompts"), j->tok, f.get_int("num-prompts"),
                              policy.config().max_seq_len, j->sampling.max_new_tokens);
  hh::BestOfNResult r =
      hh::best_of_n(policy, j->tok, j->scorer, prompts, n, j->sampling, j->micro_batch);
  for (int i = 0; i < std::min<int>(f.get_int32("show"), static_cast<int>(r.best_texts.size()));
       ++i)
    std::printf("[%d] best score %+.3f: %s\n", i, r.best_scores[i], r.best_texts[i].c_str());
  std::printf("     k  best-of-k PM score  sqrt(KL)   (the first k of each prompt's samples)\n");
  for (const hh::BestOfNResult::CurvePoint& c : r.curve) {
    std::printf("%6d  %18.4f  ", c.n, c.mean_best);
    if (r.has_kl)
      std::printf("%8.4f\n", std::sqrt(hh::best_of_n_kl(c.n)));
    else
      std::printf("%8s\n", "n/a");
  }
  std::printf("best-of-%d over %lld prompts: mean PM score %.4f (best-of-1: %.4f), ", n,
              static_cast<long long>(r.prompts), r.mean_best, r.mean_all);
  if (r.has_kl)
    std::printf("KL %.4f, sqrt(KL) %.4f\n", r.kl, std::sqrt(r.kl));
  else
    std::printf("KL n/a (%s)\n", kNoKl);
  std::printf("%s\n", r.to_json().dump().c_str());
  return 0;
}

int run_compare(const std::vector<std::string>& args) {
  hh::Flags f("hh-eval compare",
              "Two policies on held-out prompts, one sample each per prompt: mean PM reward, KL\n"
              "of each to --reference (Monte Carlo over the samples), the win rate of A over B\n"
              "judged by the PM (mean sigmoid(r_a - r_b)) and a side-by-side table of samples;\n"
              "last line one JSON object.");
  f.add_string("a", "", "policy A (e.g. the PPO model)");
  f.add_string("b", "", "policy B (e.g. the SFT model)");
  f.add_string("reference", "", "reference policy for the KL (optional; usually the SFT model)");
  f.add_int("n", 64, "prompts from the start of --prompts");
  f.add_int("show", 4, "rows of the side-by-side table");
  f.add_int("width", 100, "characters per table cell");
  add_common_flags(f);
  f.parse(args);
  HH_CHECK(f.get_int32("width") >= 8, "--width must be >= 8 (characters per table cell)");
  auto j = judge_from(f);
  hh::GPT a = j->load("a", f);
  hh::GPT b = j->load("b", f);
  std::unique_ptr<hh::GPT> ref;
  if (!f.get_string("reference").empty()) ref = std::make_unique<hh::GPT>(j->load("reference", f));
  int ctx = std::min(a.config().max_seq_len, b.config().max_seq_len);
  if (ref) ctx = std::min(ctx, ref->config().max_seq_len);
  auto prompts = load_prompts(f.get_string("prompts"), j->tok, f.get_int("n"), ctx,
                              j->sampling.max_new_tokens);
  hh::CompareResult r = hh::compare_policies(a, b, ref.get(), j->tok, j->scorer, prompts,
                                             j->sampling, j->micro_batch);
  std::printf("%s", r.table(f.get_int32("show"), f.get_int32("width")).c_str());
  std::printf("%lld prompts: reward A %.4f, B %.4f", static_cast<long long>(r.prompts), r.reward_a,
              r.reward_b);
  if (r.has_kl) std::printf(" | KL to reference A %.4f, B %.4f", r.kl_a, r.kl_b);
  if (ref && !r.has_kl) std::printf(" | KL n/a (%s)", kNoKl);
  std::printf(" | win rate of A over B %.4f (hard %.4f)\n", r.win_rate, r.hard_win_rate);
  std::printf("%s\n", r.to_json().dump().c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return hh::run_main("hh-eval", [&] {
    if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h") {
      std::fputs(kUsage, argc < 2 ? stderr : stdout);
      return argc < 2 ? 2 : 0;
    }
    const std::string cmd = argv[1];
    std::vector<std::string> rest(argv + 2, argv + argc);
    if (cmd == "bon") return run_bon(rest);
    if (cmd == "compare") return run_compare(rest);
    HH_FAIL("unknown subcommand '", cmd, "'\n", kUsage);
  });
}
