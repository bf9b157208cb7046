#!/usr/bin/env python3
"""Reference fixtures for hh's GPT-2 (src/model/gpt.*) and AdamW (src/train/optimizer.*).

A tiny GPT-2 written in plain PyTorch, float64, with the same layout as hh (nn.Linear
weights [OC, IC], tied LM head over a vocabulary padded from 100 to 128, tanh-GELU,
LayerNorm eps 1e-5, causal attention over right-padded sequences). Writes, in hh's own
parameter names and layout, stored as float32:

  gpt2_lm.safetensors        config, every parameter, tokens, lengths, targets, logits
                             (real vocab columns), per-token losses, mean loss
  gpt2_lm_grads.safetensors  grad.<name>: gradient of the mean loss for every parameter
  gpt2_adamw.safetensors     parameters after two AdamW steps on those gradients, the
                             second scaled by grad_scales[1] (clip_grad_norm_, clipping
                             the first step only, then torch.optim.AdamW, betas 0.9/0.95,
                             eps 1e-8, weight decay 0.1 on 2-D tensors only)
  gpt2_score.safetensors     scalar head: rows, scores, upstream dscores, grad.<name>
  gpt2_hf.safetensors        the same weights as a Hugging Face GPT2LMHeadModel file:
                             HF names, Conv1D matrices [IC, OC], the vocabulary unpadded,
                             no scalar head (hh's import must reproduce gpt2_lm's logits)

Width is 32 (not 64) so each file, which holds one copy of the ~30k parameters, stays
under 200 KB. Weights are drawn wider than GPT-2's 0.02 and biases / LayerNorm
parameters get noise, so that attention is far from uniform and every bias matters.

Usage: /usr/bin/python3 scripts/reference/gpt2_reference.py [out_dir=tests/fixtures]
"""
import json
import math
import os
import struct
import sys

import torch

torch.manual_seed(1234)
DT = torch.float64

CONFIG = dict(n_layer=2, n_head=4, n_embd=32, vocab_size=100, padded_vocab_size=128,
              max_seq_len=16)
L, NH, C = CONFIG["n_layer"], CONFIG["n_head"], CONFIG["n_embd"]
V, VP, CTX = CONFIG["vocab_size"], CONFIG["padded_vocab_size"], CONFIG["max_seq_len"]
B, T = 2, 16
LENGTHS = [16, 11]
LR = 1e-3
WEIGHT_DECAY = 0.1


def write_safetensors(path, tensors, metadata=None):
    """Writes {name: (dtype_str, torch tensor)} in the safetensors format, by hand."""
    header = {}
    blobs = []
    offset = 0
    for name, (dtype, t) in tensors.items():
        t = t.contiguous()
        if dtype == "F32":
            raw = t.to(torch.float32).numpy().astype("<f4").tobytes()
        elif dtype == "I32":
            raw = t.to(torch.int32).numpy().astype("<i4").tobytes()
        else:
            raise ValueError(dtype)
        header[name] = {"dtype": dtype, "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    if metadata:
        header["__metadata__"] = metadata
    hjson = json.dumps(header, separators=(",", ":")).encode()
    hjson += b" " * ((8 - len(hjson) % 8) % 8)  # align the data section to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for raw in blobs:
            f.write(raw)
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


def make_params():
    """hh names and layout; decayed = 2-D tensors (embeddings, linear weights, score)."""
    p = {}

    def normal(shape, std):
        return torch.randn(*shape, dtype=DT) * std

    wte = normal((VP, C), 0.3)
    wte[V:] = 0.0  # padded vocabulary rows are zero and never used
    p["transformer.wte.weight"] = wte
    p["transformer.wpe.weight"] = normal((CTX, C), 0.1)
    for i in range(L):
        h = f"transformer.h.{i}."
        p[h + "ln_1.weight"] = 1.0 + normal((C,), 0.2)
        p[h + "ln_1.bias"] = normal((C,), 0.1)
        p[h + "attn.c_attn.weight"] = normal((3 * C, C), 0.15)
        p[h + "attn.c_attn.bias"] = normal((3 * C,), 0.1)
        p[h + "attn.c_proj.weight"] = normal((C, C), 0.1)
        p[h + "attn.c_proj.bias"] = normal((C,), 0.05)
        p[h + "ln_2.weight"] = 1.0 + normal((C,), 0.2)
        p[h + "ln_2.bias"] = normal((C,), 0.1)
        p[h + "mlp.c_fc.weight"] = normal((4 * C, C), 0.1)
        p[h + "mlp.c_fc.bias"] = normal((4 * C,), 0.1)
        p[h + "mlp.c_proj.weight"] = normal((C, 4 * C), 0.05)
        p[h + "mlp.c_proj.bias"] = normal((C,), 0.05)
    p["transformer.ln_f.weight"] = 1.0 + normal((C,), 0.2)
    p["transformer.ln_f.bias"] = normal((C,), 0.1)
    p["score.weight"] = normal((1, C), 0.2)
    p["score.bias"] = torch.tensor([0.3], dtype=DT)
    return {k: v.clone().requires_grad_(True) for k, v in p.items()}


def layernorm(x, w, b):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)  # biased variance, as GPT-2
    return (x - mean) / torch.sqrt(var + 1e-5) * w + b


