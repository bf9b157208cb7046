// HH_CUDA_KERNEL_TIMES=N: per-kernel GPU time from CUPTI's activity records, printed as a
// table of the N kernels with the most time when the backend is destroyed. Unlike Nsight
// Compute it replays nothing and serialises nothing: kernels run as they always do, inside
// CUDA graphs too (Nsight Compute could not profile the decode loop at all). CUPTI is
// loaded with dlopen when the switch is set, so the binaries do not depend on it.
#include <cxxabi.h>
#include <dlfcn.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "cuda_ops.cuh"

#if __has_include(<cupti.h>)
#include <cupti.h>
#define HH_HAVE_CUPTI 1
#endif

namespace hh::cuda {
namespace {

struct KernelStat {
  uint64_t calls = 0;
  uint64_t ns = 0;
};

std::mutex& stats_mutex() {
  static std::mutex m;
  return m;
}
std::map<std::string, KernelStat>& stats() {
  static std::map<std::string, KernelStat> s;
  return s;
}

std::string demangled(const char* name) {
  int status = 0;
  char* d = abi::__cxa_demangle(name, nullptr, nullptr, &status);
  std::string out = status == 0 && d ? d : name;
  std::free(d);
  // Drop the argument list: the kernel's name and template arguments are what tell apart.
  if (const size_t paren = out.find('('); paren != std::string::npos) out.resize(paren);
  return out;
}

#ifdef HH_HAVE_CUPTI
struct Cupti {
  decltype(&cuptiActivityRegisterCallbacks) register_callbacks = nullptr;
  decltype(&cuptiActivityEnable) enable = nullptr;
  decltype(&cuptiActivityFlushAll) flush_all = nullptr;
  decltype(&cuptiActivityGetNextRecord) next_record = nullptr;
};
Cupti& cupti() {
  static Cupti c;
  return c;
}

constexpr size_t kBufferBytes = size_t(8) << 20;

void CUPTIAPI buffer_requested(uint8_t** buffer, size_t* size, size_t* max_records) {
  *buffer = static_cast<uint8_t*>(std::aligned_alloc(8, kBufferBytes));
  *size = *buffer ? kBufferBytes : 0;
  *max_records = 0;  // as many as fit
}

void CUPTIAPI buffer_completed(CUcontext, uint32_t, uint8_t* buffer, size_t, size_t valid) {
  CUpti_Activity* record = nullptr;
  {
    std::lock_guard<std::mutex> lock(stats_mutex());
    while (cupti().next_record(buffer, valid, &record) == CUPTI_SUCCESS) {
      if (record->kind != CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) continue;
      const auto* k = reinterpret_cast<const CUpti_ActivityKernel10*>(record);
      KernelStat& s = stats()[k->name ? k->name : "(unnamed)"];
      s.calls++;
      s.ns += k->end - k->start;
    }
  }
  std::free(buffer);
}
#endif

}  // namespace

std::string kernel_times_start() {
#ifdef HH_HAVE_CUPTI
  static std::string result = [] {
    void* lib = nullptr;
    std::string tried;
    const char* env = std::getenv("HH_CUPTI_LIB");
    for (const char* path :
         {env, "libcupti.so", "libcupti.so.13", "/usr/local/cuda/lib64/libcupti.so",
          "/usr/local/cuda/lib/libcupti.so", "/usr/local/cuda/extras/CUPTI/lib64/libcupti.so"}) {
      if (!path || lib) continue;
      lib = dlopen(path, RTLD_NOW);
      tried += std::string(tried.empty() ? "" : ", ") + path;
    }
    if (!lib)
      return "HH_CUDA_KERNEL_TIMES: no CUPTI library (tried " + tried + "; set HH_CUPTI_LIB)";
    Cupti& c = cupti();
    c.register_callbacks = reinterpret_cast<decltype(c.register_callbacks)>(
        dlsym(lib, "cuptiActivityRegisterCallbacks"));
    c.enable = reinterpret_cast<decltype(c.enable)>(dlsym(lib, "cuptiActivityEnable"));
    c.flush_all = reinterpret_cast<decltype(c.flush_all)>(dlsym(lib, "cuptiActivityFlushAll"));
    c.next_record =
        reinterpret_cast<decltype(c.next_record)>(dlsym(lib, "cuptiActivityGetNextRecord"));
    if (!c.register_callbacks || !c.enable || !c.flush_all || !c.next_record)
      return std::string("HH_CUDA_KERNEL_TIMES: the CUPTI library lacks the activity API");
    if (c.register_callbacks(buffer_requested, buffer_completed) != CUPTI_SUCCESS ||
        c.enable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) != CUPTI_SUCCESS) {
      c.flush_all = nullptr;
      return std::string("HH_CUDA_KERNEL_TIMES: CUPTI refused kernel activity records");
    }
    return std::string();
  }();
  return result;
#else
  return "HH_CUDA_KERNEL_TIMES: built without cupti.h";
#endif
}

std::string kernel_times_report(size_t top) {
#ifdef HH_HAVE_CUPTI
  if (cupti().flush_all) cupti().flush_all(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED);
#endif
  std::vector<std::pair<std::string, KernelStat>> rows;
  {
    std::lock_guard<std::mutex> lock(stats_mutex());
    // Merge by demangled name (two instantiations print apart; two mangled spellings of one
    // kernel do not).
    std::map<std::string, KernelStat> merged;
    for (const auto& [name, s] : stats()) {
      KernelStat& m = merged[demangled(name.c_str())];
      m.calls += s.calls;
      m.ns += s.ns;
    }
    rows.assign(merged.begin(), merged.end());
  }
  std::sort(rows.begin(), rows.end(),
            [](const auto& a, const auto& b) { return a.second.ns > b.second.ns; });
  uint64_t total_ns = 0, total_calls = 0;
  for (const auto& r : rows) total_ns += r.second.ns, total_calls += r.second.calls;
  std::string out = "kernel times (CUPTI, HH_CUDA_KERNEL_TIMES; since the backend was made)\n";
  char line[256];
  std::snprintf(line, sizeof(line), "%-72s %8s %10s %6s %9s\n", "kernel", "calls", "ms", "share",
                "mean us");
  out += line;
  for (size_t i = 0; i < rows.size() && i < top; i++) {
    const auto& [name, s] = rows[i];
    const std::string shown = name.size() > 72 ? name.substr(name.size() - 72) : name;
    std::snprintf(line, sizeof(line), "%-72s %8llu %10.3f %5.1f%% %9.1f\n", shown.c_str(),
                  static_cast<unsigned long long>(s.calls), s.ns / 1e6,
                  total_ns ? 100.0 * s.ns / total_ns : 0.0, s.calls ? s.ns / 1e3 / s.calls : 0.0);
    out += line;
  }
  std::snprintf(line, sizeof(line), "%-72s %8llu %10.3f\n", "all kernels",
                static_cast<unsigned long long>(total_calls), total_ns / 1e6);
  out += line;
  return out;
}

}  // namespace hh::cuda
