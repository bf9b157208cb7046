#!/usr/bin/env bash
# The cost of the gradient all-reduce: hh-bench train steps with and without it.
#   bash scripts/bench_dist.sh cpu     one process (--dist single); one MPI rank with
#                                      --allreduce; two MPI ranks without and with it
#                                      (each rank its own batch, one OpenMP thread each)
#   bash scripts/bench_dist.sh cuda    GPT-2 124M on one GPU: --dist single, then NCCL at
#                                      world size 1 with --allreduce (the ~500 MB gradient
#                                      goes through NCCL every step, overlapped by layer)
#   bash scripts/bench_dist.sh cuda-node   every GPU of the node, one rank each (mpirun):
#                                      the 124M step without and with the all-reduce
# Environment: HH_BENCH_BIN (build/hh-bench; build-gpu/hh-bench for cuda), HH_BENCH_STEPS.
# Ends with key=value lines (ms per step, and the overhead in percent) for gpu_check.sh.
set -uo pipefail
MODE="${1:-cpu}"
STEPS="${HH_BENCH_STEPS:-10}"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

ms_per_step() { grep -E "^timed " | grep -Eo "median [0-9.]+" | grep -Eo "[0-9.]+"; }
overhead() { awk -v a="$1" -v b="$2" 'BEGIN { if (a > 0 && b > 0) printf "%.1f", 100 * (b - a) / a; else print "n/a" }'; }

if [ "$MODE" = "cuda-node" ]; then
  # Every GPU of this node, one rank each (mpirun; hh built with MPI shares NCCL's id):
  # the same per-GPU step without and with the all-reduce. The target: under 5% at 124M.
  BIN="${HH_BENCH_BIN:-build-gpu/hh-bench}"
  GPUS=$(nvidia-smi -L 2>/dev/null | wc -l)
  [ "$GPUS" -ge 2 ] || { echo "bench_dist: cuda-node needs 2 or more GPUs (found $GPUS)"; exit 1; }
  MODEL=(--device cuda --layers 12 --heads 12 --width 768 --vocab 50304 --batch 8 --seq 1024 --steps "$STEPS")
  node() { mpirun -np "$GPUS" --bind-to none --tag-output "$BIN" train "${MODEL[@]}" --dist nccl "$@" 2>&1 | grep '^\[1,0\]' | sed 's/^\[1,0\]<std[a-z]*>://'; }
  A=$(node); echo "$A" | grep -E "^(hh-bench|model|timed|throughput)|error"
  B=$(node --allreduce); echo "$B" | grep -E "^(gradient|timed|throughput)|error"
  a=$(echo "$A" | ms_per_step); b=$(echo "$B" | ms_per_step)
  echo "gpus=$GPUS"
  echo "node_noreduce_ms=${a:-n/a}"
  echo "node_allreduce_ms=${b:-n/a}"
  echo "node_overhead_pct=$(overhead "${a:-0}" "${b:-0}")"
  exit 0
fi

if [ "$MODE" = "cuda" ]; then
  BIN="${HH_BENCH_BIN:-build-gpu/hh-bench}"
  MODEL=(--device cuda --layers 12 --heads 12 --width 768 --vocab 50304 --batch 8 --seq 1024 --steps "$STEPS")
  echo "--- $BIN train ${MODEL[*]} --dist single"
  A=$("$BIN" train "${MODEL[@]}" --dist single 2>&1); echo "$A" | grep -E "^(hh-bench|model|timed|throughput)"
  echo "--- $BIN train ${MODEL[*]} --dist nccl --allreduce"
  B=$("$BIN" train "${MODEL[@]}" --dist nccl --allreduce 2>&1); echo "$B" | grep -E "^(gradient|timed|throughput)|error"
  a=$(echo "$A" | ms_per_step); b=$(echo "$B" | ms_per_step)
  echo "single_ms=${a:-n/a}"
  echo "nccl1_ms=${b:-n/a}"
  echo "nccl1_overhead_pct=$(overhead "${a:-0}" "${b:-0}")"
  exit 0
fi

BIN="${HH_BENCH_BIN:-build/hh-bench}"
MODEL=(--device cpu --layers 4 --heads 4 --width 256 --vocab 8192 --batch 4 --seq 256 --steps "$STEPS")
run() {  # label, then the command
  local label=$1; shift
  echo "--- $label: $*" >&2
  "$@" 2>&1 | tee /dev/stderr | ms_per_step | head -1
}
a=$(OMP_NUM_THREADS=1 run "1 process, no all-reduce" "$BIN" train "${MODEL[@]}" --dist single)
b=$(OMP_NUM_THREADS=1 run "1 MPI rank, all-reduce" mpirun -np 1 -x OMP_NUM_THREADS "$BIN" train "${MODEL[@]}" --dist mpi --allreduce)
# Two ranks print the same lines; keep rank 0's (mpirun --tag-output marks them). Without
# --allreduce the two ranks only share the machine: the baseline for the 2-rank cost.
two() { mpirun -np 2 --oversubscribe -x OMP_NUM_THREADS --tag-output "$BIN" train "${MODEL[@]}" --dist mpi "$@" | grep '^\[1,0\]' | sed 's/^\[1,0\]<stdout>://'; }
c=$(OMP_NUM_THREADS=1 run "2 MPI ranks, no all-reduce" two)
d=$(OMP_NUM_THREADS=1 run "2 MPI ranks, all-reduce" two --allreduce)
echo "single_ms=${a:-n/a}"
echo "mpi1_ms=${b:-n/a}"
echo "mpi2_noreduce_ms=${c:-n/a}"
echo "mpi2_ms=${d:-n/a}"
echo "mpi1_overhead_pct=$(overhead "${a:-0}" "${b:-0}")"
echo "mpi2_overhead_pct=$(overhead "${c:-0}" "${d:-0}")"
