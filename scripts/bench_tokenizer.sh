#!/usr/bin/env bash
# Tokenizer encoding speed, one thread, GPT-2 vocabulary, HH dialogue text (chosen +
# rejected of harmless-train): hh-bpe vs tiktoken's npm package (tiktoken's Rust core in
# WebAssembly) side by side on the same texts, encoded one dialogue at a time.
#
#   scripts/bench_tokenizer.sh            # uses build/hh-bpe (built if missing)
#   HHBPE=build-x/hh-bpe DATA=../shared/data scripts/bench_tokenizer.sh
#
# Needs node + npm (npm install tiktoken goes into a temporary folder). Prints one JSON
# line per tokenizer, then the ratio. Each side's best of 3 runs is reported; hh-bpe starts
# every run in a fresh process (cold pre-token cache).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD:-$ROOT/build}
DATA=${DATA:-$ROOT/../shared/data}
HHBPE=${HHBPE:-$BUILD/hh-bpe}
INPUT=${INPUT:-$DATA/hh-rlhf/harmless-train.jsonl.gz}
RUNS=${RUNS:-3}

[ -f "$INPUT" ] || { echo "bench_tokenizer: missing $INPUT" >&2; exit 1; }
if [ ! -x "$HHBPE" ]; then
  cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build "$BUILD" --target hh-bpe -j2
fi
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

"$HHBPE" import-gpt2 --encoder "$DATA/gpt2/encoder.json" --vocab "$DATA/gpt2/vocab.bpe" \
  --out "$TMP/gpt2.bin" 2>/dev/null

cat > "$TMP/bench.mjs" <<'JS'
// Writes the texts as {"text": ...} lines for hh-bpe, then times tiktoken on them.
import { get_encoding } from "tiktoken";
import fs from "fs";
import zlib from "zlib";
const [input, textsOut, idsOut, runs] = process.argv.slice(2);
const texts = [];
for (const line of zlib.gunzipSync(fs.readFileSync(input)).toString("utf8").split("\n")) {
  if (!line.trim()) continue;
  const row = JSON.parse(line);
  texts.push(row.chosen, row.rejected);
}
fs.writeFileSync(textsOut, texts.map((t) => JSON.stringify({ text: t })).join("\n") + "\n");
const enc = get_encoding("gpt2");
let bytes = 0;
for (const t of texts) bytes += Buffer.byteLength(t, "utf8");
let best = Infinity, tokens = 0;
for (let r = 0; r < Number(runs); ++r) {
  tokens = 0;
  const t0 = process.hrtime.bigint();
  for (const t of texts) tokens += enc.encode_ordinary(t).length;
  best = Math.min(best, Number(process.hrtime.bigint() - t0) / 1e9);
}
fs.writeFileSync(idsOut, texts.map((t) => JSON.stringify(Array.from(enc.encode_ordinary(t)))).join("\n") + "\n");
enc.free();
console.log(JSON.stringify({ tokenizer: "tiktoken-npm", bytes, tokens, seconds: best,
                             mb_per_s: bytes / 1e6 / best }));
JS
(cd "$TMP" && npm install --silent --no-audit --no-fund tiktoken >/dev/null 2>&1) || {
  echo "bench_tokenizer: npm install tiktoken failed" >&2; exit 1; }
TIKTOKEN=$(cd "$TMP" && node bench.mjs "$INPUT" "$TMP/texts.jsonl" "$TMP/tiktoken_ids.jsonl" "$RUNS")

HH=""
for _ in $(seq "$RUNS"); do
  line=$("$HHBPE" encode --tokenizer "$TMP/gpt2.bin" --jsonl --stats <"$TMP/texts.jsonl" 2>&1 >"$TMP/hh_ids.jsonl" | tail -1)
  HH=$(printf '%s\n%s\n' "$HH" "$line")
done
HH=$(printf '%s\n' "$HH" | node -e '
  const rows = require("fs").readFileSync(0, "utf8").split("\n").filter(Boolean).map(JSON.parse);
  const best = rows.reduce((a, b) => (b.seconds < a.seconds ? b : a));
  console.log(JSON.stringify({ tokenizer: "hh-bpe", bytes: best.bytes, tokens: best.tokens,
                               seconds: best.seconds, mb_per_s: best.mb_per_s }));')
SAME_IDS=false
cmp -s "$TMP/hh_ids.jsonl" "$TMP/tiktoken_ids.jsonl" && SAME_IDS=true
echo "$HH"
echo "$TIKTOKEN"
node -e '
  const [hh, tk] = process.argv.slice(1, 3).map(JSON.parse);
  const same = process.argv[3] === "true";
  console.log(JSON.stringify({ cpu: require("os").cpus()[0].model, threads: 1,
    speedup_vs_tiktoken_npm: +(hh.mb_per_s / tk.mb_per_s).toFixed(2), identical_ids: same }));
  if (!same) process.exit(1);' "$HH" "$TIKTOKEN" "$SAME_IDS"
