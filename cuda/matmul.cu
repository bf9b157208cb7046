// Matmul with bias through cuBLAS (TF32 tensor cores unless HH_CUDA_TF32=0).
//
//   forward:  out[N,OC] = inp[N,IC]·W[OC,IC]ᵀ + bias[OC]
//   backward: dinp[N,IC] = dout[N,OC]·W[OC,IC]            (overwrite)
//             dW[OC,IC] += dout[N,OC]ᵀ·inp[N,IC]          (accumulate)
//             dbias[OC] += Σ_n dout[n,:]                  (accumulate, deterministic)
//
// cuBLAS is column-major. A row-major matrix X[R][K] is, to cuBLAS, the column-major
// matrix Xᵀ (K×R, leading dimension K) with no copy. So each row-major product is
// written as its transpose:
//   out = inp·Wᵀ   ⇔  outᵀ(OC×N) = W·inpᵀ: A = W seen as Wᵀ(IC×OC, ld IC) with op T → W,
//                                           B = inp seen as inpᵀ(IC×N, ld IC), op N;
//                                           m=OC, n=N, k=IC, C = out (ld OC).
//   dinp = dout·W ⇔  dinpᵀ(IC×N) = Wᵀ·doutᵀ: A = W as Wᵀ(IC×OC, ld IC), op N;
//                                           B = dout as doutᵀ(OC×N, ld OC), op N;
//                                           m=IC, n=N, k=OC, C = dinp (ld IC), beta 0.
//   dW += doutᵀ·inp ⇔ dWᵀ(IC×OC) += inpᵀ·dout: A = inp as inpᵀ(IC×N, ld IC), op N;
//                                           B = dout as doutᵀ(OC×N, ld OC), op T → dout;
//                                           m=IC, n=OC, k=N, C = dW (ld IC), beta 1.
//
// The bias: with cuBLASLt (default) the forward adds it in the GEMM's epilogue
// (CUBLASLT_EPILOGUE_BIAS: one value per row of the column-major result, i.e. per OC);
// without it (HH_CUDA_LT=0, or no Lt algorithm for this shape/alignment) a small kernel
// adds it afterwards. dbias is our own deterministic column sum unless fused.
//
// Fused ops (HH_CUDA_FUSE=1; ops.h's matmul_residual_forward, matmul_gelu_forward,
// matmul_gelu_backward, and dbias in every backward): the residual add, the GELU and its
// gradient, and the bias gradient ride in cuBLASLt epilogues instead of separate passes
// over N×OC (see LtKind below). Any shape or alignment cuBLASLt has no algorithm for falls
// back to the unfused ops, so the fused ops work everywhere the plain ones do.
#include <cstdint>
#include <map>
#include <mutex>
#include <tuple>

#include "common.cuh"
#include "cuda_ops.cuh"

namespace hh::cuda {
namespace {

__global__ void add_bias_kernel(float* out, const float* bias, int N, int OC) {
  const size_t total = static_cast<size_t>(N) * OC;
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < total;
       i += size_t(gridDim.x) * blockDim.x)
    out[i] += bias[i % OC];
}

struct Dout {
  const float* dout;
  int OC;
  __device__ float operator()(int n, int c) const { return dout[static_cast<size_t>(n) * OC + c]; }
};

// Largest power of two (up to 16) dividing the address: cuBLASLt picks kernels by it.
int alignment_bytes(const void* p) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  int align = 16;
  while (align > 4 && (a % align) != 0) align /= 2;
  return align;
}

// The cuBLASLt GEMMs, each named by what it computes (layouts as above, column-major view):
//   Bias:        outᵀ = W·inpᵀ + bias                  (+ residual, with beta 1 and C = residual)
//   GeluAuxBias: outᵀ = gelu(W·inpᵀ + bias), aux = preᵀ = W·inpᵀ + bias
//   DGelu:       dpreᵀ = (Wᵀ·doutᵀ) ⊙ gelu'(aux = preᵀ)
//   BGradB:      dWᵀ += inpᵀ·dout, bias = Σ_k dout[k,:] (the reduction over the GEMM's k = N,
//                written, not accumulated: the caller adds it)
// cuBLASLt's GELU is the same tanh approximation as gelu.cu, computed with its own tanh.
enum class LtKind { Bias, GeluAuxBias, DGelu, BGradB };

