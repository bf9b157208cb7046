#!/usr/bin/env bash
# Where the GPU time goes, per kernel (Nsight Compute, one metric: gpu__time_duration), for
# the two hot loops whose targets are not met yet: one GPT-2 124M training step (8 x 1024)
# and the 124M decode loop (batch 64). Run on the GPU machine after scripts/gpu_check.sh
# has built build-gpu:   bash scripts/gpu_profile.sh [BUILD_DIR]
# ncu serialises kernels, so only the per-kernel durations mean anything, not wall time.
set -uo pipefail
BUILD=${1:-build-gpu}
LOG=${HH_PROFILE_DIR:-$BUILD/check}
mkdir -p "$LOG"
NCU=(ncu --metrics gpu__time_duration.sum --csv --print-units base --clock-control none)
TOTAL_S=${HH_PROFILE_S:-240}  # both profiles together; the training step gets 60% of it
command -v ncu >/dev/null || { echo "gpu_profile: ncu not on PATH"; exit 1; }

echo "--- training step: hh-bench train, 124M, batch 8 x 1024, 1 step after 1 warm-up"
timeout $((TOTAL_S * 6 / 10)) "${NCU[@]}" "$BUILD/hh-bench" train --device cuda --layers 12 --heads 12 --width 768 \
  --vocab 50304 --batch 8 --seq 1024 --steps 1 --warmup 1 >"$LOG/ncu_train.csv" 2>"$LOG/ncu_train.err"
python3 scripts/ncu_summary.py "$LOG/ncu_train.csv" 18

echo "--- decode: hh-chat --bench, 124M, batch 64, prompt 64, 4 new tokens"
HH_CUDA_GRAPHS=0 timeout $((TOTAL_S * 4 / 10)) "${NCU[@]}" "$BUILD/hh-chat" --random-model gpt2-124m --vocab-size 50257 --device cuda \
  --bench --batch-size 64 --prompt-len 64 --max-new-tokens 4 --repeats 1 --temperature 1 \
  --top-k 0 --top-p 1 --seed 1 >"$LOG/ncu_decode.csv" 2>"$LOG/ncu_decode.err"
python3 scripts/ncu_summary.py "$LOG/ncu_decode.csv" 15
