#!/usr/bin/env python3
"""Reference fixture for the CPU matmul (src/ops/cpu/matmul.cpp), computed by PyTorch.

A linear layer y = x·Wᵀ + b (torch.nn.functional.linear, W[OC,IC]) in float64 with
autograd gives out, dinp, dweight and dbias for an upstream gradient dout; everything is
stored as float32 in a safetensors file written by hand (no safetensors package):

  <case>.inp [N,IC]  <case>.weight [OC,IC]  <case>.bias [OC] (absent: bias is null)
  <case>.dout [N,OC] <case>.out [N,OC]  <case>.dinp [N,IC]  <case>.dweight [OC,IC]
  <case>.dbias [OC]

Usage: matmul_reference.py [OUT_DIR]   (default tests/fixtures) -> OUT_DIR/matmul.safetensors
"""
import json
import os
import struct
import sys

import torch

# (name, N, IC, OC, has_bias): odd sizes that are multiples of no block, one row, the
# scalar head (OC = 1), a null bias, and one case spanning several register tiles.
CASES = [
    ("odd", 7, 13, 5, True),
    ("one_row", 1, 33, 17, True),
    ("scalar_head", 9, 20, 1, True),
    ("no_bias", 37, 70, 45, False),
    ("tiles", 45, 67, 70, True),
]


def write_safetensors(path, tensors):
    """tensors: list of (name, float32 tensor). Little-endian F32, data in list order."""
    header, blobs, offset = {}, [], 0
    for name, t in tensors:
        data = t.detach().to(torch.float32).contiguous().numpy().astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    header_bytes += b" " * (-len(header_bytes) % 8)  # align the data section to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header_bytes)))
        f.write(header_bytes)
        for blob in blobs:
            f.write(blob)


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures"
    os.makedirs(out_dir, exist_ok=True)
    gen = torch.Generator().manual_seed(20221204)
    tensors = []
    for name, n, ic, oc, has_bias in CASES:
        def randn(*shape):
            return torch.randn(*shape, generator=gen, dtype=torch.float64)
        # Round the inputs to float32 first so the reference sees exactly what hh sees.
        inp = randn(n, ic).float().double().requires_grad_()
        weight = randn(oc, ic).float().double().requires_grad_()
        bias = randn(oc).float().double().requires_grad_() if has_bias else None
        dout = randn(n, oc).float().double()
        out = torch.nn.functional.linear(inp, weight, bias)
        out.backward(dout)
        tensors += [(f"{name}.inp", inp), (f"{name}.weight", weight)]
        if has_bias:
            tensors.append((f"{name}.bias", bias))
        tensors += [(f"{name}.dout", dout), (f"{name}.out", out), (f"{name}.dinp", inp.grad),
                    (f"{name}.dweight", weight.grad),
                    (f"{name}.dbias", dout.sum(0))]
    path = os.path.join(out_dir, "matmul.safetensors")
    write_safetensors(path, tensors)
    print(f"wrote {path} ({os.path.getsize(path)} bytes, {len(tensors)} tensors)")


if __name__ == "__main__":
    main()
