// Matrix multiplication on the CPU: our own packed, cache-blocked GEMM (no BLAS).
//
// The products of a linear layer y = x·Wᵀ + b with x[N,IC], W[OC,IC] (torch's layout):
//   forward   out[N,OC]   = inp[N,IC]·W[OC,IC]ᵀ + bias   C  = A·Bᵀ + bias (bias fused)
//   backward  dinp[N,IC]  = dout[N,OC]·W[OC,IC]          C  = A·B
//             dW[OC,IC]  += dout[N,OC]ᵀ·inp[N,IC]        C += Aᵀ·B
//             dbias[OC]  += Σ_n dout[n,:]                 column sums
// The three matrix products go through one routine, gemm(): C[M,N] (+)= op(A)[M,K]·op(B)[K,N]
// where op(A) and op(B) are strided views, so a transposed operand only changes which
// packing loop copies it.
//
// Blocking scheme (Goto & van de Geijn; BLIS):
//
//   for jc over N in steps of NC:                      B block  KC×NC  (L3)
//     for pc over K in steps of KC:
//       pack B[pc:+KC, jc:+NC] into NR-wide panels      b[k*NR + j]
//       for ic over M in steps of MC:                   A block  MC×KC  (L2)
//         pack A[ic:+MC, pc:+KC] into MR-tall panels    a[k*MR + i]
//         for jr over the block in steps of NR:         B panel  KC×NR  (L1)
//           for ir over the block in steps of MR:       A panel  MR×KC  streams from L2
//             micro-kernel: the MR×NR tile of C lives in registers for all KC steps;
//             each step broadcasts MR values of A and FMAs them with NR values of B.
//
// Packing makes every operand contiguous and aligned in the order the micro-kernel reads
// it, whatever the transposition, and zero-pads the edges to whole MR/NR panels, so the
// micro-kernel never branches; edge tiles of C go through a small scratch tile.
//
// Micro-kernels: 14×32 with AVX-512 (28 zmm accumulators + 2 B vectors, A broadcast from
// memory inside the FMA) when the CPU has AVX-512F, checked at run time; otherwise 6×16
// with AVX2+FMA (12 ymm accumulators), the build's baseline.
//
// Threads: C is split into contiguous, tile-aligned ranges of rows (or of columns, when C
// has more column tiles than row tiles), one per OpenMP thread. Each thread runs the
// serial blocked GEMM on its range with its own packing buffers (thread_local, grown on
// demand, never freed per call): no barriers, no two threads write the same element.
// The shared operand is packed by every thread, which costs K·N copies against
// 2·M·N·K/threads flops: negligible for the shapes of training. Every element of C is
// summed in the same order whatever the split: results do not depend on the thread count.
//
// A forward pass with at most kFewRows rows (sampling) skips the GEMM for dot products
// that stream W once (forward_few_rows).
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <exception>

#include "core/error.h"
#include "ops/cpu/cpu_ops.h"

namespace hh::cpu {
namespace {

// A read-only strided view of a matrix: element (r, c) is data[r*row_stride + c*col_stride].
struct View {
  const float* data;
  long row_stride;
  long col_stride;
  const float* at(long r, long c) const { return data + r * row_stride + c * col_stride; }
};

// Micro-kernel contract: tile[i][j] = Σ_k a[k*MR + i]·b[k*NR + j] over kc steps, then
//   accumulate:   c[i*ldc + j] += tile[i][j]
//   otherwise:    c[i*ldc + j]  = tile[i][j] + (bias ? bias[j] : 0)
// a and b are 64-byte aligned packed panels; c is any full MR×NR tile of C.
using MicroKernel = void (*)(int kc, const float* a, const float* b, float* c, long ldc,
                             const float* bias, bool accumulate);

struct KernelConfig {
  const char* name;
  int mr, nr;      // register tile of C
  int mc, kc, nc;  // cache blocks: A block mc×kc, B block kc×nc
  MicroKernel kernel;
};

constexpr int kMaxTile = 16 * 32;  // largest MR×NR of the kernels below

// ---- AVX2 + FMA micro-kernel (baseline): MR rows × 2 ymm of 8 floats ----
template <int MR>
void kernel_avx2(int kc, const float* a, const float* b, float* c, long ldc, const float* bias,
                 bool accumulate) {
  __m256 acc0[MR], acc1[MR];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) acc0[i] = acc1[i] = _mm256_setzero_ps();
  for (int k = 0; k < kc; ++k) {
    const __m256 b0 = _mm256_load_ps(b);
    const __m256 b1 = _mm256_load_ps(b + 8);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const __m256 ai = _mm256_broadcast_ss(a + i);
      acc0[i] = _mm256_fmadd_ps(ai, b0, acc0[i]);
      acc1[i] = _mm256_fmadd_ps(ai, b1, acc1[i]);
    }
    a += MR;
    b += 16;
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
    float* ci = c + i * ldc;
    __m256 r0 = acc0[i], r1 = acc1[i];
    if (accumulate) {
      r0 = _mm256_add_ps(r0, _mm256_loadu_ps(ci));
      r1 = _mm256_add_ps(r1, _mm256_loadu_ps(ci + 8));
    } else if (bias) {
      r0 = _mm256_add_ps(r0, _mm256_loadu_ps(bias));
      r1 = _mm256_add_ps(r1, _mm256_loadu_ps(bias + 8));
    }
    _mm256_storeu_ps(ci, r0);
    _mm256_storeu_ps(ci + 8, r1);
  }
}

