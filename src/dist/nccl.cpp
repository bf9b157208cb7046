// The NCCL communicator: GPU ranks reduce device memory with NCCL.
//
// Ordering: a synchronous collective is queued on the backend's stream, after the ops
// that produced its input, and before those that read its output. An asynchronous one
// (the gradient buckets of the backward pass) is queued on a second stream that first
// waits for an event recorded on the backend's stream, so the backward pass goes on
// while it travels; wait_all() makes the backend's stream wait for all of them.
//
// Deadlines: the communicator is non-blocking (ncclConfig_t::blocking = 0), and the host
// waits on CUDA events while polling ncclCommGetAsyncError, so a rank that died or stalled
// turns into an error (after ncclCommAbort) instead of a kernel that spins forever.
#include "core/error.h"
#include "dist/dist_impl.h"

#ifdef HH_WITH_NCCL
#include <cuda_runtime.h>
#include <nccl.h>

#include <cstdio>
#include <cstring>

#if NCCL_VERSION_CODE < NCCL_VERSION(2, 14, 0)
#error "hh needs NCCL >= 2.14 (non-blocking communicators, ncclCommFinalize)"
#endif

#include "core/fileio.h"
#include "ops/ops.h"
#endif

namespace hh {

#ifdef HH_WITH_NCCL

bool built_with_nccl() { return true; }

namespace dist_detail {

namespace {

#define NCCL_CUDA_CHECK(call)                                                          \
  do {                                                                                 \
    cudaError_t e_ = (call);                                                           \
    HH_CHECK(e_ == cudaSuccess, "CUDA: ", #call, " failed: ", cudaGetErrorString(e_)); \
  } while (0)

// The unique id through a file: rank 0 writes it (atomically), the others poll for it.
ncclUniqueId id_through_file(const std::string& path, const DistEnv& env, double timeout_s) {
  ncclUniqueId id;
  if (env.rank == 0) {
    HH_CHECK(ncclGetUniqueId(&id) == ncclSuccess, "NCCL: ncclGetUniqueId failed");
    const size_t slash = path.rfind('/');
    if (slash != std::string::npos && slash > 0) make_dirs(path.substr(0, slash));
    write_file_atomic(path, std::string(reinterpret_cast<const char*>(&id), sizeof id));
    return id;
  }
  wait_until([&] { return file_exists(path); }, timeout_s,
             str_cat("waiting for rank 0 to write the NCCL id file ", path));
  std::string bytes = read_file_text(path);
  HH_CHECK(bytes.size() == sizeof id, path, ": ", bytes.size(), " bytes, expected ", sizeof id,
           " (an NCCL unique id)");
  std::memcpy(&id, bytes.data(), sizeof id);
  return id;
}

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(Backend& backend, const DistEnv& env, const CommOptions& o)
      : Communicator(env.rank, env.world, env.local_rank, o.timeout_s), backend_(&backend) {
    stream_ = static_cast<cudaStream_t>(backend.native_stream());
    HH_CHECK(stream_ != nullptr, "NCCL: the backend has no CUDA stream");
    ncclUniqueId id;
    if (env.world == 1) {
      HH_CHECK(ncclGetUniqueId(&id) == ncclSuccess, "NCCL: ncclGetUniqueId failed");
    } else if (!o.nccl_id_file.empty()) {
      id = id_through_file(o.nccl_id_file, env, o.timeout_s);
    } else if (built_with_mpi()) {
      mpi_init_checked(env);
      if (env.rank == 0)
        HH_CHECK(ncclGetUniqueId(&id) == ncclSuccess, "NCCL: ncclGetUniqueId failed");
      mpi_broadcast_bytes(&id, sizeof id, 0, o.timeout_s);
    } else {
      HH_FAIL("NCCL with ", env.world, " ranks needs its unique id shared: pass --nccl-id-file ",
              "on a filesystem every rank sees, or build hh with MPI and launch with mpirun");
    }
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    ncclResult_t rc = ncclCommInitRankConfig(&comm_, env.world, id, env.rank, &config);
    if (rc != ncclSuccess && rc != ncclInProgress) fail("ncclCommInitRankConfig", rc);
    try {
      settle("joining the NCCL communicator");
    } catch (...) {
      abort_comm();  // the destructor will not run: stop NCCL's init here
      throw;
    }
    // Every rank has joined, so every rank has read the id: a later job must not find it.
    if (env.rank == 0 && !o.nccl_id_file.empty() && env.world > 1)
      std::remove(o.nccl_id_file.c_str());
    NCCL_CUDA_CHECK(cudaStreamCreateWithFlags(&comm_stream_, cudaStreamNonBlocking));
    NCCL_CUDA_CHECK(cudaEventCreateWithFlags(&ready_, cudaEventDisableTiming));
    NCCL_CUDA_CHECK(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming));
  }

