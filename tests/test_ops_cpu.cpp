// Tests of the CPU backend (src/ops/backend.cpp, src/ops/cpu/*.cpp except the matmul).
//
// Every op, forward and backward, is compared with PyTorch float64 references stored in
// tests/fixtures/ops_<op>.safetensors (scripts/reference/ops_reference.py). The fixtures
// are small (hs = 4, C = 12) so that they are readable; a second set of tests compares
// against naive float64 loops written here at sizes that exercise the vectorised loops
// (widths above and not multiples of 8). Then the conventions of ops.h: += on parameter
// gradients, = on activation gradients, padding never changes a result, padded vocabulary
// columns never get probability or gradient, in-place cross-entropy backward, large logits.
//
// Default tolerance: |a - b| <= 1e-5·max(1, |b|). The ops run in float32 (sums of a few
// dozen terms, exp/tanh accurate to a few ulps), so errors are ~1e-6 relative; 1e-5 leaves
// a margin of 10 while still catching any wrong term.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/safetensors.h"
#include "ops/cpu/cpu_ops.h"
#include "ops/ops.h"

namespace {

using hh::SafeTensorsFile;
using Floats = std::vector<float>;
using Ints = std::vector<int32_t>;

bool fast_mode() { return std::getenv("HH_TEST_FAST") != nullptr; }

SafeTensorsFile load_fixture(const std::string& op) {
  return SafeTensorsFile::load(std::string(HH_SOURCE_DIR) + "/tests/fixtures/ops_" + op +
                               ".safetensors");
}

// Expects |actual - expected| <= tol·max(1, |expected|) everywhere; reports the first
// few offenders and the count.
void expect_close(const Floats& actual, const Floats& expected, const std::string& what,
                  double tol = 1e-5) {
  ASSERT_EQ(actual.size(), expected.size()) << what;
  int bad = 0;
  for (size_t i = 0; i < actual.size(); i++) {
    const double a = actual[i], b = expected[i];
    const bool ok = std::fabs(a - b) <= tol * std::max(1.0, std::fabs(b));
    if (!ok && ++bad <= 5) {
      ADD_FAILURE() << what << "[" << i << "]: got " << a << ", expected " << b;
    }
  }
  EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << actual.size() << " values differ";
}

Floats random_floats(size_t n, std::mt19937& rng, float scale = 1.0f, float shift = 0.0f) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  Floats x(n);
  for (auto& v : x) v = normal(rng) * scale + shift;
  return x;
}

Floats add(const Floats& a, const Floats& b, float b_scale = 1.0f) {
  Floats out(a.size());
  for (size_t i = 0; i < a.size(); i++) out[i] = a[i] + b_scale * b[i];
  return out;
}

class OpsCpu : public ::testing::Test {
 protected:
  std::unique_ptr<hh::Backend> be = hh::make_backend("cpu");
};

// ---------------------------------------------------------------- backend

TEST_F(OpsCpu, BackendMemoryIsAlignedTrackedAndCopied) {
  EXPECT_EQ(be->kind(), hh::DeviceKind::CPU);
  EXPECT_EQ(be->name(), "cpu");
  const size_t peak_before = be->peak_bytes();
  void* a = be->alloc_bytes(100);
  void* b = be->alloc_bytes(1);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(a) % 64, 0u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b) % 64, 0u);
  EXPECT_GE(be->peak_bytes(), peak_before + 101);
  const size_t peak_two = be->peak_bytes();
  be->free_bytes(a);
  be->free_bytes(b);
  void* c = be->alloc_bytes(64);
  EXPECT_EQ(be->peak_bytes(), peak_two) << "peak must not grow when memory is reused";
  be->free_bytes(c);
  be->free_bytes(nullptr);

  hh::Buffer<float> dev(*be, 5), dev2(*be, 5);
  const Floats host = {1, 2, 3, 4, 5};
  Floats back(5, 0.0f);
  be->copy_to_device(dev.data(), host.data(), dev.bytes());
  be->copy_on_device(dev2.data(), dev.data(), dev.bytes());
  be->copy_to_host(back.data(), dev2.data(), dev.bytes());
  EXPECT_EQ(back, host);
  be->fill_zero(dev2.data(), dev2.bytes());
  be->copy_to_host(back.data(), dev2.data(), dev2.bytes());
  EXPECT_EQ(back, Floats(5, 0.0f));
  int local = 0;
  EXPECT_THROW(be->free_bytes(&local), hh::Error);
}

