"""`evo report`: one self-contained HTML file that shows what a run found, how it got there and
what failed: header, progress, lineage DAG, candidate table, per-candidate details (diff vs the
parent, rationale, log tail), the best path as a sequence of diffs, slot timeline, acceptance
against temperature, failures over time and training curves.

    from evo.report import write_report
    path = write_report(Archive(url, writer=False), run_name=None, out=None, cdn=False)

It only reads the archive (in one read transaction: a consistent snapshot, never a write lock),
so it can run while `evo run` writes.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from datetime import datetime, tzinfo
from pathlib import Path

from evo.storage import Archive, ArchiveError
from evo.core import format as fmt
from evo.report import data, figures, html, load

__all__ = ["ReportError", "write_report", "build_report", "save", "default_path"]

CHUNK_SIZE = 200   # candidates per compressed details chunk: one click inflates one chunk


class ReportError(ArchiveError):
    """The report cannot be written (its output path is unusable): one sentence. A subclass of
    ArchiveError, so a caller that turns ArchiveError into exit status 2 covers it too."""


@dataclass
class Built:
    html: str
    run: str
    candidates: int
    seconds: dict[str, float]
    revision: str | None = None   # the archive's revision it shows (with `watch`)


def default_path(run_name: str) -> Path:
    safe = "".join(ch if ch.isalnum() or ch in "-_.=+" else "_" for ch in run_name) or "run"
    return Path("reports") / f"{safe}.html"


def build_report(archive: Archive, run_name: str | None = None, *, cdn: bool = False, tz: tzinfo | None = None,
                 now: datetime | None = None, workers: int | None = None, watch: float | None = None) -> Built:
    """The report of a run (the most recent when `run_name` is None) as an HTML string. Raises
    ArchiveError for an unknown run or an archive without runs. `workers`: processes that make
    the details (default: one per core, up to 4, for runs of 2,000 candidates or more). `watch`:
    the page is served by `evo report --watch` and asks for the archive's revision every `watch` s."""
    import time

    times: dict[str, float] = {}
    t = time.perf_counter()
    tz = tz if tz is not None else datetime.now().astimezone().tzinfo
    with load.reader(archive) as (view, s):
        run = view.find_run(run_name)
        revision = view.revision(run.id) if watch else None   # before the snapshot: a write between is seen next time
        snap = load.snapshot(s, run.id)
        if now is not None:
            snap.now = now
        times["read"] = time.perf_counter() - t
        t = time.perf_counter()
        details = load.Details(view, s, snap, CHUNK_SIZE, workers)   # helpers start on a big run's details now
        try:
            figs, meta, table, hover, lin = _figures(s, snap, tz)
            if watch:
                meta.update(watch=watch, revision=revision)
            times["figures"] = time.perf_counter() - t
            t = time.perf_counter()
            chunks = details.finish()
            times["details"] = time.perf_counter() - t
        finally:
            details.close()
    t = time.perf_counter()
    payload = data.to_json({"meta": meta, "table": table, "hover": hover, "figures": figs, "path": lin.path,
                            "best": lin.best, "seed": lin.seed, "chunk_size": CHUNK_SIZE,
                            "bpb_decimals": fmt.DECIMALS})
    text = html.page(meta, payload, chunks, cdn, tz)
    times["page"] = time.perf_counter() - t
    return Built(text, snap.run.name, len(snap.cands), times, revision)


def _figures(s, snap: load.Snapshot, tz: tzinfo | None) -> tuple:
    """Everything but the details: the figures, the header, the table and the hover labels."""
    cands, evals, calls = snap.cands, snap.evals, snap.calls
    lin = data.lineage(cands, snap.run.seed_id)
    deltas = data.delta_vs_parent(cands, lin.parent)
    meta = data.summary(snap.run, snap.config, cands, evals, calls, lin, snap.now, snap.owner_alive)
    prog = data.progress(cands, lin, data.decided_at(cands, lin, evals, snap.config.get("replicates") or 1))
    timeline = data.timeline(evals, lin, snap.now)
    bins = data.acceptance_bins(cands, lin)
    fails = data.failures(cands)
    points = load.curve_points(s, data.curve_evaluations(cands, lin, evals))
    series = data.curves(cands, lin, points)
    speed = data.speeds(cands, evals, os.cpu_count() or 1)
    meta["noisy"] = [c.number for c, w in zip(cands, speed.warnings) if w]
    table = data.table(cands, lin, deltas, evals, calls, speed)
    numbers = table["number"]
    hover = [data.hover(c, numbers[lin.parent[i]] if lin.parent[i] >= 0 else None, deltas[i], snap.run.sigma,
                        lin.outcome[i], lin.role[i], speed.steps[i], speed.tokens_per_second[i], speed.warnings[i])
             for i, c in enumerate(cands)]
    figs = {
        "progress:time": figures.progress(cands, lin, prog, "time", tz),
        "progress:number": figures.progress(cands, lin, prog, "number", tz),
        "lineage:generation": figures.lineage(cands, lin, "generation", tz),
        "lineage:time": figures.lineage(cands, lin, "time", tz),
        "slots": figures.slots(cands, lin, timeline, tz),
        "acceptance": figures.acceptance(bins, snap.run.temperature0),
        "failures": figures.failures(fails, tz),
        "curves": figures.curves(cands, series),
    }
    return figs, meta, table, hover, lin


def write_report(archive: Archive, run_name: str | None = None, out: Path | None = None, cdn: bool = False) -> Path:
    """Write the report of a run (the most recent when `run_name` is None) to `out` (default
    reports/<run>.html) and return the path. The file is replaced atomically, so a browser
    reloading it never sees half a report. Raises ArchiveError for an unknown run (or an
    archive without runs) and ReportError (an ArchiveError) when `out` cannot be written."""
    built = build_report(archive, run_name, cdn=cdn)
    return save(built, out)


def target_path(run_name: str, out: Path | None) -> Path:
    target = Path(out) if out is not None else default_path(run_name)
    return target / default_path(run_name).name if target.is_dir() else target


def save(built: Built, out: Path | None) -> Path:
    """Write a built report to `out` (a file or a folder; default reports/<run>.html), atomically."""
    target = target_path(built.run, out)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(built.html)
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as e:
        raise ReportError(f"cannot write the report to {target} ({e.strerror or e}).") from None
    return target
