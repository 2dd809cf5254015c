#!/usr/bin/env bash
# Measures tenpak_x_v3's speed and memory (issue "TenPak-X v3", done-when 4),
# every figure the median of $RUNS runs (default 3), the runs of each pair
# alternating, all in one invocation:
#
#   1. compressing SmolLM2-135M's F16 baseline (the quality benchmark's:
#      its Q4_1 GGUF dequantized to F16 by tpconvert) with tenpak_x_v3 at
#      --bpw 3, 4.5 and 6 and at --target-size of llama.cpp's Q4_K_M file,
#      against llama.cpp's llama_model_quantize to Q4_K_M of the same file
#      (tools/bench/quantize.py, default parameters, no importance matrix),
#      both with 2 threads;
#   2. --codec tenpak_x_v3 --bpw 4 --max-memory 512MiB of the generated
#      TinyLlama-shaped FP16 checkpoint (tools/genmodel -preset tinyllama
#      -dtype f16): wall time and peak RSS;
#   3. restoring that .tpk to F16 safetensors, against cp of the restored
#      file (tpconvert syncs its output before renaming it into place, so
#      cp is timed with and without a sync of its copy; cp copies inside
#      the kernel with copy_file_range, so dd with 8 MiB blocks, which
#      reads and writes through user memory as a writer of computed bytes
#      must, is timed too) and, with BASE, against the binary of commit
#      BASE restoring the same file (its output must be the same bytes).
#
#   tools/measure-v3speed.sh [WORKDIR]   (default /tmp/tpconvert-v3speed; ~8 GB free)
#   SMOL=path/to/baseline-f16.gguf  reuse the benchmark's baseline instead of
#     making one from .bench-cache/model/SmolLM2-135M-Instruct.Q4_1.gguf
#     (tools/bench/setup.sh downloads it)
#   BENCH_VENV  the benchmark's venv, for llama-cpp-python (default .venv-bench)
#   TL_PRESET   the generated checkpoint's preset (default tinyllama; tiny
#     for a quick check of the script)
#   TL_MEM      --max-memory of part 2 (default 512MiB)
#   PARTS       which parts to run (default "smol tl": part 1, parts 2 and 3)
#   BASE        a commit whose binary is timed too (default none): at
#     --bpw 4.5 in part 1, alternating with this tree's (whose --bpw 4.5 row
#     then has twice the runs), and restoring in part 3; its outputs must
#     be the same bytes
#
# The machine is shared: run it when nothing else runs and read the medians
# as such.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
work=${1:-/tmp/tpconvert-v3speed}
runs=${RUNS:-3}
venv=${BENCH_VENV:-$repo/.venv-bench}
py=$venv/bin/python
mkdir -p "$work" bin
go build -o bin/tpconvert ./cmd/tpconvert
go build -o bin/genmodel ./tools/genmodel
tp=$repo/bin/tpconvert
base=${BASE:-}
if [[ -n $base ]]; then
	rm -rf "$work/base-src" && mkdir -p "$work/base-src"
	git archive "$base" | tar -x -C "$work/base-src"
	(cd "$work/base-src" && go build -o "$work/tpconvert-base" ./cmd/tpconvert)
fi

