// Flash attention on TF32 tensor cores (HH_CUDA_FLASH=2): the math of attention.cu and
// attention_flash.cu, the same `saved` = lse[B][NH][T], never a T×T matrix in memory,
// and every product (QKᵀ, P·V, dO·Vᵀ, dS·K, Pᵀ·dO, dSᵀ·Q) on tensor cores through the
// WMMA API (nvcuda::wmma, precision::tf32, m16n16k8, fp32 accumulation).
//
// Supported (flash_tc_supported): hs ∈ {16, 32, 48, 64} (GPT-2: 64), any T ≥ 1,
// any lengths, TF32 allowed (HH_CUDA_TF32 not 0), and the kernels' shared memory within the
// device's opt-in limit. Everything else runs the cuBLAS path of attention.cu, so every
// shape still works (and HH_CUDA_TF32=0 keeps its promise of exact fp32 products).
//
// Why WMMA and not mma.sync PTX: the fragment layout is opaque, but load_matrix_sync /
// store_matrix_sync / mma_sync are documented on plain row- or column-major tiles in
// shared memory, so every product below is "tile in shared memory → tile in shared
// memory" and its indexing can be checked on the CPU (scripts/flash_tc_check.py replays
// the tiling, masks and loops of this file in numpy). Operands are rounded with
// wmma::__float_to_tf32 on the loaded fragment elements (as the CUDA guide does): the
// same round-to-nearest TF32 operands as cuBLAS's TF32 path, fp32 accumulation.
//
// Work layout, shared by all three kernels: a block of kWarps = 4 warps owns a tile of
// kTile = 64 rows (queries in the forward and dq kernels, keys in the dk/dv kernel); warp
// w owns rows [16w, 16w + 16) of it and walks the other side in tiles of kTile rows. A
// warp's products produce only its own 16 rows (16×64 scores, 16×hs outputs), and its
// row-wise steps (softmax, masks, dS) touch only those rows, so inside one tile only
// __syncwarp is needed; __syncthreads only guards the staging of the shared tiles.
// Element-wise steps: lane l handles row r = l % 16 of its warp's 16 and half l / 16 of
// the columns (two lanes per row; row reductions combine the halves with one shuffle);
// the lane visits its 32 columns in a rotated order (see rotated_col) so that the 32
// lanes hit 32 different banks.
//
// Masks (b: the sequence, L = lengths[b] clamped to [0, T]): entry (query t, key s) is live
// iff s ≤ t and t < L (which implies s < L). Rows beyond L (and beyond T in the last
// tile) are staged as zeros, so padded q/k/v/dout never enter a product, not even as
// 0·x (a NaN or Inf there could not leak either). Masked P and dS are exactly 0.
// Outputs: out and dqkv rows t ≥ L are written as exact zeros, lse 0 there, like the
// other paths; every row t < T of every head is written (overwrite, no accumulation).
//
// Forward (grid ⌈T/64⌉ × NH × B, query tiles last-first: the last ones have the most keys):
//   for each key tile k0 < min(q0 + 64, L) (causal: no tile past the diagonal):
//     S = Q·Kᵀ (wmma → shared), then per row on CUDA cores: s = scale·S, masked → −inf,
//     m_new = max(m, max s), α = exp(m − m_new), P = exp(s − m_new), l = α·l + Σ P;
//     O (fp32, in shared memory) rows ·= α; O += P·V (wmma, accumulator loaded from and
//     stored back to shared memory: the accumulator's register layout is opaque, so the
//     per-row rescale cannot be done on the fragment itself).
//   out = O / l, lse = m + log l (exactly the convention of the other paths).
// Backward (no atomics, fixed loop orders: deterministic):
//   D_t = dout_t · out_t (flash_tc_d_kernel; `out` is the forward's output), then
//   (a) dq kernel, per query tile: for each key tile up to the diagonal: S = Q·Kᵀ,
//       dP = dO·Vᵀ (wmma), P = exp(scale·S − lse_t), dS = P∘(dP − D_t) (0 where masked),
//       dQ += dS·K (fragments in registers across the loop); dq = scale·dQ.
//   (b) dk/dv kernel, per key tile: for each query tile from the diagonal to L:
//       Sᵀ = K·Qᵀ, dPᵀ = V·dOᵀ, Pᵀ and dSᵀ as above, dV += Pᵀ·dO, dK += dSᵀ·Q;
//       dk = scale·dK, dv = dV.
// Shared memory (floats; ld = hs + 4 and 64 + 4, see kPad): forward Q, K, V, O tiles of
// 64×(hs+4) and S of 64×68, plus 64 floats for 1/l: hs = 64: 5·64·68·4 B + 256 B = 87,296 B.
// dq kernel: Q, dO, K, V (64×(hs+4)) + S, dP (64×68) + lse, D: 104,960 B at hs = 64.
// dk/dv kernel: K, V, Q, dO + Sᵀ, dPᵀ + lse, D of the query tile: the same 104,960 B.
// All above 48 KiB: opted in with cudaFuncSetAttribute (H100: up to 227 KiB per block).
#include <mma.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "common.cuh"
#include "cuda_ops.cuh"

