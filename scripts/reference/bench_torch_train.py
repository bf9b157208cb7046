#!/usr/bin/env python3
"""PyTorch twin of `hh-bench train`: the same GPT-2 model and training step, timed the same way.

Model: GPT-2 (pre-LayerNorm, learned positions, tanh-GELU, causal attention, tied
embeddings = LM head), vocabulary padded to a multiple of 64, fp32. One step: forward +
cross-entropy over B*T random next-token targets, backward, global-norm clipping at 1.0,
AdamW (betas 0.9/0.95, weight decay 0.1 on matrices), zero_grad. On a GPU, matmuls use
TF32 (as hh's cuBLAS path does) and AdamW is fused when this PyTorch has it.

Timing: --warmup untimed steps, then --steps timed steps, each ending with a
synchronisation (loss.item(), and torch.cuda.synchronize() on a GPU);
tokens/s = batch*seq / median step time. Compute: 6*N*tokens + 6*L*T*C*tokens
(N = parameters with wte counted once; causal attention), as hh-bench counts it.

  /usr/bin/python3 scripts/reference/bench_torch_train.py --device cpu --layers 4 --heads 4 \
      --width 256 --vocab 8192 --batch 8 --seq 256 [--steps 10 --warmup 2 --threads 2]

Prints the same lines as hh-bench and a final JSON line with the same keys.
"""
import argparse
import json
import math
import resource
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class CausalSelfAttention(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.c_attn = nn.Linear(width, 3 * width)
        self.c_proj = nn.Linear(width, width)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
        if hasattr(F, "scaled_dot_product_attention"):  # PyTorch >= 2.0
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
            mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
            y = att @ v
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class Block(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.c_fc = nn.Linear(width, 4 * width)
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * width, width)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.c_proj(self.gelu(self.c_fc(self.ln_2(x))))


class GPT(nn.Module):
    def __init__(self, layers, heads, width, vocab, padded_vocab, seq):
        super().__init__()
        self.vocab = vocab
        self.wte = nn.Embedding(padded_vocab, width)
        self.wpe = nn.Embedding(seq, width)
        self.h = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(width)
        for name, p in self.named_parameters():  # GPT-2 init
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * layers) if name.endswith("c_proj.weight") else 0.02
                nn.init.normal_(p, 0.0, std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, tokens, targets):
        T = tokens.size(1)
        x = self.wte(tokens) + self.wpe(torch.arange(T, device=tokens.device))
        for block in self.h:
            x = block(x)
        logits = self.ln_f(x) @ self.wte.weight.t()  # tied LM head
        logits = logits[..., : self.vocab]  # padded columns never enter the loss
        return F.cross_entropy(logits.reshape(-1, self.vocab), targets.reshape(-1))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("command", nargs="?", default="train", choices=["train"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    ap.add_argument("--peak-gflops", type=float, default=0.0,
                    help="ceiling for the fraction-of-peak line (0: none)")
    args = ap.parse_args()

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    torch.set_num_threads(args.threads)
    if on_gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(args.seed)

    padded_vocab = (args.vocab + 63) // 64 * 64
    model = GPT(args.layers, args.heads, args.width, args.vocab, padded_vocab, args.seq).to(device)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
    opt_kwargs = dict(lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
    try:
        optimizer = torch.optim.AdamW(groups, fused=True, **opt_kwargs) if on_gpu else None
    except (TypeError, RuntimeError):
        optimizer = None
    if optimizer is None:
        optimizer = torch.optim.AdamW(groups, **opt_kwargs)

    stream = torch.randint(0, args.vocab, (args.batch * args.seq + 1,), dtype=torch.long)
    tokens = stream[:-1].view(args.batch, args.seq).to(device)
    targets = stream[1:].view(args.batch, args.seq).to(device)

    n_tokens = args.batch * args.seq
    params = sum(p.numel() for p in model.parameters())
    flops_per_step = 6.0 * params * n_tokens + 6.0 * args.layers * args.seq * args.width * n_tokens
    device_name = torch.cuda.get_device_name(device) if on_gpu else "cpu"
    print(f"torch bench train: device {device_name}, {torch.get_num_threads()} CPU threads, "
          f"torch {torch.__version__}", flush=True)
    print(f"model: n_layer={args.layers} n_head={args.heads} n_embd={args.width} "
          f"vocab={args.vocab} (padded {padded_vocab}), {params * 1e-6:.3f}M parameters; "
          f"batch {args.batch} x seq {args.seq} = {n_tokens} tokens/step", flush=True)

    step_seconds, loss_value = [], float("nan")
    for s in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        loss = model(tokens, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_value = loss.item()
        if on_gpu:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        timed = s >= args.warmup
        if timed:
            step_seconds.append(seconds)
        print(f"step {s + 1}/{args.warmup + args.steps}{'' if timed else ' (warmup)'}: "
              f"{seconds * 1e3:.1f} ms, loss {loss_value:.4f}", flush=True)

    median_s = statistics.median(step_seconds)
    mean_s = sum(step_seconds) / len(step_seconds)
    tokens_per_s = n_tokens / median_s
    gflops = flops_per_step / median_s * 1e-9
    device_bytes = float(torch.cuda.max_memory_allocated(device)) if on_gpu else 0.0
    rss_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0
    print(f"timed {len(step_seconds)} steps: median {median_s * 1e3:.1f} ms/step, "
          f"mean {mean_s * 1e3:.1f} ms/step")
    print(f"throughput: {tokens_per_s:.1f} tokens/s")
    line = (f"compute: {flops_per_step * 1e-9:.2f} GFLOP/step (6*N*tokens + 6*L*T*C*tokens) "
            f"-> {gflops:.1f} GFLOP/s")
    if args.peak_gflops > 0:
        line += f", {100 * gflops / args.peak_gflops:.1f}% of {args.peak_gflops:.1f} GFLOP/s " \
                "(--peak-gflops)"
    print(line)
    backend = f"{device_bytes / 2**30:.3f} GiB" if on_gpu else "n/a"
    print(f"peak memory: backend {backend}, process max RSS {rss_bytes / 2**30:.3f} GiB")
    result = {
        "tokens_per_s": tokens_per_s, "ms_per_step_median": median_s * 1e3,
        "ms_per_step_mean": mean_s * 1e3, "gflop_per_step": flops_per_step * 1e-9,
        "gflops_per_s": gflops, "ceiling_gflops": args.peak_gflops,
        "fraction_of_ceiling": gflops / args.peak_gflops if args.peak_gflops > 0 else 0.0,
        "backend_high_water_bytes": device_bytes, "max_rss_bytes": rss_bytes,
        "final_loss": loss_value, "impl": "torch", "device": device_name,
        "threads": torch.get_num_threads(), "layers": args.layers, "heads": args.heads,
        "width": args.width, "vocab": args.vocab, "batch": args.batch, "seq": args.seq,
        "steps": args.steps, "warmup": args.warmup, "parameters": params,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
