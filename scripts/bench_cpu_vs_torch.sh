#!/usr/bin/env bash
# hh vs PyTorch on this CPU in the same run: the benchmark model (4 layers, 4 heads, width
# 256, vocabulary 8192, batch 8 x seq 256 by default), one full training step (forward,
# backward, AdamW), fp32, 2 threads on both sides (OMP_NUM_THREADS / torch.set_num_threads).
# The two alternate (hh, torch, hh, torch, ...) for ROUNDS rounds so that the load of a
# shared machine hits both alike; prints each run, the median tokens/s of each and the
# ratio hh/torch.
#   bash scripts/bench_cpu_vs_torch.sh [extra flags for both, e.g. --steps 5]
# Environment: HH_BENCH_BIN (build/hh-bench), PYTHON (/usr/bin/python3: Debian's, with
# torch), ROUNDS (3), THREADS (2).
# Ends with key=value lines: hh_tokens_per_s, torch_tokens_per_s, ratio.
set -uo pipefail

BIN="${HH_BENCH_BIN:-build/hh-bench}"
PY="${PYTHON:-/usr/bin/python3}"
ROUNDS="${ROUNDS:-3}"
THREADS="${THREADS:-2}"
MODEL=(--layers 4 --heads 4 --width 256 --vocab 8192 --batch 8 --seq 256 "$@")

[ -x "$BIN" ] || { echo "hh-bench not built at $BIN (set HH_BENCH_BIN)"; exit 1; }
"$PY" -c "import torch" 2>/dev/null || { echo "no PyTorch for $PY (set PYTHON)"; exit 1; }

# A number field of the final JSON line: json_field KEY <<< output
json_field() { tail -1 | grep -Eo "\"$1\": *[-0-9.eE+]+" | head -1 | sed 's/.*: *//'; }
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print ""; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

HH_RUNS=()
TORCH_RUNS=()
CEILING=0
for round in $(seq 1 "$ROUNDS"); do
  echo "=== round $round/$ROUNDS: hh ($BIN train --device cpu ${MODEL[*]})"
  OUT=$(OMP_NUM_THREADS="$THREADS" "$BIN" train --device cpu "${MODEL[@]}" 2>&1)
  echo "$OUT" | grep -E "kernel|throughput|compute|memory|timed"
  TOKS=$(echo "$OUT" | json_field tokens_per_s)
  [ -n "$TOKS" ] && HH_RUNS+=("$TOKS") || echo "$OUT" | tail -5
  C=$(echo "$OUT" | json_field ceiling_gflops)
  [ -n "$C" ] && CEILING="$C"

  echo "=== round $round/$ROUNDS: torch ($PY scripts/reference/bench_torch_train.py)"
  OUT=$("$PY" scripts/reference/bench_torch_train.py --device cpu --threads "$THREADS" \
    --peak-gflops "$CEILING" "${MODEL[@]}" 2>&1)
  echo "$OUT" | grep -E "torch bench|throughput|compute|memory|timed"
  TOKS=$(echo "$OUT" | json_field tokens_per_s)
  [ -n "$TOKS" ] && TORCH_RUNS+=("$TOKS") || echo "$OUT" | tail -5
done

HH_MED=$(printf "%s\n" "${HH_RUNS[@]}" | median)
TORCH_MED=$(printf "%s\n" "${TORCH_RUNS[@]}" | median)
RATIO="n/a"
if [ -n "$HH_MED" ] && [ -n "$TORCH_MED" ]; then
  RATIO=$(awk -v a="$HH_MED" -v b="$TORCH_MED" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }')
fi
echo "=== summary ($ROUNDS rounds, median tokens/s; load average now: $(cut -d' ' -f1-3 /proc/loadavg))"
echo "hh runs: ${HH_RUNS[*]:-none}"
echo "torch runs: ${TORCH_RUNS[*]:-none}"
printf "hh_tokens_per_s=%s\n" "${HH_MED:-n/a}"
printf "torch_tokens_per_s=%s\n" "${TORCH_MED:-n/a}"
printf "ratio=%s\n" "$RATIO"