# timed LABEL CMD...: one run; appends "wall_s peak_rss_kib" to $work/LABEL.t
timed() {
	local label=$1
	shift
	/usr/bin/time -f "%e %M" -o "$work/.t" "$@" >/dev/null 2>"$work/$label.log" || {
		echo "measure-v3speed: $label failed:" >&2
		tail -5 "$work/$label.log" >&2
		exit 1
	}
	cat "$work/.t" >>"$work/$label.t"
}
# median LABEL COLUMN
median() { sort -n -k"$2" "$work/$1.t" | awk -v c="$2" '{v[NR]=$c} END {print v[int((NR+1)/2)]}'; }
maxof() { sort -n -k"$2" "$work/$1.t" | tail -1 | awk -v c="$2" '{print $c}'; }
row() { printf '| %s | %s | %s | %s |\n' "$1" "$(median "$2" 1)" "$(maxof "$2" 2 | awk '{printf "%.0f", $1/1024}')" "$3"; }
rm -f "$work"/*.t

echo "== machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD)"

parts=" ${PARTS:-smol tl} "
tlmem=${TL_MEM:-512MiB}

# ---- 1. SmolLM2
if [[ $parts == *" smol "* ]]; then
[[ -x $py ]] || { echo "measure-v3speed: no venv at $venv (run tools/bench/setup.sh or set BENCH_VENV)" >&2; exit 1; }
smol=${SMOL:-}
if [[ -z $smol ]]; then
	src=$repo/.bench-cache/model/SmolLM2-135M-Instruct.Q4_1.gguf
	[[ -f $src ]] || { echo "measure-v3speed: $src missing: run tools/bench/setup.sh" >&2; exit 1; }
	smol=$work/smollm2-f16.gguf
	if [[ ! -f $smol ]]; then
		"$tp" compress "$src" --codec none -o "$work/smol-none.tpk" --force >/dev/null 2>&1
		"$tp" restore "$work/smol-none.tpk" --dequantize f16 -o "$smol" --force >/dev/null 2>&1
		rm -f "$work/smol-none.tpk"
	fi
fi
for i in $(seq "$runs"); do
	timed llama-q4km "$py" tools/bench/quantize.py "$smol" "$work/q4km.gguf" Q4_K_M 2
	size=$(stat -c %s "$work/q4km.gguf")
	for b in 3 4.5 6; do
		timed "v3-bpw$b" "$tp" compress "$smol" --codec tenpak_x_v3 --bpw "$b" --workers 2 -o "$work/smol-v3.tpk" --force
	done
	timed v3-q4km "$tp" compress "$smol" --codec tenpak_x_v3 --target-size "$size" --workers 2 -o "$work/smol-v3.tpk" --force
	if [[ -n $base ]]; then
		timed v3-bpw4.5 "$tp" compress "$smol" --codec tenpak_x_v3 --bpw 4.5 --workers 2 -o "$work/smol-v3.tpk" --force
		timed base-bpw4.5 "$work/tpconvert-base" compress "$smol" --codec tenpak_x_v3 --bpw 4.5 --workers 2 -o "$work/smol-base.tpk" --force
		cmp "$work/smol-v3.tpk" "$work/smol-base.tpk" || { echo "measure-v3speed: $base compresses to other bytes" >&2; exit 1; }
	fi
done
q=$(median llama-q4km 1)
echo
echo "SmolLM2-135M-Instruct F16 baseline ($(stat -c %s "$smol") bytes), 2 threads, medians of $runs:"
echo
echo '| run | wall s | peak RSS MiB | vs llama.cpp Q4_K_M |'
echo '|---|---:|---:|---:|'
row "llama_model_quantize Q4_K_M" llama-q4km "1.00×"
labels="v3-bpw3 v3-bpw4.5 v3-bpw6 v3-q4km"
[[ -z $base ]] || labels+=" base-bpw4.5"
for l in $labels; do
	case $l in
	base-*) name="tpconvert of $base --codec tenpak_x_v3 ${l#base-}" ;;
	*) name="tpconvert --codec tenpak_x_v3 ${l#v3-}" ;;
	esac
	row "$name" "$l" "$(awk -v a="$(median "$l" 1)" -v b="$q" 'BEGIN {printf "%.2f×", a/b}')"
done
rm -f "$work/q4km.gguf" "$work/smol-v3.tpk" "$work/smol-base.tpk"
fi
[[ $parts == *" tl "* ]] || exit 0

# ---- 2. TinyLlama-shaped FP16, --bpw 4 at --max-memory $tlmem
preset=${TL_PRESET:-tinyllama}
tl=$work/$preset-f16.safetensors
[[ -f $tl ]] || bin/genmodel -preset "$preset" -dtype f16 -out "$tl"
for i in $(seq "$runs"); do
	timed tl-bpw4 "$tp" compress "$tl" --codec tenpak_x_v3 --bpw 4 --max-memory "$tlmem" -o "$work/tl.tpk" --force
done
echo
echo "$preset-shaped FP16 checkpoint ($(stat -c %s "$tl") bytes), --codec tenpak_x_v3 --bpw 4 --max-memory $tlmem, medians of $runs:"
echo
echo '| run | wall s | peak RSS MiB | target |'
echo '|---|---:|---:|---:|'
row "compress" tl-bpw4 "≤ 90 s, ≤ 1024 MiB"
"$tp" inspect "$work/tl.tpk" 2>/dev/null | grep -m1 -i 'bits/param\|bits/weight' || true

# ---- 3. restore to F16 safetensors against cp
for i in $(seq "$runs"); do
	timed tl-restore "$tp" restore "$work/tl.tpk" --dtype f16 -o "$work/tl-restored.safetensors" --force
	rm -f "$work/cp.safetensors"
	timed cp cp "$work/tl-restored.safetensors" "$work/cp.safetensors"
	rm -f "$work/cp.safetensors"
	timed cp-sync sh -c 'cp "$1" "$2" && sync "$2"' sh "$work/tl-restored.safetensors" "$work/cp.safetensors"
	rm -f "$work/cp.safetensors"
	timed dd dd if="$work/tl-restored.safetensors" of="$work/cp.safetensors" bs=8M
	rm -f "$work/cp.safetensors"
	if [[ -n $base ]]; then
		timed base-restore "$work/tpconvert-base" restore "$work/tl.tpk" --dtype f16 -o "$work/base-restored.safetensors" --force
		cmp "$work/tl-restored.safetensors" "$work/base-restored.safetensors" || { echo "measure-v3speed: $base restores other bytes" >&2; exit 1; }
		rm -f "$work/base-restored.safetensors"
	fi
done
out=$(stat -c %s "$work/tl-restored.safetensors")
mbs() { awk -v n="$out" -v s="$(median "$1" 1)" 'BEGIN {printf "%.0f", n/s/1048576}'; }
echo
echo "restore of that .tpk to F16 safetensors ($out bytes written), medians of $runs:"
echo
echo '| run | wall s | peak RSS MiB | MiB/s |'
echo '|---|---:|---:|---:|'
row "tpconvert restore --dtype f16" tl-restore "$(mbs tl-restore)"
row "cp of the restored file" cp "$(mbs cp)"
row "cp, then sync of the copy" cp-sync "$(mbs cp-sync)"
row "dd bs=8M (read and write through user memory)" dd "$(mbs dd)"
[[ -z $base ]] || row "tpconvert restore --dtype f16 of $base" base-restore "$(mbs base-restore)"
awk -v a="$(median tl-restore 1)" -v b="$(median cp 1)" -v c="$(median cp-sync 1)" -v d="$(median dd 1)" \
	'BEGIN {printf "\nrestore throughput: %.2f× cp, %.2f× cp+sync, %.2f× dd (target ≥ 0.5× cp)\n", b/a, c/a, d/a}'
rm -f "$work/tl-restored.safetensors" "$work/tl.tpk"
