// hh-bench: times full GPT-2 training steps (forward + loss, backward, AdamW with
// global-norm clipping) on random tokens, to compare with PyTorch
// (scripts/reference/bench_torch_train.py prints the same lines; scripts/bench_cpu_vs_torch.sh
// and scripts/bench_gpu_vs_torch.sh run both).
//
//   hh-bench train --device cpu --layers 4 --heads 4 --width 256 --vocab 8192 --batch 8 --seq 256
//
// Timing: `warmup` untimed steps, then `steps` timed steps, each ending with a device
// synchronise; tokens/s = batch·seq / median step time (the median resists the noise of
// a shared machine; the mean is printed too).
// Compute: 6·N·tokens (N = parameters, wte counted once: 2 flops per weight per token
// forward, 4 backward) plus causal attention, 6·L·T·C per token (QKᵀ and A·V cost
// 2·t·C each per token at position t forward, mean t = T/2, backward twice forward).
#include <immintrin.h>
#include <omp.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/flags.h"
#include "core/json.h"
#include "core/rng.h"
#include "data/dataset.h"
#include "dist/grad_sync.h"
#include "model/checkpoint.h"
#include "model/gpt.h"
#include "ops/cpu/cpu_ops.h"
#include "tokenizer/tokenizer.h"
#include "train/optimizer.h"
#include "train/pm.h"
#include "train/ppo.h"
#include "train/run.h"

namespace {

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Peak FMA throughput of `threads` cores in GFLOP/s, measured: each thread runs 12
// independent chains of vector FMAs (enough to cover the FMA latency on both pipes) for
// ~0.2 s. The AVX-512 variant is used when the matmul kernel is AVX-512.
__attribute__((target("avx512f,avx2,fma"))) double fma_peak_avx512(long iters) {
  __m512 acc[12];
  for (int i = 0; i < 12; ++i) acc[i] = _mm512_set1_ps(static_cast<float>(i));
  const __m512 mul = _mm512_set1_ps(0.9999f), add = _mm512_set1_ps(1e-6f);
  for (long it = 0; it < iters; ++it) {
#pragma GCC unroll 12
    for (int i = 0; i < 12; ++i) acc[i] = _mm512_fmadd_ps(acc[i], mul, add);
  }
  alignas(64) float lanes[16];
  __m512 sum = acc[0];
  for (int i = 1; i < 12; ++i) sum = _mm512_add_ps(sum, acc[i]);
  _mm512_store_ps(lanes, sum);
  return lanes[0];
}

double fma_peak_avx2(long iters) {
  __m256 acc[12];
  for (int i = 0; i < 12; ++i) acc[i] = _mm256_set1_ps(static_cast<float>(i));
  const __m256 mul = _mm256_set1_ps(0.9999f), add = _mm256_set1_ps(1e-6f);
  for (long it = 0; it < iters; ++it) {
#pragma GCC unroll 12
    for (int i = 0; i < 12; ++i) acc[i] = _mm256_fmadd_ps(acc[i], mul, add);
  }
  alignas(32) float lanes[8];
  __m256 sum = acc[0];
  for (int i = 1; i < 12; ++i) sum = _mm256_add_ps(sum, acc[i]);
  _mm256_store_ps(lanes, sum);
  return lanes[0];
}

double measure_cpu_peak_gflops(bool avx512) {
  const int width = avx512 ? 16 : 8;
  const long iters = avx512 ? 20000000 : 30000000;
  double total = 0.0, sink = 0.0;
#pragma omp parallel reduction(+ : total, sink)
  {
    const double t0 = now_seconds();
    sink += avx512 ? fma_peak_avx512(iters) : fma_peak_avx2(iters);
    const double seconds = now_seconds() - t0;
    total += 12.0 * iters * width * 2.0 / seconds * 1e-9;
  }
  return sink == 12345.0 ? 0.0 : total;  // sink keeps the loops alive
}

double max_rss_bytes() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) * 1024.0;  // ru_maxrss is in KiB on Linux
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

