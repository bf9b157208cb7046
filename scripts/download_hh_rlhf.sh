#!/usr/bin/env bash
# Fetches the full public HH-RLHF preference data (Bai et al. 2022) from
# github.com/anthropics/hh-rlhf into a folder, one file per subset and split:
#
#   DEST/harmless-base/{train,test}.jsonl.gz
#   DEST/helpful-base/{train,test}.jsonl.gz
#   DEST/helpful-online/{train,test}.jsonl.gz
#   DEST/helpful-rejection-sampled/{train,test}.jsonl.gz
#
# and, with harmless-base, the names make demo reads (links into harmless-base, its test
# split as the dev set), so `scripts/demo.sh --data DEST` runs on the full harmless data:
#
#   DEST/harmless-train.jsonl.gz -> harmless-base/train.jsonl.gz
#   DEST/harmless-dev.jsonl.gz   -> harmless-base/test.jsonl.gz
#
# (a regular file already under one of those names is kept, never replaced by a link).
# Usage: scripts/download_hh_rlhf.sh --dest DIR [--ref master] [--subsets "harmless-base helpful-base"]
#
# The repository keeps its data in Git LFS, so raw.githubusercontent.com may answer with
# a small LFS pointer ("version https://git-lfs..., oid sha256:..., size N") instead of the
# data. The script then downloads the object from media.githubusercontent.com and checks
# its size and SHA-256 against the pointer. Every file is also checked with `gzip -t`, so
# a cut-short download fails here rather than in hh-prepare. Files that already pass the
# checks are not downloaded again. Needs curl, gzip and sha256sum.
#
# Then, for example:
#   hh-prepare pm --input DIR/helpful-base/train.jsonl.gz --tokenizer tok.bin --out hb.pm.bin
# (the red-team-attempts transcripts in the same repository are not preference pairs and
# are not fetched.)
set -euo pipefail

dest=""
ref="master"
subsets="harmless-base helpful-base helpful-online helpful-rejection-sampled"
while [ $# -gt 0 ]; do
  case "$1" in
    --dest) dest="$2"; shift 2 ;;
    --dest=*) dest="${1#*=}"; shift ;;
    --ref) ref="$2"; shift 2 ;;
    --ref=*) ref="${1#*=}"; shift ;;
    --subsets) subsets="$2"; shift 2 ;;
    --subsets=*) subsets="${1#*=}"; shift ;;
    -h|--help) sed -n '2,29p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "download_hh_rlhf.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
if [ -z "$dest" ]; then
  echo "download_hh_rlhf.sh: --dest DIR is required (see --help)" >&2
  exit 2
fi
for tool in curl gzip sha256sum; do
  command -v "$tool" >/dev/null || { echo "download_hh_rlhf.sh: needs $tool" >&2; exit 1; }
done

repo="anthropics/hh-rlhf"
# HH_RLHF_RAW_BASE / HH_RLHF_LFS_BASE override the servers (mirrors, offline tests).
raw_base="${HH_RLHF_RAW_BASE:-https://raw.githubusercontent.com/$repo/$ref}"
lfs_base="${HH_RLHF_LFS_BASE:-https://media.githubusercontent.com/media/$repo/$ref}"
part=""
curl_opts=(--fail --location --silent --show-error --retry 3 --retry-delay 2)

# fail MESSAGE: drops the partial download and stops.
fail() {
  rm -f "$part"
  echo "download_hh_rlhf.sh: $1" >&2
  exit 1
}

# fetch REL_PATH: downloads one file into $dest/REL_PATH (atomically: .part, then mv).
fetch() {
  local rel="$1" out="$dest/$1"
  part="$dest/$1.part"
  mkdir -p "$(dirname "$out")"
  if [ -s "$out" ] && gzip -t "$out" 2>/dev/null; then
    echo "have  $rel ($(stat -c %s "$out") bytes)"
    return 0
  fi
  curl "${curl_opts[@]}" -o "$part" "$raw_base/$rel"
  if head -c 40 "$part" | grep -q '^version https://git-lfs'; then
    # An LFS pointer: fetch the object it names and check it against the pointer.
    local oid size
    oid=$(sed -n 's/^oid sha256:\([0-9a-f]\{64\}\)$/\1/p' "$part")
    size=$(sed -n 's/^size \([0-9]\{1,\}\)$/\1/p' "$part")
    if [ -z "$oid" ] || [ -z "$size" ]; then fail "$rel: unreadable LFS pointer"; fi
    curl "${curl_opts[@]}" -o "$part" "$lfs_base/$rel"
    local got_size got_oid
    got_size=$(stat -c %s "$part")
    got_oid=$(sha256sum "$part" | cut -d' ' -f1)
    if [ "$got_size" != "$size" ] || [ "$got_oid" != "$oid" ]; then
      fail "$rel: got $got_size bytes sha256 $got_oid, expected $size bytes sha256 $oid"
    fi
  fi
  if ! gzip -t "$part" 2>/dev/null; then
    fail "$rel: not a complete gzip file (download cut short?)"
  fi
  mv "$part" "$out"
  echo "got   $rel ($(stat -c %s "$out") bytes, $(gzip -dc "$out" | wc -l) pairs)"
}

for subset in $subsets; do
  for split in train test; do
    fetch "$subset/$split.jsonl.gz"
  done
  if [ "$subset" = harmless-base ]; then
    for pair in train:train dev:test; do
      link="$dest/harmless-${pair%%:*}.jsonl.gz"
      # Only a missing name or an earlier link: a real file there (the shared subset, say)
      # is someone's data and stays.
      if [ -e "$link" ] && [ ! -L "$link" ]; then
        echo "keep  $link (a file, not a link: left as it is)"
      else
        ln -sfn "harmless-base/${pair##*:}.jsonl.gz" "$link"
        echo "link  $(basename "$link") -> harmless-base/${pair##*:}.jsonl.gz"
      fi
    done
  fi
done
echo "HH-RLHF in $dest"
