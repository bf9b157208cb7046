// The one error type of hh, and the checks that throw it.
//
// Every failure a user can cause (bad flag, bad file, bad shape) throws hh::Error with a
// message that names the file/flag/offset involved. Binaries catch it in main(), print
// "error: <message>" and exit 1. HH_CHECK adds the source location so a bug report
// points at the line that noticed the problem. CUDA, cuBLAS and NCCL checks (cuda/) build
// on the same macro.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace hh {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

namespace detail {
inline void append(std::ostringstream&) {}
template <typename T, typename... Rest>
void append(std::ostringstream& os, const T& first, const Rest&... rest) {
  os << first;
  append(os, rest...);
}
}  // namespace detail

// Concatenates the arguments with operator<< into one string.
template <typename... Args>
std::string str_cat(const Args&... args) {
  std::ostringstream os;
  detail::append(os, args...);
  return os.str();
}

[[noreturn]] void throw_error(const char* file, int line, const std::string& message);

}  // namespace hh

// HH_FAIL("bad thing ", x): throws hh::Error("bad thing 42 [src/x.cpp:10]").
#define HH_FAIL(...) ::hh::throw_error(__FILE__, __LINE__, ::hh::str_cat(__VA_ARGS__))

// HH_CHECK(cond, "message ", x): throws when cond is false; the message says what is wrong.
#define HH_CHECK(cond, ...)                                                         \
  do {                                                                              \
    if (!(cond)) ::hh::throw_error(__FILE__, __LINE__, ::hh::str_cat(__VA_ARGS__)); \
  } while (0)
