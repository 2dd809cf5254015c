#!/usr/bin/env bash
# Rate control of tenpak_x_v2 on this machine:
#   - accuracy: SmolLM2-135M (its Q4_1 weights dequantized to F16 by
#     tpconvert, the project's reference copy of the model) compressed with
#     --bpw B for B in 2.5 3 3.5 4 5 6; whole-file bits per parameter
#     achieved and its deviation from B; wall time and peak RSS of each run;
#   - speed: the generated TinyLlama-1.1B-shaped FP16 checkpoint at --bpw 4,
#     median of RUNS runs (default 3), with peak RSS.
#
#   tools/measure-rate.sh [WORKDIR]     (default /tmp/tpconvert-codec; ~4 GB free)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-/tmp/tpconvert-codec}
runs=${RUNS:-3}
. "$repo/tools/models.sh"

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
bpw_of() { python3 -c 'import json,sys; print("%.4f" % json.load(open(sys.argv[1]))["totals"]["bpw_all"])' "$1"; }

echo "SmolLM2-135M (dequantized Q4_1 -> F16), tenpak_x_v2 --bpw B"
printf '| requested B | achieved bits/param | deviation | file bytes | wall s | peak RSS MiB |\n|---:|---:|---:|---:|---:|---:|\n'
for b in 2.5 3 3.5 4 5 6; do
	/usr/bin/time -f "%e %M" -o "$work/t.txt" bin/tpconvert "$smol" --bpw "$b" --json --force -o "$work/rate.tpk" >"$work/rate.json"
	read -r s k <"$work/t.txt"
	got=$(bpw_of "$work/rate.json")
	dev=$(python3 -c "print('%+.2f %%' % (100 * ($got / $b - 1)))")
	printf '| %s | %s | %s | %d | %s | %d |\n' "$b" "$got" "$dev" "$(stat -c %s "$work/rate.tpk")" "$s" $((k / 1024))
done

ws=() ks=()
for i in $(seq "$runs"); do
	/usr/bin/time -f "%e %M" -o "$work/t.txt" bin/tpconvert "$tl" --bpw 4 --json --force -o "$work/rate-tl.tpk" >"$work/rate-tl.json"
	read -r s k <"$work/t.txt"
	ws+=("$s"); ks+=("$k")
done
echo
echo "TinyLlama-shaped FP16 (generated), tenpak_x_v2 --bpw 4: $(bpw_of "$work/rate-tl.json") bits/param; runs ${ws[*]} s; median $(printf '%s\n' "${ws[@]}" | median) s; peak RSS median $(( $(printf '%s\n' "${ks[@]}" | median) / 1024 )) MiB (load average $(cut -d' ' -f1-3 /proc/loadavg))"