TEST_F(OpsCpu, MakeBackendNamesAndErrors) {
  EXPECT_EQ(hh::make_backend("cpu")->kind(), hh::DeviceKind::CPU);
  EXPECT_NE(hh::make_backend("auto"), nullptr);
  EXPECT_THROW(hh::make_backend("tpu"), hh::Error);
  EXPECT_THROW(hh::make_backend(""), hh::Error);
#ifndef HH_WITH_CUDA
  try {
    hh::make_backend("cuda");
    FAIL() << "expected hh::Error";
  } catch (const hh::Error& e) {
    EXPECT_NE(std::string(e.what()).find("built without CUDA"), std::string::npos) << e.what();
  }
  EXPECT_EQ(hh::make_backend("auto")->kind(), hh::DeviceKind::CPU);
#endif
}

// ---------------------------------------------------------------- embedding

TEST_F(OpsCpu, EmbeddingMatchesPyTorch) {
  const auto f = load_fixture("embedding");
  const int B = 2, T = 5, C = 12, V = 11, maxT = 7;
  const Ints tokens = f.read_i32("tokens");
  const Floats wte = f.read_f32("wte", {V, C}), wpe = f.read_f32("wpe", {maxT, C});
  Floats out(B * T * C, -1.0f);
  be->embedding_forward(out.data(), tokens.data(), wte.data(), wpe.data(), B, T, C);
  expect_close(out, f.read_f32("out", {B, T, C}), "out");

  // Parameter gradients accumulate: start from nonzero values, call twice.
  const Floats dout = f.read_f32("dout"), dwte_ref = f.read_f32("dwte"),
               dwpe_ref = f.read_f32("dwpe");
  std::mt19937 rng(1);
  const Floats dwte0 = random_floats(V * C, rng), dwpe0 = random_floats(maxT * C, rng);
  Floats dwte = dwte0, dwpe = dwpe0;
  be->embedding_backward(dwte.data(), dwpe.data(), dout.data(), tokens.data(), B, T, C);
  expect_close(dwte, add(dwte0, dwte_ref), "dwte");
  expect_close(dwpe, add(dwpe0, dwpe_ref), "dwpe");
  be->embedding_backward(dwte.data(), dwpe.data(), dout.data(), tokens.data(), B, T, C);
  expect_close(dwte, add(dwte0, dwte_ref, 2.0f), "dwte after two calls");
  expect_close(dwpe, add(dwpe0, dwpe_ref, 2.0f), "dwpe after two calls");

  Ints bad = tokens;
  bad[3] = -2;
  EXPECT_THROW(be->embedding_forward(out.data(), bad.data(), wte.data(), wpe.data(), B, T, C),
               hh::Error);
}

TEST_F(OpsCpu, EmbeddingBackwardMatchesFloat64SumsAtAnyThreadCount) {
  const int B = 3, T = 33, C = 200, V = 5;  // few tokens: many repeats
  std::mt19937 rng(2);
  Ints tokens(B * T);
  for (auto& t : tokens) t = static_cast<int32_t>(rng() % V);
  const Floats dout = random_floats(B * T * C, rng);
  Floats dwte1(V * C, 0.0f), dwpe1(T * C, 0.0f), dwte2 = dwte1, dwpe2 = dwpe1;
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  be->embedding_backward(dwte1.data(), dwpe1.data(), dout.data(), tokens.data(), B, T, C);
  omp_set_num_threads(std::max(2, threads));
  be->embedding_backward(dwte2.data(), dwpe2.data(), dout.data(), tokens.data(), B, T, C);
  omp_set_num_threads(threads);
  EXPECT_EQ(0, std::memcmp(dwte1.data(), dwte2.data(), dwte1.size() * sizeof(float)));
  EXPECT_EQ(0, std::memcmp(dwpe1.data(), dwpe2.data(), dwpe1.size() * sizeof(float)));
  // And both equal the sums in float64: at C = 200 the op's 64-channel slices end short
  // (64, 64, 64, 8), which the PyTorch fixture's C = 12 never reaches.
  std::vector<double> dwte_ref(V * C, 0.0), dwpe_ref(T * C, 0.0);
  for (int b = 0; b < B; b++)
    for (int t = 0; t < T; t++)
      for (int c = 0; c < C; c++) {
        const double g = dout[(b * T + t) * C + c];
        dwte_ref[tokens[b * T + t] * C + c] += g;
        dwpe_ref[t * C + c] += g;
      }
  expect_close(dwte1, Floats(dwte_ref.begin(), dwte_ref.end()), "dwte at C = 200");
  expect_close(dwpe1, Floats(dwpe_ref.begin(), dwpe_ref.end()), "dwpe at C = 200");
}

// ---------------------------------------------------------------- layernorm

