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
// adds it afterwards. dbias is our own deterministic column sum.
//
// Tuned (HH_CUDA_LT_TUNE=1, off by default): a plan asks the heuristic for up to
// kTuneCandidates algorithms, times each on the call's own operands (the products are
// idempotent: out never aliases an input) and keeps the fastest; forward products without
// a bias then take cuBLASLt too (EPILOGUE_DEFAULT), so the LM head is tuned as well. The
// pick is made by the clock, so two runs may pick differently and differ in the last bits.
//
// Few rows (HH_CUDA_SKINNY=1, off by default; written without a GPU, unmeasured): a decode
// step multiplies 64 rows by each weight matrix, where cuBLAS runs a general GEMM kernel
// (and split-K). skinny_matmul_kernel gives each block 32 output columns and all rows; its
// 8 warps split K, each accumulating the rows × 32 tile on TF32 tensor cores (WMMA
// m16n16k8, x rows as matrix_a, W rows as a column-major matrix_b, as attention_flash_tc.cu's
// mma_abt); the 8 partial tiles meet in shared memory, every output adds them in warp order,
// then the bias and the residual (deterministic, no atomics). W is read once; x, M·K floats,
// once per block from L2. Taken for 16, 32, 48 or 64 rows, K a multiple of 64, and output
// widths that give at least half the GPU's SMs a block (qkv, fc and the LM head at 124M; at
// 64 rows x is re-read from L2 twice the weight's bytes, whatever the width); the 768-wide
// projections stay with cuBLAS. scripts/skinny_check.py replays the addressing in numpy.
//
// fp16 decode step (ops.h's matmul_forward_half and matmul_gelu_forward_half, taken by the
// generator under HH_CUDA_DECODE_FP16=1; written without a GPU, unmeasured): cuBLASLt with
// fp16 A and B, fp32 accumulation (CUBLAS_COMPUTE_32F), fp32 C and D with the BIAS epilogue
// (fp32 bias; the residual as C with beta 1), or fp16 D with GELU_BIAS (fp16 bias) for the
// MLP's first layer, whose output is the next product's fp16 input. Half the weight bytes of
// TF32 at the same 10 mantissa bits. No fallback: without a cuBLASLt algorithm they throw.
//
// Fused (ops.h's matmul_residual_forward, on unless HH_CUDA_FUSE=0): the residual add rides
// in the same BIAS epilogue with beta = 1 and C = residual. Measured on an H100
// (2026-11-27, 124M step): this saves 0.7 ms of 62; cuBLASLt's GELU_AUX_BIAS and DGELU
// epilogues cost 0.6 and 1.4 ms more than gelu.cu's kernels (fp32 epilogues run as a
// separate pass), and BGRADB saved nothing over our column sum, so those are not used.
#include <mma.h>

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

// Largest power of two (up to 16) dividing the address: cuBLASLt picks kernels by it
// (2 only for fp16 operands; a float pointer is always 4-aligned).
int alignment_bytes(const void* p) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  int align = 16;
  while (align > 2 && (a % align) != 0) align /= 2;
  return align;
}

// The cuBLASLt GEMM (layouts as above, column-major view):
//   outᵀ = W·inpᵀ + bias + beta·C      (beta 0; or 1 with C = residual)
// One plan per (shape, alignments, tf32): descriptors and the heuristic's algorithm,
// made once and reused (the heuristic query costs far more than the GEMM's launch).
struct LtPlan {
  bool ok = false;
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo;
};

// What a plan multiplies: fp32 (TF32 unless HH_CUDA_TF32=0), or the fp16 decode step's
// products: fp16 A and B into fp32 C and D (BIAS epilogue, fp32 bias), or into fp16 D through
// GELU_BIAS (fp16 bias).
enum LtMode : int { kLtFloat = 0, kLtHalfIn = 1, kLtHalfGelu = 2 };

// (N, IC, OC, alignment of A, B, C, D, tf32, bias, tuned, mode, handle)
using LtKey =
    std::tuple<int, int, int, int, int, int, int, bool, bool, bool, int, cublasLtHandle_t>;
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