int bench_train(const hh::Flags& f) {
  const int64_t layers = f.get_int32("layers"), heads = f.get_int32("heads"),
                width = f.get_int32("width"), vocab = f.get_int32("vocab"),
                B = f.get_int32("batch"), T = f.get_int32("seq"), steps = f.get_int("steps"),
                warmup = f.get_int("warmup");
  HH_CHECK(B > 0 && T > 0, "--batch=", B, " --seq=", T, ": both must be positive");
  HH_CHECK(steps > 0, "--steps=", steps, ": must be positive");
  HH_CHECK(warmup >= 0, "--warmup=", warmup, ": must be >= 0");
  HH_CHECK(vocab > 1 && vocab <= (1 << 30), "--vocab=", vocab, ": must be in 2..2^30");

  hh::GPTConfig config;
  config.n_layer = static_cast<int>(layers);
  config.n_head = static_cast<int>(heads);
  config.n_embd = static_cast<int>(width);
  config.max_seq_len = static_cast<int>(T);
  config.set_vocab_size(static_cast<int>(vocab));
  config.validate();

  hh::ProcessGroup group = hh::process_group_from_flags(f);
  std::unique_ptr<hh::Backend>& backend = group.backend;
  const bool on_cpu = backend->kind() == hh::DeviceKind::CPU;
  // --pm: the preference-model step instead (scalar head at each sequence's last token,
  // rows [0, B/2) chosen and [B/2, B) rejected, the pairwise loss): pairs/s = B/2 per step.
  const bool pm = f.get_bool("pm");
  HH_CHECK(!pm || B % 2 == 0, "--pm needs an even --batch (pairs)");
  hh::GPT model(*backend, config, /*scalar_head=*/pm);
  model.init_random(static_cast<uint64_t>(f.get_int("seed")));
  hh::AdamWConfig adamw;  // β 0.9/0.95, weight decay 0.1 on matrices, clipping at 1.0
  const float lr = static_cast<float>(f.get_float("lr"));
  HH_CHECK(lr > 0, "--lr must be > 0");
  hh::AdamW optimizer(model, adamw);
  // --allreduce: each step also sums the gradients over the ranks, as the trainers do
  // (bucketed by layer and overlapped with the backward pass on NCCL).
  const bool allreduce = f.get_bool("allreduce");
  hh::GradientSync grad_sync(*group.comm, model);
  HH_CHECK(!allreduce || grad_sync.active(),
           "--allreduce needs a communicator: --dist nccl (GPU) or mpi (CPU, under mpirun)");

  // Random tokens and next-token targets; every position is a full-length target.
  hh::Rng rng(static_cast<uint64_t>(f.get_int("seed")) + 1);
  hh::Batch batch;
  batch.B = static_cast<int>(B);
  batch.T = static_cast<int>(T);
  std::vector<int32_t> stream(static_cast<size_t>(B * T + 1));
  for (int32_t& tok : stream) tok = static_cast<int32_t>(rng.below(static_cast<uint64_t>(vocab)));
  batch.tokens.assign(stream.begin(), stream.end() - 1);
  batch.targets.assign(stream.begin() + 1, stream.end());
  batch.lengths.assign(static_cast<size_t>(B), static_cast<int32_t>(T));

  const double tokens = static_cast<double>(B * T);
  const double params = static_cast<double>(model.num_parameters());
  const double flops_per_step =
      6.0 * params * tokens + 6.0 * layers * static_cast<double>(T) * width * tokens;
  const int threads = omp_get_max_threads();
  std::printf("hh-bench train: device %s, %d CPU threads%s%s\n", backend->name().c_str(), threads,
              on_cpu ? ", matmul kernel " : "", on_cpu ? hh::cpu::matmul_kernel_name() : "");
  std::printf("model: %s, %.3fM parameters; batch %lld x seq %lld = %.0f tokens/step\n",
              config.describe().c_str(), params * 1e-6, static_cast<long long>(B),
              static_cast<long long>(T), tokens);
  if (allreduce)
    std::printf(
        "gradient all-reduce: %s, rank %d of %d, %.1f MB per step%s\n", group.comm->name().c_str(),
        group.comm->rank(), group.comm->world(), static_cast<double>(model.grads().bytes()) / 1e6,
        group.comm->overlaps() ? ", bucketed by layer, overlapped with the backward pass" : "");
  std::fflush(stdout);

  std::vector<double> step_seconds;
  float loss = 0.0f;
  for (int64_t s = 0; s < warmup + steps; ++s) {
    const double t0 = now_seconds();
    if (pm) {
      std::vector<int32_t> rows;
      for (int64_t b = 0; b < B; ++b) rows.push_back(static_cast<int32_t>(b * T + T - 1));
      std::vector<float> scores = model.forward_scores(batch, rows), d_cho, d_rej;
      std::vector<float> cho(scores.begin(), scores.begin() + B / 2),
          rej(scores.begin() + B / 2, scores.end());
      loss = static_cast<float>(hh::pairwise_loss_forward(cho, rej));
      hh::pairwise_loss_backward(cho, rej, 1.0f, &d_cho, &d_rej);
      d_cho.insert(d_cho.end(), d_rej.begin(), d_rej.end());
      if (allreduce) grad_sync.arm();
      model.backward_scores(d_cho);
    } else {
      loss = model.forward(batch);
      if (allreduce) grad_sync.arm();
      model.backward();
    }
    if (allreduce) grad_sync.finish();
    optimizer.clip_and_step(lr);
    model.zero_grad();
    backend->synchronize();
    const double seconds = now_seconds() - t0;
    const bool timed = s >= warmup;
    if (timed) step_seconds.push_back(seconds);
    std::printf("step %lld/%lld%s: %.1f ms, loss %.4f\n", static_cast<long long>(s + 1),
                static_cast<long long>(warmup + steps), timed ? "" : " (warmup)", seconds * 1e3,
                loss);
    std::fflush(stdout);
  }
  HH_CHECK(std::isfinite(loss), "the training loss is not finite: ", loss);

  double mean_seconds = 0.0;
  for (double s : step_seconds) mean_seconds += s;
  mean_seconds /= static_cast<double>(step_seconds.size());
  const double median_seconds = median(step_seconds);
  const double tokens_per_s = tokens / median_seconds;
  const double gflops = flops_per_step / median_seconds * 1e-9;

  // The ceiling: --peak-gflops, else on the CPU the measured FMA peak of these threads.
  double ceiling = f.get_float("peak-gflops");
  std::string ceiling_source = "--peak-gflops";
  if (ceiling <= 0 && on_cpu) {
    const bool avx512 = std::strncmp(hh::cpu::matmul_kernel_name(), "avx512", 6) == 0;
    ceiling = measure_cpu_peak_gflops(avx512);
    ceiling_source =
        hh::str_cat("measured ", avx512 ? "AVX-512" : "AVX2", " FMA peak of ", threads, " threads");
  }
  const double device_bytes = static_cast<double>(backend->peak_bytes());
  const double rss_bytes = max_rss_bytes();

  std::printf("timed %zu steps: median %.1f ms/step, mean %.1f ms/step\n", step_seconds.size(),
              median_seconds * 1e3, mean_seconds * 1e3);
  std::printf("throughput: %.1f tokens/s\n", tokens_per_s);
  if (pm)
    std::printf("preference model: %.1f pairs/s\n", static_cast<double>(B / 2) / median_seconds);
  std::printf("compute: %.2f GFLOP/step (6*N*tokens + 6*L*T*C*tokens) -> %.1f GFLOP/s",
              flops_per_step * 1e-9, gflops);
  if (ceiling > 0) {
    std::printf(", %.1f%% of %.1f GFLOP/s (%s)", 100.0 * gflops / ceiling, ceiling,
                ceiling_source.c_str());
  }
  std::printf("\n");
  std::printf("peak memory: backend %.3f GiB, process max RSS %.3f GiB\n", device_bytes / (1 << 30),
              rss_bytes / (1 << 30));

  // The final JSON line, keys in this order: tokens_per_s first (scripts take the first
  // number of the last line naming tokens/s), and no key containing the word "p-e-a-k",
  // so that scripts grepping for the "peak memory" line find that line.
  std::string json = "{";
  auto add = [&](const char* key, const hh::Json& value) {
    json += hh::str_cat(json.size() > 1 ? "," : "", "\"", key, "\":", value.dump());
  };
  add("tokens_per_s", tokens_per_s);
  if (pm) add("pairs_per_s", static_cast<double>(B / 2) / median_seconds);
  add("ms_per_step_median", median_seconds * 1e3);
  add("ms_per_step_mean", mean_seconds * 1e3);
  add("gflop_per_step", flops_per_step * 1e-9);
  add("gflops_per_s", gflops);
  add("ceiling_gflops", ceiling);
  add("fraction_of_ceiling", ceiling > 0 ? gflops / ceiling : 0.0);
  add("backend_high_water_bytes", device_bytes);
  add("max_rss_bytes", rss_bytes);
  add("final_loss", static_cast<double>(loss));
  add("impl", "hh");
  add("device", backend->name());
  add("threads", threads);
  add("layers", layers);
  add("heads", heads);
  add("width", width);
  add("vocab", vocab);
  add("batch", B);
  add("seq", T);
  add("steps", steps);
  add("warmup", warmup);
  add("parameters", params);
  std::printf("%s}\n", json.c_str());
  return 0;
}

