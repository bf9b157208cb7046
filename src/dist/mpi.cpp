// The MPI communicator: CPU ranks reduce host memory with MPI's non-blocking collectives,
// polled against a deadline (a blocking MPI call would wait forever for a dead rank).
#include "core/error.h"
#include "dist/dist_impl.h"

#ifdef HH_WITH_MPI
#include <mpi.h>

#include <algorithm>
#include <climits>
#include <vector>
#endif

namespace hh {

#ifdef HH_WITH_MPI

bool built_with_mpi() { return true; }

namespace dist_detail {

namespace {

#define MPI_CHECK(call)                                              \
  do {                                                               \
    int rc_ = (call);                                                \
    if (rc_ != MPI_SUCCESS) {                                        \
      char msg_[MPI_MAX_ERROR_STRING];                               \
      int len_ = 0;                                                  \
      MPI_Error_string(rc_, msg_, &len_);                            \
      HH_FAIL("MPI: ", #call, " failed: ", std::string(msg_, len_)); \
    }                                                                \
  } while (0)

// MPI_Finalize at exit when hh initialised MPI (an error exit aborts the job instead).
struct MpiSession {
  bool initialised_here = false;
  ~MpiSession() {
    int inited = 0, finalized = 0;
    MPI_Initialized(&inited);
    MPI_Finalized(&finalized);
    if (initialised_here && inited && !finalized) MPI_Finalize();
  }
};
MpiSession g_session;

// Waits for `req` with the communicator's deadline.
void wait_request(MPI_Request* req, double timeout_s, const char* what) {
  wait_until(
      [&] {
        int done = 0;
        MPI_CHECK(MPI_Test(req, &done, MPI_STATUS_IGNORE));
        return done != 0;
      },
      timeout_s, what);
}

// MPI counts are ints: large buffers go in chunks of at most 2^30 elements.
constexpr size_t kMaxCount = size_t{1} << 30;

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator(const DistEnv& env, double timeout_s)
      : Communicator(env.rank, env.world, env.local_rank, timeout_s) {}
  std::string name() const override { return "mpi"; }

  void all_reduce_host(double* x, size_t n, ReduceOp op) override {
    for (size_t i = 0; i < n; i += kMaxCount) {
      MPI_Request req;
      MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, x + i, static_cast<int>(std::min(kMaxCount, n - i)),
                               MPI_DOUBLE, op == ReduceOp::Sum ? MPI_SUM : MPI_MAX, MPI_COMM_WORLD,
                               &req));
      wait_request(&req, timeout_s_, "an all-reduce of statistics");
    }
  }
  void broadcast_host(void* data, size_t bytes, int root) override {
    mpi_broadcast_bytes(data, bytes, root, timeout_s_);
  }
  // The CPU backend's memory is host memory.
  void all_reduce_device(float* x, size_t n) override {
    for (size_t i = 0; i < n; i += kMaxCount) {
      MPI_Request req;
      MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, x + i, static_cast<int>(std::min(kMaxCount, n - i)),
                               MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, &req));
      wait_request(&req, timeout_s_, "the gradient all-reduce");
    }
  }
  void broadcast_device(float* x, size_t n, int root) override {
    mpi_broadcast_bytes(x, n * sizeof(float), root, timeout_s_);
  }
  // A non-blocking request per chunk; testing all of them at each new one lets MPI move
  // the earlier ones along (Open MPI progresses non-blocking collectives inside MPI calls).
  void all_reduce_device_async(float* x, size_t n) override {
    for (size_t i = 0; i < n; i += kMaxCount) {
      pending_.emplace_back();
      MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, x + i, static_cast<int>(std::min(kMaxCount, n - i)),
                               MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, &pending_.back()));
    }
    int done = 0;
    MPI_CHECK(MPI_Testall(static_cast<int>(pending_.size()), pending_.data(), &done,
                          MPI_STATUSES_IGNORE));
  }
  void wait_all() override {
    if (pending_.empty()) return;
    wait_until(
        [&] {
          int done = 0;
          MPI_CHECK(MPI_Testall(static_cast<int>(pending_.size()), pending_.data(), &done,
                                MPI_STATUSES_IGNORE));
          return done != 0;
        },
        timeout_s_, "the gradient all-reduce");
    pending_.clear();
  }
  bool overlaps() const override { return true; }

 private:
  std::vector<MPI_Request> pending_;
};

}  // namespace

void mpi_init_checked(const DistEnv& env) {
  int inited = 0;
  MPI_CHECK(MPI_Initialized(&inited));
  if (!inited) {
    int provided = 0;
    MPI_CHECK(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided));
    g_session.initialised_here = true;
  }
  int rank = 0, size = 1;
  MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
  MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &size));
  HH_CHECK(rank == env.rank && size == env.world, "MPI says this is rank ", rank, " of ", size,
           ", but the launcher's environment (", env.launcher, ") says rank ", env.rank, " of ",
           env.world, ": start CPU ranks with mpirun (RANK/WORLD_SIZE alone serve NCCL with ",
           "--nccl-id-file)");
}

void mpi_broadcast_bytes(void* data, size_t bytes, int root, double timeout_s) {
  auto* p = static_cast<char*>(data);
  for (size_t i = 0; i < bytes; i += kMaxCount) {
    MPI_Request req;
    MPI_CHECK(MPI_Ibcast(p + i, static_cast<int>(std::min(kMaxCount, bytes - i)), MPI_BYTE, root,
                         MPI_COMM_WORLD, &req));
    wait_request(&req, timeout_s, "a broadcast");
  }
}

void mpi_abort_job() {
  int inited = 0, finalized = 0;
  MPI_Initialized(&inited);
  MPI_Finalized(&finalized);
  if (inited && !finalized) MPI_Abort(MPI_COMM_WORLD, 1);
}

std::unique_ptr<Communicator> make_mpi_communicator(const DistEnv& env, double timeout_s) {
  mpi_init_checked(env);
  return std::make_unique<MpiCommunicator>(env, timeout_s);
}

}  // namespace dist_detail

#else  // no MPI

bool built_with_mpi() { return false; }

namespace dist_detail {
void mpi_init_checked(const DistEnv&) { HH_FAIL("this hh was built without MPI"); }
void mpi_broadcast_bytes(void*, size_t, int, double) { HH_FAIL("this hh was built without MPI"); }
void mpi_abort_job() {}
std::unique_ptr<Communicator> make_mpi_communicator(const DistEnv&, double) {
  HH_FAIL("this hh was built without MPI");
}
}  // namespace dist_detail

#endif

}  // namespace hh
