#!/usr/bin/env bash
# GPU check (issues 4-8), run from the repository root on a GPU machine:
#   bash scripts/gpu_check.sh
# Steps (each with its own time budget; about 8-10 minutes on an H100):
#   0. machine and tools            4. compute-sanitizer memcheck on a small subset
#   1. GoogleTest (built from source if the machine has none)
#   2. configure + build for sm_90  5. hh-bench train --device cuda (GPT-2 124M, batch
#   3. the GPU test suites (CUDA       8 x 1024) and PyTorch on the same model/step
#      parity, generation, NCCL     5b. the step with the NCCL gradient all-reduce (w=1)
#      at world size 1)             5c. generation vs HF generate; PM pairs/s; PPO phases
#                                   5d. HF GPT-2 interop; the whole ctest if time is left
#   6. one short table (also written to $OUT/gpu_check_summary.txt when $OUT is set)
# Logs of every step go to build-gpu/check; with $OUT set (the remote GPU tool) the summary
# and one file holding the tail of every log are copied there. Environment:
#   HH_GPU_JOBS (16) build jobs; HH_GPU_SKIP_BENCH=1 skips steps 5-5c; HH_GPU_SKIP lists
#   steps to leave out (torch: step 5; memcheck: step 4; 5c; 5a: the switches, configurations in
#   HH_GPU_TRAIN_SWEEP ("none": no training step) and HH_GPU_GEN_SWEEP, ';'-separated; shapes 5b
#   flash hf-generate hf-interop); HH_GPU_PROFILE=1 adds
#   scripts/gpu_profile.sh (per-kernel times, with HH_GPU_PROFILE_SWITCHES, else step 5c's);
#   step 5c runs with the fastest generation configuration of 5a whose switches passed their
#   tests in step 3 (5a also times the single winners together), or HH_GPU_GEN_SWITCHES;
#   HH_GPU_SKIP_CTEST=1
#   skips the whole ctest; HH_GPU_DEMO=1 runs make demo's GPU size (HH_GPU_DEMO_S, 240 s)
#   with the data at HH_DATA_DIR/hh-rlhf; HH_GPU_BUDGET_S
#   (540): a step that would start later than this is skipped, so one call fits the device
#   tool's 600 s per command;
#   HH_GTEST_SRC: a googletest source tree to build when find_package(GTest) fails
#   (default: build-gpu-deps/googletest, made here by `bash scripts/gpu_deps.sh` and carried).
set -euo pipefail

ROOT="$(pwd)"
BUILD="$ROOT/build-gpu"
LOGDIR="$BUILD/check"
mkdir -p "$LOGDIR"
JOBS="${HH_GPU_JOBS:-16}"
START=$(date +%s)
step() { echo; echo "=== [$(($(date +%s) - START))s] $* ==="; }
# Steps named in HH_GPU_SKIP (e.g. "5a 5b hf-generate hf-interop") are left out.
wanted() {
  case " ${HH_GPU_SKIP:-} " in *" $1 "*) echo "skipped: HH_GPU_SKIP names $1"; return 1 ;; esac
  return 0
}
# True while the time budget allows another step (each bench step takes 0.5-2 minutes).
in_budget() {
  if [ $(($(date +%s) - START)) -lt "${HH_GPU_BUDGET_S:-540}" ]; then return 0; fi
  echo "skipped: past the time budget (HH_GPU_BUDGET_S=${HH_GPU_BUDGET_S:-540} s)"; return 1
}
# Table rows, filled as the steps finish.
BUILD_STATUS="not run"; TEST_STATUS="not run"; SANITIZER_STATUS="not run"; GPU_FAILS=0; GPU_RUN=0
HH_TOKS="n/a"; HH_PEAK="n/a"; TORCH_TOKS="n/a"; TORCH_PEAK="n/a"; RATIO="n/a"
FLASH_TOKS="n/a"; FLASH_PEAK="n/a"; FLASH_RATIO="n/a"
SINGLE_MS="n/a"; NCCL1_MS="n/a"; NCCL1_PCT="n/a"
GEN_HH="n/a"; GEN_HF="n/a"; GEN_HF16=""; GEN_EAGER="n/a"; PM_PAIRS="n/a"; PPO_PHASES="n/a"