// ---- AVX-512 micro-kernel: MR rows × 2 zmm of 16 floats, compiled for AVX-512F only ----
template <int MR>
__attribute__((target("avx512f,avx2,fma"))) void kernel_avx512(int kc, const float* a,
                                                               const float* b, float* c, long ldc,
                                                               const float* bias, bool accumulate) {
  __m512 acc0[MR], acc1[MR];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) acc0[i] = acc1[i] = _mm512_setzero_ps();
  for (int k = 0; k < kc; ++k) {
    const __m512 b0 = _mm512_load_ps(b);
    const __m512 b1 = _mm512_load_ps(b + 16);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const __m512 ai = _mm512_set1_ps(a[i]);
      acc0[i] = _mm512_fmadd_ps(ai, b0, acc0[i]);
      acc1[i] = _mm512_fmadd_ps(ai, b1, acc1[i]);
    }
    a += MR;
    b += 32;
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
    float* ci = c + i * ldc;
    __m512 r0 = acc0[i], r1 = acc1[i];
    if (accumulate) {
      r0 = _mm512_add_ps(r0, _mm512_loadu_ps(ci));
      r1 = _mm512_add_ps(r1, _mm512_loadu_ps(ci + 16));
    } else if (bias) {
      r0 = _mm512_add_ps(r0, _mm512_loadu_ps(bias));
      r1 = _mm512_add_ps(r1, _mm512_loadu_ps(bias + 16));
    }
    _mm512_storeu_ps(ci, r0);
    _mm512_storeu_ps(ci + 16, r1);
  }
}

// The kernel for this CPU: AVX-512 when present. HH_MATMUL_ISA=avx2 forces the baseline;
// it is read at every call (a getenv per GEMM is nothing) so that one test process can
// cover both kernels on an AVX-512 machine.
const KernelConfig& kernel_config() {
  static const KernelConfig avx2 = {"avx2-6x16", 6, 16, 144, 256, 4096, kernel_avx2<6>};
  static const KernelConfig avx512 = {"avx512-14x32", 14, 32, 280, 256, 4096, kernel_avx512<14>};
  static const bool has_avx512 = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") != 0;
  }();
  const char* isa = std::getenv("HH_MATMUL_ISA");
  if (isa && std::strcmp(isa, "avx2") == 0) return avx2;
  return has_avx512 ? avx512 : avx2;
}

// 64-byte aligned scratch that only grows; one per thread for the packed A and B blocks.
class PackBuffer {
 public:
  ~PackBuffer() { std::free(data_); }
  float* get(size_t floats) {
    if (floats > capacity_) {
      std::free(data_);
      const size_t bytes = (floats * sizeof(float) + 63) / 64 * 64;
      data_ = static_cast<float*>(std::aligned_alloc(64, bytes));
      HH_CHECK(data_ != nullptr, "matmul: cannot allocate a packing buffer of ", bytes, " bytes");
      capacity_ = floats;
    }
    return data_;
  }

