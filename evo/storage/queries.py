"""Read models: what the report and the lineage memory read out of the archive, each in one read
transaction on a reader engine (never the write lock), so each is a consistent snapshot even while
`evo run` writes (SQLite in WAL mode gives a reader its own snapshot and never blocks the writer).

The report's rows come back as named tuples (much faster than ORM objects on a 10,000-candidate
run) with the tables' attribute names; large texts (code, log tails) are read per batch of
candidates (`detail_rows`), so memory stays bounded.
"""

from __future__ import annotations

import json
from collections import namedtuple
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable, Iterator

from sqlalchemy.engine import make_url
from sqlmodel import Session, select

from evo.core.lineage import best, first_parents
from evo.storage.archive import Archive, liveness
from evo.storage.models import FAIL, METRICS, NO_PROPOSAL, Candidate, CandidateDiff, Code, CurvePoint, Evaluation, LLMCall, Run

# Evaluation columns the figures need (not the log tail or the failure detail: those stream later).
EVAL_COLUMNS = (Evaluation.id, Evaluation.candidate_id, Evaluation.replicate, Evaluation.seed, Evaluation.state,
                Evaluation.fail_reason, Evaluation.slot, Evaluation.wall_seconds, Evaluation.started_at,
                Evaluation.finished_at, Evaluation.startup_seconds, Evaluation.trained_seconds, Evaluation.load_avg,
                Evaluation.cores,
                *(getattr(Evaluation, key) for key in METRICS))
CALL_COLUMNS = (LLMCall.id, LLMCall.candidate_id, LLMCall.at, LLMCall.model, LLMCall.purpose, LLMCall.tokens_in,
                LLMCall.tokens_out, LLMCall.latency_s, LLMCall.cost_usd, LLMCall.error)
CANDIDATE_COLUMNS = tuple(getattr(Candidate, c.name) for c in Candidate.__table__.columns)
IN_BATCH = 500  # ids per IN (...) list: far below any database's limit on bound parameters