// One plan per (kind, shape, alignments, tf32): descriptors and the heuristic's algorithm,
// made once and reused (the heuristic query costs far more than the GEMM's launch).
struct LtPlan {
  bool ok = false;
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo;
};

// (kind, N, IC, OC, alignment of A, B, C, D, bias/aux, tf32, handle)
using LtKey = std::tuple<LtKind, int, int, int, int, int, int, int, int, bool, cublasLtHandle_t>;
std::map<LtKey, LtPlan>& lt_plans() {
  static std::map<LtKey, LtPlan> plans;
  return plans;
}
std::mutex& lt_mutex() {
  static std::mutex m;
  return m;
}

template <typename T>
void set_desc(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr, const T& value) {
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, attr, &value, sizeof(value)));
}

LtPlan make_lt_plan(Context& ctx, const LtKey& key) {
  const auto [kind, N, IC, OC, align_a, align_b, align_c, align_d, align_extra, tf32, handle] = key;
  (void)align_extra;  // bias/aux alignment has no preference attribute; it is part of the key
  LtPlan plan;
  const cublasComputeType_t compute = tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  CUBLAS_CHECK(cublasLtMatmulDescCreate(&plan.desc, compute, CUDA_R_32F));
  const bool forward = kind == LtKind::Bias || kind == LtKind::GeluAuxBias;
  const cublasOperation_t trans_a = forward ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t trans_b = kind == LtKind::BGradB ? CUBLAS_OP_T : CUBLAS_OP_N;
  set_desc(plan.desc, CUBLASLT_MATMUL_DESC_TRANSA, trans_a);
  set_desc(plan.desc, CUBLASLT_MATMUL_DESC_TRANSB, trans_b);
  const cublasLtEpilogue_t epilogue = kind == LtKind::Bias ? CUBLASLT_EPILOGUE_BIAS
                                      : kind == LtKind::GeluAuxBias
                                          ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS
                                      : kind == LtKind::DGelu ? CUBLASLT_EPILOGUE_DGELU
                                                              : CUBLASLT_EPILOGUE_BGRADB;
  set_desc(plan.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, epilogue);
  if (kind != LtKind::DGelu) set_desc(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, CUDA_R_32F);
  // The aux matrix (pre-GELU activations) has D's shape and leading dimension.
  if (kind == LtKind::GeluAuxBias)
    set_desc(plan.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, int64_t(OC));
  if (kind == LtKind::DGelu) set_desc(plan.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, int64_t(IC));
  // Layouts as stored (rows, cols, leading dimension), before TRANSA/TRANSB.
  switch (kind) {
    case LtKind::Bias:
    case LtKind::GeluAuxBias:  // A = Wᵀ (IC×OC), B = inpᵀ (IC×N), C = D = outᵀ (OC×N)
      CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan.a, CUDA_R_32F, IC, OC, IC));
      CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan.b, CUDA_R_32F, IC, N, IC));
      CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan.c, CUDA_R_32F, OC, N, OC));
      break;
    case LtKind::DGelu:  // A = Wᵀ (IC×OC), B = doutᵀ (OC×N), C = D = dinpᵀ (IC×N)
      CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan.a, CUDA_R_32F, IC, OC, IC));
      CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan.b, CUDA_R_32F, OC, N, OC));
      CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan.c, CUDA_R_32F, IC, N, IC));
      break;
    case LtKind::BGradB:  // A = inpᵀ (IC×N), B = doutᵀ (OC×N) op T, C = D = dWᵀ (IC×OC)
      CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan.a, CUDA_R_32F, IC, N, IC));
      CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan.b, CUDA_R_32F, OC, N, OC));
      CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan.c, CUDA_R_32F, IC, OC, IC));
      break;
  }

  // The heuristic reads the bias and aux pointers' values (never what they point to) to
  // infer their alignment. lt_matmul only takes this path for 16-byte aligned ones, so a
  // stand-in that is 16-byte aligned and no more keeps it from picking an algorithm that
  // needs wider alignment than a later call's pointers have.
  const void* aligned16 = reinterpret_cast<const void*>(uintptr_t{16});
  if (kind != LtKind::DGelu) set_desc(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, aligned16);
  if (kind == LtKind::GeluAuxBias || kind == LtKind::DGelu)
    set_desc(plan.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, aligned16);

  cublasLtMatmulPreference_t pref;
  CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  const size_t ws = ctx.cublas_workspace_bytes;
  CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                    &ws, sizeof(ws)));
  const uint32_t aligns[4] = {static_cast<uint32_t>(align_a), static_cast<uint32_t>(align_b),
                              static_cast<uint32_t>(align_c), static_cast<uint32_t>(align_d)};
  const cublasLtMatmulPreferenceAttributes_t align_attrs[4] = {
      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
  for (int i = 0; i < 4; i++)
    CUBLAS_CHECK(
        cublasLtMatmulPreferenceSetAttribute(pref, align_attrs[i], &aligns[i], sizeof(aligns[i])));
  cublasLtMatmulHeuristicResult_t result;
  int found = 0;
  const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(
      handle, plan.desc, plan.a, plan.b, plan.c, plan.c, pref, 1, &result, &found);
  CUBLAS_CHECK(cublasLtMatmulPreferenceDestroy(pref));
  if (st == CUBLAS_STATUS_SUCCESS && found > 0) {
    plan.algo = result.algo;
    plan.ok = true;
  }
  return plan;
}