// One PPO iteration's phases at a given size: random policy, PM and prompts (written to a
// temporary directory, as hh-ppo reads them), responses of exactly --new-tokens tokens.
int bench_ppo(const hh::Flags& f) {
  const int64_t B = f.get_int32("batch"), T = f.get_int32("seq"), steps = f.get_int("steps"),
                warmup = f.get_int("warmup"), prompt_len = f.get_int32("prompt-len"),
                new_tokens = f.get_int32("new-tokens");
  HH_CHECK(B > 0 && steps > 0 && warmup >= 0, "--batch and --steps must be > 0");
  HH_CHECK(prompt_len > 0 && new_tokens > 0, "--prompt-len=", prompt_len,
           " --new-tokens=", new_tokens, ": both must be positive");
  HH_CHECK(prompt_len + new_tokens <= T, "--prompt-len (", prompt_len, ") + --new-tokens (",
           new_tokens, ") must fit --seq (", T, ")");
  hh::Tokenizer tok =
      hh::synthetic_tokenizer(f.get_int32("vocab"), {hh::kEndOfText, hh::kEndOfContext});
  hh::GPTConfig config;
  config.n_layer = f.get_int32("layers");
  config.n_head = f.get_int32("heads");
  config.n_embd = f.get_int32("width");
  config.max_seq_len = static_cast<int>(T);
  config.set_vocab_size(tok.vocab_size());
  config.validate();
  auto backend = hh::backend_from_flags(f);

  // The run writes checkpoints of three models: in memory (/dev/shm) where there is one.
  char shm_template[] = "/dev/shm/hh_bench_ppo_XXXXXX", tmp_template[] = "/tmp/hh_bench_ppo_XXXXXX";
  const char* made = mkdtemp(shm_template);
  if (made == nullptr) made = mkdtemp(tmp_template);
  HH_CHECK(made != nullptr, "cannot create a temporary directory in /dev/shm or /tmp");
  const std::string dir = made;
  struct Cleanup {
    std::string dir;
    ~Cleanup() {
      std::error_code ec;
      std::filesystem::remove_all(dir, ec);
    }
  } cleanup{dir};
  const std::map<std::string, std::string> meta = {
      {"tokenizer", std::to_string(tok.fingerprint())}};
  hh::PpoTrainOptions o;
  o.tokenizer_path = dir + "/tok.bin";
  tok.save(o.tokenizer_path);
  size_t parameters = 0;
  {
    hh::GPT policy(*backend, config, false), pm(*backend, config, true);
    parameters = policy.num_parameters();
    policy.init_random(1);
    pm.init_random(2);
    o.policy_init = dir + "/policy.safetensors";
    o.pm_path = dir + "/pm.safetensors";
    hh::save_model(o.policy_init, policy, meta);
    hh::save_model(o.pm_path, pm, meta);
  }
  hh::TokenDataset prompts;
  prompts.kind = hh::DatasetKind::Prompts;
  prompts.vocab_size = static_cast<uint32_t>(tok.vocab_size());
  prompts.tokenizer_fingerprint = tok.fingerprint();
  hh::Rng rng(3);
  for (int64_t i = 0; i < B; ++i) {
    std::vector<int32_t> p(static_cast<size_t>(prompt_len)), ref = {'o', 'k'};
    for (int32_t& t : p) t = static_cast<int32_t>(rng.below(256));
    prompts.add(p);
    prompts.add(ref);
  }
  o.prompts_path = dir + "/prompts.bin";
  hh::save_dataset(o.prompts_path, prompts);
  o.iterations = warmup + steps;
  o.prompts_per_iter = B;
  o.epochs = f.get_int32("epochs");
  o.minibatch = f.get_int32("minibatch");
  o.sampling.max_new_tokens = static_cast<int>(new_tokens);
  o.sampling.stop_strings.clear();
  o.sampling.stop_at_eot = false;  // every response has exactly --new-tokens tokens
  o.run_dir = dir + "/run";
  o.quiet = true;
  o.sample_every = 0;
  o.log_every = 0;

  std::printf("hh-bench ppo: device %s; policy, PM and value model %s, %.1fM parameters each\n",
              backend->name().c_str(), config.describe().c_str(),
              static_cast<double>(parameters) * 1e-6);
  std::printf(
      "iteration: %lld prompts x %lld tokens, +%lld new tokens; %lld epochs of "
      "minibatches of %lld\n",
      static_cast<long long>(B), static_cast<long long>(prompt_len),
      static_cast<long long>(new_tokens), static_cast<long long>(o.epochs),
      static_cast<long long>(o.minibatch));
  std::fflush(stdout);
  hh::PpoTrainResult r = hh::train_ppo(*backend, o);
  double rollout = 0, scoring = 0, update = 0;
  for (size_t i = static_cast<size_t>(warmup); i < r.history.size(); ++i) {
    rollout += r.history[i].rollout_s;
    scoring += r.history[i].scoring_s;
    update += r.history[i].update_s;
  }
  const double n = static_cast<double>(steps), total = (rollout + scoring + update) / n;
  rollout /= n, scoring /= n, update /= n;
  const double generated = static_cast<double>(B * new_tokens);
  std::printf("per iteration (mean of %lld after %lld warmup):\n", static_cast<long long>(steps),
              static_cast<long long>(warmup));
  std::printf("  rollout  %8.3f s  %5.1f%%  (%.0f new tokens/s)\n", rollout, 100 * rollout / total,
              generated / rollout);
  std::printf("  scoring  %8.3f s  %5.1f%%  (PM, policy, reference and value forwards)\n", scoring,
              100 * scoring / total);
  std::printf("  update   %8.3f s  %5.1f%%  (policy and value: forward, backward, AdamW)\n", update,
              100 * update / total);
  std::printf("  total    %8.3f s\n", total);
  hh::Json j;
  j["impl"] = "hh";
  j["device"] = backend->name();
  j["rollout_s"] = rollout;
  j["scoring_s"] = scoring;
  j["update_s"] = update;
  j["iteration_s"] = total;
  j["rollout_tokens_per_s"] = generated / rollout;
  j["prompts"] = B;
  j["new_tokens"] = new_tokens;
  std::printf("%s\n", j.dump().c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return hh::run_main("hh-bench", [&] {
    hh::Flags f("hh-bench",
                "Benchmarks. `hh-bench train`: times full GPT-2 training steps (forward + loss,\n"
                "backward, AdamW) on random tokens and prints tokens/s, ms/step, GFLOP/s,\n"
                "memory and a final JSON line.");
    f.add_usage("hh-bench train [flags]");
    f.add_usage("hh-bench ppo [flags]   one PPO iteration's phases (rollout, scoring, update)");
    hh::add_device_flag(f);
    hh::add_dist_flags(f);
    f.add_bool("allreduce", false,
               "sum the gradients over the ranks every step (with --dist nccl or mpi)");
    f.add_int("layers", 4, "transformer layers");
    f.add_int("heads", 4, "attention heads");
    f.add_int("width", 256, "model width n_embd");
    f.add_int("vocab", 8192, "vocabulary size (padded to a multiple of 64)");
    f.add_int("batch", 8, "sequences per step");
    f.add_int("seq", 256, "tokens per sequence (also the context length)");
    f.add_int("steps", 10, "timed steps");
    f.add_int("warmup", 2, "untimed steps first");
    f.add_float("lr", 3e-4, "AdamW learning rate");
    f.add_int("seed", 1234, "seed of the initial weights and the random tokens");
    f.add_bool("pm", false, "train: time the preference-model step (pairs/s)");
    f.add_int("prompt-len", 64, "ppo: tokens per prompt");
    f.add_int("new-tokens", 128, "ppo: tokens per response");
    f.add_int("epochs", 4, "ppo: passes over each rollout");
    f.add_int("minibatch", 16, "ppo: sequences per update");
    f.add_float("peak-gflops", 0,
                "ceiling for the fraction-of-peak line (0: measure the CPU's FMA peak; on a "
                "GPU give it, e.g. the TF32 peak)");
    f.takes_positional();
    const std::vector<std::string> args = f.parse(argc, argv);
    std::string given;
    for (const std::string& a : args) given += (given.empty() ? "'" : " '") + a + "'";
    HH_CHECK(args.size() == 1 && (args[0] == "train" || args[0] == "ppo"),
             "expected one command, `train` or `ppo` (see --help); got ",
             given.empty() ? "none" : given);
    if (args[0] == "ppo") return bench_ppo(f);
    return bench_train(f);
  });
}
