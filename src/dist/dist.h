// Data parallelism: one process per GPU (or per CPU rank), the same model on each, every
// rank training on its own shard of each batch and all of them applying the same summed
// gradient, so their parameters stay identical.
//
//   DistEnv env = detect_dist_env();          // rank, world, local rank from the launcher
//   auto backend = make_backend("cuda:" + std::to_string(env.local_rank));
//   auto comm = make_communicator("auto", *backend, env, options);
//   comm->all_reduce_device(grads, n);         // Σ over ranks, in place
//
// Communicators:
//   single  one process; every collective returns its input (what a plain run uses)
//   mpi     CPU ranks over MPI (Open MPI, MPICH); built when CMake finds MPI
//   nccl    GPU ranks over NCCL on the backend's stream; NCCL's unique id travels through
//           MPI when hh is built with it, else through a file on a shared path
//
// Every collective waits at most `timeout_s` for the other ranks. A rank that died or
// stalled makes the others fail with an error saying so, instead of hanging forever; the
// error handler of run_main then aborts the whole job (MPI_Abort), so no rank lingers.
// docs/distributed.md has the launch recipes and the design.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace hh {

class Backend;

// Where this process sits in the job, from the launcher's environment: Open MPI
// (OMPI_COMM_WORLD_*), MPICH / Intel MPI (PMI_RANK, PMI_SIZE, MPI_LOCALRANKID), Slurm's
// srun (SLURM_PROCID, SLURM_STEP_NUM_TASKS, SLURM_LOCALID) or torchrun-style
// RANK/WORLD_SIZE/LOCAL_RANK. Nothing set: rank 0 of 1.
struct DistEnv {
  int rank = 0, world = 1, local_rank = 0;
  std::string launcher = "none";  // "openmpi", "pmi", "slurm", "env", "none"
};
// Reads the variables through `getenv` (tests pass their own). Throws naming the variable
// when one is malformed or out of range (rank >= world, ...).
DistEnv detect_dist_env(const char* (*getenv)(const char*) = nullptr);

enum class ReduceOp { Sum, Max };

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual std::string name() const = 0;  // "single", "mpi", "nccl"
  int rank() const { return rank_; }
  int world() const { return world_; }
  int local_rank() const { return local_rank_; }
  bool is_root() const { return rank_ == 0; }

  // Host values (statistics, flags, hashes): reduced in place; every rank gets the result.
  virtual void all_reduce_host(double* x, size_t n, ReduceOp op) = 0;
  virtual void broadcast_host(void* data, size_t bytes, int root) = 0;
  // Buffers in the backend's memory (gradients, parameters). Sum in place.
  virtual void all_reduce_device(float* x, size_t n) = 0;
  virtual void broadcast_device(float* x, size_t n, int root) = 0;
  // Starts Σ over ranks of x[0, n) and returns; wait_all() completes every started one.
  // NCCL runs it on its own stream after the work already queued; MPI as a non-blocking
  // request that later calls drive. Either way the backward pass goes on while earlier
  // gradients travel. x must not be touched until wait_all().
  virtual void all_reduce_device_async(float* x, size_t n) { all_reduce_device(x, n); }
  virtual void wait_all() {}
  // True when all_reduce_device_async really overlaps (GradientSync then buckets by layer).
  virtual bool overlaps() const { return false; }

  double timeout_s() const { return timeout_s_; }

 protected:
  Communicator(int rank, int world, int local_rank, double timeout_s)
      : rank_(rank), world_(world), local_rank_(local_rank), timeout_s_(timeout_s) {}
  int rank_, world_, local_rank_;
  double timeout_s_;
};

struct CommOptions {
  double timeout_s = 600;    // longest wait in any collective
  std::string nccl_id_file;  // NCCL without MPI: rank 0 writes the id here, others read it
};

// kind: "auto" (single for one rank; nccl on a CUDA backend; mpi on the CPU), "single",
// "mpi" or "nccl". Errors name what is missing (an hh built without MPI or NCCL, a world
// size above 1 with "single", ...).
std::unique_ptr<Communicator> make_communicator(const std::string& kind, Backend& backend,
                                                const DistEnv& env, const CommOptions& options);
std::unique_ptr<Communicator> make_single_communicator();
// A communicator for plain single-process code paths (no ownership).
Communicator& single_communicator();
bool built_with_mpi();
bool built_with_nccl();

// ---- helpers over a communicator ----

// Σ over ranks of each value (in double).
void all_sum(Communicator& comm, std::vector<double>* values);
double all_sum(Communicator& comm, double value);
// True on every rank when `flag` is true on any rank.
bool any_rank(Communicator& comm, bool flag);
// Throws on every rank when `value` is not the same on all ranks; the message lists the
// ranks that differ from rank 0 and says what `what` is ("the flags", "the dataset").
void check_same_on_all_ranks(Communicator& comm, uint64_t value, const std::string& what);

// "rank 1 of 4": make_communicator hands it to run_main (set_run_main_rank) with MPI_Abort
// as the abort hook when the world is above 1, so errors name their rank and end the job.
std::string rank_label(const Communicator& comm);

}  // namespace hh
