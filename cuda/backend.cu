// CudaBackend: hh::Backend on one GPU. One stream per backend; cuBLAS and cuBLASLt bound
// to it with a fixed workspace we allocate (so cuBLAS never allocates inside a step);
// memory through plain cudaMalloc (never managed memory) with a byte count per pointer
// for the peak; the ops themselves live in one .cu per op family (cuda_ops.cuh).
//
// Environment switches, read when the backend is made:
//   HH_CUDA_TF32=0  exact fp32 matmuls (default 1: TF32 tensor cores)
//   HH_CUDA_LT=0    plain cublasSgemm + bias kernel instead of the cuBLASLt bias epilogue
//   HH_CUDA_LT_TUNE=1 cuBLASLt plans time the heuristic's candidates and keep the fastest;
//                   forward products without a bias take cuBLASLt too (matmul.cu)
//   HH_CUDA_FLASH=1 fused flash-style attention (no tensor cores; the default runs the
//                   attention products through cuBLAS; both save only the log-sum-exp)
//   HH_CUDA_FLASH=2 fused flash attention on TF32 tensor cores (attention_flash_tc.cu;
//                   head sizes 16, 32, 48, 64 with TF32 on; else the cuBLAS path)
//   HH_CUDA_ATTN_HEADS=n  heads per cuBLAS attention call (default: all heads of a sequence)
//   HH_CUDA_ATTN_BLOCKS=r causal row blocks: block i's products skip the keys past its
//                   last row (r = 2: 3/4 of the work). Default: min(2, T/512), from the
//                   H100 timings in attention.cu's row_block_count
//   HH_CUDA_GRAPHS=0 no CUDA graphs (default 1: Backend::graph_* capture the stream's work
//                   and replay it with one launch; generation's decode step uses them)
//   HH_CUDA_FUSE=0  unfused: the residual add after the projections' GEMMs (default: in
//                   their cuBLASLt epilogue, matmul.cu) and the cross-entropy backward's
//                   two passes over the logits (default: the row staged in shared memory)
//   HH_CUDA_KERNEL_TIMES=N per-kernel GPU time through CUPTI (kernel_times.cu): the N
//                   kernels with the most time, printed to stderr when the backend goes
//   HH_CUDA_FAST_DECODE=0 the thread-per-key attention_decode and the plain Gumbel
//                   sampler (default: warp-parallel attention_decode, pruned sampler)
//   HH_CUDA_KV_HALF=1 with TF32 on: the KV cache stores fp16 (half the bytes attention_decode
//                   reads per step; decode.cu)
//   HH_CUDA_SKINNY=1 products of 16..64 rows (decode steps) on our TF32 tensor-core kernel
//                   instead of cuBLAS, where the shape fits (matmul.cu)
//   HH_CUDA_DECODE_FP16=1 with TF32 on: generation's decode step reads fp16 copies of the
//                   weights and feeds the matmuls fp16 activations (ops.h: decode_fp16)
//   HH_CUDA_PDL=1   programmatic dependent launch (sm_90+) for the kernels of a decode step
//                   that are ours (LayerNorm, GELU, embedding, attention_decode, sampler;
//                   common.cuh's launch())
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <unordered_map>

#include "common.cuh"
#include "core/metrics.h"
#include "cuda_ops.cuh"
#include "ops/ops.h"

