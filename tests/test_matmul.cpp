// Tests of the CPU matmul (src/ops/cpu/matmul.cpp) against PyTorch (fixture written by
// scripts/reference/matmul_reference.py) and against a naive triple loop in double on many
// shapes, with both micro-kernels (AVX-512 where the CPU has it, and the AVX2 baseline).
//
// Tolerance: a float32 dot product of length K accumulated in blocks carries a rounding
// error of about eps·√K·Σ|a·b| (random-walk bound; eps = 6e-8). We allow
// 1e-5·√K·(Σ_k|a_k·b_k| + |other terms|), ~100x that bound, while any indexing or packing
// bug gives errors of the order of Σ|a·b| itself.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstdlib>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/safetensors.h"
#include "ops/cpu/cpu_ops.h"

namespace {

bool fast_mode() {
  const char* v = std::getenv("HH_TEST_FAST");
  return v && std::string(v) != "0";
}

// Selects the micro-kernel for the following calls: "avx2" forces the baseline, "" lets the
// library pick (AVX-512 where available). matmul.cpp reads HH_MATMUL_ISA on every call.
void use_isa(const std::string& isa) {
  if (isa.empty()) {
    unsetenv("HH_MATMUL_ISA");
  } else {
    setenv("HH_MATMUL_ISA", isa.c_str(), 1);
  }
}

std::vector<float> random_vector(std::mt19937& gen, size_t n) {
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(gen);
  return v;
}

// A reference value and the magnitude its rounding error scales with.
struct Expected {
  std::vector<double> value, scale;
  int K = 0;  // length of the sums
};

void expect_close(const std::vector<float>& got, const Expected& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.value.size()) << what;
  const double tol_factor = 1e-5 * std::sqrt(std::max(want.K, 1));
  int reported = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double err = std::fabs(got[i] - want.value[i]);
    const double tol = tol_factor * want.scale[i] + 1e-30;
    if (!(err <= tol) && reported++ < 5) {
      ADD_FAILURE() << what << ": element " << i << " got " << got[i] << " want " << want.value[i]
                    << " (error " << err << ", tolerance " << tol << ")";
    }
  }
}

// out[n,o] = Σ_i inp[n,i]·W[o,i] + bias[o]
Expected naive_forward(const std::vector<float>& inp, const std::vector<float>& weight,
                       const float* bias, int N, int IC, int OC) {
  Expected e;
  e.K = IC;
  e.value.assign(size_t(N) * OC, 0.0);
  e.scale.assign(size_t(N) * OC, 0.0);
  for (int n = 0; n < N; ++n)
    for (int o = 0; o < OC; ++o) {
      double sum = bias ? bias[o] : 0.0, scale = bias ? std::fabs(bias[o]) : 0.0;
      for (int i = 0; i < IC; ++i) {
        const double p = double(inp[size_t(n) * IC + i]) * weight[size_t(o) * IC + i];
        sum += p;
        scale += std::fabs(p);
      }
      e.value[size_t(n) * OC + o] = sum;
      e.scale[size_t(n) * OC + o] = scale;
    }
  return e;
}

// dinp[n,i] = Σ_o dout[n,o]·W[o,i]
Expected naive_dinp(const std::vector<float>& dout, const std::vector<float>& weight, int N, int IC,
                    int OC) {
  Expected e;
  e.K = OC;
  e.value.assign(size_t(N) * IC, 0.0);
  e.scale.assign(size_t(N) * IC, 0.0);
  for (int n = 0; n < N; ++n)
    for (int o = 0; o < OC; ++o)
      for (int i = 0; i < IC; ++i) {
        const double p = double(dout[size_t(n) * OC + o]) * weight[size_t(o) * IC + i];
        e.value[size_t(n) * IC + i] += p;
        e.scale[size_t(n) * IC + i] += std::fabs(p);
      }
  return e;
}

// dweight[o,i] = prev[o,i] + Σ_n dout[n,o]·inp[n,i]
Expected naive_dweight(const std::vector<float>& prev, const std::vector<float>& dout,
                       const std::vector<float>& inp, int N, int IC, int OC) {
  Expected e;
  e.K = N;
  e.value.assign(prev.begin(), prev.end());
  e.scale.assign(prev.size(), 0.0);
  for (size_t j = 0; j < prev.size(); ++j) e.scale[j] = std::fabs(prev[j]);
  for (int n = 0; n < N; ++n)
    for (int o = 0; o < OC; ++o)
      for (int i = 0; i < IC; ++i) {
        const double p = double(dout[size_t(n) * OC + o]) * inp[size_t(n) * IC + i];
        e.value[size_t(o) * IC + i] += p;
        e.scale[size_t(o) * IC + i] += std::fabs(p);
      }
  return e;
}

