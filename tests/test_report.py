"""`evo report`: the data behind each figure (pure functions, no database), the diffs, the page
built from a real archive, a real headless Chromium opening it (no console errors, every figure
drawn, a click on a lineage node shows that candidate's diff), and reports taken while a run
writes to its archive."""

from __future__ import annotations

import base64
import difflib
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
import zlib
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from evo.storage import Archive, ArchiveError, Candidate, CurvePoint, Evaluation, LLMCall, Run
from evo.report import ReportError, build_report, data, default_path, figures, html, write_report
from evo.core.diff import unified_diff
from tests.support.synthetic import synthesize

ROOT = Path(__file__).resolve().parent.parent
SURROGATE = ROOT / "tests" / "fixtures" / "surrogate"
ARTIFACTS = ROOT / "tests" / "artifacts"
T0 = datetime(2026, 3, 5, 22, 0, tzinfo=timezone.utc)


# ---------------------------------------------------------------------------
# Rows made by hand: the pure functions need no database
# ---------------------------------------------------------------------------

def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def cand(number: int, parent: int | None = None, **kw) -> Candidate:
    """Candidate `number` with id number + 1 (parent given by number)."""
    fields = dict(id=number + 1, run_id=1, number=number, operator="mutate", code_hash=f"h{number}",
                  hypothesis=f"idea {number}", state="COMPLETE", created_at=at(number), finished_at=at(number + 5))
    fields.update(kw)
    if parent is not None:
        fields["parent_id"] = parent + 1
    if "parent2" in fields:
        fields["parent2_id"] = fields.pop("parent2") + 1
    return Candidate(**fields)


def small_run() -> list[Candidate]:
    """seed 0 -> 1 (accepted, better) -> 3 (accepted, best); 2 rejected child of 0; 4 failed child
    of 1; 5 pruned; 6 crossover of 3 and 1, rejected; 7 still running."""
    return [
        cand(0, operator="seed", hypothesis="seed", val_bpb=1.00, val_bpb_std=0.001, n_evals=3, accepted=True,
             accept_temperature=0.002, accept_probability=1.0),
        cand(1, 0, val_bpb=0.99, n_evals=2, accepted=True, accept_temperature=0.002, accept_probability=1.0,
             accept_delta=-0.01),
        cand(2, 0, val_bpb=1.02, n_evals=1, accepted=False, accept_temperature=0.0018, accept_probability=0.1,
             accept_delta=0.02),
        cand(3, 1, val_bpb=0.98, n_evals=2, accepted=True, accept_temperature=0.0015, accept_probability=1.0,
             accept_delta=-0.01, hypothesis="raise <b>LR</b>"),
        cand(4, 1, state="FAIL", fail_reason="oom", accepted=False, accept_probability=0.0),
        cand(5, 3, state="PRUNED", fail_reason="duplicate", accepted=False),
        cand(6, 3, parent2=1, operator="crossover", val_bpb=0.985, n_evals=1, accepted=False,
             accept_temperature=0.001, accept_probability=0.0067, accept_delta=0.005),
        cand(7, 3, state="RUNNING", finished_at=None),
    ]


def ev(eid: int, number: int, replicate: int = 0, slot: str = "gpu0", start: float = 0.0, minutes: float = 5.0,
       state: str = "COMPLETE", **kw) -> Evaluation:
    return Evaluation(id=eid, run_id=1, candidate_id=number + 1, replicate=replicate, seed=42 + replicate, state=state,
                      slot=slot, started_at=at(start), finished_at=None if state == "RUNNING" else at(start + minutes),
                      wall_seconds=None if state == "RUNNING" else minutes * 60, **kw)


def run_row(**kw) -> Run:
    fields = dict(id=1, name="night", status="FINISHED", config="{}", sigma=0.001, temperature0=0.002,
                  seed_id=1, created_at=T0, active_seconds=7200.0)
    fields.update(kw)
    return Run(**fields)


# ---------------------------------------------------------------------------
# Pure data
# ---------------------------------------------------------------------------

def test_lineage_best_and_path() -> None:
    cands = small_run()
    lin = data.lineage(cands, seed_id=1)
    assert lin.seed == 0
    assert lin.parent == [-1, 0, 0, 1, 1, 3, 3, 3]
    assert lin.parent2[6] == 1 and lin.parent2[0] == -1
    assert lin.generation == [0, 1, 1, 2, 2, 3, 3, 3]
    assert lin.best == 3 and lin.path == [0, 1, 3]


def test_best_needs_acceptance_and_prefers_the_earlier_on_ties() -> None:
    cands = [cand(0, operator="seed", val_bpb=1.0, accepted=True),
             cand(1, 0, val_bpb=0.5, accepted=None),               # awaiting confirmation: not the best yet
             cand(2, 0, val_bpb=0.9, accepted=True),
             cand(3, 0, val_bpb=0.9, accepted=True),
             cand(4, 0, imported_val_bpb=0.1, operator="import", accepted=True)]
    assert data.best_position(cands) == 2
    assert data.best_position([]) == -1


def test_imported_history_sits_before_the_seed() -> None:
    cands = [cand(0, operator="import", accepted=True, imported_val_bpb=1.1, val_bpb=None, state="COMPLETE"),
             cand(1, 0, operator="import", accepted=True, imported_val_bpb=1.05, val_bpb=None),
             cand(2, 1, operator="seed", val_bpb=1.04, accepted=True),
             cand(3, 2, val_bpb=1.03, accepted=True)]
    lin = data.lineage(cands, seed_id=3)
    assert lin.generation == [-2, -1, 0, 1]
    assert lin.path == [0, 1, 2, 3]
    prog = data.progress(cands, lin)
    assert 0 not in prog.points["accepted"] and 1 not in prog.points["accepted"]  # measured elsewhere