// The operands of the call that makes a plan, for timing the candidates.
struct LtOperands {
  const void* weight;
  const void* inp;
  float beta;
  const void* C;
  void* out;
  const void* bias;
};

constexpr int kTuneCandidates = 8;

// Mean time of `reps` runs of one algorithm (after one untimed run); infinity when it
// refuses the shape.
float time_lt_algo(Context& ctx, const LtPlan& plan, const cublasLtMatmulAlgo_t& algo,
                   const LtOperands& op) {
  constexpr int reps = 10;
  const float one = 1.0f;
  auto run = [&] {
    return cublasLtMatmul(ctx.cublaslt, plan.desc, &one, op.weight, plan.a, op.inp, plan.b,
                          &op.beta, op.C, plan.c, op.out, plan.c, &algo, ctx.cublas_workspace,
                          ctx.cublas_workspace_bytes, ctx.stream);
  };
  if (run() != CUBLAS_STATUS_SUCCESS) return INFINITY;
  cudaEvent_t start, stop;
  CUDA_CHECK(cudaEventCreate(&start));
  CUDA_CHECK(cudaEventCreate(&stop));
  CUDA_CHECK(cudaEventRecord(start, ctx.stream));
  cublasStatus_t status = CUBLAS_STATUS_SUCCESS;
  for (int i = 0; i < reps && status == CUBLAS_STATUS_SUCCESS; i++) status = run();
  CUDA_CHECK(cudaEventRecord(stop, ctx.stream));
  CUDA_CHECK(cudaEventSynchronize(stop));
  float ms = 0.0f;
  CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
  CUDA_CHECK(cudaEventDestroy(start));
  CUDA_CHECK(cudaEventDestroy(stop));
  return status == CUBLAS_STATUS_SUCCESS ? ms / reps : INFINITY;
}

LtPlan make_lt_plan(Context& ctx, const LtKey& key, const LtOperands& op) {
  const auto [N, IC, OC, align_a, align_b, align_c, align_d, tf32, has_bias, tuned, mode, handle] =
      key;
  LtPlan plan;
  const cublasComputeType_t compute =
      tf32 && mode == kLtFloat ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  const cudaDataType_t ab_type = mode == kLtFloat ? CUDA_R_32F : CUDA_R_16F;
  const cudaDataType_t cd_type = mode == kLtHalfGelu ? CUDA_R_16F : CUDA_R_32F;
  CUBLAS_CHECK(cublasLtMatmulDescCreate(&plan.desc, compute, CUDA_R_32F));
  set_desc(plan.desc, CUBLASLT_MATMUL_DESC_TRANSA, CUBLAS_OP_T);
  set_desc(plan.desc, CUBLASLT_MATMUL_DESC_TRANSB, CUBLAS_OP_N);
  set_desc(plan.desc, CUBLASLT_MATMUL_DESC_EPILOGUE,
           mode == kLtHalfGelu ? CUBLASLT_EPILOGUE_GELU_BIAS
           : has_bias          ? CUBLASLT_EPILOGUE_BIAS
                               : CUBLASLT_EPILOGUE_DEFAULT);
  if (has_bias) set_desc(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, cd_type);
  // Layouts as stored (rows, cols, leading dimension), before TRANSA:
  // A = Wᵀ (IC×OC), B = inpᵀ (IC×N), C = D = outᵀ (OC×N).
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan.a, ab_type, IC, OC, IC));
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan.b, ab_type, IC, N, IC));
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan.c, cd_type, OC, N, OC));

  // The heuristic reads the bias pointer's value (never what it points to) to infer its
  // alignment. lt_matmul only takes this path for a 16-byte aligned bias, so a stand-in
  // that is 16-byte aligned and no more keeps it from picking an algorithm that needs
  // wider alignment than a later call's pointer has.
  if (has_bias)
    set_desc(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
             reinterpret_cast<const void*>(uintptr_t{16}));

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
  cublasLtMatmulHeuristicResult_t results[kTuneCandidates];
  int found = 0;
  const cublasStatus_t st =
      cublasLtMatmulAlgoGetHeuristic(handle, plan.desc, plan.a, plan.b, plan.c, plan.c, pref,
                                     tuned ? kTuneCandidates : 1, results, &found);
  CUBLAS_CHECK(cublasLtMatmulPreferenceDestroy(pref));
  if (st != CUBLAS_STATUS_SUCCESS || found <= 0) return plan;
  plan.algo = results[0].algo;
  plan.ok = true;
  // Timing synchronises the stream, which a graph capture forbids: a plan first met while
  // capturing keeps the heuristic's first choice.
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  CUDA_CHECK(cudaStreamIsCapturing(ctx.stream, &capture));
  if (!tuned || found == 1 || capture != cudaStreamCaptureStatusNone) return plan;
  if (has_bias) set_desc(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, op.bias);
  float best = INFINITY;
  for (int i = 0; i < found; i++) {
    const float ms = time_lt_algo(ctx, plan, results[i].algo, op);
    if (ms < best) {
      best = ms;
      plan.algo = results[i].algo;
    }
  }
  if (best == INFINITY) plan.ok = false;  // no candidate ran: the caller's plain path
  return plan;
}

