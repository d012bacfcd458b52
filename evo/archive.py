"""The archive: every run, candidate, evaluation, curve point, event and LLM call, in any
SQLAlchemy database through SQLModel.

Every state change goes through a method of `Archive`, which writes the change and its event in
one transaction, so an archive read at any moment (or after kill -9) is consistent.

SQLite (the default) runs in WAL mode with a busy timeout, and writers take their lock up front
(BEGIN IMMEDIATE) so two writers never deadlock on a lock upgrade; readers such as `evo status`
or a report never block the run.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from datetime import datetime, timezone
from hashlib import sha256
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from sqlalchemy import Column, Index, Text, UniqueConstraint, event, func
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, OperationalError, SQLAlchemyError
from sqlmodel import Field, Session, SQLModel, create_engine, select

SCHEMA_VERSION = 1
DEFAULT_STORAGE = "sqlite:///archive/evo.db"

# Lifecycle states (Optuna's names)
WAITING, RUNNING, COMPLETE, FAIL, PRUNED = "WAITING", "RUNNING", "COMPLETE", "FAIL", "PRUNED"
# Run status
ACTIVE, FINISHED, INTERRUPTED = "ACTIVE", "FINISHED", "INTERRUPTED"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def seconds_since(moment: datetime) -> float:
    """Age of a stored timestamp; some databases hand back naive UTC values."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return (utcnow() - moment).total_seconds()


def code_hash(code: str) -> str:
    return sha256(code.encode("utf-8")).hexdigest()


class ArchiveError(Exception):
    """Bad input about the archive (unknown run or candidate, unusable URL): one sentence."""


# ---------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------

class Meta(SQLModel, table=True):
    key: str = Field(primary_key=True)
    value: str


class Code(SQLModel, table=True):
    """Content-addressed train.py source: identical code is stored, and trained, once."""
    hash: str = Field(primary_key=True)
    text: str = Field(sa_column=Column(Text, nullable=False))


class Run(SQLModel, table=True):
    id: Optional[int] = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True)
    status: str = ACTIVE
    config: str = Field(sa_column=Column(Text, nullable=False))   # JSON of RunConfig
    sigma: Optional[float] = None              # run-to-run noise of the seed, in val_bpb
    temperature0: Optional[float] = None       # resolved initial temperature
    rng_state: Optional[str] = Field(default=None, sa_column=Column(Text))  # JSON of random.getstate()
    next_number: int = 0
    seed_id: Optional[int] = None              # the candidate the population starts from
    active_seconds: float = 0.0                # wall time spent running, summed over resumes
    owner: Optional[str] = None                # host:pid of the process running it
    heartbeat_at: Optional[datetime] = None
    created_at: datetime = Field(default_factory=utcnow)
    finished_at: Optional[datetime] = None