step "0. machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
nvcc --version | tail -1 || true
cmake --version | head -1
command -v compute-sanitizer || echo "compute-sanitizer: not on PATH"

step "1. GoogleTest and zlib"
CMAKE_EXTRA=()
GTEST_SRC="${HH_GTEST_SRC:-$ROOT/build-gpu-deps/googletest}"
GTEST_PREFIX="$ROOT/build-gpu-deps/gtest-install"
probe_gtest() {
  local d; d=$(mktemp -d)
  printf 'cmake_minimum_required(VERSION 3.16)\nproject(p CXX)\nfind_package(GTest REQUIRED)\n' >"$d/CMakeLists.txt"
  cmake -S "$d" -B "$d/b" "$@" >/dev/null 2>&1; local rc=$?; rm -rf "$d"; return $rc
}
if probe_gtest; then
  echo "GTest: found on the system"
elif [ -f "$GTEST_PREFIX/.built" ] || { [ -d "$GTEST_SRC" ] && timeout 120 bash -c "
    cmake -S '$GTEST_SRC' -B '$ROOT/build-gpu-deps/gtest-build' -DCMAKE_BUILD_TYPE=Release \
      -DCMAKE_INSTALL_PREFIX='$GTEST_PREFIX' -DBUILD_GMOCK=OFF >'$LOGDIR/gtest_build.log' 2>&1 &&
    cmake --build '$ROOT/build-gpu-deps/gtest-build' -j$JOBS >>'$LOGDIR/gtest_build.log' 2>&1 &&
    cmake --install '$ROOT/build-gpu-deps/gtest-build' >>'$LOGDIR/gtest_build.log' 2>&1 &&
    touch '$GTEST_PREFIX/.built'"; }; then
  echo "GTest: built from $GTEST_SRC into $GTEST_PREFIX"
  CMAKE_EXTRA+=("-DGTest_ROOT=$GTEST_PREFIX")
else
  echo "GTest: not found and no source at $GTEST_SRC (run scripts/gpu_deps.sh where apt works and carry build-gpu-deps)"
fi

# zlib (hh_data reads .jsonl.gz): the machine's, else the copy gpu_deps.sh made.
probe_zlib() {
  local d; d=$(mktemp -d)
  printf 'cmake_minimum_required(VERSION 3.16)\nproject(p C)\nfind_package(ZLIB REQUIRED)\n' >"$d/CMakeLists.txt"
  cmake -S "$d" -B "$d/b" >/dev/null 2>&1; local rc=$?; rm -rf "$d"; return $rc
}
if probe_zlib; then
  echo "zlib: found on the system"
elif [ -f "$ROOT/build-gpu-deps/zlib/include/zlib.h" ]; then
  echo "zlib: using build-gpu-deps/zlib"
  CMAKE_EXTRA+=("-DZLIB_ROOT=$ROOT/build-gpu-deps/zlib")
else
  echo "zlib: not found (configure will fail; run scripts/gpu_deps.sh and carry build-gpu-deps)"
fi

# NCCL: the toolkit's, else the one PyTorch's wheels bring (nvidia/nccl: lib/libnccl.so.2).
if ! ls /usr/local/cuda/include/nccl.h /usr/include/nccl.h >/dev/null 2>&1; then
  NCCL_DIR=$(find /opt /usr/local/lib /usr/lib -path '*nvidia/nccl/include/nccl.h' 2>/dev/null | head -1)
  if [ -n "$NCCL_DIR" ]; then
    NCCL_DIR=$(dirname "$(dirname "$NCCL_DIR")")
    echo "NCCL: using $NCCL_DIR"; CMAKE_EXTRA+=("-DNCCL_ROOT=$NCCL_DIR")
    export LD_LIBRARY_PATH="$NCCL_DIR/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  else
    echo "NCCL: not found (the NCCL test and step 5b will skip)"
  fi
fi

step "2. configure + build (sm_90, -j$JOBS)"
# Keep going past a broken target (so whatever built can still be tested).
GEN=(); KEEP_GOING=(-k)
if command -v ninja >/dev/null && [ ! -f "$BUILD/Makefile" ]; then GEN=(-G Ninja); KEEP_GOING=(-k 0); fi
if timeout 300 cmake -S "$ROOT" -B "$BUILD" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release -DHH_CUDA=ON \
     -DCMAKE_CUDA_ARCHITECTURES=90 "${CMAKE_EXTRA[@]}" >"$LOGDIR/configure.log" 2>&1 &&
   timeout 300 cmake --build "$BUILD" -j"$JOBS" -- "${KEEP_GOING[@]}" >"$LOGDIR/build.log" 2>&1; then
  BUILD_STATUS="ok"
else
  BUILD_STATUS="FAILED (see build.log)"
  tail -40 "$LOGDIR/configure.log" "$LOGDIR/build.log" || true
fi
grep -ci "warning" "$LOGDIR/build.log" | sed 's/^/build warnings: /' || true
echo "build: $BUILD_STATUS"

step "3. the GPU tests (CUDA parity, generation on the GPU, NCCL at world size 1)"
# The suites that touch the GPU run first, each on its own; the whole ctest (the CPU tests
# CI runs anyway) comes last, in whatever time is left.

run_gtest() {  # name, binary, filter
  local log="$LOGDIR/$1.log"
  if [ ! -x "$BUILD/$2" ]; then echo "$1: $2 not built"; GPU_FAILS=$((GPU_FAILS + 1)); return; fi
  set +e
  timeout 150 "$BUILD/$2" --gtest_filter="$3" >"$log" 2>&1; local rc=$?
  set -e
  GPU_RUN=$((GPU_RUN + 1))
  [ $rc -eq 0 ] || GPU_FAILS=$((GPU_FAILS + 1))
  echo "$1 (rc $rc): $(grep -E '^\[  PASSED  \]|^\[  FAILED  \] [0-9]+|^\[  SKIPPED \] [0-9]+' "$log" | tr '\n' ' ')"
  grep -E '^\[  FAILED  \] [A-Z]|^\[  SKIPPED \] [A-Z]' "$log" | grep -v ' ms)$' | sort -u | head -20 || true
}
if [ -d "$BUILD" ]; then
  run_gtest test_ops_cuda test_ops_cuda '*'
  run_gtest test_generate_gpu test_generate '*Cuda*:*HostAndDevice*:SampleRows*'
  run_gtest test_dist_nccl test_dist 'Nccl*'
  TEST_STATUS="GPU suites: $GPU_FAILS of $GPU_RUN failed"
fi

step "4. compute-sanitizer memcheck (op subset + the small scalar-head model test)"
if command -v compute-sanitizer >/dev/null && [ -x "$BUILD/test_ops_cuda" ] && wanted memcheck &&
   in_budget; then
  FILTER='CudaParity.Embedding:CudaParity.LayerNorm:CudaParity.AttentionExactFp32:CudaParity.CrossEntropyInPlaceAndMasked:CudaParity.GatherScatterRows:CudaParity.AdamWAndFlatUtilities:CudaParity.AttentionFlash:CudaParity.DecodeWithKvCache:CudaParity.WholeModelScalarHead:CudaParity.CrossEntropyBackwardStagedRow:CudaParity.DecodeAttentionFastVariants:CudaParity.DecodeWithHalfKvCache:CudaParity.DecodeOnFp16Storage:CudaParity.SkinnyMatmulMatchesTheCpu:CudaParity.FusedMatmuls:CudaParity.AttentionFlashTensorCores'
  set +e
  timeout 240 compute-sanitizer --tool memcheck --error-exitcode 99 --leak-check no \
    "$BUILD/test_ops_cuda" --gtest_filter="$FILTER" >"$LOGDIR/sanitizer.log" 2>&1
  rc=$?
  set -e
  tail -5 "$LOGDIR/sanitizer.log"
  case $rc in
    0) SANITIZER_STATUS="clean" ;;
    99) SANITIZER_STATUS="ERRORS (see sanitizer.log)" ;;
    124) SANITIZER_STATUS="timed out" ;;
    *) SANITIZER_STATUS="test failures (rc $rc)" ;;
  esac
