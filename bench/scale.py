"""The harness at 10,000 candidates: does a night's bookkeeping stay flat as the archive grows?

Each size is a synthetic run (`tests.support.synthetic.synthesize`, the real Engine with the tweak
operator and a simulated evaluation on 8 simulated GPUs; the seed is the repository's
seed_train.py, 33 kB), kept with `--cache`, to which this script adds one stored LLM call per
child (a 24 kB prompt and a 3 kB reply, as the LLM operator stores them). On a copy of it:

1. engine    the real Engine resumes the run for `--children` more children on one slot with an
             evaluation that returns at once: the seconds between evaluation starts are then
             everything the engine does per evaluation (reads, proposal with the lineage memory's
             rows, decision, writes); CPU seconds per evaluation alongside.
2. memory    `queries.lineage_rows` for a member (what every LLM proposal reads), CPU seconds.
3. cli       `evo status`, `best`, `show best`, `candidates` (a table on a pipe), `list`, each in a
             fresh interpreter: wall seconds and peak memory, and the import alone (`evo --help`).
4. report    `evo report` in a fresh interpreter: wall and CPU seconds (its helpers included), peak memory.

    python3 bench/scale.py --cache /tmp/evo-scale                    # 100 and 10,000 candidates
    python3 bench/scale.py --sizes 1000 --cache /tmp/evo-scale --children 30
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, header, table

from report_scale import archive_for

PROMPT = ("## The parent's train.py\n" + (ROOT / "seed_train.py").read_text())[:24_000]
REPLY = "TITLE: raise the matrix learning rate\n<<<<<<< SEARCH\nMATRIX_LR = 0.04\n=======\nMATRIX_LR = 0.05\n>>>>>>> REPLACE\n" * 30


def with_calls(db: Path) -> None:
    """One stored LLM call per child that has none (as an LLM-driven run leaves them)."""
    con = sqlite3.connect(db)
    if con.execute("SELECT COUNT(*) FROM llmcall").fetchone()[0] == 0:
        rows = con.execute("SELECT id, run_id, created_at FROM candidate WHERE parent_id IS NOT NULL").fetchall()
        con.executemany("INSERT INTO llmcall (run_id, candidate_id, at, model, purpose, tokens_in, tokens_out, "
                        "latency_s, cost_usd, prompt, response) VALUES (?, ?, ?, 'gpt-5', 'mutate', 6000, 800, 30.0, "
                        "0.012, ?, ?)", [(run, cid, at, PROMPT, REPLY) for cid, run, at in rows])
        con.commit()
    con.close()


def cpu() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def bench_engine(url: str, children: int) -> tuple[float, float]:
    """Median seconds between evaluation starts, and CPU seconds per evaluation, of `children` more."""
    from evo.config import RunConfig
    from evo.engine.loop import Engine
    from evo.engine.seeding import SeedPlan
    from evo.launch import apparatus
    from evo.launch.logs import Outcome
    from evo.launch.runner import EvalResult, Slot
    from evo.operators.tweak import TweakOperator
    from evo.storage import COMPLETE, Archive, owner_id
    from tests.support.simulated import SURROGATE

    curve = [(j, 300.0 * j / 20, 3.0 - j / 20) for j in range(1, 21)]
    tail = "\n".join(f"step {j:05d} | loss: 3.0" for j in range(20))

    def instant(*, code, seed, **_):
        rng = random.Random(f"{seed}:{code}")
        summary = {"val_bpb": 0.95 + rng.gauss(0, 0.001), "training_seconds": 300.0, "num_steps": 950}
        return EvalResult(Outcome(COMPLETE, summary=summary), curve, 0, 0.0, 0.0, tail)

    archive = Archive(url)
    run = archive.find_run("synthetic")
    made = archive.count_candidates(run.id) - 1
    config = RunConfig.from_dict({**json.loads(run.config), "max_candidates": made + children, "slots": 1})
    archive.claim_run(run.id, owner_id(), 60.0)
    app = apparatus.load(SURROGATE / "prepare.py", "smoke")
    engine = Engine(archive, archive.find_run("synthetic"), config, TweakOperator(), [Slot("cpu")], app,
                    SeedPlan(""), evaluate=instant)
    first = max(e.id for e in archive.evaluations(run.id))
    c0 = cpu()
    engine.execute()
    spent = cpu() - c0
    evs = [e for e in archive.evaluations(run.id) if e.id > first and e.started_at is not None]
    starts = sorted(e.started_at for e in evs)
    gaps = [(b - a).total_seconds() for a, b in zip(starts, starts[1:])]
    archive.close()
    return statistics.median(gaps), spent / max(1, len(evs))


def bench_memory(url: str) -> float:
    from evo.storage import Archive
    from evo.storage.queries import lineage_rows
    archive = Archive(url, writer=False)
    run = archive.find_run("synthetic")
    cid = next(c.id for c in reversed(archive.candidates(run.id)) if c.in_population)
    c0 = time.process_time()
    for _ in range(3):
        lineage_rows(archive, run.id, cid, recent_failures=8, ledger_size=60)
    archive.close()
    return (time.process_time() - c0) / 3


# The command runs in an interpreter that reports its own high-water mark: a forked child's
# ru_maxrss would count this (large) process's pages from before the exec.
RUN_EVO = ("import atexit, runpy, sys\n"
           "atexit.register(lambda: sys.stderr.write(next(l for l in open('/proc/self/status') if l.startswith('VmHWM'))))\n"
           "sys.argv = ['evo', *sys.argv[1:]]\n"
           "runpy.run_module('evo', run_name='__main__', alter_sys=True)")


def command(args: list[str]) -> tuple[float, float]:
    """Wall seconds and peak resident MB of one `evo` command in a fresh interpreter."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", RUN_EVO, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          cwd=ROOT, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"evo {' '.join(args)} failed: {proc.stderr[-500:]}")
    peak_kb = int(proc.stderr.strip().splitlines()[-1].split()[1])
    return wall, peak_kb / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 10000], help="children per run [100 10000]")
    ap.add_argument("--children", type=int, default=40, help="children the engine adds to each [40]")
    ap.add_argument("--cache", type=Path, default=None, help="keep the synthetic archives here and reuse them")
    args = ap.parse_args()
    header("Scale: the harness at 100 and 10,000 candidates")
    rows = []
    with tempfile.TemporaryDirectory(prefix="evo-scale-") as tmp:
        cache = args.cache or Path(tmp)
        cache.mkdir(parents=True, exist_ok=True)
        for n in args.sizes:
            archive, built = archive_for(n, cache)
            archive.close()
            if built is not None:
                print(f"built a synthetic run of {n:,} children in {built:.0f} s", flush=True)
            db = Path(tmp) / f"scale-{n}.db"
            shutil.copy(cache / f"report-{n}.db", db)
            with_calls(db)
            url = f"sqlite:///{db}"
            where = ["--storage", url, "--name", "synthetic"]
            # CLI first: their archive is the synthetic one as built, upgraded once by a writer
            from evo.storage import Archive
            Archive(url).close()
            clis = {"import": command(["--help"])}
            for label, argv in (("status", ["status"]), ("best", ["best"]), ("show best", ["show", "best"]),
                                ("candidates", ["candidates"]), ("list", ["list"])):
                clis[label] = command([*argv, *(where if label != "list" else where[:2])])
            out = Path(tmp) / f"report-{n}.html"
            c0 = cpu()
            report = command(["report", *where, "--out", str(out)])
            report_cpu = cpu() - c0
            lineage = bench_memory(url)
            gap, per_eval_cpu = bench_engine(url, args.children)
            size = db.stat().st_size / 1e6
            rows.append([f"{n:,}", f"{size:.0f} MB", f"{gap:.3f} s", f"{per_eval_cpu:.3f} s", f"{lineage:.3f} s",
                         *(f"{clis[k][0]:.2f} s / {clis[k][1]:.0f} MB" for k in clis),
                         f"{report[0]:.1f} s / {report_cpu:.1f} s / {report[1]:.0f} MB"])
            print(" | ".join(rows[-1]), flush=True)
    print()
    table(["children", "archive", "engine per eval (median)", "engine CPU per eval", "lineage rows CPU",
           "import (--help)", "status", "best", "show best", "candidates", "list", "report wall / CPU / peak"], rows,
          title="wall seconds / peak resident memory of each command in a fresh interpreter (import included)")
    print(f"load average at the end (1/5/15 min): {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
