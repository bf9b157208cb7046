// The CUDA backend's ops as free functions (hh::cuda::...), one .cu per op family with
// the same names as src/ops/cpu/. Semantics, shapes and the +=/= conventions are exactly
// those documented in src/ops/ops.h; CudaBackend (backend.cu) forwards to these. Every
// function enqueues work on ctx.stream and returns without synchronising, except
// sum_squares, which returns a host value.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "common.cuh"
#include "ops/ops.h"

namespace hh::cuda {

// embedding.cu
void embedding_forward(Context& ctx, float* out, const int32_t* tokens, const float* wte,
                       const float* wpe, int B, int T, int C);
void embedding_backward(Context& ctx, float* dwte, float* dwpe, const float* dout,
                        const int32_t* tokens, int B, int T, int C);
// layernorm.cu
void layernorm_forward(Context& ctx, float* out, float* mean, float* rstd, const float* inp,
                       const float* weight, const float* bias, int N, int C);
void layernorm_backward(Context& ctx, float* dinp, float* dweight, float* dbias, const float* dout,
                        const float* inp, const float* weight, const float* mean, const float* rstd,
                        int N, int C);
// matmul.cu (cuBLAS / cuBLASLt)
void matmul_forward(Context& ctx, float* out, const float* inp, const float* weight,
                    const float* bias, int N, int IC, int OC);
void matmul_backward(Context& ctx, float* dinp, float* dweight, float* dbias, const float* dout,
                     const float* inp, const float* weight, int N, int IC, int OC);
void matmul_residual_forward(Context& ctx, float* out, const float* inp, const float* weight,
                             const float* bias, const float* residual, int N, int IC, int OC);
// attention.cu (materialised P via cuBLAS; dispatches to attention_flash.cu when ctx.flash)
size_t attention_saved_floats(const Context& ctx, int B, int T, int NH);
void attention_forward(Context& ctx, float* out, float* saved, const float* qkv,
                       const int32_t* lengths, int B, int T, int C, int NH);
void attention_backward(Context& ctx, float* dqkv, const float* dout, const float* qkv,
                        const float* out, const float* saved, const int32_t* lengths, int B, int T,
                        int C, int NH);
// attention_flash.cu (fused kernels; saved = row log-sum-exp [B][NH][T])
size_t attention_flash_saved_floats(int B, int T, int NH);
void attention_flash_forward(Context& ctx, float* out, float* lse, const float* qkv,
                             const int32_t* lengths, int B, int T, int C, int NH);
void attention_flash_backward(Context& ctx, float* dqkv, const float* dout, const float* qkv,
                              const float* lse, const int32_t* lengths, int B, int T, int C,
                              int NH);
// attention_flash_tc.cu (HH_CUDA_FLASH=2: fused kernels on TF32 tensor cores; same saved)
bool flash_tc_supported(const Context& ctx, int T, int C, int NH);
void attention_flash_tc_forward(Context& ctx, float* out, float* lse, const float* qkv,
                                const int32_t* lengths, int B, int T, int C, int NH);
void attention_flash_tc_backward(Context& ctx, float* dqkv, const float* dout, const float* qkv,
                                 const float* out, const float* lse, const int32_t* lengths, int B,
                                 int T, int C, int NH);
// gelu.cu
void gelu_forward(Context& ctx, float* out, const float* inp, size_t n);
void gelu_backward(Context& ctx, float* dinp, const float* inp, const float* dout, size_t n);
// residual.cu
void residual_forward(Context& ctx, float* out, const float* a, const float* b, size_t n);
// crossentropy.cu
void crossentropy_forward(Context& ctx, float* losses, const float* logits, const int32_t* targets,
                          int N, int V, int Vp);
void crossentropy_backward(Context& ctx, float* dlogits, const float* logits,
                           const int32_t* targets, const float* dlosses, int N, int V, int Vp);
void softmax_entropy(Context& ctx, float* entropy, const float* logits, const int32_t* targets,
                     int N, int V, int Vp);
// rows.cu
void gather_rows(Context& ctx, float* out, const float* inp, const int32_t* rows, int M, int C);
void scatter_add_rows(Context& ctx, float* dinp, const float* dout, const int32_t* rows, int M,
                      int C);
// decode.cu (generation with a KV cache)
void embedding_forward_at(Context& ctx, float* out, const int32_t* tokens, const int32_t* positions,
                          const float* wte, const float* wpe, int M, int C);
void kv_cache_write(Context& ctx, void* kcache, void* vcache, const float* qkv,
                    const int32_t* slots, const int32_t* positions, int M, int max_len, int C);
void attention_decode(Context& ctx, float* out, const float* qkv, void* kcache, void* vcache,
                      const int32_t* slots, const int32_t* positions, int M, int max_len, int C,
                      int NH);
void sample_rows(Context& ctx, int32_t* tokens, float* logprobs, const float* logits,
                 const uint64_t* seeds, float temperature, int M, int V, int Vp);
// the fp16 decode step (ops.h: decode_fp16): decode.cu, layernorm.cu, matmul.cu
void to_half(Context& ctx, void* dst, const float* src, size_t n);
void attention_decode_half(Context& ctx, void* out, const float* qkv, void* kcache, void* vcache,
                           const int32_t* slots, const int32_t* positions, int M, int max_len,
                           int C, int NH);
void layernorm_forward_half(Context& ctx, void* out, const float* inp, const float* weight,
                            const float* bias, int N, int C);
void matmul_forward_half(Context& ctx, float* out, const void* inp, const void* weight,
                         const float* bias, const float* residual, int N, int IC, int OC);
void matmul_gelu_forward_half(Context& ctx, void* out, const void* inp, const void* weight,
                              const void* bias, int N, int IC, int OC);
// adamw.cu (also the flat-buffer utilities)
void adamw_update(Context& ctx, float* params, const float* grads, float* m, float* v, size_t n,
                  const AdamWParams& hp);
double sum_squares(Context& ctx, const float* x, size_t n);
void scale(Context& ctx, float* x, float s, size_t n);
// kernel_times.cu (HH_CUDA_KERNEL_TIMES: per-kernel GPU time through CUPTI, loaded on demand)
std::string kernel_times_start();  // empty when recording, else why not
std::string kernel_times_report(size_t top);

}  // namespace hh::cuda