else
  SANITIZER_STATUS="skipped (no compute-sanitizer or test binary)"
fi

step "5. benchmarks (GPT-2 124M, batch 8 x 1024, full training step)"
if [ "${HH_GPU_SKIP_BENCH:-0}" != "1" ] && wanted torch && in_budget; then
  set +e
  FLASH=1; wanted flash || FLASH=0
  HH_BENCH_FLASH=$FLASH timeout 150 bash "$ROOT/scripts/bench_gpu_vs_torch.sh" \
    >"$LOGDIR/bench.log" 2>&1
  set -e
  tail -40 "$LOGDIR/bench.log"
  # bench_gpu_vs_torch.sh ends with key=value lines.
  val() { grep -E "^$1=" "$LOGDIR/bench.log" | tail -1 | cut -d= -f2-; }
  HH_TOKS=$(val hh_tokens_per_s); HH_PEAK=$(val hh_peak_gib)
  TORCH_TOKS=$(val torch_tokens_per_s); TORCH_PEAK=$(val torch_peak_gib); RATIO=$(val ratio)
  FLASH_TOKS=$(val hh_flash_tokens_per_s); FLASH_PEAK=$(val hh_flash_peak_gib)
  FLASH_RATIO=$(val flash_ratio)
  : "${HH_TOKS:=n/a}" "${HH_PEAK:=n/a}" "${TORCH_TOKS:=n/a}" "${TORCH_PEAK:=n/a}" "${RATIO:=n/a}"
  : "${FLASH_TOKS:=n/a}" "${FLASH_PEAK:=n/a}" "${FLASH_RATIO:=n/a}"
