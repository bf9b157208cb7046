#!/usr/bin/env python3
"""Reference fixture for GPT-2's pre-tokenizer (src/tokenizer/pretokenizer.cpp), computed
by the regex GPT-2 and tiktoken use, run by Python's `regex` module (Debian's
python3-regex; `re` has no \\p{L}):

    's|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+

hh's pre-tokenizer is a hand-written scanner over generated Unicode tables; this checks
both against an independent engine:

  {"classes": [[lo, hi, "L" | "N" | "S"], ...]}   every code point 0..0x10FFFF that
      \\p{L}, \\p{N} or \\s matches, as maximal ranges (the others are "other")
  {"text": ..., "pieces": [...]}                  random texts and regex.findall's split

The texts are drawn from a pool of the cases that decide a split: contractions (and their
upper-case forms, which the pattern does not match), every kind of Unicode space and
things that look like one (U+200B, U+180E, U+001C), combining marks, letters and numbers
of several scripts and planes, emoji with modifiers and joiners, runs of spaces before
words and at the end.

Usage: pretokenizer_reference.py [OUT_DIR]  (default tests/fixtures)
       -> OUT_DIR/pretokenizer_regex.jsonl
"""
import json
import os
import random
import sys

import regex

PATTERN = regex.compile(
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")

POOL = (
    list("abcxyzABCXYZ0123456789.,!?;:-_()[]{}\"'/\\@#$%^&*+=<>|~`")
    + [" "] * 12 + ["\t", "\n", "\n\n", "\r\n", "\x0b", "\x0c", "  ", "   "]
    + ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'LL", "'x", "’s", "''"]
    + ["é", "ß", "µ", "ª", "²", "½", "¿", "\xa0", "\x85", "×"]          # Latin-1
    + ["\u0301", "\u0903", "\u20dd"]                                  # marks Mn, Mc, Me
    + ["日", "本", "の", "한", "ก", "ا", "ش", "ж", "Ω", "ǅ", "ʰ"]       # letters, Lt, Lm
    + ["٣", "Ⅻ", "①", "𝟘", "〇", "¼"]                                  # Nd, Nl, No
    + ["\u1680", "\u2000", "\u2007", "\u2028", "\u2029", "\u202f", "\u205f", "\u3000"]
    + ["\u200b", "\u180e", "\x1c", "\x1f", "\ufeff", "\u200d", "\x00", "\x7f"]
    + ["🙂", "👍", "\U0001f3fd", "𝒜", "𐐀", "€", "—", "’", "“", "…", "\U0010fffd"]
    + ["\n\nHuman:", "\n\nAssistant:", " the", " I", " 42"]
)


def classes():
    ranges = []
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue  # surrogates: not characters (UTF-8 cannot encode them)
        ch = chr(cp)
        cls = ("L" if regex.match(r"\p{L}", ch) else
               "N" if regex.match(r"\p{N}", ch) else
               "S" if regex.match(r"\s", ch) else None)
        if cls is None:
            continue
        if ranges and ranges[-1][2] == cls and ranges[-1][1] == cp - 1:
            ranges[-1][1] = cp
        else:
            ranges.append([cp, cp, cls])
    return ranges


def texts(rng, n):
    out = []
    for _ in range(n):
        k = rng.choice([1, 2, 3, 5, 8, 13, 21, 34])
        out.append("".join(rng.choice(POOL) for _ in range(k)))
    return out


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures"
    rng = random.Random(20261127)
    path = os.path.join(out_dir, "pretokenizer_regex.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps({"classes": classes()}) + "\n")
        for text in texts(rng, 2000):
            pieces = PATTERN.findall(text)
            assert "".join(pieces) == text
            f.write(json.dumps({"text": text, "pieces": pieces}, ensure_ascii=False) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
