"""Harness overhead per evaluation: wall time spent outside the candidate's own process.

Target: < 1 s per evaluation (a 300 s GPU evaluation then loses < 0.3 % to the harness).

Three measurements, all with the real code:

1. runner   `evo.launch.runner.run_evaluation` on the surrogate candidate (tests/fixtures/surrogate/
            train.py + prepare.py; it "trains" instantly), N times. `EvalResult.harness_seconds` is
            the runner's own account: folder set-up, prepare.py copy and hash checks before and after,
            reading the log, classifying, parsing the curve. As a cross-check, the same train.py is
            also run N times with a bare `subprocess.run` in the same kind of folder; the difference
            of the mean wall times is the runner's true cost, including the latency of its 0.2 s
            poll loop, which `harness_seconds` books as candidate time.
            A second row uses a surrogate that prints --progress-lines progress lines (a 300 s
            autoresearch run prints about one a second) so the log and curve parsing is realistic.
2. archive  the bookkeeping the engine does around every evaluation, on a SQLite file archive:
            `Archive.start_evaluation` + `Archive.finish_evaluation` with a --curve-points curve and a
            --tail-lines log tail (plus, reported apart, queue_evaluation and decide).
3. engine   the real `Engine` with an evaluation that takes no time (returns at once with the same
            curve and tail), one slot: wall time per evaluation is then everything the engine's loop
            does per evaluation (archive reads and writes, proposal, decision). Reported for the
            first and the last quarter of the run, since some reads grow with the archive.

Total harness overhead = runner harness_seconds + archive start/finish bookkeeping.

    python3 bench/harness_overhead.py                 # defaults: about 1 minute on 2 cores
    python3 bench/harness_overhead.py -n 100 --engine-candidates 1000
"""

from __future__ import annotations

import argparse
import hashlib
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import SURROGATE, header, summary, table

from evo.launch.apparatus import Apparatus, load
from evo.storage import COMPLETE, Archive
from evo.config import RunConfig
from evo.engine.loop import Engine
from evo.engine.seeding import SeedPlan
from evo.launch.logs import Outcome
from evo.operators.tweak import TweakOperator
from evo.launch.runner import EvalResult, Limits, Slot, run_evaluation

SUMMARY = {"val_bpb": 1.0, "training_seconds": 300.1, "total_seconds": 420.0, "peak_vram_mb": 45060.2,
           "mfu_percent": 39.8, "total_tokens_M": 499.6, "num_steps": 953, "num_params_M": 50.3, "depth": 8}


def progress_line(step: int, n: int) -> str:
    """A line like the ones seed_train.py / autoresearch print while training."""
    elapsed = 300.0 * step / max(n, 1)
    return (f"step {step:05d} ({100 * step / max(n, 1):.1f}%) | elapsed: {elapsed:.1f}s | loss: {4.0 - step / n:.6f} | "
            f"lrm: 1.00 | dt: 315ms | tok/sec: 1,664,052 | mfu: 39.8% | epoch: 1 | remaining: {300 - elapsed:.0f}s")


def surrogate_code(progress_lines: int) -> str:
    code = (SURROGATE / "train.py").read_text()
    if progress_lines <= 3:
        return code
    loop = ("for step in range(1, 4):\n"
            "    print(f\"step {step:05d} | elapsed: {0.1 * step:.1f}s | loss: {4.0 - step:.6f}\")\n")
    assert loop in code, "the surrogate's progress loop changed; update bench/harness_overhead.py"
    new = (f"N = {progress_lines}\n"
           "for step in range(1, N + 1):\n"
           "    e = 300.0 * step / N\n"
           "    print(f\"step {step:05d} ({100 * step / N:.1f}%) | elapsed: {e:.1f}s | loss: {4.0 - step / N:.6f} | \"\n"
           "          f\"lrm: 1.00 | dt: 315ms | tok/sec: 1,664,052 | mfu: 39.8% | epoch: 1 | remaining: {300 - e:.0f}s\")\n")
    return code.replace(loop, new)


