// What every fuzz target links: the scratch file, and the seeds handed to libFuzzer.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <set>
#include <string>

#include "core/fileio.h"
#include "fuzz/fuzz.h"

namespace {

void write_or_abort(const std::string& path, const uint8_t* data, size_t size) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f || (size && std::fwrite(data, 1, size, f) != size) || std::fclose(f) != 0) {
    std::perror(path.c_str());
    std::abort();
  }
}

}  // namespace

namespace hh::fuzz {

std::string current_input;

hh::Backend& cpu_backend() {
  static std::unique_ptr<hh::Backend> backend = hh::make_cpu_backend();
  return *backend;
}

hh::GPTConfig small_gpt_config() {
  hh::GPTConfig c;
  c.n_layer = 1;
  c.n_head = 2;
  c.n_embd = 8;
  c.max_seq_len = 4;
  c.set_vocab_size(20);
  return c;
}

Bytes with_checksum_fixed(const uint8_t* data, size_t size) {
  Bytes b(data, data + size);
  if (size < 8) return b;
  const uint64_t sum = fnv1a64(data, size - 8);
  for (int i = 0; i < 8; i++) b[size - 8 + i] = static_cast<uint8_t>(sum >> (8 * i));
  return b;
}

std::string scratch_file(const uint8_t* data, size_t size, const std::string& suffix) {
  // /dev/shm when there is one: the readers open real files, and a disk file per input
  // would slow the fuzzer to the disk's pace.
  static const std::string dir = [] {
    const char* env = std::getenv("TMPDIR");
    if (access("/dev/shm", W_OK) == 0) return std::string("/dev/shm");
    return std::string(env && *env ? env : "/tmp");
  }();
  const std::string path =
      dir + "/hh-fuzz-" + std::to_string(getpid()) + (suffix.empty() ? "" : "-" + suffix);
  // Removed when the process exits (a run that aborts on a finding leaves them).
  static std::set<std::string> made;
  if (made.insert(path).second && made.size() == 1)
    std::atexit([] {
      for (const std::string& p : made) std::remove(p.c_str());
    });
  write_or_abort(path, data, size);
  return path;
}

}  // namespace hh::fuzz

#ifdef HH_FUZZ_LIBFUZZER
// Under libFuzzer: HH_FUZZ_SEEDS=DIR writes the target's seeds into DIR (the corpus it is
// about to read) before fuzzing starts.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const char* dir = std::getenv("HH_FUZZ_SEEDS");
  if (!dir || !*dir) return 0;
  const std::vector<hh::fuzz::Bytes> seeds = hh::fuzz::seeds();
  for (size_t i = 0; i < seeds.size(); i++)
    write_or_abort(std::string(dir) + "/seed-" + std::to_string(i), seeds[i].data(),
                   seeds[i].size());
  return 0;
}
#endif