namespace hh::cuda {
namespace {

using namespace nvcuda;

constexpr int kTile = 64;           // rows per block tile and per tile of the other side
constexpr int kWarps = kTile / 16;  // each warp owns 16 rows
constexpr int kThreads = 32 * kWarps;
constexpr int kMaxHeadSize = 64;  // see with_head_size
// Row padding: ld ≡ 4 or 20 (mod 32) for every supported hs, so the 8 rows × 4 columns a
// tf32 fragment load touches fall in 32 different banks; ld stays a multiple of 4 floats
// (WMMA's rule for 32-bit types) and every 16-row / 8-column tile start stays 32-byte
// aligned (WMMA's pointer rule): 16·ld·4 B and 8·4 B are multiples of 32.
constexpr int kPad = 4;
constexpr int kLdS = kTile + kPad;  // the 64-wide score tiles

using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major>;
using FragBRow = wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::row_major>;
using FragBCol = wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::col_major>;
using FragAcc = wmma::fragment<wmma::accumulator, 16, 16, 8, float>;

template <typename Frag>
__device__ __forceinline__ void round_tf32(Frag& f) {
#pragma unroll
  for (int i = 0; i < f.num_elements; i++) f.x[i] = wmma::__float_to_tf32(f.x[i]);
}

// acc[n] += A · Xᵀ for the 16 rows at `a` (row-major, ld lda, K columns) and the 16·N rows
// of X at `x` (row-major, ld ldx, K columns): the 16×16 block n of A·Xᵀ uses X's rows
// [16n, 16n + 16). Xᵀ as a K×16 matrix_b is column-major with the same ld: element (k, j)
// of block n sits at x[(16n + j)·ldx + k].
template <int N, int K>
__device__ __forceinline__ void mma_abt(FragAcc (&acc)[N], const float* a, int lda, const float* x,
                                        int ldx) {
#pragma unroll
  for (int k = 0; k < K; k += 8) {
    FragA fa;
    wmma::load_matrix_sync(fa, a + k, lda);
    round_tf32(fa);
#pragma unroll
    for (int n = 0; n < N; n++) {
      FragBCol fb;
      wmma::load_matrix_sync(fb, x + n * 16 * ldx + k, ldx);
      round_tf32(fb);
      wmma::mma_sync(acc[n], fa, fb, acc[n]);
    }
  }
}

// acc[n] += A · Y for the 16 rows at `a` (row-major, ld lda, K columns) and Y (K rows,
// row-major, ld ldy): block n covers Y's columns [16n, 16n + 16), element (k, j) at
// y[k·ldy + 16n + j].
template <int N, int K>
__device__ __forceinline__ void mma_ab(FragAcc (&acc)[N], const float* a, int lda, const float* y,
                                       int ldy) {
#pragma unroll
  for (int k = 0; k < K; k += 8) {
    FragA fa;
    wmma::load_matrix_sync(fa, a + k, lda);
    round_tf32(fa);
#pragma unroll
    for (int n = 0; n < N; n++) {
      FragBRow fb;
      wmma::load_matrix_sync(fb, y + k * ldy + n * 16, ldy);
      round_tf32(fb);
      wmma::mma_sync(acc[n], fa, fb, acc[n]);
    }
  }
}

template <int N>
__device__ __forceinline__ void zero(FragAcc (&acc)[N]) {
#pragma unroll
  for (int n = 0; n < N; n++) wmma::fill_fragment(acc[n], 0.0f);
}

template <int N>
__device__ __forceinline__ void store(float* dst, int ld, const FragAcc (&acc)[N]) {
#pragma unroll
  for (int n = 0; n < N; n++)
    wmma::store_matrix_sync(dst + n * 16, acc[n], ld, wmma::mem_row_major);
}

// Column j-th visited by lane (row r, half) among the W columns [half·W, half·W + W):
// a rotation of 0..W-1, so the lane still visits each of its columns exactly once. With
// W = 32 and ld ≡ 4 (mod 32) the bank of (r, c) is 4r + c ≡ 5r + 16·half + j (mod 32): 32
// distinct banks over the 32 lanes for every j.
template <int W>
__device__ __forceinline__ int rotated_col(int j, int r, int half) {
  return half * W + (j + r + 16 * half) % W;
}

// Stages rows [first, first + kTile) of one head's slice (row stride `stride` floats,
// columns [0, HS)) into tile[kTile][HS + kPad]: rows ≥ limit become 0. Consecutive
// threads read consecutive columns (coalesced); unrolled so that several loads are in
// flight at once (the trip count kTile·HS/kThreads is a constant: 32 at hs = 64; 8 at a
// time spills the dk/dv kernel at hs = 64).
template <int HS>
__device__ __forceinline__ void stage(float* tile, const float* base, size_t stride, int first,
                                      int limit) {
  constexpr int ld = HS + kPad;
#pragma unroll 4
  for (int i = threadIdx.x; i < kTile * HS; i += kThreads) {
    const int r = i / HS, c = i % HS;
    const int row = first + r;
    tile[r * ld + c] = row < limit ? base[static_cast<size_t>(row) * stride + c] : 0.0f;
  }
}

template <int HS>
struct ForwardSmem {
  static constexpr int ld = HS + kPad;
  static constexpr int q = 0, k = q + kTile * ld, v = k + kTile * ld, o = v + kTile * ld,
                       s = o + kTile * ld, inv_l = s + kTile * kLdS, floats = inv_l + kTile;
  static constexpr size_t bytes = sizeof(float) * floats;
};

template <int HS>
struct BackwardSmem {  // dq kernel: a = Q, b = dO (own rows), c = K, d = V (the walked tile);
                       // dk/dv kernel: a = K, b = V (own rows), c = Q, d = dO (walked)
  static constexpr int ld = HS + kPad;
  static constexpr int a = 0, b = a + kTile * ld, c = b + kTile * ld, d = c + kTile * ld,
                       s = d + kTile * ld, dp = s + kTile * kLdS, lse = dp + kTile * kLdS,
                       dd = lse + kTile, floats = dd + kTile;
  static constexpr size_t bytes = sizeof(float) * floats;
};

// Forward. grid (⌈T/64⌉, NH, B), kThreads threads, ForwardSmem<HS>::bytes dynamic shared.
template <int HS>
__global__ void __launch_bounds__(kThreads)
    flash_tc_forward_kernel(float* out, float* lse, const float* qkv, const int32_t* lengths, int T,
                            int C, int NH, float scale) {
  using S = ForwardSmem<HS>;
  constexpr int ld = S::ld;
  extern __shared__ __align__(128) float smem[];
  float* qs = smem + S::q;
  float* ks = smem + S::k;
  float* vs = smem + S::v;
  float* os = smem + S::o;
  float* ss = smem + S::s;
  float* inv_l = smem + S::inv_l;

  const int b = blockIdx.z, h = blockIdx.y;
  const int q0 = (gridDim.x - 1 - blockIdx.x) * kTile;
  const int L = min(max(lengths[b], 0), T);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const size_t stride = 3 * static_cast<size_t>(C);
  const float* q_base = qkv + static_cast<size_t>(b) * T * stride + h * HS;
  float* out_base = out + static_cast<size_t>(b) * T * C + h * HS;
  float* lse_base = lse + (static_cast<size_t>(b) * NH + h) * T;
  const int rows = min(kTile, T - q0);  // rows of this tile inside the sequence buffer

  if (q0 >= L) {  // the whole tile is padding (uniform over the block: no barrier skipped)
    for (int i = threadIdx.x; i < rows * HS; i += kThreads)
      out_base[static_cast<size_t>(q0 + i / HS) * C + i % HS] = 0.0f;
    for (int i = threadIdx.x; i < rows; i += kThreads) lse_base[q0 + i] = 0.0f;
    return;
  }

  stage<HS>(qs, q_base, stride, q0, L);
  for (int i = threadIdx.x; i < kTile * ld; i += kThreads) os[i] = 0.0f;

  const int r = lane % 16, half = lane / 16;  // this lane's row of the warp's 16, and half
  const int row = warp * 16 + r;              // row in the tile
  const int t = q0 + row;                     // its query position
  float m = -INFINITY, l = 0.0f;              // both lanes of a row hold the same values
  float* s_warp = ss + warp * 16 * kLdS;
  float* o_warp = os + warp * 16 * ld;

  const int key_end = min(q0 + kTile, L);  // causal: keys ≤ the tile's last query, and < L
  for (int k0 = 0; k0 < key_end; k0 += kTile) {
    __syncthreads();  // the previous tile's K, V are no longer read (and Q, O are staged)
    stage<HS>(ks, q_base + C, stride, k0, L);
    stage<HS>(vs, q_base + 2 * C, stride, k0, L);
    __syncthreads();

    {  // S = Q·Kᵀ for this warp's 16 rows × 64 keys
      FragAcc acc[kTile / 16];
      zero(acc);
      mma_abt<kTile / 16, HS>(acc, qs + warp * 16 * ld, ld, ks, ld);
      store(s_warp, kLdS, acc);
    }
    __syncwarp();

    // Online softmax of row `row` over this key tile: the two halves' max and sum combined.
    float mx = -INFINITY;
#pragma unroll 8
    for (int j = 0; j < 32; j++) {
      const int c = rotated_col<32>(j, r, half);
      const int s = k0 + c;
      if (s <= t && t < L) mx = fmaxf(mx, scale * s_warp[r * kLdS + c]);
    }
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 16));
    const float m_new = fmaxf(m, mx);
    // m_new = −inf only for a row with no live key yet (rows t ≥ L: every tile); a live row
    // sees key 0 in the first tile, so from then on m_new is finite and α = exp(m − m_new)
    // (exp(−inf) = 0 on the first tile, where O and l are 0 anyway).
    const float alpha = m_new == -INFINITY ? 1.0f : __expf(m - m_new);
    float sum = 0.0f;
#pragma unroll 8
    for (int j = 0; j < 32; j++) {
      const int c = rotated_col<32>(j, r, half);
      const int s = k0 + c;
      float* p = &s_warp[r * kLdS + c];
      const float e = (s <= t && t < L) ? __expf(scale * *p - m_new) : 0.0f;
      *p = e;
      sum += e;
    }
    sum += __shfl_xor_sync(0xffffffffu, sum, 16);
    l = alpha * l + sum;
    m = m_new;
#pragma unroll
    for (int j = 0; j < HS / 2; j++) o_warp[r * ld + rotated_col<HS / 2>(j, r, half)] *= alpha;
    __syncwarp();

