#!/usr/bin/env python3
"""Hugging Face generate() throughput, the baseline of scripts/bench_generate.sh.

A random GPT2LMHeadModel (124M: 12 layers, 12 heads, 768 wide, vocab 50257) in fp32,
random prompts [batch, prompt_len], generate(do_sample=True, top_k=0, exactly
max_new_tokens new tokens each, KV cache on). Prints one JSON line with tokens/s.

Usage: bench_hf_generate.py [--batch 64] [--prompt-len 64] [--new-tokens 128]
                            [--device cuda] [--repeats 3] [--tf32] [--fp16]
"""
import argparse
import json
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tf32", action="store_true", help="allow TF32 matmuls (hh's CUDA default)")
    ap.add_argument("--fp16", action="store_true",
                    help="the model in fp16 (the row beside hh's fp16 storage switches)")
    a = ap.parse_args()
    try:
        import torch
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError as e:
        print(json.dumps({"skipped": f"{e}"}))
        return 0
    torch.backends.cuda.matmul.allow_tf32 = a.tf32
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config()).to(a.device).eval()
    if a.fp16:
        model = model.half()
    prompts = torch.randint(0, 50256, (a.batch, a.prompt_len), device=a.device)
    mask = torch.ones_like(prompts)

    def run():
        with torch.no_grad():
            out = model.generate(prompts, attention_mask=mask, do_sample=True, top_k=0, top_p=1.0,
                                 max_new_tokens=a.new_tokens, min_new_tokens=a.new_tokens,
                                 pad_token_id=50256, use_cache=True)
        if a.device.startswith("cuda"):
            torch.cuda.synchronize()
        return out

    run()  # warm-up
    tokens, seconds = 0, 0.0
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        out = run()
        seconds += time.perf_counter() - t0
        tokens += (out.shape[1] - a.prompt_len) * a.batch
    print(json.dumps({"impl": "hf-generate", "device": a.device, "tf32": a.tf32, "fp16": a.fp16,
                      "batch": a.batch, "prompt_len": a.prompt_len,
                      "max_new_tokens": a.new_tokens, "new_tokens": tokens,
                      "seconds": seconds, "tokens_per_s": tokens / seconds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