def bench_runner(code: str, n: int, root: Path) -> tuple[list[EvalResult], list[float]]:
    prepare = SURROGATE / "prepare.py"
    locked = hashlib.sha256(prepare.read_bytes()).hexdigest()
    slot = Slot("cpu", {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"})
    limits = Limits(time_budget=2.0, startup_allowance=30.0, eval_allowance=30.0)
    results, bare = [], []
    for i in range(n + 1):  # the first of each is a warm-up, not counted
        wd = root / f"e{i}"
        r = run_evaluation(code=code, workdir=wd, prepare_src=prepare, locked_hash=locked, slot=slot, seed=42 + i,
                           limits=limits, preset="smoke")
        if r.outcome.state != COMPLETE:
            raise SystemExit(f"surrogate evaluation failed: {r.outcome}")
        # the bare baseline: same folder contents, same interpreter, no harness
        t0 = time.monotonic()
        subprocess.run([sys.executable, "train.py"], cwd=wd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       env={"PATH": "/usr/bin:/bin", "EVO_SEED": str(42 + i), "PYTHONDONTWRITEBYTECODE": "1"},
                       check=True)
        if i:
            results.append(r)
            bare.append(time.monotonic() - t0)
    return results, bare


def fake_curve(points: int) -> list[tuple[int, float, float]]:
    return [(i * 2, 300.0 * i / points, 4.0 - i / points) for i in range(points)]


def fake_tail(lines: int) -> str:
    return "\n".join(progress_line(i, lines) for i in range(lines))


def bench_archive(n: int, curve_points: int, tail_lines: int, root: Path) -> dict[str, list[float]]:
    root.mkdir(parents=True, exist_ok=True)
    archive = Archive(f"sqlite:///{root}/bookkeeping.db")
    run = archive.create_run("bench", RunConfig(name="bench").to_dict())
    curve, tail = fake_curve(curve_points), fake_tail(tail_lines)
    code = surrogate_code(3)
    times: dict[str, list[float]] = {"queue": [], "start": [], "finish": [], "start+finish": [], "decide": []}
    for i in range(n + 1):
        t0 = time.perf_counter()
        cand = archive.add_candidate(run.id, code=code.replace("X1 = 1.0", f"X1 = {1 + i / 1000:.4f}"),
                                     operator="tweak", hypothesis=f"tweak X1 {i}")
        ev = archive.queue_evaluation(run.id, cand.id, 0, 42)
        t1 = time.perf_counter()
        archive.start_evaluation(ev.id, "cpu", str(root / "wd"))
        t2 = time.perf_counter()
        archive.finish_evaluation(ev.id, state=COMPLETE, fail_reason=None, detail="",
                                  metrics={**SUMMARY, "val_bpb": 1.0 + random.random() / 100}, curve=curve,
                                  returncode=0, wall_seconds=420.0, harness_seconds=0.05, log_tail=tail)
        t3 = time.perf_counter()
        archive.decide(cand.id, accepted=True, temperature=0.001, probability=1.0, delta=-0.001, competitor_id=None,
                       leaving=[], reason="bench")
        t4 = time.perf_counter()
        if i:  # the first is a warm-up
            times["queue"].append(t1 - t0)
            times["start"].append(t2 - t1)
            times["finish"].append(t3 - t2)
            times["start+finish"].append(t3 - t1)
            times["decide"].append(t4 - t3)
    archive.close()
    return times


def bench_engine(candidates: int, curve_points: int, tail_lines: int, root: Path) -> tuple[list[float], int, float]:
    """Real Engine, one slot, an evaluation that returns at once: per-evaluation loop cost."""
    curve, tail = fake_curve(curve_points), fake_tail(tail_lines)

    def instant(*, code, workdir, prepare_src, locked_hash, slot, seed, limits, preset, stop):
        rng = random.Random(f"{seed}:{code}")
        return EvalResult(Outcome(COMPLETE, summary={**SUMMARY, "val_bpb": 1.0 + rng.gauss(0, 0.001)}),
                          curve, 0, 0.0, 0.0, tail)

    archive = Archive(f"sqlite:///{root}/engine.db")
    config = RunConfig(name="eng", preset="smoke", population=8, temperature="auto", replicates=3,
                       max_candidates=candidates, lookahead=1).validate()
    run = archive.create_run(config.name, config.to_dict())
    app = Apparatus(prepare_path=SURROGATE / "prepare.py", preset="smoke", locked_hash="x", time_budget=1.0,
                    manifest=Path("."),
                    allowances=load(SURROGATE / "prepare.py", "smoke").allowances, seed_sizes={})
    engine = Engine(archive, run, config, TweakOperator(), [Slot("cpu")], app, SeedPlan(surrogate_code(3)), evaluate=instant)
    t0 = time.monotonic()
    engine.execute()
    wall = time.monotonic() - t0
    evs = [e for e in archive.evaluations(run.id) if e.started_at is not None]
    starts = sorted(e.started_at for e in evs)
    gaps = [(b - a).total_seconds() for a, b in zip(starts, starts[1:])]  # one slot: start-to-start = loop time
    archive.close()
    return gaps, len(evs), wall


def fmt_ms(x: float) -> str:
    return f"{1000 * x:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=30, help="runner evaluations (each also run bare) [30]")
    ap.add_argument("--progress-lines", type=int, default=300, help="progress lines of the realistic-log row [300]")
    ap.add_argument("--bookkeeping-n", type=int, default=100, help="archive start/finish repetitions [100]")
    ap.add_argument("--curve-points", type=int, default=500, help="curve points per evaluation [500]")
    ap.add_argument("--tail-lines", type=int, default=200, help="log tail lines per evaluation [200]")
    ap.add_argument("--engine-candidates", type=int, default=200, help="candidates of the engine-loop run [200]")
    args = ap.parse_args()
    header("Harness overhead per evaluation (target < 1 s)")

    with tempfile.TemporaryDirectory(prefix="evo-bench-") as tmp:
        root = Path(tmp)
        rows, runner_means = [], {}
        for label, lines in (("surrogate (3 progress lines)", 3),
                             (f"surrogate ({args.progress_lines} progress lines)", args.progress_lines)):
            results, bare = bench_runner(surrogate_code(lines), args.n, root / f"runner{lines}")
            h = summary([r.harness_seconds for r in results])
            wall = statistics.fmean(r.wall_seconds for r in results)
            runner_means[label] = h["mean"]
            rows.append([label, h["n"], fmt_ms(h["mean"]), fmt_ms(h["p50"]), fmt_ms(h["p95"]), fmt_ms(h["max"]),
                         fmt_ms(wall), fmt_ms(statistics.fmean(bare)), fmt_ms(wall - statistics.fmean(bare))])
        table(["runner: run_evaluation", "n", "harness mean ms", "p50 ms", "p95 ms", "max ms", "eval wall mean ms",
               "bare subprocess mean ms", "wall - bare ms"], rows,
              "Runner (evo.launch.runner.run_evaluation, EvalResult.harness_seconds; 1 warm-up not counted)")

        times = bench_archive(args.bookkeeping_n, args.curve_points, args.tail_lines, root)
        rows = []
        for key in ("start", "finish", "start+finish", "queue", "decide"):
            s = summary(times[key])
            rows.append([key, s["n"], fmt_ms(s["mean"]), fmt_ms(s["p50"]), fmt_ms(s["p95"]), fmt_ms(s["max"])])
        table(["archive call", "n", "mean ms", "p50 ms", "p95 ms", "max ms"], rows,
              f"Archive bookkeeping per evaluation (SQLite file, {args.curve_points}-point curve, "
              f"{args.tail_lines}-line log tail; queue = add_candidate + queue_evaluation)")
        book = summary(times["start+finish"])
        bare_finish = summary(bench_archive(args.bookkeeping_n, 0, args.tail_lines, root / "nocurve")["finish"])
        print(f"(for comparison: finish_evaluation with no curve: mean {fmt_ms(bare_finish['mean'])} ms, "
              f"p95 {fmt_ms(bare_finish['p95'])} ms: the curve's {args.curve_points} rows are most of its cost)\n")

        gaps, n_evals, wall = bench_engine(args.engine_candidates, args.curve_points, args.tail_lines, root)
        q = max(1, len(gaps) // 4)
        rows = [["whole run", len(gaps), fmt_ms(statistics.fmean(gaps)), fmt_ms(summary(gaps)["p95"]), fmt_ms(max(gaps))],
                ["first quarter", q, fmt_ms(statistics.fmean(gaps[:q])), fmt_ms(summary(gaps[:q])["p95"]), fmt_ms(max(gaps[:q]))],
                ["last quarter", q, fmt_ms(statistics.fmean(gaps[-q:])), fmt_ms(summary(gaps[-q:])["p95"]), fmt_ms(max(gaps[-q:]))]]
        table(["engine loop, instant evaluation", "n gaps", "mean ms/eval", "p95 ms", "max ms"], rows,
              f"Engine loop per evaluation (real Engine, 1 slot, population 8, {args.engine_candidates} candidates, "
              f"{n_evals} evaluations in {wall:.1f} s; start-to-start gap of consecutive evaluations)")

        rows = []
        for label, mean in runner_means.items():
            total = mean + book["mean"]
            rows.append([label, fmt_ms(mean), fmt_ms(book["mean"]), fmt_ms(total), "yes" if total < 1.0 else "NO"])
        table(["candidate", "runner harness ms", "archive start+finish ms", "total ms", "< 1 s"], rows,
              "Total harness overhead per evaluation (means)")


if __name__ == "__main__":
    main()
