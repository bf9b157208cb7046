// The backend interface: every op the model and the trainers need, forward and backward.
//
// Two implementations: src/ops/cpu/ (the reference: plain C++, OpenMP over the cores) and
// cuda/ (CUDA + cuBLAS). Each op lives in a file named after it in both places, forward
// and backward side by side, with the math in a comment on top.
//
// Conventions (all ops):
// - float32, row-major, contiguous. All pointers live on the backend's device (host
//   memory for the CPU backend). Integer inputs (tokens, targets, lengths, rows) are int32.
// - B = batch, T = padded sequence length, C = width, NH = heads, N = B*T rows,
//   V = real vocabulary, Vp = vocabulary padded to a multiple of 64.
// - Linear weights are stored output-major, W[OC][IC] (torch.nn.Linear's layout), so
//   y = x·Wᵀ + b. The tied LM head is then matmul_forward(logits, x, wte, null, N, C, Vp).
//   (Hugging Face's Conv1D stores W[IC][OC]; import/export transpose.)
// - Gradients of PARAMETERS always accumulate (+=), so gradient accumulation is free.
// - Gradients of ACTIVATIONS overwrite (=), except layernorm_backward's dinp, which
//   accumulates because LayerNorm's input is always the residual stream, whose gradient
//   is the sum of the skip path and the branch.
// - Sequences are right-padded: sequence b has lengths[b] real tokens (1 <= len <= T).
//   Attention is causal, so padding can never change a real position's result; ops that
//   take lengths also skip and zero the padded rows.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace hh {

enum class DeviceKind { CPU, CUDA };

struct AdamWParams {
  float lr = 3e-4f;
  float beta1 = 0.9f;
  float beta2 = 0.95f;
  float eps = 1e-8f;
  float weight_decay = 0.0f;  // applied decoupled: p -= lr * wd * p
  int64_t step = 1;           // 1-based, for bias correction
  float grad_scale = 1.0f;    // g = grads·grad_scale (the clip coefficient, without a pass)
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual DeviceKind kind() const = 0;
  virtual std::string name() const = 0;  // "cpu", "cuda:0 (NVIDIA H100 ...)"

  // ---- memory ----
  // alloc throws hh::Error naming the size asked for (and, on a GPU, the size free).
  virtual void* alloc_bytes(size_t bytes) = 0;
  virtual void free_bytes(void* p) = 0;
  virtual void copy_to_device(void* dst, const void* host_src, size_t bytes) = 0;
  virtual void copy_to_host(void* host_dst, const void* src, size_t bytes) = 0;
  // Queues a copy to the host behind the work queued so far and returns at once; the bytes
  // are in host_dst after wait_host_copy(), and work queued in between runs meanwhile (how
  // generation reads one step's samples while the next step runs). One copy at a time.
  // The default (the CPU backend) copies right away.
  virtual void copy_to_host_async(void* host_dst, const void* src, size_t bytes) {
    copy_to_host(host_dst, src, bytes);
  }
  virtual void wait_host_copy() {}
  virtual void copy_on_device(void* dst, const void* src, size_t bytes) = 0;
  virtual void fill_zero(void* p, size_t bytes) = 0;
  virtual void synchronize() = 0;
  virtual size_t peak_bytes() const = 0;  // high-water mark of alloc_bytes
  // Memory free for new allocations now: CUDA's cudaMemGetInfo, the CPU's MemAvailable
  // (/proc/meminfo; SIZE_MAX where that cannot be read).
  virtual size_t available_bytes() const = 0;
  // The stream every op is queued on (a cudaStream_t on CUDA; null on the CPU), for
  // libraries that queue work beside the ops (NCCL).
  virtual void* native_stream() { return nullptr; }

  // ---- graphs: record a fixed sequence of ops once, replay it with one launch ----
  // Between graph_begin_capture() and graph_end_capture() the ops are recorded, not run;
  // they must not allocate, free, synchronise or copy to or from the host. end returns an
  // opaque executable graph; graph_launch(g) queues a replay: the same ops with the same
  // pointers and arguments, reading the buffers' contents as they are then (so per-step
  // inputs are copied into fixed buffers before the launch). graph_launch returns false and
  // queues nothing when g may be stale (memory was freed on this backend since its capture):
  // the caller destroys it and runs the ops itself. graph_destroy(null) is a no-op.
  // Only the CUDA backend has graphs (cudaStreamBeginCapture; HH_CUDA_GRAPHS=0 turns them
  // off); elsewhere graphs_enabled() is false and callers just run the ops.
  virtual bool graphs_enabled() const { return false; }
  virtual void graph_begin_capture() {}
  virtual void* graph_end_capture() { return nullptr; }
  virtual bool graph_launch(void* /*graph*/) { return false; }
  virtual void graph_destroy(void* /*graph*/) {}

