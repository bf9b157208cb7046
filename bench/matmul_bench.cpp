// Micro-benchmark of the CPU matmul (src/ops/cpu/matmul.cpp): GFLOP/s of the three
// products of a linear layer on the shapes of the benchmark model (N = B·T = 2048 rows).
//
//   matmul_bench [--quick] [N IC OC ...]
//
// Each product is timed as the median of repeated calls after one warm-up call;
// flops = 2·N·IC·OC per product. Threads: OMP_NUM_THREADS (default: all cores).
// HH_BENCH_CLOCK=cpu times with the process CPU time divided by the thread count instead
// of the wall clock: on a machine shared with other jobs that estimates the speed the
// kernel would have alone (waiting for the CPU does not count).
#include <omp.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <vector>

#include "ops/cpu/cpu_ops.h"

namespace {

// Seconds: the wall clock, or (HH_BENCH_CLOCK=cpu) process CPU time / threads.
double now_seconds() {
  static const bool cpu_clock = [] {
    const char* c = std::getenv("HH_BENCH_CLOCK");
    return c && std::strcmp(c, "cpu") == 0;
  }();
  if (!cpu_clock) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return (ts.tv_sec + ts.tv_nsec * 1e-9) / omp_get_max_threads();
}

// Median seconds per call of fn over enough calls to fill ~min_seconds (at least 3).
double median_seconds(const std::function<void()>& fn, double min_seconds) {
  fn();  // warm-up: page in the buffers, grow the packing buffers
  std::vector<double> times;
  double total = 0;
  while (times.size() < 3 || total < min_seconds) {
    const double t0 = now_seconds();
    fn();
    const double s = now_seconds() - t0;
    times.push_back(s);
    total += s;
    if (times.size() >= 200) break;
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

void bench_shape(int N, int IC, int OC, double min_seconds) {
  std::mt19937 gen(1234);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  auto random_vector = [&](size_t n) {
    std::vector<float> v(n);
    for (float& x : v) x = dist(gen);
    return v;
  };
  std::vector<float> inp = random_vector(size_t(N) * IC), weight = random_vector(size_t(OC) * IC);
  std::vector<float> bias = random_vector(OC), dout = random_vector(size_t(N) * OC);
  std::vector<float> out(size_t(N) * OC), dinp(size_t(N) * IC), dweight(size_t(OC) * IC), dbias(OC);
  const double gflop = 2.0 * N * IC * OC * 1e-9;

  const double t_fwd = median_seconds(
      [&] {
        hh::cpu::matmul_forward(out.data(), inp.data(), weight.data(), bias.data(), N, IC, OC);
      },
      min_seconds);
  const double t_dinp = median_seconds(
      [&] {
        hh::cpu::matmul_backward(dinp.data(), nullptr, nullptr, dout.data(), inp.data(),
                                 weight.data(), N, IC, OC);
      },
      min_seconds);
  const double t_dw = median_seconds(
      [&] {
        hh::cpu::matmul_backward(nullptr, dweight.data(), dbias.data(), dout.data(), inp.data(),
                                 weight.data(), N, IC, OC);
      },
      min_seconds);
  std::printf("N=%5d IC=%5d OC=%5d | fwd %7.1f  dinp %7.1f  dW+db %7.1f GFLOP/s | %8.3f ms/layer\n",
              N, IC, OC, gflop / t_fwd, gflop / t_dinp, gflop / t_dw,
              (t_fwd + t_dinp + t_dw) * 1e3);
}

}  // namespace

int main(int argc, char** argv) {
  double min_seconds = 0.5;
  std::vector<int> dims;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) {
      min_seconds = 0.05;
    } else {
      dims.push_back(std::atoi(argv[i]));
    }
  }
  if (dims.empty() || dims.size() % 3 != 0) {
    // The benchmark model (width 256, vocab 8192, B·T = 2048) and a GPT-2-small layer.
    dims = {2048, 256,  768, 2048, 256,   256, 2048, 256,   1024, 2048, 1024,
            256,  2048, 256, 8192, 2048,  768, 2304, 2048,  768,  3072, 2048,
            3072, 768,  1,   768,  50304, 4,   768,  50304, 16,   768,  50304};
  }
  std::printf("matmul kernel %s, %d threads\n", hh::cpu::matmul_kernel_name(),
              omp_get_max_threads());
  for (size_t i = 0; i + 2 < dims.size(); i += 3)
    bench_shape(dims[i], dims[i + 1], dims[i + 2], min_seconds);
  return 0;
}