namespace hh {
namespace cuda {

// out[c] += Σ_chunk partials[chunk][c], summed in chunk order (deterministic).
__global__ void column_sum_finish_kernel(float* out, const float* partials, int chunks, int C) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  float total = 0.0f;
  for (int r = 0; r < chunks; r++) total += partials[static_cast<size_t>(r) * C + c];
  out[c] += total;
}

void column_sum_finish(Context& ctx, float* out, const float* partials, int chunks, int C) {
  column_sum_finish_kernel<<<ceil_div(C, 256), 256, 0, ctx.stream>>>(out, partials, chunks, C);
  CUDA_CHECK_LAUNCH();
}

namespace {

bool env_flag(const char* name, bool default_value) {
  const char* s = std::getenv(name);
  if (!s || !*s) return default_value;
  return !(std::strcmp(s, "0") == 0 || std::strcmp(s, "false") == 0 || std::strcmp(s, "off") == 0);
}

constexpr size_t kCublasWorkspaceBytes = size_t(32) << 20;  // 32 MiB, Hopper's recommendation

}  // namespace

class CudaBackend : public Backend {
 public:
  explicit CudaBackend(int device_index) {
    int count = 0;
    // No GPU (or no driver) is the user's situation, not a CUDA failure: say so plainly.
    const cudaError_t found = cudaGetDeviceCount(&count);
    if (found != cudaSuccess) cudaGetLastError();
    HH_CHECK(found == cudaSuccess && count > 0,
             "--device cuda: no usable CUDA GPU on this machine (",
             found == cudaSuccess ? "none found" : cudaGetErrorString(found),
             "); use --device cpu, or auto");
    HH_CHECK(device_index >= 0 && device_index < count, "cuda: device index ", device_index,
             " out of range: this machine has ", count, " CUDA device(s)");
    ctx_.device = device_index;
    CUDA_CHECK(cudaSetDevice(device_index));
    cudaDeviceProp prop;
    CUDA_CHECK(cudaGetDeviceProperties(&prop, device_index));
    name_ = str_cat("cuda:", device_index, " (", prop.name, ")");
    ctx_.num_sms = prop.multiProcessorCount;
    ctx_.max_shared_optin = prop.sharedMemPerBlockOptin;
    ctx_.tf32 = env_flag("HH_CUDA_TF32", true);
    ctx_.use_lt = env_flag("HH_CUDA_LT", true);
    ctx_.lt_tune = env_flag("HH_CUDA_LT_TUNE", false);
    // HH_CUDA_FLASH: "2" selects the tensor-core kernels; any other value reads as before
    // (a true flag: 1, the CUDA-core kernels; 0/false/off: the cuBLAS path).
    if (const char* flash = std::getenv("HH_CUDA_FLASH"); flash && std::strcmp(flash, "2") == 0)
      ctx_.flash = 2;
    else
      ctx_.flash = env_flag("HH_CUDA_FLASH", false) ? 1 : 0;
    if (const char* heads = std::getenv("HH_CUDA_ATTN_HEADS")) ctx_.attn_heads = std::atoi(heads);
    if (const char* blocks = std::getenv("HH_CUDA_ATTN_BLOCKS"))
      ctx_.attn_blocks = std::atoi(blocks);
    ctx_.fuse = env_flag("HH_CUDA_FUSE", true);
    ctx_.fast_decode = env_flag("HH_CUDA_FAST_DECODE", true);
    ctx_.pdl = env_flag("HH_CUDA_PDL", false) && prop.major >= 9;
    ctx_.kv_half = env_flag("HH_CUDA_KV_HALF", false) && ctx_.tf32;
    ctx_.skinny = env_flag("HH_CUDA_SKINNY", false) && prop.major >= 8;
    ctx_.decode_fp16 = env_flag("HH_CUDA_DECODE_FP16", false) && ctx_.tf32;
    graphs_ = env_flag("HH_CUDA_GRAPHS", true);
    if (const char* top = std::getenv("HH_CUDA_KERNEL_TIMES"); top && std::atoi(top) > 0) {
      const std::string why_not = kernel_times_start();
      if (why_not.empty())
        kernel_times_top_ = static_cast<size_t>(std::atoi(top));
      else
        std::fprintf(stderr, "%s\n", why_not.c_str());
    }
    ctx_.alloc = [this](size_t bytes) { return alloc_bytes(bytes); };
    ctx_.free = [this](void* p) { free_bytes(p); };

    CUDA_CHECK(cudaStreamCreateWithFlags(&ctx_.stream, cudaStreamNonBlocking));
    CUBLAS_CHECK(cublasCreate(&ctx_.cublas));
    CUBLAS_CHECK(cublasSetStream(ctx_.cublas, ctx_.stream));
    CUBLAS_CHECK(cublasSetMathMode(ctx_.cublas,
                                   ctx_.tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
    ctx_.cublas_workspace = alloc_bytes(kCublasWorkspaceBytes);
    ctx_.cublas_workspace_bytes = kCublasWorkspaceBytes;
    CUBLAS_CHECK(cublasSetWorkspace(ctx_.cublas, ctx_.cublas_workspace, kCublasWorkspaceBytes));
    CUBLAS_CHECK(cublasLtCreate(&ctx_.cublaslt));
  }

  ~CudaBackend() override {
    // Destructors must not throw: errors here are ignored (the process is ending or the
    // device is already in an error state that an earlier call reported).
    if (capturing_) {  // an exception left a capture open: close it, drop what it recorded
      cudaGraph_t graph = nullptr;
      if (cudaStreamEndCapture(ctx_.stream, &graph) == cudaSuccess && graph)
        cudaGraphDestroy(graph);
    }
    cudaStreamSynchronize(ctx_.stream);
    if (kernel_times_top_) {
      try {
        std::fprintf(stderr, "%s: %s", name_.c_str(),
                     kernel_times_report(kernel_times_top_).c_str());
      } catch (...) {
      }
    }
    if (ctx_.cublaslt) cublasLtDestroy(ctx_.cublaslt);
    if (ctx_.cublas) cublasDestroy(ctx_.cublas);
    if (staging_) cudaFreeHost(staging_);
    if (copy_done_) cudaEventDestroy(copy_done_);
    for (UploadSlot& slot : upload_slots_) {
      if (slot.host) cudaFreeHost(slot.host);
      if (slot.read) cudaEventDestroy(slot.read);
    }
    if (ctx_.scratch_ptr) cudaFree(ctx_.scratch_ptr);
    if (ctx_.cublas_workspace) cudaFree(ctx_.cublas_workspace);
    if (ctx_.stream) cudaStreamDestroy(ctx_.stream);
  }

  DeviceKind kind() const override { return DeviceKind::CUDA; }
  std::string name() const override { return name_; }

  // ---- memory ----
  void* alloc_bytes(size_t bytes) override {
    if (bytes == 0) return nullptr;
    HH_CHECK(!capturing_, name_, ": alloc of ", bytes,
             " bytes during a graph capture (run the ops once uncaptured first)");
    void* p = nullptr;
    cudaError_t err = cudaMalloc(&p, bytes);
    if (err != cudaSuccess) {
      cudaGetLastError();  // clear the sticky-free error so later calls work
      size_t free_bytes = 0, total_bytes = 0;
      cudaMemGetInfo(&free_bytes, &total_bytes);
      HH_FAIL(name_, ": out of memory: asked for ", bytes, " bytes (", format_gib(bytes), "), ",
              free_bytes, " bytes (", format_gib(free_bytes), ") free of ", total_bytes, " (",
              format_gib(total_bytes), "); this backend holds ", current_bytes_, " bytes (",
              cudaGetErrorString(err), ")");
    }
    sizes_[p] = bytes;
    current_bytes_ += bytes;
    if (current_bytes_ > peak_bytes_) peak_bytes_ = current_bytes_;
    return p;
  }

  void free_bytes(void* p) override {
    if (!p) return;
    auto it = sizes_.find(p);
    HH_CHECK(it != sizes_.end(), name_, ": free_bytes of a pointer this backend did not allocate");
    HH_CHECK(!capturing_, name_, ": free_bytes during a graph capture");
    free_epoch_++;  // graphs captured before may point at p: graph_launch refuses them
    current_bytes_ -= it->second;
    sizes_.erase(it);
    CUDA_CHECK(cudaFree(p));  // waits for the device, so no kernel still uses p
  }

  // Ordered on our stream; the caller may reuse host_src at once. From pageable memory
  // the driver "may synchronize with the stream" to stage the bytes (CUDA's API sync
  // behavior notes), which would stall generation's run-ahead on every step's small
  // upload. So uploads up to kUploadSlotBytes are copied into a slot of a pinned ring
  // first, and the DMA reads the slot; a slot is reused once its last DMA is done.
  void copy_to_device(void* dst, const void* host_src, size_t bytes) override {
    if (bytes == 0) return;
    HH_CHECK(!capturing_, name_, ": copy_to_device during a graph capture");
    if (bytes > kUploadSlotBytes) {
      CUDA_CHECK(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, ctx_.stream));
      return;
    }
    UploadSlot& slot = upload_slots_[next_upload_slot_];
    next_upload_slot_ = (next_upload_slot_ + 1) % kUploadSlots;
    if (!slot.host) {
      CUDA_CHECK(cudaMallocHost(&slot.host, kUploadSlotBytes));
      CUDA_CHECK(cudaEventCreateWithFlags(&slot.read, cudaEventDisableTiming));
    } else {
      CUDA_CHECK(cudaEventSynchronize(slot.read));  // its last DMA has read it
    }
    std::memcpy(slot.host, host_src, bytes);
    CUDA_CHECK(cudaMemcpyAsync(dst, slot.host, bytes, cudaMemcpyHostToDevice, ctx_.stream));
    CUDA_CHECK(cudaEventRecord(slot.read, ctx_.stream));
  }
  void copy_to_host(void* host_dst, const void* src, size_t bytes) override {
    if (bytes == 0) return;
    HH_CHECK(!capturing_, name_, ": copy_to_host during a graph capture");
    CUDA_CHECK(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, ctx_.stream));
    CUDA_CHECK(cudaStreamSynchronize(ctx_.stream));
  }
  // Through a pinned staging buffer (a copy to pageable memory would block the host until
  // the stream got there); an event marks when the staging holds the bytes.
  void copy_to_host_async(void* host_dst, const void* src, size_t bytes) override {
    HH_CHECK(!capturing_, name_, ": copy_to_host_async during a graph capture");
    HH_CHECK(!async_dst_, name_, ": copy_to_host_async while another one is pending");
    if (bytes == 0) return;
    if (bytes > staging_bytes_) {
      if (staging_) CUDA_CHECK(cudaFreeHost(staging_));
      staging_ = nullptr;
      staging_bytes_ = 0;
      CUDA_CHECK(cudaMallocHost(&staging_, bytes));
      staging_bytes_ = bytes;
    }
    if (!copy_done_) CUDA_CHECK(cudaEventCreateWithFlags(&copy_done_, cudaEventDisableTiming));
    CUDA_CHECK(cudaMemcpyAsync(staging_, src, bytes, cudaMemcpyDeviceToHost, ctx_.stream));
    CUDA_CHECK(cudaEventRecord(copy_done_, ctx_.stream));
    async_dst_ = host_dst;
    async_bytes_ = bytes;
  }
  void wait_host_copy() override {
    if (!async_dst_) return;
    void* dst = async_dst_;
    async_dst_ = nullptr;
    CUDA_CHECK(cudaEventSynchronize(copy_done_));
    std::memcpy(dst, staging_, async_bytes_);
  }
  void copy_on_device(void* dst, const void* src, size_t bytes) override {
    if (bytes == 0 || dst == src) return;
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, ctx_.stream));
  }
  void fill_zero(void* p, size_t bytes) override {
    if (bytes == 0) return;
    CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, ctx_.stream));
  }
  void synchronize() override { CUDA_CHECK(cudaStreamSynchronize(ctx_.stream)); }
  void* native_stream() override { return ctx_.stream; }

  // ---- graphs (see ops.h): stream capture on our stream, one executable graph each ----
  bool graphs_enabled() const override { return graphs_; }
  void graph_begin_capture() override {
    HH_CHECK(graphs_, name_, ": graph capture with graphs off (HH_CUDA_GRAPHS=0)");
    HH_CHECK(!capturing_, name_, ": graph capture already in progress");
    // Thread-local mode: an unsafe call (cudaMalloc, a synchronising copy) on this thread
    // fails the capture instead of silently leaving the graph.
    CUDA_CHECK(cudaStreamBeginCapture(ctx_.stream, cudaStreamCaptureModeThreadLocal));
    capturing_ = true;
  }
  void* graph_end_capture() override {
    HH_CHECK(capturing_, name_, ": graph_end_capture without graph_begin_capture");
    capturing_ = false;
    cudaGraph_t graph = nullptr;
    CUDA_CHECK(cudaStreamEndCapture(ctx_.stream, &graph));
    cudaGraphExec_t exec = nullptr;
    const cudaError_t instantiated = cudaGraphInstantiate(&exec, graph, 0);
    CUDA_CHECK(cudaGraphDestroy(graph));  // the executable graph is independent of it
    CUDA_CHECK(instantiated);
    return new CapturedGraph{exec, free_epoch_};
  }
  bool graph_launch(void* graph) override {
    const CapturedGraph* g = static_cast<const CapturedGraph*>(graph);
    HH_CHECK(g, name_, ": graph_launch of a null graph");
    HH_CHECK(!capturing_, name_, ": graph_launch during a graph capture");
    if (g->free_epoch != free_epoch_) return false;  // memory was freed since its capture
    CUDA_CHECK(cudaGraphLaunch(g->exec, ctx_.stream));
    return true;
  }
  void graph_destroy(void* graph) override {
    std::unique_ptr<CapturedGraph> g(static_cast<CapturedGraph*>(graph));
    if (g) CUDA_CHECK(cudaGraphExecDestroy(g->exec));
  }
  size_t peak_bytes() const override { return peak_bytes_; }
  size_t available_bytes() const override {
    size_t free_bytes = 0, total_bytes = 0;
    CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
    return free_bytes;
  }

  // ---- ops: forward to cuda/<op>.cu ----
  void embedding_forward(float* out, const int32_t* tokens, const float* wte, const float* wpe,
                         int B, int T, int C) override {
    cuda::embedding_forward(ctx_, out, tokens, wte, wpe, B, T, C);
  }
  void embedding_backward(float* dwte, float* dwpe, const float* dout, const int32_t* tokens, int B,
                          int T, int C) override {
    cuda::embedding_backward(ctx_, dwte, dwpe, dout, tokens, B, T, C);
  }
  void layernorm_forward(float* out, float* mean, float* rstd, const float* inp,
                         const float* weight, const float* bias, int N, int C) override {
    cuda::layernorm_forward(ctx_, out, mean, rstd, inp, weight, bias, N, C);
  }
  void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                          const float* inp, const float* weight, const float* mean,
                          const float* rstd, int N, int C) override {
    cuda::layernorm_backward(ctx_, dinp, dweight, dbias, dout, inp, weight, mean, rstd, N, C);
  }
  void matmul_forward(float* out, const float* inp, const float* weight, const float* bias, int N,
                      int IC, int OC) override {
    cuda::matmul_forward(ctx_, out, inp, weight, bias, N, IC, OC);
  }
  void matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                       const float* inp, const float* weight, int N, int IC, int OC) override {
    cuda::matmul_backward(ctx_, dinp, dweight, dbias, dout, inp, weight, N, IC, OC);
  }
  void matmul_residual_forward(float* out, const float* inp, const float* weight, const float* bias,
                               const float* residual, int N, int IC, int OC) override {
    cuda::matmul_residual_forward(ctx_, out, inp, weight, bias, residual, N, IC, OC);
  }
  size_t attention_saved_floats(int B, int T, int NH) const override {
    return cuda::attention_saved_floats(ctx_, B, T, NH);
  }
  void attention_forward(float* out, float* saved, const float* qkv, const int32_t* lengths, int B,
                         int T, int C, int NH) override {
    cuda::attention_forward(ctx_, out, saved, qkv, lengths, B, T, C, NH);
  }
  void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* out,
                          const float* saved, const int32_t* lengths, int B, int T, int C,
                          int NH) override {
    cuda::attention_backward(ctx_, dqkv, dout, qkv, out, saved, lengths, B, T, C, NH);
  }
  void gelu_forward(float* out, const float* inp, size_t n) override {
    cuda::gelu_forward(ctx_, out, inp, n);
  }
  void gelu_backward(float* dinp, const float* inp, const float* dout, size_t n) override {
    cuda::gelu_backward(ctx_, dinp, inp, dout, n);
  }
  void residual_forward(float* out, const float* a, const float* b, size_t n) override {
    cuda::residual_forward(ctx_, out, a, b, n);
  }
  void crossentropy_forward(float* losses, const float* logits, const int32_t* targets, int N,
                            int V, int Vp) override {
    cuda::crossentropy_forward(ctx_, losses, logits, targets, N, V, Vp);
  }
  void crossentropy_backward(float* dlogits, const float* logits, const int32_t* targets,
                             const float* dlosses, int N, int V, int Vp) override {
    cuda::crossentropy_backward(ctx_, dlogits, logits, targets, dlosses, N, V, Vp);
  }
  void softmax_entropy(float* entropy, const float* logits, const int32_t* targets, int N, int V,
                       int Vp) override {
    cuda::softmax_entropy(ctx_, entropy, logits, targets, N, V, Vp);
  }
  void gather_rows(float* out, const float* inp, const int32_t* rows, int M, int C) override {
    cuda::gather_rows(ctx_, out, inp, rows, M, C);
  }
  void scatter_add_rows(float* dinp, const float* dout, const int32_t* rows, int M,
                        int C) override {
    cuda::scatter_add_rows(ctx_, dinp, dout, rows, M, C);
  }
  void embedding_forward_at(float* out, const int32_t* tokens, const int32_t* positions,
                            const float* wte, const float* wpe, int M, int C) override {
    cuda::embedding_forward_at(ctx_, out, tokens, positions, wte, wpe, M, C);
  }
  size_t kv_value_bytes() const override { return ctx_.kv_half ? 2 : sizeof(float); }
  void kv_cache_write(void* kcache, void* vcache, const float* qkv, const int32_t* slots,
                      const int32_t* positions, int M, int max_len, int C) override {
    cuda::kv_cache_write(ctx_, kcache, vcache, qkv, slots, positions, M, max_len, C);
  }
  void attention_decode(float* out, const float* qkv, void* kcache, void* vcache,
                        const int32_t* slots, const int32_t* positions, int M, int max_len, int C,
                        int NH) override {
    cuda::attention_decode(ctx_, out, qkv, kcache, vcache, slots, positions, M, max_len, C, NH);
  }
  void sample_rows(int32_t* tokens, float* logprobs, const float* logits, const uint64_t* seeds,
                   float temperature, int M, int V, int Vp) override {
    cuda::sample_rows(ctx_, tokens, logprobs, logits, seeds, temperature, M, V, Vp);
  }
  bool decode_fp16() const override { return ctx_.decode_fp16; }
  void to_half(void* dst, const float* src, size_t n) override { cuda::to_half(ctx_, dst, src, n); }
  void layernorm_forward_half(void* out, const float* inp, const float* weight, const float* bias,
                              int N, int C) override {
    cuda::layernorm_forward_half(ctx_, out, inp, weight, bias, N, C);
  }
  void attention_decode_half(void* out, const float* qkv, void* kcache, void* vcache,
                             const int32_t* slots, const int32_t* positions, int M, int max_len,
                             int C, int NH) override {
    cuda::attention_decode_half(ctx_, out, qkv, kcache, vcache, slots, positions, M, max_len, C,
                                NH);
  }
  void matmul_forward_half(float* out, const void* inp, const void* weight, const float* bias,
                           const float* residual, int N, int IC, int OC) override {
    cuda::matmul_forward_half(ctx_, out, inp, weight, bias, residual, N, IC, OC);
  }
  void matmul_gelu_forward_half(void* out, const void* inp, const void* weight, const void* bias,
                                int N, int IC, int OC) override {
    cuda::matmul_gelu_forward_half(ctx_, out, inp, weight, bias, N, IC, OC);
  }
  void adamw_update(float* params, const float* grads, float* m, float* v, size_t n,
                    const AdamWParams& hp) override {
    cuda::adamw_update(ctx_, params, grads, m, v, n, hp);
  }
  double sum_squares(const float* x, size_t n) override { return cuda::sum_squares(ctx_, x, n); }
  void scale(float* x, float s, size_t n) override { cuda::scale(ctx_, x, s, n); }

 private:
  // What graph_end_capture hands out: the executable graph and free_epoch_ at capture.
  struct CapturedGraph {
    cudaGraphExec_t exec;
    uint64_t free_epoch;
  };

  Context ctx_;
  std::string name_;
  bool graphs_ = true;           // HH_CUDA_GRAPHS
  size_t kernel_times_top_ = 0;  // HH_CUDA_KERNEL_TIMES: rows of the table printed at the end
  bool capturing_ = false;       // between graph_begin_capture and graph_end_capture
  // copy_to_host_async: pinned staging, its completion event, the pending destination.
  void* staging_ = nullptr;
  size_t staging_bytes_ = 0;
  cudaEvent_t copy_done_ = nullptr;
  // copy_to_device's pinned ring for small uploads (made on first use).
  static constexpr size_t kUploadSlotBytes = 64 << 10;
  static constexpr int kUploadSlots = 8;
  struct UploadSlot {
    void* host = nullptr;
    cudaEvent_t read = nullptr;  // recorded after the DMA that reads the slot
  };
  UploadSlot upload_slots_[kUploadSlots];
  int next_upload_slot_ = 0;
  void* async_dst_ = nullptr;
  size_t async_bytes_ = 0;
  uint64_t free_epoch_ = 0;  // free_bytes calls so far
  std::unordered_map<void*, size_t> sizes_;
  size_t current_bytes_ = 0;
  size_t peak_bytes_ = 0;
};

}  // namespace cuda

std::unique_ptr<Backend> make_cuda_backend(int device_index) {
  return std::make_unique<cuda::CudaBackend>(device_index);
}

// True when the CUDA runtime finds at least one device (false without a driver or GPU).
int cuda_device_count() {
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear it; "no device" is an answer, not an error
    return 0;
  }
  return count;
}

bool cuda_device_available() { return cuda_device_count() > 0; }

}  // namespace hh