  // ---- embedding: out[b,t,:] = wte[tokens[b,t],:] + wpe[t,:] ----
  virtual void embedding_forward(float* out, const int32_t* tokens, const float* wte,
                                 const float* wpe, int B, int T, int C) = 0;
  // dwte[tokens[b,t],:] += dout[b,t,:]; dwpe[t,:] += dout[b,t,:] (deterministic order).
  virtual void embedding_backward(float* dwte, float* dwpe, const float* dout,
                                  const int32_t* tokens, int B, int T, int C) = 0;

  // ---- LayerNorm over the last dim, eps = 1e-5: out = (x-μ)·rstd·w + b ----
  // mean[N] and rstd[N] are saved for the backward pass.
  virtual void layernorm_forward(float* out, float* mean, float* rstd, const float* inp,
                                 const float* weight, const float* bias, int N, int C) = 0;
  // dinp += ..., dweight += ..., dbias += ...
  virtual void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                                  const float* inp, const float* weight, const float* mean,
                                  const float* rstd, int N, int C) = 0;

  // ---- matmul with bias: out[N,OC] = inp[N,IC]·weight[OC,IC]ᵀ + bias[OC] ----
  // bias may be null.
  virtual void matmul_forward(float* out, const float* inp, const float* weight, const float* bias,
                              int N, int IC, int OC) = 0;
  // dinp = dout·weight (overwrite; skipped when dinp is null), dweight += doutᵀ·inp,
  // dbias += Σ_rows dout (skipped when null).
  virtual void matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                               const float* inp, const float* weight, int N, int IC, int OC) = 0;

  // ---- matmuls fused with their neighbours ----
  // Each is exactly the plain ops in the order written here, which is what this base class
  // runs (so the CPU backend's result is bit-identical to the unfused sequence); the CUDA
  // backend may fuse them into cuBLASLt epilogues (HH_CUDA_FUSE=1, cuda/matmul.cu).
  // out = residual + (inp·weightᵀ + bias): a projection added onto the residual stream.
  virtual void matmul_residual_forward(float* out, const float* inp, const float* weight,
                                       const float* bias, const float* residual, int N, int IC,
                                       int OC) {
    matmul_forward(out, inp, weight, bias, N, IC, OC);
    residual_forward(out, residual, out, static_cast<size_t>(N) * OC);
  }
  // pre = inp·weightᵀ + bias, out = gelu(pre): the MLP's first layer (pre is kept for
  // the backward pass).
  virtual void matmul_gelu_forward(float* pre, float* out, const float* inp, const float* weight,
                                   const float* bias, int N, int IC, int OC) {
    matmul_forward(pre, inp, weight, bias, N, IC, OC);
    gelu_forward(out, pre, static_cast<size_t>(N) * OC);
  }
  // The backward of a matmul whose input is inp = gelu(pre), through the GELU:
  // dpre = (dout·weight) ⊙ gelu'(pre) (overwrite), dweight += doutᵀ·inp, dbias += Σ dout.
  virtual void matmul_gelu_backward(float* dpre, float* dweight, float* dbias, const float* dout,
                                    const float* inp, const float* pre, const float* weight, int N,
                                    int IC, int OC) {
    matmul_backward(dpre, dweight, dbias, dout, inp, weight, N, IC, OC);
    gelu_backward(dpre, pre, dpre, static_cast<size_t>(N) * IC);
  }

  // ---- causal multi-head attention over variable-length sequences ----
  // qkv[B,T,3C] holds q, k, v (each C = NH·hs wide, head h at columns h·hs..). Scale 1/√hs.
  // out[B,T,C]; rows t >= lengths[b] are written as 0. `saved` holds what the backward
  // pass needs, attention_saved_floats(B,T,NH) floats (the CPU keeps the probabilities).
  virtual size_t attention_saved_floats(int B, int T, int NH) const = 0;
  virtual void attention_forward(float* out, float* saved, const float* qkv, const int32_t* lengths,
                                 int B, int T, int C, int NH) = 0;
  // dqkv = ... (overwrite, zero on padded rows). out is the forward's output (a fused
  // backward needs D = rowsum(dout ∘ out); other paths ignore it).
  virtual void attention_backward(float* dqkv, const float* dout, const float* qkv,
                                  const float* out, const float* saved, const int32_t* lengths,
                                  int B, int T, int C, int NH) = 0;

  // ---- tanh-GELU: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))) ----
  virtual void gelu_forward(float* out, const float* inp, size_t n) = 0;
  virtual void gelu_backward(float* dinp, const float* inp, const float* dout, size_t n) = 0;

  // ---- residual: out = a + b (its backward is the identity, see the note above) ----
  virtual void residual_forward(float* out, const float* a, const float* b, size_t n) = 0;

  // ---- fused softmax cross-entropy over the first V of Vp columns ----
  // losses[i] = -log softmax(logits[i,:V])[targets[i]]; targets[i] < 0 means "no loss":
  // losses[i] = 0. Padded columns V..Vp-1 never enter the softmax.
  virtual void crossentropy_forward(float* losses, const float* logits, const int32_t* targets,
                                    int N, int V, int Vp) = 0;
  // dlogits[i,:] = dlosses[i]·(softmax(logits[i,:V]) - onehot(targets[i])), 0 on padded
  // columns and on rows with targets[i] < 0. dlogits may alias logits (in place: no second
  // logits-sized buffer). The loss mask and the mean's 1/count live in dlosses.
  virtual void crossentropy_backward(float* dlogits, const float* logits, const int32_t* targets,
                                     const float* dlosses, int N, int V, int Vp) = 0;
  // entropy[i] = −Σ_j p_j·log p_j, p = softmax(logits[i,:V]), on rows with targets[i] ≥ 0
  // (0 elsewhere): PPO's policy entropy without copying logits to the host.
  virtual void softmax_entropy(float* entropy, const float* logits, const int32_t* targets, int N,
                               int V, int Vp) = 0;

  // ---- rows, for the scalar head: out[m,:] = inp[rows[m],:] ----
  virtual void gather_rows(float* out, const float* inp, const int32_t* rows, int M, int C) = 0;
  // dinp[rows[m],:] += dout[m,:]
  virtual void scatter_add_rows(float* dinp, const float* dout, const int32_t* rows, int M,
                                int C) = 0;

  // ---- generation with a KV cache (cpu/decode.cpp, cuda/decode.cu) ----
  // M rows, each one sequence at its own position. Caches are [S][max_len][C] (S slots,
  // one per sequence) of kv_value_bytes() each: float, or on CUDA with TF32 and
  // HH_CUDA_KV_HALF=1 fp16 (10 mantissa bits, as TF32 rounds the prefill's operands); row m
  // belongs to slot slots[m] and sits at position positions[m].
  // out[m,:] = wte[tokens[m],:] + wpe[positions[m],:]
  virtual void embedding_forward_at(float* out, const int32_t* tokens, const int32_t* positions,
                                    const float* wte, const float* wpe, int M, int C) = 0;
  // Bytes per cached value (the caches are this backend's storage, sized by the caller).
  virtual size_t kv_value_bytes() const { return sizeof(float); }
  // kcache[slots[m], positions[m], :] = k of qkv[m,:]; vcache likewise with v (qkv as in
  // attention_forward: q | k | v, each C wide). Rows with positions[m] < 0 are skipped.
  virtual void kv_cache_write(void* kcache, void* vcache, const float* qkv, const int32_t* slots,
                              const int32_t* positions, int M, int max_len, int C) = 0;
  // One decode step's attention: appends row m's k and v (of qkv[m,:]) to its slot at
  // positions[m], as kv_cache_write, then attends with its query (the q part) over the
  // slot's keys and values 0..positions[m]. Per head h, with hs = C/NH and scale 1/√hs:
  // out[m,h] = Σ_t softmax_t(scale·q_h·k_h[t])·v_h[t]. Rows must have distinct slots (a
  // row reads only what it and earlier steps wrote), so no kernel waits for another row.
  virtual void attention_decode(float* out, const float* qkv, void* kcache, void* vcache,
                                const int32_t* slots, const int32_t* positions, int M, int max_len,
                                int C, int NH) = 0;

  // Draws one token from each row of logits [M, Vp] (the first V columns only), so that
  // only M ids and log-probs leave the device:
  //   tokens[m] = argmax_v logits[m,v]/temperature + G(seeds[m], v)   (Gumbel-max: an exact
  //               draw from softmax(logits[m,:V]/temperature)); temperature 0: argmax_v
  //               logits[m,v] (greedy). Ties go to the smallest v.
  //   logprobs[m] = logits[m,tokens[m]] - log Σ_v exp(logits[m,v])  (at temperature 1).
  //   G(s, v) = -log(-log(u)), u = min(((mix64(s + 0x9e3779b97f4a7c15·(v+1)) >> 40) + 0.5)/2^24,
  //   1 − 2^-24) in float (the min: the top value would round to u = 1 and G = +∞),
  //   each log correctly rounded to float; mix64 = splitmix64's finaliser. seeds[M]
  //   (device) come from the caller's Rng.
  virtual void sample_rows(int32_t* tokens, float* logprobs, const float* logits,
                           const uint64_t* seeds, float temperature, int M, int V, int Vp) = 0;

  // ---- the decode step on fp16 storage (cpu/decode.cpp, cuda/decode.cu, cuda/matmul.cu) ----
  // With decode_fp16() (CUDA with TF32 and HH_CUDA_DECODE_FP16=1; the CPU reference with
  // HH_CPU_DECODE_FP16=1, for tests) the generator's decode step reads fp16 copies of the
  // weights and feeds the matmuls fp16 activations: half the bytes of the fp32 weights, which
  // a decode step of 64 rows spends most of its matmul time reading. fp16 keeps TF32's 10
  // mantissa bits; values are rounded to nearest even when stored (hh::float_to_half) and
  // read back exactly; every product, sum, bias, residual, softmax and the logits stay fp32.
  // Pointers typed void* hold fp16.
  virtual bool decode_fp16() const { return false; }
  // dst[i] = fp16(src[i])
  virtual void to_half(void* dst, const float* src, size_t n) = 0;
  // out = fp16(layernorm_forward's out) (mean and rstd are not kept)
  virtual void layernorm_forward_half(void* out, const float* inp, const float* weight,
                                      const float* bias, int N, int C) = 0;
  // attention_decode with out[M,C] stored as fp16.
  virtual void attention_decode_half(void* out, const float* qkv, void* kcache, void* vcache,
                                     const int32_t* slots, const int32_t* positions, int M,
                                     int max_len, int C, int NH) = 0;
  // out[N,OC] = inp[N,IC]·weight[OC,IC]ᵀ + bias[OC] (+ residual[N,OC]); inp and weight fp16,
  // bias (may be null), residual (may be null) and out fp32; out may not alias residual.
  virtual void matmul_forward_half(float* out, const void* inp, const void* weight,
                                   const float* bias, const float* residual, int N, int IC,
                                   int OC) = 0;
  // out = fp16(gelu(inp·weightᵀ + bias)): the MLP's first layer; inp, weight, bias and out fp16.
  virtual void matmul_gelu_forward_half(void* out, const void* inp, const void* weight,
                                        const void* bias, int N, int IC, int OC) = 0;

  // ---- optimizer and gradient utilities over flat buffers ----
  // AdamW (Loshchilov & Hutter): m = β1·m + (1-β1)·g; v = β2·v + (1-β2)·g²;
  // p -= lr·( m̂/(√v̂ + eps) + wd·p ), m̂ = m/(1-β1^t), v̂ = v/(1-β2^t).
  virtual void adamw_update(float* params, const float* grads, float* m, float* v, size_t n,
                            const AdamWParams& hp) = 0;
  // Σ x², accumulated in double, returned on the host (synchronises).
  virtual double sum_squares(const float* x, size_t n) = 0;
  // x *= s
  virtual void scale(float* x, float s, size_t n) = 0;
};

