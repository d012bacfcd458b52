"""The report's loading: the storage's read model (`evo.storage.queries`: the snapshot, the
curves, each batch's detail rows) made into every candidate's details, as compressed JSON chunks.

Large texts (code, log tails) are not loaded up front: details are made in batches of candidates,
so memory stays bounded on a 10,000-candidate run, and a big run's batches are shared out to
helper processes, each reading in its own transaction filtered to the report's snapshot.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlmodel import Session

from evo.report import data
from evo.core.diff import unified_diff
from evo.storage import Archive
from evo.storage.queries import Snapshot, chunked, curve_points, detail_rows, reader, snapshot

# The report reads the archive through these (re-exported from the storage's read model).
__all__ = ["Snapshot", "reader", "snapshot", "curve_points", "detail_chunks", "Details", "all_detail_chunks"]

# Runs at least this big get their details made by two or more processes (when the machine has
# the cores): diffing 10,000 versions of a 30 kB file is most of a report's time.
PARALLEL_MIN = 2000


def detail_chunks(s: Session, ids: list[int], known_evals: set[int], last_call: int, batch: int) -> list[str]:
    """The details of candidates `ids` (in this order; diff vs the parent, rationale, log tail of
    the last evaluation, evaluations, LLM calls), as compressed JSON chunks of `batch` candidates.
    Only evaluations in `known_evals` and calls up to id `last_call` count (see `detail_rows`)."""
    chunks: list[str] = []
    codes: dict[str, str] = {}
    for part in chunked(ids, batch):
        got = detail_rows(s, part, known_evals, last_call, codes)
        codes = got.codes
        out = []
        for cid in part:
            c = got.rows[cid]
            parent = got.lookup.get(c.parent_id) if c.parent_id is not None else None
            parent2 = got.lookup.get(c.parent2_id) if c.parent2_id is not None else None
            code = codes.get(c.code_hash, "")
            diff = "" if parent is None else got.diffs[cid] if cid in got.diffs else \
                unified_diff(codes.get(parent.code_hash, ""), code, f"#{parent.number}", f"#{c.number}")
            _, replicate, tail = got.tails.get(cid, (None, None, None))
            record = data.detail(c, parent, parent2, diff, got.evals_of.get(cid, []), tail, replicate,
                                 got.calls_of.get(cid, []))
            if parent is None:  # the seed (or the first import): its whole code
                record["code"] = code[:data.MAX_CODE_CHARS]
            out.append(record)
        chunks.append(data.compress(data.to_json(out)))
    return chunks


def _worker_main() -> None:
    """A helper process: read a job (JSON, from the file named in argv), write its chunks (JSON)
    on stdout."""
    job = json.loads(Path(sys.argv[1]).read_text())
    view = Archive(job["url"], writer=False)
    try:
        with Session(view.engine) as s:
            chunks = detail_chunks(s, job["ids"], set(job["known_evals"]), job["last_call"], job["batch"])
    finally:
        view.close()
    sys.stdout.write(json.dumps(chunks))


def _start_worker(job_file: Path, job: dict) -> subprocess.Popen:
    """A fresh interpreter running _worker_main (a plain subprocess, not multiprocessing: it never
    re-runs the caller's __main__, whatever started the report)."""
    job_file.write_text(json.dumps(job))
    package_root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([package_root, *filter(None, [os.environ.get("PYTHONPATH")])])}
    return subprocess.Popen([sys.executable, "-c", "from evo.report.load import _worker_main; _worker_main()",
                             str(job_file)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)


class Details:
    """Every candidate's details, in number order, as compressed chunks. A big run's are shared
    out: helper processes start at once on the later shares (each reading in its own transaction,
    filtered to this snapshot) while the caller goes on with the figures; `finish` makes the
    first share here and collects the rest. A helper that fails has its share redone here."""

    def __init__(self, view: Archive, s: Session, snap: Snapshot, batch: int, workers: int | None = None):
        self.s, self.batch = s, batch
        ids = [c.id for c in snap.cands]
        self.known = {e.id for e in snap.evals}
        self.last_call = max((k.id for k in snap.calls), default=0)
        cores = os.cpu_count() or 1
        workers = workers if workers is not None else (min(cores, 4) if len(ids) >= PARALLEL_MIN else 1)
        url = make_url(view.url)
        if workers <= 1 or len(ids) <= batch or (url.get_backend_name() == "sqlite"
                                                 and url.database in (None, "", ":memory:")):
            self.shares = [ids]
        else:
            per = -(-len(ids) // (workers * batch)) * batch   # whole batches
            self.shares = [ids[k:k + per] for k in range(0, len(ids), per)]
        self.procs: list[subprocess.Popen | None] = []
        self.tmp = None
        if len(self.shares) > 1:
            evals_of: dict[int, list[int]] = {}
            for e in snap.evals:
                evals_of.setdefault(e.candidate_id, []).append(e.id)
            self.tmp = tempfile.TemporaryDirectory(prefix="evo-report-")
            for k, share in enumerate(self.shares[1:]):
                job = {"url": view.url, "ids": share, "known_evals": [x for i in share for x in evals_of.get(i, [])],
                       "last_call": self.last_call, "batch": batch}
                try:
                    self.procs.append(_start_worker(Path(self.tmp.name) / f"job{k}.json", job))
                except OSError:
                    self.procs.append(None)

    def finish(self) -> list[str]:
        try:
            chunks = detail_chunks(self.s, self.shares[0], self.known, self.last_call, self.batch)
            for share, proc in zip(self.shares[1:], self.procs):
                out = None
                if proc is not None:
                    stdout, _ = proc.communicate()
                    if proc.returncode == 0:
                        try:
                            out = json.loads(stdout)
                        except ValueError:
                            out = None
                chunks += out if out is not None else detail_chunks(self.s, share, self.known, self.last_call,
                                                                    self.batch)
            return chunks
        finally:
            self.close()

    def close(self) -> None:
        """Stop any helper still running (when the report failed half-way) and clean up."""
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate()
        self.procs = []
        if self.tmp is not None:
            self.tmp.cleanup()
            self.tmp = None


def all_detail_chunks(view: Archive, s: Session, snap: Snapshot, batch: int, workers: int | None = None) -> list[str]:
    return Details(view, s, snap, batch, workers).finish()
