#!/usr/bin/env bash
# The project's test command: formatting, go vet, every Go test under the
# race detector, each fuzz target for a short time on its seed corpus, and
# the benchmark tooling's unit tests (in a private virtualenv with pinned
# requirements). Set FUZZTIME to change the per-target fuzzing time.
set -euo pipefail
cd "$(dirname "$0")/.."
fuzztime=${FUZZTIME:-10s}

echo "== gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then
	echo "gofmt would change:"; echo "$unformatted"; exit 1
fi

echo "== go vet"
go vet ./...

echo "== go test -race"
go test -race -timeout 30m ./...

echo "== fuzz targets ($fuzztime each, on their seed corpora and beyond)"
tools/fuzz-all.sh "$fuzztime"

echo "== benchmark tooling tests (python)"
if [ ! -x .venv-test/bin/python ]; then
	python3 -m venv .venv-test
fi
.venv-test/bin/pip install -q --disable-pip-version-check -r tools/bench/requirements-test.txt
.venv-test/bin/python -m pytest -q tools/bench
