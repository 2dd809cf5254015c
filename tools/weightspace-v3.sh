#!/bin/sh
# Measures tenpak_x_v3 in weight space against the llama.cpp types of
# tools/bench/fp32_results.json: codes the FP32 matrices named there with
# one step exponent k at a time (no rate control), then interpolates the
# SQNR of the sweep at each type's bits per weight (every payload byte
# counted) and prints the margin over the type and the distance to the
# Gaussian bound (6.02 dB per bit).
#
#   tools/weightspace-v3.sh MODEL.safetensors [K ...]
#
# MODEL is the all-MiniLM-L6-v2 FP32 checkpoint the JSON was measured on.
set -eu
model=$1
shift
ks=${*:-"-8 -4 0 2 4 6 8 10 12 14 16 18 20 22 24 26 28 30 32 34 36 38 40 44 48 52 56"}
cd "$(dirname "$0")/.."
go build -o bin/weightspace ./tools/weightspace
pattern=$(python3 -c 'import json; print(json.load(open("tools/bench/fp32_results.json"))["pattern"])')
codecs=""
for k in $ks; do codecs="$codecs,tenpak_x_v3:k=$k"; done
out=$(bin/weightspace -layers none -include "$pattern" -codecs "${codecs#,}" -header "$model")
echo "$out"
echo
echo "$out" | python3 -c '
import json, sys
rows = []
for line in sys.stdin:
    f = [c.strip() for c in line.split("|")]
    if len(f) > 6 and f[4].startswith("tenpak_x_v3:k="):
        rows.append((float(f[5]), float(f[6])))
rows.sort()
ref = json.load(open("tools/bench/fp32_results.json"))["rows"]
def at(b):
    for (b0, s0), (b1, s1) in zip(rows, rows[1:]):
        if b0 <= b <= b1:
            return s0 + (s1 - s0) * (b - b0) / (b1 - b0)
    return None
print("| type | bits/weight | type SQNR dB | v3 SQNR dB at those bits | v3 − type dB | Gaussian bound dB | v3 gap to bound dB |")
print("|---|---:|---:|---:|---:|---:|---:|")
for r in ref:
    s = at(r["bpw"])
    if s is None:
        print("| %s | %.4g | %.2f | outside the sweep | | | |" % (r["type"], r["bpw"], r["sqnr_db"]))
        continue
    bound = 20 * 0.30102999566 * r["bpw"]
    print("| %s | %.4g | %.2f | %.2f | %+.2f | %.2f | %.2f |" % (r["type"], r["bpw"], r["sqnr_db"], s, s - r["sqnr_db"], bound, bound - s))
'