// out = inp·Wᵀ + bias + beta·C through cuBLASLt's BIAS epilogue (bias null: no epilogue,
// tuned plans and the fp16 modes only; kLtHalfGelu: gelu(inp·Wᵀ + bias)). False, with nothing
// written, when no algorithm fits: the caller then takes the plain path (fp32), or fails.
bool lt_matmul(Context& ctx, LtMode mode, int N, int IC, int OC, const void* weight,
               const void* inp, float beta, const void* C, void* out, const void* bias) {
  if (N <= 0 || IC <= 0 || OC <= 0) return false;
  if (mode == kLtFloat && (!ctx.use_lt || (!bias && !ctx.lt_tune))) return false;
  // cuBLASLt reads the bias with vector loads: 16-byte alignment only.
  if (bias && alignment_bytes(bias) != 16) return false;
  const LtKey key{N,
                  IC,
                  OC,
                  alignment_bytes(weight),
                  alignment_bytes(inp),
                  alignment_bytes(C),
                  alignment_bytes(out),
                  ctx.tf32,
                  bias != nullptr,
                  ctx.lt_tune,
                  mode,
                  ctx.cublaslt};
  LtPlan* plan;
  {
    std::lock_guard<std::mutex> lock(lt_mutex());
    auto it = lt_plans().find(key);
    if (it == lt_plans().end())
      it = lt_plans().emplace(key, make_lt_plan(ctx, key, {weight, inp, beta, C, out, bias})).first;
    plan = &it->second;
  }
  if (!plan->ok) return false;
  if (bias) set_desc(plan->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, bias);
  const float one = 1.0f;
  const cublasStatus_t status = cublasLtMatmul(
      ctx.cublaslt, plan->desc, &one, weight, plan->a, inp, plan->b, &beta, C, plan->c, out,
      plan->c, &plan->algo, ctx.cublas_workspace, ctx.cublas_workspace_bytes, ctx.stream);
  // An algorithm the heuristic offered may still refuse an odd shape: remember it and let
  // the caller take the plain path (nothing was written).
  if (status == CUBLAS_STATUS_NOT_SUPPORTED) {
    plan->ok = false;
    return false;
  }
  CUBLAS_CHECK(status);
  return true;
}

constexpr int kSkinnyWarps = 8, kSkinnyCols = 32;
using SkinnyA = nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 8,
                                       nvcuda::wmma::precision::tf32, nvcuda::wmma::row_major>;
using SkinnyB = nvcuda::wmma::fragment<nvcuda::wmma::matrix_b, 16, 16, 8,
                                       nvcuda::wmma::precision::tf32, nvcuda::wmma::col_major>;
using SkinnyAcc = nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 8, float>;

template <typename Frag>
__device__ __forceinline__ void to_tf32(Frag& f) {
#pragma unroll
  for (int i = 0; i < f.num_elements; i++) f.x[i] = nvcuda::wmma::__float_to_tf32(f.x[i]);
}

