#!/usr/bin/env bash
# Runs libFuzzer targets built with -DHH_FUZZ=ON (`make fuzz`; docs/fuzzing.md).
#   scripts/fuzz.sh BUILD_DIR SECONDS TARGET...
# Each target starts from its seeds (written by the target itself, HH_FUZZ_SEEDS) and its
# regression inputs in fuzz/corpus/TARGET/, grows BUILD_DIR/corpus/TARGET/, and stops after
# SECONDS. Ends with a table; exits 1 when any target found a failing input, which
# libFuzzer saves as BUILD_DIR/crash-* (or leak-*, oom-*, timeout-*) and names.
set -uo pipefail
build=$1 seconds=$2
shift 2
mkdir -p "$build/corpus" "$build/logs"
failed=0
rows=()
for t in "$@"; do
  bin="$build/fuzz_$t"
  [ -x "$bin" ] || { echo "fuzz.sh: $bin is not built" >&2; exit 2; }
  corpus="$build/corpus/$t"
  mkdir -p "$corpus"
  log="$build/logs/$t.log"
  echo "fuzz.sh: $t for ${seconds}s (log $log)"
  # -rss_limit_mb / -malloc_limit_mb: a reader that believes a size from the file and
  # allocates gigabytes fails here as it would fail a user.
  HH_FUZZ_SEEDS="$corpus" OMP_NUM_THREADS=1 "$bin" "$corpus" "fuzz/corpus/$t" \
    -max_total_time="$seconds" -rss_limit_mb=2048 -malloc_limit_mb=1024 -timeout=10 \
    -max_len=65536 -artifact_prefix="$build/" -print_final_stats=1 >"$log" 2>&1
  rc=$?
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*')
  files=$(find "$corpus" -type f | wc -l)
  if [ $rc -ne 0 ]; then
    failed=1
    artifact=$(grep -o "Test unit written to [^ ]*" "$log" | tail -1 | sed 's/Test unit written to //')
    rows+=("$(printf '%-16s %10s %8s %8s  FAILED: %s' "$t" "${runs:-?}" "${cov:-?}" "$files" "${artifact:-see log}")")
    grep -m3 -E "fuzz: |ERROR: |SUMMARY: " "$log" | sed 's/^/    /'
  else
    rows+=("$(printf '%-16s %10s %8s %8s  ok' "$t" "${runs:-?}" "${cov:-?}" "$files")")
  fi
done
printf '%-16s %10s %8s %8s  %s\n' target runs edges corpus result
printf '%s\n' "${rows[@]}"
exit $failed
