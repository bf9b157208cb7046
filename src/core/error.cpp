#include "core/error.h"

#include <cstring>

namespace hh {

[[noreturn]] void throw_error(const char* file, int line, const std::string& message) {
  // Keep only the path below src/ or cuda/ so messages do not leak build paths.
  const char* short_file = file;
  for (const char* root : {"/src/", "/cuda/", "/tests/"}) {
    if (const char* p = std::strstr(file, root)) {
      short_file = p + 1;
      break;
    }
  }
  throw Error(str_cat(message, " [", short_file, ":", line, "]"));
}

}  // namespace hh