// dbias[o] = prev[o] + Σ_n dout[n,o]
Expected naive_dbias(const std::vector<float>& prev, const std::vector<float>& dout, int N,
                     int OC) {
  Expected e;
  e.K = N;
  e.value.assign(prev.begin(), prev.end());
  e.scale.assign(prev.size(), 0.0);
  for (int o = 0; o < OC; ++o) e.scale[o] = std::fabs(prev[o]);
  for (int n = 0; n < N; ++n)
    for (int o = 0; o < OC; ++o) {
      e.value[o] += dout[size_t(n) * OC + o];
      e.scale[o] += std::fabs(dout[size_t(n) * OC + o]);
    }
  return e;
}

// Runs forward and backward on one random shape and checks every output against the
// naive loops: out and dinp are pre-filled with NaN (they must be overwritten, never read),
// dweight and dbias with random values (they must accumulate).
void check_random_shape(std::mt19937& gen, int N, int IC, int OC, bool with_bias) {
  const std::string what = "N=" + std::to_string(N) + " IC=" + std::to_string(IC) +
                           " OC=" + std::to_string(OC) + (with_bias ? " bias" : " no bias");
  SCOPED_TRACE(what);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<float> inp = random_vector(gen, size_t(N) * IC);
  const std::vector<float> weight = random_vector(gen, size_t(OC) * IC);
  const std::vector<float> bias = random_vector(gen, OC);
  const std::vector<float> dout = random_vector(gen, size_t(N) * OC);
  const std::vector<float> dweight0 = random_vector(gen, size_t(OC) * IC);
  const std::vector<float> dbias0 = random_vector(gen, OC);
  const float* bias_ptr = with_bias ? bias.data() : nullptr;

  std::vector<float> out(size_t(N) * OC, nan);
  hh::cpu::matmul_forward(out.data(), inp.data(), weight.data(), bias_ptr, N, IC, OC);
  expect_close(out, naive_forward(inp, weight, bias_ptr, N, IC, OC), "out");

  std::vector<float> dinp(size_t(N) * IC, nan), dweight = dweight0, dbias = dbias0;
  hh::cpu::matmul_backward(dinp.data(), dweight.data(), dbias.data(), dout.data(), inp.data(),
                           weight.data(), N, IC, OC);
  expect_close(dinp, naive_dinp(dout, weight, N, IC, OC), "dinp");
  expect_close(dweight, naive_dweight(dweight0, dout, inp, N, IC, OC), "dweight");
  expect_close(dbias, naive_dbias(dbias0, dout, N, OC), "dbias");
}

struct Shape {
  int N, IC, OC;
};

// Shapes around the block sizes of both kernels (MR 6/14, NR 16/32, KC 256, MC 144/280,
// NC 4096), the degenerate ones (1 row, 1 output, 1 input), and random ones in 1..70.
std::vector<Shape> test_shapes() {
  std::vector<Shape> shapes = {
      {1, 1, 1},    {1, 7, 50},  {2, 33, 17},  {3, 5, 1},     {4, 64, 40},  {5, 1, 9},
      {6, 16, 16},  {7, 13, 5},  {13, 31, 15}, {14, 32, 32},  {15, 33, 33}, {28, 64, 64},
      {29, 65, 63}, {47, 1, 70}, {70, 70, 1},  {64, 257, 31}, {6, 3, 8300}, {300, 301, 299}};
  if (!fast_mode()) {
    shapes.push_back({290, 513, 96});
    shapes.push_back({17, 270, 310});
  }
  std::mt19937 gen(7);
  std::uniform_int_distribution<int> size(1, 70);
  const int random_count = fast_mode() ? 12 : 60;
  for (int s = 0; s < random_count; ++s) shapes.push_back({size(gen), size(gen), size(gen)});
  return shapes;
}

class MatmulIsa : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override { use_isa(GetParam()); }
  void TearDown() override { use_isa(""); }
};

TEST_P(MatmulIsa, RandomShapesMatchNaiveLoops) {
  std::mt19937 gen(42);
  int count = 0;
  for (const Shape& s : test_shapes()) {
    check_random_shape(gen, s.N, s.IC, s.OC, /*with_bias=*/count++ % 3 != 2);
    if (HasFailure()) return;  // one broken shape is enough output
  }
}

