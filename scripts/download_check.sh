#!/usr/bin/env bash
# Offline test of scripts/download_hh_rlhf.sh (a ctest): a fake hh-rlhf repository on disk,
# served to curl as file:// URLs through HH_RLHF_RAW_BASE / HH_RLHF_LFS_BASE. Checks:
#   - plain files and Git LFS pointers (object fetched, size and SHA-256 checked) arrive;
#   - harmless-{train,dev}.jsonl.gz link to harmless-base's train/test (demo.sh's names);
#   - a second run downloads nothing;
#   - a wrong LFS object, a cut-short gzip and a missing file fail with the file's name,
#     non-zero, leaving no .part file and no broken final file.
# Skips (77) without curl, gzip or sha256sum.
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in curl gzip sha256sum; do command -v "$tool" >/dev/null || exit 77; done
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
RAW="$TMP/raw" LFS="$TMP/lfs" DEST="$TMP/dest"
mkdir -p "$RAW/harmless-base" "$LFS/harmless-base"
fail() { echo "download_check: FAIL: $*" >&2; exit 1; }
pair() { printf '{"chosen": "\\n\\nHuman: %s\\n\\nAssistant: yes", "rejected": "\\n\\nHuman: %s\\n\\nAssistant: no"}\n' "$1" "$1"; }

# train: a plain file; test: an LFS pointer whose object is on the "media" server.
{ pair a; pair b; pair c; } | gzip -c >"$RAW/harmless-base/train.jsonl.gz"
{ pair d; pair e; } | gzip -c >"$LFS/harmless-base/test.jsonl.gz"
pointer() {  # pointer FILE: the Git LFS pointer text of FILE
  printf 'version https://git-lfs.github.com/spec/v1\noid sha256:%s\nsize %s\n' \
    "$(sha256sum "$1" | cut -d' ' -f1)" "$(stat -c %s "$1")"
}
pointer "$LFS/harmless-base/test.jsonl.gz" >"$RAW/harmless-base/test.jsonl.gz"

get() {
  HH_RLHF_RAW_BASE="file://$RAW" HH_RLHF_LFS_BASE="file://$LFS" \
    bash scripts/download_hh_rlhf.sh --dest "$DEST" --subsets harmless-base "$@"
}
out=$(get 2>&1) || fail "first download: $out"
echo "$out"
[ "$(gzip -dc "$DEST/harmless-train.jsonl.gz" | wc -l)" = 3 ] || fail "harmless-train.jsonl.gz"
[ "$(gzip -dc "$DEST/harmless-dev.jsonl.gz" | wc -l)" = 2 ] || fail "harmless-dev.jsonl.gz (LFS)"
cmp -s "$DEST/harmless-base/test.jsonl.gz" "$LFS/harmless-base/test.jsonl.gz" || fail "LFS object"
out=$(get 2>&1) || fail "second download: $out"
echo "$out" | grep -q "^got" && fail "the second run downloaded again: $out"

# A real file under a demo name (the shared subset, say) is kept, not replaced by a link.
rm "$DEST/harmless-dev.jsonl.gz"
printf 'mine\n' | gzip -c >"$DEST/harmless-dev.jsonl.gz"
out=$(get 2>&1) || fail "download over a kept file: $out"
[ ! -L "$DEST/harmless-dev.jsonl.gz" ] && [ "$(gzip -dc "$DEST/harmless-dev.jsonl.gz")" = mine ] ||
  fail "a real harmless-dev.jsonl.gz was replaced"
[ -L "$DEST/harmless-train.jsonl.gz" ] || fail "harmless-train.jsonl.gz is no longer a link"

# A corrupted LFS object: refused by its SHA-256, nothing left behind.
rm -rf "$DEST"
printf 'x' >>"$LFS/harmless-base/test.jsonl.gz"
if out=$(get 2>&1); then fail "a wrong LFS object was accepted"; fi
echo "$out" | grep -q "harmless-base/test.jsonl.gz: got" || fail "unclear LFS error: $out"
[ ! -e "$DEST/harmless-base/test.jsonl.gz" ] && [ ! -e "$DEST/harmless-base/test.jsonl.gz.part" ] ||
  fail "a refused LFS object left a file behind"

# A cut-short gzip (plain file): refused, nothing left behind.
rm -rf "$DEST"
head -c 20 "$RAW/harmless-base/train.jsonl.gz" >"$TMP/short" && mv "$TMP/short" "$RAW/harmless-base/train.jsonl.gz"
if out=$(get 2>&1); then fail "a cut-short gzip was accepted"; fi
echo "$out" | grep -q "harmless-base/train.jsonl.gz: not a complete gzip file" || fail "unclear gzip error: $out"
[ ! -e "$DEST/harmless-base/train.jsonl.gz" ] && [ ! -e "$DEST/harmless-base/train.jsonl.gz.part" ] ||
  fail "a cut-short gzip left a file behind"

# A file the server does not have: curl's error, non-zero.
if out=$(HH_RLHF_RAW_BASE="file://$RAW" bash scripts/download_hh_rlhf.sh --dest "$DEST" \
  --subsets helpful-base 2>&1); then fail "a missing file was accepted"; fi
echo "download_check: all checks passed"