// D = A·B (as the kind lays them out) + beta·C through cuBLASLt with the kind's epilogue;
// `extra` is the bias (Bias, GeluAuxBias: read; BGradB: written), `aux` the pre-GELU matrix
// (GeluAuxBias: written; DGelu: read). False, with nothing written, when no algorithm fits:
// the caller then takes the unfused path.
bool lt_matmul(Context& ctx, LtKind kind, int N, int IC, int OC, const float* A, const float* B,
               float beta, const float* C, float* D, const void* extra, const void* aux) {
  if (!ctx.use_lt || N <= 0 || IC <= 0 || OC <= 0) return false;
  // cuBLASLt reads and writes the bias and aux with vector loads: 16-byte alignment only.
  if ((extra && alignment_bytes(extra) != 16) || (aux && alignment_bytes(aux) != 16)) return false;
  const LtKey key{kind,
                  N,
                  IC,
                  OC,
                  alignment_bytes(A),
                  alignment_bytes(B),
                  alignment_bytes(C),
                  alignment_bytes(D),
                  16,
                  ctx.tf32,
                  ctx.cublaslt};
  LtPlan* plan;
  {
    std::lock_guard<std::mutex> lock(lt_mutex());
    auto it = lt_plans().find(key);
    if (it == lt_plans().end()) it = lt_plans().emplace(key, make_lt_plan(ctx, key)).first;
    plan = &it->second;
  }
  if (!plan->ok) return false;
  if (extra) set_desc(plan->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, extra);
  if (aux) set_desc(plan->desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, aux);
  const float one = 1.0f;
  const cublasStatus_t status = cublasLtMatmul(
      ctx.cublaslt, plan->desc, &one, A, plan->a, B, plan->b, &beta, C, plan->c, D, plan->c,
      &plan->algo, ctx.cublas_workspace, ctx.cublas_workspace_bytes, ctx.stream);
  // An algorithm the heuristic offered may still refuse an odd shape: remember it and let
  // the caller take the unfused path (nothing was written).
  if (status == CUBLAS_STATUS_NOT_SUPPORTED) {
    plan->ok = false;
    return false;
  }
  CUBLAS_CHECK(status);
  return true;
}

}  // namespace

void matmul_forward(Context& ctx, float* out, const float* inp, const float* weight,
                    const float* bias, int N, int IC, int OC) {
  if (N <= 0 || OC <= 0) return;
  if (bias && lt_matmul(ctx, LtKind::Bias, N, IC, OC, weight, inp, 0.0f, out, out, bias, nullptr))
    return;
  const float one = 1.0f, zero = 0.0f;
  CUBLAS_CHECK(cublasSgemm(ctx.cublas, CUBLAS_OP_T, CUBLAS_OP_N, OC, N, IC, &one, weight, IC, inp,
                           IC, &zero, out, OC));
  if (bias) {
    const size_t total = static_cast<size_t>(N) * OC;
    add_bias_kernel<<<grid_for(total, 256, ctx), 256, 0, ctx.stream>>>(out, bias, N, OC);
    CUDA_CHECK_LAUNCH();
  }
}