TEST_F(OpsCpu, LayerNormMatchesPyTorch) {
  const auto f = load_fixture("layernorm");
  const int N = 7, C = 12;
  const Floats inp = f.read_f32("inp", {N, C}), w = f.read_f32("weight"), b = f.read_f32("bias");
  Floats out(N * C), mean(N), rstd(N);
  be->layernorm_forward(out.data(), mean.data(), rstd.data(), inp.data(), w.data(), b.data(), N, C);
  expect_close(out, f.read_f32("out"), "out");
  expect_close(mean, f.read_f32("mean"), "mean");
  expect_close(rstd, f.read_f32("rstd"), "rstd");

  // dinp, dweight and dbias all accumulate (+=).
  const Floats dout = f.read_f32("dout");
  std::mt19937 rng(3);
  const Floats dinp0 = random_floats(N * C, rng), dw0 = random_floats(C, rng),
               db0 = random_floats(C, rng);
  Floats dinp = dinp0, dw = dw0, db = db0;
  for (int call = 1; call <= 2; call++) {
    be->layernorm_backward(dinp.data(), dw.data(), db.data(), dout.data(), inp.data(), w.data(),
                           mean.data(), rstd.data(), N, C);
    const float k = static_cast<float>(call);
    expect_close(dinp, add(dinp0, f.read_f32("dinp"), k), "dinp call " + std::to_string(call));
    expect_close(dw, add(dw0, f.read_f32("dweight"), k), "dweight call " + std::to_string(call));
    expect_close(db, add(db0, f.read_f32("dbias"), k), "dbias call " + std::to_string(call));
  }
}

// Naive float64 LayerNorm at a width that is not a multiple of the vector width.
TEST_F(OpsCpu, LayerNormMatchesFloat64LoopsAtOddWidth) {
  const int N = 13, C = 203;
  std::mt19937 rng(4);
  const Floats inp = random_floats(N * C, rng, 3.0f, 10.0f);  // large mean: cancellation
  const Floats w = random_floats(C, rng), b = random_floats(C, rng),
               dout = random_floats(N * C, rng);
  Floats out(N * C), mean(N), rstd(N), dinp(N * C, 0.0f), dw(C, 0.0f), db(C, 0.0f);
  be->layernorm_forward(out.data(), mean.data(), rstd.data(), inp.data(), w.data(), b.data(), N, C);
  be->layernorm_backward(dinp.data(), dw.data(), db.data(), dout.data(), inp.data(), w.data(),
                         mean.data(), rstd.data(), N, C);
  Floats out_ref(N * C), dinp_ref(N * C);
  std::vector<double> dw_ref(C, 0.0), db_ref(C, 0.0);
  for (int i = 0; i < N; i++) {
    const float* x = &inp[i * C];
    const float* g = &dout[i * C];
    double mu = 0, var = 0;
    for (int c = 0; c < C; c++) mu += x[c];
    mu /= C;
    for (int c = 0; c < C; c++) var += (x[c] - mu) * (x[c] - mu);
    const double s = 1.0 / std::sqrt(var / C + 1e-5);
    double mean_gw = 0, mean_gwn = 0;
    for (int c = 0; c < C; c++) {
      const double n = (x[c] - mu) * s;
      out_ref[i * C + c] = static_cast<float>(n * w[c] + b[c]);
      mean_gw += g[c] * w[c] / C;
      mean_gwn += g[c] * w[c] * n / C;
      dw_ref[c] += g[c] * n;
      db_ref[c] += g[c];
    }
    for (int c = 0; c < C; c++) {
      const double n = (x[c] - mu) * s;
      dinp_ref[i * C + c] = static_cast<float>(s * (g[c] * w[c] - mean_gw - n * mean_gwn));
    }
  }
  expect_close(out, out_ref, "out");
  expect_close(dinp, dinp_ref, "dinp");
  expect_close(dw, Floats(dw_ref.begin(), dw_ref.end()), "dweight");
  expect_close(db, Floats(db_ref.begin(), db_ref.end()), "dbias");
}

// ---------------------------------------------------------------- attention

