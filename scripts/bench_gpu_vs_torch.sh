#!/usr/bin/env bash
# hh vs PyTorch on the same GPU in the same run: GPT-2 124M (12 layers, 12 heads, width
# 768, vocabulary 50304, context 1024), one full training step (forward, backward, AdamW),
# fp32 weights with TF32 matmuls on both sides; tokens/s and peak GPU memory.
#   bash scripts/bench_gpu_vs_torch.sh [batch] [seq]        (defaults 8 1024)
# Environment: HH_BENCH_BIN (build-gpu/hh-bench), PYTHON (python3: the GPU machine's
# python3 holds PyTorch), HH_BENCH_STEPS (passed through when set).
# hh runs twice: default attention and HH_CUDA_FLASH=1 (fused; HH_BENCH_FLASH=0 skips it).
# Ends with key=value lines
# (hh_tokens_per_s, hh_peak_gib, torch_tokens_per_s, torch_peak_gib, ratio, and the same
# for flash: hh_flash_tokens_per_s, hh_flash_peak_gib, flash_ratio) for gpu_check.sh.
set -uo pipefail

BATCH="${1:-8}"
SEQ="${2:-1024}"
BIN="${HH_BENCH_BIN:-build-gpu/hh-bench}"
PY="${PYTHON:-python3}"
MODEL=(--layers 12 --heads 12 --width 768 --vocab 50304 --batch "$BATCH" --seq "$SEQ")
STEPS=()
[ -n "${HH_BENCH_STEPS:-}" ] && STEPS=(--steps "$HH_BENCH_STEPS")

# hh-bench and bench_torch_train.py print the same lines:
#   throughput: 123456.7 tokens/s
#   peak memory: backend 10.600 GiB, process max RSS 1.234 GiB
parse_tokens() { grep -E "^throughput:" | tail -1 | grep -Eo "[0-9]+(\.[0-9]+)?" | head -1; }
parse_peak() { grep -E "^peak memory: backend" | tail -1 | grep -Eo "backend [0-9.]+ GiB" | grep -Eo "[0-9.]+"; }

# hh twice: the default (materialised) attention and the fused one (HH_CUDA_FLASH=1).
run_hh() {  # $1 = HH_CUDA_FLASH value
  echo "--- hh (HH_CUDA_FLASH=$1): $BIN train --device cuda ${MODEL[*]} ${STEPS[*]}"
  if [ -x "$BIN" ]; then
    HH_CUDA_FLASH=$1 "$BIN" train --device cuda "${MODEL[@]}" "${STEPS[@]}" 2>&1
  else
    echo "hh-bench not built at $BIN"
  fi
}
HH_OUT=$(run_hh 0)
echo "$HH_OUT" | grep -Ev "^step |^\{" | tail -8
HH_FLASH_OUT=""
if [ "${HH_BENCH_FLASH:-1}" != "0" ]; then
  HH_FLASH_OUT=$(run_hh 1)
  echo "$HH_FLASH_OUT" | grep -Ev "^step |^\{" | tail -8
fi

echo "--- torch: $PY scripts/reference/bench_torch_train.py --device cuda ${MODEL[*]} ${STEPS[*]}"
TORCH_OUT=""
if [ -f scripts/reference/bench_torch_train.py ] && "$PY" -c "import torch" 2>/dev/null; then
  TORCH_OUT=$("$PY" scripts/reference/bench_torch_train.py --device cuda "${MODEL[@]}" \
    "${STEPS[@]}" 2>&1)
  echo "$TORCH_OUT" | grep -Ev "^step |^\{" | tail -8
else
  echo "no PyTorch or no scripts/reference/bench_torch_train.py"
fi

HH_TOKS=$(echo "$HH_OUT" | parse_tokens)
HH_PEAK=$(echo "$HH_OUT" | parse_peak)
HH_FLASH_TOKS=$(echo "$HH_FLASH_OUT" | parse_tokens)
HH_FLASH_PEAK=$(echo "$HH_FLASH_OUT" | parse_peak)
TORCH_TOKS=$(echo "$TORCH_OUT" | parse_tokens)
TORCH_PEAK=$(echo "$TORCH_OUT" | parse_peak)
ratio() {
  if [ -n "$1" ] && [ -n "$2" ]; then
    awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "n/a" }'
  else
    echo "n/a"
  fi
}
RATIO=$(ratio "$HH_TOKS" "$TORCH_TOKS")
FLASH_RATIO=$(ratio "$HH_FLASH_TOKS" "$TORCH_TOKS")
echo "hh_tokens_per_s=${HH_TOKS:-n/a}"
echo "hh_peak_gib=${HH_PEAK:-n/a}"
echo "torch_tokens_per_s=${TORCH_TOKS:-n/a}"
echo "torch_peak_gib=${TORCH_PEAK:-n/a}"
echo "ratio=$RATIO"
echo "hh_flash_tokens_per_s=${HH_FLASH_TOKS:-n/a}"
echo "hh_flash_peak_gib=${HH_FLASH_PEAK:-n/a}"
echo "flash_ratio=$FLASH_RATIO"