def test_delta_and_outcome() -> None:
    cands = small_run()
    lin = data.lineage(cands, 1)
    deltas = data.delta_vs_parent(cands, lin.parent)
    assert deltas[0] is None and deltas[4] is None
    assert deltas[1] == pytest.approx(-0.01) and deltas[2] == pytest.approx(0.02)
    assert lin.outcome == ["accepted", "accepted", "rejected", "accepted", "failed", "pruned", "rejected", "running"]
    assert lin.role == ["seed"] + ["child"] * 7


def test_summary_totals() -> None:
    cands = small_run()
    lin = data.lineage(cands, 1)
    evals = [ev(1, 0, 0, trained_seconds=240), ev(2, 0, 1, "gpu1", trained_seconds=240),
             ev(3, 1, 0, start=5, trained_seconds=240), ev(4, 4, 0, start=10, minutes=1, state="FAIL", trained_seconds=0),
             ev(5, 7, 0, start=20, state="RUNNING")]
    calls = [LLMCall(id=1, run_id=1, candidate_id=2, model="m", cost_usd=0.25, tokens_in=100, tokens_out=10),
             LLMCall(id=2, run_id=1, candidate_id=None, model="m", cost_usd=0.5, error="overloaded")]
    config = {"preset": "gpu", "population": 8, "temperature": "auto", "cooling": "exp", "models": ["m"]}
    meta = data.summary(run_row(slot_seconds=3600.0), config, cands, evals, calls, lin, now=at(30))
    assert meta["candidates"] == 8 and meta["children"] == 7
    assert meta["outcomes"] == {"accepted": 2, "rejected": 2, "undecided": 0, "running": 1, "waiting": 0,
                                "failed": 1, "pruned": 1}
    assert meta["accepted"] == 2 and meta["rejected"] == 2
    header = html.header(meta, None)
    assert "2 accepted · 2 rejected · 1 failed · 1 pruned · 1 in flight" in header and "of 8 candidates: the seed" in header
    assert "3 candidates on its path from the seed" in header
    assert meta["slot_hours"] == pytest.approx((5 + 5 + 5 + 1) / 60)
    assert meta["slot_kind"] == "GPU" and meta["slots"] == ["gpu0", "gpu1"]
    assert meta["busy"] == pytest.approx(720 / 3600)  # trained seconds over the run's slot-seconds
    assert "busy training 20 % of slot time" in html.header(meta, None)
    assert meta["llm_cost"] == pytest.approx(0.75) and meta["llm_errors"] == 1
    best = meta["best"]
    assert best["number"] == 3 and best["confirmed"] and best["spread_is_sigma"]
    assert best["improvement"] == pytest.approx(-0.02) and best["improvement_sigmas"] == pytest.approx(-20)


def test_progress_series() -> None:
    cands = small_run()
    lin = data.lineage(cands, 1)
    prog = data.progress(cands, lin)
    assert prog.seed == 0 and prog.points["accepted"] == [1, 3], "the seed is a point of its own"
    assert prog.points["rejected"] == [2, 6]
    assert prog.points["failed"] == [4] and prog.points["pruned"] == [5]
    assert [v for _, v, _ in prog.best_time] == [1.00, 0.99, 0.98]
    assert [n for n, _, _ in prog.best_number] == [0, 1, 3]
    assert prog.improvements == [0, 1, 3]
    assert [t for _, t in prog.temperature_number] == [0.002, 0.0018, 0.0015, 0.001]  # the seed's T0 is not a decision
    assert all(a[0] <= b[0] for a, b in zip(prog.temperature_time, prog.temperature_time[1:]))


def test_running_best_follows_decision_time_not_number() -> None:
    cands = [cand(0, operator="seed", val_bpb=1.0, accepted=True),
             cand(1, 0, val_bpb=0.9, accepted=True, finished_at=at(50)),   # decided late
             cand(2, 0, val_bpb=0.95, accepted=True, finished_at=at(10))]
    prog = data.progress(cands, data.lineage(cands, 1))
    assert [i for _, _, i in prog.best_time] == [0, 2, 1]
    assert [i for _, _, i in prog.best_number] == [0, 1]


def test_lineage_draws_candidates_at_their_val_bpb() -> None:
    cands = small_run()
    lin = data.lineage(cands, 1)
    fig = figures.lineage(cands, lin, "generation", None)
    traces = {t["name"]: t for t in fig["data"]}
    accepted = traces["accepted (2)"]   # children, as the header counts them; the seed has its own
    assert accepted["customdata"] == [1, 3] and accepted["y"] == [0.99, 0.98]
    assert traces["seed (accepted)"]["customdata"] == [0] and traces["seed (accepted)"]["y"] == [1.00]
    assert traces["rejected (2)"]["marker"]["symbol"] == ["circle-open", "diamond-open"]
    band = traces["failed (1)"]["y"][0]
    assert band > max(c.val_bpb for c in cands if c.val_bpb is not None), "no value: the row above"
    assert traces["pruned (1)"]["y"] == [band] and traces["running (1)"]["y"] == [band]
    assert fig["layout"]["yaxis"]["title"]["text"] == "val_bpb (lower is better)"
    path = traces["path to the best"]
    assert [v for v in path["y"] if v is not None] == [1.00, 0.99, 0.99, 0.98]
    labels = [a["text"] for a in fig["layout"]["annotations"]]
    assert "seed" in labels and any(t.startswith("#3 raise &lt;b&gt;LR") for t in labels) and "no val_bpb" in labels


def test_lineage_of_a_deep_line() -> None:
    cands = [cand(0, operator="seed", val_bpb=1.0, accepted=True)]
    cands += [cand(n, n - 1, val_bpb=1.0 - n * 1e-6, accepted=True) for n in range(1, 5000)]
    lin = data.lineage(cands, 1)
    fig = figures.lineage(cands, lin, "generation", None)
    assert lin.generation[-1] == 4999 and len(lin.path) == 5000
    assert len([a for a in fig["layout"]["annotations"]]) <= 20


