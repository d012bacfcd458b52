"""Reading a run out of the archive for the report, without ever taking a write lock.

Everything is read inside one read transaction, so the report is a consistent snapshot even
while `evo run` writes (SQLite in WAL mode gives a reader its own snapshot and never blocks the
writer). Large texts (code, log tails) are not loaded up front: `details` streams them in
batches of candidates, so memory stays bounded on a 10,000-candidate run.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterator

from sqlalchemy.engine import make_url
from sqlmodel import Session, select

from evo.archive import Archive, Candidate, Code, CurvePoint, Evaluation, LLMCall, Run, open_engine
from evo.report import data

# Evaluation columns the figures need (not the log tail or the failure detail: those stream later).
EVAL_COLUMNS = (Evaluation.id, Evaluation.candidate_id, Evaluation.replicate, Evaluation.seed, Evaluation.state,
                Evaluation.fail_reason, Evaluation.slot, Evaluation.val_bpb, Evaluation.wall_seconds,
                Evaluation.num_steps, Evaluation.peak_vram_mb, Evaluation.mfu_percent, Evaluation.num_params_M,
                Evaluation.total_tokens_M, Evaluation.started_at, Evaluation.finished_at)
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


@contextmanager
def reader(archive: Archive) -> Iterator[Session]:
    """A session on a reader engine: a deferred transaction (plain BEGIN) for SQLite files, even
    when `archive` itself was opened as a writer (whose sessions BEGIN IMMEDIATE)."""
    url = make_url(archive.url)
    own = url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:")
    engine = open_engine(archive.url, writer=False) if own else archive.engine
    try:
        with Session(engine, expire_on_commit=False) as s:
            yield s
            s.rollback()   # a reader has nothing to commit
    finally:
        if own:
            engine.dispose()


def snapshot(s: Session, run_id: int) -> Snapshot:
    run = s.get(Run, run_id)
    now = datetime.now(timezone.utc)
    cands = list(s.exec(select(Candidate).where(Candidate.run_id == run_id).order_by(Candidate.number)))
    evals = list(s.exec(select(*EVAL_COLUMNS).where(Evaluation.run_id == run_id).order_by(Evaluation.id)))
    calls = list(s.exec(select(*CALL_COLUMNS).where(LLMCall.run_id == run_id).order_by(LLMCall.id)))
    try:
        config = json.loads(run.config)
    except (TypeError, ValueError):
        config = {}
    return Snapshot(run, config, cands, evals, calls, now)


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


def details(s: Session, snap: Snapshot, lin: data.Lineage, batch: int) -> Iterator[list[dict]]:
    """The details of every candidate (diff vs its parent, rationale, log tail of its last
    evaluation, evaluations, LLM calls), `batch` candidates at a time, in number order."""
    cands = snap.cands
    evals_of: dict[int, list[Any]] = {}
    for e in snap.evals:
        evals_of.setdefault(e.candidate_id, []).append(e)
    calls_of: dict[int, list[Any]] = {}
    for k in snap.calls:
        if k.candidate_id is not None:
            calls_of.setdefault(k.candidate_id, []).append(k)
    known_evals = {e.id for e in snap.evals}
    codes: dict[str, str] = {}
    for start in range(0, len(cands), batch):
        part = range(start, min(start + batch, len(cands)))
        hashes = {cands[i].code_hash for i in part}
        hashes |= {cands[lin.parent[i]].code_hash for i in part if lin.parent[i] >= 0}
        missing = [h for h in hashes if h not in codes]
        # Keep only what this batch needs (and what a later batch is likely to reuse: this one's).
        codes = {h: t for h, t in codes.items() if h in hashes}
        for group in data.chunked(missing, 400):
            codes.update(s.exec(select(Code.hash, Code.text).where(Code.hash.in_(group))).all())
        ids = [cands[i].id for i in part]
        tails: dict[int, tuple[int, int, str]] = {}
        rows = s.exec(select(Evaluation.id, Evaluation.candidate_id, Evaluation.replicate, Evaluation.log_tail)
                      .where(Evaluation.candidate_id.in_(ids), Evaluation.log_tail.is_not(None)))
        for ev_id, cand_id, replicate, tail in rows:
            if ev_id in known_evals and tail and (cand_id not in tails or ev_id > tails[cand_id][0]):
                tails[cand_id] = (ev_id, replicate, tail)
        out = []
        for i in part:
            c = cands[i]
            p = lin.parent[i]
            parent = cands[p] if p >= 0 else None
            parent2 = cands[lin.parent2[i]] if lin.parent2[i] >= 0 else None
            code = codes.get(c.code_hash, "")
            diff = data.unified_diff(codes.get(parent.code_hash, ""), code, f"#{parent.number}", f"#{c.number}") \
                if parent is not None else ""
            _, replicate, tail = tails.get(c.id, (None, None, None))
            record = data.detail(c, parent, parent2, diff, evals_of.get(c.id, []), tail, replicate,
                                 calls_of.get(c.id, []))
            if parent is None:  # the seed (or the first import): its whole code
                record["code"] = code[:data.MAX_CODE_CHARS]
            out.append(record)
        yield out
