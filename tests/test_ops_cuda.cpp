// CUDA backend parity: every op of src/ops/ops.h run on the CPU backend (the reference)
// and on the CUDA backend with the same random inputs; forward outputs and all gradients
// must agree. The tests skip cleanly when hh was built without CUDA or no GPU is present.
//
// Tolerances. A result r is accepted when |gpu − cpu| ≤ tol·(|cpu| + rms(cpu)), where
// rms(cpu) is the root-mean-square of the whole reference tensor (so entries that are
// near zero by cancellation are judged on the tensor's scale, not their own):
// - kExact = 1e-5 for ops without matmuls (and for matmuls with HH_CUDA_TF32=0): both
//   sides round in fp32 (unit roundoff 6e-8) but sum in different orders, and the GPU
//   build uses fast-math intrinsics (__expf, tanh.approx: a few ulp); 1e-5 leaves ~100x
//   headroom over that and still catches any indexing or formula error (those are O(1)).
// - kTf32 = 5e-3 for matmul-based ops with TF32 tensor cores: TF32 rounds each operand
//   to a 10-bit mantissa (relative 2^-11 ≈ 4.9e-4 per operand, ~1e-3 per product); with
//   random signs the summed error stays ~1e-3 of the output's scale, and 5e-3 gives
//   headroom through chained products (attention: QKᵀ → softmax → PV, and the backward).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/half.h"
#include "model/gpt.h"
#include "ops/ops.h"

namespace {

#ifdef HH_WITH_CUDA

constexpr double kExact = 1e-5;
constexpr double kTf32 = 5e-3;

std::vector<float> random_floats(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(-scale, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(gen);
  return v;
}

std::vector<int32_t> random_ints(size_t n, uint32_t seed, int lo, int hi) {
  std::mt19937 gen(seed);
  std::uniform_int_distribution<int> dist(lo, hi);
  std::vector<int32_t> v(n);
  for (auto& x : v) x = dist(gen);
  return v;
}

template <typename T>
hh::Buffer<T> upload(hh::Backend& be, const std::vector<T>& host) {
  hh::Buffer<T> buf(be, host.size());
  be.copy_to_device(buf.data(), host.data(), host.size() * sizeof(T));
  return buf;
}

template <typename T>
std::vector<T> download(hh::Backend& be, const hh::Buffer<T>& buf) {
  std::vector<T> host(buf.size());
  be.synchronize();
  be.copy_to_host(host.data(), buf.data(), buf.size() * sizeof(T));
  return host;
}

// |gpu − cpu| ≤ tol·(|cpu| + rms(cpu)) everywhere; reports the worst entry.
void expect_close(const std::vector<float>& cpu, const std::vector<float>& gpu, double tol,
                  const std::string& what) {
  ASSERT_EQ(cpu.size(), gpu.size()) << what;
  double sum_sq = 0.0;
  for (float x : cpu) sum_sq += static_cast<double>(x) * x;
  const double rms = cpu.empty() ? 0.0 : std::sqrt(sum_sq / cpu.size());
  size_t bad = 0, worst = 0;
  double worst_ratio = -1.0;
  for (size_t i = 0; i < cpu.size(); i++) {
    const double diff = std::fabs(static_cast<double>(gpu[i]) - cpu[i]);
    const double bound = tol * (std::fabs(cpu[i]) + rms) + 1e-30;
    const double ratio =
        diff <= bound ? diff / bound : (std::isnan(diff) ? INFINITY : diff / bound);
    if (!(diff <= bound)) bad++;  // also counts NaN
    if (ratio > worst_ratio) {
      worst_ratio = ratio;
      worst = i;
    }
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << cpu.size() << " entries differ; worst at "
                     << worst << ": cpu " << cpu[worst] << " gpu " << gpu[worst] << " (tolerance "
                     << tol << ", rms " << rms << ")";
}

void expect_zero_rows(const std::vector<float>& x, int row_width, int row,
                      const std::string& what) {
  for (int c = 0; c < row_width; c++)
    ASSERT_EQ(x[static_cast<size_t>(row) * row_width + c], 0.0f)
        << what << " row " << row << " col " << c;
}

// Sets every CUDA backend switch the tests vary, for backends made after the call; the
// defaults are the backend's. flash: 0 the cuBLAS attention, 1 the fused CUDA-core kernels,
// 2 the fused TF32 tensor-core kernels (HH_CUDA_FLASH).
void set_cuda_env(bool tf32, bool lt, int flash = 0, bool fuse = true, bool fast_decode = true) {
  setenv("HH_CUDA_TF32", tf32 ? "1" : "0", 1);
  setenv("HH_CUDA_LT", lt ? "1" : "0", 1);
  setenv("HH_CUDA_FLASH", std::to_string(flash).c_str(), 1);
  setenv("HH_CUDA_FUSE", fuse ? "1" : "0", 1);
  setenv("HH_CUDA_FAST_DECODE", fast_decode ? "1" : "0", 1);
  setenv("HH_CUDA_LT_TUNE", "0", 1);
  setenv("HH_CUDA_KV_HALF", "0", 1);
  setenv("HH_CUDA_SKINNY", "0", 1);
  setenv("HH_CUDA_DECODE_FP16", "0", 1);
}

class CudaParity : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!hh::cuda_device_available()) GTEST_SKIP() << "no CUDA device: CUDA parity tests skipped";
    cpu_ = hh::make_cpu_backend();
    set_cuda_env(/*tf32=*/false, /*lt=*/true);
    gpu_ = hh::make_cuda_backend(0);
  }
  // Both backends' copies of one host vector.
  template <typename T>
  std::pair<hh::Buffer<T>, hh::Buffer<T>> both(const std::vector<T>& host) {
    return {upload(*cpu_, host), upload(*gpu_, host)};
  }
  std::unique_ptr<hh::Backend> cpu_, gpu_;
};

TEST_F(CudaParity, MemoryRoundTripAndPeak) {
  EXPECT_EQ(gpu_->kind(), hh::DeviceKind::CUDA);
  EXPECT_EQ(gpu_->name().rfind("cuda:0", 0), 0u) << gpu_->name();
  const size_t before = gpu_->peak_bytes();
  auto host = random_floats(1000, 1);
  auto a = upload(*gpu_, host);
  hh::Buffer<float> b(*gpu_, host.size());
  gpu_->copy_on_device(b.data(), a.data(), a.bytes());
  EXPECT_EQ(download(*gpu_, b), host);
  gpu_->fill_zero(b.data(), b.bytes());
  EXPECT_EQ(download(*gpu_, b), std::vector<float>(host.size(), 0.0f));
  EXPECT_GE(gpu_->peak_bytes(), before + 2 * 1000 * sizeof(float));
}

TEST_F(CudaParity, OutOfMemoryNamesSizes) {
  const size_t huge = size_t(1) << 50;  // 1 PiB
  try {
    gpu_->alloc_bytes(huge);
    FAIL() << "allocating 1 PiB did not throw";
  } catch (const hh::Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(std::to_string(huge)), std::string::npos) << msg;
    EXPECT_NE(msg.find("free"), std::string::npos) << msg;
  }
  // The backend still works after the failure.
  auto a = upload(*gpu_, random_floats(10, 2));
  EXPECT_EQ(download(*gpu_, a).size(), 10u);
}

TEST_F(CudaParity, Embedding) {
  const int B = 3, T = 37, C = 50, V = 17;  // few tokens: many repeats in the backward
  auto tokens = random_ints(B * T, 3, 0, V - 1);
  auto wte = random_floats(V * C, 4), wpe = random_floats(T * C, 5);
  auto dout = random_floats(B * T * C, 6);
  auto dwte0 = random_floats(V * C, 7), dwpe0 = random_floats(T * C, 8);  // += is checked
  auto [tok_c, tok_g] = both(tokens);
  auto [wte_c, wte_g] = both(wte);
  auto [wpe_c, wpe_g] = both(wpe);
  auto [dout_c, dout_g] = both(dout);
  auto [dwte_c, dwte_g] = both(dwte0);
  auto [dwpe_c, dwpe_g] = both(dwpe0);
  hh::Buffer<float> out_c(*cpu_, B * T * C), out_g(*gpu_, B * T * C);
  cpu_->embedding_forward(out_c.data(), tok_c.data(), wte_c.data(), wpe_c.data(), B, T, C);
  gpu_->embedding_forward(out_g.data(), tok_g.data(), wte_g.data(), wpe_g.data(), B, T, C);
  expect_close(download(*cpu_, out_c), download(*gpu_, out_g), kExact, "embedding out");
  cpu_->embedding_backward(dwte_c.data(), dwpe_c.data(), dout_c.data(), tok_c.data(), B, T, C);
  gpu_->embedding_backward(dwte_g.data(), dwpe_g.data(), dout_g.data(), tok_g.data(), B, T, C);
  const auto dwte_first = download(*gpu_, dwte_g);
  expect_close(download(*cpu_, dwte_c), dwte_first, kExact, "embedding dwte");
  expect_close(download(*cpu_, dwpe_c), download(*gpu_, dwpe_g), kExact, "embedding dwpe");
  // Deterministic: the same sums in the same order, bit for bit, on a second run.
  gpu_->copy_to_device(dwte_g.data(), dwte0.data(), dwte0.size() * sizeof(float));
  gpu_->embedding_backward(dwte_g.data(), dwpe_g.data(), dout_g.data(), tok_g.data(), B, T, C);
  EXPECT_EQ(download(*gpu_, dwte_g), dwte_first);
}

TEST_F(CudaParity, LayerNorm) {
  for (int C : {77, 768}) {
    const int N = 37;
    auto inp = random_floats(N * C, 10, 3.0f), w = random_floats(C, 11), b = random_floats(C, 12);
    for (int i = 0; i < C; i++) inp[C + i] += 50.0f;  // a row with a large mean
    auto dout = random_floats(N * C, 13);
    auto dinp0 = random_floats(N * C, 14), dw0 = random_floats(C, 15), db0 = random_floats(C, 16);
    auto [inp_c, inp_g] = both(inp);
    auto [w_c, w_g] = both(w);
    auto [b_c, b_g] = both(b);
    auto [dout_c, dout_g] = both(dout);
    auto [dinp_c, dinp_g] = both(dinp0);
    auto [dw_c, dw_g] = both(dw0);
    auto [db_c, db_g] = both(db0);
    hh::Buffer<float> out_c(*cpu_, N * C), out_g(*gpu_, N * C);
    hh::Buffer<float> mean_c(*cpu_, N), mean_g(*gpu_, N), rstd_c(*cpu_, N), rstd_g(*gpu_, N);
    cpu_->layernorm_forward(out_c.data(), mean_c.data(), rstd_c.data(), inp_c.data(), w_c.data(),
                            b_c.data(), N, C);
    gpu_->layernorm_forward(out_g.data(), mean_g.data(), rstd_g.data(), inp_g.data(), w_g.data(),
                            b_g.data(), N, C);
    const std::string tag = " C=" + std::to_string(C);
    expect_close(download(*cpu_, out_c), download(*gpu_, out_g), kExact, "layernorm out" + tag);
    expect_close(download(*cpu_, mean_c), download(*gpu_, mean_g), kExact, "layernorm mean" + tag);
    expect_close(download(*cpu_, rstd_c), download(*gpu_, rstd_g), kExact, "layernorm rstd" + tag);
    cpu_->layernorm_backward(dinp_c.data(), dw_c.data(), db_c.data(), dout_c.data(), inp_c.data(),
                             w_c.data(), mean_c.data(), rstd_c.data(), N, C);
    gpu_->layernorm_backward(dinp_g.data(), dw_g.data(), db_g.data(), dout_g.data(), inp_g.data(),
                             w_g.data(), mean_g.data(), rstd_g.data(), N, C);
    expect_close(download(*cpu_, dinp_c), download(*gpu_, dinp_g), kExact, "layernorm dinp" + tag);
    expect_close(download(*cpu_, dw_c), download(*gpu_, dw_g), kExact, "layernorm dweight" + tag);
    expect_close(download(*cpu_, db_c), download(*gpu_, db_g), kExact, "layernorm dbias" + tag);
  }
}

