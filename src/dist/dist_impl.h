// What the communicators share inside src/dist (not part of the public interface).
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "dist/dist.h"

namespace hh::dist_detail {

// Polls done() until it returns true, sleeping a little longer each time (up to 1 ms).
// Throws hh::Error when `timeout_s` passes first: `what` names the collective.
void wait_until(const std::function<bool()>& done, double timeout_s, const std::string& what);

// Communicators built only when their library is (mpi.cpp, nccl.cpp).
std::unique_ptr<Communicator> make_mpi_communicator(const DistEnv& env, double timeout_s);
std::unique_ptr<Communicator> make_nccl_communicator(Backend& backend, const DistEnv& env,
                                                     const CommOptions& options);
// MPI_Init once (thread level funneled), checking that MPI's rank and size agree with the
// launcher's environment. The NCCL communicator uses it to share its unique id.
void mpi_init_checked(const DistEnv& env);
// MPI_Bcast of raw bytes from `root`, bounded by the timeout.
void mpi_broadcast_bytes(void* data, size_t bytes, int root, double timeout_s);
// MPI_Abort(MPI_COMM_WORLD, 1) when MPI is initialised; nothing otherwise.
void mpi_abort_job();

}  // namespace hh::dist_detail