def test_table_columns() -> None:
    cands = small_run()
    lin = data.lineage(cands, 1)
    evals = [ev(1, 0), ev(2, 0, 1), ev(3, 1, 0, minutes=2)]
    calls = [LLMCall(id=1, run_id=1, candidate_id=2, model="m", cost_usd=0.1),
             LLMCall(id=2, run_id=1, candidate_id=2, model="m", cost_usd=0.05)]
    t = data.table(cands, lin, data.delta_vs_parent(cands, lin.parent), evals, calls)
    assert t["number"] == list(range(8))
    assert t["parent"] == [None, 0, 0, 1, 1, 3, 3, 3] and t["parent2"][6] == 1
    assert t["duration"][0] == 600.0 and t["duration"][2] is None
    assert t["cost"][1] == pytest.approx(0.15) and t["cost"][0] is None
    assert t["on_path"] == [True, True, False, True, False, False, False, False]
    assert t["outcome"][4] == "failed" and t["fail_reason"][4] == "oom"
    assert {len(v) for v in t.values()} == {8}


def test_timeline_utilisation_and_idle_gaps() -> None:
    cands = small_run()
    lin = data.lineage(cands, 1)
    evals = [ev(1, 0, 0, "gpu0", 0, 10), ev(2, 0, 1, "gpu1", 0, 10),
             ev(3, 1, 0, "gpu0", 10, 10), ev(4, 2, 0, "gpu1", 15, 5),     # gpu1 idle 10..15
             ev(5, 7, 0, "gpu10", 18, state="RUNNING"),
             Evaluation(id=6, run_id=1, candidate_id=8, replicate=1, seed=43, state="WAITING")]
    tl = data.timeline(evals, lin, now=at(20), min_gap=60)
    assert tl.slots == ["gpu0", "gpu1", "gpu10"]  # natural order
    assert len(tl.segments) == 5
    running = [s for s in tl.segments if s.outcome == "RUNNING"][0]
    assert running.end == at(20) and running.candidate == 7
    assert tl.busy["gpu0"] == pytest.approx(1200) and tl.utilisation["gpu0"] == pytest.approx(1.0)
    assert tl.utilisation["gpu1"] == pytest.approx(15 / 20)
    gaps = [(s, (b - a).total_seconds()) for s, a, b in tl.idle]
    assert ("gpu1", 300.0) in gaps and ("gpu10", 18 * 60.0) in gaps
    assert data.timeline([], lin, now=at(0)).segments == []


def test_acceptance_bins() -> None:
    cands = [cand(0, operator="seed", val_bpb=1.0, accepted=True, accept_temperature=1.0, accept_delta=None)]
    rng = random.Random(0)
    n = 1
    for t in (0.001, 0.002, 0.004, 0.008):
        for _ in range(50):
            delta = rng.uniform(-0.002, 0.01)
            p = 1.0 if delta <= 0 else math.exp(-delta / t)
            cands.append(cand(n, 0, val_bpb=1.0 + delta, accepted=rng.random() < p, accept_temperature=t,
                              accept_delta=delta, accept_probability=p))
            n += 1
    cands.append(cand(n, 0, state="FAIL", fail_reason="crash", accepted=False))   # not a Metropolis decision
    bins = data.acceptance_bins(cands, data.lineage(cands, 1), bins=4)
    assert [b.n for b in bins] == [50, 50, 50, 50]
    assert [b.t_mid for b in bins] == [0.001, 0.002, 0.004, 0.008]
    for b in bins:
        assert 0 <= b.rate <= 1 and b.worse > 0 and 0 < b.expected_worse < 1
    assert bins[-1].worse_rate > bins[0].worse_rate, "hotter accepts more worse children"
    one = data.acceptance_bins(cands[:20], data.lineage(cands[:20], 1), bins=10)
    assert len(one) == 1, "a constant temperature is one bin"
    assert data.acceptance_bins(cands[:1], data.lineage(cands[:1], 1)) == []


def test_failures_over_time() -> None:
    cands = small_run() + [cand(8, 3, state="FAIL", fail_reason="oom", finished_at=at(60)),
                           cand(9, 3, state="FAIL", fail_reason="timeout", finished_at=at(60))]
    f = data.failures(cands, bins=4)
    assert len(f.edges) == 5 and f.edges[0] == at(5) and f.edges[-1] == at(60)
    assert sum(f.totals) == 9  # finished: complete, failed, pruned (not the running one)
    assert list(f.counts) == ["oom", "duplicate", "timeout"]  # most frequent first
    assert f.counts["oom"][0] == 1 and f.counts["oom"][-1] == 1 and f.counts["timeout"][-1] == 1
    assert data.failures([]).edges == []


def test_training_curves_of_the_path() -> None:
    cands = small_run()
    lin = data.lineage(cands, 1)
    evals = [ev(1, 0, 1), ev(2, 0, 0), ev(3, 1, 0), ev(4, 3, 0, state="FAIL"), ev(5, 3, 1), ev(6, 2, 0)]
    chosen = data.curve_evaluations(cands, lin, evals)
    assert chosen == {0: 2, 1: 3, 3: 5}, "replicate 0 where it completed; never a candidate off the path"
    points = {i: [CurvePoint(id=k, evaluation_id=e, step=k, elapsed=float(k), loss=5.0 - k * 0.001)
                  for k in range(4000)] for i, e in chosen.items()}
    series = data.curves(cands, lin, points, max_points=1000)
    assert [c.number for c in series] == [0, 1, 3] and [c.role for c in series] == ["seed", "path", "best"]
    assert 1000 <= len(series[0].elapsed) <= 1001 and series[0].elapsed[-1] == 3999.0


def test_hover_labels_are_escaped() -> None:
    cands = small_run()
    text = data.hover(cands[3], 1, -0.01, 0.001, "accepted")
    assert "&lt;b&gt;LR&lt;/b&gt;" in text and "<b>LR" not in text
    assert "#3" in text and "Δ vs parent -0.010000" in text and "(n=2; noise σ 0.001000)" in text
    assert "± 0.002000 (n=2)" in data.hover(cand(8, 3, val_bpb=0.9, val_bpb_std=0.002, n_evals=2), 3, None, 0.001, "accepted")