fi

# GPT-2 124M for hh-bench, and the generation benchmark (bench_generate.sh's hh run).
GPT2=(--device cuda --layers 12 --heads 12 --width 768)
GEN=(--random-model gpt2-124m --vocab-size 50257 --device cuda --bench --batch-size 64
  --prompt-len 64 --max-new-tokens 128 --repeats 3 --temperature 1 --top-k 0 --top-p 1 --seed 1)

step "5a. the switches (docs/cuda.md): 124M step and generation per switch"
# Each configuration's parity tests ran in step 3 (the tests set the switches themselves);
# here each is timed against the default in the same run, so a default that stopped being
# the fastest shows.
ATTN_SWEEP="n/a"; GEN_SWEEP="n/a"
# with_switches "A=1 B=2" cmd...: runs cmd with those environment switches ("default": none).
with_switches() {
  local envs=(); [ "$1" = default ] || read -r -a envs <<<"$1"
  shift
  env "${envs[@]}" "$@"
}
# train_step "switches" batch seq steps: one line "ms gib" of the 124M step (empty on failure;
# the output's tail goes to stderr).
train_step() {
  local out ms gib
  out=$(with_switches "$1" timeout 90 "$BUILD/hh-bench" train "${GPT2[@]}" --vocab 50304 \
    --batch "$2" --seq "$3" --steps "$4" --warmup 1 2>&1 || true)
  ms=$(echo "$out" | grep -Eo "median [0-9.]+" | grep -Eo "[0-9.]+" || true)
  gib=$(echo "$out" | grep -Eo "backend [0-9.]+ GiB" | grep -Eo "[0-9.]+" || true)
  [ -n "$ms" ] || echo "$out" | tail -3 >&2
  echo "${ms:-FAILED} ${gib:-?}"
}
# gen_tps "switches": new tokens/s of the 124M generation benchmark (empty on failure).
gen_tps() {
  with_switches "$1" timeout 60 "$BUILD/hh-chat" "${GEN[@]}" 2>/dev/null |
    grep -Eo '"tokens_per_s":[0-9.]+' | cut -d: -f2 | cut -d. -f1 || true
}
# The parity tests of each switch (step 3 ran them, setting the switch themselves).
switch_tests() {
  case "$1" in
    HH_CUDA_LT_TUNE) echo "TunedMatmulsMatchTheCpu" ;;
    HH_CUDA_SKINNY) echo "SkinnyMatmulMatchesTheCpu" ;;
    HH_CUDA_PDL) echo "CudaPdlMatchesPlainLaunches" ;;
    HH_CUDA_KV_HALF) echo "DecodeWithHalfKvCache CudaDecodingMatchesCpu" ;;
    HH_CUDA_DECODE_FP16) echo "DecodeOnFp16Storage CudaDecodingMatchesCpu" ;;
    HH_CUDA_FAST_DECODE) echo "DecodeAttentionFastVariants SampleRowsPruned" ;;
  esac
}
# switch_tests_pass "A=1 B=1": false when step 3 ran no tests, or one of a switch's failed.
switch_tests_pass() {
  local kv t
  [ "$GPU_RUN" -gt 0 ] || return 1
  for kv in $1; do
    [ "$kv" = default ] && continue
    for t in $(switch_tests "${kv%%=*}"); do
      if grep -qE "^\[  FAILED  \] [A-Za-z]+\.$t( |\$)" "$LOGDIR"/test_*.log 2>/dev/null; then
        echo "[$1] is out: its test $t failed in step 3" >&2
        return 1
      fi
    done
  done
}
# The generation configuration of step 5c: the sweep's fastest (default without a sweep).
GEN_BEST="${HH_GPU_GEN_SWITCHES:-default}"; GEN_BEST_TPS=0
if [ "${HH_GPU_SKIP_BENCH:-0}" != "1" ] && [ -x "$BUILD/hh-bench" ] && wanted 5a && in_budget; then
  ATTN_SWEEP=""
  IFS=";" read -r -a TRAIN_CFGS <<<"${HH_GPU_TRAIN_SWEEP:-default;HH_CUDA_LT_TUNE=1;HH_CUDA_ATTN_BLOCKS=1;HH_CUDA_FUSE=0}"
  IFS=";" read -r -a GEN_CFGS <<<"${HH_GPU_GEN_SWEEP:-default;HH_CUDA_LT_TUNE=1;HH_CUDA_SKINNY=1;HH_CUDA_PDL=1;HH_CUDA_KV_HALF=1;HH_CUDA_DECODE_FP16=1;HH_CUDA_DECODE_FP16=1 HH_CUDA_KV_HALF=1 HH_CUDA_PDL=1;HH_CUDA_SKINNY=1 HH_CUDA_PDL=1 HH_CUDA_KV_HALF=1;HH_CUDA_GRAPHS=0}"
  [ "${TRAIN_CFGS[*]}" = none ] && TRAIN_CFGS=()
  for cfg in "${TRAIN_CFGS[@]}"; do
    read -r ms gib <<<"$(train_step "$cfg" 8 1024 8)"
    echo "train step [$cfg]: $ms ms/step, peak $gib GiB"
    ATTN_SWEEP="$ATTN_SWEEP [$cfg] ${ms}ms/${gib}GiB;"
  done
  GEN_SWEEP=""
  declare -A GEN_TPS=()
  for cfg in "${GEN_CFGS[@]}"; do
    GEN_TPS[$cfg]=$(gen_tps "$cfg")
    echo "generate [$cfg]: ${GEN_TPS[$cfg]:-FAILED} tokens/s"
    GEN_SWEEP="$GEN_SWEEP [$cfg] ${GEN_TPS[$cfg]:-FAILED};"
  done
  # Every single switch that beat the default by 1% and passed its tests, together (unless
  # the list above timed that combination already).
  COMBO=""
  base=${GEN_TPS[default]:-0}
  for cfg in "${GEN_CFGS[@]}"; do
    case "$cfg" in default | *" "* | HH_CUDA_GRAPHS=*) continue ;; esac
    tps=${GEN_TPS[$cfg]:-0}
    if [ "$tps" -gt $((base + base / 100)) ] && switch_tests_pass "$cfg"; then COMBO="$COMBO $cfg"; fi
  done
  COMBO=${COMBO# }
  if [ "$COMBO" != "${COMBO% *}" ] && [ -z "${GEN_TPS[$COMBO]+set}" ]; then
    GEN_TPS[$COMBO]=$(gen_tps "$COMBO")
    echo "generate [$COMBO] (the single winners together): ${GEN_TPS[$COMBO]:-FAILED} tokens/s"
    GEN_SWEEP="$GEN_SWEEP [$COMBO] ${GEN_TPS[$COMBO]:-FAILED};"
  fi
  # The fastest configuration whose switches all passed their tests runs step 5c (unless
  # HH_GPU_GEN_SWITCHES names one).
  [ -n "${HH_GPU_GEN_SWITCHES:-}" ] || for cfg in "${!GEN_TPS[@]}"; do
    case "$cfg" in HH_CUDA_GRAPHS=* | *" HH_CUDA_GRAPHS="*) continue ;; esac
    tps=${GEN_TPS[$cfg]:-0}
    if [ "$tps" -gt "$GEN_BEST_TPS" ] && switch_tests_pass "$cfg"; then
      GEN_BEST="$cfg"; GEN_BEST_TPS=$tps
    fi
  done
  echo "fastest generation configuration with passing tests: [$GEN_BEST] $GEN_BEST_TPS tokens/s"
