// The backend factory and the CPU backend.
//
// CpuBackend is the reference backend: memory is 64-byte aligned host memory (so AVX
// loads never split cache lines), copies are memcpy, and every op forwards to the plain
// C++ implementation in src/ops/cpu/ (hh::cpu::...). make_backend picks a backend by name.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <string>
#include <unordered_map>

#include "core/error.h"
#include "ops/cpu/cpu_ops.h"
#include "ops/ops.h"

namespace hh {

namespace {

class CpuBackend final : public Backend {
 public:
  ~CpuBackend() override {
    // Buffers outliving their backend are a bug in the caller; free what is left anyway.
    for (auto& entry : sizes_) std::free(entry.first);
  }
  DeviceKind kind() const override { return DeviceKind::CPU; }
  std::string name() const override { return "cpu"; }

  // ---- memory ----
  void* alloc_bytes(size_t bytes) override {
    const size_t kAlign = 64;
    // std::aligned_alloc wants a multiple of the alignment; 0 bytes still gets a pointer.
    const size_t rounded = bytes == 0 ? kAlign : (bytes + kAlign - 1) / kAlign * kAlign;
    HH_CHECK(rounded >= bytes, "cpu backend: allocation of ", bytes, " bytes is too large");
    void* p = std::aligned_alloc(kAlign, rounded);
    std::lock_guard<std::mutex> lock(mutex_);
    HH_CHECK(p != nullptr, "cpu backend: out of memory allocating ", bytes, " bytes (",
             current_bytes_, " bytes already allocated)");
    sizes_[p] = rounded;
    current_bytes_ += rounded;
    if (current_bytes_ > peak_bytes_) peak_bytes_ = current_bytes_;
    return p;
  }
  void free_bytes(void* p) override {
    if (p == nullptr) return;
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = sizes_.find(p);
    HH_CHECK(it != sizes_.end(), "cpu backend: free_bytes of a pointer it did not allocate");
    current_bytes_ -= it->second;
    sizes_.erase(it);
    std::free(p);
  }
  void copy_to_device(void* dst, const void* host_src, size_t bytes) override {
    if (bytes) std::memcpy(dst, host_src, bytes);
  }
  void copy_to_host(void* host_dst, const void* src, size_t bytes) override {
    if (bytes) std::memcpy(host_dst, src, bytes);
  }
  void copy_on_device(void* dst, const void* src, size_t bytes) override {
    if (bytes) std::memmove(dst, src, bytes);
  }
  void fill_zero(void* p, size_t bytes) override {
    if (bytes) std::memset(p, 0, bytes);
  }
  void synchronize() override {}
  size_t peak_bytes() const override {
    std::lock_guard<std::mutex> lock(mutex_);
    return peak_bytes_;
  }
  size_t available_bytes() const override {
    std::ifstream meminfo("/proc/meminfo");
    std::string key;
    size_t kib = 0;
    while (meminfo >> key >> kib) {
      if (key == "MemAvailable:") return kib * 1024;
      meminfo.ignore(256, '\n');
    }
    return SIZE_MAX;
  }