def chunked(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """`items` in lists of `size` (the last one shorter)."""
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


# ----- the report --------------------------------------------------------------------------------

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


def _rows(s: Session, columns: tuple, where, order) -> list:
    """Rows as named tuples, with the columns' attribute names."""
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


def evaluation_rows(archive: Archive, run_id: int) -> list:
    """The run's evaluations in EVAL_COLUMNS (no log tails), oldest first."""
    with archive.read() as s:
        return _rows(s, EVAL_COLUMNS, Evaluation.run_id == run_id, Evaluation.id)


def evaluation_record(e: Any) -> dict:
    """One evaluation (an evaluation_rows row) as plain JSON values: its outcome and times, started
    (dispatched), training start and seconds by the harness's clock (training_start is the start
    plus the start-up, so it lags by the harness's own few milliseconds before the process), finished."""
    training_start = (e.started_at + timedelta(seconds=e.startup_seconds)
                      if e.started_at is not None and e.startup_seconds is not None else None)
    return {"replicate": e.replicate, "seed": e.seed, "state": e.state, "fail_reason": e.fail_reason, "slot": e.slot,
            "val_bpb": e.val_bpb, "num_steps": e.num_steps, "started_at": _iso(e.started_at),
            "training_start": _iso(training_start), "startup_seconds": e.startup_seconds,
            "trained_seconds": e.trained_seconds, "finished_at": _iso(e.finished_at), "wall_seconds": e.wall_seconds,
            "load_avg": e.load_avg, "cores": e.cores}


def candidate_records(archive: Archive, run_id: int, cands: list[Candidate]) -> list[dict]:
    """The run's candidates as plain JSON values (`evo candidates -f json`, `evo.load`): every
    column, the parents by number, and the candidate's evaluations (evaluation_record), oldest first."""
    numbers = {c.id: c.number for c in cands}
    evaluations: dict[int, list[dict]] = {}
    for e in evaluation_rows(archive, run_id):
        evaluations.setdefault(e.candidate_id, []).append(evaluation_record(e))
    return [{**c.model_dump(mode="json"), "parent": numbers.get(c.parent_id), "parent2": numbers.get(c.parent2_id),
             "evaluations": evaluations.get(c.id, [])} for c in cands]


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t is not None else None


def curve_points(s: Session, evaluation_ids: dict[int, int]) -> dict[int, list[CurvePoint]]:
    """CurvePoint rows per candidate position, for {position: evaluation id}."""
    if not evaluation_ids:
        return {}
    by_eval = {ev: pos for pos, ev in evaluation_ids.items()}
    out: dict[int, list[CurvePoint]] = {}
    for batch in chunked(list(by_eval), IN_BATCH):
        rows = s.exec(select(CurvePoint).where(CurvePoint.evaluation_id.in_(batch))
                      .order_by(CurvePoint.evaluation_id, CurvePoint.step))
        for p in rows:
            out.setdefault(by_eval[p.evaluation_id], []).append(p)
    return out


@dataclass
class DetailRows:
    """What the details of a batch of candidates are made from."""
    rows: dict[int, Any]                      # the batch's candidates (CANDIDATE_COLUMNS), by id
    lookup: dict[int, Any]                    # those and their parents outside the batch (id, number, code_hash)
    evals_of: dict[int, list[Any]]            # EVAL_COLUMNS rows per candidate id, oldest first
    calls_of: dict[int, list[Any]]            # CALL_COLUMNS rows per candidate id, oldest first
    tails: dict[int, tuple[int, int, str]]    # per candidate id: (evaluation id, replicate, log tail) of the last
    codes: dict[str, str] = field(default_factory=dict)  # code text by hash, where a diff must be made or code shown
    diffs: dict[int, str] = field(default_factory=dict)  # the stored diff against the first parent, by candidate id


def detail_rows(s: Session, ids: list[int], known_evals: set[int], last_call: int,
                codes: dict[str, str]) -> DetailRows:
    """The rows for the details of candidates `ids`. Only evaluations in `known_evals` and calls up
    to id `last_call` count, so rows read in another transaction (another process) agree with the
    snapshot the rest of the report shows. `codes` (the previous batch's) are reused where shared."""
    rows = {c.id: c for c in s.exec(select(*CANDIDATE_COLUMNS).where(Candidate.id.in_(ids)))}
    wanted = {x for c in rows.values() for x in (c.parent_id, c.parent2_id) if x is not None and x not in rows}
    others = {c.id: c for group in chunked(sorted(wanted), IN_BATCH)
              for c in s.exec(select(Candidate.id, Candidate.number, Candidate.code_hash).where(Candidate.id.in_(group)))}
    lookup = {**others, **rows}
    evals_of: dict[int, list[Any]] = {}
    for e in s.exec(select(*EVAL_COLUMNS).where(Evaluation.candidate_id.in_(ids)).order_by(Evaluation.id)):
        if e.id in known_evals:
            evals_of.setdefault(e.candidate_id, []).append(e)
    calls_of: dict[int, list[Any]] = {}
    for k in s.exec(select(*CALL_COLUMNS).where(LLMCall.candidate_id.in_(ids), LLMCall.id <= last_call)
                    .order_by(LLMCall.id)):
        calls_of.setdefault(k.candidate_id, []).append(k)
    tails: dict[int, tuple[int, int, str]] = {}
    for ev_id, cand_id, replicate, tail in s.exec(
            select(Evaluation.id, Evaluation.candidate_id, Evaluation.replicate, Evaluation.log_tail)
            .where(Evaluation.candidate_id.in_(ids), Evaluation.log_tail.is_not(None))):
        if ev_id in known_evals and tail and (cand_id not in tails or ev_id > tails[cand_id][0]):
            tails[cand_id] = (ev_id, replicate, tail)
    diffs = dict(s.exec(select(CandidateDiff.candidate_id, CandidateDiff.text).where(CandidateDiff.candidate_id.in_(ids))).all())
    # Code is read only for a root (shown whole) and for a candidate archived before diffs were stored.
    unstored = [c for c in rows.values() if c.id not in diffs]
    hashes = {c.code_hash for c in unstored} | {lookup[c.parent_id].code_hash for c in unstored if c.parent_id in lookup}
    kept = {h: t for h, t in codes.items() if h in hashes}   # what this batch shares with the last
    for group in chunked([h for h in hashes if h not in kept], 400):
        kept.update(s.exec(select(Code.hash, Code.text).where(Code.hash.in_(group))).all())
    return DetailRows(rows, lookup, evals_of, calls_of, tails, kept, diffs)


# ----- the lineage memory ------------------------------------------------------------------------

@dataclass
class LineageRows:
    """What the LLM operator is told about a candidate, as rows of one read transaction."""
    node: Candidate
    ancestors: list[Candidate]                # its first parents, nearest first
    siblings: list[Candidate]                 # its children, by number
    failures: list[Candidate]                 # failed children of it or its ancestors, latest first
    best: Candidate | None                    # the run's best (core.lineage.best)
    last_evaluation: dict[int, Evaluation]    # the latest evaluation of each candidate above that has one
    sigma: float | None                       # the run's noise
    ledger: list[Candidate] = field(default_factory=list)  # every judged or failed idea of the run, by number
    seed: Candidate | None = None


def lineage_rows(archive: Archive, run_id: int, candidate_id: int, recent_failures: int,
                 ledger_size: int = 0) -> LineageRows:
    """A candidate's neighbourhood in its run: ancestors, children, the `recent_failures` latest
    failed children of its line, the best, with their latest evaluations; and the run's ledger:
    up to `ledger_size` ideas judged or failed anywhere in the run (imported history included),
    the latest kept when there are more."""
    with archive.read() as s:
        in_run = Candidate.run_id == run_id
        node = s.get(Candidate, candidate_id)
        ancestors = first_parents(node, lambda i: s.get(Candidate, i))[1:]
        near = sorted({candidate_id} | {c.id for c in ancestors})
        failures = sorted((c for group in chunked(near, IN_BATCH) for c in s.exec(
            select(Candidate).where(in_run, Candidate.state == FAIL, Candidate.parent_id.in_(group))
            .order_by(Candidate.number.desc()).limit(recent_failures))), key=lambda c: -c.number)[:recent_failures] \
            if recent_failures > 0 else []
        siblings = list(s.exec(select(Candidate).where(in_run, Candidate.parent_id == candidate_id).order_by(Candidate.number)))
        top = best(s.exec(select(Candidate).where(in_run, Candidate.accepted == True, Candidate.val_bpb != None)  # noqa: E711,E712
                          .order_by(Candidate.number)))
        told = {c.id for c in [node, *ancestors, *siblings, *failures, *([top] if top else [])]}
        last: dict[int, Evaluation] = {}
        for group in chunked(sorted(told), IN_BATCH):
            for e in s.exec(select(Evaluation).where(Evaluation.run_id == run_id, Evaluation.candidate_id.in_(group))
                            .order_by(Evaluation.id)):
                last[e.candidate_id] = e
        run = s.get(Run, run_id)
        judged = (Candidate.accepted != None) | (Candidate.state == FAIL) | (Candidate.operator == "import")  # noqa: E711
        ledger = list(s.exec(select(Candidate).where(in_run, Candidate.id != run.seed_id, Candidate.hypothesis != NO_PROPOSAL,
                                                     judged).order_by(Candidate.number.desc()).limit(ledger_size)))[::-1] \
            if ledger_size else []
        return LineageRows(node, ancestors, siblings, failures, top, last, run.sigma, ledger,
                           s.get(Candidate, run.seed_id) if run.seed_id else None)


def code_of(archive: Archive, candidate_id: int) -> str:
    """A candidate's train.py source."""
    with archive.read() as s:
        return s.exec(select(Code.text).join(Candidate, Candidate.code_hash == Code.hash)
                      .where(Candidate.id == candidate_id)).one()
