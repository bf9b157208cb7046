#include "core/fileio.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "core/error.h"

namespace hh {

namespace {

std::string errno_text() { return std::strerror(errno); }

// Reads the whole of fd until end of file (works for pipes and /proc files too).
bool read_all(int fd, std::vector<uint8_t>* out) {
  struct stat st;
  if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0) {
    out->reserve(static_cast<size_t>(st.st_size));
  }
  uint8_t chunk[1 << 16];
  for (;;) {
    ssize_t n = ::read(fd, chunk, sizeof chunk);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return false;
    if (n == 0) return true;
    out->insert(out->end(), chunk, chunk + n);
  }
}

// Writes all n bytes, retrying short writes and EINTR.
bool write_all(int fd, const uint8_t* p, size_t n) {
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

std::string parent_dir(const std::string& path) {
  size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

}  // namespace

std::vector<uint8_t> read_file_bytes(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) HH_FAIL(path, ": ", errno_text());
  std::vector<uint8_t> bytes;
  bool ok = read_all(fd, &bytes);
  int saved = errno;
  ::close(fd);
  if (!ok) HH_FAIL(path, ": ", std::strerror(saved));
  return bytes;
}

std::string read_file_text(const std::string& path) {
  std::vector<uint8_t> bytes = read_file_bytes(path);
  return std::string(bytes.begin(), bytes.end());
}

// Temp file in the same directory (so rename is atomic) -> write -> fsync -> close ->
// rename over path -> fsync the directory (so the rename itself survives a crash). Any
// failure removes the temp file and leaves the old `path` untouched.
void write_file_atomic(const std::string& path, const void* data, size_t bytes) {
  HH_CHECK(!path.empty(), "write_file_atomic: empty path");
  std::string tmp = path + ".tmp." + std::to_string(::getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) HH_FAIL(path, ": cannot create temporary file ", tmp, ": ", errno_text());
  const char* failed = nullptr;
  if (!write_all(fd, static_cast<const uint8_t*>(data), bytes)) {
    failed = "write";
  } else if (::fsync(fd) != 0) {
    failed = "fsync";
  }
  int saved = errno;
  if (::close(fd) != 0 && !failed) {
    failed = "close";
    saved = errno;
  }
  if (!failed && ::rename(tmp.c_str(), path.c_str()) != 0) {
    failed = "rename";
    saved = errno;
  }
  if (failed) {
    ::unlink(tmp.c_str());
    HH_FAIL(path, ": ", failed, " failed: ", std::strerror(saved));
  }
  int dir_fd = ::open(parent_dir(path).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd >= 0) {
    // Some filesystems cannot fsync directories (EINVAL); the data itself is synced.
    int rc = ::fsync(dir_fd);
    saved = errno;
    ::close(dir_fd);
    if (rc != 0 && saved != EINVAL && saved != EROFS) {
      HH_FAIL(path, ": fsync of the directory failed: ", std::strerror(saved));
    }
  }
}

bool file_exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

void check_output_path(const std::string& out_flag, const std::string& out,
                       const std::vector<std::pair<std::string, std::string>>& inputs) {
  if (out.empty()) return;
  const size_t slash = out.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "."
                          : slash == 0               ? "/"
                                                     : out.substr(0, slash);
  struct stat d;
  HH_CHECK(::stat(dir.c_str(), &d) == 0 && S_ISDIR(d.st_mode), out_flag, " ", out, ": the folder ",
           dir, " does not exist");
  struct stat o;
  if (::stat(out.c_str(), &o) != 0) return;  // a new file is no input
  HH_CHECK(!S_ISDIR(o.st_mode), out_flag, " ", out, " is a folder, not a file");
  for (const auto& [flag, path] : inputs) {
    struct stat i;
    if (path.empty() || ::stat(path.c_str(), &i) != 0) continue;
    HH_CHECK(o.st_dev != i.st_dev || o.st_ino != i.st_ino, out_flag, " ", out,
             " is the same file as ", flag, " ", path, ": writing it would destroy the input");
  }
}

// mkdir -p: creates each missing component; an existing directory is fine.
void make_dirs(const std::string& path) {
  if (path.empty()) return;
  for (size_t pos = 1; pos <= path.size(); ++pos) {
    if (pos != path.size() && path[pos] != '/') continue;
    std::string prefix = path.substr(0, pos);
    if (::mkdir(prefix.c_str(), 0755) == 0) continue;
    int saved = errno;
    struct stat st;
    if (saved == EEXIST && ::stat(prefix.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) continue;
    if (saved == EEXIST) HH_FAIL(path, ": ", prefix, " exists and is not a directory");
    HH_FAIL(path, ": cannot create directory ", prefix, ": ", std::strerror(saved));
  }
}

// ---- ByteWriter: little-endian, independent of the host byte order.

void ByteWriter::u32(uint32_t v) {
  for (int i = 0; i < 4; ++i) buf_.push_back(static_cast<uint8_t>(v >> (8 * i)));
}
void ByteWriter::u64(uint64_t v) {
  for (int i = 0; i < 8; ++i) buf_.push_back(static_cast<uint8_t>(v >> (8 * i)));
}
void ByteWriter::i32(int32_t v) { u32(static_cast<uint32_t>(v)); }
void ByteWriter::f32(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  u32(bits);
}
void ByteWriter::f64(double v) {
  uint64_t bits;
  std::memcpy(&bits, &v, 8);
  u64(bits);
}
void ByteWriter::bytes(const void* p, size_t n) {
  const uint8_t* b = static_cast<const uint8_t*>(p);
  buf_.insert(buf_.end(), b, b + n);
}
void ByteWriter::str(std::string_view s) {
  HH_CHECK(s.size() <= 0xffffffffu, "ByteWriter: string of ", s.size(), " bytes is too long");
  u32(static_cast<uint32_t>(s.size()));
  bytes(s.data(), s.size());
}

// ---- ByteReader: every read is checked against the end first.

void ByteReader::fail(const std::string& msg) const {
  throw Error(str_cat(what_, ": at byte ", pos_, ": ", msg));
}

const uint8_t* ByteReader::skip(size_t n) {
  if (n > n_ - pos_) fail(str_cat("truncated: need ", n, " bytes, ", n_ - pos_, " left"));
  const uint8_t* p = p_ + pos_;
  pos_ += n;
  return p;
}

uint32_t ByteReader::u32() {
  const uint8_t* b = skip(4);
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= static_cast<uint32_t>(b[i]) << (8 * i);
  return v;
}
uint64_t ByteReader::u64() {
  const uint8_t* b = skip(8);
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= static_cast<uint64_t>(b[i]) << (8 * i);
  return v;
}
int32_t ByteReader::i32() { return static_cast<int32_t>(u32()); }
float ByteReader::f32() {
  uint32_t bits = u32();
  float v;
  std::memcpy(&v, &bits, 4);
  return v;
}
double ByteReader::f64() {
  uint64_t bits = u64();
  double v;
  std::memcpy(&v, &bits, 8);
  return v;
}
void ByteReader::bytes(void* dst, size_t n) {
  const uint8_t* p = skip(n);
  if (n > 0) std::memcpy(dst, p, n);
}
std::string ByteReader::str(size_t max_len) {
  size_t start = pos_;
  uint32_t len = u32();
  if (len > max_len) {
    pos_ = start;
    fail(str_cat("string length ", len, " exceeds the limit of ", max_len));
  }
  if (len > remaining()) {
    fail(str_cat("truncated: need ", len, " bytes of string, ", remaining(), " left"));
  }
  const uint8_t* p = skip(len);
  return std::string(reinterpret_cast<const char*>(p), len);
}

// FNV-1a: h = (h ^ byte) * 0x100000001b3 for each byte.
uint64_t fnv1a64(const void* data, size_t n, uint64_t seed) {
  const uint8_t* p = static_cast<const uint8_t*>(data);
  uint64_t h = seed;
  for (size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= 0x100000001b3ull;
  }
  return h;
}

}  // namespace hh