// Matmul in all four modes (TF32 on/off × cuBLASLt epilogue on/off), odd and even shapes,
// with and without bias.
TEST_F(CudaParity, Matmul) {
  struct Shape {
    int N, IC, OC;
  };
  for (bool tf32 : {false, true}) {
    for (bool lt : {false, true}) {
      set_cuda_env(tf32, lt);
      auto gpu = hh::make_cuda_backend(0);
      const double tol = tf32 ? kTf32 : kExact;
      for (Shape s : {Shape{37, 50, 70}, Shape{128, 256, 192}, Shape{5, 3, 1}}) {
        for (bool with_bias : {true, false}) {
          const std::string tag = std::string(" tf32=") + (tf32 ? "1" : "0") +
                                  " lt=" + (lt ? "1" : "0") + " N=" + std::to_string(s.N) +
                                  " IC=" + std::to_string(s.IC) + " OC=" + std::to_string(s.OC) +
                                  (with_bias ? " bias" : " no-bias");
          auto inp = random_floats(s.N * s.IC, 20), w = random_floats(s.OC * s.IC, 21);
          auto bias = random_floats(s.OC, 22), dout = random_floats(s.N * s.OC, 23);
          auto dw0 = random_floats(s.OC * s.IC, 24), db0 = random_floats(s.OC, 25);
          auto inp_c = upload(*cpu_, inp), inp_g = upload(*gpu, inp);
          auto w_c = upload(*cpu_, w), w_g = upload(*gpu, w);
          auto b_c = upload(*cpu_, bias), b_g = upload(*gpu, bias);
          auto dout_c = upload(*cpu_, dout), dout_g = upload(*gpu, dout);
          auto dw_c = upload(*cpu_, dw0), dw_g = upload(*gpu, dw0);
          auto db_c = upload(*cpu_, db0), db_g = upload(*gpu, db0);
          auto dinp_g = upload(*gpu, random_floats(s.N * s.IC, 26));  // overwritten
          hh::Buffer<float> out_c(*cpu_, s.N * s.OC), out_g(*gpu, s.N * s.OC);
          hh::Buffer<float> dinp_c(*cpu_, s.N * s.IC);
          cpu_->matmul_forward(out_c.data(), inp_c.data(), w_c.data(),
                               with_bias ? b_c.data() : nullptr, s.N, s.IC, s.OC);
          gpu->matmul_forward(out_g.data(), inp_g.data(), w_g.data(),
                              with_bias ? b_g.data() : nullptr, s.N, s.IC, s.OC);
          expect_close(download(*cpu_, out_c), download(*gpu, out_g), tol, "matmul out" + tag);
          cpu_->matmul_backward(dinp_c.data(), dw_c.data(), with_bias ? db_c.data() : nullptr,
                                dout_c.data(), inp_c.data(), w_c.data(), s.N, s.IC, s.OC);
          gpu->matmul_backward(dinp_g.data(), dw_g.data(), with_bias ? db_g.data() : nullptr,
                               dout_g.data(), inp_g.data(), w_g.data(), s.N, s.IC, s.OC);
          expect_close(download(*cpu_, dinp_c), download(*gpu, dinp_g), tol, "matmul dinp" + tag);
          expect_close(download(*cpu_, dw_c), download(*gpu, dw_g), tol, "matmul dweight" + tag);
          expect_close(download(*cpu_, db_c), download(*gpu, db_g), kExact, "matmul dbias" + tag);
          // dinp = null skips the input gradient and leaves the others right.
          gpu->matmul_backward(nullptr, dw_g.data(), nullptr, dout_g.data(), inp_g.data(),
                               w_g.data(), s.N, s.IC, s.OC);
          cpu_->matmul_backward(nullptr, dw_c.data(), nullptr, dout_c.data(), inp_c.data(),
                                w_c.data(), s.N, s.IC, s.OC);
          expect_close(download(*cpu_, dw_c), download(*gpu, dw_g), tol, "matmul dweight 2x" + tag);
        }
      }
    }
  }
}

// The fused matmuls (ops.h) against the CPU's plain sequence, unfused (HH_CUDA_FUSE=0) and
// fused (the residual in the cuBLASLt epilogue), fp32 and TF32. The odd shape has no
// 16-byte aligned rows, so the fused run takes the fallback there.
// Random operands of out = residual + inp·Wᵀ + bias at one shape, on the CPU and on `gpu`
// (every GPU operand on that backend: another backend's upload runs on its own stream).
struct MatmulOperands {
  MatmulOperands(hh::Backend& cpu, hh::Backend& gpu, int N, int IC, int OC, uint32_t seed)
      : inp(random_floats(static_cast<size_t>(N) * IC, seed)),
        w(random_floats(static_cast<size_t>(OC) * IC, seed + 1)),
        bias(random_floats(OC, seed + 2)),
        residual(random_floats(static_cast<size_t>(N) * OC, seed + 3)),
        inp_c(upload(cpu, inp)),
        w_c(upload(cpu, w)),
        b_c(upload(cpu, bias)),
        r_c(upload(cpu, residual)),
        inp_g(upload(gpu, inp)),
        w_g(upload(gpu, w)),
        b_g(upload(gpu, bias)),
        r_g(upload(gpu, residual)) {}
  std::vector<float> inp, w, bias, residual;
  hh::Buffer<float> inp_c, w_c, b_c, r_c, inp_g, w_g, b_g, r_g;
};

// HH_CUDA_LT_TUNE=1: every forward product (with and without bias, with the residual) takes
// a cuBLASLt plan that timed its candidates on the first call's operands. Whatever it picked
// must agree with the CPU, give the same bits on the next call, leave the inputs alone, and
// survive a first call that writes in place of its output's old contents.
TEST_F(CudaParity, TunedMatmulsMatchTheCpu) {
  struct Shape {
    int N, IC, OC;
  };
  for (bool tf32 : {false, true}) {
    set_cuda_env(tf32, /*lt=*/true);
    setenv("HH_CUDA_LT_TUNE", "1", 1);
    auto gpu = hh::make_cuda_backend(0);
    setenv("HH_CUDA_LT_TUNE", "0", 1);
    const double tol = tf32 ? kTf32 : kExact;
    // A decode step's shapes at 64 rows (qkv, fc, the projection), a ragged one, one row.
    for (Shape s :
         {Shape{64, 768, 2304}, Shape{64, 3072, 768}, Shape{37, 50, 70}, Shape{1, 64, 96}}) {
      const std::string tag = std::string(" tf32=") + (tf32 ? "1" : "0") +
                              " N=" + std::to_string(s.N) + " IC=" + std::to_string(s.IC) +
                              " OC=" + std::to_string(s.OC);
      const size_t n_out = static_cast<size_t>(s.N) * s.OC;
      MatmulOperands op(*cpu_, *gpu, s.N, s.IC, s.OC, 50);
      for (int kind = 0; kind < 3; kind++) {  // bias, no bias, bias + residual
        const std::string what = std::string(kind == 0   ? "tuned matmul"
                                             : kind == 1 ? "tuned matmul, no bias"
                                                         : "tuned matmul + residual") +
                                 tag;
        hh::Buffer<float> out_c(*cpu_, n_out);
        auto out_g = upload(*gpu, random_floats(n_out, 54));  // old contents: overwritten
        auto run = [&](hh::Backend& be, float* out, const float* x, const float* wt, const float* b,
                       const float* r) {
          if (kind == 2)
            be.matmul_residual_forward(out, x, wt, b, r, s.N, s.IC, s.OC);
          else
            be.matmul_forward(out, x, wt, kind == 0 ? b : nullptr, s.N, s.IC, s.OC);
        };
        run(*cpu_, out_c.data(), op.inp_c.data(), op.w_c.data(), op.b_c.data(), op.r_c.data());
        run(*gpu, out_g.data(), op.inp_g.data(), op.w_g.data(), op.b_g.data(), op.r_g.data());
        const auto first = download(*gpu, out_g);
        expect_close(download(*cpu_, out_c), first, tol, what);
        run(*gpu, out_g.data(), op.inp_g.data(), op.w_g.data(), op.b_g.data(), op.r_g.data());
        EXPECT_EQ(download(*gpu, out_g), first) << what << ": a second call differs";
        EXPECT_EQ(download(*gpu, op.r_g), op.residual) << what << ": the residual changed";
        EXPECT_EQ(download(*gpu, op.inp_g), op.inp) << what << ": the input changed";
      }
    }
  }
}

// HH_CUDA_SKINNY=1: products of 16..64 rows on our TF32 tensor-core kernel (a decode step's
// qkv, fc and LM-head shapes; 16 to 64 rows; bias, no bias, residual, residual in place). Against
// the CPU at the TF32 tolerance, the same bits on a second call, and other bits than cuBLAS's (its
// K order differs), so the kernel really ran. Shapes it does not take (37 rows, too few columns)
// still agree through cuBLAS.
TEST_F(CudaParity, SkinnyMatmulMatchesTheCpu) {
  struct Shape {
    int N, IC, OC;
    bool skinny;  // the kernel takes it (at least half the H100's SMs get a block)
  };
  set_cuda_env(/*tf32=*/true, /*lt=*/true);
  auto plain = hh::make_cuda_backend(0);
  setenv("HH_CUDA_SKINNY", "1", 1);
  auto gpu = hh::make_cuda_backend(0);
  setenv("HH_CUDA_SKINNY", "0", 1);
  for (Shape s :
       {Shape{64, 768, 2304, true}, Shape{64, 768, 3072, true}, Shape{16, 768, 2304, true},
        Shape{48, 3072, 4096, true}, Shape{64, 768, 50304, true}, Shape{37, 768, 2304, false},
        Shape{64, 768, 768, false}}) {
    const std::string tag =
        " N=" + std::to_string(s.N) + " IC=" + std::to_string(s.IC) + " OC=" + std::to_string(s.OC);
    const size_t n_out = static_cast<size_t>(s.N) * s.OC;
    MatmulOperands op(*cpu_, *gpu, s.N, s.IC, s.OC, 60);
    auto inp_p = upload(*plain, op.inp), w_p = upload(*plain, op.w), b_p = upload(*plain, op.bias);
    auto r_p = upload(*plain, op.residual);
    for (int kind = 0; kind < 4; kind++) {  // bias, no bias, bias + residual, in place
      const std::string what = std::string(kind == 0   ? "skinny matmul"
                                           : kind == 1 ? "skinny matmul, no bias"
                                           : kind == 2 ? "skinny matmul + residual"
                                                       : "skinny matmul + residual in place") +
                               tag;
      auto run = [&](hh::Backend& be, const float* x, const float* wt, const float* b,
                     hh::Buffer<float>& r) {
        hh::Buffer<float> out(be, n_out);
        if (kind == 3) {  // out = residual: the residual buffer is overwritten, so a copy
          be.copy_on_device(out.data(), r.data(), n_out * sizeof(float));
          be.matmul_residual_forward(out.data(), x, wt, b, out.data(), s.N, s.IC, s.OC);
        } else if (kind == 2) {
          be.matmul_residual_forward(out.data(), x, wt, b, r.data(), s.N, s.IC, s.OC);
        } else {
          be.matmul_forward(out.data(), x, wt, kind == 0 ? b : nullptr, s.N, s.IC, s.OC);
        }
        return download(be, out);
      };
      const auto want = run(*cpu_, op.inp_c.data(), op.w_c.data(), op.b_c.data(), op.r_c);
      const auto got = run(*gpu, op.inp_g.data(), op.w_g.data(), op.b_g.data(), op.r_g);
      expect_close(want, got, kTf32, what);
      EXPECT_EQ(run(*gpu, op.inp_g.data(), op.w_g.data(), op.b_g.data(), op.r_g), got)
          << what << ": a second call differs";
      const auto cublas = run(*plain, inp_p.data(), w_p.data(), b_p.data(), r_p);
      if (s.skinny) {
        EXPECT_NE(got, cublas) << what << ": the same bits as cuBLAS (did the kernel run?)";
      } else {
        EXPECT_EQ(got, cublas) << what << ": a shape the kernel does not take changed";
      }
    }
    EXPECT_EQ(download(*gpu, op.r_g), op.residual) << "the residual input is read only" << tag;
  }
}

