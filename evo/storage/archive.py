"""The archive: every run, candidate, evaluation, curve point, event and LLM call, in any
SQLAlchemy database through SQLModel.

Every state change goes through a method of `Archive`, which writes the change and its event in
one transaction, so an archive read at any moment (or after kill -9) is consistent.

SQLite (the default) runs in WAL mode with a busy timeout, and writes take their lock up front
(BEGIN IMMEDIATE) so two writers never deadlock on a lock upgrade; reads go through a reader
engine (plain BEGIN), so `evo status`, a report or the live view never take the write lock.

A database that fails (a damaged file, a full disk, a lock held too long) raises StorageError, one
sentence naming the file and the next step, from any statement: the engine's `handle_error` hook
is the one place that translates. A file with tables but no evo `meta` table is refused untouched.

A run has one owner (host:pid:start). While an Archive owns a run, every write first checks that
it still does (in the same transaction), so an owner that was taken over raises OwnershipLost and
never writes into the run again.
"""

from __future__ import annotations

import json
import os
import sqlite3
from contextlib import contextmanager
from datetime import datetime, timezone
from hashlib import sha256
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

from sqlalchemy import Column, Index, Text, UniqueConstraint, event, func, inspect
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, DatabaseError, OperationalError, SQLAlchemyError
from sqlmodel import Field, Session, SQLModel, create_engine, select

from evo.core.acceptance import noise_sigma
from evo.launch.logs import SUMMARY_KEYS

SCHEMA_VERSION = 1
DEFAULT_STORAGE = "sqlite:///archive/evo.db"

# Lifecycle states (Optuna's names)
WAITING, RUNNING, COMPLETE, FAIL, PRUNED = "WAITING", "RUNNING", "COMPLETE", "FAIL", "PRUNED"
# Run status (FAILED: the seed failed, so the run cannot go on; a new run must start it again)
ACTIVE, FINISHED, INTERRUPTED, FAILED = "ACTIVE", "FINISHED", "INTERRUPTED", "FAILED"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def seconds_since(moment: datetime) -> float:
    """Age of a stored timestamp; some databases hand back naive UTC values."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return (utcnow() - moment).total_seconds()


# An owner on another host whose heartbeat is this old may be taken over; on this host a live
# owner never is (see claim_run).
STALE_AFTER_SECONDS = 60.0


def code_hash(code: str) -> str:
    return sha256(code.encode("utf-8")).hexdigest()


class ArchiveError(Exception):
    """Bad input about the archive (unknown run or candidate, unusable URL): one sentence."""
    code = 2  # exit status of a command that ends with it


class StorageError(ArchiveError):
    """The database itself failed (a damaged or foreign file, a full disk, a lock held too long):
    an environment problem, one sentence naming the file and the next step."""
    code = 1


class OwnershipLost(ArchiveError):
    """Another process took the run over: this one must stop at once and write nothing more."""
    code = 1


# What a failing database means and what to do, by SQLite error name (extended names such as
# SQLITE_IOERR_WRITE match their prefix) or, for other drivers, a fragment of the message.
RESTORE = "restore it from a backup, or pass --storage to use another archive"
_STORAGE_PROBLEMS = (
    ("SQLITE_FULL", "or disk is full", "the disk is full", "free disk space, then `evo run --resume` continues the run"),
    ("SQLITE_CORRUPT", "malformed", "the file is damaged", RESTORE),
    ("SQLITE_NOTADB", "not a database", "it is not a SQLite database", RESTORE),
    ("SQLITE_BUSY", "is locked", "another process held its lock for too long", "try again once that process is done"),
    ("SQLITE_READONLY", "readonly database", "it is read-only", "make it and its folder writable, or pass --storage"),
    ("SQLITE_CANTOPEN", "unable to open", "it cannot be opened", "check that its folder exists and is readable, or pass --storage"),
    ("SQLITE_IOERR", "I/O error", "the disk failed to read or write it (is it full?)", "free disk space or check the disk, "
     "then try again"),
)


def storage_error(where: str, error: BaseException) -> StorageError:
    """The one sentence for a database failure."""
    name = getattr(error, "sqlite_errorname", "") or ""
    detail = str(error).strip().rstrip(".") or type(error).__name__
    for code, fragment, meaning, step in _STORAGE_PROBLEMS:
        if name == code or name.startswith(code + "_") or fragment in detail:
            return StorageError(f"the archive {where} cannot be used: {meaning} ({detail}); {step}.")
    return StorageError(f"the archive {where} cannot be used ({detail}); {RESTORE}.")


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL; None for another database or SQLite in memory."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        return Path(parsed.database)
    return None


def cut_short(header: bytes, size: int) -> int | None:
    """The size a SQLite file should have when it is shorter (a truncated copy), from its first 100
    bytes; None when it is not, or when the header cannot tell (SQLite then judges the file).
    Checked on every open: SQLite itself only fails when a read reaches a missing page."""
    if len(header) < 100 or not header.startswith(b"SQLite format 3\0"):
        return None
    page_size = int.from_bytes(header[16:18], "big")
    pages = int.from_bytes(header[28:32], "big")
    size_valid = pages > 0 and header[24:28] == header[92:96]  # change counter == version-valid-for
    expected = pages * (65536 if page_size == 1 else page_size)
    return expected if size_valid and size < expected else None


_opened: set[Path] = set()


def _first_open(db: Path) -> bool:
    """Whether this process opens `db` for the first time. Only then may it read the file itself:
    closing any descriptor of a file drops every POSIX lock the process holds on it, including the
    locks of SQLite connections already open, and another process could then checkpoint under a
    reader (SQLite reports "malformed") or write beside a writer."""
    key = db.resolve()
    first = key not in _opened
    _opened.add(key)
    return first


def _wal_has_frames(db: Path) -> bool:
    """A checkpoint copies WAL frames in page order, so page 1 (with the new size) can reach the
    file before the file grows: while the WAL holds frames, the header's size proves nothing."""
    try:
        return db.with_name(db.name + "-wal").stat().st_size > 32  # more than the WAL header
    except OSError:
        return False