class Candidate(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("run_id", "number"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="run.id", index=True)
    number: int
    parent_id: Optional[int] = Field(default=None, foreign_key="candidate.id")
    parent2_id: Optional[int] = Field(default=None, foreign_key="candidate.id")
    operator: str
    code_hash: str = Field(foreign_key="code.hash", index=True)
    hypothesis: str = ""
    rationale: str = Field(default="", sa_column=Column(Text))
    model: Optional[str] = None                # LLM that proposed it, if any
    state: str = WAITING
    fail_reason: Optional[str] = None
    fail_detail: Optional[str] = Field(default=None, sa_column=Column(Text))
    val_bpb: Optional[float] = None            # mean over COMPLETE evaluations
    imported_val_bpb: Optional[float] = None   # what another machine measured (greedy results.tsv, another run)
    val_bpb_std: Optional[float] = None
    n_evals: int = 0
    accepted: Optional[bool] = None
    accept_temperature: Optional[float] = None
    accept_probability: Optional[float] = None
    accept_delta: Optional[float] = None       # val_bpb minus its competitor's
    competitor_id: Optional[int] = None
    in_population: bool = False
    created_at: datetime = Field(default_factory=utcnow)
    finished_at: Optional[datetime] = None


class Evaluation(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("candidate_id", "replicate"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="run.id", index=True)
    candidate_id: int = Field(foreign_key="candidate.id", index=True)
    replicate: int                             # 0, 1, ...: each gets its own seed
    seed: int
    state: str = WAITING
    fail_reason: Optional[str] = None
    detail: Optional[str] = Field(default=None, sa_column=Column(Text))
    slot: Optional[str] = None
    returncode: Optional[int] = None
    val_bpb: Optional[float] = None
    training_seconds: Optional[float] = None
    total_seconds: Optional[float] = None
    peak_vram_mb: Optional[float] = None
    mfu_percent: Optional[float] = None
    total_tokens_M: Optional[float] = None
    num_steps: Optional[int] = None
    num_params_M: Optional[float] = None
    depth: Optional[int] = None
    wall_seconds: Optional[float] = None
    harness_seconds: Optional[float] = None    # wall time outside the candidate's process
    workdir: Optional[str] = None
    log_tail: Optional[str] = Field(default=None, sa_column=Column(Text))
    started_at: Optional[datetime] = None
    finished_at: Optional[datetime] = None


class CurvePoint(SQLModel, table=True):
    id: Optional[int] = Field(default=None, primary_key=True)
    evaluation_id: int = Field(foreign_key="evaluation.id", index=True)
    step: int
    elapsed: float
    loss: float


class Event(SQLModel, table=True):
    __table_args__ = (Index("ix_event_run_at", "run_id", "id"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="run.id")
    candidate_id: Optional[int] = None
    at: datetime = Field(default_factory=utcnow)
    kind: str
    message: str = Field(sa_column=Column(Text, nullable=False))
    data: Optional[str] = Field(default=None, sa_column=Column(Text))


class LLMCall(SQLModel, table=True):
    id: Optional[int] = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="run.id", index=True)
    candidate_id: Optional[int] = Field(default=None, foreign_key="candidate.id")
    at: datetime = Field(default_factory=utcnow)
    model: str
    purpose: str = "mutate"
    tokens_in: int = 0
    tokens_out: int = 0
    latency_s: float = 0.0
    cost_usd: float = 0.0
    error: Optional[str] = Field(default=None, sa_column=Column(Text))
    prompt: Optional[str] = Field(default=None, sa_column=Column(Text))
    response: Optional[str] = Field(default=None, sa_column=Column(Text))


# ---------------------------------------------------------------------------
# Engine setup
# ---------------------------------------------------------------------------

def _sqlite_engine(url: str, immediate: bool) -> Engine:
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # let SQLAlchemy's begin event issue BEGIN itself
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def open_engine(url: str, *, writer: bool = True) -> Engine:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ArchiveError(f"storage URL {url!r} is not a valid SQLAlchemy URL.") from None
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            db = Path(parsed.database)
            if writer:
                try:
                    db.parent.mkdir(parents=True, exist_ok=True)
                except OSError as e:
                    raise ArchiveError(f"cannot create the archive folder {db.parent} ({e.strerror}).") from None
            elif not db.exists():
                raise ArchiveError(f"no archive at {db}; start a run with `evo run` first, or pass --storage.")
        return _sqlite_engine(url, immediate=writer)
    try:
        return create_engine(url, pool_pre_ping=True)
    except (ArgumentError, ImportError, SQLAlchemyError) as e:
        raise ArchiveError(f"cannot open storage {url!r} ({type(e).__name__}: {e}).") from None


def files_dir(url: str) -> Path:
    """Where candidate folders live: beside a SQLite file, else ./archive."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        return Path(parsed.database).parent
    return Path("archive")


# ---------------------------------------------------------------------------
# The archive
# ---------------------------------------------------------------------------

class Archive:
    """Thin shell over the database. Reads return detached rows; writes are one transaction each."""

    def __init__(self, url: str = DEFAULT_STORAGE, *, writer: bool = True,
                 listener: Callable[[Event], None] | None = None):
        self.url = url
        self.listener = listener  # told of each event once its transaction commits
        self._pending: list[Event] = []
        self.engine = open_engine(url, writer=writer)
        self.files = files_dir(url)
        try:
            if writer:
                SQLModel.metadata.create_all(self.engine)
                self._check_schema()
            else:
                with Session(self.engine) as s:
                    s.exec(select(Meta)).all()
        except OperationalError as e:
            raise ArchiveError(f"cannot open storage {url!r} ({e.orig}).") from None

    def _check_schema(self) -> None:
        with self.session() as s:
            meta = s.get(Meta, "schema_version")
            if meta is None:
                s.add(Meta(key="schema_version", value=str(SCHEMA_VERSION)))
            elif int(meta.value) > SCHEMA_VERSION:
                raise ArchiveError(f"the archive has schema version {meta.value}, newer than this evo "
                                   f"({SCHEMA_VERSION}); upgrade evo.")
            # Older versions migrate here, one step at a time, when the schema changes.

    @contextmanager
    def session(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as s:
            try:
                yield s
                s.commit()
            finally:
                pending, self._pending = self._pending, []
        if self.listener:
            for ev in pending:
                self.listener(ev)

    def close(self) -> None:
        self.engine.dispose()

    # ----- reads ---------------------------------------------------------------------------

    def runs(self) -> list[Run]:
        with self.session() as s:
            return list(s.exec(select(Run).order_by(Run.id)))

    def find_run(self, name: str | None) -> Run:
        """The named run, or the most recent one when no name is given."""
        with self.session() as s:
            if name is None:
                run = s.exec(select(Run).order_by(Run.id.desc())).first()
                if run is None:
                    raise ArchiveError("the archive has no runs yet; start one with `evo run`.")
                return run
            run = s.exec(select(Run).where(Run.name == name)).first()
        if run is None:
            known = ", ".join(r.name for r in self.runs()) or "none"
            raise ArchiveError(f"no run named {name!r} in the archive (runs: {known}).")
        return run

    def run_by_id(self, run_id: int) -> Run:
        with self.session() as s:
            return s.get(Run, run_id)

    def candidates(self, run_id: int) -> list[Candidate]:
        with self.session() as s:
            return list(s.exec(select(Candidate).where(Candidate.run_id == run_id).order_by(Candidate.number)))

    def candidate(self, run_id: int, number: int) -> Candidate:
        with self.session() as s:
            c = s.exec(select(Candidate).where(Candidate.run_id == run_id, Candidate.number == number)).first()
        if c is None:
            raise ArchiveError(f"no candidate number {number} in this run.")
        return c

    def candidate_by_id(self, candidate_id: int) -> Candidate:
        with self.session() as s:
            return s.get(Candidate, candidate_id)

    def code(self, hash_: str) -> str:
        with self.session() as s:
            return s.get(Code, hash_).text

    def find_code(self, run_id: int, hash_: str) -> Candidate | None:
        """The first candidate of this run with exactly this code."""
        with self.session() as s:
            return s.exec(select(Candidate).where(Candidate.run_id == run_id, Candidate.code_hash == hash_)
                          .order_by(Candidate.number)).first()

    def evaluations(self, run_id: int, candidate_id: int | None = None) -> list[Evaluation]:
        with self.session() as s:
            q = select(Evaluation).where(Evaluation.run_id == run_id)
            if candidate_id is not None:
                q = q.where(Evaluation.candidate_id == candidate_id)
            return list(s.exec(q.order_by(Evaluation.id)))

    def curve(self, evaluation_id: int) -> list[CurvePoint]:
        with self.session() as s:
            return list(s.exec(select(CurvePoint).where(CurvePoint.evaluation_id == evaluation_id).order_by(CurvePoint.step)))

    def events(self, run_id: int, limit: int | None = None) -> list[Event]:
        with self.session() as s:
            q = select(Event).where(Event.run_id == run_id).order_by(Event.id.desc())
            rows = list(s.exec(q.limit(limit) if limit else q))
        return rows[::-1]

    def llm_calls(self, run_id: int) -> list[LLMCall]:
        with self.session() as s:
            return list(s.exec(select(LLMCall).where(LLMCall.run_id == run_id).order_by(LLMCall.id)))

    # ----- writes: each is one transaction with its event ----------------------------------

    def _event(self, s: Session, run_id: int, kind: str, message: str, candidate_id: int | None = None,
               **data: Any) -> None:
        ev = Event(run_id=run_id, candidate_id=candidate_id, kind=kind, message=message,
                   data=json.dumps(data, default=str) if data else None)
        s.add(ev)
        self._pending.append(ev)

    def create_run(self, name: str, config: dict) -> Run:
        with self.session() as s:
            if s.exec(select(Run).where(Run.name == name)).first() is not None:
                raise ArchiveError(f"a run named {name!r} already exists; pass --resume to continue it, or choose another --name.")
            run = Run(name=name, config=json.dumps(config, sort_keys=True))
            s.add(run)
            s.flush()
            self._event(s, run.id, "run", f"run {name!r} created")
        return run

    def claim_run(self, run_id: int, owner: str, stale_after: float) -> None:
        """Mark this process as the run's owner; refuse when another live process holds it."""
        with self.session() as s:
            run = s.get(Run, run_id)
            if run.owner and run.owner != owner and run.heartbeat_at is not None and owner_alive(run.owner):
                age = seconds_since(run.heartbeat_at)
                if age < stale_after:
                    raise ArchiveError(f"run {run.name!r} is being run by {run.owner} (heartbeat {age:.0f}s ago); "
                                       f"stop it first, or wait {stale_after - age:.0f}s if it died.")
            run.owner, run.heartbeat_at, run.status = owner, utcnow(), ACTIVE
            s.add(run)
            self._event(s, run_id, "run", f"run claimed by {owner}")

    def heartbeat(self, run_id: int, active_seconds: float) -> None:
        with self.session() as s:
            run = s.get(Run, run_id)
            run.heartbeat_at, run.active_seconds = utcnow(), active_seconds
            s.add(run)

    def update_run(self, run_id: int, message: str | None = None, **fields: Any) -> Run:
        with self.session() as s:
            run = s.get(Run, run_id)
            for key, value in fields.items():
                setattr(run, key, value)
            s.add(run)
            if message:
                self._event(s, run_id, "run", message)
        return run

    def recover(self, run_id: int) -> list[int]:
        """After a crash or an interrupt: queue again every evaluation that was RUNNING or was
        interrupted, so nothing is lost and no COMPLETE evaluation runs twice. Returns their ids."""
        with self.session() as s:
            stale = list(s.exec(select(Evaluation).where(
                Evaluation.run_id == run_id,
                (Evaluation.state == RUNNING) | ((Evaluation.state == FAIL) & (Evaluation.fail_reason == "interrupted")))))
            for ev in stale:
                s.exec(_delete_curve(ev.id))
                ev.state, ev.fail_reason, ev.detail, ev.slot, ev.started_at, ev.finished_at = WAITING, None, None, None, None, None
                s.add(ev)
                cand = s.get(Candidate, ev.candidate_id)
                if cand.state in (RUNNING, FAIL):
                    cand.state, cand.fail_reason, cand.fail_detail = WAITING, None, None
                    s.add(cand)
                self._event(s, run_id, "recover", f"candidate {cand.number}: evaluation {ev.replicate} queued again",
                            cand.id)
        return [ev.id for ev in stale]

    def add_candidate(self, run_id: int, *, code: str, operator: str, parent_id: int | None = None,
                      parent2_id: int | None = None, hypothesis: str = "", rationale: str = "",
                      model: str | None = None, rng_state: str | None = None,
                      state: str = WAITING, fail_reason: str | None = None, fail_detail: str | None = None,
                      llm_calls: list[dict] = (), accepted: bool | None = None,
                      imported_val_bpb: float | None = None, is_seed: bool = False) -> Candidate:
        """Store a new candidate (and its code, once). The run's counter and RNG state advance in
        the same transaction, so a resume continues from exactly here."""
        h = code_hash(code)
        with self.session() as s:
            if s.get(Code, h) is None:
                s.add(Code(hash=h, text=code))
            run = s.get(Run, run_id)
            cand = Candidate(run_id=run_id, number=run.next_number, parent_id=parent_id, parent2_id=parent2_id,
                             operator=operator, code_hash=h, hypothesis=hypothesis, rationale=rationale, model=model,
                             state=state, fail_reason=fail_reason, fail_detail=fail_detail,
                             finished_at=utcnow() if state in (FAIL, PRUNED) else None,
                             accepted=accepted if accepted is not None else (False if state in (FAIL, PRUNED) else None),
                             imported_val_bpb=imported_val_bpb)
            run.next_number += 1
            if rng_state is not None:
                run.rng_state = rng_state
            s.add(cand)
            s.add(run)
            s.flush()
            for call in llm_calls:
                s.add(LLMCall(run_id=run_id, candidate_id=cand.id, **call))
            if is_seed:
                run.seed_id = cand.id
                s.add(run)
            what = f"candidate {cand.number} ({operator}): {hypothesis}" if hypothesis else f"candidate {cand.number} ({operator})"
            if operator == "import" and not is_seed:
                self._event(s, run_id, "import", what, cand.id)
            elif state == WAITING:
                self._event(s, run_id, "propose", what, cand.id)
            else:
                self._event(s, run_id, "state", f"{what} -> {state}({fail_reason}): {fail_detail}", cand.id)
        return cand

    def queue_evaluation(self, run_id: int, candidate_id: int, replicate: int, seed: int) -> Evaluation:
        with self.session() as s:
            ev = Evaluation(run_id=run_id, candidate_id=candidate_id, replicate=replicate, seed=seed)
            s.add(ev)
            cand = s.get(Candidate, candidate_id)
            if cand.state != WAITING:
                cand.state = WAITING
                s.add(cand)
            s.flush()
        return ev

    def waiting_evaluations(self, run_id: int) -> list[Evaluation]:
        with self.session() as s:
            return list(s.exec(select(Evaluation).where(Evaluation.run_id == run_id, Evaluation.state == WAITING)
                               .order_by(Evaluation.id)))

    def start_evaluation(self, evaluation_id: int, slot: str, workdir: str) -> None:
        with self.session() as s:
            ev = s.get(Evaluation, evaluation_id)
            ev.state, ev.slot, ev.workdir, ev.started_at = RUNNING, slot, workdir, utcnow()
            cand = s.get(Candidate, ev.candidate_id)
            cand.state = RUNNING
            s.add(ev)
            s.add(cand)
            self._event(s, ev.run_id, "start", f"candidate {cand.number} evaluation {ev.replicate} on slot {slot}",
                        cand.id, slot=slot)

    def finish_evaluation(self, evaluation_id: int, *, state: str, fail_reason: str | None, detail: str,
                          metrics: dict[str, float] | None, curve: list[tuple[int, float, float]],
                          returncode: int | None, wall_seconds: float, harness_seconds: float,
                          log_tail: str) -> Evaluation:
        """Record how an evaluation ended, with its curve, and refresh its candidate's statistics."""
        with self.session() as s:
            ev = s.get(Evaluation, evaluation_id)
            if ev.state != RUNNING:
                return ev  # already recorded (or re-queued by a recovery); never record twice
            ev.state, ev.fail_reason, ev.detail, ev.returncode = state, fail_reason, detail, returncode
            ev.wall_seconds, ev.harness_seconds, ev.log_tail, ev.finished_at = wall_seconds, harness_seconds, log_tail, utcnow()
            for key, value in (metrics or {}).items():
                if hasattr(ev, key):
                    setattr(ev, key, int(value) if key in ("num_steps", "depth") else value)
            s.add(ev)
            for step, elapsed, loss in curve:
                s.add(CurvePoint(evaluation_id=ev.id, step=step, elapsed=elapsed, loss=loss))
            cand = s.get(Candidate, ev.candidate_id)
            s.flush()
            self._refresh_candidate(s, cand)
            outcome = f"val_bpb {ev.val_bpb:.6f}" if state == COMPLETE else f"{state}({fail_reason}): {detail}"
            self._event(s, ev.run_id, "finish", f"candidate {cand.number} evaluation {ev.replicate}: {outcome}",
                        cand.id, state=state, fail_reason=fail_reason, val_bpb=ev.val_bpb, slot=ev.slot)
        return ev

    def _refresh_candidate(self, s: Session, cand: Candidate) -> None:
        evs = list(s.exec(select(Evaluation).where(Evaluation.candidate_id == cand.id)))
        done = [e for e in evs if e.state == COMPLETE]
        cand.n_evals = len(done)
        if done:
            values = [e.val_bpb for e in done]
            mean = sum(values) / len(values)
            cand.val_bpb = mean
            cand.val_bpb_std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else None
        pending = [e for e in evs if e.state in (WAITING, RUNNING)]
        failed = [e for e in evs if e.state == FAIL]
        if pending:
            cand.state = RUNNING if any(e.state == RUNNING for e in pending) else WAITING
        elif failed and not done:
            cand.state, cand.fail_reason, cand.fail_detail = FAIL, failed[-1].fail_reason, failed[-1].detail
            cand.finished_at = utcnow()
        else:
            cand.state, cand.finished_at = COMPLETE, utcnow()
        s.add(cand)

    def decide(self, candidate_id: int, *, accepted: bool, temperature: float | None, probability: float | None,
               delta: float | None, competitor_id: int | None, leaving: list[int], reason: str,
               rng_state: str | None = None) -> None:
        """Record an acceptance decision and the population change it makes, atomically."""
        with self.session() as s:
            cand = s.get(Candidate, candidate_id)
            cand.accepted, cand.accept_temperature, cand.accept_probability = accepted, temperature, probability
            cand.accept_delta, cand.competitor_id = delta, competitor_id
            if accepted:
                cand.in_population = True
            for member_id in leaving:
                member = s.get(Candidate, member_id)
                member.in_population = False
                s.add(member)
            s.add(cand)
            if rng_state is not None:
                run = s.get(Run, cand.run_id)
                run.rng_state = rng_state
                s.add(run)
            verdict = "accepted" if accepted else "rejected"
            self._event(s, cand.run_id, "decide", f"candidate {cand.number} {verdict}: {reason}", cand.id,
                        accepted=accepted, temperature=temperature, probability=probability, delta=delta,
                        leaving=leaving)

    def record_llm_calls(self, run_id: int, calls: list[dict], candidate_id: int | None = None) -> None:
        with self.session() as s:
            for call in calls:
                s.add(LLMCall(run_id=run_id, candidate_id=candidate_id, **call))

    def population(self, run_id: int) -> list[Candidate]:
        with self.session() as s:
            return list(s.exec(select(Candidate).where(Candidate.run_id == run_id, Candidate.in_population == True)  # noqa: E712
                               .order_by(Candidate.number)))

    def undecided(self, run_id: int) -> list[Candidate]:
        """Candidates whose evaluations are all done but whose acceptance was never recorded."""
        with self.session() as s:
            return list(s.exec(select(Candidate).where(
                Candidate.run_id == run_id, Candidate.accepted == None,  # noqa: E711
                Candidate.state.in_([COMPLETE, FAIL])).order_by(Candidate.number)))

    def cost(self, run_id: int) -> float:
        with self.session() as s:
            return float(s.exec(select(func.coalesce(func.sum(LLMCall.cost_usd), 0.0))
                                .where(LLMCall.run_id == run_id)).one())

    def count_candidates(self, run_id: int, *, after_number: int = -1, judged_only: bool = False,
                         exclude_imports: bool = False) -> int:
        """How many candidates a run has (numbered after `after_number`), counted in SQL: the engine
        asks every loop iteration, and a night can hold many thousands."""
        with self.session() as s:
            q = select(func.count()).select_from(Candidate).where(Candidate.run_id == run_id,
                                                                  Candidate.number > after_number)
            if judged_only:
                q = q.where(Candidate.accepted != None)  # noqa: E711
            if exclude_imports:
                q = q.where(Candidate.operator != "import")
            return int(s.exec(q).one())


def _delete_curve(evaluation_id: int):
    from sqlalchemy import delete
    return delete(CurvePoint).where(CurvePoint.evaluation_id == evaluation_id)


def owner_id() -> str:
    return f"{os.uname().nodename}:{os.getpid()}"


def owner_alive(owner: str) -> bool:
    """Whether the process named by an owner id may still run. On this host we can tell; on
    another host only the heartbeat can."""
    host, _, pid = owner.rpartition(":")
    if host != os.uname().nodename or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