TEST_F(CudaParity, FusedMatmuls) {
  struct Shape {
    int N, IC, OC;
  };
  for (bool fuse : {false, true}) {
    for (bool tf32 : {false, true}) {
      set_cuda_env(tf32, /*lt=*/true, /*flash=*/0, fuse);
      auto gpu = hh::make_cuda_backend(0);
      const double tol = tf32 ? kTf32 : kExact;
      for (Shape s : {Shape{37, 50, 70}, Shape{128, 256, 192}, Shape{64, 96, 384}}) {
        const std::string tag = std::string(" fuse=") + (fuse ? "1" : "0") +
                                " tf32=" + (tf32 ? "1" : "0") + " N=" + std::to_string(s.N) +
                                " IC=" + std::to_string(s.IC) + " OC=" + std::to_string(s.OC);
        const size_t n_in = static_cast<size_t>(s.N) * s.IC,
                     n_out = static_cast<size_t>(s.N) * s.OC;
        auto inp = random_floats(n_in, 40), w = random_floats(static_cast<size_t>(s.OC) * s.IC, 41);
        auto bias = random_floats(s.OC, 42), residual = random_floats(n_out, 43);
        auto [inp_c, inp_g] = std::pair{upload(*cpu_, inp), upload(*gpu, inp)};
        auto [w_c, w_g] = std::pair{upload(*cpu_, w), upload(*gpu, w)};
        auto [b_c, b_g] = std::pair{upload(*cpu_, bias), upload(*gpu, bias)};
        auto [r_c, r_g] = std::pair{upload(*cpu_, residual), upload(*gpu, residual)};

        // out = residual + inp·Wᵀ + b
        hh::Buffer<float> out_c(*cpu_, n_out), out_g(*gpu, n_out);
        cpu_->matmul_residual_forward(out_c.data(), inp_c.data(), w_c.data(), b_c.data(),
                                      r_c.data(), s.N, s.IC, s.OC);
        gpu->matmul_residual_forward(out_g.data(), inp_g.data(), w_g.data(), b_g.data(), r_g.data(),
                                     s.N, s.IC, s.OC);
        expect_close(download(*cpu_, out_c), download(*gpu, out_g), tol, "residual out" + tag);
        EXPECT_EQ(download(*gpu, r_g), residual) << "the residual input is read only" << tag;

        // pre = inp·Wᵀ + b, act = gelu(pre)
        hh::Buffer<float> pre_c(*cpu_, n_out), act_c(*cpu_, n_out);
        hh::Buffer<float> pre_g(*gpu, n_out), act_g(*gpu, n_out);
        cpu_->matmul_gelu_forward(pre_c.data(), act_c.data(), inp_c.data(), w_c.data(), b_c.data(),
                                  s.N, s.IC, s.OC);
        gpu->matmul_gelu_forward(pre_g.data(), act_g.data(), inp_g.data(), w_g.data(), b_g.data(),
                                 s.N, s.IC, s.OC);
        expect_close(download(*cpu_, pre_c), download(*gpu, pre_g), tol, "gelu pre" + tag);
        expect_close(download(*cpu_, act_c), download(*gpu, act_g), tol, "gelu out" + tag);

        // The next matmul reads act (width OC) back to width IC: dpre = (dout·W2) ⊙ gelu'(pre),
        // dW2 += doutᵀ·act, db2 += Σ dout. The GPU reads the CPU's pre and act so only the
        // backward is judged.
        const std::vector<float> pre_host = download(*cpu_, pre_c),
                                 act_host = download(*cpu_, act_c);
        auto w2 = random_floats(static_cast<size_t>(s.IC) * s.OC, 44);
        auto dout = random_floats(n_in, 45);
        auto dw0 = random_floats(w2.size(), 46), db0 = random_floats(s.IC, 47);
        auto [pre2_c, pre2_g] = std::pair{upload(*cpu_, pre_host), upload(*gpu, pre_host)};
        auto [act2_c, act2_g] = std::pair{upload(*cpu_, act_host), upload(*gpu, act_host)};
        auto [w2_c, w2_g] = std::pair{upload(*cpu_, w2), upload(*gpu, w2)};
        auto [dout_c, dout_g] = std::pair{upload(*cpu_, dout), upload(*gpu, dout)};
        auto [dw_c, dw_g] = std::pair{upload(*cpu_, dw0), upload(*gpu, dw0)};
        auto [db_c, db_g] = std::pair{upload(*cpu_, db0), upload(*gpu, db0)};
        hh::Buffer<float> dpre_c(*cpu_, n_out);
        auto dpre_g = upload(*gpu, random_floats(n_out, 48));  // overwritten
        cpu_->matmul_gelu_backward(dpre_c.data(), dw_c.data(), db_c.data(), dout_c.data(),
                                   act2_c.data(), pre2_c.data(), w2_c.data(), s.N, s.OC, s.IC);
        gpu->matmul_gelu_backward(dpre_g.data(), dw_g.data(), db_g.data(), dout_g.data(),
                                  act2_g.data(), pre2_g.data(), w2_g.data(), s.N, s.OC, s.IC);
        expect_close(download(*cpu_, dpre_c), download(*gpu, dpre_g), tol, "dpre" + tag);
        expect_close(download(*cpu_, dw_c), download(*gpu, dw_g), tol, "gelu dweight" + tag);
        expect_close(download(*cpu_, db_c), download(*gpu, db_g), kExact, "gelu dbias" + tag);

        // The plain backward's bias gradient, accumulating twice.
        for (int rep = 0; rep < 2; rep++) {
          cpu_->matmul_backward(nullptr, dw_c.data(), db_c.data(), dout_c.data(), act2_c.data(),
                                w2_c.data(), s.N, s.OC, s.IC);
          gpu->matmul_backward(nullptr, dw_g.data(), db_g.data(), dout_g.data(), act2_g.data(),
                               w2_g.data(), s.N, s.OC, s.IC);
        }
        expect_close(download(*cpu_, dw_c), download(*gpu, dw_g), tol, "dweight 3x" + tag);
        expect_close(download(*cpu_, db_c), download(*gpu, db_g), kExact, "dbias 3x" + tag);
      }
    }
  }
}

// Attention with ragged lengths: out, the saved row log-sum-exp, dqkv; padded rows exactly 0.
void check_attention(hh::Backend& cpu, hh::Backend& gpu, int B, int T, int NH, int hs,
                     const std::vector<int32_t>& lengths, double tol, const std::string& tag) {
  const int C = NH * hs;
  auto qkv = random_floats(static_cast<size_t>(B) * T * 3 * C, 30, 1.5f);
  auto dout = random_floats(static_cast<size_t>(B) * T * C, 31);
  auto qkv_c = upload(cpu, qkv), qkv_g = upload(gpu, qkv);
  auto dout_c = upload(cpu, dout), dout_g = upload(gpu, dout);
  auto len_c = upload(cpu, lengths), len_g = upload(gpu, lengths);
  hh::Buffer<float> out_c(cpu, B * T * C), saved_c(cpu, cpu.attention_saved_floats(B, T, NH));
  hh::Buffer<float> out_g(gpu, B * T * C), saved_g(gpu, gpu.attention_saved_floats(B, T, NH));
  hh::Buffer<float> dqkv_c(cpu, qkv.size());
  auto dqkv_g = upload(gpu, random_floats(qkv.size(), 32));  // must be overwritten everywhere
  cpu.attention_forward(out_c.data(), saved_c.data(), qkv_c.data(), len_c.data(), B, T, C, NH);
  gpu.attention_forward(out_g.data(), saved_g.data(), qkv_g.data(), len_g.data(), B, T, C, NH);
  const auto out = download(gpu, out_g);
  expect_close(download(cpu, out_c), out, tol, "attention out" + tag);
  // The GPU keeps only lse[B][NH][T] = log Σ_{s≤t} exp(scale·q_t·k_s) (0 on padded rows),
  // checked here against the same sum in double on the host.
  ASSERT_EQ(saved_g.size(), static_cast<size_t>(B) * NH * T) << "GPU saved floats" << tag;
  std::vector<float> lse_want(saved_g.size(), 0.0f);
  const double scale = 1.0 / std::sqrt(static_cast<double>(hs));
  for (int b = 0; b < B; b++)
    for (int h = 0; h < NH; h++)
      for (int t = 0; t < lengths[b]; t++) {
        const float* q = &qkv[(static_cast<size_t>(b) * T + t) * 3 * C + h * hs];
        std::vector<double> sc(t + 1);
        double mx = -INFINITY, z = 0;
        for (int s = 0; s <= t; s++) {
          const float* k = &qkv[(static_cast<size_t>(b) * T + s) * 3 * C + C + h * hs];
          double dot = 0;
          for (int d = 0; d < hs; d++) dot += static_cast<double>(q[d]) * k[d];
          sc[s] = scale * dot;
          mx = std::max(mx, sc[s]);
        }
        for (int s = 0; s <= t; s++) z += std::exp(sc[s] - mx);
        lse_want[(static_cast<size_t>(b) * NH + h) * T + t] = static_cast<float>(mx + std::log(z));
      }
  expect_close(lse_want, download(gpu, saved_g), tol, "attention lse" + tag);
  cpu.attention_backward(dqkv_c.data(), dout_c.data(), qkv_c.data(), out_c.data(), saved_c.data(),
                         len_c.data(), B, T, C, NH);
  gpu.attention_backward(dqkv_g.data(), dout_g.data(), qkv_g.data(), out_g.data(), saved_g.data(),
                         len_g.data(), B, T, C, NH);
  const auto dqkv = download(gpu, dqkv_g);
  expect_close(download(cpu, dqkv_c), dqkv, tol, "attention dqkv" + tag);
  for (int b = 0; b < B; b++)
    for (int t = lengths[b]; t < T; t++) {
      expect_zero_rows(out, C, b * T + t, "attention out (padded)" + tag);
      expect_zero_rows(dqkv, 3 * C, b * T + t, "attention dqkv (padded)" + tag);
    }
}

TEST_F(CudaParity, AttentionExactFp32) {
  check_attention(*cpu_, *gpu_, 3, 37, 3, 16, {37, 1, 20}, kExact, " fp32 T=37");
  // Chunks of heads (HH_CUDA_ATTN_HEADS): one head, and 2 of 3 (a short last chunk).
  for (const char* heads : {"1", "2"}) {
    setenv("HH_CUDA_ATTN_HEADS", heads, 1);
    auto gpu = hh::make_cuda_backend(0);
    unsetenv("HH_CUDA_ATTN_HEADS");
    check_attention(*cpu_, *gpu, 3, 37, 3, 16, {37, 1, 20}, kExact,
                    std::string(" fp32 T=37, heads per chunk ") + heads);
  }
  // Causal row blocks (HH_CUDA_ATTN_BLOCKS): none, 2 (the default's choice at T ≥ 1024), 3 (37
  // rows: 13 + 13 + 11), one per row, and with chunks of 2 heads; the padded rows fall in different
  // blocks.
  for (const char* blocks : {"1", "2", "3", "37"}) {
    setenv("HH_CUDA_ATTN_BLOCKS", blocks, 1);
    auto gpu = hh::make_cuda_backend(0);
    setenv("HH_CUDA_ATTN_HEADS", "2", 1);
    auto gpu_chunked = hh::make_cuda_backend(0);
    unsetenv("HH_CUDA_ATTN_HEADS");
    unsetenv("HH_CUDA_ATTN_BLOCKS");
    check_attention(*cpu_, *gpu, 3, 37, 3, 16, {37, 1, 20}, kExact,
                    std::string(" fp32 T=37, row blocks ") + blocks);
    check_attention(*cpu_, *gpu_chunked, 2, 300, 3, 16, {300, 141}, kExact,
                    std::string(" fp32 T=300, 2 heads per chunk, row blocks ") + blocks);
  }
  // Every softmax kernel: rows held in registers (N = 16 and 32 values per lane) and, past
  // T = 1024, the loops over the row in memory.
  check_attention(*cpu_, *gpu_, 1, 300, 2, 16, {300}, kExact, " fp32 T=300");
  check_attention(*cpu_, *gpu_, 2, 1000, 1, 16, {1000, 517}, kExact, " fp32 T=1000");
  check_attention(*cpu_, *gpu_, 1, 1100, 1, 16, {1030}, kExact, " fp32 T=1100");
}

TEST_F(CudaParity, AttentionTf32) {
  set_cuda_env(true, true);
  auto gpu = hh::make_cuda_backend(0);
  // The backward chains four TF32 products (scores recomputed, dP, then dQ and dK from
  // dS = P∘(dP − Σ P·dP), whose subtraction cancels): twice kTf32. On the H100
  // (2026-11-27) one entry of 196608 landed at 1.2× kTf32.
  const double tol = 2 * kTf32;
  check_attention(*cpu_, *gpu, 2, 128, 4, 64, {128, 77}, tol, " tf32 T=128");
  check_attention(*cpu_, *gpu, 4, 64, 2, 32, {64, 64, 3, 50}, tol, " tf32 T=64");
}