// "cpu", "cuda", or "auto" (cuda when a GPU is present and hh was built with CUDA).
std::unique_ptr<Backend> make_backend(const std::string& device);
std::unique_ptr<Backend> make_cpu_backend();
#ifdef HH_WITH_CUDA
std::unique_ptr<Backend> make_cuda_backend(int device_index);  // cuda/backend.cu
bool cuda_device_available();
int cuda_device_count();  // 0 when there is none (or no driver)
#endif

// Owning device buffer of T, freed through the backend that allocated it.
template <typename T>
class Buffer {
 public:
  using value_type = T;
  Buffer() = default;
  Buffer(Backend& be, size_t n) : be_(&be), n_(n) {
    if (n) p_ = static_cast<T*>(be.alloc_bytes(n * sizeof(T)));
  }
  ~Buffer() { reset(); }
  Buffer(Buffer&& o) noexcept : be_(o.be_), p_(o.p_), n_(o.n_) {
    o.p_ = nullptr;
    o.n_ = 0;
  }
  Buffer& operator=(Buffer&& o) noexcept {
    if (this != &o) {
      reset();
      be_ = o.be_;
      p_ = o.p_;
      n_ = o.n_;
      o.p_ = nullptr;
      o.n_ = 0;
    }
    return *this;
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  void reset() {
    if (p_) be_->free_bytes(p_);
    p_ = nullptr;
    n_ = 0;
  }
  T* data() { return p_; }
  const T* data() const { return p_; }
  size_t size() const { return n_; }
  size_t bytes() const { return n_ * sizeof(T); }
  Backend& backend() const { return *be_; }

 private:
  Backend* be_ = nullptr;
  T* p_ = nullptr;
  size_t n_ = 0;
};

}  // namespace hh