fi

step "5a'. batch 1 to 64, sequence 64 to 1024 (124M training step, 3 steps each)"
SHAPES="n/a"
if [ "${HH_GPU_SKIP_BENCH:-0}" != "1" ] && [ -x "$BUILD/hh-bench" ] && wanted shapes && in_budget; then
  SHAPES=""
  for shape in "1 64" "64 64" "1 1024" "64 1024"; do
    set -- $shape
    read -r ms gib <<<"$(train_step default "$1" "$2" 3)"
    echo "batch $1 x $2: $ms ms/step, peak $gib GiB"
    SHAPES="$SHAPES $1x$2:${ms}ms/${gib}GiB"
  done
fi

step "5b. data parallelism: the gradient all-reduce through NCCL at world size 1 (124M)"
if [ "${HH_GPU_SKIP_BENCH:-0}" != "1" ] && [ -x "$BUILD/hh-bench" ] && wanted 5b && in_budget; then
  set +e
  HH_BENCH_BIN="$BUILD/hh-bench" HH_BENCH_STEPS=10 timeout 120 bash "$ROOT/scripts/bench_dist.sh" cuda \
    >"$LOGDIR/bench_dist.log" 2>&1
  set -e
  tail -12 "$LOGDIR/bench_dist.log"
  dval() { grep -E "^$1=" "$LOGDIR/bench_dist.log" | tail -1 | cut -d= -f2-; }
  SINGLE_MS=$(dval single_ms); NCCL1_MS=$(dval nccl1_ms); NCCL1_PCT=$(dval nccl1_overhead_pct)
  : "${SINGLE_MS:=n/a}" "${NCCL1_MS:=n/a}" "${NCCL1_PCT:=n/a}"