// The fused kernels (HH_CUDA_FLASH=1): plain fp32 arithmetic, no tensor cores; the online
// softmax adds a few roundings per row, hence 1e-4 rather than 1e-5. Head sizes that use
// every lane-group width (16 → 1 lane per row, 24 → 2, 64 → 4, 128 → 8), ragged lengths,
// T not a multiple of the 32-row tiles.
TEST_F(CudaParity, AttentionFlash) {
  set_cuda_env(false, true, /*flash=*/1);
  auto gpu = hh::make_cuda_backend(0);
  const double tol = 1e-4;
  check_attention(*cpu_, *gpu, 3, 37, 3, 16, {37, 1, 20}, tol, " flash hs=16");
  check_attention(*cpu_, *gpu, 2, 100, 2, 24, {100, 33}, tol, " flash hs=24");
  check_attention(*cpu_, *gpu, 2, 128, 4, 64, {128, 77}, tol, " flash hs=64");
  check_attention(*cpu_, *gpu, 1, 70, 1, 128, {65}, tol, " flash hs=128");
}

// The fused kernels on TF32 tensor cores (HH_CUDA_FLASH=2, attention_flash_tc.cu). Every
// product rounds its operands to TF32 (round to nearest, 10-bit mantissa) and accumulates
// in fp32, exactly like the cuBLAS TF32 path, and the backward chains the same four
// products (S recomputed, dP, then dQ and dK from the cancelling dS), so the tolerance is
// AttentionTf32's 2·kTf32; the online softmax only adds fp32 roundings (~1e-6).
// scripts/flash_tc_check.py replays these shapes with TF32-rounded operands on the CPU:
// worst 0.6 of 1e-2. Shapes: a single token; T = 37, 130 (tiles of 64 cut short, ragged
// lengths, a length-1 sequence, padded whole tiles); T = 256; 3 and 12 heads; every
// supported head size (16, 32, 48, 64); and head sizes the kernels do not take (40, 128),
// which must fall back to the cuBLAS path.
TEST_F(CudaParity, AttentionFlashTensorCores) {
  set_cuda_env(true, true, /*flash=*/2);
  auto gpu = hh::make_cuda_backend(0);
  const double tol = 2 * kTf32;
  check_attention(*cpu_, *gpu, 1, 1, 3, 64, {1}, tol, " flash2 T=1");
  check_attention(*cpu_, *gpu, 3, 37, 3, 64, {37, 1, 20}, tol, " flash2 T=37");
  check_attention(*cpu_, *gpu, 3, 130, 12, 64, {130, 1, 65}, tol, " flash2 T=130 NH=12");
  check_attention(*cpu_, *gpu, 2, 256, 3, 64, {256, 200}, tol, " flash2 T=256");
  check_attention(*cpu_, *gpu, 2, 100, 2, 16, {100, 64}, tol, " flash2 hs=16");
  check_attention(*cpu_, *gpu, 2, 70, 2, 32, {70, 63}, tol, " flash2 hs=32");
  check_attention(*cpu_, *gpu, 1, 129, 1, 48, {128}, tol, " flash2 hs=48");
  check_attention(*cpu_, *gpu, 2, 50, 2, 40, {50, 17}, tol, " flash2 fallback hs=40");
  check_attention(*cpu_, *gpu, 1, 70, 1, 128, {65}, tol, " flash2 fallback hs=128");
  // Deterministic: a second run gives the same bits (fixed loop orders, no atomics).
  const int B = 2, T = 130, NH = 2, hs = 64, C = NH * hs;
  auto qkv = upload(*gpu, random_floats(static_cast<size_t>(B) * T * 3 * C, 50));
  auto dout = upload(*gpu, random_floats(static_cast<size_t>(B) * T * C, 51));
  auto len = upload(*gpu, std::vector<int32_t>{T, 99});
  hh::Buffer<float> out(*gpu, B * T * C), saved(*gpu, gpu->attention_saved_floats(B, T, NH));
  hh::Buffer<float> dqkv(*gpu, qkv.size());
  std::vector<float> first_out, first_dqkv;
  for (int run = 0; run < 2; run++) {
    gpu->attention_forward(out.data(), saved.data(), qkv.data(), len.data(), B, T, C, NH);
    gpu->attention_backward(dqkv.data(), dout.data(), qkv.data(), out.data(), saved.data(),
                            len.data(), B, T, C, NH);
    if (run == 0) {
      first_out = download(*gpu, out);
      first_dqkv = download(*gpu, dqkv);
    } else {
      EXPECT_EQ(download(*gpu, out), first_out) << "flash2 forward not deterministic";
      EXPECT_EQ(download(*gpu, dqkv), first_dqkv) << "flash2 backward not deterministic";
    }
  }
}

// Padding never changes a result: a sequence alone equals the same sequence batched
// behind a longer one and padded (fp32, so only summation order could differ).
TEST_F(CudaParity, AttentionPaddingInvariance) {
  const int NH = 2, hs = 16, C = NH * hs, T = 40, L = 23;
  auto long_seq = random_floats(static_cast<size_t>(T) * 3 * C, 40);
  auto short_seq = random_floats(static_cast<size_t>(L) * 3 * C, 41);
  std::vector<float> batched = long_seq;  // sequence 0: long; sequence 1: short + padding
  batched.resize(static_cast<size_t>(2) * T * 3 * C, 7.0f);
  std::copy(short_seq.begin(), short_seq.end(), batched.begin() + static_cast<size_t>(T) * 3 * C);
  auto qkv_b = upload(*gpu_, batched), qkv_a = upload(*gpu_, short_seq);
  auto len_b = upload(*gpu_, std::vector<int32_t>{T, L}),
       len_a = upload(*gpu_, std::vector<int32_t>{L});
  hh::Buffer<float> out_b(*gpu_, 2 * T * C), out_a(*gpu_, L * C);
  hh::Buffer<float> saved_b(*gpu_, gpu_->attention_saved_floats(2, T, NH));
  hh::Buffer<float> saved_a(*gpu_, gpu_->attention_saved_floats(1, L, NH));
  gpu_->attention_forward(out_b.data(), saved_b.data(), qkv_b.data(), len_b.data(), 2, T, C, NH);
  gpu_->attention_forward(out_a.data(), saved_a.data(), qkv_a.data(), len_a.data(), 1, L, C, NH);
  auto all = download(*gpu_, out_b);
  std::vector<float> second(all.begin() + static_cast<size_t>(T) * C,
                            all.begin() + static_cast<size_t>(T) * C + static_cast<size_t>(L) * C);
  expect_close(download(*gpu_, out_a), second, kExact, "attention alone vs batched");
}

TEST_F(CudaParity, GeluAndResidual) {
  const size_t n = 10007;
  auto x = random_floats(n, 50, 6.0f), dout = random_floats(n, 51), y = random_floats(n, 52);
  auto [x_c, x_g] = both(x);
  auto [y_c, y_g] = both(y);
  auto [dout_c, dout_g] = both(dout);
  hh::Buffer<float> out_c(*cpu_, n), out_g(*gpu_, n), dinp_c(*cpu_, n), dinp_g(*gpu_, n);
  cpu_->gelu_forward(out_c.data(), x_c.data(), n);
  gpu_->gelu_forward(out_g.data(), x_g.data(), n);
  expect_close(download(*cpu_, out_c), download(*gpu_, out_g), kExact, "gelu out");
  cpu_->gelu_backward(dinp_c.data(), x_c.data(), dout_c.data(), n);
  gpu_->gelu_backward(dinp_g.data(), x_g.data(), dout_g.data(), n);
  expect_close(download(*cpu_, dinp_c), download(*gpu_, dinp_g), kExact, "gelu dinp");
  cpu_->residual_forward(out_c.data(), x_c.data(), y_c.data(), n);
  gpu_->residual_forward(out_g.data(), x_g.data(), y_g.data(), n);
  EXPECT_EQ(download(*cpu_, out_c), download(*gpu_, out_g)) << "residual (one rounding: exact)";
}

TEST_F(CudaParity, CrossEntropyInPlaceAndMasked) {
  const int N = 37, V = 1000, Vp = 1024;
  auto logits = random_floats(static_cast<size_t>(N) * Vp, 60, 8.0f);
  auto targets = random_ints(N, 61, 0, V - 1);
  targets[3] = -1;
  targets[10] = -1;
  targets[11] = V - 1;
  auto dlosses = random_floats(N, 62);
  auto [logits_c, logits_g] = both(logits);
  auto [t_c, t_g] = both(targets);
  auto [dl_c, dl_g] = both(dlosses);
  hh::Buffer<float> loss_c(*cpu_, N), loss_g(*gpu_, N);
  cpu_->crossentropy_forward(loss_c.data(), logits_c.data(), t_c.data(), N, V, Vp);
  gpu_->crossentropy_forward(loss_g.data(), logits_g.data(), t_g.data(), N, V, Vp);
  const auto losses = download(*gpu_, loss_g);
  expect_close(download(*cpu_, loss_c), losses, kExact, "crossentropy losses");
  EXPECT_EQ(losses[3], 0.0f);
  hh::Buffer<float> ent_c(*cpu_, N), ent_g(*gpu_, N);
  cpu_->softmax_entropy(ent_c.data(), logits_c.data(), t_c.data(), N, V, Vp);
  gpu_->softmax_entropy(ent_g.data(), logits_g.data(), t_g.data(), N, V, Vp);
  const auto entropy = download(*gpu_, ent_g);
  expect_close(download(*cpu_, ent_c), entropy, kExact, "softmax entropy");
  EXPECT_EQ(entropy[3], 0.0f);
  // Out of place, then in place (dlogits aliases logits): the same result.
  hh::Buffer<float> dlogits_c(*cpu_, logits.size()), dlogits_g(*gpu_, logits.size());
  cpu_->crossentropy_backward(dlogits_c.data(), logits_c.data(), t_c.data(), dl_c.data(), N, V, Vp);
  gpu_->crossentropy_backward(dlogits_g.data(), logits_g.data(), t_g.data(), dl_g.data(), N, V, Vp);
  const auto ref = download(*cpu_, dlogits_c);
  const auto out_of_place = download(*gpu_, dlogits_g);
  expect_close(ref, out_of_place, kExact, "crossentropy dlogits");
  gpu_->crossentropy_backward(logits_g.data(), logits_g.data(), t_g.data(), dl_g.data(), N, V, Vp);
  EXPECT_EQ(download(*gpu_, logits_g), out_of_place) << "in-place dlogits differ";
  for (int i = 0; i < N; i++)
    for (int c = V; c < Vp; c++) ASSERT_EQ(out_of_place[static_cast<size_t>(i) * Vp + c], 0.0f);
  expect_zero_rows(out_of_place, Vp, 3, "crossentropy dlogits (no-loss row)");
}

// The default (HH_CUDA_FUSE on): the backward that stages each row in shared memory (one HBM read),
// at a small vocabulary, GPT-2's (a 197 KiB row: the opt-in shared memory limit) and an odd Vp (no
// float4 rows: the two-read kernel runs). Out of place and in place.
TEST_F(CudaParity, CrossEntropyBackwardStagedRow) {
  set_cuda_env(/*tf32=*/false, /*lt=*/true, /*flash=*/0, /*fuse=*/true);
  auto gpu = hh::make_cuda_backend(0);
  struct Shape {
    int N, V, Vp;
  };
  for (Shape s : {Shape{37, 1000, 1024}, Shape{6, 50257, 50304}, Shape{9, 1001, 1003}}) {
    const std::string tag = " V=" + std::to_string(s.V) + " Vp=" + std::to_string(s.Vp);
    auto logits = random_floats(static_cast<size_t>(s.N) * s.Vp, 63, 8.0f);
    auto targets = random_ints(s.N, 64, 0, s.V - 1);
    targets[1] = -1;
    targets[2] = s.V - 1;
    auto dlosses = random_floats(s.N, 65);
    auto logits_c = upload(*cpu_, logits), logits_g = upload(*gpu, logits);
    auto t_c = upload(*cpu_, targets), t_g = upload(*gpu, targets);
    auto dl_c = upload(*cpu_, dlosses), dl_g = upload(*gpu, dlosses);
    hh::Buffer<float> dlogits_c(*cpu_, logits.size());
    auto dlogits_g = upload(*gpu, random_floats(logits.size(), 66));  // overwritten
    cpu_->crossentropy_backward(dlogits_c.data(), logits_c.data(), t_c.data(), dl_c.data(), s.N,
                                s.V, s.Vp);
    gpu->crossentropy_backward(dlogits_g.data(), logits_g.data(), t_g.data(), dl_g.data(), s.N, s.V,
                               s.Vp);
    const auto out_of_place = download(*gpu, dlogits_g);
    expect_close(download(*cpu_, dlogits_c), out_of_place, kExact, "dlogits" + tag);
    gpu->crossentropy_backward(logits_g.data(), logits_g.data(), t_g.data(), dl_g.data(), s.N, s.V,
                               s.Vp);
    EXPECT_EQ(download(*gpu, logits_g), out_of_place) << "in-place dlogits differ" << tag;
    for (int i = 0; i < s.N; i++)
      for (int c = s.V; c < s.Vp; c++)
        ASSERT_EQ(out_of_place[static_cast<size_t>(i) * s.Vp + c], 0.0f) << tag;
    expect_zero_rows(out_of_place, s.Vp, 1, "dlogits (no-loss row)" + tag);
  }
}