def test_place_labels_never_overlap() -> None:
    items = [(k, float(k), 1.0 - k * 0.001, "x" * 30, float(k % 7)) for k in range(60)]
    placed = figures.place_labels(items, 0.0, 60.0, 0.9, 1.0, width=1000, height=300, max_labels=40)
    assert 0 < len(placed) <= 40
    boxes = []
    for key, x, y, text, _ in items:
        if key in placed:
            side, row = placed[key]
            px, py = x / 60 * 1000, (1.0 - y) / 0.1 * 300 + 3 + row * 15
            w = len(text) * 6.0 + 6
            x0 = px + 4 if side == "left" else px - 4 - w
            boxes.append((x0, py, x0 + w, py + 15))
            assert 0 <= x0 and x0 + w <= 1000
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


# ---------------------------------------------------------------------------
# Diffs
# ---------------------------------------------------------------------------

def apply_diff(text: str, diff: str) -> str:
    """Apply a unified diff to text (a checker for the diffs we write)."""
    lines, out, i, k = text.splitlines(keepends=True), [], 0, 2
    rows = diff.splitlines(keepends=True)
    last = None
    while k < len(rows):
        start, _, length = rows[k].split()[1][1:].partition(",")
        start = int(start) - (1 if (length != "0") else 0)
        out += lines[i:start]
        i = start
        k += 1
        while k < len(rows) and not rows[k].startswith("@@"):
            row = rows[k]
            if row.startswith("\\"):
                if last in (" ", "+"):
                    out[-1] = out[-1].rstrip("\n")
            elif row[0] == " ":
                assert lines[i].rstrip("\n") == row[1:].rstrip("\n")
                out.append(row[1:] if row.endswith("\n") else row[1:] + "\n")
                i += 1
            elif row[0] == "-":
                assert lines[i].rstrip("\n") == row[1:].rstrip("\n")
                i += 1
            else:
                out.append(row[1:])
            last = row[0]
            k += 1
    return "".join(out + lines[i:])


def reference(a: str, b: str, n: int = 3) -> str:
    return "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n"
                   for line in difflib.unified_diff(a.splitlines(True), b.splitlines(True), "a", "b", n=n))


def test_diff_of_a_typical_edit_is_difflibs() -> None:
    seed = (ROOT / "seed_train.py").read_text()
    lines = seed.split("\n")
    edited = list(lines)
    edited[72] = edited[72].replace("0.04", "0.05")
    edited.insert(300, "        x = x + 1  # new")
    del edited[500]
    child = "\n".join(edited)
    assert unified_diff(seed, child) == reference(seed, child)
    assert unified_diff(seed, seed) == ""
    assert unified_diff("a\nb", "a\nc") == "--- a\n+++ b\n@@ -1,2 +1,2 @@\n a\n-b\n\\ No newline at end of file\n+c\n" \
                                           "\\ No newline at end of file\n"