def gelu_tanh(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def trunk(p, tokens):
    """Final-LayerNorm hidden states [B, T, C]. Causal attention: padded positions (after
    a sequence's real tokens) can never influence the real ones."""
    hs = C // NH
    x = p["transformer.wte.weight"][tokens] + p["transformer.wpe.weight"][:T]
    mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
    for i in range(L):
        h = f"transformer.h.{i}."
        a = layernorm(x, p[h + "ln_1.weight"], p[h + "ln_1.bias"])
        qkv = a @ p[h + "attn.c_attn.weight"].T + p[h + "attn.c_attn.bias"]
        q, k, v = qkv.split(C, dim=-1)
        q = q.view(B, T, NH, hs).transpose(1, 2)
        k = k.view(B, T, NH, hs).transpose(1, 2)
        v = v.view(B, T, NH, hs).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(hs)
        att = att.masked_fill(~mask, float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)
        x = x + y @ p[h + "attn.c_proj.weight"].T + p[h + "attn.c_proj.bias"]
        m = layernorm(x, p[h + "ln_2.weight"], p[h + "ln_2.bias"])
        m = gelu_tanh(m @ p[h + "mlp.c_fc.weight"].T + p[h + "mlp.c_fc.bias"])
        x = x + m @ p[h + "mlp.c_proj.weight"].T + p[h + "mlp.c_proj.bias"]
    return layernorm(x, p["transformer.ln_f.weight"], p["transformer.ln_f.bias"])


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures"
    os.makedirs(out_dir, exist_ok=True)
    meta = {"config": json.dumps(CONFIG, separators=(",", ":"), sort_keys=True)}

    params = make_params()
    names = list(params.keys())

    # Inputs: two right-padded sequences; targets are the next token, -1 past the end,
    # on padding, and on a few masked positions (a loss mask).
    tokens = torch.randint(0, V, (B, T))
    targets = torch.full((B, T), -1, dtype=torch.long)
    for b, n in enumerate(LENGTHS):
        tokens[b, n:] = 0
        targets[b, : n - 1] = tokens[b, 1:n]
    targets[0, 2] = -1
    targets[0, 9] = -1
    targets[1, 0] = -1
    lengths = torch.tensor(LENGTHS)

    # ---- language-model case ----
    xf = trunk(params, tokens)
    logits = xf @ params["transformer.wte.weight"].T  # [B, T, VP]
    real_logits = logits[..., :V]
    valid = targets >= 0
    logp = real_logits.log_softmax(-1)
    token_losses = torch.zeros(B, T, dtype=DT)
    token_losses[valid] = -logp[valid].gather(-1, targets[valid].unsqueeze(-1)).squeeze(-1)
    loss = token_losses.sum() / valid.sum()
    loss.backward()
    lm_grads = {k: params[k].grad.detach().clone() if params[k].grad is not None
                else torch.zeros_like(params[k]).detach() for k in names}
    print(f"loss {loss.item():.6f} over {int(valid.sum())} targets")

    lm = {k: ("F32", params[k].detach()) for k in names}
    lm["tokens"] = ("I32", tokens)
    lm["lengths"] = ("I32", lengths)
    lm["targets"] = ("I32", targets)
    lm["logits"] = ("F32", real_logits.detach())
    lm["token_losses"] = ("F32", token_losses.detach())
    lm["loss"] = ("F32", loss.detach().reshape(1))
    write_safetensors(os.path.join(out_dir, "gpt2_lm.safetensors"), lm, meta)
    write_safetensors(os.path.join(out_dir, "gpt2_lm_grads.safetensors"),
                      {"grad." + k: ("F32", lm_grads[k]) for k in names}, meta)

    # ---- the same model as a Hugging Face file (written by hand: Debian has no
    # transformers). Conv1D stores x @ W + b, so its W is our [OC, IC] transposed. ----
    conv1d = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    hf = {}
    for k in names:
        if k.startswith("score."):
            continue
        w = params[k].detach()
        if k == "transformer.wte.weight":
            w = w[:V]
        elif k.endswith(conv1d):
            w = w.T.contiguous()
        hf[k] = ("F32", w)
    write_safetensors(os.path.join(out_dir, "gpt2_hf.safetensors"), hf, {"format": "pt"})

    # ---- AdamW: two steps on the LM gradients, the second scaled by 0.1: the first is
    # clipped and the second not, and the moments mix two magnitudes (so beta1 and beta2
    # both show; a constant gradient would make Adam's update independent of them). ----
    # The starting point is the float32-rounded weights, as hh holds them.
    opt_params = {k: params[k].detach().to(torch.float32).to(DT).clone().requires_grad_(True)
                  for k in names}
    grads32 = {k: lm_grads[k].to(torch.float32).to(DT) for k in names}
    pre_norm = torch.sqrt(sum((g ** 2).sum() for g in grads32.values())).item()
    grad_clip = min(1.0, 0.5 * pre_norm)  # make sure clipping really happens
    decay = [opt_params[k] for k in names if opt_params[k].dim() >= 2]
    no_decay = [opt_params[k] for k in names if opt_params[k].dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=LR, betas=(0.9, 0.95), eps=1e-8)
    grad_scales = [1.0, 0.1]
    norms = []
    for scale in grad_scales:
        for k in names:
            opt_params[k].grad = grads32[k].clone() * scale
        norms.append(float(torch.nn.utils.clip_grad_norm_(list(opt_params.values()), grad_clip)))
        opt.step()
    assert norms[0] > grad_clip > norms[1]
    print(f"grad norms {norms[0]:.6f} (clipped to {grad_clip:.6f}), {norms[1]:.6f}")
    adamw = {k: ("F32", opt_params[k].detach()) for k in names}
    adamw["lr"] = ("F32", torch.tensor([LR]))
    adamw["weight_decay"] = ("F32", torch.tensor([WEIGHT_DECAY]))
    adamw["grad_clip"] = ("F32", torch.tensor([grad_clip]))
    adamw["grad_scales"] = ("F32", torch.tensor(grad_scales))
    adamw["grad_norms"] = ("F32", torch.tensor(norms))
    write_safetensors(os.path.join(out_dir, "gpt2_adamw.safetensors"), adamw, meta)

    # ---- scalar head: value at chosen rows (b*T + t), upstream gradient dscores ----
    for k in names:
        params[k].grad = None
    xf = trunk(params, tokens).reshape(B * T, C)
    rows = torch.tensor([LENGTHS[0] - 1, T + LENGTHS[1] - 1, 3, T + 4, T + LENGTHS[1] - 1])
    scores = xf[rows] @ params["score.weight"].T + params["score.bias"]  # [M, 1]
    scores = scores.reshape(-1)
    dscores = torch.randn(len(rows), dtype=DT)
    scores.backward(dscores)
    sc = {"grad." + k: ("F32", params[k].grad.detach() if params[k].grad is not None
                        else torch.zeros_like(params[k])) for k in names}
    sc["rows"] = ("I32", rows)
    sc["scores"] = ("F32", scores.detach())
    sc["dscores"] = ("F32", dscores)
    write_safetensors(os.path.join(out_dir, "gpt2_score.safetensors"), sc, meta)


if __name__ == "__main__":
    main()