TEST_F(OpsCpu, AttentionMatchesPyTorch) {
  const auto f = load_fixture("attention");
  const int B = 2, T = 5, C = 12, NH = 3;
  const Floats qkv = f.read_f32("qkv", {B, T, 3 * C});
  const Ints lengths = f.read_i32("lengths");
  ASSERT_EQ(lengths, (Ints{5, 3}));
  ASSERT_EQ(be->attention_saved_floats(B, T, NH), static_cast<size_t>(B * NH * T * T));
  Floats out(B * T * C, 7.0f), saved(B * NH * T * T, 7.0f);
  be->attention_forward(out.data(), saved.data(), qkv.data(), lengths.data(), B, T, C, NH);
  const Floats out_ref = f.read_f32("out");
  expect_close(out, out_ref, "out");
  expect_close(saved, f.read_f32("probs"), "probs (saved)");
  for (int t = 3; t < T; t++) {  // padding rows of sequence 1 are exactly 0
    for (int c = 0; c < C; c++) EXPECT_EQ(out[(1 * T + t) * C + c], 0.0f);
  }

  // dqkv is overwritten (=): start from garbage.
  const Floats dout = f.read_f32("dout");
  Floats dqkv(B * T * 3 * C, 7.0f);
  be->attention_backward(dqkv.data(), dout.data(), qkv.data(), out.data(), saved.data(),
                         lengths.data(), B, T, C, NH);
  expect_close(dqkv, f.read_f32("dqkv"), "dqkv");
  for (int t = 3; t < T; t++) {
    for (int c = 0; c < 3 * C; c++) EXPECT_EQ(dqkv[(1 * T + t) * 3 * C + c], 0.0f);
  }

  Ints bad = {5, 0};
  EXPECT_THROW(be->attention_forward(out.data(), saved.data(), qkv.data(), bad.data(), B, T, C, NH),
               hh::Error);
  bad = {6, 1};
  EXPECT_THROW(be->attention_forward(out.data(), saved.data(), qkv.data(), bad.data(), B, T, C, NH),
               hh::Error);
  EXPECT_THROW(
      be->attention_forward(out.data(), saved.data(), qkv.data(), lengths.data(), B, T, C, 5),
      hh::Error);
}

// Naive float64 attention: out and dqkv for loss = Σ out·dout.
void attention_reference(const Floats& qkv, const Floats& dout, const Ints& lengths, int B, int T,
                         int C, int NH, Floats* out, Floats* dqkv) {
  const int hs = C / NH, C3 = 3 * C;
  const double scale = 1.0 / std::sqrt(static_cast<double>(hs));
  out->assign(B * T * C, 0.0f);
  std::vector<double> dq(B * T * C3, 0.0);
  for (int b = 0; b < B; b++) {
    for (int h = 0; h < NH; h++) {
      auto at = [&](int t, int part, int i) { return (b * T + t) * C3 + part * C + h * hs + i; };
      for (int t = 0; t < lengths[b]; t++) {
        std::vector<double> p(t + 1), dp(t + 1);
        double mx = -1e300, sum = 0, p_dot_dp = 0;
        for (int k = 0; k <= t; k++) {
          double s = 0;
          for (int i = 0; i < hs; i++) s += double(qkv[at(t, 0, i)]) * qkv[at(k, 1, i)];
          p[k] = s * scale;
          mx = std::max(mx, p[k]);
        }
        for (int k = 0; k <= t; k++) sum += (p[k] = std::exp(p[k] - mx));
        for (int k = 0; k <= t; k++) p[k] /= sum;
        for (int i = 0; i < hs; i++) {
          double o = 0;
          for (int k = 0; k <= t; k++) o += p[k] * qkv[at(k, 2, i)];
          (*out)[(b * T + t) * C + h * hs + i] = static_cast<float>(o);
        }
        const float* g = &dout[(b * T + t) * C + h * hs];
        for (int k = 0; k <= t; k++) {
          for (int i = 0; i < hs; i++) dp[k] += double(g[i]) * qkv[at(k, 2, i)];
          p_dot_dp += p[k] * dp[k];
        }
        for (int k = 0; k <= t; k++) {
          const double ds = p[k] * (dp[k] - p_dot_dp) * scale;
          for (int i = 0; i < hs; i++) {
            dq[at(t, 0, i)] += ds * qkv[at(k, 1, i)];
            dq[at(k, 1, i)] += ds * qkv[at(t, 0, i)];
            dq[at(k, 2, i)] += p[k] * g[i];
          }
        }
      }
    }
  }
  dqkv->assign(dq.begin(), dq.end());
}

