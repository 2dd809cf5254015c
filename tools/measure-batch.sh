#!/usr/bin/env bash
# Measures the peak resident memory of 'tpconvert batch' over three
# generated checkouts of SmolLM2-135M shapes (about 1 GB of weights in all):
#
#   smollm2-bf16/   one BF16 safetensors file (270 MB) and config files
#   smollm2-f32/    F32 sharded into three files with an index (540 MB)
#   smollm2-gguf/   one GGUF file (Q8_0/Q4_0/Q4_1/F16/F32 mix)
#
# converted with --max-memory 512MiB (every projection matrix and the
# embedding through the codec), and of restoring the result. Peak RSS
# is /usr/bin/time -v's "Maximum resident set size"; the script fails if the
# batch exceeds LIMIT_MIB (default 1024).
#
#   tools/measure-batch.sh [WORKDIR]     (default /tmp/tpconvert-batch; needs ~4 GB free)
#   CODEC=int4 tools/measure-batch.sh    (default codec: f16)
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/tmp/tpconvert-batch}
codec=${CODEC:-f16}
limit_mib=${LIMIT_MIB:-1024}
# The embedding (49152 x 576, the largest tensor) is not a projection
# matrix; routing it through the codec as well makes the budget matter.
include='embed_tokens|token_embd'
mkdir -p "$work/models" bin
go build -o bin/tpconvert ./cmd/tpconvert
go build -o bin/genmodel ./tools/genmodel

m=$work/models
if [ ! -f "$m/smollm2-bf16/model.safetensors" ]; then
	mkdir -p "$m/smollm2-bf16"
	bin/genmodel -preset smollm2 -dtype bf16 -out "$m/smollm2-bf16/model.safetensors"
	echo '{"model_type": "llama", "hidden_size": 576}' >"$m/smollm2-bf16/config.json"
	echo '{"version": "1.0"}' >"$m/smollm2-bf16/tokenizer.json"
fi
if [ ! -f "$m/smollm2-f32/model.safetensors.index.json" ]; then
	bin/genmodel -preset smollm2 -dtype f32 -shard-size 200000000 -out "$m/smollm2-f32"
	echo '{"model_type": "llama", "hidden_size": 576}' >"$m/smollm2-f32/config.json"
fi
if [ ! -f "$m/smollm2-gguf/model.gguf" ]; then
	mkdir -p "$m/smollm2-gguf"
	bin/genmodel -preset smollm2 -format gguf -out "$m/smollm2-gguf/model.gguf"
	echo "# generated" >"$m/smollm2-gguf/README.md"
fi
du -sh "$m"/* | sed 's/^/input: /'

peak_mib() { # runs a command under /usr/bin/time -v, prints its peak RSS in MiB
	/usr/bin/time -v -o "$work/time.txt" "$@" >"$work/stdout.txt"
	awk -F: '/Maximum resident set size/ {printf "%d", $2 / 1024}' "$work/time.txt"
}

rm -rf "$work/out" "$work/restored"
echo "== tpconvert batch --codec $codec --include '$include' --max-memory 512MiB --workers 2"
batch=$(peak_mib bin/tpconvert batch "$m" -o "$work/out" --codec "$codec" --include "$include" --max-memory 512MiB --workers 2)
cat "$work/stdout.txt"
echo "batch: peak RSS $batch MiB (wall $(awk -F': ' '/Elapsed/ {print $2}' "$work/time.txt"))"

echo "== tpconvert restore --max-memory 512MiB --workers 2"
restore=$(peak_mib bin/tpconvert restore "$work/out" -o "$work/restored" --max-memory 512MiB --workers 2)
tail -n 1 "$work/stdout.txt"
echo "restore: peak RSS $restore MiB"

if [ "$batch" -ge "$limit_mib" ]; then
	echo "FAIL: batch peak RSS $batch MiB >= $limit_mib MiB"
	exit 1
fi
echo "OK: batch peak RSS $batch MiB < $limit_mib MiB"
