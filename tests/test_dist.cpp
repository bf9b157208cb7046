// Data parallelism.
//
// Run alone, this binary tests what needs one process (the launcher environment, the
// single-process communicator, the gradient buckets) and then starts ITSELF under
// `mpirun -np 2` with --gtest_filter=Ranks.*: in that run each rank trains each trainer
// twice, once as a plain single process with batch B and once data-parallel with its
// B/2 share over MPI, and both ranks check that the results agree (within float
// summation-order error). The Ranks.* tests skip when not started by mpirun.
//
// The bad-input cases run the real binaries under mpirun: ranks started with different
// flags stop with an error naming the ranks, and a rank that dies ends the job.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <thread>

#include "core/error.h"
#include "core/fileio.h"
#include "core/json.h"
#include "core/rng.h"
#include "data/dataset.h"
#include "dist/dist.h"
#include "dist/grad_sync.h"
#include "model/checkpoint.h"
#include "ops/ops.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"
#include "train/lm.h"
#include "train/pm.h"
#include "train/ppo.h"

namespace fs = std::filesystem;

namespace {

using hh::test::run_shell;
using hh::test::TempDir;

// ---- a fake environment for detect_dist_env ----
std::map<std::string, std::string>* g_env = nullptr;
const char* fake_getenv(const char* name) {
  auto it = g_env->find(name);
  return it == g_env->end() ? nullptr : it->second.c_str();
}
hh::DistEnv detect(std::map<std::string, std::string> vars) {
  g_env = &vars;
  hh::DistEnv e = hh::detect_dist_env(fake_getenv);
  g_env = nullptr;
  return e;
}

bool under_mpirun() { return std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr; }

// mpirun as CI runs it: as root in a container, two ranks on however many cores.
std::string mpirun() {
  return "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 "
         "OMPI_MCA_rmaps_base_oversubscribe=1 mpirun --oversubscribe ";
}
bool have_mpirun() {
  return hh::built_with_mpi() && std::system("mpirun --version >/dev/null 2>&1") == 0;
}

// ---- synthetic data shared with the trainers' own tests (same shapes, smaller) ----

std::string make_sft_dataset(const std::string& dir, int n) {
  return hh::test::make_pattern_dataset(dir, n, 1);
}

std::string make_pm_dataset(const std::string& dir, int n) {
  hh::TokenDataset ds;
  ds.kind = hh::DatasetKind::Pm;
  ds.vocab_size = 50;
  ds.tokenizer_fingerprint = 77;
  hh::Rng rng(2);
  auto token = [&] { return static_cast<int32_t>(10 + rng.below(40)); };
  for (int i = 0; i < n; ++i) {
    std::vector<int32_t> prompt(4 + rng.below(8));
    for (auto& t : prompt) t = token();
    std::vector<int32_t> chosen = prompt, rejected = prompt;
    for (int t = 0; t < 3 + static_cast<int>(rng.below(6)); ++t) chosen.push_back(t ? token() : 5);
    for (int t = 0; t < 3 + static_cast<int>(rng.below(6)); ++t) rejected.push_back(token());
    chosen.push_back(1);
    rejected.push_back(1);
    ds.add(chosen);
    ds.add(rejected);
  }
  std::string path = dir + "/data.pm.bin";
  hh::save_dataset(path, ds);
  return path;
}

// ‖a − b‖₂ / ‖a‖₂ over two models' parameters.
double relative_difference(const hh::GPT& a, const hh::GPT& b) {
  std::vector<float> x(a.params().size()), y(b.params().size());
  a.backend().copy_to_host(x.data(), a.params().data(), x.size() * sizeof(float));
  b.backend().copy_to_host(y.data(), b.params().data(), y.size() * sizeof(float));
  EXPECT_EQ(x.size(), y.size());
  double diff = 0, norm = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    diff += (static_cast<double>(x[i]) - y[i]) * (static_cast<double>(x[i]) - y[i]);
    norm += static_cast<double>(x[i]) * x[i];
  }
  return std::sqrt(diff / norm);
}

// The pre-clip gradient norm of every logged step of a run (rank 0 writes the metrics).
std::vector<double> grad_norms(const std::string& run_dir) {
  std::vector<double> out;
  std::string text = hh::read_file_text(run_dir + "/metrics.jsonl");
  size_t at = 0;
  while (at < text.size()) {
    size_t end = text.find('\n', at);
    if (end == std::string::npos) end = text.size();
    hh::Json j = hh::Json::parse(std::string_view(text).substr(at, end - at));
    if (j.contains("grad_norm")) out.push_back(j["grad_norm"].as_number());
    at = end + 1;
  }
  return out;
}

