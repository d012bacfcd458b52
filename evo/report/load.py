"""Reading a run out of the archive for the report, without ever taking a write lock.

Everything is read inside one read transaction, so the report is a consistent snapshot even
while `evo run` writes (SQLite in WAL mode gives a reader its own snapshot and never blocks the
writer). Large texts (code, log tails) are not loaded up front: `details` streams them in
batches of candidates, so memory stays bounded on a 10,000-candidate run.
"""

from __future__ import annotations

import json
import os
from collections import namedtuple
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from sqlalchemy.engine import make_url
from sqlmodel import Session, select

from evo.storage.archive import Archive, Candidate, Code, CurvePoint, Evaluation, LLMCall, Run, liveness
from evo.launch.logs import SUMMARY_KEYS
from evo.report import data
from evo.report.diff import unified_diff

# Evaluation columns the figures need (not the log tail or the failure detail: those stream later).
EVAL_COLUMNS = (Evaluation.id, Evaluation.candidate_id, Evaluation.replicate, Evaluation.seed, Evaluation.state,
                Evaluation.fail_reason, Evaluation.slot, Evaluation.wall_seconds, Evaluation.started_at,
                Evaluation.finished_at, *(getattr(Evaluation, key) for key in SUMMARY_KEYS))
CALL_COLUMNS = (LLMCall.id, LLMCall.candidate_id, LLMCall.at, LLMCall.model, LLMCall.purpose, LLMCall.tokens_in,
                LLMCall.tokens_out, LLMCall.latency_s, LLMCall.cost_usd, LLMCall.error)


@dataclass
class Snapshot:
    run: Run
    config: dict
    cands: list[Candidate]
    evals: list[Any]                 # rows with EVAL_COLUMNS as attributes
    calls: list[Any]                 # rows with CALL_COLUMNS as attributes
    now: datetime
    owner_alive: bool = False        # whether the run's owner process lives, as far as this host can tell


@contextmanager
def reader(archive: Archive) -> Iterator[tuple[Archive, Session]]:
    """The archive opened as a reader, and a session on it. For a SQLite file that is a fresh
    reader (plain deferred BEGIN) even when `archive` was opened as a writer, whose sessions
    BEGIN IMMEDIATE and would take the write lock."""
    url = make_url(archive.url)
    own = url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:")
    view = Archive(archive.url, writer=False) if own else archive
    try:
        with Session(view.engine, expire_on_commit=False) as s:
            yield view, s   # closing the session ends the read transaction; rows stay loaded
    finally:
        if own:
            view.close()


CANDIDATE_COLUMNS = tuple(getattr(Candidate, c.name) for c in Candidate.__table__.columns)

# Runs at least this big get their details made by two or more processes (when the machine has
# the cores): diffing 10,000 versions of a 30 kB file is most of a report's time.
PARALLEL_MIN = 2000


def _rows(s: Session, columns: tuple, where, order) -> list:
    """Rows as named tuples: much faster to read and to use than ORM objects (or SQLAlchemy rows)
    on a run of 10,000 candidates, and with the same attribute names."""
    kind = namedtuple("Row", [c.key for c in columns])
    return [kind._make(r) for r in s.exec(select(*columns).where(where).order_by(order))]


def snapshot(s: Session, run_id: int) -> Snapshot:
    """The run, its candidates, evaluations and LLM calls, all from the session's one read
    transaction."""
    run = s.get(Run, run_id)
    now = datetime.now(timezone.utc)
    cands = _rows(s, CANDIDATE_COLUMNS, Candidate.run_id == run_id, Candidate.number)
    evals = _rows(s, EVAL_COLUMNS, Evaluation.run_id == run_id, Evaluation.id)
    calls = _rows(s, CALL_COLUMNS, LLMCall.run_id == run_id, LLMCall.id)
    try:
        config = json.loads(run.config)
    except (TypeError, ValueError):
        config = {}
    return Snapshot(run, config, cands, evals, calls, now, liveness(run)[0])