@pytest.mark.parametrize("small", [4, 120])
def test_diffs_always_apply(small: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Random edits of random texts (repeated lines, moved lines, missing final newlines): every
    diff turns a into b, and most are exactly difflib's."""
    import evo.core.diff as diff_module
    monkeypatch.setattr(diff_module, "SMALL", small)  # small: exercise the anchor splitting hard
    rng = random.Random(small)
    same = total = 0
    for _ in range(3000):
        words = ["a\n", "b\n", "\n", "x = 1\n", "ab\n", "a"] + [f"line {k}\n" for k in range(rng.choice([0, 5, 80]))]
        a = [rng.choice(words) for _ in range(rng.randint(0, rng.choice([20, 150])))]
        b = list(a)
        for _ in range(rng.randint(0, 6)):
            r = rng.random()
            if r < 0.4 and b:
                b[rng.randrange(len(b))] = rng.choice(words)
            elif r < 0.6:
                b.insert(rng.randint(0, len(b)), rng.choice(words))
            elif r < 0.8 and len(b) > 2:
                b.insert(rng.randint(0, len(b) - 1), b.pop(rng.randrange(len(b))))
            elif b:
                del b[rng.randrange(len(b))]
        ta, tb = "".join(a), "".join(b)
        if rng.random() < 0.2:
            ta = ta.rstrip("\n")
        if rng.random() < 0.2:
            tb = tb.rstrip("\n")
        n = rng.choice([0, 1, 3])
        d = unified_diff(ta, tb, n=n)
        if ta == tb:
            assert d == ""
            continue
        assert apply_diff(ta, d) == tb, d
        total += 1
        same += d == reference(ta, tb, n)
    assert same > 0.8 * total


def test_diff_is_fast_on_large_files() -> None:
    seed = (ROOT / "seed_train.py").read_text()
    lines = seed.split("\n")
    rng = random.Random(0)
    pairs = []
    for _ in range(100):
        b = list(lines)
        for _ in range(4):
            b[rng.randrange(len(b))] += "  # edited"
        pairs.append("\n".join(b))
    t0 = time.perf_counter()
    for child in pairs:
        unified_diff(seed, child)
    ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    for child in pairs:
        reference(seed, child)
    theirs = time.perf_counter() - t0
    assert ours < theirs, f"{ours:.3f}s vs difflib {theirs:.3f}s"


# ---------------------------------------------------------------------------
# The report from a real archive
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def night(tmp_path_factory: pytest.TempPathFactory) -> Archive:
    """A synthetic 80-child run with the real seed_train.py, written through the Archive API."""
    root = tmp_path_factory.mktemp("report")
    archive = Archive(f"sqlite:///{root}/evo.db")
    synthesize(archive, 80, name="night", code=(ROOT / "seed_train.py").read_text(), slots=3, seed=1)
    synthesize(archive, 12, name="live", code=(ROOT / "seed_train.py").read_text(), slots=2, seed=2, live=True)
    archive.create_run("empty", {"name": "empty", "preset": "smoke"})
    return Archive(archive.url, writer=False)


def embedded(html: str) -> tuple[dict, list]:
    """The data a report's page reads: its payload and its chunks of details (still compressed)."""
    payload = re.search(r'<script type="application/octet-stream" id="evo-data">(.*?)</script>', html, re.S).group(1)
    chunks = re.search(r'<script type="application/json" id="evo-chunks">(.*?)</script>', html, re.S).group(1)
    return inflate(payload), json.loads(chunks)


def inflate(chunk: str) -> list[dict]:
    return json.loads(zlib.decompress(base64.b64decode(chunk)).decode("utf-8"))


def test_report_of_a_night(night: Archive, tmp_path: Path) -> None:
    out = write_report(night, "night", tmp_path / "night.html")
    html = out.read_text()
    assert html.startswith("<!DOCTYPE html>") and "</html>" in html
    assert len(html) > 3_000_000, "plotly.js is inline by default: the file opens offline"
    assert 'src="https://cdn.plot.ly' not in html
    d, chunks = embedded(html)
    run = night.find_run("night")
    cands = night.candidates(run.id)
    assert d["table"]["number"] == [c.number for c in cands]
    assert d["meta"]["candidates"] == len(cands) == 81
    assert set(d["figures"]) == {"progress:time", "progress:number", "lineage:generation", "lineage:time", "slots",
                                 "acceptance", "failures", "curves"}
    best = data.best_position(cands)
    assert d["best"] == best and d["path"][-1] == best and d["path"][0] == 0
    # every candidate's details are in the chunks, in number order; a diff matches the archive's code
    rows = [row for chunk in chunks for row in inflate(chunk)]
    assert len(rows) == len(cands)
    child = cands[d["path"][1]]
    parent = night.candidate_by_id(child.parent_id)
    expected = unified_diff(night.code(parent.code_hash), night.code(child.code_hash), f"#{parent.number}",
                            f"#{child.number}")
    assert rows[d["path"][1]]["diff"] == expected and expected
    assert rows[0]["code"] == night.code(cands[0].code_hash), "the seed shows its whole code"
    assert any(r["log"] for r in rows) and any(r["evals"] for r in rows)
    # candidate text never reaches the markup unescaped: the data is base64
    assert re.fullmatch(r"[A-Za-z0-9+/=]+", html.split('id="evo-data">', 1)[1].split("</script>", 1)[0])


def test_helper_processes_make_the_same_details(night: Archive) -> None:
    """Big runs share the details out to helper processes; the page gets the same bytes."""
    from evo.report import load
    with load.reader(night) as (view, s):
        snap = load.snapshot(s, view.find_run("night").id)
        serial = load.all_detail_chunks(view, s, snap, 20, workers=1)
        shared = load.all_detail_chunks(view, s, snap, 20, workers=3)
    assert len(serial) == 5 and [inflate(c) for c in shared] == [inflate(c) for c in serial]


def test_figures_are_valid_plotly(night: Archive) -> None:
    import plotly.graph_objects as go
    d, _ = embedded(build_report(night, "night").html)
    for name, fig in d["figures"].items():
        go.Figure(fig)  # raises on any property plotly does not know
        assert fig["data"], name


def test_large_traces_use_webgl(night: Archive, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(figures, "GL_THRESHOLD", 10)
    d, _ = embedded(build_report(night, "night").html)
    kinds = {t["type"] for t in d["figures"]["lineage:generation"]["data"]}
    assert "scattergl" in kinds


def test_cdn_report_is_small(night: Archive, tmp_path: Path) -> None:
    out = write_report(night, "night", tmp_path / "cdn.html", cdn=True)
    html = out.read_text()
    assert len(html) < 1_000_000
    from plotly.offline import get_plotlyjs_version
    assert f"https://cdn.plot.ly/plotly-{get_plotlyjs_version()}.min.js" in html and 'integrity="sha384-' in html


def test_default_path_and_most_recent_run(night: Archive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    out = write_report(night)  # the newest run that runs or ended: "empty" never started, nobody runs it
    assert out == Path("reports") / "live.html" and out.is_file()
    assert default_path("a/b c") == Path("reports/a_b_c.html")
    (tmp_path / "dir").mkdir()
    assert write_report(night, "night", tmp_path / "dir") == tmp_path / "dir" / "night.html"


def test_a_run_whose_owner_died_is_not_reported_as_going(tmp_path: Path) -> None:
    """kill -9 leaves the stored status ACTIVE: the report judges the owner as `evo status` does."""
    archive = Archive(f"sqlite:///{tmp_path}/evo.db")
    run = synthesize(archive, 6, name="dead", code=(ROOT / "seed_train.py").read_text(), slots=2, seed=3, live=True)
    dead_pid = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_pid.wait()
    archive.update_run(run.id, owner=f"{os.uname().nodename}:{dead_pid.pid}")
    page = build_report(archive, "dead").html
    assert "This run is still going" not in page
    assert "This run is stopped" in page and "evo run --resume --name dead" in page
    d, _ = embedded(page)
    assert d["meta"]["status"] == "STOPPED" and d["meta"]["live"] is False


def test_empty_and_live_runs(night: Archive, tmp_path: Path) -> None:
    html = write_report(night, "empty", tmp_path / "e.html").read_text()
    d, chunks = embedded(html)
    assert d["meta"]["candidates"] == 0 and chunks == [] and d["best"] == -1
    # The fixture's live run has no engine beating for it any more: the earlier tests of this module
    # can take longer than the stale limit on a loaded box, so its owner beats once, now.
    run = night.find_run("live")
    Archive(night.url).heartbeat(run.id, run.owner, run.active_seconds or 0.0)
    live = build_report(night, "live").html
    assert "This run is still going" in live
    d, _ = embedded(live)
    assert {"RUNNING", "WAITING"} <= set(d["table"]["state"])
    names = [t["name"] for t in d["figures"]["slots"]["data"]]
    assert any(n.startswith("running") for n in names)


def test_bad_input_is_one_sentence(night: Archive, tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match=r"no run named 'nope' in the archive \(runs: night, live, empty\)\."):
        write_report(night, "nope")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ReportError, match="cannot write the report to"):
        write_report(night, "night", blocker / "r.html")
    with pytest.raises(ArchiveError, match="no runs yet"):
        write_report(Archive(f"sqlite:///{tmp_path}/fresh.db"), None, tmp_path / "x.html")


def test_report_never_takes_the_write_lock(night: Archive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While the report reads (even through an Archive opened as a writer, whose sessions BEGIN
    IMMEDIATE), another connection can write; and a write transaction held open elsewhere does not
    stop the report."""
    db = tmp_path / "copy.db"
    src = night.url.removeprefix("sqlite:///")
    with sqlite3.connect(src) as s, sqlite3.connect(db) as d:
        s.backup(d)
    writer = Archive(f"sqlite:///{db}")
    writes = []
    original = data.detail

    def detail_and_write(*args, **kw):
        if not writes:
            con = sqlite3.connect(db, timeout=0)
            con.execute("UPDATE run SET heartbeat_at = '2026-03-06 00:00:00' WHERE name = 'night'")
            con.commit()
            con.close()
            writes.append(True)
        return original(*args, **kw)

    monkeypatch.setattr(data, "detail", detail_and_write)
    write_report(writer, "night", tmp_path / "a.html")
    assert writes == [True]
    monkeypatch.setattr(data, "detail", original)
    holder = sqlite3.connect(db, timeout=0, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("UPDATE run SET heartbeat_at = '2026-03-07 00:00:00' WHERE name = 'night'")
    t0 = time.monotonic()
    write_report(writer, "night", tmp_path / "b.html")
    assert time.monotonic() - t0 < 20
    holder.execute("ROLLBACK")
    holder.close()


# ---------------------------------------------------------------------------
# Reports while a real run writes
# ---------------------------------------------------------------------------

@pytest.mark.slow
def test_reports_while_a_run_writes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/archive/evo.db"
    env = {**os.environ, "EVO_STORAGE": url}
    proc = subprocess.Popen([sys.executable, "-m", "evo", "run", "--prepare", str(SURROGATE / "prepare.py"),
                             "--seed-train", str(SURROGATE / "train.py"), "--preset", "smoke", "--operator", "tweak", "--name", "live",
                             "--population", "6", "--max-candidates", "120", "--slots", "2"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: list[int] = []
    try:
        deadline = time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                archive = Archive(url, writer=False)
                archive.find_run("live")
            except ArchiveError:
                time.sleep(0.2)  # the run has not created its archive or run yet
                continue
            out = write_report(archive, "live", tmp_path / "live.html")
            archive.close()
            d, chunks = embedded(out.read_text())
            assert len([r for c in chunks for r in inflate(c)]) == d["meta"]["candidates"]
            seen.append(d["meta"]["candidates"])
        output = proc.communicate(timeout=240)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, output[-3000:]
    assert len(seen) >= 3 and seen == sorted(seen), seen
    assert seen[0] < 121, "reports were taken while the run was writing"
    final = embedded(write_report(Archive(url, writer=False), "live", tmp_path / "final.html").read_text())[0]
    assert final["meta"]["candidates"] == 121 and final["meta"]["status"] == "FINISHED"
    assert final["best"] >= 0 and final["meta"]["best"]["confirmed"]


# ---------------------------------------------------------------------------
# A real headless Chromium
# ---------------------------------------------------------------------------

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--mute-audio"]


def chromium_binary() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None)


needs_chromium = pytest.mark.skipif(chromium_binary() is None,
                                    reason="chromium is not installed (Debian: apt-get install chromium)")


class DevTools:
    """A minimal WebSocket client (RFC 6455) speaking the Chrome DevTools protocol."""

    def __init__(self, ws_url: str, timeout: float = 60.0):
        host_port, path = ws_url[len("ws://"):].split("/", 1)
        host, port = host_port.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET /{path} HTTP/1.1\r\nHost: {host_port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("DevTools closed the connection during the handshake")
            buf += chunk
        head, self.buf = buf.split(b"\r\n\r\n", 1)
        if b" 101 " not in head.split(b"\r\n")[0]:
            raise ConnectionError(f"DevTools refused the WebSocket: {head[:200]!r}")
        self.next_id = 0
        self.events: list[dict] = []

    def _send(self, text: str) -> None:
        payload = text.encode()
        mask = os.urandom(4)
        n = len(payload)
        size = bytes([0x80 | n]) if n < 126 else (bytes([0x80 | 126]) + struct.pack(">H", n) if n < 65536
                                                   else bytes([0x80 | 127]) + struct.pack(">Q", n))
        self.sock.sendall(bytes([0x81]) + size + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def _read(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("DevTools closed the connection")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _message(self) -> dict:
        data_ = b""
        while True:
            b0, b1 = self._read(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._read(8))[0]
            payload = self._read(n)
            if (b0 & 0x0F) in (0, 1, 2):
                data_ += payload
                if b0 & 0x80:
                    return json.loads(data_)

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self._send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = self._message()
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)


class Chromium:
    """One headless Chromium with one page, driven over the DevTools protocol; console errors and
    uncaught exceptions are collected."""

    def __init__(self, width: int = 1400, height: int = 1000):
        self.profile = tempfile.mkdtemp(prefix="evo-chromium-")
        self.proc = subprocess.Popen([chromium_binary(), *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}",
                                      "--remote-debugging-port=0", f"--window-size={width},{height}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.dt = None
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError("chromium did not start")
            time.sleep(0.05)
        port = port_file.read_text().splitlines()[0]
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=30))
        self.dt = DevTools(next(t for t in targets if t["type"] == "page")["webSocketDebuggerUrl"])
        for domain in ("Page", "Runtime", "Log"):
            self.dt.call(f"{domain}.enable")
        self.dt.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                     mobile=False)

    def errors(self) -> list[str]:
        out = []
        for ev_ in self.dt.events:
            m, p = ev_["method"], ev_.get("params", {})
            if m == "Runtime.exceptionThrown":
                d = p["exceptionDetails"]
                out.append(f"exception: {d.get('exception', {}).get('description') or d.get('text')}")
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append("console.error: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"]))
            elif m == "Log.entryAdded" and p["entry"]["level"] == "error":
                out.append(f"log: {p['entry']['text']} ({p['entry'].get('url', '')})")
        return out

    def open(self, url: str, timeout: float = 90.0) -> None:
        self.dt.events.clear()
        self.dt.call("Page.navigate", url=url)
        self.wait("window.evoReady === true", timeout)

    def js(self, expression: str):
        r = self.dt.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"JavaScript failed: {r['exceptionDetails']}")
        return r["result"].get("value")

    def wait(self, condition: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.js(f"!!({condition})"):
                    return
            except RuntimeError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {condition}; page errors: {self.errors()}")
            time.sleep(0.05)

    def click(self, x: float, y: float) -> None:
        """A real left click at viewport pixel (x, y), through Chromium's input pipeline."""
        self.dt.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        time.sleep(0.2)  # plotly finds the hovered point on mouse move
        self.dt.call("Input.dispatchMouseEvent", type="mousePressed", x=x, y=y, button="left", clickCount=1)
        self.dt.call("Input.dispatchMouseEvent", type="mouseReleased", x=x, y=y, button="left", clickCount=1)

    def screenshot(self, path: Path) -> Path:
        shot = self.dt.call("Page.captureScreenshot", format="png")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def close(self) -> None:
        if self.dt is not None:
            self.dt.sock.close()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture(scope="module")
def browser():
    if chromium_binary() is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    b = Chromium()
    yield b
    b.close()


# The pixel position of candidate `i`'s node in the lineage figure, after scrolling it into view;
# computed from plotly's own axes (the same mapping it draws with).
NODE_XY = """(() => {
  const div = document.querySelector('.fig[data-fig="lineage"]');
  div.scrollIntoView({block: "center", behavior: "instant"});
  const gd = div, fl = gd._fullLayout, xa = fl.xaxis, ya = fl.yaxis, r = gd.getBoundingClientRect();
  const want = %d;
  for (const t of gd._fullData) {
    if (!t.customdata || t.name === "on the path") continue;
    const k = Array.from(t.customdata).indexOf(want);
    if (k < 0) continue;
    return [r.left + xa._offset + xa.l2p(xa.d2l(t.x[k])), r.top + ya._offset + ya.l2p(ya.d2l(t.y[k]))];
  }
  return null;
})()"""

# The candidate with a diff whose lineage node is farthest from any other node: a click there
# cannot hit a neighbour.
LONELY = """(() => {
  const gd = document.querySelector('.fig[data-fig="lineage"]'), xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
  const pts = [];
  for (const t of gd._fullData) {
    if (!t.customdata || t.mode !== "markers") continue;
    t.customdata.forEach((c, k) => pts.push([c, xa.l2p(xa.d2l(t.x[k])), ya.l2p(ya.d2l(t.y[k]))]));
  }
  const ok = new Set(%s);
  let best = null, far = -1;
  for (const [c, x, y] of pts) {
    if (!ok.has(c)) continue;
    let near = Infinity;
    for (const [d, u, v] of pts) if (d !== c) near = Math.min(near, Math.hypot(x - u, y - v));
    if (near > far) { far = near; best = c; }
  }
  return best;
})()"""


def check_page(b: Chromium) -> None:
    assert b.errors() == []
    assert b.js("window.evoErrors") == []
    figs = b.js("""Array.from(document.querySelectorAll('.fig')).map(d => [d.getAttribute('data-fig'),
        d.classList.contains('js-plotly-plot'), d.querySelectorAll('.main-svg').length,
        d.querySelectorAll('.scatterlayer .trace, .barlayer .trace, .gl-canvas, .annotation').length])""")
    assert [f[0] for f in figs] == ["progress", "lineage", "slots", "acceptance", "failures", "curves"]
    for name, plotted, svgs, marks in figs:
        assert plotted and svgs >= 1 and marks >= 1, (name, plotted, svgs, marks)


@needs_chromium
def test_chromium_opens_the_report_and_a_click_shows_the_diff(night: Archive, browser: Chromium, tmp_path: Path) -> None:
    out = write_report(night, "night", tmp_path / "night.html")
    d, chunks = embedded(out.read_text())
    rows = [r for c in chunks for r in inflate(c)]
    browser.open(out.resolve().as_uri())
    check_page(browser)
    # the table, the best path and the header are there too
    assert browser.js("document.querySelectorAll('#t-body tr.row').length") > 10
    assert browser.js("document.getElementById('t-count').textContent") == f"showing {len(rows)} of {len(rows)}"
    assert browser.js("document.querySelectorAll('#path-steps .step').length") == len(d["path"])
    browser.wait(f"document.querySelectorAll('#path-steps .diff').length === {len(d['path'])}")
    assert browser.js("document.querySelector('.card.best .big').textContent").startswith(f"{d['meta']['best']['val_bpb']:.6f}")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.screenshot(ARTIFACTS / "report.png")

    # a real click on a lineage node opens that candidate's details with its diff
    eligible = [i for i, r in enumerate(rows) if r["diff"] and i not in d["path"]]
    target = browser.js(LONELY % json.dumps(eligible))
    assert target is not None
    x, y = browser.js(NODE_XY % target)
    browser.click(x, y)
    number = d["table"]["number"][target]
    browser.wait(f"document.getElementById('drawer').getAttribute('data-candidate') === '{number}'", 10)
    browser.wait("document.querySelector('#d-body .diff') !== null", 10)
    shown = browser.js("document.querySelector('#d-body .diff').innerText")
    changed = [line[1:].strip() for line in rows[target]["diff"].splitlines()
               if line.startswith(("+", "-")) and not line.startswith(("+++", "---")) and line[1:].strip()]
    assert changed and all(c in shown for c in changed[:3]), (changed[:3], shown[:500])
    assert browser.js("document.getElementById('d-title').textContent").startswith(f"#{number} ")
    assert browser.js("location.hash") == f"#c{number}"
    browser.wait("document.getElementById('drawer').getBoundingClientRect().right <= window.innerWidth + 0.5", 5)
    browser.screenshot(ARTIFACTS / "report-details.png")
    assert browser.errors() == []

    # the table filters and sorts; Escape closes the details
    browser.js("document.getElementById('d-close').click()")
    browser.js("{const f = document.getElementById('f-state'); f.value = 'failed'; f.dispatchEvent(new Event('change'))}")
    failed = sum(1 for o in d["table"]["outcome"] if o == "failed")
    browser.wait(f"document.getElementById('t-count').textContent === 'showing {failed} of {len(rows)}'", 5)
    browser.js("{const f = document.getElementById('f-state'); f.value = ''; f.dispatchEvent(new Event('change'))}")
    browser.js("document.querySelector('#t-head th[data-key=val_bpb]').click()")
    first = browser.js("document.querySelector('#t-body tr.row').getAttribute('data-i')")
    values = [v for v in d["table"]["val_bpb"] if v is not None]
    assert d["table"]["val_bpb"][int(first)] == min(values)
    assert browser.errors() == []


@needs_chromium
def test_chromium_webgl_lineage_click(night: Archive, browser: Chromium, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The same click on the WebGL traces a large run gets (forced here by a low threshold)."""
    monkeypatch.setattr(figures, "GL_THRESHOLD", 5)
    out = write_report(night, "night", tmp_path / "gl.html")
    d, chunks = embedded(out.read_text())
    rows = [r for c in chunks for r in inflate(c)]
    browser.open(out.resolve().as_uri())
    check_page(browser)
    assert browser.js("document.querySelectorAll('.fig[data-fig=lineage] .gl-canvas').length") >= 1
    eligible = [i for i, r in enumerate(rows) if r["diff"] and i not in d["path"]]
    target = browser.js(LONELY % json.dumps(eligible))
    x, y = browser.js(NODE_XY % target)
    browser.click(x, y)
    number = d["table"]["number"][target]
    browser.wait(f"document.getElementById('drawer').getAttribute('data-candidate') === '{number}'", 10)
    browser.wait("document.querySelector('#d-body .diff') !== null", 10)
    assert browser.errors() == []


@needs_chromium
def test_chromium_live_and_empty_reports(night: Archive, browser: Chromium, tmp_path: Path) -> None:
    for name in ("live", "empty"):
        out = write_report(night, name, tmp_path / f"{name}.html")
        browser.open(out.resolve().as_uri())
        assert browser.errors() == [] and browser.js("window.evoErrors") == []
        assert browser.js("document.querySelectorAll('.fig.js-plotly-plot .main-svg').length") >= 6


def test_noise_is_shown_beside_the_values_it_makes_doubtful() -> None:
    cands = small_run()
    evals = [ev(1, 0, 0, num_steps=19, total_tokens_M=0.5, training_seconds=8.0),
             ev(2, 0, 1, num_steps=168, total_tokens_M=4.4, training_seconds=8.0),   # the loaded CPU of the issue
             ev(3, 1, 0, num_steps=100, total_tokens_M=2.0, training_seconds=8.0, load_avg=9.0, cores=4),
             ev(4, 3, 0, num_steps=100, total_tokens_M=2.0, training_seconds=8.0, load_avg=9.0, cores=16)]
    speed = data.speeds(cands, evals, cores=2)
    assert speed.steps[:2] == [19, 100] and speed.tokens_per_second[1] == pytest.approx(250_000)
    assert "19 to 168 steps" in speed.warnings[0][0]
    assert "load 9.0 on 4 cores" in speed.warnings[1][0], "judged against the cores it ran on"
    assert speed.warnings[3] == [], "9 on 16 cores is a busy machine, not a crowded one"
    text = data.hover(cands[0], None, None, 0.001, "accepted", "seed", speed.steps[0], speed.tokens_per_second[0],
                      speed.warnings[0])
    assert "19 steps · 62,500 tok/s" in text and "⚠ its replicates trained 19 to 168 steps" in text
    lin = data.lineage(cands, 1)
    meta = data.summary(run_row(), {}, cands, evals, [], lin, now=at(30))
    meta["noisy"] = [c.number for c, w in zip(cands, speed.warnings) if w]
    header = html.header(meta, None)
    assert 'Noise: 2 candidates ran while' in header and '<a href="#c0">#0</a>, <a href="#c1">#1</a>' in header
    table = data.table(cands, lin, data.delta_vs_parent(cands, lin.parent), evals, [], speed)
    assert table["steps"][:2] == [19, 100] and table["tok_s"][1] == 250_000 and table["warnings"][3] == []


def test_candidates_sit_on_the_time_axis_when_first_judged() -> None:
    """The seed is re-measured at the end of a run (and a best confirmed later): its finished_at
    moves, the moment it was judged does not."""
    cands = small_run()
    cands[0].finished_at = at(90)   # the final re-measure
    lin = data.lineage(cands, 1)
    evals = [ev(1, 0, 0, start=0), ev(2, 0, 1, "gpu1", start=0, minutes=6), ev(3, 0, 2, start=5),
             ev(4, 0, 3, start=85), ev(5, 1, 0, start=12), ev(6, 1, 1, start=40)]
    when = data.decided_at(cands, lin, evals, seed_replicates=3)
    assert when[0] == at(10) and when[1] == at(17), "the seed after its 3 replicates; a child after its first"
    assert when[2] == cands[2].finished_at, "no evaluation rows: its finished_at"
    prog = data.progress(cands, lin, when)
    assert prog.when[0] == at(10) and prog.when[1] == at(17)
