#!/usr/bin/env bash
# Where the GPU time goes, per kernel, for the two hot loops: one GPT-2 124M training step
# (8 x 1024) and the 124M decode loop (batch 64). CUPTI's kernel records first
# (HH_CUDA_KERNEL_TIMES, cuda/kernel_times.cu); Nsight Compute (one metric,
# gpu__time_duration) when those give no table or HH_PROFILE_NCU=1. Run on the GPU machine
# after scripts/gpu_check.sh has built build-gpu:   bash scripts/gpu_profile.sh [BUILD_DIR]
set -uo pipefail
BUILD=${1:-build-gpu}
LOG=${HH_PROFILE_DIR:-$BUILD/check}
mkdir -p "$LOG"
NCU=(ncu --metrics gpu__time_duration.sum --csv --print-units base --clock-control none)
TOTAL_S=${HH_PROFILE_S:-240}  # both Nsight Compute profiles together; training gets 60%
TRAIN=(train --device cuda --layers 12 --heads 12 --width 768 --vocab 50304 --batch 8 --seq 1024)
DECODE=(--random-model gpt2-124m --vocab-size 50257 --device cuda --bench --batch-size 64
  --prompt-len 64 --repeats 1 --temperature 1 --top-k 0 --top-p 1 --seed 1)

# First CUPTI's kernel records (HH_CUDA_KERNEL_TIMES): the programs run at full speed, CUDA
# graphs included, so the decode loop (which Nsight Compute cannot profile) is covered too.
# Warm-up and prefill are in the totals: the call counts tell them apart.
echo "--- kernel times (CUPTI): hh-bench train, 124M, batch 8 x 1024, 5 steps after 1 warm-up"
HH_CUDA_KERNEL_TIMES=22 timeout 60 "$BUILD/hh-bench" "${TRAIN[@]}" --steps 5 --warmup 1 2>&1 |
  tee "$LOG/cupti_train.log" | sed -n '/kernel times/,$p'
echo "--- kernel times (CUPTI): hh-chat --bench, 124M, batch 64, prompt 64, 128 new tokens"
HH_CUDA_KERNEL_TIMES=22 timeout 60 "$BUILD/hh-chat" "${DECODE[@]}" --max-new-tokens 128 2>&1 |
  tee "$LOG/cupti_decode.log" | sed -n '/kernel times/,$p'
grep -q "all kernels" "$LOG/cupti_train.log" && [ "${HH_PROFILE_NCU:-0}" != "1" ] && exit 0

# Nsight Compute (when CUPTI gave no table, or HH_PROFILE_NCU=1): it serialises kernels, so
# only the per-kernel durations mean anything, not wall time.
command -v ncu >/dev/null || { echo "gpu_profile: ncu not on PATH"; exit 1; }
echo "--- training step: hh-bench train, 124M, batch 8 x 1024, 1 step after 1 warm-up"
timeout $((TOTAL_S * 6 / 10)) "${NCU[@]}" "$BUILD/hh-bench" "${TRAIN[@]}" --steps 1 --warmup 1 \
  >"$LOG/ncu_train.csv" 2>"$LOG/ncu_train.err"
python3 scripts/ncu_summary.py "$LOG/ncu_train.csv" 18

echo "--- decode: hh-chat --bench, 124M, batch 64, prompt 64, 4 new tokens (graphs off)"
HH_CUDA_GRAPHS=0 timeout $((TOTAL_S * 4 / 10)) "${NCU[@]}" "$BUILD/hh-chat" "${DECODE[@]}" \
  --max-new-tokens 4 >"$LOG/ncu_decode.csv" 2>"$LOG/ncu_decode.err"
python3 scripts/ncu_summary.py "$LOG/ncu_decode.csv" 15