TEST_F(CudaParity, GatherScatterRows) {
  const int rows_in = 20, M = 33, C = 300;
  auto inp = random_floats(rows_in * C, 70), dout = random_floats(M * C, 71);
  auto dinp0 = random_floats(rows_in * C, 72);
  auto rows = random_ints(M, 73, 0, 6);  // repeats
  rows[0] = rows_in - 1;
  auto [inp_c, inp_g] = both(inp);
  auto [dout_c, dout_g] = both(dout);
  auto [dinp_c, dinp_g] = both(dinp0);
  auto [rows_c, rows_g] = both(rows);
  hh::Buffer<float> out_c(*cpu_, M * C), out_g(*gpu_, M * C);
  cpu_->gather_rows(out_c.data(), inp_c.data(), rows_c.data(), M, C);
  gpu_->gather_rows(out_g.data(), inp_g.data(), rows_g.data(), M, C);
  EXPECT_EQ(download(*cpu_, out_c), download(*gpu_, out_g));
  cpu_->scatter_add_rows(dinp_c.data(), dout_c.data(), rows_c.data(), M, C);
  gpu_->scatter_add_rows(dinp_g.data(), dout_g.data(), rows_g.data(), M, C);
  // Same additions in the same order (m increasing per row): bit-identical.
  EXPECT_EQ(download(*cpu_, dinp_c), download(*gpu_, dinp_g));
}

// HH_CUDA_KERNEL_TIMES: the backend records its kernels through CUPTI and prints the
// table when destroyed; the kernel it ran is in it, with its call count.
TEST_F(CudaParity, KernelTimesListTheKernelsThatRan) {
  setenv("HH_CUDA_KERNEL_TIMES", "50", 1);
  testing::internal::CaptureStderr();
  {
    auto gpu = hh::make_cuda_backend(0);
    const size_t n = size_t(1) << 20;
    hh::Buffer<float> x(*gpu, n), y(*gpu, n);
    gpu->fill_zero(x.data(), x.bytes());
    for (int i = 0; i < 3; i++) gpu->gelu_forward(y.data(), x.data(), n);
    gpu->synchronize();
  }
  const std::string err = testing::internal::GetCapturedStderr();
  unsetenv("HH_CUDA_KERNEL_TIMES");
  if (err.find("HH_CUDA_KERNEL_TIMES:") != std::string::npos) GTEST_SKIP() << err;
  const size_t row = err.find("gelu_forward_kernel");
  ASSERT_NE(row, std::string::npos) << err;
  const std::string line = err.substr(row, err.find('\n', row) - row);
  EXPECT_NE(line.find(" 3 "), std::string::npos) << "three calls: " << line;
  EXPECT_NE(err.find("all kernels"), std::string::npos) << err;
}

TEST_F(CudaParity, AdamWAndFlatUtilities) {
  const size_t n = 100003;
  auto p = random_floats(n, 80), g = random_floats(n, 81, 0.1f);
  auto m = random_floats(n, 82, 0.01f), v = random_floats(n, 83, 0.001f);
  for (auto& x : v) x = std::fabs(x);
  auto [p_c, p_g] = both(p);
  auto [g_c, g_g] = both(g);
  auto [m_c, m_g] = both(m);
  auto [v_c, v_g] = both(v);
  hh::AdamWParams hp;
  hp.lr = 1e-3f;
  hp.weight_decay = 0.1f;
  // One step on both backends; parameters and both moments compared.
  auto step_both = [&](const std::string& tag) {
    cpu_->adamw_update(p_c.data(), g_c.data(), m_c.data(), v_c.data(), n, hp);
    gpu_->adamw_update(p_g.data(), g_g.data(), m_g.data(), v_g.data(), n, hp);
    expect_close(download(*cpu_, p_c), download(*gpu_, p_g), kExact, "adamw params" + tag);
    expect_close(download(*cpu_, m_c), download(*gpu_, m_g), kExact, "adamw m" + tag);
    expect_close(download(*cpu_, v_c), download(*gpu_, v_g), kExact, "adamw v" + tag);
  };
  hp.step = 3;
  step_both("");
  // A second step with the clip coefficient applied inside the update.
  hp.step = 4;
  hp.grad_scale = 0.37f;
  step_both(", grad_scale");
  EXPECT_EQ(download(*gpu_, g_g), g) << "adamw leaves the gradient as it was";
  const double ss_c = cpu_->sum_squares(g_c.data(), n), ss_g = gpu_->sum_squares(g_g.data(), n);
  EXPECT_NEAR(ss_g, ss_c, 1e-10 * ss_c) << "double accumulation: only the order differs";
  EXPECT_EQ(gpu_->sum_squares(g_g.data(), n), ss_g) << "sum_squares is not deterministic";
  cpu_->scale(g_c.data(), 0.37f, n);
  gpu_->scale(g_g.data(), 0.37f, n);
  EXPECT_EQ(download(*cpu_, g_c), download(*gpu_, g_g));
}

// The whole model, CPU vs CUDA, from the same weights and batch: logits, loss, every
// gradient, one AdamW step. Exact fp32 first (HH_CUDA_TF32=0: only summation order
// differs, errors ~1e-6 relative, checked at 1e-4), then TF32 (each of the ~12 chained
// products of a 2-layer forward+backward adds ~1e-3 of its output's scale: checked at
// 2e-2 for gradients, 1e-2 for logits and loss).
TEST_F(CudaParity, WholeModelLogitsLossGradientsAdamW) {
  const int V = 97, B = 3, T = 32;
  const hh::GPTConfig config = hh::GPTConfig::preset("tiny", V);
  hh::GPT cpu_model(*cpu_, config, /*scalar_head=*/false);
  cpu_model.init_random(1234);
  std::vector<float> host_params(cpu_model.params().size());
  cpu_->copy_to_host(host_params.data(), cpu_model.params().data(), cpu_model.params().bytes());

  hh::Batch batch;
  batch.B = B;
  batch.T = T;
  batch.lengths = {T, 17, 5};
  batch.tokens = random_ints(B * T, 90, 0, V - 1);
  batch.targets.assign(B * T, -1);
  for (int b = 0; b < B; b++)
    for (int t = 0; t + 1 < batch.lengths[b]; t++)
      batch.targets[b * T + t] = batch.tokens[b * T + t + 1];
  std::vector<int32_t> real_rows;
  for (int b = 0; b < B; b++)
    for (int t = 0; t < batch.lengths[b]; t++) real_rows.push_back(b * T + t);

  const float cpu_loss = cpu_model.forward(batch);
  const auto cpu_logits = cpu_model.logits_rows(real_rows);
  cpu_model.backward();

  struct Mode {
    bool tf32;
    int flash;  // HH_CUDA_FLASH
    bool fuse;
    const char* tag;
  };
  for (Mode mode : {Mode{false, 0, true, " (fp32)"}, Mode{true, 0, true, " (tf32)"},
                    Mode{false, 1, true, " (fp32, flash attention)"},
                    Mode{true, 2, true, " (fused attention, tf32, flash=2)"},
                    Mode{false, 0, false, " (fp32, HH_CUDA_FUSE=0)"},
                    Mode{true, 0, false, " (tf32, HH_CUDA_FUSE=0)"}}) {
    const bool tf32 = mode.tf32;
    const std::string tag = mode.tag;
    const double tol_fwd = tf32 ? 1e-2 : 1e-4;
    const double tol_grad = tf32 ? 2e-2 : 1e-4;
    set_cuda_env(tf32, true, mode.flash, mode.fuse);
    auto gpu = hh::make_cuda_backend(0);
    hh::GPT gpu_model(*gpu, config, false);
    ASSERT_EQ(gpu_model.params().size(), host_params.size());
    gpu->copy_to_device(gpu_model.params().data(), host_params.data(),
                        host_params.size() * sizeof(float));
    const float gpu_loss = gpu_model.forward(batch);
    EXPECT_NEAR(gpu_loss, cpu_loss, tol_fwd * std::fabs(cpu_loss)) << "loss" << tag;
    expect_close(cpu_logits, gpu_model.logits_rows(real_rows), tol_fwd, "logits" + tag);
    gpu_model.backward();
    for (const auto& t : cpu_model.param_tensors())
      expect_close(cpu_model.get_grad(t.name), gpu_model.get_grad(t.name), tol_grad,
                   "grad " + t.name + tag);

    // One AdamW step over the flat buffers (fresh moments on both sides).
    hh::AdamWParams hp;
    hp.lr = 1e-3f;
    hp.weight_decay = 0.1f;
    const size_t n = host_params.size();
    hh::Buffer<float> m_c(*cpu_, n), v_c(*cpu_, n), p_c(*cpu_, n), m_g(*gpu, n), v_g(*gpu, n);
    cpu_->fill_zero(m_c.data(), m_c.bytes());
    cpu_->fill_zero(v_c.data(), v_c.bytes());
    gpu->fill_zero(m_g.data(), m_g.bytes());
    gpu->fill_zero(v_g.data(), v_g.bytes());
    cpu_->copy_to_device(p_c.data(), host_params.data(), n * sizeof(float));
    cpu_->adamw_update(p_c.data(), cpu_model.grads().data(), m_c.data(), v_c.data(), n, hp);
    gpu->adamw_update(gpu_model.params().data(), gpu_model.grads().data(), m_g.data(), v_g.data(),
                      n, hp);
    // The first Adam step moves each weight by lr·g/(|g| + eps) ≈ lr·sign(g) (plus the
    // decay), so where both sides' g agree in sign and are ≫ eps the moves agree to float
    // rounding. Entries whose gradient differs by more than half its size (sign
    // ambiguous: |g| at the level of the TF32 error) are skipped, and must be rare.
    const auto after_c = download(*cpu_, p_c), after_g = download(*gpu, gpu_model.params());
    std::vector<float> g_c(n), g_g(n);
    cpu_->copy_to_host(g_c.data(), cpu_model.grads().data(), n * sizeof(float));
    gpu->copy_to_host(g_g.data(), gpu_model.grads().data(), n * sizeof(float));
    size_t bad = 0, ambiguous = 0, checked = 0;
    for (size_t i = 0; i < n; i++) {
      if (std::fabs(g_c[i]) < 1e-6f) continue;  // unused rows, gaps: nothing to compare
      if (std::fabs(g_g[i] - g_c[i]) > 0.5 * std::fabs(g_c[i])) {
        ambiguous++;
        continue;
      }
      checked++;
      const double diff = std::fabs(static_cast<double>(after_g[i]) - after_c[i]);
      if (!(diff <= 1e-2 * hp.lr + 1e-6 * std::fabs(after_c[i]))) bad++;
    }
    EXPECT_EQ(bad, 0u) << "AdamW step: " << bad << " of " << checked << " weights moved differently"
                       << tag;
    EXPECT_LT(ambiguous, (checked + ambiguous) / 20)
        << "AdamW step: too many near-zero/sign-ambiguous gradients" << tag;
    expect_close(download(*cpu_, v_c), download(*gpu, v_g), 2 * tol_grad, "AdamW v" + tag);
  }
}

// The scalar head (preference model / value model): scores at chosen rows (one repeated)
// and every gradient after backward_scores, CPU vs CUDA in exact fp32.
TEST_F(CudaParity, WholeModelScalarHead) {
  const int V = 97, B = 2, T = 24;
  const hh::GPTConfig config = hh::GPTConfig::preset("tiny", V);
  hh::GPT cpu_model(*cpu_, config, /*scalar_head=*/true);
  cpu_model.init_random(99);
  std::vector<float> host_params(cpu_model.params().size());
  cpu_->copy_to_host(host_params.data(), cpu_model.params().data(), cpu_model.params().bytes());
  hh::GPT gpu_model(*gpu_, config, true);
  gpu_->copy_to_device(gpu_model.params().data(), host_params.data(),
                       host_params.size() * sizeof(float));
  hh::Batch batch;
  batch.B = B;
  batch.T = T;
  batch.lengths = {T, 9};
  batch.tokens = random_ints(B * T, 91, 0, V - 1);
  const std::vector<int32_t> rows = {T - 1, T + 8, 3, T + 8};  // last tokens, one repeat
  const auto scores_c = cpu_model.forward_scores(batch, rows);
  const auto scores_g = gpu_model.forward_scores(batch, rows);
  expect_close(scores_c, scores_g, 1e-4, "scores");
  const std::vector<float> dscores = {1.0f, -0.5f, 0.25f, 2.0f};
  cpu_model.backward_scores(dscores);
  gpu_model.backward_scores(dscores);
  for (const auto& t : cpu_model.param_tensors())
    expect_close(cpu_model.get_grad(t.name), gpu_model.get_grad(t.name), 1e-4,
                 "scalar head grad " + t.name);
}