def storage_name(url: str) -> str:
    """How messages name the storage: the file of a SQLite URL, else the URL without its password."""
    db = sqlite_file(url)
    return str(db) if db is not None else make_url(url).render_as_string(hide_password=True)


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
    owner: Optional[str] = None                # host:pid:start of the process running it (see owner_id)
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
        # Per-connection settings only: nothing here may change the file, which may not be an
        # archive at all (WAL mode is set once a writer has checked that it is).
        dbapi_conn.isolation_level = None  # let SQLAlchemy's begin event issue BEGIN itself
        cursor = dbapi_conn.cursor()
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
        db = sqlite_file(url)
        if db is not None:
            if writer:
                try:
                    db.parent.mkdir(parents=True, exist_ok=True)
                except OSError as e:
                    raise ArchiveError(f"cannot create the archive folder {db.parent} ({e.strerror}).") from None
            elif not db.exists():
                raise ArchiveError(f"no archive at {db}; start a run with `evo run` first, or pass --storage.")
        engine = _sqlite_engine(url, immediate=writer)
    else:
        try:
            engine = create_engine(url, pool_pre_ping=True)
        except (ArgumentError, ImportError, SQLAlchemyError) as e:
            raise ArchiveError(f"cannot open storage {url!r} ({type(e).__name__}: {e}).") from None
    where = storage_name(url)

    @event.listens_for(engine, "handle_error")
    def _storage_failed(context):
        # Operational failures and a damaged file become one sentence; integrity and programming
        # errors are bugs and stay as they are. A pre-ping's failure is the pool's to handle.
        error = context.sqlalchemy_exception
        if not context.is_pre_ping and (isinstance(error, OperationalError) or type(error) is DatabaseError):
            return storage_error(where, context.original_exception)
        return None

    return engine


