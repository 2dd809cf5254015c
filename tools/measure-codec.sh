#!/usr/bin/env bash
# Speed and memory of tenpak_x_v1 at defaults on this machine, medians of 3:
#   - compressing the generated TinyLlama-1.1B-shaped FP16 checkpoint
#     (22 layers, hidden 2048, intermediate 5632, 32/4 heads, vocab 32000),
#   - compressing SmolLM2-135M (its Q4_1 weights dequantized to F16 by
#     tpconvert, the project's reference copy of the model),
#   - restoring the TinyLlama .tpk to FP16 safetensors (decode throughput, in
#     MB/s of FP16 output of the decoded tensors and of the whole file).
#
#   tools/measure-codec.sh [WORKDIR]     (default /tmp/tpconvert-codec; ~8 GB free)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-/tmp/tpconvert-codec}
. "$repo/tools/models.sh"

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
timeit() { # timeit OUTVAR_PREFIX cmd...: appends wall seconds and peak KiB
	/usr/bin/time -f "%e %M" -o "$work/t.txt" "$@" >/dev/null
	cat "$work/t.txt"
}

for model in "$tl" "$smol"; do
	ws=() ks=()
	for i in 1 2 3; do
		read -r s k < <(timeit bin/tpconvert "$model" --codec tenpak_x_v1 --force -o "$work/out.tpk")
		ws+=("$s"); ks+=("$k")
	done
	echo "compress $(basename "$model") (tenpak_x_v1 defaults): runs ${ws[*]} s; median $(printf '%s\n' "${ws[@]}" | median) s; peak RSS median $(( $(printf '%s\n' "${ks[@]}" | median) / 1024 )) MiB"
	bin/tpconvert inspect "$work/out.tpk" | tail -n 5
	if [ "$model" = "$tl" ]; then cp "$work/out.tpk" "$work/tinyllama.tpk"; fi
done

dec_bytes=$(bin/tpconvert inspect --json "$work/tinyllama.tpk" | python3 -c 'import json,sys; r=json.load(sys.stdin); print(sum(2*t["elems"] for t in r["tensors"] if t["compressed"]))')
ws=()
for i in 1 2 3; do
	read -r s _ < <(timeit bin/tpconvert restore "$work/tinyllama.tpk" --force -o "$work/restored.safetensors")
	ws+=("$s")
done
m=$(printf '%s\n' "${ws[@]}" | median)
total=$(stat -c %s "$work/restored.safetensors")
echo "restore tinyllama.tpk -> FP16 safetensors: runs ${ws[*]} s; median $m s;" \
	"$(awk -v b="$dec_bytes" -v t="$m" 'BEGIN{printf "%.0f", b/t/1e6}') MB/s of decoded FP16 output," \
	"$(awk -v b="$total" -v t="$m" 'BEGIN{printf "%.0f", b/t/1e6}') MB/s of file"
