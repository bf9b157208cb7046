// hh-ppo: the RLHF stage. PPO on a policy initialised from an hh-sft checkpoint, rewarded
// by an hh-pm preference model, with a KL penalty against the frozen initial policy:
//   hh-ppo --policy runs/sft/model.safetensors --pm runs/pm/model.safetensors
//          --tokenizer tok.bin --prompts train.prompts.bin --run-dir runs/ppo
#include <cmath>
#include <cstdio>

#include "core/error.h"
#include "core/flags.h"
#include "train/ppo.h"
#include "train/run.h"

int main(int argc, char** argv) {
  return hh::run_main("hh-ppo", [&] {
    hh::Flags f("hh-ppo",
                "PPO with a KL penalty (Bai et al. 2022 §4): per-token reward\n"
                "-beta*(log pi - log pi_0) plus the PM score at the last token, GAE, clipped\n"
                "policy and value losses, several epochs of minibatches per rollout. --steps\n"
                "counts PPO iterations, --batch prompts per iteration. Writes checkpoints,\n"
                "metrics.jsonl (one line per iteration), samples.jsonl, model.safetensors (the\n"
                "policy) and value.safetensors to --run-dir; --resume continues exactly.");
    f.add_string("policy", "", "initial policy and frozen reference (hh-sft checkpoint)");
    f.add_string("pm", "", "preference model (hh-pm checkpoint)");
    f.add_string("value-init", "", "value model init (default: --pm)");
    f.add_string("tokenizer", "", "tokenizer file (hh-bpe)");
    f.add_string("prompts", "", "prompts dataset (hh-prepare prompts)");
    f.add_int("max-new-tokens", 48, "response tokens per rollout sample");
    f.add_bool("truncate-prompts", false,
               "cut prompts that leave no room for the response (keep the end) instead of failing");
    f.add_int("max-prompt-tokens", 0,
              "keep only the last N tokens of each prompt (0: all; a cheaper CPU demo)");
    f.add_int("epochs", 4, "passes over each rollout");
    f.add_int("minibatch", 8, "sequences per PPO update (and per scoring forward pass)");
    f.add_float("gamma", 1.0, "GAE discount");
    f.add_float("lambda", 0.95, "GAE lambda");
    f.add_float("clip", 0.2, "policy ratio clip epsilon");
    f.add_float("value-clip", 0.2, "value clip epsilon (around the rollout's values)");
    f.add_float("kl-coef", 0.001, "KL penalty beta (initial value when --kl-target is set)");
    f.add_float("kl-target", 0.0, "adapt beta toward this KL per sequence (0: fixed beta)");
    f.add_float("kl-horizon", 10000, "adaptive KL horizon in sequences (Ziegler et al. 2019)");
    f.add_bool("normalize-reward", false, "normalise PM scores with running mean/std");
    f.add_float("value-lr", 0.0, "value model learning rate (0: = --lr)");
    f.add_int("sample-every", 10, "write 4 samples to samples.jsonl every N iterations (0: off)");
    hh::add_device_flag(f);
    hh::add_dist_flags(f);
    hh::add_optimizer_flags(f, 5e-5);
    hh::add_run_flags(
        f, "runs/ppo", 30, 16,
        {"PPO iterations (rollout, scoring, update)", "prompts per iteration", false});
    f.set_default("warmup", "0");
    f.set_default("min-lr-frac", "1");
    f.set_default("on-nan", "stop");
    f.set_default("log-every", "1");
    f.set_default("ckpt-every", "10");
    f.parse(argc, argv);

    hh::PpoTrainOptions o;
    o.policy_init = f.get_string("policy");
    o.pm_path = f.get_string("pm");
    o.value_init = f.get_string("value-init");
    o.tokenizer_path = f.get_string("tokenizer");
    o.prompts_path = f.get_string("prompts");
    HH_CHECK(!o.policy_init.empty(), "--policy is required (see --help)");
    HH_CHECK(!o.pm_path.empty(), "--pm is required (see --help)");
    HH_CHECK(!o.tokenizer_path.empty(), "--tokenizer is required (see --help)");
    HH_CHECK(!o.prompts_path.empty(), "--prompts is required (see --help)");
    o.iterations = f.get_int("steps");
    o.prompts_per_iter = f.get_int32("batch");
    o.epochs = f.get_int32("epochs");
    o.minibatch = f.get_int32("minibatch");
    o.sampling.max_new_tokens = f.get_int32("max-new-tokens");
    o.truncate_prompts = f.get_bool("truncate-prompts");
    o.max_prompt_tokens = f.get_int("max-prompt-tokens");
    HH_CHECK(o.max_prompt_tokens >= 0, "--max-prompt-tokens must be >= 0");
    o.gamma = static_cast<float>(f.get_float("gamma"));
    o.lambda = static_cast<float>(f.get_float("lambda"));
    o.clip = static_cast<float>(f.get_float("clip"));
    o.value_clip = static_cast<float>(f.get_float("value-clip"));
    o.kl.beta = f.get_float("kl-coef");
    o.kl.target = f.get_float("kl-target");
    o.kl.horizon = f.get_float("kl-horizon");
    HH_CHECK(o.kl.beta >= 0 && std::isfinite(o.kl.beta), "--kl-coef must be >= 0");
    HH_CHECK(o.kl.horizon > 0, "--kl-horizon must be > 0");
    o.normalize_reward = f.get_bool("normalize-reward");
    o.policy_adamw = hh::adamw_config_from_flags(f);
    o.value_adamw = o.policy_adamw;
    HH_CHECK(f.get_float("value-lr") >= 0, "--value-lr must be >= 0 (0: = --lr)");
    HH_CHECK(o.kl.target >= 0, "--kl-target must be >= 0 (0: a fixed beta)");
    if (f.get_float("value-lr") > 0) o.value_adamw.lr = static_cast<float>(f.get_float("value-lr"));
    o.warmup = f.get_int("warmup");
    hh::warn_if_warmup_outlasts_the_run(o.warmup, o.iterations);
    o.min_lr_frac = static_cast<float>(f.get_float("min-lr-frac"));
    o.log_every = f.get_int("log-every");
    o.sample_every = f.get_int("sample-every");
    o.ckpt_every = f.get_int("ckpt-every");
    o.keep_ckpts = f.get_int32("keep-ckpts");
    o.seed = static_cast<uint64_t>(f.get_int("seed"));
    o.resume = f.get_bool("resume");
    o.nan_policy = hh::nan_policy_from_flags(f);
    o.run_dir = f.get_string("run-dir");
    o.config_json = f.to_json();

    hh::ProcessGroup group = hh::process_group_from_flags(f);
    o.parallel = group.parallelism();
    hh::install_stop_handler();
    hh::PpoTrainResult r = hh::train_ppo(*group.backend, o);
    if (r.interrupted) return 130;
    if (!group.comm->is_root()) return 0;
    hh::Json summary;
    summary["iterations"] = r.iterations_done;
    if (!r.history.empty()) {
      summary["reward_first"] = r.history.front().reward;
      summary["reward_last"] = r.history.back().reward;
      summary["kl_last"] = r.history.back().kl;
    }
    summary["model"] = o.run_dir + "/model.safetensors";
    std::printf("%s\n", summary.dump().c_str());
    return 0;
  });
}