// Same gradients: the pre-clip norms of each step agree to float summation error.
void expect_same_grad_norms(const std::string& one, const std::string& two) {
  std::vector<double> a = grad_norms(one), b = grad_norms(two);
  ASSERT_EQ(a.size(), b.size());
  ASSERT_FALSE(a.empty());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], 1e-5 * a[i]) << "step " << i + 1;
}

hh::GPT load(hh::Backend& be, const std::string& path) { return hh::load_model(path, be); }

// The MPI communicator of a Ranks.* test (one per process).
hh::Communicator& world_comm(hh::Backend& be) {
  static std::unique_ptr<hh::Communicator> comm;
  if (!comm) {
    hh::CommOptions o;
    o.timeout_s = 120;
    comm = hh::make_communicator("mpi", be, hh::detect_dist_env(), o);
  }
  return *comm;
}
hh::Backend& cpu() {
  static std::unique_ptr<hh::Backend> be = hh::make_cpu_backend();
  return *be;
}

// Summation order differs (per-rank partial sums, then the all-reduce). AdamW turns that
// rounding into ±lr steps where a gradient is zero in exact arithmetic (the PM's
// score.bias: Σ over pairs of (−s + s)), so after K steps the runs differ by ~1e-5 of the
// parameters' L2 norm (measured: LM 7e-7, PM 5e-5, PPO value model 2e-5); training on a
// wrong shard moves them apart by orders of magnitude more. The gradient norms of every
// step are compared separately, to 1e-5.
constexpr double kTolerance = 2e-4;

}  // namespace

// ---------------------------------------------------------------------------------------
// One process

TEST(DistEnv, LaunchersAndDefaults) {
  hh::DistEnv e = detect({});
  EXPECT_EQ(e.world, 1);
  EXPECT_EQ(e.rank, 0);
  EXPECT_EQ(e.launcher, "none");

  e = detect({{"OMPI_COMM_WORLD_RANK", "3"},
              {"OMPI_COMM_WORLD_SIZE", "8"},
              {"OMPI_COMM_WORLD_LOCAL_RANK", "1"},
              {"RANK", "0"},
              {"WORLD_SIZE", "2"}});
  EXPECT_EQ(e.launcher, "openmpi");
  EXPECT_EQ(e.rank, 3);
  EXPECT_EQ(e.world, 8);
  EXPECT_EQ(e.local_rank, 1);

  e = detect({{"SLURM_PROCID", "5"}, {"SLURM_STEP_NUM_TASKS", "16"}, {"SLURM_LOCALID", "1"}});
  EXPECT_EQ(e.launcher, "slurm");
  EXPECT_EQ(e.rank, 5);
  EXPECT_EQ(e.world, 16);
  EXPECT_EQ(e.local_rank, 1);

  // A batch script outside srun has SLURM_NTASKS but no step: one process.
  e = detect({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "16"}});
  EXPECT_EQ(e.world, 1);

  e = detect({{"RANK", "1"}, {"WORLD_SIZE", "2"}, {"LOCAL_RANK", "1"}});
  EXPECT_EQ(e.launcher, "env");
  EXPECT_EQ(e.rank, 1);
  EXPECT_EQ(e.world, 2);
}

