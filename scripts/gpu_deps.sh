#!/usr/bin/env bash
# Prepares what scripts/gpu_check.sh may need on a GPU machine that cannot download
# anything: a GoogleTest source tree (from Debian's googletest package, /usr/src/googletest)
# in build-gpu-deps/googletest, and zlib's headers + static library (zlib1g-dev) in
# build-gpu-deps/zlib, used only when the machine has no zlib development files. build-gpu-deps/ is git-ignored (/build*/), so the remote
# tool must carry it: run(command="bash scripts/gpu_check.sh", carry=["build-gpu-deps"]).
set -euo pipefail
SRC="${1:-/usr/src/googletest}"
DEST="build-gpu-deps/googletest"
[ -f "$SRC/CMakeLists.txt" ] || { echo "no googletest source at $SRC (apt-get install googletest)"; exit 1; }
rm -rf "$DEST"
mkdir -p build-gpu-deps
cp -r "$SRC" "$DEST"
echo "copied $SRC to $DEST ($(du -sh "$DEST" | cut -f1)); carry build-gpu-deps to the GPU machine"
if [ -f /usr/include/zlib.h ] && [ -f /usr/lib/x86_64-linux-gnu/libz.a ]; then
  mkdir -p build-gpu-deps/zlib/include build-gpu-deps/zlib/lib
  cp /usr/include/zlib.h /usr/include/zconf.h build-gpu-deps/zlib/include/
  cp /usr/lib/x86_64-linux-gnu/libz.a build-gpu-deps/zlib/lib/
  echo "copied zlib headers and libz.a to build-gpu-deps/zlib"
else
  echo "no zlib development files here (apt-get install zlib1g-dev); skipped"
fi