fi

step "5c. generation (hh-chat --bench vs HF generate), PM pairs/s, PPO phases (124M) [$GEN_BEST]"
if [ "${HH_GPU_SKIP_BENCH:-0}" != "1" ] && [ -x "$BUILD/hh-bench" ] && wanted 5c && in_budget; then
  set +e
  if wanted hf-generate; then
    PYTHON=python3 with_switches "$GEN_BEST" timeout 150 bash "$ROOT/scripts/bench_generate.sh" cuda "$BUILD" \
      >"$LOGDIR/bench_generate.log" 2>&1
  else
    # hh alone (HF generate's numbers from an earlier run of this script).
    with_switches "$GEN_BEST" timeout 60 "$BUILD/hh-chat" "${GEN[@]}" 2>/dev/null | sed 's/^/hh:  /' \
      >"$LOGDIR/bench_generate.log"
    GEN_HH=$(grep -Eo '"tokens_per_s":[0-9.]+' "$LOGDIR/bench_generate.log" | cut -d: -f2 | cut -d. -f1)
  fi
  tail -6 "$LOGDIR/bench_generate.log"
  wanted hf-generate >/dev/null && GEN_HH=$(grep -E "^\| hh " "$LOGDIR/bench_generate.log" | awk -F'|' '{print $3}' | tr -d ' ')
  GEN_HF=$(grep -E "^\| HF generate fp32" "$LOGDIR/bench_generate.log" | awk -F'|' '{print $3 "(" $4 ")"}' | tr -d ' ')
  GEN_HF16=$(grep -E "^\| HF generate fp16 \| [0-9]" "$LOGDIR/bench_generate.log" | awk -F'|' '{print $3 "(" $4 ")"}' | tr -d ' ')
  # The same hh bench without CUDA graphs (eager decode steps), for the graphs' share.
  GEN_EAGER=$(HH_CUDA_GRAPHS=0 timeout 60 "$BUILD/hh-chat" "${GEN[@]}" 2>/dev/null |
    grep -Eo '"tokens_per_s":[0-9.]+' | cut -d: -f2 | cut -d. -f1)
  echo "hh without CUDA graphs: ${GEN_EAGER:-n/a} tokens/s"
  in_budget && timeout 90 "$BUILD/hh-bench" train --pm "${GPT2[@]}" --vocab 50304 --batch 16 --seq 1024 --steps 8 >"$LOGDIR/bench_pm.log" 2>&1
  PM_PAIRS=$(grep -Eo "preference model: [0-9.]+ pairs/s" "$LOGDIR/bench_pm.log" | grep -Eo "[0-9.]+" | head -1)
  in_budget && with_switches "$GEN_BEST" timeout 150 "$BUILD/hh-bench" ppo "${GPT2[@]}" --vocab 50258 \
    --batch 64 --seq 256 --prompt-len 64 --new-tokens 128 --epochs 4 --minibatch 16 --steps 2 \
    --warmup 1 >"$LOGDIR/bench_ppo.log" 2>&1
  cat "$LOGDIR/bench_ppo.log" | grep -v "^{"
  PPO_PHASES=$(awk '/^  (rollout|scoring|update|total)/ {printf "%s %ss ", $1, $2}' "$LOGDIR/bench_ppo.log")
  set -e
  : "${GEN_HH:=n/a}" "${GEN_HF:=n/a}" "${PM_PAIRS:=n/a}" "${PPO_PHASES:=n/a}"
