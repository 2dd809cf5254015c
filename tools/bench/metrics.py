"""Pure numeric and formatting helpers for the quality benchmark.

Nothing here touches llama.cpp, tpconvert or the file system, so every
function can be unit-tested with numpy alone (see test_bench.py).

Conventions used throughout:

* logits and log-probabilities are 2-D arrays ``[positions, vocab]``;
* a window of ``n`` tokens ``t[0..n-1]`` is scored on tokens ``t[1..n-1]``:
  the row at position ``i`` predicts token ``t[i+1]`` (all tokens but the
  first are scored, each with all the context to its left inside the window);
* KL divergence is ``KL(P_base || P_cand) = sum_v P_base(v) (log P_base(v) -
  log P_cand(v))`` in nats, per scored position;
* SQNR is ``10 log10(sum x^2 / sum (x - x_hat)^2)`` in dB.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

BEGIN_MARKER = "<!-- bench:begin -->"
END_MARKER = "<!-- bench:end -->"


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Return log-softmax over the last axis, computed in float64."""
    x = np.asarray(logits, dtype=np.float64)
    m = x.max(axis=-1, keepdims=True)
    z = x - m
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def token_nll(logp: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Return -log p(target) for each row of log-probabilities ``logp``."""
    targets = np.asarray(targets, dtype=np.int64)
    if logp.ndim != 2 or targets.shape != (logp.shape[0],):
        raise ValueError(f"shape mismatch: logp {logp.shape}, targets {targets.shape}")
    return -logp[np.arange(logp.shape[0]), targets]


def kl_rows(base_logp: np.ndarray, cand_logp: np.ndarray, base_p: np.ndarray | None = None) -> np.ndarray:
    """Return KL(P_base || P_cand) per row, in nats (clamped at 0).

    ``base_p`` may pass exp(base_logp) when it has already been computed.
    """
    if base_logp.shape != cand_logp.shape:
        raise ValueError(f"shape mismatch: {base_logp.shape} vs {cand_logp.shape}")
    if base_p is None:
        base_p = np.exp(base_logp)
    kl = (base_p * (base_logp - cand_logp)).sum(axis=-1)
    # Rounding can make an exact match come out as -1e-17.
    return np.maximum(kl, 0.0)


def windows(n_tokens: int, n_ctx: int, limit: int | None = None) -> list[tuple[int, int]]:
    """Return non-overlapping ``(start, end)`` windows of exactly ``n_ctx`` tokens.

    Windows start at token 0 and follow each other without gaps; a trailing
    partial window is dropped. ``limit`` keeps only the first windows.
    """
    if n_ctx < 2:
        raise ValueError("n_ctx must be at least 2")
    n = n_tokens // n_ctx
    if limit is not None:
        n = min(n, max(limit, 0))
    return [(i * n_ctx, (i + 1) * n_ctx) for i in range(n)]


@dataclass
class Window:
    """Per-token measurements of one candidate on one window."""

    nll: np.ndarray  # candidate's -log p(target), nats
    base_nll: np.ndarray  # baseline's -log p(target), nats
    kl: np.ndarray  # KL(P_base || P_cand) per position, nats
    top1: np.ndarray  # bool: argmax of candidate == argmax of baseline


def _lse_rows(x: np.ndarray, buf: np.ndarray | None = None) -> np.ndarray:
    """Row-wise log-sum-exp of float32 logits, accumulated in float64.

    exp(x - max) is evaluated in float32 (values in (0, 1], relative error
    ~1e-7) and summed in float64, so the result is accurate to ~1e-7 nats.
    """
    m = x.max(axis=-1, keepdims=True)
    if buf is None:
        buf = np.empty_like(x)
    np.subtract(x, m, out=buf)
    np.exp(buf, out=buf)
    return m[:, 0].astype(np.float64) + np.log(buf.sum(axis=-1, dtype=np.float64))


class BaseWindow:
    """The baseline's next-token distributions for one window, computed once
    and shared by every candidate scored on that window.

    Large passes run in float32, sums in float64. With logits x (baseline b,
    candidate c) and row log-sum-exp L, log p = x - L, so

        KL(P_b || P_c) = sum_v p_b(v) (x_b(v) - x_c(v)) - (L_b - L_c)

    where x_b - x_c is exact in float32 for close logits and the sum runs in
    float64: the error stays near 1e-7 nats, well below the KL divergences
    being measured, at half the memory traffic of a float64 evaluation.
    """

    def __init__(self, base_logits: np.ndarray, tokens: Sequence[int], buf: np.ndarray | None = None):
        """``buf``, a float32 scratch array of the logits' shape, may be
        shared by several windows that are scored one after another (it
        saves one array per window when every window is kept)."""
        self.tokens = np.asarray(tokens, dtype=np.int64)
        n = self.tokens.shape[0]
        if n < 2:
            raise ValueError("a window needs at least 2 tokens")
        if base_logits.ndim != 2 or base_logits.shape[0] < n - 1:
            raise ValueError(f"need {n - 1} rows of logits, got {base_logits.shape}")
        self.x = np.array(base_logits[: n - 1], dtype=np.float32)  # own copy
        if buf is not None and (buf.shape != self.x.shape or buf.dtype != np.float32):
            raise ValueError(f"scratch buffer {buf.dtype} {buf.shape}, need float32 {self.x.shape}")
        self._buf = np.empty_like(self.x) if buf is None else buf
        self.lse = _lse_rows(self.x, self._buf)
        self.p = np.exp(self.x - self.lse[:, None].astype(np.float32))
        # Renormalise away float32 rounding of the probabilities.
        self.p /= self.p.sum(axis=-1, dtype=np.float64, keepdims=True).astype(np.float32)
        self.argmax = self.x.argmax(axis=-1)
        self.rows = np.arange(n - 1)
        self.nll = self.lse - self.x[self.rows, self.tokens[1:]].astype(np.float64)

    def score(self, cand_logits: np.ndarray) -> Window:
        """Score a candidate's logits (rows for positions 0..n-2 at least)."""
        n = self.tokens.shape[0]
        c = np.asarray(cand_logits[: n - 1], dtype=np.float32)
        if c.shape != self.x.shape:
            raise ValueError(f"need logits of shape {self.x.shape}, got {c.shape}")
        lse = _lse_rows(c, self._buf)
        d = np.subtract(self.x, c, out=self._buf)
        d *= self.p
        kl = d.sum(axis=-1, dtype=np.float64) - (self.lse - lse)
        return Window(
            nll=lse - c[self.rows, self.tokens[1:]].astype(np.float64),
            base_nll=self.nll,
            kl=np.maximum(kl, 0.0),
            top1=self.argmax == c.argmax(axis=-1),
        )


def score_window(base_logits: np.ndarray, cand_logits: np.ndarray, tokens: Sequence[int]) -> Window:
    """Score one window.

    ``tokens`` is the whole window (n tokens); ``base_logits`` and
    ``cand_logits`` (logits or log-probabilities) hold at least the rows for
    positions 0..n-2, whose predictions are scored against tokens 1..n-1.
    """
    return BaseWindow(base_logits, tokens).score(cand_logits)


def _mean_se(s: float, s2: float, n: int) -> tuple[float, float]:
    """Mean and standard error of the mean from a sum and a sum of squares."""
    if n == 0:
        return float("nan"), float("nan")
    mean = s / n
    if n < 2:
        return mean, float("nan")
    var = max(s2 / n - mean * mean, 0.0) * n / (n - 1)
    return mean, math.sqrt(var / n)


@dataclass
class Accumulator:
    """Running sums over scored tokens for one candidate on one corpus.

    Perplexity is exp(mean NLL); its standard error uses the delta method,
    SE(ppl) = ppl * SE(mean NLL). ``*_se`` are over tokens, ``*_se_windows``
    over the per-window means. The change against the baseline is
    exp(mean(nll_cand - nll_base)) - 1 over the same tokens, with the paired
    standard error of that mean carried through the same way.
    """

    n: int = 0
    nll: float = 0.0
    nll2: float = 0.0
    diff: float = 0.0
    diff2: float = 0.0
    kl: float = 0.0
    kl2: float = 0.0
    top1: int = 0
    windows: int = 0
    win_nll: list = field(default_factory=list)  # per-window mean NLL
    win_diff: list = field(default_factory=list)  # per-window mean NLL change
    win_kl: list = field(default_factory=list)  # per-window mean KL

    def add(self, w: Window) -> None:
        """Add one scored window."""
        d = w.nll - w.base_nll
        self.n += int(w.nll.shape[0])
        self.nll += float(w.nll.sum())
        self.nll2 += float((w.nll * w.nll).sum())
        self.diff += float(d.sum())
        self.diff2 += float((d * d).sum())
        self.kl += float(w.kl.sum())
        self.kl2 += float((w.kl * w.kl).sum())
        self.top1 += int(np.count_nonzero(w.top1))
        self.windows += 1
        k = max(int(w.nll.shape[0]), 1)
        self.win_nll.append(float(w.nll.sum()) / k)
        self.win_diff.append(float(d.sum()) / k)
        self.win_kl.append(float(w.kl.sum()) / k)

    def summary(self) -> dict:
        """Return the corpus-level figures as plain floats."""
        mnll, se_nll = _mean_se(self.nll, self.nll2, self.n)
        mdiff, se_diff = _mean_se(self.diff, self.diff2, self.n)
        mkl, se_kl = _mean_se(self.kl, self.kl2, self.n)
        ppl = math.exp(mnll) if self.n else float("nan")
        ratio = math.exp(mdiff) if self.n else float("nan")
        return {
            "tokens_scored": self.n,
            "windows": self.windows,
            "mean_nll": mnll,
            "ppl": ppl,
            "ppl_se": ppl * se_nll,
            "ppl_change_pct": (ratio - 1.0) * 100.0,
            "ppl_change_se_pct": ratio * se_diff * 100.0,
            "kl_mean": mkl,
            "kl_se": se_kl,
            "top1_pct": 100.0 * self.top1 / self.n if self.n else float("nan"),
            # Over windows (tokens within a window are correlated, so these
            # are the honest ones; windows have equal length).
            "kl_se_windows": window_se(self.win_kl),
            "ppl_se_windows": ppl * window_se(self.win_nll),
            "ppl_change_se_windows_pct": ratio * window_se(self.win_diff) * 100.0,
        }


def bits_per_param(nbytes: int, params: int) -> float:
    """Return nbytes * 8 / params (bits per parameter)."""
    if params <= 0:
        raise ValueError("parameter count must be positive")
    return nbytes * 8.0 / params


def size_ratio(base_bytes: int, nbytes: int) -> float:
    """Return how many times smaller ``nbytes`` is than ``base_bytes``."""
    if nbytes <= 0:
        raise ValueError("size must be positive")
    return base_bytes / nbytes


SQNR_CHUNK = 1 << 16


@dataclass
class SQNR:
    """Accumulates signal and noise energy over several tensors.

    ``total_db`` is the SQNR of all tensors taken together (energy-weighted);
    ``mean_db`` is the plain mean of the per-tensor SQNRs.
    """

    signal: float = 0.0
    noise: float = 0.0
    per_tensor: list = field(default_factory=list)

    def add(self, ref: np.ndarray, approx: np.ndarray) -> float:
        """Add one tensor pair; return its SQNR in dB."""
        r = np.asarray(ref).ravel()
        a = np.asarray(approx).ravel()
        if r.shape != a.shape:
            raise ValueError(f"shape mismatch: {r.shape} vs {a.shape}")
        # A chunk at a time, in the arrays' own precision (float32 in the
        # benchmark; a 233M-weight embedding in float64 would need three
        # 1.9 GB temporaries), each chunk's energy added up in float64:
        # relative error ~1e-7 per chunk, far below the 0.01 dB reported.
        s = nz = 0.0
        for i in range(0, r.size, SQNR_CHUNK):
            rc = r[i : i + SQNR_CHUNK]
            e = rc - a[i : i + SQNR_CHUNK]
            s += float(np.dot(rc, rc))
            nz += float(np.dot(e, e))
        self.signal += s
        self.noise += nz
        db = sqnr_db(s, nz)
        self.per_tensor.append(db)
        return db

    @property
    def total_db(self) -> float:
        """SQNR of everything added, in dB."""
        return sqnr_db(self.signal, self.noise)

    @property
    def mean_db(self) -> float:
        """Mean of the per-tensor SQNRs, in dB."""
        return float(np.mean(self.per_tensor)) if self.per_tensor else float("nan")


def sqnr_db(signal: float, noise: float) -> float:
    """Return 10 log10(signal / noise); +inf for a perfect copy."""
    if noise <= 0.0:
        return float("inf")
    if signal <= 0.0:
        return float("-inf")
    return 10.0 * math.log10(signal / noise)


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]], align: str | None = None) -> str:
    """Render a GitHub-flavoured markdown table.

    ``align`` has one character per column: ``l``, ``r`` or ``c`` (default
    all ``l``). Cells are converted with ``str``; ``|`` in a cell is escaped.
    """
    headers = list(headers)
    ncol = len(headers)
    if align is None:
        align = "l" * ncol
    if len(align) != ncol:
        raise ValueError(f"align has {len(align)} columns, headers {ncol}")
    sep = {"l": ":---", "r": "---:", "c": ":---:"}
    try:
        rule = [sep[a] for a in align]
    except KeyError as e:
        raise ValueError(f"bad alignment {e.args[0]!r}") from None

    def line(cells: Sequence[object]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    out = [line(headers), line(rule)]
    for r in rows:
        r = list(r)
        if len(r) != ncol:
            raise ValueError(f"row has {len(r)} cells, want {ncol}: {r!r}")
        out.append(line(r))
    return "\n".join(out) + "\n"


def splice_section(doc: str, section: str) -> str:
    """Put ``section`` between the benchmark markers of ``doc``.

    Text outside the markers is kept. If the markers are missing they are
    appended at the end of the document. More than one pair, or an end marker
    before the begin marker, is an error.
    """
    body = section.strip("\n")
    block = f"{BEGIN_MARKER}\n{body}\n{END_MARKER}"
    nb, ne = doc.count(BEGIN_MARKER), doc.count(END_MARKER)
    if nb == 0 and ne == 0:
        sep = "" if doc == "" else ("\n" if doc.endswith("\n") else "\n\n")
        return doc + sep + block + "\n"
    if nb != 1 or ne != 1:
        raise ValueError(f"expected one pair of benchmark markers, found {nb} begin and {ne} end")
    b = doc.index(BEGIN_MARKER)
    e = doc.index(END_MARKER)
    if e < b:
        raise ValueError("benchmark end marker comes before the begin marker")
    return doc[:b] + block + doc[e + len(END_MARKER):]


def fmt(x: float | None, digits: int = 2, signed: bool = False) -> str:
    """Format a number for a table; None and NaN become an em dash."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if isinstance(x, float) and math.isinf(x):
        return "∞" if x > 0 else "-∞"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def fmt_sci(x: float | None, digits: int = 2) -> str:
    """Format a small positive number like 1.23e-03; None/NaN become a dash."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:.{digits}e}"


def pareto_front(points: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """Return the points not dominated by another (smaller or equal x and y,
    one of them strictly smaller), sorted by x: the best y reachable at each
    size. NaN points are ignored."""
    pts = sorted({(float(x), float(y)) for x, y in points if not (math.isnan(x) or math.isnan(y))})
    out: list[tuple[float, float]] = []
    best = math.inf
    for x, y in pts:
        if y < best:
            out.append((x, y))
            best = y
    return out


def duplicates(items: Iterable[tuple[str, object]]) -> list[list[str]]:
    """Group names that share a key (e.g. a file hash); groups of one are
    dropped. Groups keep the input order."""
    groups: dict = {}
    for name, key in items:
        groups.setdefault(key, []).append(name)
    return [g for g in groups.values() if len(g) > 1]


# ---------------------------------------------------------------- honest comparison


GRID_FLAG = 0.05  # a contestant copying more than 5 % of the baseline's weights exactly is flagged


def exact_count(ref: np.ndarray, approx: np.ndarray) -> int:
    """Number of elements of ``approx`` equal to ``ref`` (compared as
    float32; NaN never counts)."""
    r = np.asarray(ref, dtype=np.float32).ravel()
    a = np.asarray(approx, dtype=np.float32).ravel()
    if r.shape != a.shape:
        raise ValueError(f"shape mismatch: {r.shape} vs {a.shape}")
    return int(np.count_nonzero(r == a))


def grid_fraction(exact: int, total: int) -> float | None:
    """Fraction of compressed weights reproduced exactly; None without any."""
    if total < 0 or exact < 0 or exact > total:
        raise ValueError(f"bad counts: {exact} of {total}")
    return exact / total if total else None


def grid_flagged(fraction: float | None, limit: float = GRID_FLAG) -> bool:
    """True when a contestant copies more than ``limit`` of the baseline."""
    return fraction is not None and fraction > limit


def window_se(values: Sequence[float]) -> float:
    """Standard error of the mean of per-window values (sample standard
    deviation / sqrt(n)); NaN with fewer than two windows."""
    v = np.asarray(values, dtype=np.float64)
    if v.size < 2:
        return float("nan")
    return float(v.std(ddof=1) / math.sqrt(v.size))


def kl_curve(points: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """The curve of one family: its Pareto front (bits, KL), sorted by bits,
    KL strictly falling. Points with KL <= 0 cannot go on a log scale and are
    dropped."""
    return pareto_front((b, k) for b, k in points if k > 0)


def bits_at_kl(curve: Sequence[tuple[float, float]], kl: float) -> float | None:
    """Bits/param a family needs to reach ``kl``, interpolating linearly in
    log KL between the two points of ``curve`` (from kl_curve) around it.
    None when ``kl`` lies outside the curve's KL range (no extrapolation)."""
    if kl <= 0 or not curve:
        return None
    lk = math.log(kl)
    for (b0, k0), (b1, k1) in zip(curve, curve[1:]):
        l0, l1 = math.log(k0), math.log(k1)
        if l1 <= lk <= l0:
            return b0 + (b1 - b0) * (l0 - lk) / (l0 - l1)
    if len(curve) == 1 and math.isclose(kl, curve[0][1], rel_tol=1e-12):
        return curve[0][0]
    return None


def equal_kl(refs: Sequence[tuple[str, float, float]], curve: Sequence[tuple[float, float]]) -> list[dict]:
    """For each reference point (name, bits, KL) — a llama.cpp type — the
    bits/param the curve needs for the same KL and the difference (negative:
    the curve's family needs fewer bits)."""
    out = []
    for name, b, k in refs:
        need = bits_at_kl(curve, k)
        out.append({"type": name, "bits": b, "kl": k, "bits_needed": need,
                    "bits_diff": None if need is None else need - b})
    return out


def dominates(size_ok: bool, kl: float, kl_ref: float, ppl: float, ppl_ref: float, ppl_tol: float = 0.0) -> bool:
    """File no larger, KL lower and perplexity no higher than the
    reference's plus ``ppl_tol`` (0 unless an allowance is stated)."""
    return bool(size_ok and kl < kl_ref and ppl <= ppl_ref + ppl_tol)


def wants_bos(metadata: dict) -> bool:
    """Whether a GGUF's tokenizer asks for a BOS token
    (``tokenizer.ggml.add_bos_token``; llama-cpp-python gives metadata values
    as strings). Missing means no."""
    v = metadata.get("tokenizer.ggml.add_bos_token")
    if isinstance(v, str):
        return v.strip().lower() in ("true", "1")
    return bool(v)


# Share of the F16 baseline's size that bounds one produced file: every
# contestant of the benchmark is 8 bits per weight or fewer (Q8_0 is 0.53 of
# the baseline), plus its metadata.
PRODUCED_SHARE = 0.6


def disk_needed(base_bytes: int, n_restored: int, n_other: int, windows: int, n_ctx: int, vocab: int) -> int:
    """Bytes a model's run writes beyond its baseline: each tpconvert
    contestant a .tpk and an F16 restore (``n_restored``), each llama.cpp
    type one GGUF (``n_other``), and the baseline's float32 logits for every
    scored token of every window."""
    if min(base_bytes, n_restored, n_other, windows, n_ctx, vocab) < 0:
        raise ValueError("sizes and counts must not be negative")
    files = n_restored * (base_bytes + PRODUCED_SHARE * base_bytes) + n_other * PRODUCED_SHARE * base_bytes
    logits = windows * (n_ctx - 1) * vocab * 4
    return int(files) + logits


def cpu_model(default: str) -> str:
    """The CPU's "model name" from /proc/cpuinfo, or default where there is none."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return default
