#!/usr/bin/env bash
# Generation throughput: hh (KV cache, hh-chat --bench) against Hugging Face generate in
# the same run.
#
#   scripts/bench_generate.sh cuda [BUILD_DIR]   124M random model, batch 64, prompt 64,
#                                                128 new tokens; then HF generate (fp32)
#   scripts/bench_generate.sh cpu  [BUILD_DIR]   the demo-size models (tiny, small) on CPU
#
# Sampling is plain temperature-1 sampling with no stops, so every sequence makes exactly
# the asked number of tokens (HF: do_sample, top_k=0, min_new_tokens=max_new_tokens).
# PYTHON (default /usr/bin/python3) must have torch + transformers for the HF baseline.
set -euo pipefail
MODE=${1:-cuda}
BUILD=${2:-build}
PYTHON=${PYTHON:-/usr/bin/python3}
CHAT="$BUILD/hh-chat"
[ -x "$CHAT" ] || { echo "bench_generate: $CHAT not built" >&2; exit 1; }
SAMPLING=(--temperature 1 --top-k 0 --top-p 1 --seed 1)

if [ "$MODE" = cuda ]; then
  HH=$("$CHAT" --random-model gpt2-124m --vocab-size 50257 --device cuda --bench \
       --batch-size 64 --prompt-len 64 --max-new-tokens 128 --repeats 3 "${SAMPLING[@]}")
  echo "hh:  $HH"
  HF=$("$PYTHON" scripts/reference/bench_hf_generate.py --device cuda --batch 64 \
       --prompt-len 64 --new-tokens 128 --repeats 3 || echo '{"skipped": "failed"}')
  echo "hf:  $HF"
  HF_TF32=$("$PYTHON" scripts/reference/bench_hf_generate.py --device cuda --batch 64 \
       --prompt-len 64 --new-tokens 128 --repeats 3 --tf32 || echo '{"skipped": "failed"}')
  echo "hf (tf32): $HF_TF32"
  # hh storing fp16 (the KV cache, or the decode step's weights and matmul inputs): HF
  # generate on an fp16 model too, the like-for-like row.
  HF_FP16='{"skipped": "hh stores no fp16"}'
  if [ "${HH_CUDA_DECODE_FP16:-0}" = 1 ] || [ "${HH_CUDA_KV_HALF:-0}" = 1 ]; then
    HF_FP16=$("$PYTHON" scripts/reference/bench_hf_generate.py --device cuda --batch 64 \
         --prompt-len 64 --new-tokens 128 --repeats 3 --fp16 || echo '{"skipped": "failed"}')
    echo "hf (fp16): $HF_FP16"
  fi
  "$PYTHON" - "$HH" "$HF" "$HF_TF32" "$HF_FP16" <<'EOF'
import json, sys
hh, hf, hf32, hf16 = (json.loads(s) for s in sys.argv[1:5])
print(f"| impl | tokens/s | hh speed-up |")
print(f"| --- | --- | --- |")
print(f"| hh (cuda, KV cache) | {hh['tokens_per_s']:.0f} | 1.00x |")
for name, r in (("HF generate fp32", hf), ("HF generate tf32", hf32), ("HF generate fp16", hf16)):
    if "tokens_per_s" in r:
        print(f"| {name} | {r['tokens_per_s']:.0f} | {hh['tokens_per_s'] / r['tokens_per_s']:.2f}x |")
    else:
        print(f"| {name} | skipped: {r.get('skipped')} | |")
EOF
elif [ "$MODE" = cpu ]; then
  for preset in tiny small; do
    echo "hh cpu $preset (vocab 8192, batch 8, prompt 64, 64 new tokens):"
    "$CHAT" --random-model "$preset" --vocab-size 8192 --device cpu --bench --batch-size 8 \
      --prompt-len 64 --max-new-tokens 64 --repeats 2 "${SAMPLING[@]}"
  done
else
  echo "usage: $0 cuda|cpu [BUILD_DIR]" >&2
  exit 2
fi
