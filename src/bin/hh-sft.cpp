// hh-sft: train the dialogue language model — pretraining on whole dialogues or
// supervised fine-tuning on assistant tokens — on token datasets from hh-prepare.
#include <cstdio>

#include "core/error.h"
#include "core/flags.h"
#include "train/lm.h"
#include "train/run.h"

int main(int argc, char** argv) {
  return hh::run_main("hh-sft", [&] {
    hh::Flags f("hh-sft",
                "Train a GPT-2 language model on dialogues (pretraining, or SFT with the loss\n"
                "on assistant tokens only). Writes checkpoints, metrics.jsonl and the final\n"
                "model.safetensors to --run-dir; --resume continues exactly.");
    f.add_string("train", "", "training dataset (hh-prepare sft)");
    f.add_string("dev", "", "held-out dataset for val_loss (optional)");
    f.add_string("init", "", "start from this checkpoint (hh or Hugging Face GPT-2 safetensors)");
    f.add_string("mode", "sft", "sft: loss on assistant tokens; pretrain: loss on every token");
    f.add_int("seq", 256, "maximum tokens per sequence (longer ones keep their end)");
    f.add_int("micro-batch", 0, "sequences per forward/backward (0: = --batch; else accumulate)");
    f.add_int("eval-batches", 0, "dev batches per evaluation (0: the whole dev set)");
    hh::add_device_flag(f);
    hh::add_dist_flags(f);
    hh::add_model_flags(f, "tiny");
    hh::add_optimizer_flags(f, 1e-3);
    hh::add_run_flags(f, "runs/sft", 200, 16);
    f.parse(argc, argv);

    HH_CHECK(!f.get_string("train").empty(), "--train is required (see --help)");
    std::string mode = f.get_string("mode");
    HH_CHECK(mode == "sft" || mode == "pretrain", "--mode=", mode, ": expected sft or pretrain");

    hh::LmTrainOptions o;
    o.train_path = f.get_string("train");
    o.dev_path = f.get_string("dev");
    o.init = f.get_string("init");
    o.masked = mode == "sft";
    o.stage = mode;
    hh::loop_options_from_flags(f, &o);
    o.eval_batches = f.get_int("eval-batches");
    HH_CHECK(o.eval_batches >= 0, "--eval-batches must be >= 0");

    // The vocabulary comes from the dataset; the architecture from the flags (or --init).
    hh::SftDataset probe = hh::SftDataset::load(o.train_path);
    o.model = hh::model_config_from_flags(f, static_cast<int>(probe.raw().vocab_size));
    o.model_given = hh::model_flags_given(f);

    hh::ProcessGroup group = hh::process_group_from_flags(f);
    o.parallel = group.parallelism();
    hh::install_stop_handler();
    hh::LmTrainResult r = hh::train_lm(*group.backend, o);
    if (r.interrupted) return 130;
    if (!group.comm->is_root()) return 0;
    hh::Json summary;
    summary["steps"] = r.steps_done;
    summary["final_loss"] = r.train_losses.empty() ? 0.0 : r.train_losses.back();
    if (r.last_dev_loss >= 0) summary["val_loss"] = r.last_dev_loss;
    summary["model"] = o.run_dir + "/model.safetensors";
    std::printf("%s\n", summary.dump().c_str());
    return 0;
  });
}