// Sizes that exercise the 64-wide register tiles: hs = 24 (below one tile), hs = 72 (one
// tile plus a remainder), T = 70 (scores over two tiles of keys).
TEST_F(OpsCpu, AttentionMatchesFloat64LoopsAtVectorSizes) {
  struct Case {
    int B, T, C, NH;
    Ints lengths;
  };
  for (const Case& c : {Case{3, 19, 72, 3, {19, 1, 11}}, Case{2, 70, 144, 2, {70, 66}}}) {
    const int B = c.B, T = c.T, C = c.C, NH = c.NH;
    std::mt19937 rng(5);
    const Floats qkv = random_floats(B * T * 3 * C, rng), dout = random_floats(B * T * C, rng);
    Floats out(B * T * C), saved(be->attention_saved_floats(B, T, NH)), dqkv(B * T * 3 * C);
    be->attention_forward(out.data(), saved.data(), qkv.data(), c.lengths.data(), B, T, C, NH);
    be->attention_backward(dqkv.data(), dout.data(), qkv.data(), out.data(), saved.data(),
                           c.lengths.data(), B, T, C, NH);
    Floats out_ref, dqkv_ref;
    attention_reference(qkv, dout, c.lengths, B, T, C, NH, &out_ref, &dqkv_ref);
    const std::string where = " (T=" + std::to_string(T) + ", C=" + std::to_string(C) + ")";
    expect_close(out, out_ref, "out" + where);
    expect_close(dqkv, dqkv_ref, "dqkv" + where);
  }
}

// A length-3 sequence alone at T=3 gives the same rows as inside a batch padded to T=8 next
// to a longer sequence, whatever is in the padding.
TEST_F(OpsCpu, AttentionPaddingNeverChangesASequence) {
  const int C = 32, NH = 2, C3 = 3 * C;
  std::mt19937 rng(6);
  const int T_alone = 3, T_batch = 8;
  const Floats qkv_alone = random_floats(T_alone * C3, rng),
               dout_alone = random_floats(T_alone * C, rng);
  // Batch: sequence 0 is a full-length other sequence, sequence 1 is ours + garbage padding.
  Floats qkv_batch = random_floats(2 * T_batch * C3, rng, 5.0f);
  Floats dout_batch = random_floats(2 * T_batch * C, rng, 5.0f);
  std::copy(qkv_alone.begin(), qkv_alone.end(), qkv_batch.begin() + T_batch * C3);
  std::copy(dout_alone.begin(), dout_alone.end(), dout_batch.begin() + T_batch * C);
  const Ints len_alone = {3}, len_batch = {8, 3};

  Floats out_a(T_alone * C), saved_a(be->attention_saved_floats(1, T_alone, NH)),
      dqkv_a(T_alone * C3);
  be->attention_forward(out_a.data(), saved_a.data(), qkv_alone.data(), len_alone.data(), 1,
                        T_alone, C, NH);
  be->attention_backward(dqkv_a.data(), dout_alone.data(), qkv_alone.data(), out_a.data(),
                         saved_a.data(), len_alone.data(), 1, T_alone, C, NH);
  Floats out_b(2 * T_batch * C), saved_b(be->attention_saved_floats(2, T_batch, NH)),
      dqkv_b(2 * T_batch * C3);
  be->attention_forward(out_b.data(), saved_b.data(), qkv_batch.data(), len_batch.data(), 2,
                        T_batch, C, NH);
  be->attention_backward(dqkv_b.data(), dout_batch.data(), qkv_batch.data(), out_b.data(),
                         saved_b.data(), len_batch.data(), 2, T_batch, C, NH);
  const Floats out_rows(out_b.begin() + T_batch * C, out_b.begin() + T_batch * C + T_alone * C);
  const Floats dqkv_rows(dqkv_b.begin() + T_batch * C3,
                         dqkv_b.begin() + T_batch * C3 + T_alone * C3);
  expect_close(out_rows, out_a, "out of the short sequence", 1e-6);
  expect_close(dqkv_rows, dqkv_a, "dqkv of the short sequence", 1e-6);
  for (int i = (T_batch + T_alone) * C; i < 2 * T_batch * C; i++) ASSERT_EQ(out_b[i], 0.0f);
  for (int i = (T_batch + T_alone) * C3; i < 2 * T_batch * C3; i++) ASSERT_EQ(dqkv_b[i], 0.0f);
}

