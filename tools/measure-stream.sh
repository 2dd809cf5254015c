#!/usr/bin/env bash
# Measures the streaming pipeline on a generated 4.1 GiB FP32 checkpoint
# (TinyLlama-1.1B shapes): peak RSS of an f16 conversion under
# --max-memory 512MiB, and the throughput of a lossless (--codec none)
# conversion and of its restore against `cp` of the same file, each the
# median of 3 runs in the same session.
#
#   tools/measure-stream.sh [WORKDIR]     (default /tmp/tpconvert-stream; needs ~15 GB free)
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/tmp/tpconvert-stream}
mkdir -p "$work" bin
go build -o bin/tpconvert ./cmd/tpconvert
go build -o bin/genmodel ./tools/genmodel
big=$work/big-f32.safetensors
[ -f "$big" ] || bin/genmodel -preset tinyllama -dtype f32 -out "$big"
size=$(stat -c %s "$big")
echo "input: $big ($size bytes)"

peak() { # prints "seconds peakKiB" of a command
	/usr/bin/time -f "%e %M" -o "$work/time.txt" "$@" >/dev/null
	cat "$work/time.txt"
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

echo "== f16, --max-memory 512MiB"
read -r secs kib < <(peak bin/tpconvert "$big" --codec f16 --max-memory 512MiB --force -o "$work/f16.tpk")
echo "f16: ${secs}s, peak RSS $((kib / 1024)) MiB"
rm -f "$work/f16.tpk"

# Warm the page cache once so every contender reads from memory.
cat "$big" >/dev/null
cp_t=() none_t=() rest_t=()
for i in 1 2 3; do
	read -r s _ < <(peak cp "$big" "$work/copy.safetensors"); cp_t+=("$s"); rm -f "$work/copy.safetensors"
	read -r s _ < <(peak bin/tpconvert "$big" --codec none --force -o "$work/none.tpk"); none_t+=("$s")
	read -r s _ < <(peak bin/tpconvert restore "$work/none.tpk" --force -o "$work/restored.safetensors"); rest_t+=("$s")
	cmp "$big" "$work/restored.safetensors"
	rm -f "$work/restored.safetensors" "$work/none.tpk"
done
cp_m=$(printf '%s\n' "${cp_t[@]}" | median)
none_m=$(printf '%s\n' "${none_t[@]}" | median)
rest_m=$(printf '%s\n' "${rest_t[@]}" | median)
echo "cp:               runs ${cp_t[*]} s, median $cp_m s ($(awk -v s="$size" -v t="$cp_m" 'BEGIN{printf "%.0f", s/t/1e6}') MB/s)"
echo "compress --codec none: runs ${none_t[*]} s, median $none_m s ($(awk -v s="$size" -v t="$none_m" 'BEGIN{printf "%.0f", s/t/1e6}') MB/s), $(awk -v a="$cp_m" -v b="$none_m" 'BEGIN{printf "%.2f", a/b}')x the speed of cp"
echo "restore:          runs ${rest_t[*]} s, median $rest_m s ($(awk -v s="$size" -v t="$rest_m" 'BEGIN{printf "%.0f", s/t/1e6}') MB/s), $(awk -v a="$cp_m" -v b="$rest_m" 'BEGIN{printf "%.2f", a/b}')x the speed of cp"