    {  // O += P·V for this warp's 16 rows (accumulator through shared memory)
      FragAcc acc[HS / 16];
#pragma unroll
      for (int n = 0; n < HS / 16; n++)
        wmma::load_matrix_sync(acc[n], o_warp + n * 16, ld, wmma::mem_row_major);
      mma_ab<HS / 16, kTile>(acc, s_warp, kLdS, vs, ld);
      store(o_warp, ld, acc);
    }
    __syncwarp();
  }

  // out = O / l (0 for padded rows), lse = m + log l (0 for padded rows).
  const bool live = t < L;
  if (half == 0) {
    inv_l[row] = live ? 1.0f / l : 0.0f;
    if (t < T) lse_base[t] = live ? m + __logf(l) : 0.0f;
  }
  __syncwarp();
  for (int i = lane; i < 16 * HS; i += 32) {  // the warp's 16 rows, lanes along the columns
    const int rr = warp * 16 + i / HS, c = i % HS;
    if (q0 + rr < T) out_base[static_cast<size_t>(q0 + rr) * C + c] = os[rr * ld + c] * inv_l[rr];
  }
}

// D[b][h][t] = dout_t · out_t over the head's hs columns (0 for padded rows): one warp per
// (b, t, h), lanes along the columns, a fixed-order warp sum.
__global__ void flash_tc_d_kernel(float* D, const float* dout, const float* out,
                                  const int32_t* lengths, int B, int T, int C, int NH) {
  const size_t warp = (static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (warp >= static_cast<size_t>(B) * T * NH) return;
  const int h = static_cast<int>(warp % NH);
  const size_t bt = warp / NH;  // b·T + t
  const int b = static_cast<int>(bt / T), t = static_cast<int>(bt % T);
  const int hs = C / NH;
  const int L = min(max(lengths[b], 0), T);
  float acc = 0.0f;
  if (t < L) {
    const float* dy = dout + bt * C + h * hs;
    const float* o = out + bt * C + h * hs;
    for (int c = lane; c < hs; c += 32) acc += dy[c] * o[c];
  }
  acc = warp_sum(acc);
  if (lane == 0) D[(static_cast<size_t>(b) * NH + h) * T + t] = acc;
}

// Backward (a): dq. grid (⌈T/64⌉, NH, B), query tiles last-first.
template <int HS>
__global__ void __launch_bounds__(kThreads)
    flash_tc_dq_kernel(float* dqkv, const float* dout, const float* qkv, const float* lse,
                       const float* D, const int32_t* lengths, int T, int C, int NH, float scale) {
  using S = BackwardSmem<HS>;
  constexpr int ld = S::ld;
  extern __shared__ __align__(128) float smem[];
  float* qs = smem + S::a;
  float* dys = smem + S::b;
  float* ks = smem + S::c;
  float* vs = smem + S::d;
  float* ss = smem + S::s;
  float* dps = smem + S::dp;

  const int b = blockIdx.z, h = blockIdx.y;
  const int q0 = (gridDim.x - 1 - blockIdx.x) * kTile;
  const int L = min(max(lengths[b], 0), T);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const size_t stride = 3 * static_cast<size_t>(C);
  const float* q_base = qkv + static_cast<size_t>(b) * T * stride + h * HS;
  const float* dy_base = dout + static_cast<size_t>(b) * T * C + h * HS;
  float* dq_base = dqkv + static_cast<size_t>(b) * T * stride + h * HS;
  const size_t stat = (static_cast<size_t>(b) * NH + h) * T;
  const int rows = min(kTile, T - q0);

  if (q0 >= L) {  // padding only: dq rows 0
    for (int i = threadIdx.x; i < rows * HS; i += kThreads)
      dq_base[static_cast<size_t>(q0 + i / HS) * stride + i % HS] = 0.0f;
    return;
  }

  stage<HS>(qs, q_base, stride, q0, L);
  stage<HS>(dys, dy_base, C, q0, L);

  const int r = lane % 16, half = lane / 16;
  const int row = warp * 16 + r;
  const int t = q0 + row;
  const bool live = t < L;
  const float row_lse = live ? lse[stat + t] : 0.0f;
  const float row_d = live ? D[stat + t] : 0.0f;
  float* s_warp = ss + warp * 16 * kLdS;
  float* dp_warp = dps + warp * 16 * kLdS;

  FragAcc dq[HS / 16];
  zero(dq);
  const int key_end = min(q0 + kTile, L);
  for (int k0 = 0; k0 < key_end; k0 += kTile) {
    __syncthreads();  // the previous K, V tile is no longer read (and Q, dO are staged)
    stage<HS>(ks, q_base + C, stride, k0, L);
    stage<HS>(vs, q_base + 2 * C, stride, k0, L);
    __syncthreads();
    {
      FragAcc acc[kTile / 16];
      zero(acc);
      mma_abt<kTile / 16, HS>(acc, qs + warp * 16 * ld, ld, ks, ld);  // S = Q·Kᵀ
      store(s_warp, kLdS, acc);
      zero(acc);
      mma_abt<kTile / 16, HS>(acc, dys + warp * 16 * ld, ld, vs, ld);  // dP = dO·Vᵀ
      store(dp_warp, kLdS, acc);
    }
    __syncwarp();
#pragma unroll 8
    for (int j = 0; j < 32; j++) {  // dS = P∘(dP − D), P = exp(scale·S − lse); 0 if masked
      const int c = rotated_col<32>(j, r, half);
      const int s = k0 + c;
      const int idx = r * kLdS + c;
      s_warp[idx] =
          (s <= t && live) ? __expf(scale * s_warp[idx] - row_lse) * (dp_warp[idx] - row_d) : 0.0f;
    }
    __syncwarp();
    mma_ab<HS / 16, kTile>(dq, s_warp, kLdS, ks, ld);  // dQ += dS·K
  }

  // dq = scale·dQ through this warp's own Q rows (only this warp ever reads them).
  __syncwarp();
  store(qs + warp * 16 * ld, ld, dq);
  __syncwarp();
  for (int i = lane; i < 16 * HS; i += 32) {
    const int rr = warp * 16 + i / HS, c = i % HS;
    const int tt = q0 + rr;
    if (tt < T)
      dq_base[static_cast<size_t>(tt) * stride + c] = tt < L ? scale * qs[rr * ld + c] : 0.0f;
  }
}

// Backward (b): dk, dv. grid (⌈T/64⌉, NH, B), key tiles first-first (the first keys are
// seen by the most queries).
template <int HS>
__global__ void __launch_bounds__(kThreads)
    flash_tc_dkv_kernel(float* dqkv, const float* dout, const float* qkv, const float* lse,
                        const float* D, const int32_t* lengths, int T, int C, int NH, float scale) {
  using S = BackwardSmem<HS>;
  constexpr int ld = S::ld;
  extern __shared__ __align__(128) float smem[];
  float* ks = smem + S::a;
  float* vs = smem + S::b;
  float* qs = smem + S::c;
  float* dys = smem + S::d;
  float* ss = smem + S::s;    // Sᵀ, then Pᵀ
  float* dps = smem + S::dp;  // dPᵀ, then dSᵀ
  float* lse_s = smem + S::lse;
  float* d_s = smem + S::dd;

  const int b = blockIdx.z, h = blockIdx.y;
  const int k0 = blockIdx.x * kTile;
  const int L = min(max(lengths[b], 0), T);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const size_t stride = 3 * static_cast<size_t>(C);
  const float* q_base = qkv + static_cast<size_t>(b) * T * stride + h * HS;
  const float* dy_base = dout + static_cast<size_t>(b) * T * C + h * HS;
  float* dk_base = dqkv + static_cast<size_t>(b) * T * stride + C + h * HS;
  float* dv_base = dk_base + C;
  const size_t stat = (static_cast<size_t>(b) * NH + h) * T;
  const int rows = min(kTile, T - k0);

  if (k0 >= L) {  // padding only: dk, dv rows 0
    for (int i = threadIdx.x; i < rows * HS; i += kThreads) {
      const size_t at = static_cast<size_t>(k0 + i / HS) * stride + i % HS;
      dk_base[at] = 0.0f;
      dv_base[at] = 0.0f;
    }
    return;
  }

  stage<HS>(ks, q_base + C, stride, k0, L);
  stage<HS>(vs, q_base + 2 * C, stride, k0, L);

  const int r = lane % 16, half = lane / 16;
  const int row = warp * 16 + r;
  const int s = k0 + row;  // this lane's key position
  float* st_warp = ss + warp * 16 * kLdS;
  float* dpt_warp = dps + warp * 16 * kLdS;

  FragAcc dk[HS / 16], dv[HS / 16];
  zero(dk);
  zero(dv);
  // Query tiles from the diagonal one (the tile starting at k0: tiles are aligned) to L.
  for (int t0 = k0; t0 < L; t0 += kTile) {
    __syncthreads();  // the previous Q, dO tile and its lse, D are no longer read
    stage<HS>(qs, q_base, stride, t0, L);
    stage<HS>(dys, dy_base, C, t0, L);
    for (int i = threadIdx.x; i < kTile; i += kThreads) {
      const int t = t0 + i;
      lse_s[i] = t < L ? lse[stat + t] : 0.0f;
      d_s[i] = t < L ? D[stat + t] : 0.0f;
    }
    __syncthreads();
    {
      FragAcc acc[kTile / 16];
      zero(acc);
      mma_abt<kTile / 16, HS>(acc, ks + warp * 16 * ld, ld, qs, ld);  // Sᵀ = K·Qᵀ
      store(st_warp, kLdS, acc);
      zero(acc);
      mma_abt<kTile / 16, HS>(acc, vs + warp * 16 * ld, ld, dys, ld);  // dPᵀ = V·dOᵀ
      store(dpt_warp, kLdS, acc);
    }
    __syncwarp();
#pragma unroll 8
    for (int j = 0; j < 32; j++) {  // Pᵀ and dSᵀ = Pᵀ∘(dPᵀ − D); 0 if masked
      const int c = rotated_col<32>(j, r, half);
      const int t = t0 + c;
      const int idx = r * kLdS + c;
      const bool on = s <= t && t < L;
      const float p = on ? __expf(scale * st_warp[idx] - lse_s[c]) : 0.0f;
      dpt_warp[idx] = on ? p * (dpt_warp[idx] - d_s[c]) : 0.0f;
      st_warp[idx] = p;
    }
    __syncwarp();
    mma_ab<HS / 16, kTile>(dv, st_warp, kLdS, dys, ld);  // dV += Pᵀ·dO
    mma_ab<HS / 16, kTile>(dk, dpt_warp, kLdS, qs, ld);  // dK += dSᵀ·Q
  }

  // dk = scale·dK, dv = dV through this warp's own K, V rows (only this warp reads them).
  __syncwarp();
  store(ks + warp * 16 * ld, ld, dk);
  store(vs + warp * 16 * ld, ld, dv);
  __syncwarp();
  for (int i = lane; i < 16 * HS; i += 32) {
    const int rr = warp * 16 + i / HS, c = i % HS;
    const int ss_ = k0 + rr;
    if (ss_ < T) {
      const size_t at = static_cast<size_t>(ss_) * stride + c;
      dk_base[at] = ss_ < L ? scale * ks[rr * ld + c] : 0.0f;
      dv_base[at] = ss_ < L ? vs[rr * ld + c] : 0.0f;
    }
  }
}

// Calls f(std::integral_constant<int, HS>{}) for the supported head sizes. 80..128 would
// compile too, but ptxas spills the dk/dv kernel there (255 registers: 2·hs/16 accumulator
// fragments of 8 floats plus the operands), so they stay on the cuBLAS path for now.
template <typename F>
void with_head_size(int hs, F&& f) {
  switch (hs) {
    case 16:
      f(std::integral_constant<int, 16>{});
      break;
    case 32:
      f(std::integral_constant<int, 32>{});
      break;
    case 48:
      f(std::integral_constant<int, 48>{});
      break;
    case 64:
      f(std::integral_constant<int, 64>{});
      break;
    default:
      HH_FAIL("flash_tc: unsupported head size ", hs);
  }
}

size_t shared_bytes(int hs) {  // the larger of the forward's and the backward's
  size_t bytes = 0;
  with_head_size(hs, [&](auto v) {
    constexpr int HS = decltype(v)::value;
    bytes = std::max(ForwardSmem<HS>::bytes, BackwardSmem<HS>::bytes);
  });
  return bytes;
}

}  // namespace