// grid OC/32, block 8 warps; rows M = 16·RT; dynamic shared memory 8·M·32 floats.
// out[m, n] = Σ_k x[m, k]·w[n, k] (+ bias[n]) (+ residual[m, n]); out is not residual
// (ops.h defines the in-place product as matmul then add: 2·(x·Wᵀ + b), not this sum).
template <int RT>
__global__ void __launch_bounds__(kSkinnyWarps * 32)
    skinny_matmul_kernel(float* out, const float* x, const float* w, const float* bias,
                         const float* residual, int K, int OC) {
  namespace wmma = nvcuda::wmma;
  wait_for_previous_kernel();                        // launched with launch(): see common.cuh
  extern __shared__ __align__(128) float partial[];  // [warp][16·RT rows][32 columns]
  constexpr int CT = kSkinnyCols / 16, BM = 16 * RT;
  const int warp = threadIdx.x / 32;
  const int n0 = blockIdx.x * kSkinnyCols;
  const int kw = K / kSkinnyWarps;  // a multiple of 8
  const float* xw = x + static_cast<size_t>(warp) * kw;
  const float* ww = w + static_cast<size_t>(n0) * K + static_cast<size_t>(warp) * kw;
  SkinnyAcc acc[RT][CT];
#pragma unroll
  for (int r = 0; r < RT; r++)
#pragma unroll
    for (int c = 0; c < CT; c++) wmma::fill_fragment(acc[r][c], 0.0f);
#pragma unroll 2
  for (int k = 0; k < kw; k += 8) {
    SkinnyB fb[CT];
#pragma unroll
    for (int c = 0; c < CT; c++) {
      wmma::load_matrix_sync(fb[c], ww + static_cast<size_t>(16 * c) * K + k, K);
      to_tf32(fb[c]);
    }
#pragma unroll
    for (int r = 0; r < RT; r++) {
      SkinnyA fa;
      wmma::load_matrix_sync(fa, xw + static_cast<size_t>(16 * r) * K + k, K);
      to_tf32(fa);
#pragma unroll
      for (int c = 0; c < CT; c++) wmma::mma_sync(acc[r][c], fa, fb[c], acc[r][c]);
    }
  }
  float* mine = partial + warp * BM * kSkinnyCols;
#pragma unroll
  for (int r = 0; r < RT; r++)
#pragma unroll
    for (int c = 0; c < CT; c++)
      wmma::store_matrix_sync(mine + 16 * r * kSkinnyCols + 16 * c, acc[r][c], kSkinnyCols,
                              wmma::mem_row_major);
  __syncthreads();
  for (int i = threadIdx.x; i < BM * kSkinnyCols; i += blockDim.x) {
    float s = 0.0f;
#pragma unroll
    for (int v = 0; v < kSkinnyWarps; v++) s += partial[v * BM * kSkinnyCols + i];
    const int n = n0 + i % kSkinnyCols;
    const size_t at = static_cast<size_t>(i / kSkinnyCols) * OC + n;
    if (bias) s += bias[n];
    if (residual) s += residual[at];
    out[at] = s;
  }
}

template <int RT>
void launch_skinny(Context& ctx, float* out, const float* inp, const float* weight,
                   const float* bias, const float* residual, int IC, int OC) {
  const size_t shared = sizeof(float) * kSkinnyWarps * 16 * RT * kSkinnyCols;  // 64 KiB at RT 4
  static const bool opted_in = [&] {
    CUDA_CHECK(cudaFuncSetAttribute(skinny_matmul_kernel<RT>,
                                    cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(shared)));
    return true;
  }();
  (void)opted_in;
  launch(ctx, skinny_matmul_kernel<RT>, OC / kSkinnyCols, kSkinnyWarps * 32, shared, out, inp,
         weight, bias, residual, IC, OC);
}