  // ---- ops: see ops.h for the semantics, src/ops/cpu/ for the code ----
  void embedding_forward(float* out, const int32_t* tokens, const float* wte, const float* wpe,
                         int B, int T, int C) override {
    cpu::embedding_forward(out, tokens, wte, wpe, B, T, C);
  }
  void embedding_backward(float* dwte, float* dwpe, const float* dout, const int32_t* tokens, int B,
                          int T, int C) override {
    cpu::embedding_backward(dwte, dwpe, dout, tokens, B, T, C);
  }
  void layernorm_forward(float* out, float* mean, float* rstd, const float* inp,
                         const float* weight, const float* bias, int N, int C) override {
    cpu::layernorm_forward(out, mean, rstd, inp, weight, bias, N, C);
  }
  void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                          const float* inp, const float* weight, const float* mean,
                          const float* rstd, int N, int C) override {
    cpu::layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, N, C);
  }
  void matmul_forward(float* out, const float* inp, const float* weight, const float* bias, int N,
                      int IC, int OC) override {
    cpu::matmul_forward(out, inp, weight, bias, N, IC, OC);
  }
  void matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                       const float* inp, const float* weight, int N, int IC, int OC) override {
    cpu::matmul_backward(dinp, dweight, dbias, dout, inp, weight, N, IC, OC);
  }
  size_t attention_saved_floats(int B, int T, int NH) const override {
    return cpu::attention_saved_floats(B, T, NH);
  }
  void attention_forward(float* out, float* saved, const float* qkv, const int32_t* lengths, int B,
                         int T, int C, int NH) override {
    cpu::attention_forward(out, saved, qkv, lengths, B, T, C, NH);
  }
  void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* /*out*/,
                          const float* saved, const int32_t* lengths, int B, int T, int C,
                          int NH) override {
    cpu::attention_backward(dqkv, dout, qkv, saved, lengths, B, T, C, NH);
  }
  void gelu_forward(float* out, const float* inp, size_t n) override {
    cpu::gelu_forward(out, inp, n);
  }
  void gelu_backward(float* dinp, const float* inp, const float* dout, size_t n) override {
    cpu::gelu_backward(dinp, inp, dout, n);
  }
  void residual_forward(float* out, const float* a, const float* b, size_t n) override {
    cpu::residual_forward(out, a, b, n);
  }
  void crossentropy_forward(float* losses, const float* logits, const int32_t* targets, int N,
                            int V, int Vp) override {
    cpu::crossentropy_forward(losses, logits, targets, N, V, Vp);
  }
  void crossentropy_backward(float* dlogits, const float* logits, const int32_t* targets,
                             const float* dlosses, int N, int V, int Vp) override {
    cpu::crossentropy_backward(dlogits, logits, targets, dlosses, N, V, Vp);
  }
  void softmax_entropy(float* entropy, const float* logits, const int32_t* targets, int N, int V,
                       int Vp) override {
    cpu::softmax_entropy(entropy, logits, targets, N, V, Vp);
  }
  void gather_rows(float* out, const float* inp, const int32_t* rows, int M, int C) override {
    cpu::gather_rows(out, inp, rows, M, C);
  }
  void scatter_add_rows(float* dinp, const float* dout, const int32_t* rows, int M,
                        int C) override {
    cpu::scatter_add_rows(dinp, dout, rows, M, C);
  }
  void embedding_forward_at(float* out, const int32_t* tokens, const int32_t* positions,
                            const float* wte, const float* wpe, int M, int C) override {
    cpu::embedding_forward_at(out, tokens, positions, wte, wpe, M, C);
  }
  void kv_cache_write(void* kcache, void* vcache, const float* qkv, const int32_t* slots,
                      const int32_t* positions, int M, int max_len, int C) override {
    cpu::kv_cache_write(static_cast<float*>(kcache), static_cast<float*>(vcache), qkv, slots,
                        positions, M, max_len, C);
  }
  void attention_decode(float* out, const float* qkv, void* kcache, void* vcache,
                        const int32_t* slots, const int32_t* positions, int M, int max_len, int C,
                        int NH) override {
    cpu::attention_decode(out, qkv, static_cast<float*>(kcache), static_cast<float*>(vcache), slots,
                          positions, M, max_len, C, NH);
  }
  void sample_rows(int32_t* tokens, float* logprobs, const float* logits, const uint64_t* seeds,
                   float temperature, int M, int V, int Vp) override {
    cpu::sample_rows(tokens, logprobs, logits, seeds, temperature, M, V, Vp);
  }
  // The fp16 decode step runs here only for tests (HH_CPU_DECODE_FP16=1): the reference.
  bool decode_fp16() const override { return decode_fp16_; }
  void to_half(void* dst, const float* src, size_t n) override {
    cpu::to_half(static_cast<uint16_t*>(dst), src, n);
  }
  void layernorm_forward_half(void* out, const float* inp, const float* weight, const float* bias,
                              int N, int C) override {
    cpu::layernorm_forward_half(static_cast<uint16_t*>(out), inp, weight, bias, N, C);
  }
  void attention_decode_half(void* out, const float* qkv, void* kcache, void* vcache,
                             const int32_t* slots, const int32_t* positions, int M, int max_len,
                             int C, int NH) override {
    cpu::attention_decode_half(static_cast<uint16_t*>(out), qkv, static_cast<float*>(kcache),
                               static_cast<float*>(vcache), slots, positions, M, max_len, C, NH);
  }
  void matmul_forward_half(float* out, const void* inp, const void* weight, const float* bias,
                           const float* residual, int N, int IC, int OC) override {
    cpu::matmul_forward_half(out, static_cast<const uint16_t*>(inp),
                             static_cast<const uint16_t*>(weight), bias, residual, N, IC, OC);
  }
  void matmul_gelu_forward_half(void* out, const void* inp, const void* weight, const void* bias,
                                int N, int IC, int OC) override {
    cpu::matmul_gelu_forward_half(static_cast<uint16_t*>(out), static_cast<const uint16_t*>(inp),
                                  static_cast<const uint16_t*>(weight),
                                  static_cast<const uint16_t*>(bias), N, IC, OC);
  }
  void adamw_update(float* params, const float* grads, float* m, float* v, size_t n,
                    const AdamWParams& hp) override {
    cpu::adamw_update(params, grads, m, v, n, hp);
  }
  double sum_squares(const float* x, size_t n) override { return cpu::sum_squares(x, n); }
  void scale(float* x, float s, size_t n) override { cpu::scale(x, s, n); }

 private:
  const bool decode_fp16_ = [] {
    const char* v = std::getenv("HH_CPU_DECODE_FP16");
    return v && std::string(v) == "1";
  }();
  mutable std::mutex mutex_;
  std::unordered_map<void*, size_t> sizes_;  // live allocations and their rounded sizes
  size_t current_bytes_ = 0;
  size_t peak_bytes_ = 0;
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend() { return std::make_unique<CpuBackend>(); }

// "cpu"; "cuda" or "cuda:N" (GPU N, default 0); "auto": the first GPU when hh was built
// with CUDA and one is present, else the CPU.
std::unique_ptr<Backend> make_backend(const std::string& device) {
  if (device == "cpu") return make_cpu_backend();
  const bool is_cuda = device == "cuda" || device.rfind("cuda:", 0) == 0;
  if (is_cuda) {
#ifdef HH_WITH_CUDA
    int index = 0;
    if (device != "cuda") {
      const std::string digits = device.substr(5);
      HH_CHECK(!digits.empty() && digits.size() <= 4 &&
                   digits.find_first_not_of("0123456789") == std::string::npos,
               "device '", device, "': expected cuda:N with N a GPU index");
      index = std::stoi(digits);
    }
    return make_cuda_backend(index);
#else
    HH_FAIL("device '", device, "': this hh was built without CUDA");
#endif
  }
  if (device == "auto") {
#ifdef HH_WITH_CUDA
    if (cuda_device_available()) return make_cuda_backend(0);
#endif
    return make_cpu_backend();
  }
  HH_FAIL("unknown device '", device, "' (expected cpu, cuda, cuda:N or auto)");
}

}  // namespace hh