// Secondary check: central finite differences of loss = Σ out·dout against dqkv.
TEST_F(OpsCpu, AttentionBackwardMatchesFiniteDifferences) {
  const int B = 2, T = 4, C = 8, NH = 2;
  const Ints lengths = {4, 2};
  std::mt19937 rng(7);
  Floats qkv = random_floats(B * T * 3 * C, rng);
  const Floats dout = random_floats(B * T * C, rng);
  Floats out(B * T * C), saved(be->attention_saved_floats(B, T, NH)), dqkv(B * T * 3 * C);
  auto loss = [&]() {
    be->attention_forward(out.data(), saved.data(), qkv.data(), lengths.data(), B, T, C, NH);
    double sum = 0;
    for (size_t i = 0; i < out.size(); i++) sum += double(out[i]) * dout[i];
    return sum;
  };
  loss();
  be->attention_backward(dqkv.data(), dout.data(), qkv.data(), out.data(), saved.data(),
                         lengths.data(), B, T, C, NH);
  const float eps = 1e-2f;
  int bad = 0;
  for (size_t i = 0; i < qkv.size(); i++) {
    const float x = qkv[i];
    qkv[i] = x + eps;
    const double up = loss();
    qkv[i] = x - eps;
    const double down = loss();
    qkv[i] = x;
    const double fd = (up - down) / (2.0 * eps);
    // float32 forward with eps = 1e-2: rounding noise ~1e-5 plus O(eps²) truncation.
    if (std::fabs(fd - dqkv[i]) > 2e-3 + 1e-2 * std::fabs(fd) && ++bad <= 5) {
      ADD_FAILURE() << "dqkv[" << i << "] = " << dqkv[i] << ", finite difference " << fd;
    }
  }
  EXPECT_EQ(bad, 0);
}

// ---------------------------------------------------------------- gelu, residual

TEST_F(OpsCpu, GeluMatchesPyTorch) {
  const auto f = load_fixture("gelu");
  const Floats inp = f.read_f32("inp"), dout = f.read_f32("dout");
  const size_t n = inp.size();
  Floats out(n), dinp(n, 7.0f);  // dinp is overwritten
  be->gelu_forward(out.data(), inp.data(), n);
  be->gelu_backward(dinp.data(), inp.data(), dout.data(), n);
  expect_close(out, f.read_f32("out"), "out");
  expect_close(dinp, f.read_f32("dinp"), "dinp");
}

TEST_F(OpsCpu, GeluMatchesFloat64AtVectorSizes) {
  const size_t n = 1003;
  std::mt19937 rng(8);
  const Floats inp = random_floats(n, rng, 4.0f), dout = random_floats(n, rng);
  Floats out(n), dinp(n), out_ref(n), dinp_ref(n);
  be->gelu_forward(out.data(), inp.data(), n);
  be->gelu_backward(dinp.data(), inp.data(), dout.data(), n);
  const double k = std::sqrt(2.0 / M_PI);
  for (size_t i = 0; i < n; i++) {
    const double x = inp[i], th = std::tanh(k * (x + 0.044715 * x * x * x));
    out_ref[i] = static_cast<float>(0.5 * x * (1 + th));
    dinp_ref[i] = static_cast<float>(
        dout[i] * (0.5 * (1 + th) + 0.5 * x * (1 - th * th) * k * (1 + 3 * 0.044715 * x * x)));
  }
  expect_close(out, out_ref, "out");
  expect_close(dinp, dinp_ref, "dinp");
}

TEST_F(OpsCpu, ResidualAddsAndWorksInPlace) {
  std::mt19937 rng(9);
  const size_t n = 77;
  const Floats a = random_floats(n, rng), b = random_floats(n, rng);
  Floats out(n);
  be->residual_forward(out.data(), a.data(), b.data(), n);
  for (size_t i = 0; i < n; i++) EXPECT_EQ(out[i], a[i] + b[i]);
  Floats in_place = a;
  be->residual_forward(in_place.data(), in_place.data(), b.data(), n);
  EXPECT_EQ(in_place, out);
}

// ---------------------------------------------------------------- cross-entropy

TEST_F(OpsCpu, CrossEntropyMatchesPyTorch) {
  const auto f = load_fixture("crossentropy");
  const int N = 7, V = 37, Vp = 64;
  const Floats logits = f.read_f32("logits", {N, Vp}), dlosses = f.read_f32("dlosses");
  const Ints targets = f.read_i32("targets");
  // The fixture's padded columns hold 100: any leak into the softmax would change the loss.
  ASSERT_EQ(logits[V], 100.0f);
  Floats losses(N, 7.0f);
  be->crossentropy_forward(losses.data(), logits.data(), targets.data(), N, V, Vp);
  expect_close(losses, f.read_f32("losses"), "losses");
  EXPECT_EQ(losses[1], 0.0f);  // target -1

  Floats dlogits(N * Vp, 7.0f);
  be->crossentropy_backward(dlogits.data(), logits.data(), targets.data(), dlosses.data(), N, V,
                            Vp);
  expect_close(dlogits, f.read_f32("dlogits"), "dlogits");
  for (int i = 0; i < N; i++) {
    for (int j = V; j < Vp; j++) ASSERT_EQ(dlogits[i * Vp + j], 0.0f) << i << "," << j;
  }

  // In place (dlogits aliases logits) gives exactly the same.
  Floats in_place = logits;
  be->crossentropy_backward(in_place.data(), in_place.data(), targets.data(), dlosses.data(), N, V,
                            Vp);
  EXPECT_EQ(in_place, dlogits);

  Floats entropy(N, 7.0f);
  be->softmax_entropy(entropy.data(), logits.data(), targets.data(), N, V, Vp);
  expect_close(entropy, f.read_f32("entropy"), "entropy");
  EXPECT_EQ(entropy[1], 0.0f);  // target -1

  Ints bad = targets;
  bad[2] = V;  // a padded column is not a valid target
  EXPECT_THROW(be->crossentropy_forward(losses.data(), logits.data(), bad.data(), N, V, Vp),
               hh::Error);
}

