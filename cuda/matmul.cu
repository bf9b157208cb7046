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
// adds it afterwards. dbias is our own deterministic column sum (the Lt BGRAD epilogues
// overwrite rather than accumulate).
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

// One cuBLASLt plan per (shape, alignment, tf32): descriptors and the heuristic's algorithm,
// made once and reused (the heuristic query costs far more than the GEMM's launch).
struct LtPlan {
  bool ok = false;
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo;
};

using LtKey = std::tuple<int, int, int, int, int, int, int, bool, cublasLtHandle_t>;
std::map<LtKey, LtPlan>& lt_plans() {
  static std::map<LtKey, LtPlan> plans;
  return plans;
}
std::mutex& lt_mutex() {
  static std::mutex m;
  return m;
}

LtPlan make_lt_plan(Context& ctx, int N, int IC, int OC, int align_w, int align_inp, int align_out,
                    int align_bias) {
  LtPlan plan;
  const cublasComputeType_t compute = ctx.tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  CUBLAS_CHECK(cublasLtMatmulDescCreate(&plan.desc, compute, CUDA_R_32F));
  const cublasOperation_t op_t = CUBLAS_OP_T, op_n = CUBLAS_OP_N;
  CUBLAS_CHECK(
      cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_t, sizeof(op_t)));
  CUBLAS_CHECK(
      cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_n, sizeof(op_n)));
  const cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BIAS;
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue,
                                              sizeof(epilogue)));
  const cudaDataType_t bias_type = CUDA_R_32F;
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
                                              &bias_type, sizeof(bias_type)));
  // Layouts as stored (column-major view): A = Wᵀ (IC×OC), B = inpᵀ (IC×N), C = outᵀ (OC×N).
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan.a, CUDA_R_32F, IC, OC, IC));
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan.b, CUDA_R_32F, IC, N, IC));
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan.c, CUDA_R_32F, OC, N, OC));

  cublasLtMatmulPreference_t pref;
  CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  const size_t ws = ctx.cublas_workspace_bytes;
  CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                    &ws, sizeof(ws)));
  const uint32_t aw = align_w, ai = align_inp, ao = align_out, ab = align_bias;
  CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &aw, sizeof(aw)));
  CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &ai, sizeof(ai)));
  CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &ao, sizeof(ao)));
  CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &ao, sizeof(ao)));
  (void)ab;  // the bias pointer's alignment has no preference attribute; it is part of the key
  cublasLtMatmulHeuristicResult_t result;
  int found = 0;
  const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(
      ctx.cublaslt, plan.desc, plan.a, plan.b, plan.c, plan.c, pref, 1, &result, &found);
  CUBLAS_CHECK(cublasLtMatmulPreferenceDestroy(pref));
  if (st == CUBLAS_STATUS_SUCCESS && found > 0) {
    plan.algo = result.algo;
    plan.ok = true;
  }
  return plan;
}

// out = inp·Wᵀ + bias through cuBLASLt's bias epilogue; false if no algorithm fits.
bool matmul_forward_lt(Context& ctx, float* out, const float* inp, const float* weight,
                       const float* bias, int N, int IC, int OC) {
  const LtKey key{N,
                  IC,
                  OC,
                  alignment_bytes(weight),
                  alignment_bytes(inp),
                  alignment_bytes(out),
                  alignment_bytes(bias),
                  ctx.tf32,
                  ctx.cublaslt};
  LtPlan* plan;
  {
    std::lock_guard<std::mutex> lock(lt_mutex());
    auto it = lt_plans().find(key);
    if (it == lt_plans().end())
      it = lt_plans()
               .emplace(key, make_lt_plan(ctx, N, IC, OC, std::get<3>(key), std::get<4>(key),
                                          std::get<5>(key), std::get<6>(key)))
               .first;
    plan = &it->second;
  }
  if (!plan->ok) return false;
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias,
                                              sizeof(bias)));
  const float one = 1.0f, zero = 0.0f;
  const cublasStatus_t status = cublasLtMatmul(
      ctx.cublaslt, plan->desc, &one, weight, plan->a, inp, plan->b, &zero, out, plan->c, out,
      plan->c, &plan->algo, ctx.cublas_workspace, ctx.cublas_workspace_bytes, ctx.stream);
  // An algorithm the heuristic offered may still refuse an odd shape: remember it and let
  // the caller take the cuBLAS path (nothing was written).
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
  // cuBLASLt reads the bias with vector loads: only 16-byte aligned biases take that path.
  if (bias && ctx.use_lt && IC > 0 && alignment_bytes(bias) == 16 &&
      matmul_forward_lt(ctx, out, inp, weight, bias, N, IC, OC))
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

void matmul_backward(Context& ctx, float* dinp, float* dweight, float* dbias, const float* dout,
                     const float* inp, const float* weight, int N, int IC, int OC) {
  if (N <= 0 || IC <= 0 || OC <= 0) return;
  const float one = 1.0f, zero = 0.0f;
  if (dinp)
    CUBLAS_CHECK(cublasSgemm(ctx.cublas, CUBLAS_OP_N, CUBLAS_OP_N, IC, N, OC, &one, weight, IC,
                             dout, OC, &zero, dinp, IC));
  if (dweight)
    CUBLAS_CHECK(cublasSgemm(ctx.cublas, CUBLAS_OP_N, CUBLAS_OP_T, IC, OC, N, &one, inp, IC, dout,
                             OC, &one, dweight, IC));
  if (dbias) column_sum_add(ctx, dbias, Dout{dout, OC}, N, OC);
}

}  // namespace hh::cuda