// After the first training step every buffer (activations, cuBLAS workspace, scratch) has
// its final size: a second step of the same shape must not raise the memory high-water mark.
TEST_F(CudaParity, SecondStepDoesNotGrowMemory) {
  const int V = 97, B = 2, T = 40;
  set_cuda_env(true, true);
  auto gpu = hh::make_cuda_backend(0);
  hh::GPT model(*gpu, hh::GPTConfig::preset("tiny", V), false);
  model.init_random(5);
  hh::Batch batch;
  batch.B = B;
  batch.T = T;
  batch.lengths = {T, 31};
  batch.tokens = random_ints(B * T, 92, 0, V - 1);
  batch.targets = random_ints(B * T, 93, -1, V - 1);
  hh::Buffer<float> m(*gpu, model.params().size()), v(*gpu, model.params().size());
  gpu->fill_zero(m.data(), m.bytes());
  gpu->fill_zero(v.data(), v.bytes());
  size_t peak_after_first = 0;
  for (int step = 1; step <= 3; step++) {
    model.zero_grad();
    model.forward(batch);
    model.backward();
    const double norm2 = gpu->sum_squares(model.grads().data(), model.grads().size());
    EXPECT_TRUE(std::isfinite(norm2) && norm2 > 0.0) << "step " << step;
    hh::AdamWParams hp;
    hp.step = step;
    gpu->adamw_update(model.params().data(), model.grads().data(), m.data(), v.data(),
                      model.params().size(), hp);
    gpu->synchronize();
    if (step == 1) peak_after_first = gpu->peak_bytes();
  }
  EXPECT_EQ(gpu->peak_bytes(), peak_after_first);
}

// Generation ops: embedding at positions, KV-cache writes (a skipped row), decode attention.
TEST_F(CudaParity, DecodeWithKvCache) {
  const int S = 3, max_len = 20, NH = 3, hs = 16, C = NH * hs, M = 4, V = 11;
  const std::vector<int32_t> slots = {2, 0, 1, 0}, positions = {0, 19, 7, -1};
  auto tokens = random_ints(M, 100, 0, V - 1);
  auto wte = random_floats(V * C, 101), wpe = random_floats(max_len * C, 102);
  auto qkv = random_floats(static_cast<size_t>(M) * 3 * C, 103);
  auto cache0 = random_floats(static_cast<size_t>(S) * max_len * C, 104);
  auto [tok_c, tok_g] = both(tokens);
  auto [wte_c, wte_g] = both(wte);
  auto [wpe_c, wpe_g] = both(wpe);
  auto [qkv_c, qkv_g] = both(qkv);
  auto [slots_c, slots_g] = both(slots);
  auto [k_c, k_g] = both(cache0);
  const auto vcache0 = random_floats(cache0.size(), 105);
  auto [v_c, v_g] = both(vcache0);
  // Row 3 (position −1) is skipped by the write; the others are real rows.
  std::vector<int32_t> emb_positions = positions;
  emb_positions[3] = 5;
  auto [epos_c, epos_g] = both(emb_positions);
  auto [pos_c, pos_g] = both(positions);
  hh::Buffer<float> emb_c(*cpu_, M * C), emb_g(*gpu_, M * C);
  cpu_->embedding_forward_at(emb_c.data(), tok_c.data(), epos_c.data(), wte_c.data(), wpe_c.data(),
                             M, C);
  gpu_->embedding_forward_at(emb_g.data(), tok_g.data(), epos_g.data(), wte_g.data(), wpe_g.data(),
                             M, C);
  expect_close(download(*cpu_, emb_c), download(*gpu_, emb_g), kExact, "embedding_forward_at");
  cpu_->kv_cache_write(k_c.data(), v_c.data(), qkv_c.data(), slots_c.data(), pos_c.data(), M,
                       max_len, C);
  gpu_->kv_cache_write(k_g.data(), v_g.data(), qkv_g.data(), slots_g.data(), pos_g.data(), M,
                       max_len, C);
  EXPECT_EQ(download(*cpu_, k_c), download(*gpu_, k_g)) << "kv_cache_write K";
  EXPECT_EQ(download(*cpu_, v_c), download(*gpu_, v_g)) << "kv_cache_write V";
  // Decode the first three rows (row 3 has no position).
  const int rows = 3;
  hh::Buffer<float> out_c(*cpu_, rows * C), out_g(*gpu_, rows * C);
  cpu_->attention_decode(out_c.data(), qkv_c.data(), k_c.data(), v_c.data(), slots_c.data(),
                         pos_c.data(), rows, max_len, C, NH);
  gpu_->attention_decode(out_g.data(), qkv_g.data(), k_g.data(), v_g.data(), slots_g.data(),
                         pos_g.data(), rows, max_len, C, NH);
  const auto ref = download(*cpu_, out_c);
  expect_close(ref, download(*gpu_, out_g), kExact, "attention_decode");
  // Again on backends made with HH_CUDA_FAST_DECODE=0 and =1 (the warp-parallel
  // kernel), from the caches before the write: attention_decode appends the rows' k, v
  // itself, and the caches end as kv_cache_write left them.
  const auto k_after = download(*cpu_, k_c), v_after = download(*cpu_, v_c);
  for (bool fast : {false, true}) {
    set_cuda_env(/*tf32=*/false, /*lt=*/true, /*flash=*/0, /*fuse=*/false, fast);
    auto gpu = hh::make_cuda_backend(0);
    auto qkv_f = upload(*gpu, qkv), k_f = upload(*gpu, cache0), v_f = upload(*gpu, vcache0);
    auto slots_f = upload(*gpu, slots), pos_f = upload(*gpu, positions);
    hh::Buffer<float> out_f(*gpu, rows * C);
    gpu->attention_decode(out_f.data(), qkv_f.data(), k_f.data(), v_f.data(), slots_f.data(),
                          pos_f.data(), rows, max_len, C, NH);
    const std::string tag = std::string("attention_decode fast_decode=") + (fast ? "1" : "unset");
    expect_close(ref, download(*gpu, out_f), kExact, tag);
    EXPECT_EQ(download(*gpu, k_f), k_after) << tag << ": appended keys";
    EXPECT_EQ(download(*gpu, v_f), v_after) << tag << ": appended values";
  }
}

// fp16 bits of x, rounded to nearest even, for normal fp16 values (|x| in [2^-14, 65504]),
// which is all the half-cache test below makes.
uint16_t half_bits(float x) {
  uint32_t b;
  std::memcpy(&b, &x, sizeof(b));
  const uint32_t sign = (b >> 16) & 0x8000u;
  b &= 0x7fffffffu;
  b += 0xfffu + ((b >> 13) & 1u);  // round the 13 dropped mantissa bits to nearest even
  const uint32_t exponent = (b >> 23) - 127 + 15, mantissa = (b >> 13) & 0x3ffu;
  return static_cast<uint16_t>(sign | (exponent << 10) | mantissa);
}
float half_value(uint16_t h) {
  const uint32_t sign = (h & 0x8000u) << 16, exponent = ((h >> 10) & 0x1fu) - 15 + 127;
  const uint32_t b = sign | (exponent << 23) | ((h & 0x3ffu) << 13);
  float x;
  std::memcpy(&x, &b, sizeof(x));
  return x;
}

// The fp16 decode step's ops (ops.h: decode_fp16; HH_CUDA_DECODE_FP16=1 makes the generator
// use them) against the CPU reference, which runs the fp32 ops on the same fp16 values:
// - to_half is exact: the same bits (subnormals, ties and the overflow edge included);
// - fp32 outputs of the products: an fp16 × fp16 product is exact in fp32, so only the
//   sums differ: their order, and the tensor cores' fp32 accumulation, which need not round
//   to nearest (up to K = 3072 chained adds here): kHalfSums = 1e-4, still far below an
//   indexing or formula error (O(1));
// - fp16 outputs may differ by one fp16 step (2^-10 relative) where the fp32 value before
//   rounding differs in its last bits right at a tie: compared widened, at kHalfStep. The
//   GELU epilogue is cuBLASLt's tanh-GELU: twice that.
TEST_F(CudaParity, DecodeOnFp16Storage) {
  constexpr double kHalfStep = 1.1e-3, kHalfSums = 1e-4;
  auto halves = [](const std::vector<float>& x) {
    std::vector<uint16_t> h(x.size());
    for (size_t i = 0; i < x.size(); i++) h[i] = hh::float_to_half(x[i]);
    return h;
  };
  auto widen = [](const std::vector<uint16_t>& h) {
    std::vector<float> x(h.size());
    for (size_t i = 0; i < h.size(); i++) x[i] = hh::half_to_float(h[i]);
    return x;
  };
  // to_half over the range, with exact ties between neighbouring halves.
  std::vector<float> x = random_floats(4096, 200, 3.0f);
  for (float scale : {1e-8f, 1e-6f, 3e-5f, 7e4f})
    for (float v : random_floats(64, 201, scale)) x.push_back(v);
  for (uint16_t h : {0x0001, 0x03ff, 0x3c00, 0x7bfe})
    x.push_back(0.5f * (hh::half_to_float(h) + hh::half_to_float(static_cast<uint16_t>(h + 1))));
  x.push_back(65520.0f);
  {
    auto [x_c, x_g] = both(x);
    hh::Buffer<uint16_t> h_c(*cpu_, x.size()), h_g(*gpu_, x.size());
    cpu_->to_half(h_c.data(), x_c.data(), x.size());
    gpu_->to_half(h_g.data(), x_g.data(), x.size());
    EXPECT_EQ(download(*cpu_, h_c), download(*gpu_, h_g)) << "to_half";
  }
  // layernorm_forward_half: the register kernel (768) and the loop kernel (1100).
  for (int C : {768, 1100}) {
    const int N = 64;
    auto inp = random_floats(static_cast<size_t>(N) * C, 202, 3.0f);
    auto w = random_floats(C, 203), b = random_floats(C, 204);
    auto [inp_c, inp_g] = both(inp);
    auto [w_c, w_g] = both(w);
    auto [b_c, b_g] = both(b);
    hh::Buffer<uint16_t> out_c(*cpu_, inp.size()), out_g(*gpu_, inp.size());
    cpu_->layernorm_forward_half(out_c.data(), inp_c.data(), w_c.data(), b_c.data(), N, C);
    gpu_->layernorm_forward_half(out_g.data(), inp_g.data(), w_g.data(), b_g.data(), N, C);
    expect_close(widen(download(*cpu_, out_c)), widen(download(*gpu_, out_g)), kHalfStep,
                 "layernorm_forward_half C=" + std::to_string(C));
  }
  // attention_decode_half on a float cache (both kernels: the warp-parallel default and,
  // with HH_CUDA_FAST_DECODE=0, the plain one), GPT-2's head size.
  {
    const int S = 3, max_len = 40, NH = 12, hs = 64, C = NH * hs, M = 3;
    const std::vector<int32_t> slots = {2, 0, 1}, positions = {0, 39, 17};
    auto qkv = random_floats(static_cast<size_t>(M) * 3 * C, 205);
    auto k0 = random_floats(static_cast<size_t>(S) * max_len * C, 206);
    auto v0 = random_floats(k0.size(), 207);
    auto qkv_c = upload(*cpu_, qkv), k_c = upload(*cpu_, k0), v_c = upload(*cpu_, v0);
    auto slots_c = upload(*cpu_, slots), pos_c = upload(*cpu_, positions);
    hh::Buffer<uint16_t> out_c(*cpu_, static_cast<size_t>(M) * C);
    cpu_->attention_decode_half(out_c.data(), qkv_c.data(), k_c.data(), v_c.data(), slots_c.data(),
                                pos_c.data(), M, max_len, C, NH);
    const auto want = widen(download(*cpu_, out_c));
    for (bool fast : {true, false}) {
      set_cuda_env(/*tf32=*/false, /*lt=*/true, /*flash=*/0, /*fuse=*/true, fast);
      auto gpu = hh::make_cuda_backend(0);
      auto qkv_g = upload(*gpu, qkv), k_g = upload(*gpu, k0), v_g = upload(*gpu, v0);
      auto slots_g = upload(*gpu, slots), pos_g = upload(*gpu, positions);
      hh::Buffer<uint16_t> out_g(*gpu, static_cast<size_t>(M) * C);
      gpu->attention_decode_half(out_g.data(), qkv_g.data(), k_g.data(), v_g.data(), slots_g.data(),
                                 pos_g.data(), M, max_len, C, NH);
      const std::string what = std::string("attention_decode_half fast=") + (fast ? "1" : "0");
      expect_close(want, widen(download(*gpu, out_g)), kHalfStep, what);
      EXPECT_EQ(download(*gpu, k_g), download(*cpu_, k_c)) << what << ": appended keys";
    }
    set_cuda_env(/*tf32=*/false, /*lt=*/true);
  }
  // The products: GPT-2's decode shapes (qkv; the MLP's projection with the residual; a
  // head without a bias) and a small ragged one; GELU's for the MLP's first layer.
  struct Shape {
    int N, IC, OC;
    bool bias, residual;
  };
  for (const Shape& sh : {Shape{64, 768, 2304, true, false}, Shape{64, 3072, 768, true, true},
                          Shape{64, 768, 4096, false, false}, Shape{5, 64, 96, true, true}}) {
    const std::string what = "matmul_forward_half " + std::to_string(sh.N) + "x" +
                             std::to_string(sh.IC) + "x" + std::to_string(sh.OC);
    const auto inp = halves(random_floats(static_cast<size_t>(sh.N) * sh.IC, 208, 2.0f));
    const auto w = halves(random_floats(static_cast<size_t>(sh.OC) * sh.IC, 209, 0.1f));
    auto [inp_c, inp_g] = both(inp);
    auto [w_c, w_g] = both(w);
    auto [b_c, b_g] = both(random_floats(sh.OC, 210));
    auto [r_c, r_g] = both(random_floats(static_cast<size_t>(sh.N) * sh.OC, 211, 5.0f));
    hh::Buffer<float> out_c(*cpu_, static_cast<size_t>(sh.N) * sh.OC),
        out_g(*gpu_, static_cast<size_t>(sh.N) * sh.OC);
    cpu_->matmul_forward_half(out_c.data(), inp_c.data(), w_c.data(),
                              sh.bias ? b_c.data() : nullptr, sh.residual ? r_c.data() : nullptr,
                              sh.N, sh.IC, sh.OC);
    gpu_->matmul_forward_half(out_g.data(), inp_g.data(), w_g.data(),
                              sh.bias ? b_g.data() : nullptr, sh.residual ? r_g.data() : nullptr,
                              sh.N, sh.IC, sh.OC);
    expect_close(download(*cpu_, out_c), download(*gpu_, out_g), kHalfSums, what);
    if (sh.residual) continue;
    hh::Buffer<uint16_t> g_c(*cpu_, static_cast<size_t>(sh.N) * sh.OC),
        g_g(*gpu_, static_cast<size_t>(sh.N) * sh.OC);
    const auto bias_h = halves(random_floats(sh.OC, 212));
    auto [bh_c, bh_g] = both(bias_h);
    cpu_->matmul_gelu_forward_half(g_c.data(), inp_c.data(), w_c.data(), bh_c.data(), sh.N, sh.IC,
                                   sh.OC);
    gpu_->matmul_gelu_forward_half(g_g.data(), inp_g.data(), w_g.data(), bh_g.data(), sh.N, sh.IC,
                                   sh.OC);
    expect_close(widen(download(*cpu_, g_c)), widen(download(*gpu_, g_g)), 2 * kHalfStep,
                 "matmul_gelu_forward_half " + what.substr(what.find(' ') + 1));
  }
}

