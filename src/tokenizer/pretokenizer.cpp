// GPT-2 pre-tokenization (see pretokenizer.h) and the code point class lookup.
#include "tokenizer/pretokenizer.h"

#include <algorithm>
#include <memory>

namespace hh {
namespace {

// Class of each ASCII byte (the common case, no table lookup beyond this).
struct AsciiClasses {
  CharClass cls[128];
  AsciiClasses() {
    for (int c = 0; c < 128; ++c) cls[c] = code_point_class(static_cast<uint32_t>(c));
  }
};
const AsciiClasses& ascii_classes() {
  static const AsciiClasses table;
  return table;
}

// Binary search over the generated ranges: the class of cp, kOther when in no range.
CharClass search_ranges(uint32_t cp) {
  const CodePointRange* begin = kCodePointRanges;
  const CodePointRange* end = kCodePointRanges + kCodePointRangeCount;
  const CodePointRange* it = std::upper_bound(
      begin, end, cp, [](uint32_t v, const CodePointRange& r) { return v < r.lo; });
  if (it == begin) return CharClass::kOther;
  --it;
  return cp <= it->hi ? it->cls : CharClass::kOther;
}

// One byte per BMP code point, filled once from the ranges (64 KiB).
const uint8_t* bmp_classes() {
  static const std::unique_ptr<uint8_t[]> table = [] {
    std::unique_ptr<uint8_t[]> t(new uint8_t[0x10000]());
    for (size_t i = 0; i < kCodePointRangeCount; ++i) {
      const CodePointRange& r = kCodePointRanges[i];
      if (r.lo > 0xFFFF) break;
      uint32_t hi = std::min<uint32_t>(r.hi, 0xFFFF);
      for (uint32_t cp = r.lo; cp <= hi; ++cp) t[cp] = static_cast<uint8_t>(r.cls);
    }
    return t;
  }();
  return table.get();
}

inline bool is_continuation(uint8_t b) { return (b & 0xC0) == 0x80; }

// End of the run of code points of class cls that starts at pos.
inline size_t scan_run(const uint8_t* s, size_t n, size_t pos, CharClass cls) {
  const CharClass* ascii = ascii_classes().cls;
  while (pos < n) {
    uint8_t b = s[pos];
    if (b < 0x80) {
      if (ascii[b] != cls) break;
      ++pos;
    } else {
      size_t len;
      if (char_class_at(s, n, pos, &len) != cls) break;
      pos += len;
    }
  }
  return pos;
}

}  // namespace

// Class of a code point: ASCII and BMP by table, the rest by binary search.
CharClass code_point_class(uint32_t cp) {
  if (cp < 0x10000) return static_cast<CharClass>(bmp_classes()[cp]);
  return search_ranges(cp);
}

// Strict UTF-8 (no overlongs, no surrogates, <= U+10FFFF); anything else is one invalid
// byte of class kOther.
CharClass char_class_at(const uint8_t* s, size_t n, size_t pos, size_t* len) {
  uint8_t b0 = s[pos];
  if (b0 < 0x80) {
    *len = 1;
    return ascii_classes().cls[b0];
  }
  *len = 1;
  size_t left = n - pos;
  uint32_t cp;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    if (left < 2 || !is_continuation(s[pos + 1])) return CharClass::kOther;
    cp = ((b0 & 0x1Fu) << 6) | (s[pos + 1] & 0x3Fu);
    *len = 2;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    if (left < 3) return CharClass::kOther;
    uint8_t b1 = s[pos + 1];
    uint8_t lo = b0 == 0xE0 ? 0xA0 : 0x80;
    uint8_t hi = b0 == 0xED ? 0x9F : 0xBF;
    if (b1 < lo || b1 > hi || !is_continuation(s[pos + 2])) return CharClass::kOther;
    cp = ((b0 & 0x0Fu) << 12) | ((b1 & 0x3Fu) << 6) | (s[pos + 2] & 0x3Fu);
    *len = 3;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    if (left < 4) return CharClass::kOther;
    uint8_t b1 = s[pos + 1];
    uint8_t lo = b0 == 0xF0 ? 0x90 : 0x80;
    uint8_t hi = b0 == 0xF4 ? 0x8F : 0xBF;
    if (b1 < lo || b1 > hi || !is_continuation(s[pos + 2]) || !is_continuation(s[pos + 3]))
      return CharClass::kOther;
    cp = ((b0 & 0x07u) << 18) | ((b1 & 0x3Fu) << 12) | ((s[pos + 2] & 0x3Fu) << 6) |
         (s[pos + 3] & 0x3Fu);
    *len = 4;
  } else {
    return CharClass::kOther;
  }
  return code_point_class(cp);
}

// The regex alternatives in order; the first that matches at pos decides the token.
size_t next_pretoken_end(const uint8_t* s, size_t n, size_t pos) {
  uint8_t c0 = s[pos];
  // 's 't 'm 'd 're 've 'll (case-sensitive, as in GPT-2).
  if (c0 == '\'' && pos + 1 < n) {
    uint8_t c1 = s[pos + 1];
    if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return pos + 2;
    if (pos + 2 < n) {
      uint8_t c2 = s[pos + 2];
      if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l'))
        return pos + 3;
    }
  }
  // " ?\p{L}+", " ?\p{N}+", " ?[^\s\p{L}\p{N}]+": an optional space, then a run of one class.
  if (c0 == ' ' && pos + 1 < n) {
    size_t len1;
    CharClass cls1 = char_class_at(s, n, pos + 1, &len1);
    if (cls1 != CharClass::kSpace) return scan_run(s, n, pos + 1 + len1, cls1);
  }
  size_t len0;
  CharClass cls0 = char_class_at(s, n, pos, &len0);
  if (cls0 != CharClass::kSpace) return scan_run(s, n, pos + len0, cls0);
  // A whitespace run. "\s+(?!\S)": at the end of the text the whole run; before a non-space
  // the run minus its last character (which then starts the next token); a single
  // whitespace character before a non-space falls through to "\s+" and stands alone.
  size_t last_start = pos;
  size_t end = pos + len0;
  while (end < n) {
    size_t len;
    if (char_class_at(s, n, end, &len) != CharClass::kSpace) break;
    last_start = end;
    end += len;
  }
  if (end == n) return n;
  return last_start > pos ? last_start : end;
}

std::vector<std::string_view> pretokenize(std::string_view text) {
  std::vector<std::string_view> out;
  const uint8_t* s = reinterpret_cast<const uint8_t*>(text.data());
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = next_pretoken_end(s, text.size(), pos);
    out.push_back(text.substr(pos, end - pos));
    pos = end;
  }
  return out;
}

}  // namespace hh
