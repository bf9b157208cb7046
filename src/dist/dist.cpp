// The launcher environment, the single-process communicator, the factory and the helpers.
#include "dist/dist.h"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <thread>

#include "core/error.h"
#include "core/flags.h"
#include "dist/dist_impl.h"
#include "ops/ops.h"

namespace hh {

namespace {

// A decimal integer in [lo, hi] from variable `name`, or `fallback` when it is unset.
int env_int(const char* (*getenv)(const char*), const char* name, int lo, int hi, int fallback) {
  const char* s = getenv(name);
  if (s == nullptr || *s == '\0') return fallback;
  char* end = nullptr;
  errno = 0;
  long v = std::strtol(s, &end, 10);
  HH_CHECK(errno == 0 && end != s && *end == '\0', "environment variable ", name, "='", s,
           "' is not an integer");
  HH_CHECK(v >= lo && v <= hi, "environment variable ", name, "=", v, " is out of range [", lo,
           ", ", hi, "]");
  return static_cast<int>(v);
}

const char* std_getenv(const char* name) { return std::getenv(name); }

class SingleCommunicator final : public Communicator {
 public:
  SingleCommunicator() : Communicator(0, 1, 0, 0) {}
  std::string name() const override { return "single"; }
  void all_reduce_host(double*, size_t, ReduceOp) override {}
  void broadcast_host(void*, size_t, int root) override {
    HH_CHECK(root == 0, "broadcast from rank ", root, " in a single-process run");
  }
  void all_reduce_device(float*, size_t) override {}
  void broadcast_device(float*, size_t, int root) override {
    HH_CHECK(root == 0, "broadcast from rank ", root, " in a single-process run");
  }
};

void abort_job() { dist_detail::mpi_abort_job(); }

}  // namespace

// Launcher-specific variables first: a job started by mpirun or srun may also inherit
// generic RANK/WORLD_SIZE from the user's shell. SLURM_STEP_NUM_TASKS (not SLURM_NTASKS)
// is set inside an srun step only, so a batch script that runs hh directly is one rank.
DistEnv detect_dist_env(const char* (*getenv)(const char*)) {
  if (getenv == nullptr) getenv = std_getenv;
  struct Source {
    const char *launcher, *rank, *world, *local;
  };
  const Source sources[] = {
      {"openmpi", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"},
      {"pmi", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"},
      {"slurm", "SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_LOCALID"},
      {"env", "RANK", "WORLD_SIZE", "LOCAL_RANK"},
  };
  const int kMaxWorld = 1 << 20;
  for (const Source& s : sources) {
    const char* w = getenv(s.world);
    if (w == nullptr || *w == '\0') continue;
    DistEnv e;
    e.launcher = s.launcher;
    e.world = env_int(getenv, s.world, 1, kMaxWorld, 1);
    e.rank = env_int(getenv, s.rank, 0, e.world - 1, -1);
    HH_CHECK(e.rank >= 0, s.world, " is set but ", s.rank, " is not");
    e.local_rank = env_int(getenv, s.local, 0, e.world - 1, 0);
    return e;
  }
  return DistEnv{};
}

std::unique_ptr<Communicator> make_single_communicator() {
  return std::make_unique<SingleCommunicator>();
}

Communicator& single_communicator() {
  static SingleCommunicator single;
  return single;
}

std::unique_ptr<Communicator> make_communicator(const std::string& kind, Backend& backend,
                                                const DistEnv& env, const CommOptions& options) {
  HH_CHECK(options.timeout_s > 0, "--dist-timeout must be > 0");
  std::string k = kind;
  if (k == "auto") {
    if (env.world == 1)
      k = "single";
    else
      k = backend.kind() == DeviceKind::CUDA ? "nccl" : "mpi";
  }
  std::unique_ptr<Communicator> comm;
  if (k == "single") {
    HH_CHECK(env.world == 1, "--dist=single, but the launcher (", env.launcher,
             ") started this process as rank ", env.rank, " of ", env.world,
             ": use --dist=auto, mpi or nccl");
    return make_single_communicator();
  } else if (k == "mpi") {
    HH_CHECK(built_with_mpi(),
             "--dist=mpi: this hh was built without MPI (install libopenmpi-dev and rebuild)");
    HH_CHECK(backend.kind() == DeviceKind::CPU,
             "--dist=mpi reduces host memory: use it with --device cpu (GPUs use --dist=nccl)");
    comm = dist_detail::make_mpi_communicator(env, options.timeout_s);
  } else if (k == "nccl") {
    HH_CHECK(built_with_nccl(), "--dist=nccl: this hh was built without CUDA and NCCL");
    HH_CHECK(backend.kind() == DeviceKind::CUDA,
             "--dist=nccl needs a CUDA device (--device cuda); CPU ranks use --dist=mpi");
    comm = dist_detail::make_nccl_communicator(backend, env, options);
  } else {
    HH_FAIL("--dist=", kind, ": expected auto, single, mpi or nccl");
  }
  if (comm->world() > 1) set_run_main_rank(rank_label(*comm), abort_job);
  return comm;
}

// ---- helpers ----

void all_sum(Communicator& comm, std::vector<double>* values) {
  if (!values->empty()) comm.all_reduce_host(values->data(), values->size(), ReduceOp::Sum);
}

double all_sum(Communicator& comm, double value) {
  comm.all_reduce_host(&value, 1, ReduceOp::Sum);
  return value;
}

bool any_rank(Communicator& comm, bool flag) {
  double v = flag ? 1.0 : 0.0;
  comm.all_reduce_host(&v, 1, ReduceOp::Max);
  return v != 0.0;
}

// Rank 0's value is broadcast; each rank marks its own slot when it differs; the marks are
// summed so every rank can name the same culprits.
void check_same_on_all_ranks(Communicator& comm, uint64_t value, const std::string& what) {
  if (comm.world() == 1) return;
  uint64_t root_value = value;
  comm.broadcast_host(&root_value, sizeof root_value, 0);
  std::vector<double> differs(static_cast<size_t>(comm.world()), 0.0);
  differs[static_cast<size_t>(comm.rank())] = root_value != value ? 1.0 : 0.0;
  all_sum(comm, &differs);
  std::string ranks;
  for (size_t r = 0; r < differs.size(); ++r)
    if (differs[r] != 0) ranks += (ranks.empty() ? "" : ", ") + std::to_string(r);
  HH_CHECK(ranks.empty(), what, " of rank(s) ", ranks, " differ from rank 0's: start every rank ",
           "with the same flags and files");
}

std::string rank_label(const Communicator& comm) {
  return str_cat("rank ", comm.rank(), " of ", comm.world());
}

// ---- shared by the communicators ----

namespace dist_detail {

void wait_until(const std::function<bool()>& done, double timeout_s, const std::string& what) {
  using clock = std::chrono::steady_clock;
  const auto deadline = clock::now() + std::chrono::duration<double>(timeout_s);
  int polls = 0;
  while (!done()) {
    if (clock::now() > deadline)
      HH_FAIL("no reply from the other ranks within ", timeout_s, " s in ", what,
              ": a rank has died or stalled (--dist-timeout sets the limit)");
    // Spin briefly (collectives of small values finish in microseconds), then back off.
    if (++polls > 1000)
      std::this_thread::sleep_for(std::chrono::microseconds(std::min(polls - 1000, 1000)));
  }
}

}  // namespace dist_detail

}  // namespace hh
