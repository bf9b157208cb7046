// The fuzz targets without libFuzzer: runs the target's seeds, each seed cut short at
// every length and with every byte replaced in turn (by its complement, 0 and 0xff: a
// small deterministic fuzz, seeds past 4 KiB at 4096 evenly spread places), then every
// file named on the command line (a folder: each file in it, in name order). A ctest per
// target runs it over fuzz/corpus/<target>/, in the release and the sanitizer builds.
#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstddef>
#include <cstdio>
#include <string>
#include <vector>

#include "core/fileio.h"
#include "fuzz/fuzz.h"

namespace {

std::vector<std::string> files_under(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) {
    std::fprintf(stderr, "%s: no such file or folder\n", path.c_str());
    std::exit(2);
  }
  if (!S_ISDIR(st.st_mode)) return {path};
  std::vector<std::string> files;
  if (DIR* d = opendir(path.c_str())) {
    while (dirent* e = readdir(d)) {
      const std::string name = e->d_name;
      if (name == "." || name == ".." || name[0] == '.') continue;
      files.push_back(path + "/" + name);
    }
    closedir(d);
  }
  std::sort(files.begin(), files.end());
  return files;
}

// Every cut and every replaced byte of one seed; returns how many inputs it ran.
size_t run_variants(const hh::fuzz::Bytes& seed, size_t index) {
  using hh::str_cat;
  const size_t n = seed.size(), stride = n > 4096 ? (n + 4095) / 4096 : 1;
  size_t runs = 0;
  for (size_t len = 0; len < n; len += stride, runs++) {
    hh::fuzz::Bytes cut(seed.begin(), seed.begin() + static_cast<std::ptrdiff_t>(len));
    hh::fuzz::current_input = str_cat("seed ", index, " cut to ", len, " bytes");
    LLVMFuzzerTestOneInput(cut.data(), cut.size());
  }
  hh::fuzz::Bytes b = seed;
  for (size_t i = 0; i < n; i += stride) {
    const uint8_t original = b[i];
    for (uint8_t v : {static_cast<uint8_t>(~original), uint8_t{0}, uint8_t{0xff}}) {
      if (v == original) continue;
      b[i] = v;
      hh::fuzz::current_input =
          str_cat("seed ", index, " with byte ", i, " set to ", static_cast<int>(v));
      LLVMFuzzerTestOneInput(b.data(), b.size());
      runs++;
    }
    b[i] = original;
  }
  return runs;
}

}  // namespace

int main(int argc, char** argv) {
  size_t seeds = 0, variants = 0, files = 0;
  for (const hh::fuzz::Bytes& s : hh::fuzz::seeds()) {
    hh::fuzz::current_input = hh::str_cat("seed ", seeds);
    LLVMFuzzerTestOneInput(s.data(), s.size());
    variants += run_variants(s, seeds);
    seeds++;
  }
  for (int i = 1; i < argc; i++) {
    for (const std::string& f : files_under(argv[i])) {
      std::vector<uint8_t> bytes = hh::read_file_bytes(f);
      hh::fuzz::current_input = f;
      LLVMFuzzerTestOneInput(bytes.data(), bytes.size());
      files++;
    }
  }
  std::printf(
      "%s: %zu seeds, %zu cut or altered seeds, %zu corpus files: each read or "
      "refused with hh::Error\n",
      argv[0], seeds, variants, files);
  return 0;
}