TEST(DistEnv, MalformedVariablesAreErrorsNamingThem) {
  auto message = [](std::map<std::string, std::string> vars) {
    try {
      detect(std::move(vars));
    } catch (const hh::Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message({{"RANK", "2"}, {"WORLD_SIZE", "2"}}).find("RANK=2 is out of range"),
            std::string::npos);
  EXPECT_NE(message({{"RANK", "x"}, {"WORLD_SIZE", "2"}}).find("RANK='x' is not an integer"),
            std::string::npos);
  EXPECT_NE(message({{"WORLD_SIZE", "0"}}).find("WORLD_SIZE=0"), std::string::npos);
  EXPECT_NE(message({{"WORLD_SIZE", "2"}}).find("RANK is not"), std::string::npos);
}

TEST(Communicator, SingleProcessCollectivesReturnTheirInput) {
  auto comm = hh::make_single_communicator();
  EXPECT_EQ(comm->world(), 1);
  EXPECT_TRUE(comm->is_root());
  std::vector<double> v = {1.5, -2};
  hh::all_sum(*comm, &v);
  EXPECT_EQ(v, (std::vector<double>{1.5, -2}));
  EXPECT_TRUE(hh::any_rank(*comm, true));
  EXPECT_FALSE(hh::any_rank(*comm, false));
  hh::check_same_on_all_ranks(*comm, 42, "anything");  // nothing to compare with
}

TEST(Communicator, FactoryRefusesWhatCannotWork) {
  auto be = hh::make_cpu_backend();
  hh::DistEnv two;
  two.world = 2;
  two.rank = 1;
  two.launcher = "env";
  hh::CommOptions o;
  EXPECT_THROW(hh::make_communicator("single", *be, two, o), hh::Error);
  EXPECT_THROW(hh::make_communicator("nccl", *be, hh::DistEnv{}, o), hh::Error);  // CPU backend
  EXPECT_THROW(hh::make_communicator("gloo", *be, hh::DistEnv{}, o), hh::Error);
  o.timeout_s = 0;
  EXPECT_THROW(hh::make_communicator("auto", *be, hh::DistEnv{}, o), hh::Error);
  EXPECT_EQ(hh::make_communicator("auto", *be, hh::DistEnv{}, hh::CommOptions{})->name(), "single");
}

// Each tensor lies in exactly one bucket: its layer's ranges, or the rest.
TEST(GradientSync, LayerRangesCoverEachLayerAndNothingElse) {
  auto be = hh::make_cpu_backend();
  hh::GPTConfig c = hh::GPTConfig::preset("tiny", 40);
  hh::GPT model(*be, c, /*scalar_head=*/true);
  for (const hh::ParamTensor& t : model.param_tensors()) {
    int owner = -1;
    for (int l = 0; l < c.n_layer; ++l)
      for (auto [b, e] : model.layer_param_ranges(l))
        if (t.offset >= b && t.offset + t.numel <= e) owner = l;
    int want = -1;
    if (t.name.rfind("transformer.h.", 0) == 0) want = std::atoi(t.name.c_str() + 14);
    EXPECT_EQ(owner, want) << t.name;
  }
}

// NCCL at world size 1 on a GPU: every collective runs through NCCL's kernels and must
// return its input, and a short training run with the overlapped gradient buckets must
// match the plain run bit for bit (a sum over one rank is a copy).
TEST(Nccl, WorldSizeOneOnTheGpu) {
#ifdef HH_WITH_CUDA
  if (!hh::built_with_nccl() || !hh::cuda_device_available())
    GTEST_SKIP() << "needs a GPU and NCCL";
  auto be = hh::make_cuda_backend(0);
  auto comm = hh::make_communicator("nccl", *be, hh::DistEnv{}, hh::CommOptions{});
  EXPECT_EQ(comm->name(), "nccl");
  std::vector<double> stats = {1.25, -3};
  comm->all_reduce_host(stats.data(), stats.size(), hh::ReduceOp::Sum);
  EXPECT_EQ(stats, (std::vector<double>{1.25, -3}));
  uint64_t word = 0x1234;
  comm->broadcast_host(&word, sizeof word, 0);
  EXPECT_EQ(word, 0x1234u);
  std::vector<float> host(1000);
  for (size_t i = 0; i < host.size(); ++i) host[i] = 0.5f * static_cast<float>(i);
  hh::Buffer<float> dev(*be, host.size());
  be->copy_to_device(dev.data(), host.data(), host.size() * sizeof(float));
  comm->all_reduce_device_async(dev.data(), 600);
  comm->all_reduce_device_async(dev.data() + 600, 400);
  comm->wait_all();
  comm->all_reduce_device(dev.data(), host.size());
  std::vector<float> back(host.size());
  be->copy_to_host(back.data(), dev.data(), back.size() * sizeof(float));
  EXPECT_EQ(back, host);

  TempDir tmp;
  hh::LmTrainOptions o;
  o.train_path = make_sft_dataset(tmp.path(), 32);
  o.model = hh::test::tiny_lm_config();
  o.steps = 4;
  o.batch = 8;
  o.micro_batch = 4;
  o.seq = 32;
  o.ckpt_every = 0;
  o.quiet = true;
  o.run_dir = tmp.path() + "/plain";
  hh::LmTrainResult plain = hh::train_lm(*be, o);
  o.run_dir = tmp.path() + "/nccl";
  o.parallel.comm = comm.get();
  o.parallel.check_sync_every = 1;
  hh::LmTrainResult nccl = hh::train_lm(*be, o);
  EXPECT_EQ(plain.train_losses, nccl.train_losses);
  EXPECT_EQ(relative_difference(load(*be, tmp.path() + "/plain/model.safetensors"),
                                load(*be, tmp.path() + "/nccl/model.safetensors")),
            0.0);
#else
  GTEST_SKIP() << "hh was built without CUDA";
#endif
}

namespace {
// A one-rank communicator that overlaps (as NCCL and MPI do) and records
// what it is asked to reduce, with a copy of the data at the moment of the call.
class RecordingComm final : public hh::Communicator {
 public:
  explicit RecordingComm(const float* base) : Communicator(0, 1, 0, 10), base_(base) {}
  std::string name() const override { return "recording"; }
  bool overlaps() const override { return true; }
  void all_reduce_host(double*, size_t, hh::ReduceOp) override {}
  void broadcast_host(void*, size_t, int) override {}
  void all_reduce_device(float* x, size_t n) override { record(x, n, false); }
  void broadcast_device(float*, size_t, int) override {}
  void all_reduce_device_async(float* x, size_t n) override { record(x, n, true); }
  void wait_all() override { ++waits; }
  struct Call {
    size_t begin, end;
    bool async;
    std::vector<float> data;  // the range when it was sent
  };
  std::vector<Call> calls;
  int waits = 0;

 private:
  void record(float* x, size_t n, bool async) {
    calls.push_back({static_cast<size_t>(x - base_), static_cast<size_t>(x - base_) + n, async,
                     std::vector<float>(x, x + n)});
  }
  const float* base_;
};
}  // namespace

// Armed, the buckets leave during the backward pass, layer L-1 first, each holding its
// final gradient; finish() sends the rest; together they cover the buffer exactly once.
TEST(GradientSync, OverlappedBucketsCarryFinalGradientsAndCoverTheBuffer) {
  auto be = hh::make_cpu_backend();
  hh::GPTConfig c = hh::GPTConfig::preset("tiny", 40);
  c.max_seq_len = 16;
  hh::GPT model(*be, c, /*scalar_head=*/false);
  model.init_random(1);
  RecordingComm comm(model.grads().data());
  hh::GradientSync sync(comm, model);
  hh::Batch b;
  b.B = 2;
  b.T = 8;
  for (int i = 0; i < 16; ++i) b.tokens.push_back(i % 40), b.targets.push_back((i + 1) % 40);
  b.lengths = {8, 8};

  model.zero_grad();
  model.forward(b);
  model.backward();  // not armed: nothing is sent
  EXPECT_TRUE(comm.calls.empty());
  model.forward(b);
  sync.arm();
  model.backward();
  ASSERT_EQ(comm.calls.size(), static_cast<size_t>(2 * c.n_layer));
  for (int k = 0; k < c.n_layer; ++k) {  // layer L-1 first, its two ranges
    auto ranges = model.layer_param_ranges(c.n_layer - 1 - k);
    EXPECT_EQ(comm.calls[2 * k].begin, ranges[0].first);
    EXPECT_EQ(comm.calls[2 * k + 1].begin, ranges[1].first);
  }
  sync.finish();
  EXPECT_EQ(comm.waits, 1);
  std::vector<int> covered(model.grads().size(), 0);
  std::vector<float> final_grads(model.grads().size());
  be->copy_to_host(final_grads.data(), model.grads().data(), final_grads.size() * sizeof(float));
  for (const auto& call : comm.calls) {
    EXPECT_TRUE(call.async);
    for (size_t i = call.begin; i < call.end; ++i) {
      covered[i] += 1;
      ASSERT_EQ(call.data[i - call.begin], final_grads[i]) << "sent before it was final: " << i;
    }
  }
  for (size_t i = 0; i < covered.size(); ++i) ASSERT_EQ(covered[i], 1) << "offset " << i;

  // Without arm() (a rank with nothing to train on in this step), or armed without a
  // backward pass: the same collectives in the same order, all sent by finish(), as NCCL
  // needs every rank to issue them alike.
  auto sequence = [](const RecordingComm& rc) {
    std::vector<std::pair<size_t, size_t>> out;
    for (const auto& call : rc.calls) out.emplace_back(call.begin, call.end);
    return out;
  };
  const auto armed_sequence = sequence(comm);
  comm.calls.clear();
  sync.finish();
  EXPECT_EQ(sequence(comm), armed_sequence);
  comm.calls.clear();
  sync.arm();
  sync.finish();
  EXPECT_EQ(sequence(comm), armed_sequence);
  EXPECT_EQ(comm.waits, 3);
  // A second backward pass after one arm() is a bug in the caller, reported as such.
  model.forward(b);
  sync.arm();
  model.backward();
  model.forward(b);
  EXPECT_THROW(model.backward(), hh::Error);
}

// ---------------------------------------------------------------------------------------
// Two ranks (started by the MPI test below)

namespace {

// The options both supervised trainers share, for the 6-step two-rank comparisons.
void small_run(hh::TrainLoopOptions* o) {
  o->steps = 6;
  o->batch = 8;
  o->seq = 32;
  o->adamw.lr = 3e-3f;
  o->warmup = 2;
  o->eval_every = 3;
  o->ckpt_every = 0;
  o->log_every = 1;
  o->quiet = true;
}

// Trains `o` as one plain process (run "one") and over the ranks (run "two"), and checks
// on rank 0 the parameters and every step's gradient norm of the two runs.
template <typename Options, typename Train>
auto one_and_two(Options o, const std::string& dir, hh::Communicator& comm, const char* what,
                 Train train) {
  o.run_dir = dir + "/one";
  auto one = train(cpu(), o);
  o.run_dir = dir + "/two";
  o.parallel.comm = &comm;
  o.parallel.check_sync_every = 1;
  auto two = train(cpu(), o);
  EXPECT_EQ(one.train_losses.size(), two.train_losses.size());
  for (size_t i = 0; i < std::min(one.train_losses.size(), two.train_losses.size()); ++i)
    EXPECT_NEAR(one.train_losses[i], two.train_losses[i], 1e-5) << "step " << i;
  if (comm.is_root()) {
    double d = relative_difference(load(cpu(), dir + "/one/model.safetensors"),
                                   load(cpu(), dir + "/two/model.safetensors"));
    EXPECT_LT(d, kTolerance);
    expect_same_grad_norms(dir + "/one", dir + "/two");
    std::printf("%s: 2 ranks vs 1 process, relative parameter difference %.3g\n", what, d);
  } else {
    EXPECT_FALSE(hh::file_exists(dir + "/two/model.safetensors")) << "only rank 0 writes";
  }
  return std::make_pair(std::move(one), std::move(two));
}

}  // namespace

TEST(Ranks, LanguageModelMatchesOneProcess) {
  if (!under_mpirun()) GTEST_SKIP() << "runs under mpirun (see DistMpi)";
  TempDir tmp;  // per rank: each rank writes its own copy of the same data
  hh::LmTrainOptions o;
  small_run(&o);
  o.train_path = o.dev_path = make_sft_dataset(tmp.path(), 48);
  o.model = hh::test::tiny_lm_config();
  o.micro_batch = 8;  // 4 per rank: dev batches and the dev subset must not change
  o.eval_batches = 2;
  auto [one, two] = one_and_two(o, tmp.path(), world_comm(cpu()), "lm", hh::train_lm);
  EXPECT_NEAR(one.last_dev_loss, two.last_dev_loss, 1e-5);
}

TEST(Ranks, PreferenceModelMatchesOneProcess) {
  if (!under_mpirun()) GTEST_SKIP() << "runs under mpirun (see DistMpi)";
  TempDir tmp;
  hh::PmTrainOptions o;
  small_run(&o);
  o.train_path = o.dev_path = make_pm_dataset(tmp.path(), 40);
  o.model = hh::GPTConfig::preset("tiny", 50);
  o.model.max_seq_len = 32;
  o.micro_batch = 2;  // accumulation on both sides
  auto [one, two] = one_and_two(o, tmp.path(), world_comm(cpu()), "pm", hh::train_pm);
  for (size_t i = 0; i < std::min(one.train_accuracies.size(), two.train_accuracies.size()); ++i)
    EXPECT_NEAR(one.train_accuracies[i], two.train_accuracies[i], 1e-6) << "step " << i;
  EXPECT_NEAR(one.last_dev.loss, two.last_dev.loss, 1e-5);
  EXPECT_NEAR(one.last_dev.accuracy, two.last_dev.accuracy, 1e-9);
  EXPECT_EQ(one.last_dev.margins.size(), two.last_dev.margins.size());
}

using hh::test::byte_tokenizer;
using hh::test::letter_fraction;

namespace {
// hh-ppo as one process and over the ranks, with `minibatch` sequences per update.
void ppo_one_and_two(int64_t minibatch, const char* what) {
  hh::Communicator& comm = world_comm(cpu());
  hh::test::PpoTask task(32, 6, 48);
  const std::string dir = task.tmp.path();
  hh::PpoTrainOptions o;
  o.tokenizer_path = task.tok_path;
  o.policy_init = task.policy_path;
  o.prompts_path = task.prompts_path;
  o.scorer = letter_fraction;
  o.iterations = 2;
  o.prompts_per_iter = 8;
  o.epochs = 2;
  o.minibatch = minibatch;
  o.sampling.max_new_tokens = 8;
  o.sampling.stop_strings.clear();
  o.policy_adamw.lr = 1e-3f;
  o.value_adamw.lr = 1e-3f;
  o.kl.beta = 0.02;
  o.kl.target = 1;  // the controller moves β from the rollout's KL
  o.normalize_reward = true;
  o.quiet = true;
  o.sample_every = 0;

  o.run_dir = dir + "/one";
  hh::PpoTrainResult one = hh::train_ppo(cpu(), o);
  o.run_dir = dir + "/two";
  o.parallel.comm = &comm;
  o.parallel.check_sync_every = 1;
  hh::PpoTrainResult two = hh::train_ppo(cpu(), o);

  ASSERT_EQ(one.history.size(), two.history.size());
  for (size_t i = 0; i < one.history.size(); ++i) {
    const hh::PpoIterationStats &a = one.history[i], &b = two.history[i];
    // The same samples (the same streams per prompt), so the same rewards and lengths.
    EXPECT_DOUBLE_EQ(a.reward, b.reward) << "iteration " << i;
    EXPECT_DOUBLE_EQ(a.response_length, b.response_length) << "iteration " << i;
    EXPECT_NEAR(a.kl, b.kl, 1e-4) << "iteration " << i;
    EXPECT_NEAR(a.beta, b.beta, 1e-9) << "iteration " << i;
    EXPECT_NEAR(a.entropy, b.entropy, 1e-4) << "iteration " << i;
    EXPECT_NEAR(a.policy_loss, b.policy_loss, 1e-4) << "iteration " << i;
    EXPECT_NEAR(a.value_loss, b.value_loss, 1e-4) << "iteration " << i;
    EXPECT_NEAR(a.explained_variance, b.explained_variance, 1e-4) << "iteration " << i;
  }
  if (comm.is_root()) {
    double d = relative_difference(load(cpu(), dir + "/one/model.safetensors"),
                                   load(cpu(), dir + "/two/model.safetensors"));
    double dv = relative_difference(load(cpu(), dir + "/one/value.safetensors"),
                                    load(cpu(), dir + "/two/value.safetensors"));
    EXPECT_LT(d, kTolerance);
    EXPECT_LT(dv, kTolerance);
    std::printf("%s: 2 ranks vs 1 process, relative parameter difference policy %.3g value %.3g\n",
                what, d, dv);
  }
}
}  // namespace

TEST(Ranks, PpoMatchesOneProcess) {
  if (!under_mpirun()) GTEST_SKIP() << "runs under mpirun (see DistMpi)";
  ppo_one_and_two(4, "ppo");
}

// One sequence per minibatch: every update is one rank's alone, and the other rank joins
// its all-reduce without a backward pass (the bucket sequence must still match).
TEST(Ranks, PpoWithMinibatchesOnOneRankMatchesOneProcess) {
  if (!under_mpirun()) GTEST_SKIP() << "runs under mpirun (see DistMpi)";
  ppo_one_and_two(1, "ppo, minibatch 1");
}

// A data-parallel run stopped after 3 steps and resumed to 6 ends bit-identical to one run
// of 6: the cursor, the moments and the replicas come back exactly. The run directory is
// shared (rank 0 makes it and sends its path), as on a cluster filesystem.
TEST(Ranks, ResumeMatchesAnUninterruptedRun) {
  if (!under_mpirun()) GTEST_SKIP() << "runs under mpirun (see DistMpi)";
  hh::Communicator& comm = world_comm(cpu());
  TempDir data_dir;
  std::unique_ptr<TempDir> shared;
  char path[256] = {};
  if (comm.is_root()) {
    shared = std::make_unique<TempDir>();
    std::snprintf(path, sizeof path, "%s", shared->path().c_str());
  }
  comm.broadcast_host(path, sizeof path, 0);
  const std::string dir = path;
  hh::LmTrainOptions o;
  small_run(&o);
  o.train_path = make_sft_dataset(data_dir.path(), 48);
  o.model = hh::test::tiny_lm_config();
  o.micro_batch = 2;
  o.eval_every = 0;
  o.parallel.comm = &comm;
  o.run_dir = dir + "/full";
  hh::train_lm(cpu(), o);
  o.run_dir = dir + "/part";
  o.steps = 3;
  hh::train_lm(cpu(), o);
  o.steps = 6;
  o.resume = true;
  hh::LmTrainResult resumed = hh::train_lm(cpu(), o);
  EXPECT_EQ(resumed.steps_done, 3);
  if (comm.is_root()) {
    EXPECT_EQ(relative_difference(load(cpu(), dir + "/full/model.safetensors"),
                                  load(cpu(), dir + "/part/model.safetensors")),
              0.0);
  }
  hh::all_sum(comm, 0.0);  // rank 0 removes the directory only after every rank is done
}

// Ranks started with different settings stop together with an error naming the rank.
TEST(Ranks, DifferentFlagsAreAnErrorOnEveryRank) {
  if (!under_mpirun()) GTEST_SKIP() << "runs under mpirun (see DistMpi)";
  hh::Communicator& comm = world_comm(cpu());
  TempDir tmp;
  hh::LmTrainOptions o;
  o.train_path = make_sft_dataset(tmp.path(), 16);
  o.model = hh::test::tiny_lm_config();
  o.steps = 2;
  o.batch = 4;
  o.micro_batch = 4;
  o.seq = 32;
  o.quiet = true;
  o.run_dir = tmp.path() + "/run";
  o.parallel.comm = &comm;
  auto error_of = [&] {
    try {
      hh::train_lm(cpu(), o);
    } catch (const hh::Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  o.config_json = comm.rank() == 1 ? "{\"lr\":0.1}" : "{\"lr\":0.2}";
  std::string msg = error_of();
  EXPECT_NE(msg.find("the flags of rank(s) 1 differ from rank 0's"), std::string::npos) << msg;
  // The same flags, but rank 1's file holds other data.
  o.config_json = "{}";
  if (comm.rank() == 1) o.train_path = make_sft_dataset(tmp.path(), 17);
  msg = error_of();
  EXPECT_NE(msg.find("the training data " + o.train_path + " of rank(s) 1 differ"),
            std::string::npos)
      << msg;
}

// The --check-sync-every check: replicas are identical after broadcast_parameters, and
// one changed weight on rank 1 is an error on every rank, naming rank 1.
TEST(Ranks, DivergedReplicasAreDetected) {
  if (!under_mpirun()) GTEST_SKIP() << "runs under mpirun (see DistMpi)";
  hh::Communicator& comm = world_comm(cpu());
  hh::GPT model(cpu(), hh::GPTConfig::preset("tiny", 40), false);
  model.init_random(static_cast<uint64_t>(7 + comm.rank()));  // different on each rank
  hh::broadcast_parameters(comm, model);
  EXPECT_NO_THROW(hh::check_replicas_identical(comm, model, "after broadcast"));
  if (comm.rank() == 1) {
    std::vector<float> w = model.get_param("transformer.ln_f.bias");
    w[3] += 1e-6f;
    model.set_param("transformer.ln_f.bias", w);
  }
  try {
    hh::check_replicas_identical(comm, model, "at step 3");
    ADD_FAILURE() << "no error";
  } catch (const hh::Error& e) {
    EXPECT_NE(std::string(e.what()).find("the parameters at step 3 of rank(s) 1 differ"),
              std::string::npos)
        << e.what();
  }
}

// A rank that stops answering makes the others fail after --dist-timeout, not hang. Rank
// 1 sleeps through rank 0's deadline, then joins the same collective, so the two stay
// matched for the tests after this one.
TEST(Ranks, AStalledRankIsATimeoutError) {
  if (!under_mpirun()) GTEST_SKIP() << "runs under mpirun (see DistMpi)";
  hh::Communicator& world = world_comm(cpu());
  hh::CommOptions o;
  o.timeout_s = 1;
  auto comm = hh::make_communicator("mpi", cpu(), hh::detect_dist_env(), o);
  if (comm->rank() == 1) {
    std::this_thread::sleep_for(std::chrono::seconds(3));
    hh::all_sum(*comm, 1.0);
  } else {
    auto t0 = std::chrono::steady_clock::now();
    try {
      hh::all_sum(*comm, 1.0);
      ADD_FAILURE() << "no timeout";
    } catch (const hh::Error& e) {
      EXPECT_NE(std::string(e.what()).find("no reply from the other ranks within 1 s"),
                std::string::npos)
          << e.what();
    }
    double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_GE(waited, 1.0);
    EXPECT_LT(waited, 2.5);
  }
  hh::all_sum(world, 0.0);  // both ranks here again
}

// ---------------------------------------------------------------------------------------
// The two-rank runs, started from the one-process test binary

TEST(DistMpi, TwoRanksMatchOneProcessForEveryTrainer) {
  if (under_mpirun()) GTEST_SKIP() << "this is the launcher";
  if (!have_mpirun()) {
    // CI sets HH_REQUIRE_MPI: there, a missing MPI must fail instead of skipping.
    ASSERT_EQ(std::getenv("HH_REQUIRE_MPI"), nullptr) << "HH_REQUIRE_MPI is set but MPI is not";
    GTEST_SKIP() << "hh was built without MPI, or mpirun is missing";
  }
  std::string self = fs::read_symlink("/proc/self/exe").string();
  int rc = run_shell(mpirun() + "-np 2 " + self + " --gtest_filter='Ranks.*'");
  EXPECT_EQ(rc, 0) << "a rank failed (its output is above)";
}

// The real binaries: different flags on the two ranks, and a rank that dies.
TEST(DistMpi, BinariesStopCleanlyOnBadJobs) {
  if (under_mpirun()) GTEST_SKIP() << "this is the launcher";
  if (!have_mpirun()) {
    // CI sets HH_REQUIRE_MPI: there, a missing MPI must fail instead of skipping.
    ASSERT_EQ(std::getenv("HH_REQUIRE_MPI"), nullptr) << "HH_REQUIRE_MPI is set but MPI is not";
    GTEST_SKIP() << "hh was built without MPI, or mpirun is missing";
  }
  TempDir tmp;
  std::string data = make_sft_dataset(tmp.path(), 16);
  std::string sft = hh::test::built_binary("hh-sft") + " --device cpu --train " + data +
                    " --steps 2 --seq 32 --ctx 64 --dist-timeout 20";
  std::string common = sft + " --batch 4 --run-dir ";
  std::string log = tmp.path() + "/log.txt";
  auto t0 = std::chrono::steady_clock::now();
  int rc = run_shell(mpirun() + "-np 1 " + common + tmp.path() + "/a --lr 1e-3 : -np 1 " + common +
                     tmp.path() + "/a --lr 2e-3 > " + log + " 2>&1");
  EXPECT_NE(rc, 0);
  std::string out = hh::read_file_text(log);
  EXPECT_NE(out.find("the flags of rank(s) 1 differ from rank 0's"), std::string::npos) << out;
  EXPECT_NE(out.find("hh-sft (rank 0 of 2): error"), std::string::npos) << out;

  // A global batch that does not split over the ranks.
  rc = run_shell(mpirun() + "-np 2 " + sft + " --batch 5 --run-dir " + tmp.path() + "/c > " + log +
                 " 2>&1");
  EXPECT_NE(rc, 0);
  out = hh::read_file_text(log);
  EXPECT_NE(out.find("--batch=5 must be a multiple of the number of ranks (2)"), std::string::npos)
      << out;

  // Rank 1 dies before it joins: mpirun ends the job, rank 0 does not wait forever.
  rc = run_shell(mpirun() + "-np 1 " + common + tmp.path() + "/b : -np 1 bash -c 'exit 3' > " +
                 log + " 2>&1");
  EXPECT_NE(rc, 0);
  double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(waited, 60.0);
}
