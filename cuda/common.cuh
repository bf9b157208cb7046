// Shared pieces of the CUDA backend: error checks built on hh::Error, the per-backend
// context (stream, cuBLAS handles, scratch memory) that every op receives, and small
// device helpers (warp reductions, launch sizes).
//
// Every CUDA, cuBLAS and cuBLASLt call goes through CUDA_CHECK / CUBLAS_CHECK, so a
// failure throws hh::Error naming the call, the error and the source line.
#pragma once

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <utility>

#include "core/error.h"

#define CUDA_CHECK(call)                                                           \
  do {                                                                             \
    cudaError_t hh_cuda_err_ = (call);                                             \
    if (hh_cuda_err_ != cudaSuccess)                                               \
      HH_FAIL("CUDA error in ", #call, ": ", cudaGetErrorName(hh_cuda_err_), " (", \
              cudaGetErrorString(hh_cuda_err_), ")");                              \
  } while (0)

#define CUBLAS_CHECK(call)                                                               \
  do {                                                                                   \
    cublasStatus_t hh_cublas_st_ = (call);                                               \
    if (hh_cublas_st_ != CUBLAS_STATUS_SUCCESS)                                          \
      HH_FAIL("cuBLAS error in ", #call, ": ", cublasGetStatusName(hh_cublas_st_), " (", \
              cublasGetStatusString(hh_cublas_st_), ")");                                \
  } while (0)

// After every kernel launch: catches bad launch configurations immediately.
#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())

namespace hh::cuda {

// What every op needs: the backend's one stream (all work is ordered on it), the cuBLAS
// handles bound to that stream, and a grow-only scratch region for temporaries.
struct Context {
  int device = 0;
  cudaStream_t stream = nullptr;
  cublasHandle_t cublas = nullptr;
  cublasLtHandle_t cublaslt = nullptr;
  void* cublas_workspace = nullptr;  // given to cuBLAS and cuBLASLt (no hidden allocations)
  size_t cublas_workspace_bytes = 0;
  bool tf32 = true;          // HH_CUDA_TF32=0 turns TF32 tensor cores off (exact fp32 matmuls)
  bool use_lt = true;        // HH_CUDA_LT=0 turns the cuBLASLt bias-epilogue path off
  bool lt_tune = false;      // HH_CUDA_LT_TUNE=1: cuBLASLt plans time their candidates
  int flash = 0;             // HH_CUDA_FLASH=1: fused attention (attention_flash.cu); 2: on TF32
                             // tensor cores (attention_flash_tc.cu)
  int attn_heads = 0;        // HH_CUDA_ATTN_HEADS: heads per chunk in attention.cu (0: all)
  int attn_blocks = 0;       // HH_CUDA_ATTN_BLOCKS: causal row blocks in attention.cu (0: by T)
  bool fuse = true;          // HH_CUDA_FUSE=0: residual add and cross-entropy backward unfused
  bool fast_decode = true;   // HH_CUDA_FAST_DECODE=0: the plain decode attention and sampler
  bool pdl = false;          // HH_CUDA_PDL=1: launch() uses programmatic dependent launch
  bool kv_half = false;      // HH_CUDA_KV_HALF=1 (with TF32): the KV cache holds fp16
  bool skinny = false;       // HH_CUDA_SKINNY=1 (with TF32): few-row products in matmul.cu
  bool decode_fp16 = false;  // HH_CUDA_DECODE_FP16=1 (with TF32): ops.h's fp16 decode step
  int num_sms = 1;
  size_t max_shared_optin = 48 * 1024;  // shared memory a block may opt in to (bytes)

  // Scratch: one region, grown (never shrunk) through the backend's allocator so the
  // peak counts it. Ops run in order on one stream and each op uses scratch only while
  // it runs, so one region shared by all ops is safe; growing frees the old region
  // with cudaFree, which waits for the device first. After the first training step
  // every size has been seen and nothing allocates any more.
  std::function<void*(size_t)> alloc;
  std::function<void(void*)> free;
  void* scratch_ptr = nullptr;
  size_t scratch_bytes = 0;
  void* scratch(size_t bytes) {
    if (bytes > scratch_bytes) {
      if (scratch_ptr) free(scratch_ptr);
      scratch_ptr = nullptr;
      scratch_bytes = 0;
      scratch_ptr = alloc(bytes);
      scratch_bytes = bytes;
    }
    return scratch_ptr;
  }
};

// Programmatic dependent launch (Hopper, HH_CUDA_PDL=1): a kernel started with launch() may
// be scheduled while the kernel before it on the stream is still finishing, so its launch
// latency hides behind that kernel's tail (inside CUDA graphs too). Such a kernel must call
// wait_for_previous_kernel() before it touches memory: it returns once the previous kernel
// has completed and its writes are visible, so the order is the stream's. Without the
// attribute, or before sm_90, the wait is a no-op. It also lets the next kernel's blocks be
// scheduled now (launch_dependents): they only start their own wait, which still returns after this
// whole grid has completed, so nothing is reordered; the next kernel's launch overlaps this one's
// run instead of following its last block.
__device__ __forceinline__ void wait_for_previous_kernel() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// kernel<<<grid, block, shared_bytes, ctx.stream>>>(args...), with the programmatic
// stream-serialization attribute when ctx.pdl. For kernels that begin with
// wait_for_previous_kernel() only.
template <typename... Params, typename... Args>
void launch(const Context& ctx, void (*kernel)(Params...), dim3 grid, dim3 block,
            size_t shared_bytes, Args&&... args) {
  if (!ctx.pdl) {
    kernel<<<grid, block, shared_bytes, ctx.stream>>>(std::forward<Args>(args)...);
    CUDA_CHECK_LAUNCH();
    return;
  }
  cudaLaunchAttribute attribute;
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = shared_bytes;
  config.stream = ctx.stream;
  config.attrs = &attribute;
  config.numAttrs = 1;
  CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, static_cast<Params>(std::forward<Args>(args))...));
}