  ~NcclCommunicator() override {
    if (comm_) {
      // Finalize flushes outstanding work and waits for the other ranks' finalize (within
      // the timeout); a communicator with work pending, in error, or whose finalize does
      // not settle is aborted instead, so an exiting rank never blocks on a missing one.
      ncclResult_t async = ncclSuccess;
      ncclCommGetAsyncError(comm_, &async);
      bool clean = async == ncclSuccess && !pending_;
      if (clean) {
        ncclResult_t rc = ncclCommFinalize(comm_);
        clean = rc == ncclSuccess || rc == ncclInProgress;
        try {
          if (clean)
            wait_until(
                [&] {
                  ncclCommGetAsyncError(comm_, &async);
                  return async != ncclInProgress;
                },
                timeout_s_, "finalizing the NCCL communicator");
        } catch (...) {
          clean = false;
        }
        clean = clean && async == ncclSuccess;
      }
      if (clean)
        ncclCommDestroy(comm_);
      else
        ncclCommAbort(comm_);
    }
    if (ready_) cudaEventDestroy(ready_);
    if (done_) cudaEventDestroy(done_);
    if (comm_stream_) cudaStreamDestroy(comm_stream_);
    if (scratch_) backend_->free_bytes(scratch_);
  }

  std::string name() const override { return "nccl"; }
  bool overlaps() const override { return true; }

  // Every entry point first: after an abort (a timeout or an error) the communicator is gone.
  void check_usable() const {
    HH_CHECK(comm_ != nullptr, "NCCL: the communicator was aborted after an earlier error");
  }

  void all_reduce_host(double* x, size_t n, ReduceOp op) override {
    check_usable();
    double* d = scratch<double>(n * sizeof(double));
    NCCL_CUDA_CHECK(cudaMemcpyAsync(d, x, n * sizeof(double), cudaMemcpyHostToDevice, stream_));
    enqueue(
        ncclAllReduce(d, d, n, ncclDouble, op == ReduceOp::Sum ? ncclSum : ncclMax, comm_, stream_),
        "ncclAllReduce");
    finish_on(stream_, "an all-reduce of statistics");
    NCCL_CUDA_CHECK(cudaMemcpy(x, d, n * sizeof(double), cudaMemcpyDeviceToHost));
  }
  void broadcast_host(void* data, size_t bytes, int root) override {
    check_usable();
    void* d = scratch(bytes);
    NCCL_CUDA_CHECK(cudaMemcpyAsync(d, data, bytes, cudaMemcpyHostToDevice, stream_));
    enqueue(ncclBroadcast(d, d, bytes, ncclUint8, root, comm_, stream_), "ncclBroadcast");
    finish_on(stream_, "a broadcast");
    NCCL_CUDA_CHECK(cudaMemcpy(data, d, bytes, cudaMemcpyDeviceToHost));
  }
  void all_reduce_device(float* x, size_t n) override {
    check_usable();
    enqueue(ncclAllReduce(x, x, n, ncclFloat, ncclSum, comm_, stream_), "ncclAllReduce");
    finish_on(stream_, "the gradient all-reduce");
  }
  void broadcast_device(float* x, size_t n, int root) override {
    check_usable();
    enqueue(ncclBroadcast(x, x, n, ncclFloat, root, comm_, stream_), "ncclBroadcast");
    finish_on(stream_, "a broadcast of parameters");
  }
  void all_reduce_device_async(float* x, size_t n) override {
    check_usable();
    NCCL_CUDA_CHECK(cudaEventRecord(ready_, stream_));
    NCCL_CUDA_CHECK(cudaStreamWaitEvent(comm_stream_, ready_, 0));
    enqueue(ncclAllReduce(x, x, n, ncclFloat, ncclSum, comm_, comm_stream_), "ncclAllReduce");
    pending_ = true;
  }
  void wait_all() override {
    if (!pending_) return;
    finish_on(comm_stream_, "the gradient all-reduce");
    NCCL_CUDA_CHECK(cudaStreamWaitEvent(stream_, done_, 0));
    pending_ = false;
  }