def files_dir(url: str) -> Path:
    """Where candidate folders live: beside a SQLite file, else ./archive."""
    db = sqlite_file(url)
    return db.parent if db is not None else Path("archive")


# ---------------------------------------------------------------------------
# The archive
# ---------------------------------------------------------------------------

class Archive:
    """Thin shell over the database. Reads return detached rows; writes are one transaction each."""

    def __init__(self, url: str = DEFAULT_STORAGE, *, writer: bool = True,
                 listener: Callable[[Event], None] | None = None):
        self.url = url
        self.listener = listener  # told of each event once its transaction commits
        self.engine = open_engine(url, writer=writer)  # first: it checks the URL
        self.where = storage_name(url)
        self.reader = self.engine  # reads: plain BEGIN, never the write lock
        self.files = files_dir(url)
        self._claim: tuple[int, str] | None = None  # (run id, owner) while this archive owns a run
        db = sqlite_file(url)
        if db is not None and db.is_file() and _first_open(db) and not _wal_has_frames(db):
            with db.open("rb") as f:
                expected = cut_short(f.read(100), db.stat().st_size)
            if expected is not None:
                raise StorageError(f"the archive {self.where} is damaged (the file is cut short: "
                                   f"{db.stat().st_size} of {expected} bytes); {RESTORE}.")
        tables = set(inspect(self.engine).get_table_names())
        if tables and Meta.__tablename__ not in tables:
            raise StorageError(f"{self.where} is not an evo archive (it holds other tables: "
                               f"{', '.join(sorted(tables)[:5])}); evo leaves it untouched, pass --storage "
                               "with another file.")
        if not writer and not tables:
            raise ArchiveError(f"no archive in {self.where} yet; start a run with `evo run` first, or pass --storage.")
        if writer:
            if self.engine.dialect.name == "sqlite":
                self._prepare_sqlite(fresh=not tables)
            SQLModel.metadata.create_all(self.engine)
            if db is not None:  # (a database in memory exists for its one engine only)
                self.reader = open_engine(url, writer=False)
        self._check_schema(writer)

    def _prepare_sqlite(self, fresh: bool) -> None:
        """Before a writer touches an existing SQLite file, a quick integrity check (writing into a
        damaged b-tree spreads the damage); then WAL mode, which the file keeps. Outside any
        transaction, on the DBAPI connection."""
        with self.engine.connect() as conn:
            dbapi_conn = conn.connection.dbapi_connection
            try:
                if not fresh:
                    problems = [row[0] for row in dbapi_conn.execute("PRAGMA quick_check")]
                    if problems != ["ok"]:
                        raise StorageError(f"the archive {self.where} is damaged (integrity check: {problems[0]}); "
                                           f"{RESTORE}.")
                dbapi_conn.execute("PRAGMA journal_mode=WAL")
            except sqlite3.Error as e:
                raise storage_error(self.where, e) from None

    def _check_schema(self, writer: bool) -> None:
        with self.session() if writer else self._read() as s:
            meta = s.get(Meta, "schema_version")
            if meta is None and writer:
                s.add(Meta(key="schema_version", value=str(SCHEMA_VERSION)))
            elif meta is not None and int(meta.value) > SCHEMA_VERSION:
                raise ArchiveError(f"the archive has schema version {meta.value}, newer than this evo "
                                   f"({SCHEMA_VERSION}); upgrade evo.")
            # Older versions migrate here, one step at a time, when the schema changes.

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One write transaction. The events it adds are told to the listener once it commits (a
        transaction that fails tells nothing); each session keeps its own, so threads never hand
        out each other's. While this archive owns a run, the transaction first checks that it
        still does."""
        with Session(self.engine, expire_on_commit=False) as s:
            if self._claim is not None:
                self._owned(s, *self._claim)
            yield s
            s.commit()
        if self.listener:
            for ev in s.info.get("events", ()):
                self.listener(ev)

    @contextmanager
    def _read(self) -> Iterator[Session]:
        """One read transaction on the reader engine; rows come back detached, fully loaded."""
        with Session(self.reader, expire_on_commit=False) as s:
            yield s

    def close(self) -> None:
        self.engine.dispose()
        self.reader.dispose()

    # ----- reads ---------------------------------------------------------------------------

    def runs(self) -> list[Run]:
        with self._read() as s:
            return list(s.exec(select(Run).order_by(Run.id)))

    def find_run(self, name: str | None) -> Run:
        """The named run, or the most recent one when no name is given."""
        with self._read() as s:
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
        with self._read() as s:
            return s.get(Run, run_id)

    def candidates(self, run_id: int) -> list[Candidate]:
        with self._read() as s:
            return list(s.exec(select(Candidate).where(Candidate.run_id == run_id).order_by(Candidate.number)))

    def candidate(self, run_id: int, number: int) -> Candidate:
        if not 0 <= number < 2 ** 63:  # beyond SQLite's integers: no such candidate, not an OverflowError
            raise ArchiveError(f"no candidate number {number} in this run.")
        with self._read() as s:
            c = s.exec(select(Candidate).where(Candidate.run_id == run_id, Candidate.number == number)).first()
        if c is None:
            raise ArchiveError(f"no candidate number {number} in this run.")
        return c

    def candidate_by_id(self, candidate_id: int) -> Candidate:
        with self._read() as s:
            return s.get(Candidate, candidate_id)

    def code(self, hash_: str) -> str:
        with self._read() as s:
            return s.get(Code, hash_).text

    def find_code(self, run_id: int, hash_: str) -> Candidate | None:
        """The first candidate of this run with exactly this code."""
        with self._read() as s:
            return s.exec(select(Candidate).where(Candidate.run_id == run_id, Candidate.code_hash == hash_)
                          .order_by(Candidate.number)).first()

    def evaluations(self, run_id: int, candidate_id: int | None = None) -> list[Evaluation]:
        with self._read() as s:
            q = select(Evaluation).where(Evaluation.run_id == run_id)
            if candidate_id is not None:
                q = q.where(Evaluation.candidate_id == candidate_id)
            return list(s.exec(q.order_by(Evaluation.id)))

    def curve(self, evaluation_id: int) -> list[CurvePoint]:
        with self._read() as s:
            return list(s.exec(select(CurvePoint).where(CurvePoint.evaluation_id == evaluation_id).order_by(CurvePoint.step)))

    def events(self, run_id: int, limit: int | None = None) -> list[Event]:
        with self._read() as s:
            q = select(Event).where(Event.run_id == run_id).order_by(Event.id.desc())
            rows = list(s.exec(q.limit(limit) if limit else q))
        return rows[::-1]

    def llm_calls(self, run_id: int) -> list[LLMCall]:
        with self._read() as s:
            return list(s.exec(select(LLMCall).where(LLMCall.run_id == run_id).order_by(LLMCall.id)))

    # ----- writes: each is one transaction with its event ----------------------------------

    def _event(self, s: Session, run_id: int, kind: str, message: str, candidate_id: int | None = None,
               **data: Any) -> None:
        ev = Event(run_id=run_id, candidate_id=candidate_id, kind=kind, message=message,
                   data=json.dumps(data, default=str) if data else None)
        s.add(ev)
        s.info.setdefault("events", []).append(ev)

    def create_run(self, name: str, config: dict) -> Run:
        with self.session() as s:
            if s.exec(select(Run).where(Run.name == name)).first() is not None:
                raise ArchiveError(f"a run named {name!r} already exists; pass --resume to continue it, or choose another --name.")
            run = Run(name=name, config=json.dumps(config, sort_keys=True))
            s.add(run)
            s.flush()
            self._event(s, run.id, "run", f"run {name!r} created")
        return run

    def delete_run(self, run_id: int) -> bool:
        """Remove a run that archived no candidate (a start that failed), so its name is free again.
        A run with candidates is kept: returns whether the run was deleted."""
        from sqlalchemy import delete
        with self.session() as s:
            if s.exec(select(Candidate.id).where(Candidate.run_id == run_id)).first() is not None:
                return False
            s.exec(delete(Event).where(Event.run_id == run_id))
            s.exec(delete(LLMCall).where(LLMCall.run_id == run_id))
            s.exec(delete(Run).where(Run.id == run_id))
        return True

    def claim_run(self, run_id: int, owner: str, stale_after: float) -> None:
        """Make `owner` the run's owner; from now on every write of this archive checks that it
        still is. Refuses while another process holds it: on this host whenever that process is
        alive, whatever its heartbeat (a stopped process keeps its run); on another host, which
        this one cannot see, until its heartbeat is `stale_after` seconds old."""
        with self.session() as s:
            run = s.get(Run, run_id)
            if run.owner and run.owner != owner:
                host, pid, _ = _parse_owner(run.owner)
                age = seconds_since(run.heartbeat_at) if run.heartbeat_at is not None else None
                beat = f"heartbeat {age:.0f}s ago" if age is not None else "no heartbeat yet"
                here = on_this_host(run.owner)
                if here and owner_alive(run.owner):
                    raise ArchiveError(f"run {run.name!r} is held by process {pid} on this machine, which is still "
                                       f"alive ({beat}; a stopped process keeps its run); let it finish, or end it "
                                       f"with `kill {pid}` and then --resume.")
                if not here and age is not None and age < stale_after:
                    raise ArchiveError(f"run {run.name!r} is being run by process {pid} on host {host} ({beat}); "
                                       f"stop it there first, or wait {stale_after - age:.0f}s if it died.")
            run.owner, run.heartbeat_at, run.status = owner, utcnow(), ACTIVE
            s.add(run)
            self._event(s, run_id, "run", f"run claimed by {owner}")
        self._claim = (run_id, owner)

    def heartbeat(self, run_id: int, owner: str, active_seconds: float) -> None:
        """Tell readers the owner is alive. Raises OwnershipLost when another process has taken
        the run over: the caller must stop at once."""
        with self.session() as s:
            run = s.get(Run, run_id)
            if run.owner is not None:
                self._owned(s, run_id, owner)
            run.heartbeat_at, run.active_seconds = utcnow(), active_seconds
            s.add(run)

    def _owned(self, s: Session, run_id: int, owner: str) -> Run:
        # FOR UPDATE holds the row on servers that lock rows (PostgreSQL) so no takeover lands between
        # the check and this transaction's writes; SQLite's BEGIN IMMEDIATE already serialises writers.
        run = s.get(Run, run_id, with_for_update=True)
        if run.owner != owner:
            host, pid, _ = _parse_owner(run.owner) if run.owner else (None, None, None)
            now = f"process {pid} on host {host}" if run.owner else "nobody"
            raise OwnershipLost(f"run {run.name!r} was taken over while this process was stopped or unreachable "
                                f"(it is now held by {now}); this process stops without recording its running "
                                "evaluations, which the new owner runs again.")
        return run

    def update_run(self, run_id: int, message: str | None = None, **fields: Any) -> Run:
        with self.session() as s:
            run = s.get(Run, run_id)
            for key, value in fields.items():
                setattr(run, key, value)
            s.add(run)
            if message:
                self._event(s, run_id, "run", message)
        if "owner" in fields and self._claim is not None and fields["owner"] != self._claim[1]:
            self._claim = None  # released: writes stop checking ownership
        return run

    def recover(self, run_id: int) -> list[int]:
        """After a crash or an interrupt: queue again every evaluation that was RUNNING or was
        interrupted, so nothing is lost and no COMPLETE evaluation runs twice. Returns their ids."""
        with self.session() as s:
            stale = list(s.exec(select(Evaluation).where(
                Evaluation.run_id == run_id,
                (Evaluation.state == RUNNING) | ((Evaluation.state == FAIL) & (Evaluation.fail_reason == "interrupted")))))
            for ev in stale:
                self._requeue(s, ev)
        return [ev.id for ev in stale]

    def retry_failed(self, candidate_id: int) -> int:
        """Queue again every failed evaluation of an undecided candidate (a seed that failed for
        reasons of this machine, on --resume with new allowances). Returns how many."""
        with self.session() as s:
            failed = list(s.exec(select(Evaluation).where(Evaluation.candidate_id == candidate_id,
                                                          Evaluation.state == FAIL)))
            for ev in failed:
                self._requeue(s, ev)
        return len(failed)

    def _requeue(self, s: Session, ev: Evaluation) -> None:
        s.exec(_delete_curve(ev.id))
        ev.state, ev.fail_reason, ev.detail, ev.slot, ev.started_at, ev.finished_at = WAITING, None, None, None, None, None
        s.add(ev)
        cand = s.get(Candidate, ev.candidate_id)
        if cand.state in (RUNNING, FAIL):
            cand.state, cand.fail_reason, cand.fail_detail = WAITING, None, None
            s.add(cand)
        self._event(s, ev.run_id, "recover", f"candidate {cand.number}: evaluation {ev.replicate} queued again", cand.id)

    def add_candidate(self, run_id: int, *, evaluation_seeds: Sequence[int] = (), **fields: Any) -> Candidate:
        """Store a new candidate (fields: those of `_insert_candidate`) with its first evaluations
        queued, replicate r training with evaluation_seeds[r], in one transaction: a kill never
        leaves a WAITING candidate that nothing will evaluate."""
        with self.session() as s:
            cand = self._insert_candidate(s, run_id, **fields)
            for replicate, seed in enumerate(evaluation_seeds):
                self._insert_evaluation(s, cand, replicate, seed)
        return cand

    def add_seed(self, run_id: int, history: Sequence[dict[str, Any]], seed: dict[str, Any],
                 evaluation_seeds: Sequence[int]) -> Candidate:
        """Archive where a run starts in one transaction: the imported history (oldest first, each
        item the fields of `_insert_candidate`, its "parent" the index of an earlier item), the seed
        and its replicate evaluations. A kill leaves all of it or none: history is never imported
        twice and the seed never lacks its evaluations."""
        with self.session() as s:
            ids: list[int] = []
            for item in [*history, seed]:
                fields = {k: v for k, v in item.items() if k != "parent"}
                parent = item.get("parent")
                ids.append(self._insert_candidate(s, run_id, parent_id=ids[parent] if parent is not None else None,
                                                  is_seed=item is seed, **fields).id)
            cand = s.get(Candidate, ids[-1])
            for replicate, value in enumerate(evaluation_seeds):
                self._insert_evaluation(s, cand, replicate, value)
        return cand

    def _insert_candidate(self, s: Session, run_id: int, *, code: str, operator: str, parent_id: int | None = None,
                          parent2_id: int | None = None, hypothesis: str = "", rationale: str = "",
                          model: str | None = None, rng_state: str | None = None,
                          state: str = WAITING, fail_reason: str | None = None, fail_detail: str | None = None,
                          llm_calls: list[dict] = (), accepted: bool | None = None,
                          imported_val_bpb: float | None = None, is_seed: bool = False) -> Candidate:
        """A new candidate (and its code, once) inside the caller's transaction. The run's counter
        and RNG state advance with it, so a resume continues from exactly here."""
        h = code_hash(code)
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
            ev = self._insert_evaluation(s, s.get(Candidate, candidate_id), replicate, seed)
            s.flush()
        return ev

    def _insert_evaluation(self, s: Session, cand: Candidate, replicate: int, seed: int) -> Evaluation:
        ev = Evaluation(run_id=cand.run_id, candidate_id=cand.id, replicate=replicate, seed=seed)
        s.add(ev)
        if cand.state != WAITING:
            cand.state = WAITING
            s.add(cand)
        return ev

    def cancel_waiting(self, candidate_id: int, reason: str) -> list[int]:
        """PRUNE a candidate's evaluations that have not started, with the reason, and refresh its
        state from those that ran. Returns the replicates cancelled."""
        with self.session() as s:
            cand = s.get(Candidate, candidate_id)
            waiting = list(s.exec(select(Evaluation).where(Evaluation.candidate_id == candidate_id,
                                                           Evaluation.state == WAITING).order_by(Evaluation.replicate)))
            for ev in waiting:
                ev.state, ev.detail, ev.finished_at = PRUNED, reason, utcnow()
                s.add(ev)
            if waiting:
                s.flush()
                self._refresh_candidate(s, cand)
                replicates = ", ".join(str(ev.replicate) for ev in waiting)
                self._event(s, cand.run_id, "state", f"candidate {cand.number}: evaluation(s) {replicates} cancelled: "
                            f"{reason}", cand.id)
        return [ev.replicate for ev in waiting]

    def waiting_evaluations(self, run_id: int) -> list[Evaluation]:
        with self._read() as s:
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
                if key in SUMMARY_KEYS:  # never seed, state, id or the harness's timings: a candidate printed these
                    whole = key in ("num_steps", "depth")
                    setattr(ev, key, (int(value) if abs(value) < 2**63 else None) if whole else value)
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
            cand.val_bpb_std = noise_sigma(values)
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
        with self._read() as s:
            return list(s.exec(select(Candidate).where(Candidate.run_id == run_id, Candidate.in_population == True)  # noqa: E712
                               .order_by(Candidate.number)))

    def undecided(self, run_id: int) -> list[Candidate]:
        """Candidates whose evaluations are all done but whose acceptance was never recorded."""
        with self._read() as s:
            return list(s.exec(select(Candidate).where(
                Candidate.run_id == run_id, Candidate.accepted == None,  # noqa: E711
                Candidate.state.in_([COMPLETE, FAIL])).order_by(Candidate.number)))

    def cost(self, run_id: int) -> float:
        with self._read() as s:
            return float(s.exec(select(func.coalesce(func.sum(LLMCall.cost_usd), 0.0))
                                .where(LLMCall.run_id == run_id)).one())

    def count_candidates(self, run_id: int, *, after_number: int = -1, judged_only: bool = False,
                         exclude_imports: bool = False) -> int:
        """How many candidates a run has (numbered after `after_number`), counted in SQL: the engine
        asks every loop iteration, and a night can hold many thousands."""
        with self._read() as s:
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
    """host:pid:start of this process; the start time tells a reused pid from the owner."""
    pid = os.getpid()
    stat = _proc_stat(pid)
    return f"{os.uname().nodename}:{pid}" + (f":{stat[1]}" if stat else "")


def _parse_owner(owner: str) -> tuple[str, int | None, str | None]:
    """host, pid and start time (None when not recorded) of an owner id (host:pid[:start])."""
    host, _, rest = owner.partition(":")
    pid, _, start = rest.partition(":")
    return host, int(pid) if pid.isdigit() else None, start or None


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """State and start time (clock ticks after boot) of a process, from /proc/<pid>/stat; None
    where there is no such process or no /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after the command name, which may hold spaces
    return fields[0], fields[19]


def on_this_host(owner: str) -> bool:
    return _parse_owner(owner)[0] == os.uname().nodename


def liveness(run: Run) -> tuple[bool, float | None]:
    """Whether the run's owner process lives (as far as this host can tell) and its heartbeat's age
    in seconds: what `view.run_status` needs to tell a running run from a dead one."""
    return (owner_alive(run.owner) if run.owner else False,
            seconds_since(run.heartbeat_at) if run.heartbeat_at else None)


def owner_alive(owner: str) -> bool:
    """Whether the process named by an owner id may still run. On this host we can tell (a zombie,
    or a reused pid with another start time, is dead); on another host only its heartbeat can."""
    host, pid, start = _parse_owner(owner)
    if not on_this_host(owner):
        return True
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    stat = _proc_stat(pid)
    if stat is None:
        return True  # no /proc: the pid exists, which is all this host can tell
    state, started = stat
    return state not in ("Z", "X") and (start is None or started == start)