// Rounds a byte count up to 256 so pieces carved out of scratch stay aligned.
inline size_t align256(size_t bytes) { return (bytes + 255) & ~size_t(255); }

inline int ceil_div(size_t a, size_t b) { return static_cast<int>((a + b - 1) / b); }

// Blocks for a grid-stride loop over n elements with `threads` per block: enough to
// fill the GPU, capped so huge n just loops.
inline int grid_for(size_t n, int threads, const Context& ctx) {
  size_t blocks = (n + threads - 1) / threads;
  size_t cap = static_cast<size_t>(ctx.num_sms) * 32;
  if (blocks > cap) blocks = cap;
  if (blocks < 1) blocks = 1;
  return static_cast<int>(blocks);
}

// A value stored as float, or as fp16 rounded to nearest even (the fp16 KV cache and the fp16
// decode step); all arithmetic stays fp32.
__device__ __forceinline__ void store_value(float* p, float x) { *p = x; }
__device__ __forceinline__ void store_value(__half* p, float x) { *p = __float2half_rn(x); }

__device__ __forceinline__ float warp_sum(float x) {
  for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

__device__ __forceinline__ float warp_max(float x) {
  for (int offset = 16; offset > 0; offset >>= 1)
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, offset));
  return x;
}

// Sum over the whole block (blockDim.x a multiple of 32, at most 1024); every thread
// gets the result. `shared` holds 32 floats. Fixed order, so deterministic.
__device__ __forceinline__ float block_sum(float x, float* shared) {
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  const int num_warps = blockDim.x / 32;
  x = warp_sum(x);
  __syncthreads();  // shared may still be read by a previous call
  if (lane == 0) shared[warp] = x;
  __syncthreads();
  x = lane < num_warps ? shared[lane] : 0.0f;
  return warp_sum(x);
}

// Column sums, deterministic (no atomics): out[c] += Σ_n f(n, c) over n < N.
// Stage 1: the rows are cut into chunks of kColumnSumRows; one 32x8 block sums a chunk
// for 32 columns into partials[chunk][c] (fixed order). Stage 2 adds the chunks in order.
constexpr int kColumnSumRows = 64;

template <typename F>
__global__ void column_sum_partials_kernel(float* partials, F f, int N, int C) {
  __shared__ float tile[8][33];
  const int c = blockIdx.y * 32 + threadIdx.x;
  const int chunk = blockIdx.x;
  const int row_begin = chunk * kColumnSumRows;
  const int row_end = min(row_begin + kColumnSumRows, N);
  float acc = 0.0f;
  if (c < C)
    for (int n = row_begin + threadIdx.y; n < row_end; n += 8) acc += f(n, c);
  tile[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    float total = 0.0f;
    for (int y = 0; y < 8; y++) total += tile[y][threadIdx.x];
    partials[static_cast<size_t>(chunk) * C + c] = total;
  }
}

// Stage 2 (backend.cu): out[c] += Σ_chunk partials[chunk][c], chunks in order.
void column_sum_finish(Context& ctx, float* out, const float* partials, int chunks, int C);

// out[c] += Σ_n f(n, c); uses ctx scratch for the partials.
template <typename F>
void column_sum_add(Context& ctx, float* out, F f, int N, int C) {
  if (N <= 0 || C <= 0) return;
  const int chunks = ceil_div(N, kColumnSumRows);
  float* partials =
      static_cast<float*>(ctx.scratch(sizeof(float) * static_cast<size_t>(chunks) * C));
  dim3 grid(chunks, ceil_div(C, 32));  // chunks on x: no 65535 limit for large N
  dim3 block(32, 8);
  column_sum_partials_kernel<<<grid, block, 0, ctx.stream>>>(partials, f, N, C);
  CUDA_CHECK_LAUNCH();
  column_sum_finish(ctx, out, partials, chunks, C);
}

}  // namespace hh::cuda
