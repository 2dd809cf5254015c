#!/usr/bin/env bash
# Prints the SHA-256 of every output file tpconvert writes for the bundled
# fixtures: compress with every codec and with --bpw 3 (both fixtures),
# restore of each, and a batch of two checkouts with its restore (run.json
# left out: it records times and hosts). Run it in two checkouts and diff
# the outputs to show that a change leaves every output byte as it was:
#
#   tools/output-hashes.sh [WORKDIR] > a.sha    (default: a fresh temporary directory)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-$(mktemp -d "${TMPDIR:-/tmp}/output-hashes.XXXXXX")}
rm -rf "$out"
mkdir -p "$out"
go build -o "$out/tpconvert" ./cmd/tpconvert
T=$out/tpconvert
for f in fixtures/tiny-llama.safetensors fixtures/tiny-llama.gguf; do
	b=$(basename "$f")
	for c in tenpak_x_v2 tenpak_x_v1 int8 int4 f16 bf16 lossless none; do
		"$T" "$f" --codec "$c" -o "$out/$b.$c.tpk" --force >/dev/null 2>&1
		"$T" restore "$out/$b.$c.tpk" -o "$out/$b.$c.restored.${b##*.}" >/dev/null 2>&1
	done
	"$T" "$f" --bpw 3 -o "$out/$b.bpw3.tpk" --force >/dev/null 2>&1
	"$T" restore "$out/$b.bpw3.tpk" -o "$out/$b.bpw3.restored.${b##*.}" >/dev/null 2>&1
done
mkdir -p "$out/src/m1" "$out/src/m2"
cp fixtures/tiny-llama.safetensors "$out/src/m1/"
echo '{"a":1}' >"$out/src/m1/config.json"
cp fixtures/tiny-llama.gguf "$out/src/m2/"
"$T" batch "$out/src" -o "$out/batch" --codec int4 >/dev/null 2>&1
"$T" restore "$out/batch" -o "$out/batch.restored" >/dev/null 2>&1
rm -f "$T"
cd "$out" && find . -type f ! -name run.json | LC_ALL=C sort | xargs sha256sum
