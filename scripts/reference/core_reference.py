#!/usr/bin/python3
"""Reference data for tests/test_core.cpp, independent of the C++ code.

1. Prints the first outputs of xoshiro256** seeded by splitmix64 (seed 42), written
   from the published algorithms (Blackman & Vigna 2018), as C++ array literals.
2. Writes core_python.safetensors with a hand-written safetensors writer (struct + json,
   no safetensors library): tensors of every dtype hh reads, metadata with non-ASCII
   text, a header that is NOT padded and keys NOT sorted (both valid), and F16/BF16
   tensors paired with their exact float32 values computed by PyTorch.

Usage: /usr/bin/python3 scripts/reference/core_reference.py [out_dir=tests/fixtures]
"""
import json
import os
import struct
import sys

import torch

MASK = (1 << 64) - 1


def splitmix64_seed(seed):
    state = []
    for _ in range(4):
        seed = (seed + 0x9E3779B97F4A7C15) & MASK
        z = seed
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        state.append(z ^ (z >> 31))
    return state


def rotl(x, k):
    return ((x << k) | (x >> (64 - k))) & MASK


def xoshiro256ss(s):
    result = (rotl((s[1] * 5) & MASK, 7) * 9) & MASK
    t = (s[1] << 17) & MASK
    s[2] ^= s[0]
    s[3] ^= s[1]
    s[1] ^= s[2]
    s[0] ^= s[3]
    s[2] ^= t
    s[3] = rotl(s[3], 45)
    return result


def print_rng_golden():
    s = splitmix64_seed(42)
    print("// splitmix64(42) state:", ", ".join("0x%016xull" % w for w in s))
    outs = [xoshiro256ss(s) for _ in range(8)]
    print("// first 8 next_u64():")
    print("{" + ", ".join("0x%016xull" % v for v in outs) + "}")
    # below(1000) on a fresh generator: (x * n) >> 64
    s = splitmix64_seed(42)
    print("// first 8 below(1000):")
    print("{" + ", ".join(str((xoshiro256ss(s) * 1000) >> 64) for _ in range(8)) + "}")


def write_safetensors(path, tensors, metadata):
    """tensors: list of (name, dtype string, shape, raw little-endian bytes), in data order."""
    header = {}
    data = b""
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": list(shape),
                        "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    items = list(header.items())
    items.reverse()  # deliberately unsorted keys
    ordered = {"__metadata__": metadata}
    ordered.update(items)
    text = json.dumps(ordered, ensure_ascii=False).encode("utf-8")
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        f.write(data)


def raw(t):
    return t.contiguous().numpy().tobytes()  # little-endian on x86


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures"
    os.makedirs(out_dir, exist_ok=True)
    print_rng_golden()

    # Values computed in float64, stored as float32: w[i][j] = 0.25 * (i * 3 + j) - 1.1
    w = (torch.arange(6, dtype=torch.float64).reshape(2, 3) * 0.25 - 1.1).to(torch.float32)
    specials = torch.tensor([1.0, -2.5, 65504.0, 6e-8, -0.0, float("inf"), float("-inf"),
                             0.1, 1e-5, 3.14159], dtype=torch.float64)
    f16 = specials.to(torch.float16)
    bf16 = torch.tensor([1.0, -2.5, 3.0e38, 1e-30, -0.0, float("inf"), 0.1, 3.14159],
                        dtype=torch.float64).to(torch.bfloat16)
    # float32 -> float16 rounding (hh::float_to_half, the CUDA backend's __float2half_rn):
    # values over the whole range, exact ties between neighbouring halves (normal and
    # subnormal), the overflow edge, and PyTorch's round-to-nearest-even results.
    gen = torch.Generator().manual_seed(7)
    scales = torch.tensor([1e-9, 1e-7, 3e-6, 6e-5, 1e-3, 0.02, 1.0, 30.0, 3000.0, 60000.0],
                          dtype=torch.float64)
    spread = (torch.randn(len(scales), 40, generator=gen, dtype=torch.float64) *
              scales[:, None]).flatten()
    halves = torch.tensor([0x0001, 0x0002, 0x03ff, 0x0400, 0x0401, 0x3c00, 0x3c01, 0x7bfe],
                          dtype=torch.int32).to(torch.int16).view(torch.float16).to(torch.float64)
    upper = torch.tensor([0x0002, 0x0003, 0x0400, 0x0401, 0x0402, 0x3c01, 0x3c02, 0x7bff],
                         dtype=torch.int32).to(torch.int16).view(torch.float16).to(torch.float64)
    ties = (halves + upper) / 2  # exact in float32
    edges = torch.tensor([65504.0, 65519.0, 65519.99, 65520.0, 1e6, 2.0 ** -25, 2.0 ** -25 * 1.0001,
                          2.0 ** -26, 2.0 ** -24, 2.0 ** -14 * (1 - 2.0 ** -12), 0.0],
                         dtype=torch.float64)
    rounding = torch.cat([spread, ties, -ties, edges, -edges]).to(torch.float32)
    tensors = [
        ("rounding_f32", "F32", [rounding.numel()], raw(rounding)),
        ("rounding_f16", "F16", [rounding.numel()], raw(rounding.to(torch.float16).view(torch.int16))),
        ("weight", "F32", [2, 3], raw(w)),
        ("empty", "F32", [0, 4], b""),
        ("scalar", "F32", [], raw(torch.tensor(2.75, dtype=torch.float32))),
        ("f16_as_f32", "F32", [10], raw(f16.to(torch.float32))),
        ("bf16_as_f32", "F32", [8], raw(bf16.to(torch.float32))),
        ("ids64", "I64", [3], raw(torch.tensor([-7, 0, 2147483647], dtype=torch.int64))),
        ("ids32", "I32", [2, 2], raw(torch.tensor([[1, -2], [3, 50257]], dtype=torch.int32))),
        ("half", "F16", [10], raw(f16.view(torch.int16))),
        ("brain", "BF16", [8], raw(bf16.view(torch.int16))),
        ("bytes", "U8", [3], bytes([0, 127, 255])),
    ]
    metadata = {"stage": "sft", "note": "caf\u00e9 \u2713", "step": "12"}
    path = os.path.join(out_dir, "core_python.safetensors")
    write_safetensors(path, tensors, metadata)
    print("wrote", path, os.path.getsize(path), "bytes")


if __name__ == "__main__":
    main()
