#!/usr/bin/python3
"""Reference fixtures for tests/test_ops_cpu.cpp: every CPU op, forward and backward.

Each op gets one file ops_<op>.safetensors with its inputs, outputs and gradients for a
random upstream gradient. Inputs are drawn in float64, rounded to float32 (the values
stored), then the reference is computed by PyTorch in float64 from those rounded values
(autograd for the gradients) and stored as float32. Sizes are small and odd on purpose.

The safetensors writer is hand-written (struct + json), independent of the C++ reader.

Usage: /usr/bin/python3 scripts/reference/ops_reference.py [out_dir=tests/fixtures]
"""
import json
import math
import os
import struct
import sys

import torch
import torch.nn.functional as F

DTYPES = {torch.float32: ("F32", "f"), torch.int32: ("I32", "i")}  # struct codes


def write_safetensors(path, tensors, metadata=None):
    """tensors: dict name -> torch tensor (float -> F32, integer -> I32), in order."""
    header = {}
    if metadata:
        header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    blobs = []
    offset = 0
    for name, t in tensors.items():
        t = t.detach().contiguous()
        t = t.to(torch.int32) if not t.is_floating_point() else t.to(torch.float32)
        dtype_name, code = DTYPES[t.dtype]
        values = t.flatten().tolist()
        blob = struct.pack("<%d%s" % (len(values), code), *values)
        header[name] = {"dtype": dtype_name, "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    header_bytes += b" " * ((8 - len(header_bytes) % 8) % 8)  # align data to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header_bytes)))
        f.write(header_bytes)
        for blob in blobs:
            f.write(blob)
    size = os.path.getsize(path)
    assert size < 200_000, "%s is %d bytes" % (path, size)
    print("wrote %s (%d bytes)" % (path, size))


def rand(*shape, scale=1.0, shift=0.0):
    """float64 tensor whose values are exactly representable in float32."""
    return (torch.randn(*shape, dtype=torch.float64) * scale + shift).float().double()


def leaf(x):
    return x.clone().requires_grad_(True)


def embedding(out_dir):
    B, T, C, V, maxT = 2, 5, 12, 11, 7
    tokens = torch.tensor([[3, 7, 3, 0, 10], [7, 7, 1, 3, 2]], dtype=torch.int32)  # repeats
    wte, wpe = leaf(rand(V, C)), leaf(rand(maxT, C))
    out = wte[tokens.long()] + wpe[:T].unsqueeze(0)
    dout = rand(B, T, C)
    out.backward(dout)
    write_safetensors(os.path.join(out_dir, "ops_embedding.safetensors"), {
        "tokens": tokens, "wte": wte, "wpe": wpe, "out": out, "dout": dout,
        "dwte": wte.grad, "dwpe": wpe.grad})


def layernorm(out_dir):
    N, C = 7, 12
    inp = leaf(rand(N, C, scale=2.0, shift=0.5))
    weight, bias = leaf(rand(C, scale=0.5, shift=1.0)), leaf(rand(C, scale=0.5))
    out = F.layer_norm(inp, (C,), weight, bias, eps=1e-5)
    mean = inp.mean(dim=1)
    rstd = 1.0 / torch.sqrt(inp.var(dim=1, unbiased=False) + 1e-5)
    dout = rand(N, C)
    out.backward(dout)
    write_safetensors(os.path.join(out_dir, "ops_layernorm.safetensors"), {
        "inp": inp, "weight": weight, "bias": bias, "out": out, "mean": mean, "rstd": rstd,
        "dout": dout, "dinp": inp.grad, "dweight": weight.grad, "dbias": bias.grad})


def attention(out_dir):
    B, T, C, NH = 2, 5, 12, 3
    hs = C // NH
    lengths = torch.tensor([5, 3], dtype=torch.int32)
    qkv = leaf(rand(B, T, 3 * C))
    dout = rand(B, T, C)  # padded rows too: the op must ignore them
    out = torch.zeros(B, T, C, dtype=torch.float64)
    probs = torch.zeros(B, NH, T, T, dtype=torch.float64)
    outs = []
    for b in range(B):
        n = int(lengths[b])
        q, k, v = qkv[b, :n].split(C, dim=1)
        q, k, v = (x.view(n, NH, hs).transpose(0, 1) for x in (q, k, v))  # [NH, n, hs]
        scores = q @ k.transpose(1, 2) / math.sqrt(hs)
        causal = torch.ones(n, n, dtype=torch.bool).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
        p = torch.softmax(scores, dim=-1)
        o = (p @ v).transpose(0, 1).reshape(n, C)
        outs.append((b, n, o))
        probs[b, :, :n, :n] = p.detach()
    loss = sum((o * dout[b, :n]).sum() for b, n, o in outs)
    loss.backward()
    for b, n, o in outs:
        out[b, :n] = o.detach()
    write_safetensors(os.path.join(out_dir, "ops_attention.safetensors"), {
        "qkv": qkv, "lengths": lengths, "out": out, "probs": probs, "dout": dout,
        "dqkv": qkv.grad}, {"B": B, "T": T, "C": C, "NH": NH})


def gelu(out_dir):
    n = 37
    inp = leaf(torch.cat([torch.linspace(-6, 6, 17, dtype=torch.float64), rand(20, scale=2.0)]))
    out = F.gelu(inp, approximate="tanh")
    dout = rand(n)
    out.backward(dout)
    write_safetensors(os.path.join(out_dir, "ops_gelu.safetensors"), {
        "inp": inp, "out": out, "dout": dout, "dinp": inp.grad})


def crossentropy(out_dir):
    N, V, Vp = 7, 37, 64
    logits = rand(N, Vp, scale=3.0)
    logits[:, V:] = 100.0  # padded columns: large, so any leak into the softmax shows
    logits = leaf(logits)
    targets = torch.tensor([5, -1, 0, 36, 17, -1, 5], dtype=torch.int32)
    dlosses = rand(N)  # nonzero on ignored rows too: the op must ignore them
    losses = torch.zeros(N, dtype=torch.float64)
    valid = targets >= 0
    losses[valid] = F.cross_entropy(logits[valid, :V], targets[valid].long(), reduction="none")
    (losses * dlosses).sum().backward()
    # softmax_entropy: −Σ p log p over the first V columns, 0 on rows without a target.
    with torch.no_grad():
        logp = F.log_softmax(logits[:, :V], dim=1)
        entropy = -(logp.exp() * logp).sum(dim=1) * valid
    write_safetensors(os.path.join(out_dir, "ops_crossentropy.safetensors"), {
        "logits": logits, "targets": targets, "losses": losses.detach(), "dlosses": dlosses,
        "dlogits": logits.grad, "entropy": entropy}, {"N": N, "V": V, "Vp": Vp})


def rows(out_dir):
    R, M, C = 6, 5, 12
    inp = leaf(rand(R, C))
    rows_index = torch.tensor([4, 0, 4, 2, 4], dtype=torch.int32)  # repeated rows
    out = inp[rows_index.long()]
    dout = rand(M, C)
    out.backward(dout)
    write_safetensors(os.path.join(out_dir, "ops_rows.safetensors"), {
        "inp": inp, "rows": rows_index, "out": out, "dout": dout, "dinp": inp.grad})


def adamw(out_dir):
    n = 37
    lr, beta1, beta2, eps, wd = 1e-2, 0.9, 0.95, 1e-8, 0.1
    params0 = rand(n)
    grads = [rand(n), rand(n, scale=0.1)]
    p = params0.clone().requires_grad_(True)
    opt = torch.optim.AdamW([p], lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=wd)
    after = []
    for g in grads:
        p.grad = g.clone()
        opt.step()
        after.append(p.detach().clone())
    state = opt.state[p]
    write_safetensors(os.path.join(out_dir, "ops_adamw.safetensors"), {
        "hparams": torch.tensor([lr, beta1, beta2, eps, wd], dtype=torch.float64),
        "params0": params0, "grads1": grads[0], "grads2": grads[1], "params1": after[0],
        "params2": after[1], "m2": state["exp_avg"], "v2": state["exp_avg_sq"]})


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures"
    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(1234)
    for make in (embedding, layernorm, attention, gelu, crossentropy, rows, adamw):
        make(out_dir)


if __name__ == "__main__":
    main()