// Float64 log-softmax at vocabularies above the vector width and above the op's 2048-column
// block (GPT-2's 50257 spans 25), with huge logits (1e4): the max-subtraction must keep
// everything finite, and a row whose maximum lies in a later block must rescale the sum
// gathered over the earlier ones.
TEST_F(OpsCpu, CrossEntropyLargeLogitsAndLargeVocabulary) {
  struct Vocab {
    int V, Vp;
  };
  const int N = 5;
  std::mt19937 rng(10);
  for (const Vocab vocab : {Vocab{1001, 1024}, Vocab{5000, 5056}}) {
    const int V = vocab.V, Vp = vocab.Vp;
    for (float logit_scale : {1.0f, 1e4f}) {
      const std::string what =
          "V " + std::to_string(V) + ", logit scale " + std::to_string(logit_scale);
      Floats logits = random_floats(N * Vp, rng, logit_scale);
      for (int i = 0; i < N; i++) {
        for (int j = V; j < Vp; j++) logits[i * Vp + j] = 3e4f;  // padding must never win
      }
      // Row 2: logits close to each other, so that several columns share mass; row 4: a
      // ramp, so that its maximum is in the last column (the last block).
      for (int j = 0; j < V; j++) logits[2 * Vp + j] = logit_scale + (j % 7) * 0.5f;
      for (int j = 0; j < V; j++) logits[4 * Vp + j] = 8.0f * j / V;
      const Ints targets = {3, V - 1, 0, -1, V / 2};
      const Floats dlosses = {0.5f, 1.0f, -2.0f, 3.0f, 0.25f};
      Floats losses(N), dlogits(N * Vp), entropy(N);
      be->crossentropy_forward(losses.data(), logits.data(), targets.data(), N, V, Vp);
      be->crossentropy_backward(dlogits.data(), logits.data(), targets.data(), dlosses.data(), N, V,
                                Vp);
      be->softmax_entropy(entropy.data(), logits.data(), targets.data(), N, V, Vp);
      Floats losses_ref(N, 0.0f), dlogits_ref(N * Vp, 0.0f), entropy_ref(N, 0.0f);
      for (int i = 0; i < N; i++) {
        if (targets[i] < 0) continue;
        const float* x = &logits[i * Vp];
        double mx = -1e300, sum = 0, plogp = 0;
        for (int j = 0; j < V; j++) mx = std::max(mx, double(x[j]));
        for (int j = 0; j < V; j++) sum += std::exp(x[j] - mx);
        losses_ref[i] = static_cast<float>(std::log(sum) + mx - x[targets[i]]);
        for (int j = 0; j < V; j++) {
          const double p = std::exp(x[j] - mx) / sum;
          dlogits_ref[i * Vp + j] = static_cast<float>(dlosses[i] * (p - (j == targets[i])));
          if (p > 0) plogp += p * std::log(p);
        }
        entropy_ref[i] = static_cast<float>(-plogp);
      }
      for (float v : losses) ASSERT_TRUE(std::isfinite(v));
      for (float v : dlogits) ASSERT_TRUE(std::isfinite(v));
      // Losses up to ~1e4·6 here: the float32 inputs are exact, the loss is x_max - x_y +
      // log Σ, so 1e-5 relative still holds.
      expect_close(losses, losses_ref, "losses at " + what);
      expect_close(dlogits, dlogits_ref, "dlogits at " + what);
      expect_close(entropy, entropy_ref, "entropy at " + what, 1e-4);
    }
  }
}

// ---------------------------------------------------------------- rows