// HH_CUDA_KV_HALF=1 (with TF32): the cache holds fp16. The CPU reference runs on the values
// the GPU holds — the caches and the rows' k, v rounded to fp16 — so the outputs agree to
// kExact (fp32 arithmetic on the same numbers), and the appended entries are the rounded
// k, v bit for bit. Both kernels; hs 64 with half2 pairs, 48 and a misaligned 64 without.
TEST_F(CudaParity, DecodeWithHalfKvCache) {
  struct Case {
    int C, NH, max_len, M, offset;
  };
  const Case cases[] = {{768, 12, 90, 16, 0}, {96, 2, 37, 5, 0}, {128, 2, 33, 4, 1}};
  for (bool fast : {false, true}) {
    set_cuda_env(/*tf32=*/true, /*lt=*/true, /*flash=*/0, /*fuse=*/true, fast);
    setenv("HH_CUDA_KV_HALF", "1", 1);
    auto gpu = hh::make_cuda_backend(0);
    setenv("HH_CUDA_KV_HALF", "0", 1);
    ASSERT_EQ(gpu->kv_value_bytes(), 2u);
    uint32_t seed = 300;
    for (const Case& c : cases) {
      const int S = c.M + 2;
      const std::string tag = std::string(" fast_decode=") + (fast ? "1" : "0") +
                              " C=" + std::to_string(c.C) + " NH=" + std::to_string(c.NH) +
                              " offset=" + std::to_string(c.offset);
      // Magnitudes in [0.25, 1]: normal fp16 numbers, exactly representable after rounding.
      auto normal = [&](size_t n) {
        auto v = random_floats(n, seed++);
        for (float& x : v) x = std::copysign(0.25f + 0.75f * std::fabs(x), x);
        return v;
      };
      const size_t cache_n = static_cast<size_t>(S) * c.max_len * c.C;
      auto qkv = normal(static_cast<size_t>(c.M) * 3 * c.C);
      auto kc = normal(cache_n), vc = normal(cache_n);
      std::vector<int32_t> slots(c.M), positions = random_ints(c.M, seed++, 0, c.max_len - 1);
      for (int m = 0; m < c.M; m++) slots[m] = (m * 5 + 1) % S;  // distinct (S > M, 5 ∤ S)
      positions[0] = 0;
      positions[c.M - 1] = c.max_len - 1;
      // The CPU's inputs: every cache value and the rows' k, v as the fp16 the GPU stores.
      auto rounded = [](std::vector<float> v) {
        for (float& x : v) x = half_value(half_bits(x));
        return v;
      };
      std::vector<float> qkv_ref = qkv;
      for (int m = 0; m < c.M; m++)
        for (int i = c.C; i < 3 * c.C; i++) {
          float& x = qkv_ref[static_cast<size_t>(m) * 3 * c.C + i];
          x = half_value(half_bits(x));
        }
      auto k_c = upload(*cpu_, rounded(kc)), v_c = upload(*cpu_, rounded(vc));
      auto qkv_c = upload(*cpu_, qkv_ref);
      auto slots_c = upload(*cpu_, slots), pos_c = upload(*cpu_, positions);
      hh::Buffer<float> out_c(*cpu_, static_cast<size_t>(c.M) * c.C);
      cpu_->attention_decode(out_c.data(), qkv_c.data(), k_c.data(), v_c.data(), slots_c.data(),
                             pos_c.data(), c.M, c.max_len, c.C, c.NH);
      // The GPU's: fp16 caches (offset values in, so the pairs path is off when odd).
      std::vector<uint16_t> kh(cache_n + c.offset, 0), vh(cache_n + c.offset, 0);
      for (size_t i = 0; i < cache_n; i++) {
        kh[i + c.offset] = half_bits(kc[i]);
        vh[i + c.offset] = half_bits(vc[i]);
      }
      auto k_g = upload(*gpu, kh), v_g = upload(*gpu, vh);
      auto qkv_g = upload(*gpu, qkv);
      auto slots_g = upload(*gpu, slots), pos_g = upload(*gpu, positions);
      hh::Buffer<float> out_g(*gpu, static_cast<size_t>(c.M) * c.C);
      gpu->attention_decode(out_g.data(), qkv_g.data(), k_g.data() + c.offset,
                            v_g.data() + c.offset, slots_g.data(), pos_g.data(), c.M, c.max_len,
                            c.C, c.NH);
      expect_close(download(*cpu_, out_c), download(*gpu, out_g), kExact,
                   "attention_decode, fp16 cache" + tag);
      const auto k_ref = download(*cpu_, k_c), v_ref = download(*cpu_, v_c);
      const auto k_got = download(*gpu, k_g), v_got = download(*gpu, v_g);
      size_t wrong = 0;
      for (size_t i = 0; i < cache_n; i++)
        wrong += (k_got[i + c.offset] != half_bits(k_ref[i])) +
                 (v_got[i + c.offset] != half_bits(v_ref[i]));
      EXPECT_EQ(wrong, 0u) << "fp16 caches after the append differ" << tag;
      // kv_cache_write (prefill) stores the same rounding.
      gpu->kv_cache_write(k_g.data() + c.offset, v_g.data() + c.offset, qkv_g.data(),
                          slots_g.data(), pos_g.data(), c.M, c.max_len, c.C);
      EXPECT_EQ(download(*gpu, k_g), k_got) << "kv_cache_write, fp16" << tag;
      EXPECT_EQ(download(*gpu, v_g), v_got) << "kv_cache_write, fp16" << tag;
    }
  }
}

// Sampling on the device (Gumbel-max with per-row seeds): the same seeds draw the same
// tokens as the CPU; greedy (temperature 0) is the argmax; log-probs agree.
TEST_F(CudaParity, SampleRows) {
  const int M = 9, V = 1000, Vp = 1024;
  auto logits = random_floats(static_cast<size_t>(M) * Vp, 110, 4.0f);
  std::vector<uint64_t> seeds(M);
  for (int m = 0; m < M; m++) seeds[m] = 0x1234567ull * (m + 1);
  auto [logits_c, logits_g] = both(logits);
  auto [seeds_c, seeds_g] = both(seeds);
  for (float temperature : {0.0f, 1.0f, 0.7f}) {
    hh::Buffer<int32_t> tok_c(*cpu_, M), tok_g(*gpu_, M);
    hh::Buffer<float> lp_c(*cpu_, M), lp_g(*gpu_, M);
    cpu_->sample_rows(tok_c.data(), lp_c.data(), logits_c.data(), seeds_c.data(), temperature, M, V,
                      Vp);
    gpu_->sample_rows(tok_g.data(), lp_g.data(), logits_g.data(), seeds_g.data(), temperature, M, V,
                      Vp);
    const std::string tag = " temperature=" + std::to_string(temperature);
    EXPECT_EQ(download(*cpu_, tok_c), download(*gpu_, tok_g)) << "sampled tokens" << tag;
    expect_close(download(*cpu_, lp_c), download(*gpu_, lp_g), kExact, "log-probs" + tag);
    // Backends made with HH_CUDA_FAST_DECODE=0 and =1 (the pruned sampler).
    for (bool fast : {false, true}) {
      set_cuda_env(/*tf32=*/false, /*lt=*/true, /*flash=*/0, /*fuse=*/false, fast);
      auto gpu = hh::make_cuda_backend(0);
      auto logits_f = upload(*gpu, logits);
      auto seeds_f = upload(*gpu, seeds);
      hh::Buffer<int32_t> tok_f(*gpu, M);
      hh::Buffer<float> lp_f(*gpu, M);
      gpu->sample_rows(tok_f.data(), lp_f.data(), logits_f.data(), seeds_f.data(), temperature, M,
                       V, Vp);
      const std::string ftag = tag + " fast_decode=" + (fast ? "1" : "unset");
      EXPECT_EQ(download(*cpu_, tok_c), download(*gpu, tok_f)) << "sampled tokens" << ftag;
      expect_close(download(*cpu_, lp_c), download(*gpu, lp_f), kExact, "log-probs" + ftag);
    }
  }
}

