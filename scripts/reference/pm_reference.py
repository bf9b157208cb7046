#!/usr/bin/python3
"""Reference fixture for tests/test_pm.cpp: the preference model's pairwise loss.

    loss = mean_i softplus(r_rejected[i] - r_chosen[i]) = mean_i log(1 + exp(r_rej - r_cho))

computed by PyTorch in float64 (F.softplus) with its gradient from autograd, for scores
that include large margins of both signs (where a naive log(1 + exp(x)) overflows). A
second gradient is for the loss scaled by 0.375 (a micro-batch's weight in gradient
accumulation). Also the symmetric calibration table of hh-pm eval for a set of margins:
each pair counted as (p, 1) and (1 - p, 0) with p = sigmoid(margin), 10 bins over [0, 1].

The safetensors writer is hand-written (struct + json), independent of the C++ reader.

Usage: /usr/bin/python3 scripts/reference/pm_reference.py [out_dir=tests/fixtures]
"""
import json
import os
import struct
import sys

import torch
import torch.nn.functional as F


def write_safetensors(path, tensors):
    """tensors: dict name -> torch tensor, stored as little-endian F32, in order."""
    header = {}
    blobs = []
    offset = 0
    for name, t in tensors.items():
        values = t.detach().to(torch.float32).flatten().tolist()
        blob = struct.pack("<%df" % len(values), *values)
        header[name] = {"dtype": "F32", "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    header_bytes += b" " * ((8 - len(header_bytes) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header_bytes)))
        f.write(header_bytes)
        for blob in blobs:
            f.write(blob)
    size = os.path.getsize(path)
    assert size < 200_000, "%s is %d bytes" % (path, size)
    print("wrote %s (%d bytes)" % (path, size))


def f32(x):
    """float64 tensor whose values are exactly representable in float32."""
    return x.float().double()


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures"
    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(6)

    n = 37
    r_chosen = f32(torch.randn(n, dtype=torch.float64) * 2.0)
    r_rejected = f32(torch.randn(n, dtype=torch.float64) * 2.0)
    # Large margins both ways: softplus(±60) must neither overflow nor lose the gradient.
    r_chosen[0], r_rejected[0] = 30.0, -30.0
    r_chosen[1], r_rejected[1] = -30.0, 30.0
    r_chosen[2], r_rejected[2] = 0.25, 0.25  # a tie: loss log 2, gradient ∓1/2n

    cho = r_chosen.clone().requires_grad_(True)
    rej = r_rejected.clone().requires_grad_(True)
    loss = F.softplus(rej - cho).mean()
    loss.backward()
    d_chosen, d_rejected = cho.grad.clone(), rej.grad.clone()

    cho.grad = None
    rej.grad = None
    scale = 0.375
    (scale * F.softplus(rej - cho).mean()).backward()

    # Calibration: margins spread so that every bin is populated.
    margins = f32(torch.randn(200, dtype=torch.float64) * 1.5 + 0.4)
    p = torch.sigmoid(margins)
    q = torch.cat([p, 1 - p])
    won = torch.cat([torch.ones_like(p), torch.zeros_like(p)])
    bins = torch.clamp(torch.floor(q * 10), 0, 9).long()
    count = torch.zeros(10, dtype=torch.float64)
    mean_pred = torch.zeros(10, dtype=torch.float64)
    observed = torch.zeros(10, dtype=torch.float64)
    for k in range(10):
        sel = bins == k
        count[k] = sel.sum()
        if sel.any():
            mean_pred[k] = q[sel].mean()
            observed[k] = won[sel].mean()
    ece = (count / count.sum() * (observed - mean_pred).abs()).sum()

    write_safetensors(os.path.join(out_dir, "pm_loss.safetensors"), {
        "r_chosen": r_chosen,
        "r_rejected": r_rejected,
        "loss": loss.detach().reshape(1),
        "d_chosen": d_chosen,
        "d_rejected": d_rejected,
        "scale": torch.tensor([scale], dtype=torch.float64),
        "scaled_d_chosen": cho.grad,
        "scaled_d_rejected": rej.grad,
        "calib_margins": margins,
        "calib_count": count,
        "calib_mean_predicted": mean_pred,
        "calib_observed": observed,
        "calib_ece": ece.reshape(1),
    })


if __name__ == "__main__":
    main()
