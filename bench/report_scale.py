"""Report scale: how long `evo report` takes, and how big its file is, at 100, 1,000 and 10,000
candidates. Target: 10,000 candidates in < 10 s, to a file of reasonable size.

Each archive is a synthetic run made by `tests.support.synthetic.synthesize`: the real Engine
with the tweak operator and a simulated evaluation (the seed is the repository's seed_train.py,
33 kB; Metropolis decisions, confirmations, failures and duplicates are the engine's own, on 8
simulated GPUs, 20 curve points and a log tail per evaluation). The engine's own bookkeeping sets
the pace: building the 10,000-candidate archive takes tens of minutes; `--cache DIR` keeps the
archives for the next run.

The report is timed with `write_report` in this process (inline plotly.js, and --cdn), `--repeats`
times each; the table shows the first (cold) and the median wall time, the CPU seconds it took
(this process and its helper processes: runs of 2,000 candidates or more make their details in
one process per core), the phases of one build_report, and the file size. On a shared machine
the wall time depends on the load; the CPU time much less.

    python3 bench/report_scale.py                         # 100, 1,000 and 10,000 candidates
    python3 bench/report_scale.py --sizes 100 1000 --repeats 5 --cache /tmp/evo-report-bench
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

from _common import ROOT, header, table

from evo.storage import Archive
from evo.report import build_report, write_report
from tests.support.synthetic import synthesize


def archive_for(n: int, cache: Path) -> tuple[Archive, float | None]:
    db = cache / f"report-{n}.db"
    url = f"sqlite:///{db}"
    if db.exists():
        try:
            archive = Archive(url, writer=False)
            archive.find_run("synthetic")
            return archive, None
        except Exception:  # noqa: BLE001 - an unfinished archive from an interrupted run: rebuild it
            for suffix in ("", "-wal", "-shm"):
                Path(f"{db}{suffix}").unlink(missing_ok=True)
    t0 = time.perf_counter()
    writer = Archive(url)
    synthesize(writer, n, code=(ROOT / "seed_train.py").read_text(), slots=8, curve_points=20, seed=n)
    writer.close()
    return Archive(url, writer=False), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000], help="children per run [100 1000 10000]")
    ap.add_argument("--repeats", type=int, default=3, help="reports per size and mode [3]")
    ap.add_argument("--cache", type=Path, default=None, help="keep the synthetic archives here and reuse them")
    args = ap.parse_args()
    header("Report scale: evo report time and file size")

    with tempfile.TemporaryDirectory(prefix="evo-report-bench-") as tmp:
        cache = args.cache or Path(tmp)
        cache.mkdir(parents=True, exist_ok=True)
        out_dir = Path(tmp)
        rows = []
        for n in args.sizes:
            archive, built = archive_for(n, cache)
            if built is not None:
                print(f"built a synthetic run of {n:,} children in {built:.0f} s", flush=True)
            db_mb = Path(archive.url.removeprefix("sqlite:///")).stat().st_size / 1e6
            for cdn in (False, True):
                times, cpus = [], []
                path = out_dir / f"report-{n}{'-cdn' if cdn else ''}.html"
                for _ in range(args.repeats):
                    c0 = cpu_seconds()
                    t0 = time.perf_counter()
                    write_report(archive, "synthetic", path, cdn=cdn)
                    times.append(time.perf_counter() - t0)
                    cpus.append(cpu_seconds() - c0)
                median = statistics.median(times)
                p = build_report(archive, "synthetic", cdn=cdn).seconds
                candidates = len(archive.candidates(archive.find_run("synthetic").id))
                rows.append([f"{candidates:,}", "--cdn" if cdn else "inline", f"{db_mb:.0f} MB", f"{times[0]:.2f} s",
                             f"{median:.2f} s", f"{statistics.median(cpus):.1f} s",
                             " / ".join(f"{p.get(k, 0):.2f}" for k in ("read", "figures", "details", "page")),
                             f"{path.stat().st_size / 1e6:.1f} MB"])
                print(f"{n:>6} {'cdn' if cdn else 'inline':>6}: {median:.2f} s, {path.stat().st_size / 1e6:.1f} MB",
                      flush=True)
            archive.close()
        print()
        table(["candidates", "plotly.js", "archive", "first", "median", "CPU (all processes)",
               "read / figures / details / page (s)", "file"], rows,
              title=f"write_report: wall time (first, and median of {args.repeats}), CPU seconds of this process and "
                    f"its helpers, the phases of one build_report, file size")
        print(f"load average at the end (1/5/15 min): {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def cpu_seconds() -> float:
    """User + system CPU time of this process and of its finished children (the helpers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


if __name__ == "__main__":
    main()