// The few-rows path, when the switch is on and the shape and pointers fit; false otherwise
// (nothing written).
bool skinny_matmul(Context& ctx, float* out, const float* inp, const float* weight,
                   const float* bias, const float* residual, int N, int IC, int OC) {
  if (!ctx.skinny || !ctx.tf32 || N % 16 != 0 || N < 16 || N > 64) return false;
  if (IC % (8 * kSkinnyWarps) != 0 || OC % kSkinnyCols != 0) return false;
  if (OC / kSkinnyCols < ctx.num_sms / 2) return false;  // too few blocks: cuBLAS splits K
  // WMMA loads need 32-byte aligned rows: the bases here, IC % 64 for the row offsets.
  if (reinterpret_cast<uintptr_t>(inp) % 32 != 0 || reinterpret_cast<uintptr_t>(weight) % 32 != 0)
    return false;
  switch (N / 16) {
    case 1:
      launch_skinny<1>(ctx, out, inp, weight, bias, residual, IC, OC);
      break;
    case 2:
      launch_skinny<2>(ctx, out, inp, weight, bias, residual, IC, OC);
      break;
    case 3:
      launch_skinny<3>(ctx, out, inp, weight, bias, residual, IC, OC);
      break;
    default:
      launch_skinny<4>(ctx, out, inp, weight, bias, residual, IC, OC);
      break;
  }
  return true;
}

}  // namespace

void matmul_forward(Context& ctx, float* out, const float* inp, const float* weight,
                    const float* bias, int N, int IC, int OC) {
  if (N <= 0 || OC <= 0) return;
  if (skinny_matmul(ctx, out, inp, weight, bias, nullptr, N, IC, OC)) return;
  if (lt_matmul(ctx, kLtFloat, N, IC, OC, weight, inp, 0.0f, out, out, bias)) return;
  const float one = 1.0f, zero = 0.0f;
  CUBLAS_CHECK(cublasSgemm(ctx.cublas, CUBLAS_OP_T, CUBLAS_OP_N, OC, N, IC, &one, weight, IC, inp,
                           IC, &zero, out, OC));
  if (bias) {
    const size_t total = static_cast<size_t>(N) * OC;
    add_bias_kernel<<<grid_for(total, 256, ctx), 256, 0, ctx.stream>>>(out, bias, N, OC);
    CUDA_CHECK_LAUNCH();
  }
}

// Fused (ctx.fuse, the default): the bias epilogue with beta = 1 and C = residual.
void matmul_residual_forward(Context& ctx, float* out, const float* inp, const float* weight,
                             const float* bias, const float* residual, int N, int IC, int OC) {
  if (N <= 0 || OC <= 0) return;
  if (ctx.fuse && out != residual &&
      skinny_matmul(ctx, out, inp, weight, bias, residual, N, IC, OC))
    return;
  if (ctx.fuse && bias && out != residual &&
      lt_matmul(ctx, kLtFloat, N, IC, OC, weight, inp, 1.0f, residual, out, bias))
    return;
  matmul_forward(ctx, out, inp, weight, bias, N, IC, OC);
  residual_forward(ctx, out, residual, out, static_cast<size_t>(N) * OC);
}

void matmul_forward_half(Context& ctx, float* out, const void* inp, const void* weight,
                         const float* bias, const float* residual, int N, int IC, int OC) {
  if (N <= 0 || OC <= 0) return;
  HH_CHECK(out != residual, "matmul_forward_half: out may not alias residual");
  HH_CHECK(lt_matmul(ctx, kLtHalfIn, N, IC, OC, weight, inp, residual ? 1.0f : 0.0f,
                     residual ? residual : out, out, bias),
           "matmul_forward_half: cuBLASLt has no fp16 -> fp32 algorithm for ", N, " x ", IC, " x ",
           OC, " (needed by HH_CUDA_DECODE_FP16=1)");
}

void matmul_gelu_forward_half(Context& ctx, void* out, const void* inp, const void* weight,
                              const void* bias, int N, int IC, int OC) {
  if (N <= 0 || OC <= 0) return;
  HH_CHECK(bias != nullptr, "matmul_gelu_forward_half: the bias is required");
  HH_CHECK(lt_matmul(ctx, kLtHalfGelu, N, IC, OC, weight, inp, 0.0f, out, out, bias),
           "matmul_gelu_forward_half: cuBLASLt has no fp16 GELU_BIAS algorithm for ", N, " x ", IC,
           " x ", OC, " (needed by HH_CUDA_DECODE_FP16=1)");
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