fi

step "5d. GPT-2 interop (Hugging Face transformers on the same tokens), then the whole ctest"
HF_INTEROP="not run"; CTEST_STATUS="not run"; DEMO_STATUS="not run"
if [ -x "$BUILD/hh-chat" ] && wanted hf-interop && in_budget; then
  set +e
  # Exact fp32 matmuls (HH_CUDA_TF32=0): the check is of the weight layout, to 1e-4.
  HH_CUDA_TF32=0 timeout 60 python3 scripts/reference/check_hf_gpt2.py "$BUILD/hh-chat" --device cuda \
    >"$LOGDIR/check_hf_gpt2.log" 2>&1
  set -e
  tail -4 "$LOGDIR/check_hf_gpt2.log"
  HF_INTEROP=$(grep -Eo "max \|[^=]*= [0-9.e+-]+" "$LOGDIR/check_hf_gpt2.log" | grep -Eo "[0-9.]+e[+-][0-9]+" | tr '\n' ' ' || true)
  : "${HF_INTEROP:=failed (see check_hf_gpt2.log)}"
fi
if [ -d "$BUILD" ] && [ "${HH_GPU_SKIP_CTEST:-0}" != "1" ] && in_budget; then
  set +e
  (cd "$BUILD" && OMP_NUM_THREADS=2 timeout 120 ctest --output-on-failure -j8 --timeout 100) \
    >"$LOGDIR/ctest.log" 2>&1
  set -e
  grep -E "tests passed|tests failed|\*\*\*Failed|\*\*\*Timeout" "$LOGDIR/ctest.log" | tail -12 || true
  CTEST_STATUS=$(grep -Eo "[0-9]+% tests passed, [0-9]+ tests failed out of [0-9]+" "$LOGDIR/ctest.log" || echo "no summary (see ctest.log)")
fi

step "5e. make demo's GPU size (HH_GPU_DEMO=1; data from HH_DATA_DIR, e.g. a carried copy)"
if [ "${HH_GPU_DEMO:-0}" = "1" ] && [ -x "$BUILD/hh-ppo" ] && in_budget; then
  set +e
  rm -rf "$BUILD/demo-gpu"
  PYTHON=python3 OUT= timeout "${HH_GPU_DEMO_S:-240}" bash scripts/demo.sh --size gpu --build "$BUILD" \
    --out "$BUILD/demo-gpu" >"$LOGDIR/demo_gpu.log" 2>&1
  rc=$?
  set -e
  tail -45 "$LOGDIR/demo_gpu.log"
  DEMO_STATUS=$(grep -Eo "demo finished in [0-9]+s" "$LOGDIR/demo_gpu.log" || echo "failed or timed out (rc $rc)")