TEST_P(MatmulIsa, MatchesPyTorchFixture) {
  const std::string path = std::string(HH_SOURCE_DIR) + "/tests/fixtures/matmul.safetensors";
  const hh::SafeTensorsFile file = hh::SafeTensorsFile::load(path);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  int cases = 0;
  for (const auto& [name, info] : file.tensors()) {
    const std::string suffix = ".weight";
    if (name.size() <= suffix.size() ||
        name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0)
      continue;
    const std::string c = name.substr(0, name.size() - suffix.size());
    SCOPED_TRACE("fixture case " + c);
    ++cases;
    ASSERT_EQ(info.shape.size(), 2u);
    const int OC = int(info.shape[0]), IC = int(info.shape[1]);
    const std::vector<float> inp = file.read_f32(c + ".inp");
    const int N = int(inp.size() / std::max(IC, 1));
    const std::vector<float> weight = file.read_f32(c + ".weight", {OC, IC});
    const bool has_bias = file.has(c + ".bias");
    const std::vector<float> bias =
        has_bias ? file.read_f32(c + ".bias", {OC}) : std::vector<float>();
    const std::vector<float> dout = file.read_f32(c + ".dout", {N, OC});
    const float* bias_ptr = has_bias ? bias.data() : nullptr;

    // PyTorch's values, with the error scales of the naive loops.
    auto torch_values = [&](const std::string& tensor, Expected e,
                            const std::vector<int64_t>& shape) {
      const std::vector<float> ref = file.read_f32(c + "." + tensor, shape);
      e.value.assign(ref.begin(), ref.end());
      return e;
    };
    std::vector<float> out(size_t(N) * OC, nan);
    hh::cpu::matmul_forward(out.data(), inp.data(), weight.data(), bias_ptr, N, IC, OC);
    expect_close(out, torch_values("out", naive_forward(inp, weight, bias_ptr, N, IC, OC), {N, OC}),
                 "out");

    std::vector<float> dinp(size_t(N) * IC, nan), dweight(size_t(OC) * IC, 0.0f), dbias(OC, 0.0f);
    hh::cpu::matmul_backward(dinp.data(), dweight.data(), dbias.data(), dout.data(), inp.data(),
                             weight.data(), N, IC, OC);
    expect_close(dinp, torch_values("dinp", naive_dinp(dout, weight, N, IC, OC), {N, IC}), "dinp");
    expect_close(
        dweight,
        torch_values("dweight",
                     naive_dweight(std::vector<float>(size_t(OC) * IC, 0.0f), dout, inp, N, IC, OC),
                     {OC, IC}),
        "dweight");
    expect_close(
        dbias, torch_values("dbias", naive_dbias(std::vector<float>(OC, 0.0f), dout, N, OC), {OC}),
        "dbias");
  }
  EXPECT_EQ(cases, 5) << "fixture cases found in " << path;
}

INSTANTIATE_TEST_SUITE_P(Kernels, MatmulIsa,
                         ::testing::Values(std::string(""), std::string("avx2")),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           return info.param.empty() ? std::string("Native") : std::string("Avx2");
                         });

TEST(Matmul, KernelNameIsKnown) {
  use_isa("avx2");
  EXPECT_STREQ(hh::cpu::matmul_kernel_name(), "avx2-6x16");
  use_isa("");
  const std::string native = hh::cpu::matmul_kernel_name();
  EXPECT_TRUE(native == "avx2-6x16" || native == "avx512-14x32") << native;
}

// Gradient accumulation: two backward calls add twice, and dinp is the same both times.
TEST(Matmul, BackwardAccumulatesParameterGradients) {
  std::mt19937 gen(3);
  const int N = 33, IC = 40, OC = 50;
  const std::vector<float> inp = random_vector(gen, size_t(N) * IC);
  const std::vector<float> weight = random_vector(gen, size_t(OC) * IC);
  const std::vector<float> dout = random_vector(gen, size_t(N) * OC);
  std::vector<float> dinp1(size_t(N) * IC), dinp2(size_t(N) * IC);
  std::vector<float> dw_once(size_t(OC) * IC, 0.0f), db_once(OC, 0.0f);
  std::vector<float> dw_twice(size_t(OC) * IC, 0.0f), db_twice(OC, 0.0f);
  hh::cpu::matmul_backward(dinp1.data(), dw_once.data(), db_once.data(), dout.data(), inp.data(),
                           weight.data(), N, IC, OC);
  for (int r = 0; r < 2; ++r)
    hh::cpu::matmul_backward(dinp2.data(), dw_twice.data(), db_twice.data(), dout.data(),
                             inp.data(), weight.data(), N, IC, OC);
  EXPECT_EQ(dinp1, dinp2) << "dinp must be overwritten, not accumulated";
  for (size_t j = 0; j < dw_once.size(); ++j)
    ASSERT_NEAR(dw_twice[j], 2.0f * dw_once[j], 1e-5f * (1.0f + std::fabs(dw_once[j]))) << j;
  for (int o = 0; o < OC; ++o)
    ASSERT_NEAR(db_twice[o], 2.0f * db_once[o], 1e-5f * (1.0f + std::fabs(db_once[o]))) << o;
}

