#!/usr/bin/env python3
"""Hugging Face GPT-2 interop check: hh's logits against transformers' on the same tokens.

Builds a small random GPT2LMHeadModel (2 layers, 4 heads, 64 wide, vocab 100, context 32;
every parameter perturbed so LayerNorms and biases are not trivial), saves it with
save_pretrained (safetensors), and
  1. import: runs `hh-chat --model <dir>/model.safetensors --dump-logits ...` (hh reads the
     HF names, transposes the Conv1D weights) and compares its logits with the model's;
  2. export: `hh-chat --model <dir>/model.safetensors --export-hf <dir2>` writes hh's
     checkpoint back in HF layout; GPT2LMHeadModel.from_pretrained(<dir2>) must give the same
     logits again.
Prints the max abs errors; exits 1 if either is above 1e-4.

Usage: check_hf_gpt2.py [HH_CHAT_BINARY (default build/hh-chat)] [--device cpu|cuda]
Needs torch + transformers (the GPU machine has them); skips with a message otherwise.
"""
import json
import os
import struct
import subprocess
import sys
import tempfile


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    device = "cpu"
    if "--device" in sys.argv:
        device = sys.argv[sys.argv.index("--device") + 1]
        args = [a for a in args if a != device]
    binary = args[0] if args else "build/hh-chat"
    try:
        import torch
    except ImportError as e:
        print(f"check_hf_gpt2: skipped: {e} (needs torch)")
        return 0
    if not os.path.exists(binary):
        print(f"check_hf_gpt2: {binary} not found (build hh-chat first)")
        return 1
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError as e:
        print(f"check_hf_gpt2: transformers missing ({e}): checking the import against a "
              "hand-written GPT-2 in HF's layout instead")
        return check_without_transformers(binary, device)

    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_head=4, n_embd=64, vocab_size=100, n_positions=32,
                        activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0, layer_norm_epsilon=1e-5)
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    tokens = torch.randint(0, 100, (1, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(tokens).logits[0].double()

    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = os.path.join(tmp, "hf")
        try:
            model.save_pretrained(hf_dir, safe_serialization=True)
        except Exception as e:  # no safetensors package: write the file by hand
            print(f"check_hf_gpt2: save_pretrained failed ({e}); writing safetensors by hand")
            os.makedirs(hf_dir, exist_ok=True)
            write_safetensors(os.path.join(hf_dir, "model.safetensors"), model.state_dict())
            config.to_json_file(os.path.join(hf_dir, "config.json"))
        weights = os.path.join(hf_dir, "model.safetensors")
        ids = ",".join(str(t) for t in tokens[0].tolist())
        out = subprocess.run([binary, "--model", weights, "--device", device, "--dump-logits", ids],
                             check=True, capture_output=True, text=True).stdout
        got = torch.tensor(json.loads(out)["logits"], dtype=torch.float64)
        err_import = (got - want).abs().max().item()
        print(f"check_hf_gpt2: import: max |hh - transformers| logits = {err_import:.3e} "
              f"(scale {want.abs().max().item():.3f}, device {device})")

        export_dir = os.path.join(tmp, "export")
        subprocess.run([binary, "--model", weights, "--device", device, "--export-hf", export_dir],
                       check=True)
        back = GPT2LMHeadModel.from_pretrained(export_dir).eval()
        with torch.no_grad():
            got2 = back(tokens).logits[0].double()
        err_export = (got2 - want).abs().max().item()
        print(f"check_hf_gpt2: export: max |from_pretrained(hh export) - original| = "
              f"{err_export:.3e}")
    ok = err_import < 1e-4 and err_export < 1e-4
    print("check_hf_gpt2:", "OK" if ok else "FAILED")
    return 0 if ok else 1


def check_without_transformers(binary, device):
    """The import half without transformers: a random state dict with GPT2LMHeadModel's
    names and Conv1D layout ([in, out]), its logits by a float64 GPT-2 forward written
    from the HF definitions, and hh's logits from the same file."""
    import math
    import torch
    g = torch.Generator().manual_seed(0)
    L, H, C, V, T = 2, 4, 64, 100, 32
    sd = {"transformer.wte.weight": torch.randn(V, C, generator=g) * 0.1,
          "transformer.wpe.weight": torch.randn(T, C, generator=g) * 0.1,
          "transformer.ln_f.weight": 1 + 0.1 * torch.randn(C, generator=g),
          "transformer.ln_f.bias": 0.1 * torch.randn(C, generator=g)}
    for l in range(L):
        pre = f"transformer.h.{l}."
        for name, shape in [("ln_1.weight", (C,)), ("ln_1.bias", (C,)), ("ln_2.weight", (C,)),
                            ("ln_2.bias", (C,)), ("attn.c_attn.weight", (C, 3 * C)),
                            ("attn.c_attn.bias", (3 * C,)), ("attn.c_proj.weight", (C, C)),
                            ("attn.c_proj.bias", (C,)), ("mlp.c_fc.weight", (C, 4 * C)),
                            ("mlp.c_fc.bias", (4 * C,)), ("mlp.c_proj.weight", (4 * C, C)),
                            ("mlp.c_proj.bias", (C,))]:
            base = 1.0 if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") else 0.0
            sd[pre + name] = base + 0.1 * torch.randn(*shape, generator=g)
    tokens = torch.randint(0, V, (24,), generator=torch.Generator().manual_seed(1))

    d = {k: v.double() for k, v in sd.items()}
    def ln(x, w, b):
        mu = x.mean(-1, keepdim=True)
        var = ((x - mu) ** 2).mean(-1, keepdim=True)
        return (x - mu) / torch.sqrt(var + 1e-5) * w + b
    def gelu(x):
        return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    n = tokens.shape[0]
    x = d["transformer.wte.weight"][tokens] + d["transformer.wpe.weight"][:n]
    hs = C // H
    mask = torch.tril(torch.ones(n, n, dtype=torch.bool))
    for l in range(L):
        p = lambda name: d[f"transformer.h.{l}.{name}"]
        qkv = ln(x, p("ln_1.weight"), p("ln_1.bias")) @ p("attn.c_attn.weight") + p("attn.c_attn.bias")
        q, k, v = [t.view(n, H, hs).transpose(0, 1) for t in qkv.split(C, dim=-1)]
        att = (q @ k.transpose(-1, -2)) / math.sqrt(hs)
        att = att.masked_fill(~mask, float("-inf")).softmax(-1)
        y = (att @ v).transpose(0, 1).reshape(n, C)
        x = x + y @ p("attn.c_proj.weight") + p("attn.c_proj.bias")
        h = gelu(ln(x, p("ln_2.weight"), p("ln_2.bias")) @ p("mlp.c_fc.weight") + p("mlp.c_fc.bias"))
        x = x + h @ p("mlp.c_proj.weight") + p("mlp.c_proj.bias")
    want = ln(x, d["transformer.ln_f.weight"], d["transformer.ln_f.bias"]) @ d["transformer.wte.weight"].T

    with tempfile.TemporaryDirectory() as tmp:
        weights = os.path.join(tmp, "model.safetensors")
        write_safetensors(weights, sd)
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump({"model_type": "gpt2", "n_layer": L, "n_head": H, "n_embd": C,
                       "vocab_size": V, "n_positions": T, "n_ctx": T,
                       "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5}, f)
        ids = ",".join(str(t) for t in tokens.tolist())
        out = subprocess.run([binary, "--model", weights, "--device", device, "--dump-logits", ids],
                             check=True, capture_output=True, text=True).stdout
        got = torch.tensor(json.loads(out)["logits"], dtype=torch.float64)
    err = (got - want).abs().max().item()
    print(f"check_hf_gpt2: import (no transformers): max |hh - float64 reference| logits = "
          f"{err:.3e} (scale {want.abs().max().item():.3f}, device {device})")
    ok = err < 1e-4
    print("check_hf_gpt2:", "OK" if ok else "FAILED")
    return 0 if ok else 1


def write_safetensors(path, state_dict):
    """safetensors by hand: 8-byte LE header length, JSON header, raw LE float32 data."""
    header, blobs, offset = {}, [], 0
    for name, t in state_dict.items():
        if name.endswith(".attn.bias") or name.endswith(".attn.masked_bias") or name == "lm_head.weight":
            continue
        data = t.detach().float().contiguous().numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


if __name__ == "__main__":
    sys.exit(main())
