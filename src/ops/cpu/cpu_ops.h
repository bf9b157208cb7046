// The CPU backend's ops as free functions (hh::cpu::...), one file per op family in
// this folder, forward and backward side by side. Semantics, shapes and the +=/=
// conventions are exactly those documented in src/ops/ops.h; CpuBackend
// (src/ops/backend.cpp) forwards to these. Parallel with OpenMP over the cores.
#pragma once

#include <cstddef>
#include <cstdint>

#include "ops/ops.h"

namespace hh::cpu {

// embedding.cpp
void embedding_forward(float* out, const int32_t* tokens, const float* wte, const float* wpe, int B,
                       int T, int C);
void embedding_backward(float* dwte, float* dwpe, const float* dout, const int32_t* tokens, int B,
                        int T, int C);
// layernorm.cpp
void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                       const float* bias, int N, int C);
void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                        const float* inp, const float* weight, const float* mean, const float* rstd,
                        int N, int C);
// matmul.cpp (cache-blocked, vectorised; no BLAS)
void matmul_forward(float* out, const float* inp, const float* weight, const float* bias, int N,
                    int IC, int OC);
void matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                     const float* weight, int N, int IC, int OC);
const char* matmul_kernel_name();  // micro-kernel in use, e.g. "avx512-14x32"
// attention.cpp
size_t attention_saved_floats(int B, int T, int NH);
void attention_forward(float* out, float* saved, const float* qkv, const int32_t* lengths, int B,
                       int T, int C, int NH);
void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* saved,
                        const int32_t* lengths, int B, int T, int C, int NH);
// gelu.cpp
void gelu_forward(float* out, const float* inp, size_t n);
void gelu_backward(float* dinp, const float* inp, const float* dout, size_t n);
// residual.cpp
void residual_forward(float* out, const float* a, const float* b, size_t n);
// crossentropy.cpp
void crossentropy_forward(float* losses, const float* logits, const int32_t* targets, int N, int V,
                          int Vp);
void crossentropy_backward(float* dlogits, const float* logits, const int32_t* targets,
                           const float* dlosses, int N, int V, int Vp);
void softmax_entropy(float* entropy, const float* logits, const int32_t* targets, int N, int V,
                     int Vp);
// rows.cpp
void gather_rows(float* out, const float* inp, const int32_t* rows, int M, int C);
void scatter_add_rows(float* dinp, const float* dout, const int32_t* rows, int M, int C);
// decode.cpp (generation with a KV cache)
void embedding_forward_at(float* out, const int32_t* tokens, const int32_t* positions,
                          const float* wte, const float* wpe, int M, int C);
void kv_cache_write(float* kcache, float* vcache, const float* qkv, const int32_t* slots,
                    const int32_t* positions, int M, int max_len, int C);
void attention_decode(float* out, const float* qkv, float* kcache, float* vcache,
                      const int32_t* slots, const int32_t* positions, int M, int max_len, int C,
                      int NH);
void sample_rows(int32_t* tokens, float* logprobs, const float* logits, const uint64_t* seeds,
                 float temperature, int M, int V, int Vp);
// decode.cpp: the fp16 decode step (uint16_t: IEEE fp16 bits)
void to_half(uint16_t* dst, const float* src, size_t n);
void layernorm_forward_half(uint16_t* out, const float* inp, const float* weight, const float* bias,
                            int N, int C);
void attention_decode_half(uint16_t* out, const float* qkv, float* kcache, float* vcache,
                           const int32_t* slots, const int32_t* positions, int M, int max_len,
                           int C, int NH);
void matmul_forward_half(float* out, const uint16_t* inp, const uint16_t* weight, const float* bias,
                         const float* residual, int N, int IC, int OC);
void matmul_gelu_forward_half(uint16_t* out, const uint16_t* inp, const uint16_t* weight,
                              const uint16_t* bias, int N, int IC, int OC);
// adamw.cpp (also the flat-buffer utilities)
void adamw_update(float* params, const float* grads, float* m, float* v, size_t n,
                  const AdamWParams& hp);
double sum_squares(const float* x, size_t n);
void scale(float* x, float s, size_t n);

}  // namespace hh::cpu
