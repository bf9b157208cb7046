// Files: whole-file reads with clear errors, and atomic writes.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace hh {

// Reads a whole file; throws hh::Error("<path>: <strerror>") when it cannot.
std::vector<uint8_t> read_file_bytes(const std::string& path);
std::string read_file_text(const std::string& path);

// Writes `bytes` to path.tmp.<pid>, fsyncs it, renames it over `path` and fsyncs the
// directory: a reader sees the old file or the new one, never a partial one, and a crash
// (or Ctrl-C) leaves the previous file intact.
void write_file_atomic(const std::string& path, const void* data, size_t bytes);
inline void write_file_atomic(const std::string& path, std::string_view s) {
  write_file_atomic(path, s.data(), s.size());
}

bool file_exists(const std::string& path);

// Checked before any work, so that a long run does not end in an unwritable output: fails,
// naming the flag, when `out` is a directory, when its directory does not exist, or when it
// is one of the inputs (the same file through any path or link: writing it would destroy
// the input). An empty `out` (not asked for) passes.
void check_output_path(const std::string& out_flag, const std::string& out,
                       const std::vector<std::pair<std::string, std::string>>& inputs = {});
void make_dirs(const std::string& path);  // mkdir -p

// Little-endian binary building/reading for hh's own file formats (tokenizer, datasets,
// optimizer state). ByteReader checks every read against the end and names the source
// and offset on failure.
class ByteWriter {
 public:
  void u32(uint32_t v);
  void u64(uint64_t v);
  void i32(int32_t v);
  void f32(float v);
  void f64(double v);
  void bytes(const void* p, size_t n);
  void str(std::string_view s);  // u32 length + bytes
  std::vector<uint8_t>& buffer() { return buf_; }

 private:
  std::vector<uint8_t> buf_;
};

class ByteReader {
 public:
  ByteReader(const uint8_t* p, size_t n, std::string what) : p_(p), n_(n), what_(std::move(what)) {}
  uint32_t u32();
  uint64_t u64();
  int32_t i32();
  float f32();
  double f64();
  void bytes(void* dst, size_t n);
  const uint8_t* skip(size_t n);  // returns a pointer to the n bytes skipped
  std::string str(size_t max_len = 1 << 20);
  size_t offset() const { return pos_; }
  size_t remaining() const { return n_ - pos_; }
  bool at_end() const { return pos_ == n_; }
  [[noreturn]] void fail(const std::string& msg) const;  // "<what>: at byte <off>: msg"

 private:
  const uint8_t* p_;
  size_t n_;
  size_t pos_ = 0;
  std::string what_;
};

// FNV-1a 64-bit, for dataset and tokenizer checksums.
uint64_t fnv1a64(const void* data, size_t n, uint64_t seed = 0xcbf29ce484222325ull);

}  // namespace hh