 private:
  // A non-blocking communicator may answer ncclInProgress; it must settle before the next
  // call. An error aborts the communicator.
  void settle(const std::string& what) {
    wait_until(
        [&] {
          ncclResult_t async = ncclSuccess;
          ncclResult_t rc = ncclCommGetAsyncError(comm_, &async);
          if (rc != ncclSuccess) async = rc;
          if (async == ncclInProgress) return false;
          if (async != ncclSuccess) fail(what, async);
          return true;
        },
        timeout_s_, what);
  }
  void enqueue(ncclResult_t rc, const char* call) {
    if (rc != ncclSuccess && rc != ncclInProgress) fail(call, rc);
    settle(call);
  }
  // Waits for everything queued on `s` so far, polling NCCL for errors; on timeout the
  // communicator is aborted so the GPU stops waiting for the missing rank.
  void finish_on(cudaStream_t s, const std::string& what) {
    NCCL_CUDA_CHECK(cudaEventRecord(done_, s));
    try {
      wait_until(
          [&] {
            cudaError_t e = cudaEventQuery(done_);
            if (e == cudaSuccess) return true;
            HH_CHECK(e == cudaErrorNotReady, "CUDA error while waiting for ", what, ": ",
                     cudaGetErrorString(e));
            ncclResult_t async = ncclSuccess;
            ncclCommGetAsyncError(comm_, &async);
            if (async != ncclSuccess && async != ncclInProgress) fail(what, async);
            return false;
          },
          timeout_s_, what);
    } catch (...) {
      abort_comm();
      throw;
    }
  }
  [[noreturn]] void fail(const std::string& what, ncclResult_t rc) {
    std::string detail = ncclGetErrorString(rc);
    if (comm_) detail += str_cat(" (", ncclGetLastError(comm_), ")");
    abort_comm();
    HH_FAIL("NCCL: ", what, " failed: ", detail);
  }
  void abort_comm() {
    if (comm_) ncclCommAbort(comm_);
    comm_ = nullptr;
  }
  template <typename T = void>
  T* scratch(size_t bytes) {
    if (bytes > scratch_bytes_) {
      if (scratch_) backend_->free_bytes(scratch_);
      scratch_ = backend_->alloc_bytes(bytes);
      scratch_bytes_ = bytes;
    }
    return static_cast<T*>(scratch_);
  }

  Backend* backend_;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr, comm_stream_ = nullptr;
  cudaEvent_t ready_ = nullptr, done_ = nullptr;
  bool pending_ = false;
  void* scratch_ = nullptr;
  size_t scratch_bytes_ = 0;
};

}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator(Backend& backend, const DistEnv& env,
                                                     const CommOptions& options) {
  return std::make_unique<NcclCommunicator>(backend, env, options);
}

}  // namespace dist_detail

#else  // no NCCL

bool built_with_nccl() { return false; }

namespace dist_detail {
std::unique_ptr<Communicator> make_nccl_communicator(Backend&, const DistEnv&, const CommOptions&) {
  HH_FAIL("this hh was built without NCCL");
}
}  // namespace dist_detail

#endif

}  // namespace hh