fi

step "5f. per-kernel GPU time (HH_GPU_PROFILE=1: scripts/gpu_profile.sh, Nsight Compute)"
if [ "${HH_GPU_PROFILE:-0}" = "1" ] && [ -x "$BUILD/hh-bench" ] && in_budget; then
  set +e
  # Whatever is left before HH_GPU_DEADLINE_S (default 540), so the summary still comes.
  LEFT=$(( ${HH_GPU_DEADLINE_S:-540} - ($(date +%s) - START) ))
  HH_PROFILE_DIR="$LOGDIR" HH_PROFILE_S=$(( LEFT > 40 ? LEFT : 40 )) \
    with_switches "${HH_GPU_PROFILE_SWITCHES:-$GEN_BEST}" bash scripts/gpu_profile.sh "$BUILD" 2>&1 |
    tee "$LOGDIR/profile.log"
  set -e
fi

step "6. summary"
{
  echo "| check                         | result"
  echo "|-------------------------------|-------------------------------"
  echo "| build (sm_90)                 | $BUILD_STATUS"
  echo "| GPU test suites               | $TEST_STATUS"
  echo "| whole ctest (CPU + GPU)       | $CTEST_STATUS"
  echo "| HF GPT-2 import / export err  | $HF_INTEROP"
  echo "| make demo, GPU size           | $DEMO_STATUS"
  echo "| compute-sanitizer memcheck    | $SANITIZER_STATUS"
  echo "| hh tokens/s (124M, 8x1024)    | $HH_TOKS   peak $HH_PEAK GiB"
  echo "| torch tokens/s (fp32/TF32)    | $TORCH_TOKS   peak $TORCH_PEAK GiB"
  echo "| hh HH_CUDA_FLASH=1 tokens/s    | $FLASH_TOKS   peak $FLASH_PEAK GiB"
  echo "| hh / torch (default, flash)   | $RATIO, $FLASH_RATIO"
  echo "| switches: 124M step (8x1024)  |$ATTN_SWEEP"
  echo "| switches: generate tok/s      |$GEN_SWEEP"
  echo "| shapes (ms/step, peak)        |$SHAPES"
  echo "| 124M step: single / NCCL w=1  | $SINGLE_MS ms / $NCCL1_MS ms (all-reduce +$NCCL1_PCT%)"
  echo "| generate 124M, 64x(64+128)    | hh $GEN_HH tok/s [$GEN_BEST] (no graphs ${GEN_EAGER:-n/a}); HF fp32 $GEN_HF${GEN_HF16:+; HF fp16 $GEN_HF16}"
  echo "| PM 124M, 8 pairs x 1024       | $PM_PAIRS pairs/s"
  echo "| PPO 124M, 64 x 128 new tokens | $PPO_PHASES [$GEN_BEST]"
  echo "| total time                    | $(($(date +%s) - START)) s"
} | tee "$LOGDIR/gpu_check_summary.txt"

if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  cp "$LOGDIR/gpu_check_summary.txt" "$OUT/"
  {
    echo "==================== test failures (gtest 'Failure' blocks, all logs)"
    grep -h -B2 -A14 -E "Failure$|: Failure" "$LOGDIR"/*.log 2>/dev/null | head -600 || true
    for f in "$LOGDIR"/*.log; do
      echo "==================== $(basename "$f") (last 300 lines)"
      tail -300 "$f"
    done
  } >"$OUT/gpu_check_logs.txt"
  tar -czf "$OUT/gpu_check_logs.tar.gz" -C "$LOGDIR" . 2>/dev/null || true
  if [ -d "$BUILD/demo-gpu" ]; then
    tar -czf "$OUT/demo_gpu.tar.gz" -C "$BUILD/demo-gpu" --exclude='*.safetensors' \
      --exclude='*.bin' . 2>/dev/null || true
  fi
fi

# Exit status: 0 only when the build, every GPU test and the sanitizer run were clean.
if [ "$BUILD_STATUS" = "ok" ] && [ "$GPU_FAILS" = 0 ] && [ "$GPU_RUN" -gt 0 ] &&
   [ "$SANITIZER_STATUS" = "clean" ]; then
  exit 0
fi
exit 1
