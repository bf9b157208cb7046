// Unicode code point classes for GPT-2's pre-tokenizer. The range table is generated
// (scripts/gen_unicode_tables.py -> unicode_tables.cpp) from Debian's unicode-data.
#pragma once

#include <cstddef>
#include <cstdint>

namespace hh {

// \p{L}, \p{N}, \s (White_Space) and everything else (including invalid UTF-8 bytes).
enum class CharClass : uint8_t { kOther = 0, kLetter = 1, kNumber = 2, kSpace = 3 };

struct CodePointRange {
  uint32_t lo, hi;  // inclusive
  CharClass cls;
};

extern const CodePointRange kCodePointRanges[];
extern const size_t kCodePointRangeCount;

// The class of one code point: a 64K table for the BMP, binary search above it.
CharClass code_point_class(uint32_t cp);

}  // namespace hh