// Null dinp / dbias / dweight are skipped and do not disturb the other outputs.
TEST(Matmul, NullGradientsAreSkipped) {
  std::mt19937 gen(5);
  const int N = 20, IC = 24, OC = 18;
  const std::vector<float> inp = random_vector(gen, size_t(N) * IC);
  const std::vector<float> weight = random_vector(gen, size_t(OC) * IC);
  const std::vector<float> dout = random_vector(gen, size_t(N) * OC);
  std::vector<float> dinp(size_t(N) * IC), dw(size_t(OC) * IC, 0.0f), db(OC, 0.0f);
  hh::cpu::matmul_backward(dinp.data(), dw.data(), db.data(), dout.data(), inp.data(),
                           weight.data(), N, IC, OC);

  std::vector<float> dw_only(size_t(OC) * IC, 0.0f);
  hh::cpu::matmul_backward(nullptr, dw_only.data(), nullptr, dout.data(), inp.data(), weight.data(),
                           N, IC, OC);
  EXPECT_EQ(dw_only, dw);

  std::vector<float> dinp_only(size_t(N) * IC, -1.0f), db_only(OC, 0.0f);
  hh::cpu::matmul_backward(dinp_only.data(), nullptr, db_only.data(), dout.data(), inp.data(),
                           weight.data(), N, IC, OC);
  EXPECT_EQ(dinp_only, dinp);
  EXPECT_EQ(db_only, db);
}

// Each element of C is summed in the same order whatever the thread split, so results are
// bitwise identical for 1 and 2 threads (runs are reproducible on any core count).
TEST(Matmul, ResultDoesNotDependOnThreadCount) {
  std::mt19937 gen(11);
  const int N = 150, IC = 300, OC = 200;
  const std::vector<float> inp = random_vector(gen, size_t(N) * IC);
  const std::vector<float> weight = random_vector(gen, size_t(OC) * IC);
  const std::vector<float> bias = random_vector(gen, OC);
  const std::vector<float> dout = random_vector(gen, size_t(N) * OC);
  auto run = [&](int threads) {
    const int saved = omp_get_max_threads();
    omp_set_num_threads(threads);
    std::vector<float> out(size_t(N) * OC), dinp(size_t(N) * IC), dw(size_t(OC) * IC, 0.0f),
        db(OC, 0.0f);
    hh::cpu::matmul_forward(out.data(), inp.data(), weight.data(), bias.data(), N, IC, OC);
    hh::cpu::matmul_backward(dinp.data(), dw.data(), db.data(), dout.data(), inp.data(),
                             weight.data(), N, IC, OC);
    omp_set_num_threads(saved);
    out.insert(out.end(), dinp.begin(), dinp.end());
    out.insert(out.end(), dw.begin(), dw.end());
    out.insert(out.end(), db.begin(), db.end());
    return out;
  };
  EXPECT_EQ(run(1), run(3));
}

TEST(Matmul, EmptyInnerDimensionGivesBias) {
  const float bias[3] = {1.0f, -2.0f, 3.5f};
  std::vector<float> out(2 * 3, 99.0f);
  hh::cpu::matmul_forward(out.data(), nullptr, nullptr, bias, 2, 0, 3);
  EXPECT_EQ(out, (std::vector<float>{1.0f, -2.0f, 3.5f, 1.0f, -2.0f, 3.5f}));
  hh::cpu::matmul_forward(out.data(), nullptr, nullptr, nullptr, 2, 0, 3);
  EXPECT_EQ(out, std::vector<float>(6, 0.0f));
}

TEST(Matmul, NegativeShapeThrows) {
  float x = 0.0f;
  EXPECT_THROW(hh::cpu::matmul_forward(&x, &x, &x, nullptr, -1, 1, 1), hh::Error);
  EXPECT_THROW(hh::cpu::matmul_backward(&x, &x, &x, &x, &x, &x, 1, -3, 1), hh::Error);
  EXPECT_THROW(hh::cpu::matmul_forward(nullptr, &x, &x, nullptr, 1, 1, 1), hh::Error);
}

}  // namespace
