// GPT-2's pre-tokenizer as a hand-written scanner. It splits text exactly like the regex
//
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//
// run by a backtracking engine (first alternative that matches wins, quantifiers greedy),
// with \p{L}, \p{N} and \s (White_Space) from the generated Unicode tables. Bytes that are
// not valid UTF-8 count one by one as "other" code points, so any byte string splits into
// pre-tokens that concatenate back to it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "tokenizer/unicode_tables.h"

namespace hh {

// Decodes the (strict) UTF-8 code point at s[pos] (pos < n): sets *len to its length in
// bytes and returns its class. An invalid sequence gives kOther with *len = 1.
CharClass char_class_at(const uint8_t* s, size_t n, size_t pos, size_t* len);

// The end (exclusive) of the pre-token that starts at pos (pos < n).
size_t next_pretoken_end(const uint8_t* s, size_t n, size_t pos);

// All pre-tokens of text, in order (views into text). For tests and tools; the encoder
// and trainer call next_pretoken_end() directly.
std::vector<std::string_view> pretokenize(std::string_view text);

}  // namespace hh