TEST_F(OpsCpu, GatherScatterRowsMatchPyTorch) {
  const auto f = load_fixture("rows");
  const int R = 6, M = 5, C = 12;
  const Floats inp = f.read_f32("inp", {R, C}), dout = f.read_f32("dout", {M, C});
  const Ints rows = f.read_i32("rows");
  Floats out(M * C);
  be->gather_rows(out.data(), inp.data(), rows.data(), M, C);
  expect_close(out, f.read_f32("out"), "out", 0.0);
  std::mt19937 rng(11);
  const Floats dinp0 = random_floats(R * C, rng);
  Floats dinp = dinp0;
  be->scatter_add_rows(dinp.data(), dout.data(), rows.data(), M, C);
  expect_close(dinp, add(dinp0, f.read_f32("dinp")), "dinp");
  be->scatter_add_rows(dinp.data(), dout.data(), rows.data(), M, C);
  expect_close(dinp, add(dinp0, f.read_f32("dinp"), 2.0f), "dinp after two calls");
  Ints bad = rows;
  bad[0] = -1;
  EXPECT_THROW(be->gather_rows(out.data(), inp.data(), bad.data(), M, C), hh::Error);
}

// ---------------------------------------------------------------- optimizer, utilities

TEST_F(OpsCpu, AdamWTwoStepsMatchTorchOptim) {
  const auto f = load_fixture("adamw");
  const Floats hp_values = f.read_f32("hparams");
  ASSERT_EQ(hp_values.size(), 5u);
  hh::AdamWParams hp;
  hp.lr = hp_values[0];
  hp.beta1 = hp_values[1];
  hp.beta2 = hp_values[2];
  hp.eps = hp_values[3];
  hp.weight_decay = hp_values[4];
  Floats params = f.read_f32("params0");
  const size_t n = params.size();
  Floats m(n, 0.0f), v(n, 0.0f);
  const Floats g1 = f.read_f32("grads1"), g2 = f.read_f32("grads2");
  hp.step = 1;
  be->adamw_update(params.data(), g1.data(), m.data(), v.data(), n, hp);
  expect_close(params, f.read_f32("params1"), "params after step 1");
  hp.step = 2;
  be->adamw_update(params.data(), g2.data(), m.data(), v.data(), n, hp);
  expect_close(params, f.read_f32("params2"), "params after step 2");
  expect_close(m, f.read_f32("m2"), "m after step 2");
  expect_close(v, f.read_f32("v2"), "v after step 2");
  hp.step = 0;
  EXPECT_THROW(be->adamw_update(params.data(), g2.data(), m.data(), v.data(), n, hp), hh::Error);
}

// grad_scale is the clip coefficient applied inside the update: the same floats as scaling
// the gradient buffer first (what clip_grad_norm_ does), and the buffer is left as it was.
TEST_F(OpsCpu, AdamWGradScaleEqualsScalingTheGradientFirst) {
  std::mt19937 rng(31);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const size_t n = 4099;
  Floats p(n), g(n), m(n), v(n);
  for (size_t i = 0; i < n; i++) {
    p[i] = normal(rng);
    g[i] = normal(rng);
    m[i] = 0.1f * normal(rng);
    v[i] = 0.01f * std::fabs(normal(rng));
  }
  hh::AdamWParams hp;
  hp.lr = 1e-3f;
  hp.weight_decay = 0.1f;
  hp.step = 4;
  Floats p_a = p, m_a = m, v_a = v, g_a = g;
  hp.grad_scale = 0.37f;
  be->adamw_update(p_a.data(), g_a.data(), m_a.data(), v_a.data(), n, hp);
  EXPECT_EQ(g_a, g) << "the gradient buffer is read only";
  Floats p_b = p, m_b = m, v_b = v, g_b = g;
  be->scale(g_b.data(), 0.37f, n);
  hp.grad_scale = 1.0f;
  be->adamw_update(p_b.data(), g_b.data(), m_b.data(), v_b.data(), n, hp);
  EXPECT_EQ(p_a, p_b);
  EXPECT_EQ(m_a, m_b);
  EXPECT_EQ(v_a, v_b);
}

TEST_F(OpsCpu, FlatBufferUtilities) {
  std::mt19937 rng(12);
  // Several sum_squares chunks and a ragged tail.
  const size_t n = fast_mode() ? 70001 : 300007;
  const Floats x = random_floats(n, rng, 3.0f);
  double ref = 0;
  for (float e : x) ref += double(e) * e;
  EXPECT_NEAR(be->sum_squares(x.data(), n), ref, 1e-12 * ref);
  EXPECT_EQ(be->sum_squares(x.data(), 0), 0.0);

  Floats y = x;
  be->scale(y.data(), 0.5f, n);
  for (size_t i = 0; i < n; i += 997) ASSERT_EQ(y[i], x[i] * 0.5f);
}

}  // namespace