def curve_points(s: Session, evaluation_ids: dict[int, int]) -> dict[int, list[CurvePoint]]:
    """CurvePoint rows per candidate position, for {position: evaluation id}."""
    if not evaluation_ids:
        return {}
    by_eval = {ev: pos for pos, ev in evaluation_ids.items()}
    out: dict[int, list[CurvePoint]] = {}
    ids = list(by_eval)
    for batch in data.chunked(ids, 500):
        rows = s.exec(select(CurvePoint).where(CurvePoint.evaluation_id.in_(batch))
                      .order_by(CurvePoint.evaluation_id, CurvePoint.step))
        for p in rows:
            out.setdefault(by_eval[p.evaluation_id], []).append(p)
    return out


def detail_chunks(s: Session, ids: list[int], known_evals: set[int], last_call: int, batch: int) -> list[str]:
    """The details of candidates `ids` (in this order; diff vs the parent, rationale, log tail of
    the last evaluation, evaluations, LLM calls), as compressed JSON chunks of `batch` candidates.
    Only evaluations in `known_evals` and calls up to id `last_call` count, so details made in
    another transaction (another process) agree with the snapshot the rest of the report shows."""
    chunks: list[str] = []
    codes: dict[str, str] = {}
    for part in data.chunked(ids, batch):
        rows = {c.id: c for c in s.exec(select(*CANDIDATE_COLUMNS).where(Candidate.id.in_(part)))}
        wanted = {x for c in rows.values() for x in (c.parent_id, c.parent2_id) if x is not None and x not in rows}
        others = {c.id: c for group in data.chunked(sorted(wanted), 500)
                  for c in s.exec(select(Candidate.id, Candidate.number, Candidate.code_hash).where(Candidate.id.in_(group)))}
        lookup = {**others, **rows}
        evals_of: dict[int, list[Any]] = {}
        for e in s.exec(select(*EVAL_COLUMNS).where(Evaluation.candidate_id.in_(part)).order_by(Evaluation.id)):
            if e.id in known_evals:
                evals_of.setdefault(e.candidate_id, []).append(e)
        calls_of: dict[int, list[Any]] = {}
        for k in s.exec(select(*CALL_COLUMNS).where(LLMCall.candidate_id.in_(part), LLMCall.id <= last_call)
                        .order_by(LLMCall.id)):
            calls_of.setdefault(k.candidate_id, []).append(k)
        tails: dict[int, tuple[int, int, str]] = {}
        for ev_id, cand_id, replicate, tail in s.exec(
                select(Evaluation.id, Evaluation.candidate_id, Evaluation.replicate, Evaluation.log_tail)
                .where(Evaluation.candidate_id.in_(part), Evaluation.log_tail.is_not(None))):
            if ev_id in known_evals and tail and (cand_id not in tails or ev_id > tails[cand_id][0]):
                tails[cand_id] = (ev_id, replicate, tail)
        hashes = {c.code_hash for c in rows.values()} | {lookup[c.parent_id].code_hash for c in rows.values()
                                                         if c.parent_id in lookup}
        codes = {h: t for h, t in codes.items() if h in hashes}   # keep what this batch shares with the last
        for group in data.chunked([h for h in hashes if h not in codes], 400):
            codes.update(s.exec(select(Code.hash, Code.text).where(Code.hash.in_(group))).all())
        out = []
        for cid in part:
            c = rows[cid]
            parent = lookup.get(c.parent_id) if c.parent_id is not None else None
            parent2 = lookup.get(c.parent2_id) if c.parent2_id is not None else None
            code = codes.get(c.code_hash, "")
            diff = unified_diff(codes.get(parent.code_hash, ""), code, f"#{parent.number}", f"#{c.number}") \
                if parent is not None else ""
            _, replicate, tail = tails.get(cid, (None, None, None))
            record = data.detail(c, parent, parent2, diff, evals_of.get(cid, []), tail, replicate, calls_of.get(cid, []))
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