// The warp-parallel attention_decode (HH_CUDA_FAST_DECODE=1) and the default kernel against
// the CPU: head sizes with 1 to 8 dimensions per lane (16, 48, 64, 96, 128, 160, 192, 256),
// 64 both with float2 pairs and, from misaligned qkv and caches, without; 300, past the fast
// kernel's 256, takes the default kernel. Positions 0 (a single key), max_len − 1 and in
// between; M = 1 and 64; a second run (which appends the same k, v again) gives the same
// bits, and the caches after the append equal the CPU's.
TEST_F(CudaParity, DecodeAttentionFastVariants) {
  struct Case {
    int C, NH, max_len, M;
    float scale;  // of q and k: larger scores, a peakier softmax, more rescaling
    bool misaligned;
  };
  const Case cases[] = {
      {64, 4, 37, 5, 1.5f, false},      // hs 16: one dimension per lane, lanes 16..31 idle
      {96, 2, 37, 7, 1.5f, false},      // hs 48: the second dimension on lanes 0..15 only
      {768, 12, 200, 64, 1.5f, false},  // GPT-2 124M: hs 64, float2 pairs
      {768, 12, 200, 64, 3.0f, false},  // the same, peakier
      {128, 2, 50, 9, 1.5f, true},      // hs 64 without pairs (misaligned)
      {768, 12, 200, 1, 1.5f, false},   // M = 1
      {256, 2, 70, 6, 1.5f, false},     // hs 128: pairs, 4 dimensions per lane
      {96, 1, 25, 3, 1.5f, false},      // hs 96: 3 dimensions per lane
      {160, 1, 33, 4, 1.5f, false},     // hs 160: 5 dimensions per lane
      {192, 1, 25, 3, 1.5f, false},     // hs 192: pairs, 6 dimensions per lane
      {512, 2, 20, 3, 1.0f, false},     // hs 256: 8 dimensions per lane
      {300, 1, 20, 3, 1.0f, false},     // hs 300: the default kernel
  };
  for (bool fast : {false, true}) {
    set_cuda_env(/*tf32=*/false, /*lt=*/true, /*flash=*/0, /*fuse=*/false, fast);
    auto gpu = hh::make_cuda_backend(0);
    uint32_t seed = 200;
    for (const Case& c : cases) {
      const int S = c.M + 1, off = c.misaligned ? 1 : 0;
      auto positions = random_ints(c.M, seed++, 0, c.max_len - 1);
      positions[0] = c.M > 1 ? 0 : c.max_len - 1;
      if (c.M > 1) positions[1] = c.max_len - 1;
      if (c.M > 2) positions[2] = 1;
      std::vector<int32_t> slots(c.M);  // distinct (each row appends to its own), not row order
      for (int m = 0; m < c.M; m++) slots[m] = (c.M - m) % S;
      auto qkv = random_floats(static_cast<size_t>(c.M) * 3 * c.C + off, seed++, c.scale);
      auto kc = random_floats(static_cast<size_t>(S) * c.max_len * c.C + off, seed++, c.scale);
      auto vc = random_floats(kc.size(), seed++);
      auto [qkv_c, qkv_g] = std::pair(upload(*cpu_, qkv), upload(*gpu, qkv));
      auto [k_c, k_g] = std::pair(upload(*cpu_, kc), upload(*gpu, kc));
      auto [v_c, v_g] = std::pair(upload(*cpu_, vc), upload(*gpu, vc));
      auto [slots_c, slots_g] = std::pair(upload(*cpu_, slots), upload(*gpu, slots));
      auto [pos_c, pos_g] = std::pair(upload(*cpu_, positions), upload(*gpu, positions));
      hh::Buffer<float> out_c(*cpu_, static_cast<size_t>(c.M) * c.C);
      hh::Buffer<float> out_g(*gpu, static_cast<size_t>(c.M) * c.C);
      cpu_->attention_decode(out_c.data(), qkv_c.data() + off, k_c.data() + off, v_c.data() + off,
                             slots_c.data(), pos_c.data(), c.M, c.max_len, c.C, c.NH);
      gpu->attention_decode(out_g.data(), qkv_g.data() + off, k_g.data() + off, v_g.data() + off,
                            slots_g.data(), pos_g.data(), c.M, c.max_len, c.C, c.NH);
      const std::string tag = std::string(" fast_decode=") + (fast ? "1" : "unset") +
                              " C=" + std::to_string(c.C) + " NH=" + std::to_string(c.NH) +
                              " max_len=" + std::to_string(c.max_len) +
                              " M=" + std::to_string(c.M) + (c.misaligned ? " misaligned" : "");
      const auto first = download(*gpu, out_g);
      expect_close(download(*cpu_, out_c), first, kExact, "attention_decode" + tag);
      gpu->attention_decode(out_g.data(), qkv_g.data() + off, k_g.data() + off, v_g.data() + off,
                            slots_g.data(), pos_g.data(), c.M, c.max_len, c.C, c.NH);
      EXPECT_EQ(download(*gpu, out_g), first) << "attention_decode not deterministic" << tag;
      EXPECT_EQ(download(*gpu, k_g), download(*cpu_, k_c)) << "appended keys" << tag;
      EXPECT_EQ(download(*gpu, v_g), download(*cpu_, v_c)) << "appended values" << tag;
    }
  }
}

// splitmix64's finaliser and the 24 bits behind gumbel()'s u, as in src/ops/cpu/decode.cpp:
// the test looks for two columns with the same u, hence the same noise.
uint64_t test_mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
uint32_t gumbel_bits(uint64_t seed, int v) {
  return static_cast<uint32_t>(
      test_mix64(seed + 0x9e3779b97f4a7c15ull * (static_cast<uint64_t>(v) + 1)) >> 40);
}

// The pruned sampler (HH_CUDA_FAST_DECODE=1) draws exactly the tokens of the default kernel
// and of the CPU, at GPT-2's vocabulary (V = 50257, Vp = 50304) and M = 64, temperatures 0
// (the default kernel either way), 0.5, 0.7, 1 and 2, over rows of eight kinds: spread like
// GPT-2's logits (most columns pruned), flat (many survive stage A), one huge maximum
// (everything else pruned), all equal (nothing pruned by the logit bound), every third
// column −∞, two equal maxima (the first threshold's argmax), all −∞ but three columns,
// uniform. The padding columns hold 1e30: read, they would win. Then: two columns with the
// same u and logit (an exact tie, the smaller index wins), and logits near 1e7 whose scores
// round to many ties (pruned against the default kernel only: the CPU may round x/T + G
// differently); M = 1.
TEST_F(CudaParity, SampleRowsPruned) {
  const int M = 64, V = 50257, Vp = 50304;
  std::mt19937 gen(120);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> uniform(-4.0f, 4.0f);
  std::vector<float> logits(static_cast<size_t>(M) * Vp, 1e30f);
  for (int m = 0; m < M; m++) {
    float* row = logits.data() + static_cast<size_t>(m) * Vp;
    for (int v = 0; v < V; v++) {
      switch (m % 8) {
        case 0:
          row[v] = 3.0f * normal(gen) - 80.0f;
          break;
        case 1:
          row[v] = normal(gen);
          break;
        case 2:
          row[v] = 3.0f * normal(gen);
          break;
        case 3:
          row[v] = 1.5f;
          break;
        case 4:
          row[v] = v % 3 == 0 ? -INFINITY : 3.0f * normal(gen);
          break;
        case 5:
          row[v] = 3.0f * normal(gen);
          break;
        case 6:
          row[v] = -INFINITY;
          break;
        default:
          row[v] = uniform(gen);
          break;
      }
    }
    if (m % 8 == 2) row[(m * 7919) % V] = 1000.0f;
    if (m % 8 == 5) row[m] = row[V - 1 - m] = 40.0f;
    if (m % 8 == 6) row[m] = 1.0f, row[V / 2] = 2.0f, row[V - 1] = 1.5f;
  }
  std::vector<uint64_t> seeds(M);
  for (int m = 0; m < M; m++) seeds[m] = test_mix64(0xabcdefull + m);

  // One run per temperature on the CPU and on each GPU backend.
  struct Draw {
    std::vector<int32_t> tokens;
    std::vector<float> logprobs;
  };
  auto draw = [&](hh::Backend& be, const std::vector<float>& lg, const std::vector<uint64_t>& sd,
                  float temperature, int rows, int vocab, int padded) {
    auto lg_d = upload(be, lg);
    auto sd_d = upload(be, sd);
    hh::Buffer<int32_t> tok(be, rows);
    hh::Buffer<float> lp(be, rows);
    be.sample_rows(tok.data(), lp.data(), lg_d.data(), sd_d.data(), temperature, rows, vocab,
                   padded);
    return Draw{download(be, tok), download(be, lp)};
  };
  set_cuda_env(false, true, 0, false, /*fast_decode=*/false);
  auto gpu_default = hh::make_cuda_backend(0);
  set_cuda_env(false, true, 0, false, /*fast_decode=*/true);
  auto gpu_fast = hh::make_cuda_backend(0);

  for (float temperature : {0.0f, 0.5f, 0.7f, 1.0f, 2.0f}) {
    const std::string tag = " temperature=" + std::to_string(temperature);
    const Draw cpu = draw(*cpu_, logits, seeds, temperature, M, V, Vp);
    const Draw def = draw(*gpu_default, logits, seeds, temperature, M, V, Vp);
    const Draw fast = draw(*gpu_fast, logits, seeds, temperature, M, V, Vp);
    EXPECT_EQ(cpu.tokens, def.tokens) << "default kernel vs CPU" << tag;
    EXPECT_EQ(cpu.tokens, fast.tokens) << "pruned kernel vs CPU" << tag;
    EXPECT_EQ(def.tokens, fast.tokens) << "pruned vs default kernel" << tag;
    expect_close(cpu.logprobs, fast.logprobs, kExact, "pruned log-probs" + tag);
    expect_close(def.logprobs, fast.logprobs, kExact, "pruned vs default log-probs" + tag);
    for (int m = 0; m < M; m++)
      ASSERT_TRUE(fast.tokens[m] >= 0 && fast.tokens[m] < V) << "row " << m << tag;
    // M = 1: the first row alone.
    const std::vector<float> one(logits.begin(), logits.begin() + Vp);
    const std::vector<uint64_t> one_seed(seeds.begin(), seeds.begin() + 1);
    EXPECT_EQ(draw(*gpu_fast, one, one_seed, temperature, 1, V, Vp).tokens[0], cpu.tokens[0])
        << "M = 1" << tag;
  }

  // An exact tie: columns v1 < v2 with the same 24 bits of u (so the same noise) and the
  // same logit, everything else far below: v1 wins on every backend.
  const uint64_t tie_seed = 0x5eedull;
  int v1 = -1, v2 = -1;
  {
    std::vector<int> first(size_t(1) << 24, -1);
    for (int v = 0; v < V && v2 < 0; v++) {
      const uint32_t bits = gumbel_bits(tie_seed, v);
      if (first[bits] >= 0) {
        v1 = first[bits];
        v2 = v;
      }
      first[bits] = v;
    }
  }
  ASSERT_GE(v1, 0) << "no two columns with the same u in " << V;
  std::vector<float> tie(Vp, 1e30f);
  for (int v = 0; v < V; v++) tie[v] = -1000.0f;
  tie[v1] = tie[v2] = 5.0f;
  for (float temperature : {0.5f, 1.0f, 2.0f}) {
    const std::string tag = " tie " + std::to_string(v1) + "/" + std::to_string(v2) +
                            " temperature=" + std::to_string(temperature);
    EXPECT_EQ(draw(*cpu_, tie, {tie_seed}, temperature, 1, V, Vp).tokens[0], v1) << "CPU" << tag;
    EXPECT_EQ(draw(*gpu_default, tie, {tie_seed}, temperature, 1, V, Vp).tokens[0], v1)
        << "default kernel" << tag;
    EXPECT_EQ(draw(*gpu_fast, tie, {tie_seed}, temperature, 1, V, Vp).tokens[0], v1)
        << "pruned kernel" << tag;
  }

  // Logits near 1e7 (a float step of 1): x/T + G rounds to many equal scores, and the
  // threshold is past 2^20 (stage B off). The pruned kernel must break the ties as the
  // default one does.
  std::vector<float> big(static_cast<size_t>(8) * Vp, 1e30f);
  std::vector<uint64_t> big_seeds(8);
  for (int m = 0; m < 8; m++) {
    big_seeds[m] = test_mix64(0x77ull + m);
    for (int v = 0; v < V; v++)
      big[static_cast<size_t>(m) * Vp + v] = 1e7f + std::round(3.0f * normal(gen));
  }
  for (float temperature : {0.5f, 1.0f, 2.0f}) {
    const std::string tag = " logits near 1e7, temperature=" + std::to_string(temperature);
    const Draw def = draw(*gpu_default, big, big_seeds, temperature, 8, V, Vp);
    const Draw fast = draw(*gpu_fast, big, big_seeds, temperature, 8, V, Vp);
    EXPECT_EQ(def.tokens, fast.tokens) << "pruned vs default kernel" << tag;
    expect_close(def.logprobs, fast.logprobs, kExact, "pruned vs default log-probs" + tag);
  }
}

#else  // !HH_WITH_CUDA

TEST(CudaParity, SkippedWithoutCudaBuild) {
  GTEST_SKIP() << "hh was built without CUDA: CUDA parity tests skipped";
}

#endif  // HH_WITH_CUDA

}  // namespace