 private:
  float* data_ = nullptr;
  size_t capacity_ = 0;
};

thread_local PackBuffer tls_pack_a;
thread_local PackBuffer tls_pack_b;

// Transposes the 8×8 block held in r[0..7] (r[i] = row i) in registers.
inline void transpose8x8(__m256 r[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  r[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
  r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
  r[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
  r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
  r[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
  r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
  r[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
  r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}

constexpr int kMaxKc = 512;                     // >= the kc of every KernelConfig
alignas(32) const float kZeroRow[kMaxKc] = {};  // stands in for the padding rows

// Panel of `width` interleaved rows: dst[k*width + i] = src[i*ld + k] for i < count,
// 0 for count <= i < width, k < kc. The source rows are contiguous in k, so this is a
// transposition, done in 8×8 register blocks. An 8-wide store of the last row group may
// run past `width` into the slot of the next k; the groups are written last-first and k
// in ascending order so that every such spill is overwritten by its rightful value (the
// final one lands in the next panel or in the buffer's slack of 8 floats).
void pack_transposed(const float* src, long ld, int count, int width, int kc, float* dst) {
  const int groups = (width + 7) / 8;
  int k = 0;
  for (; k + 8 <= kc; k += 8) {
    for (int g = groups - 1; g >= 0; --g) {
      __m256 r[8];
      for (int q = 0; q < 8; ++q) {
        const int i = 8 * g + q;
        r[q] = _mm256_loadu_ps(i < count ? src + i * ld + k : kZeroRow + k);
      }
      transpose8x8(r);
      for (int q = 0; q < 8; ++q) _mm256_storeu_ps(dst + (k + q) * width + 8 * g, r[q]);
    }
  }
  for (; k < kc; ++k)
    for (int i = 0; i < width; ++i) dst[k * width + i] = i < count ? src[i * ld + k] : 0.0f;
}

// Panels of `width` columns copied from rows: the block src[k*ld + j], j < count, k < kc,
// goes to panel p = j / width as dst[p*width*kc + k*width + j % width], the columns of the
// last panel past `count` zero. k is the outer loop so that each source row is read once,
// front to back (the source is a big matrix: dout, whose rows are far apart).
void pack_copied(const float* src, long ld, int count, int width, int kc, float* dst) {
  const size_t panel_size = static_cast<size_t>(width) * kc;
  for (int k = 0; k < kc; ++k) {
    const float* row = src + k * ld;
    float* out = dst + static_cast<size_t>(k) * width;
    for (int j0 = 0; j0 < count; j0 += width, out += panel_size) {
      const int n = std::min(width, count - j0);
      for (int j = 0; j < n; ++j) out[j] = row[j0 + j];
      for (int j = n; j < width; ++j) out[j] = 0.0f;
    }
  }
}

// Packs op(A)[i0:i0+mc, p0:p0+kc] as MR-tall panels: panel r holds a[k*mr + i] = A(i0 +
// r*mr + i, p0 + k), rows past mc zero.
void pack_a(const View& A, int i0, int mc, int p0, int kc, int mr, float* dst) {
  if (A.row_stride == 1) {  // doutᵀ: columns contiguous
    pack_copied(A.at(i0, p0), A.col_stride, mc, mr, kc, dst);
    return;
  }
  for (int ir = 0; ir < mc; ir += mr) {
    const int m = std::min(mr, mc - ir);
    float* panel = dst + static_cast<size_t>(ir) * kc;
    const float* src = A.at(i0 + ir, p0);
    if (A.col_stride == 1) {
      pack_transposed(src, A.row_stride, m, mr, kc, panel);  // inp, dout: rows contiguous
    } else {
      for (int k = 0; k < kc; ++k)
        for (int i = 0; i < mr; ++i)
          panel[k * mr + i] = i < m ? src[i * A.row_stride + k * A.col_stride] : 0.0f;
    }
  }
}

// Packs op(B)[p0:p0+kc, j0:j0+nc] as NR-wide panels: panel s holds b[k*nr + j] = B(p0 + k,
// j0 + s*nr + j), columns past nc zero.
void pack_b(const View& B, int p0, int kc, int j0, int nc, int nr, float* dst) {
  if (B.col_stride == 1) {  // W, inp: rows contiguous
    pack_copied(B.at(p0, j0), B.row_stride, nc, nr, kc, dst);
    return;
  }
  for (int jr = 0; jr < nc; jr += nr) {
    const int n = std::min(nr, nc - jr);
    float* panel = dst + static_cast<size_t>(jr) * kc;
    const float* src = B.at(p0, j0 + jr);
    if (B.row_stride == 1) {
      pack_transposed(src, B.col_stride, n, nr, kc, panel);  // Wᵀ: columns contiguous
    } else {
      for (int k = 0; k < kc; ++k)
        for (int j = 0; j < nr; ++j)
          panel[k * nr + j] = j < n ? src[k * B.row_stride + j * B.col_stride] : 0.0f;
    }
  }
}

// C[M,N] (+)= op(A)[M,K]·op(B)[K,N] on one thread, blocked as described at the top.
// K >= 1. Without accumulate, C = A·B + bias (bias over columns, may be null).
void gemm_serial(const KernelConfig& cfg, int M, int N, int K, const View& A, const View& B,
                 float* C, long ldc, const float* bias, bool accumulate) {
  const int mr = cfg.mr, nr = cfg.nr;
  const int kc_max = std::min(K, cfg.kc);
  const int mc_max = std::min((M + mr - 1) / mr * mr, cfg.mc);
  const int nc_max = std::min((N + nr - 1) / nr * nr, cfg.nc);
  // +8 floats of slack for the spilling stores of pack_transposed.
  float* packed_a = tls_pack_a.get(static_cast<size_t>(mc_max) * kc_max + 8);
  float* packed_b = tls_pack_b.get(static_cast<size_t>(nc_max) * kc_max + 8);
  alignas(64) float tile[kMaxTile];

  for (int jc = 0; jc < N; jc += cfg.nc) {
    const int nc = std::min(cfg.nc, N - jc);
    for (int pc = 0; pc < K; pc += cfg.kc) {
      const int kc = std::min(cfg.kc, K - pc);
      pack_b(B, pc, kc, jc, nc, nr, packed_b);
      // Only the first K block may overwrite C (and add the bias); later ones accumulate.
      const bool acc = accumulate || pc > 0;
      const float* block_bias = (!acc && bias) ? bias + jc : nullptr;
      for (int ic = 0; ic < M; ic += cfg.mc) {
        const int mc = std::min(cfg.mc, M - ic);
        pack_a(A, ic, mc, pc, kc, mr, packed_a);
        for (int jr = 0; jr < nc; jr += nr) {
          const int n = std::min(nr, nc - jr);
          const float* b_panel = packed_b + static_cast<size_t>(jr) * kc;
          const float* tile_bias = block_bias ? block_bias + jr : nullptr;
          for (int ir = 0; ir < mc; ir += mr) {
            const int m = std::min(mr, mc - ir);
            const float* a_panel = packed_a + static_cast<size_t>(ir) * kc;
            float* c = C + static_cast<long>(ic + ir) * ldc + jc + jr;
            if (m == mr && n == nr) {
              cfg.kernel(kc, a_panel, b_panel, c, ldc, tile_bias, acc);
            } else {
              // Edge tile: compute the full tile into scratch, write back the valid part.
              cfg.kernel(kc, a_panel, b_panel, tile, nr, nullptr, false);
              for (int i = 0; i < m; ++i) {
                float* ci = c + static_cast<long>(i) * ldc;
                const float* ti = tile + i * nr;
                for (int j = 0; j < n; ++j)
                  ci[j] = (acc ? ci[j] : (tile_bias ? tile_bias[j] : 0.0f)) + ti[j];
              }
            }
          }
        }
      }
    }
  }
}

// C[M,N] (+)= op(A)[M,K]·op(B)[K,N] (+ bias[N] when not accumulating), over the OpenMP
// threads: each takes a contiguous tile-aligned range of rows or columns of C.
void gemm(int M, int N, int K, View A, View B, float* C, long ldc, const float* bias,
          bool accumulate) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {  // empty sum: C = bias (or 0), or unchanged when accumulating
    if (!accumulate)
      for (int i = 0; i < M; ++i)
        for (int j = 0; j < N; ++j) C[static_cast<long>(i) * ldc + j] = bias ? bias[j] : 0.0f;
    return;
  }
  const KernelConfig& cfg = kernel_config();
  HH_CHECK(cfg.kc <= kMaxKc && cfg.mr * cfg.nr <= kMaxTile, "matmul: kernel config ", cfg.name,
           " exceeds the scratch sizes");
  const int row_tiles = (M + cfg.mr - 1) / cfg.mr;
  const int col_tiles = (N + cfg.nr - 1) / cfg.nr;
  const bool split_rows = row_tiles >= col_tiles;
  const int tiles = split_rows ? row_tiles : col_tiles;
  // Below ~1 MFLOP a second thread costs more than it saves.
  const double flops = 2.0 * M * N * K;
  const int threads = flops < 1e6 ? 1 : std::min(omp_get_max_threads(), tiles);

  // An exception (a packing buffer that cannot be allocated) must not leave the parallel
  // region: the first one is kept and rethrown after it.
  std::exception_ptr error;
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    const int first = static_cast<int>(static_cast<long>(tiles) * t / nt);
    const int last = static_cast<int>(static_cast<long>(tiles) * (t + 1) / nt);
    try {
      if (split_rows) {
        const int r0 = first * cfg.mr, r1 = std::min(M, last * cfg.mr);
        if (r1 > r0) {
          View A_part = A;
          A_part.data = A.at(r0, 0);
          gemm_serial(cfg, r1 - r0, N, K, A_part, B, C + static_cast<long>(r0) * ldc, ldc, bias,
                      accumulate);
        }
      } else {
        const int c0 = first * cfg.nr, c1 = std::min(N, last * cfg.nr);
        if (c1 > c0) {
          View B_part = B;
          B_part.data = B.at(0, c0);
          gemm_serial(cfg, M, c1 - c0, K, A, B_part, C + c0, ldc, bias ? bias + c0 : nullptr,
                      accumulate);
        }
      }
    } catch (...) {
#pragma omp critical(hh_matmul_error)
      if (!error) error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
}

// sums[r] = Σ_k x[r*ldx + k]·w[k] for R rows of x at once, so each vector of w is loaded
// once for all R rows (two accumulators per row hide the FMA latency).
template <int R>
void dot_rows(const float* x, long ldx, const float* w, int IC, float* sums) {
  __m256 acc0[R], acc1[R];
  for (int r = 0; r < R; ++r) acc0[r] = acc1[r] = _mm256_setzero_ps();
  int k = 0;
  for (; k + 16 <= IC; k += 16) {
    const __m256 w0 = _mm256_loadu_ps(w + k), w1 = _mm256_loadu_ps(w + k + 8);
    for (int r = 0; r < R; ++r) {
      acc0[r] = _mm256_fmadd_ps(_mm256_loadu_ps(x + r * ldx + k), w0, acc0[r]);
      acc1[r] = _mm256_fmadd_ps(_mm256_loadu_ps(x + r * ldx + k + 8), w1, acc1[r]);
    }
  }
  for (int r = 0; r < R; ++r) {
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, _mm256_add_ps(acc0[r], acc1[r]));
    float sum = 0.0f;
    for (int l = 0; l < 8; ++l) sum += lanes[l];
    for (int kk = k; kk < IC; ++kk) sum += x[r * ldx + kk] * w[kk];
    sums[r] = sum;
  }
}

// out[i,j] = bias[j] + Σ_k inp[i,k]·W[j,k] for a handful of rows (sampling: one token per
// sequence): dot products that stream W once, four rows per load of a row of W. Packing
// W for the GEMM would cost more than the product itself.
void forward_few_rows(float* out, const float* inp, const float* weight, const float* bias, int N,
                      int IC, int OC) {
  const bool parallel = 2.0 * N * IC * OC >= 1e6;
#pragma omp parallel for schedule(static) if (parallel)
  for (int j = 0; j < OC; ++j) {
    const float* w = weight + static_cast<long>(j) * IC;
    const float b = bias ? bias[j] : 0.0f;
    for (int i0 = 0; i0 < N; i0 += 4) {
      const float* x = inp + static_cast<long>(i0) * IC;
      float sums[4];
      switch (std::min(4, N - i0)) {
        case 4:
          dot_rows<4>(x, IC, w, IC, sums);
          break;
        case 3:
          dot_rows<3>(x, IC, w, IC, sums);
          break;
        case 2:
          dot_rows<2>(x, IC, w, IC, sums);
          break;
        default:
          dot_rows<1>(x, IC, w, IC, sums);
          break;
      }
      for (int r = 0; r < std::min(4, N - i0); ++r)
        out[static_cast<long>(i0 + r) * OC + j] = sums[r] + b;
    }
  }
}

// Up to this many rows the forward pass uses forward_few_rows instead of the packed GEMM.
constexpr int kFewRows = 8;

// dbias[j] += Σ_i dout[i,j]: each thread owns a range of columns and sums the rows in
// order, so the result does not depend on the thread count.
void column_sums_add(float* dbias, const float* dout, int N, int OC) {
  constexpr int kChunk = 64;
  const int chunks = (OC + kChunk - 1) / kChunk;
  const bool parallel = static_cast<double>(N) * OC >= 1e5;
#pragma omp parallel for schedule(static) if (parallel)
  for (int c = 0; c < chunks; ++c) {
    const int j0 = c * kChunk, j1 = std::min(OC, j0 + kChunk);
    float sums[kChunk] = {};
    for (int i = 0; i < N; ++i) {
      const float* row = dout + static_cast<long>(i) * OC;
      for (int j = j0; j < j1; ++j) sums[j - j0] += row[j];
    }
    for (int j = j0; j < j1; ++j) dbias[j] += sums[j - j0];
  }
}

void check_shape(const char* op, int N, int IC, int OC) {
  HH_CHECK(N >= 0 && IC >= 0 && OC >= 0, op, ": negative shape N=", N, " IC=", IC, " OC=", OC);
}

}  // namespace

// out[N,OC] = inp[N,IC]·weight[OC,IC]ᵀ + bias[OC] (bias may be null).
void matmul_forward(float* out, const float* inp, const float* weight, const float* bias, int N,
                    int IC, int OC) {
  check_shape("matmul_forward", N, IC, OC);
  if (N == 0 || OC == 0) return;
  HH_CHECK(out && (IC == 0 || (inp && weight)), "matmul_forward: null pointer for N=", N,
           " IC=", IC, " OC=", OC);
  if (N <= kFewRows && IC > 0) {
    forward_few_rows(out, inp, weight, bias, N, IC, OC);
    return;
  }
  // A = inp (rows contiguous), B(k, j) = weight[j, k] (Wᵀ: columns contiguous).
  gemm(N, OC, IC, View{inp, IC, 1}, View{weight, 1, IC}, out, OC, bias, false);
}

// dinp[N,IC] = dout[N,OC]·weight[OC,IC]          (overwrite; skipped when dinp is null)
// dweight[OC,IC] += dout[N,OC]ᵀ·inp[N,IC]         (skipped when dweight is null)
// dbias[OC] += Σ_n dout[n,:]                       (skipped when dbias is null)
void matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                     const float* weight, int N, int IC, int OC) {
  check_shape("matmul_backward", N, IC, OC);
  if (dinp && N > 0 && IC > 0) {
    HH_CHECK(OC == 0 || (dout && weight), "matmul_backward: null dout/weight for dinp");
    gemm(N, IC, OC, View{dout, OC, 1}, View{weight, IC, 1}, dinp, IC, nullptr, false);
  }
  if (dweight && OC > 0 && IC > 0 && N > 0) {
    HH_CHECK(dout && inp, "matmul_backward: null dout/inp for dweight");
    // A(o, n) = dout[n, o] (doutᵀ: columns contiguous), B = inp (rows contiguous).
    gemm(OC, IC, N, View{dout, 1, OC}, View{inp, IC, 1}, dweight, IC, nullptr, true);
  }
  if (dbias && N > 0 && OC > 0) {
    HH_CHECK(dout, "matmul_backward: null dout for dbias");
    column_sums_add(dbias, dout, N, OC);
  }
}

// Name of the micro-kernel in use ("avx512-14x32" or "avx2-6x16"), for benchmarks and logs.
const char* matmul_kernel_name() { return kernel_config().name; }

}  // namespace hh::cpu
