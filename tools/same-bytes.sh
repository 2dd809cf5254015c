#!/usr/bin/env bash
# Compares the output files of this tree's tpconvert with those of a
# reference binary (for example one built from an earlier commit) on the
# fixtures: every codec, --bpw 3, --bpw 4, --target-size, with and without
# --seed, and the restore of each .tpk. It prints one line per output,
# "same" or "DIFFERS", and exits 1 if any output differs. The outputs
# with --seed differ from those of a binary built before --seed reached
# rate control (commit 0d4bbb6 and earlier).
#
#   tools/same-bytes.sh REF_BINARY [WORKDIR]     (default WORKDIR /tmp/tpconvert-same)
#
# To build a reference from a commit:
#   git archive COMMIT --prefix=ref/ | tar x -C /tmp && (cd /tmp/ref && go build -o /tmp/tpconvert-ref ./cmd/tpconvert)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
ref=$1
work=${2:-/tmp/tpconvert-same}
mkdir -p "$work"
(cd "$repo" && go build -o "$work/tpconvert-new" ./cmd/tpconvert)
new=$work/tpconvert-new
fail=0
run() { # name, args...
	local name=$1
	shift
	rm -f "$work/ref-$name" "$work/new-$name"
	"$ref" "$@" --force -o "$work/ref-$name" >/dev/null 2>&1 || echo "ref failed: $name" >&2
	"$new" "$@" --force -o "$work/new-$name" >/dev/null 2>&1 || echo "new failed: $name" >&2
	if [ ! -e "$work/ref-$name" ]; then
		echo "MISSING  $name"
		fail=1
	elif cmp -s "$work/ref-$name" "$work/new-$name"; then
		echo "same     $name"
	else
		echo "DIFFERS  $name"
		fail=1
	fi
}
for fx in tiny-llama.safetensors tiny-llama.gguf; do
	in=$repo/fixtures/$fx
	base=${fx//./-}
	for c in none f16 bf16 int8 int4 lossless tenpak_x_v1 tenpak_x_v2; do
		run "$base-$c.tpk" "$in" --codec "$c"
	done
	run "$base-default.tpk" "$in"
	run "$base-seed7.tpk" "$in" --seed 7
	run "$base-bpw3.tpk" "$in" --bpw 3
	run "$base-bpw4.tpk" "$in" --bpw 4
	run "$base-bpw6-all.tpk" "$in" --bpw 6 --layers all
	run "$base-target.tpk" "$in" --target-size 700KiB
	run "$base-bpw3-seed7.tpk" "$in" --bpw 3 --seed 7
	ext=${fx##*.}
	for t in "$work"/new-"$base"-*.tpk; do
		n=$(basename "$t" .tpk)
		n=${n#new-}
		"$ref" restore "$t" --force -o "$work/ref-$n.restored.$ext" >/dev/null 2>&1 || echo "ref restore failed: $n" >&2
		"$new" restore "$t" --force -o "$work/new-$n.restored.$ext" >/dev/null 2>&1 || echo "new restore failed: $n" >&2
		if cmp -s "$work/ref-$n.restored.$ext" "$work/new-$n.restored.$ext"; then
			echo "same     $n.restored.$ext"
		else
			echo "DIFFERS  $n.restored.$ext"
			fail=1
		fi
	done
done
exit $fail
