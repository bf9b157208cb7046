// Row gather and deterministic row scatter-add (the scalar head; embedding_backward's
// token rows use the same scatter).
//
//   gather_rows:      out[m,:] = inp[rows[m],:]
//   scatter_add_rows: dinp[rows[m],:] += dout[m,:]
//
// Rows may repeat (the same token many times in a batch), so a plain parallel scatter
// would need atomics, whose summation order changes from run to run. Instead the
// positions are sorted by row with CUB's stable radix sort (on the device: the indices
// live there), and one block per distinct row adds that row's positions in increasing m,
// the same order as the CPU's sequential loop, so the result is deterministic and
// bitwise reproducible.
#include <cub/cub.cuh>

#include "common.cuh"
#include "cuda_ops.cuh"

namespace hh::cuda {
namespace {

__global__ void gather_rows_kernel(float* out, const float* inp, const int32_t* rows, int M,
                                   int C) {
  const size_t total = static_cast<size_t>(M) * C;
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < total;
       i += size_t(gridDim.x) * blockDim.x) {
    const size_t m = i / C, c = i % C;
    out[i] = inp[static_cast<size_t>(rows[m]) * C + c];
  }
}

__global__ void iota_kernel(int32_t* x, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) x[i] = i;
}

// Block i handles sorted position i if it starts a run of equal rows: it adds the run's
// source rows, in sorted (= increasing m, the sort is stable) order, to the destination.
__global__ void scatter_add_sorted_kernel(float* dst, const float* src, const int32_t* sorted_rows,
                                          const int32_t* sorted_pos, int M, int C) {
  const int i = blockIdx.x;
  const int row = sorted_rows[i];
  if (row < 0) return;  // a negative row means "nothing to add"
  if (i > 0 && sorted_rows[i - 1] == row) return;
  int run_end = i + 1;
  while (run_end < M && sorted_rows[run_end] == row) run_end++;
  float* d = dst + static_cast<size_t>(row) * C;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    float acc = d[c];
    for (int j = i; j < run_end; j++) acc += src[static_cast<size_t>(sorted_pos[j]) * C + c];
    d[c] = acc;
  }
}

}  // namespace

void gather_rows(Context& ctx, float* out, const float* inp, const int32_t* rows, int M, int C) {
  if (M <= 0 || C <= 0) return;
  const size_t total = static_cast<size_t>(M) * C;
  gather_rows_kernel<<<grid_for(total, 256, ctx), 256, 0, ctx.stream>>>(out, inp, rows, M, C);
  CUDA_CHECK_LAUNCH();
}

void scatter_add_rows(Context& ctx, float* dinp, const float* dout, const int32_t* rows, int M,
                      int C) {
  if (M <= 0 || C <= 0) return;
  // Scratch layout: sorted rows [M], positions [M], sorted positions [M], CUB temp.
  size_t cub_bytes = 0;
  CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
      nullptr, cub_bytes, rows, static_cast<int32_t*>(nullptr),
      static_cast<const int32_t*>(nullptr), static_cast<int32_t*>(nullptr), M, 0, 32, ctx.stream));
  const size_t ints = align256(sizeof(int32_t) * static_cast<size_t>(M));
  char* base = static_cast<char*>(ctx.scratch(3 * ints + align256(cub_bytes)));
  int32_t* sorted_rows = reinterpret_cast<int32_t*>(base);
  int32_t* positions = reinterpret_cast<int32_t*>(base + ints);
  int32_t* sorted_positions = reinterpret_cast<int32_t*>(base + 2 * ints);
  void* cub_temp = base + 3 * ints;

  iota_kernel<<<ceil_div(M, 256), 256, 0, ctx.stream>>>(positions, M);
  CUDA_CHECK_LAUNCH();
  CUDA_CHECK(cub::DeviceRadixSort::SortPairs(cub_temp, cub_bytes, rows, sorted_rows, positions,
                                             sorted_positions, M, 0, 32, ctx.stream));
  const int threads = C >= 256 ? 256 : ((C + 31) / 32) * 32;
  scatter_add_sorted_kernel<<<M, threads, 0, ctx.stream>>>(dinp, dout, sorted_rows,
                                                           sorted_positions, M, C);
  CUDA_CHECK_LAUNCH();
}

}  // namespace hh::cuda