// Fused (ctx.fuse): the bias epilogue with beta = 1 and C = residual.
void matmul_residual_forward(Context& ctx, float* out, const float* inp, const float* weight,
                             const float* bias, const float* residual, int N, int IC, int OC) {
  if (N <= 0 || OC <= 0) return;
  if ((ctx.fuse & Context::kFuseResidual) && bias && out != residual &&
      lt_matmul(ctx, LtKind::Bias, N, IC, OC, weight, inp, 1.0f, residual, out, bias, nullptr))
    return;
  matmul_forward(ctx, out, inp, weight, bias, N, IC, OC);
  residual_forward(ctx, out, residual, out, static_cast<size_t>(N) * OC);
}

// Fused (ctx.fuse): GELU_AUX_BIAS writes gelu(pre) to out and pre to the aux matrix.
void matmul_gelu_forward(Context& ctx, float* pre, float* out, const float* inp,
                         const float* weight, const float* bias, int N, int IC, int OC) {
  if (N <= 0 || OC <= 0) return;
  if ((ctx.fuse & Context::kFuseGelu) && bias &&
      lt_matmul(ctx, LtKind::GeluAuxBias, N, IC, OC, weight, inp, 0.0f, out, out, bias, pre))
    return;
  matmul_forward(ctx, pre, inp, weight, bias, N, IC, OC);
  gelu_forward(ctx, out, pre, static_cast<size_t>(N) * OC);
}

// dW += doutᵀ·inp and dbias += Σ_n dout, each when given. Fused (ctx.fuse): the BGRADB
// epilogue writes Σ_n dout to scratch during the dW GEMM, one small add follows; otherwise
// our deterministic column sum.
void matmul_backward_weight(Context& ctx, float* dweight, float* dbias, const float* dout,
                            const float* inp, int N, int IC, int OC) {
  if (!dweight) {
    if (dbias) column_sum_add(ctx, dbias, Dout{dout, OC}, N, OC);
    return;
  }
  if ((ctx.fuse & Context::kFuseBGrad) && dbias) {
    float* dbias_step = static_cast<float*>(ctx.scratch(align256(sizeof(float) * OC)));
    if (lt_matmul(ctx, LtKind::BGradB, N, IC, OC, inp, dout, 1.0f, dweight, dweight, dbias_step,
                  nullptr)) {
      add_inplace(ctx, dbias, dbias_step, static_cast<size_t>(OC));
      return;
    }
  }
  const float one = 1.0f;
  CUBLAS_CHECK(cublasSgemm(ctx.cublas, CUBLAS_OP_N, CUBLAS_OP_T, IC, OC, N, &one, inp, IC, dout, OC,
                           &one, dweight, IC));
  if (dbias) column_sum_add(ctx, dbias, Dout{dout, OC}, N, OC);
}

void matmul_backward(Context& ctx, float* dinp, float* dweight, float* dbias, const float* dout,
                     const float* inp, const float* weight, int N, int IC, int OC) {
  if (N <= 0 || IC <= 0 || OC <= 0) return;
  const float one = 1.0f, zero = 0.0f;
  if (dinp)
    CUBLAS_CHECK(cublasSgemm(ctx.cublas, CUBLAS_OP_N, CUBLAS_OP_N, IC, N, OC, &one, weight, IC,
                             dout, OC, &zero, dinp, IC));
  matmul_backward_weight(ctx, dweight, dbias, dout, inp, N, IC, OC);
}

// Fused (ctx.fuse): the DGELU epilogue applies gelu'(pre) to the dinp GEMM's result.
void matmul_gelu_backward(Context& ctx, float* dpre, float* dweight, float* dbias,
                          const float* dout, const float* inp, const float* pre,
                          const float* weight, int N, int IC, int OC) {
  if (N <= 0 || IC <= 0 || OC <= 0) return;
  if ((ctx.fuse & Context::kFuseDGelu) &&
      lt_matmul(ctx, LtKind::DGelu, N, IC, OC, weight, dout, 0.0f, dpre, dpre, nullptr, pre)) {
    matmul_backward_weight(ctx, dweight, dbias, dout, inp, N, IC, OC);
    return;
  }
  matmul_backward(ctx, dpre, dweight, dbias, dout, inp, weight, N, IC, OC);
  gelu_backward(ctx, dpre, pre, dpre, static_cast<size_t>(N) * IC);
}

}  // namespace hh::cuda