bool flash_tc_supported(const Context& ctx, int T, int C, int NH) {
  if (ctx.flash != 2 || !ctx.tf32 || T <= 0 || NH <= 0 || C % NH != 0) return false;
  const int hs = C / NH;
  return hs % 16 == 0 && hs >= 16 && hs <= kMaxHeadSize && shared_bytes(hs) <= ctx.max_shared_optin;
}

void attention_flash_tc_forward(Context& ctx, float* out, float* lse, const float* qkv,
                                const int32_t* lengths, int B, int T, int C, int NH) {
  const int hs = C / NH;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
  const dim3 grid(ceil_div(T, kTile), NH, B);
  with_head_size(hs, [&](auto v) {
    constexpr int HS = decltype(v)::value;
    constexpr size_t bytes = ForwardSmem<HS>::bytes;
    CUDA_CHECK(cudaFuncSetAttribute(flash_tc_forward_kernel<HS>,
                                    cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(bytes)));
    flash_tc_forward_kernel<HS>
        <<<grid, kThreads, bytes, ctx.stream>>>(out, lse, qkv, lengths, T, C, NH, scale);
    CUDA_CHECK_LAUNCH();
  });
}

void attention_flash_tc_backward(Context& ctx, float* dqkv, const float* dout, const float* qkv,
                                 const float* out, const float* lse, const int32_t* lengths, int B,
                                 int T, int C, int NH) {
  const int hs = C / NH;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
  const dim3 grid(ceil_div(T, kTile), NH, B);
  const size_t rows = static_cast<size_t>(B) * NH * T;
  float* D = static_cast<float*>(ctx.scratch(sizeof(float) * rows));
  constexpr int kDThreads = 256;  // 8 warps, one (b, t, h) row each
  flash_tc_d_kernel<<<ceil_div(rows * 32, kDThreads), kDThreads, 0, ctx.stream>>>(
      D, dout, out, lengths, B, T, C, NH);
  CUDA_CHECK_LAUNCH();
  with_head_size(hs, [&](auto v) {
    constexpr int HS = decltype(v)::value;
    constexpr size_t bytes = BackwardSmem<HS>::bytes;
    CUDA_CHECK(cudaFuncSetAttribute(flash_tc_dq_kernel<HS>,
                                    cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(bytes)));
    flash_tc_dq_kernel<HS>
        <<<grid, kThreads, bytes, ctx.stream>>>(dqkv, dout, qkv, lse, D, lengths, T, C, NH, scale);
    CUDA_CHECK_LAUNCH();
    CUDA_CHECK(cudaFuncSetAttribute(flash_tc_dkv_kernel<HS>,
                                    cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(bytes)));
    flash_tc_dkv_kernel<HS>
        <<<grid, kThreads, bytes, ctx.stream>>>(dqkv, dout, qkv, lse, D, lengths, T, C, NH, scale);
    CUDA_CHECK_LAUNCH();
  });
}

}  // namespace hh::cuda
