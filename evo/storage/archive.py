"""The archive's writes: every state change of a run, candidate or evaluation is one method of
`Archive`, which writes the change and its event in one transaction, so an archive read at any
moment (or after kill -9) is consistent. A candidate's state is only ever derived from its
evaluations, by `models.derive_candidate` (a candidate that is never evaluated keeps the state it
was stored with: an import, a duplicate, a proposal that failed).

A file with tables but no evo `meta` table is refused untouched; an older schema is migrated by a
writer, one step at a time, and read by a reader through a per-connection view of the current one.

A run has one owner (host:pid:start). While an Archive owns a run, every write first checks that
it still does (in the same transaction), so an owner that was taken over raises OwnershipLost and
never writes into the run again.
"""

from __future__ import annotations

import json
import os
import sqlite3
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from sqlalchemy import case, delete, event, func, insert, inspect, text, update
from sqlmodel import Session, SQLModel, select

from evo.core import counts
from evo.core.counts import Counts
from evo.core.diff import unified_diff
from evo.core.lineage import best as best_of
from evo.storage.db import (DEFAULT_STORAGE, RESTORE, ArchiveError, StorageError, check_not_cut_short, files_dir,
                            open_engine, sqlite_file, storage_name, storage_error)
from evo.storage.models import (ACTIVE, COMPLETE, FAIL, FAILED, PRUNED, RUNNING, SCHEMA_VERSION, WAITING, Candidate, CandidateDiff, Code,
                                CurvePoint, Evaluation, Event, LLMCall, Meta, Run, code_hash, derive_candidate,
                                metric_values, post_selection_mean, REPORTING_REPLICATE, seconds_since, utcnow)

# An owner on another host whose heartbeat is this old may be taken over; on this host a live
# owner never is (see claim_run).
STALE_AFTER_SECONDS = 60.0

# Schema steps: what a writer runs to bring a version-N archive to N+1, and what a reader runs on
# each connection (temporary objects only, the file untouched) to see a version-N archive as the
# current one. Step 1 -> 2: the fix marker, until then the hypothesis's "fix:" prefix. Step 2 -> 3:
# the post-selection mean (models.post_selection_mean), from the evaluations.
_FIX_FROM_HYPOTHESIS = "substr(hypothesis, 1, 4) = 'fix:'"
_POST_FROM_EVALUATIONS = ("(SELECT AVG(e.val_bpb) FROM evaluation e WHERE e.candidate_id = candidate.id "
                          f"AND e.state = 'COMPLETE' AND e.replicate >= {REPORTING_REPLICATE} AND e.val_bpb IS NOT NULL)")
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: ("ALTER TABLE candidate ADD COLUMN fix BOOLEAN NOT NULL DEFAULT FALSE",
        f"UPDATE candidate SET fix = {_FIX_FROM_HYPOTHESIS}"),
    2: ("ALTER TABLE candidate ADD COLUMN val_bpb_post FLOAT",
        f"UPDATE candidate SET val_bpb_post = {_POST_FROM_EVALUATIONS}"),
    # Step 3 -> 4: spend per candidate, children of a candidate and waiting evaluations by index.
    # The candidatediff table itself is made by create_all, and filled by _store_missing_diffs.
    3: ("CREATE INDEX IF NOT EXISTS ix_llmcall_candidate_id ON llmcall (candidate_id)",
        "CREATE INDEX IF NOT EXISTS ix_candidate_parent_id ON candidate (parent_id)",
        "CREATE INDEX IF NOT EXISTS ix_evaluation_run_state ON evaluation (run_id, state)"),
    # Step 4 -> 5: the harness's start-up and training seconds and the load at the start (unknown
    # for older evaluations); a run's slot-seconds, counted from now on: the busy figure of an older
    # run covers only the sessions that measured their training, and is "not measured" before; σ̂'s groups, the population and the judged count by covering index.
    4: ("ALTER TABLE evaluation ADD COLUMN startup_seconds FLOAT",
        "ALTER TABLE evaluation ADD COLUMN trained_seconds FLOAT",
        "ALTER TABLE evaluation ADD COLUMN load_avg FLOAT",
        "ALTER TABLE run ADD COLUMN slot_seconds FLOAT NOT NULL DEFAULT 0",
        "CREATE INDEX IF NOT EXISTS ix_evaluation_run_state_values ON evaluation (run_id, state, candidate_id, val_bpb)",
        "CREATE INDEX IF NOT EXISTS ix_candidate_run_population ON candidate (run_id, in_population, number)",
        "CREATE INDEX IF NOT EXISTS ix_candidate_run_judged ON candidate (run_id, number, accepted, operator)"),
    # Step 5 -> 6: the core count beside the load (unknown for older evaluations: their load is
    # judged against the reading machine's cores).
    5: ("ALTER TABLE evaluation ADD COLUMN cores INTEGER",),
}
# The columns a step added, per table, as expressions over an older table: a reader sees them
# through one temporary view per table.
READ_AS_CURRENT: dict[int, dict[str, tuple[str, ...]]] = {
    1: {"candidate": (f"{_FIX_FROM_HYPOTHESIS} AS fix",)},
    2: {"candidate": (f"{_POST_FROM_EVALUATIONS} AS val_bpb_post",)},
    4: {"evaluation": ("NULL AS startup_seconds", "NULL AS trained_seconds", "NULL AS load_avg"),
        "run": ("0.0 AS slot_seconds",)},
    5: {"evaluation": ("NULL AS cores",)},
}
# Tables a step added, as a reader of an older archive sees them: empty.
READ_AS_EMPTY: dict[int, str] = {
    3: "CREATE TEMP TABLE IF NOT EXISTS candidatediff (candidate_id INTEGER PRIMARY KEY, text TEXT NOT NULL)",
}


class OwnershipLost(ArchiveError):
    """Another process took the run over: this one must stop at once and write nothing more."""
    code = 1


class Archive:
    """Thin shell over the database. Reads return detached rows; writes are one transaction each."""

    def __init__(self, url: str = DEFAULT_STORAGE, *, writer: bool = True,
                 listener: Callable[[Event], None] | None = None, clock: Callable[[], datetime] = utcnow):
        self.url = url
        self.listener = listener  # told of each event once its transaction commits
        # Every timestamp this archive writes, and the age of a heartbeat it judges, reads this clock:
        # synthetic runs in tests and benchmarks pass a simulated one to write a whole night in seconds.
        self.clock = clock
        self.engine = open_engine(url, writer=writer)  # first: it checks the URL
        self.where = storage_name(url)
        self.reader = self.engine  # reads: plain BEGIN, never the write lock
        self.files = files_dir(url)
        self._claim: tuple[int, str] | None = None  # (run id, owner) while this archive owns a run
        check_not_cut_short(url)
        db = sqlite_file(url)
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
        """Refuse a newer schema. A writer stamps a new archive and migrates an older one, every
        step in the one transaction (a kill leaves the old version, whole); a reader sees an older
        one through READ_AS_CURRENT's views on each of its connections."""
        with self.session() if writer else self.read() as s:
            meta = s.get(Meta, "schema_version")
            if meta is None and writer:
                s.add(Meta(key="schema_version", value=str(SCHEMA_VERSION)))
                return
            version = int(meta.value) if meta is not None else SCHEMA_VERSION
            if version > SCHEMA_VERSION:
                raise ArchiveError(f"the archive has schema version {meta.value}, newer than this evo "
                                   f"({SCHEMA_VERSION}); upgrade evo.")
            if writer and version < SCHEMA_VERSION:
                for step in range(version, SCHEMA_VERSION):
                    for statement in MIGRATIONS[step]:
                        s.exec(text(statement))
                    if step == 3:
                        _store_missing_diffs(s)
                meta.value = str(SCHEMA_VERSION)
                s.add(meta)
        if not writer and version < SCHEMA_VERSION:
            self._read_as_current(version)

    def _read_as_current(self, version: int) -> None:
        """Every connection of the reader engine gets temporary views that show the current schema
        over an older archive's tables; the file itself is never touched."""
        if self.reader.dialect.name != "sqlite":
            raise ArchiveError(f"the archive {self.where} has schema version {version}, older than this evo "
                               f"({SCHEMA_VERSION}); run `evo run --resume` on it once to upgrade it.")
        steps = range(version, SCHEMA_VERSION)
        added: dict[str, list[str]] = {}
        for k in steps:
            for table, columns in READ_AS_CURRENT.get(k, {}).items():
                added.setdefault(table, []).extend(columns)
        statements = [f"CREATE TEMP VIEW {table} AS SELECT *, {', '.join(columns)} FROM main.{table} AS {table}"
                      for table, columns in added.items()]
        statements += [READ_AS_EMPTY[k] for k in steps if k in READ_AS_EMPTY]

        def _views(dbapi_conn, _record):
            for statement in statements:
                dbapi_conn.execute(statement)

        event.listen(self.reader, "connect", _views)
        self.reader.dispose()  # connections opened before the views exist are not handed out again

    @contextmanager
    def session(self, *, fenced: bool = True) -> Iterator[Session]:
        """One write transaction. The events it adds are told to the listener once it commits (a
        transaction that fails tells nothing); each session keeps its own, so threads never hand
        out each other's. While this archive owns a run, the transaction first checks that it
        still does (unless `fenced` is off: a write that checks ownership itself)."""
        with Session(self.engine, expire_on_commit=False) as s:
            if fenced and self._claim is not None:
                self._owned(s, *self._claim)
            yield s
            s.commit()
        if self.listener:
            for ev in s.info.get("events", ()):
                self.listener(ev)

    @contextmanager
    def read(self) -> Iterator[Session]:
        """One read transaction on the reader engine; rows come back detached, fully loaded."""
        with Session(self.reader, expire_on_commit=False) as s:
            yield s

    def close(self) -> None:
        self.engine.dispose()
        self.reader.dispose()

    # ----- reads ---------------------------------------------------------------------------

    def runs(self) -> list[Run]:
        with self.read() as s:
            return list(s.exec(select(Run).order_by(Run.id)))

    def find_run(self, name: str | None) -> Run:
        """The named run; with no name, the most recent one that is running or ended (a run whose
        process died, or whose seed failed, only when there is no other)."""
        with self.read() as s:
            if name is None:
                runs = list(s.exec(select(Run).order_by(Run.id.desc())))
                if not runs:
                    raise ArchiveError("the archive has no runs yet; start one with `evo run`.")
                return next((r for r in runs if not _left_for_dead(r)), runs[0])
            run = s.exec(select(Run).where(Run.name == name)).first()
        if run is None:
            known = ", ".join(r.name for r in self.runs()) or "none"
            raise ArchiveError(f"no run named {name!r} in the archive (runs: {known}).")
        return run

    def run_by_id(self, run_id: int) -> Run:
        with self.read() as s:
            return s.get(Run, run_id)

    def candidates(self, run_id: int) -> list[Candidate]:
        with self.read() as s:
            return list(s.exec(select(Candidate).where(Candidate.run_id == run_id).order_by(Candidate.number)))

    def candidate(self, run_id: int, number: int) -> Candidate:
        if not 0 <= number < 2 ** 63:  # beyond SQLite's integers: no such candidate, not an OverflowError
            raise ArchiveError(f"no candidate number {number} in this run.")
        with self.read() as s:
            c = s.exec(select(Candidate).where(Candidate.run_id == run_id, Candidate.number == number)).first()
        if c is None:
            raise ArchiveError(f"no candidate number {number} in this run.")
        return c

    def candidate_by_id(self, candidate_id: int) -> Candidate:
        with self.read() as s:
            return s.get(Candidate, candidate_id)

    def code(self, hash_: str) -> str:
        with self.read() as s:
            return s.get(Code, hash_).text

    def find_code(self, run_id: int, hash_: str) -> Candidate | None:
        """The first candidate of this run with exactly this code."""
        with self.read() as s:
            return s.exec(select(Candidate).where(Candidate.run_id == run_id, Candidate.code_hash == hash_)
                          .order_by(Candidate.number)).first()

    def evaluations(self, run_id: int, candidate_id: int | None = None) -> list[Evaluation]:
        with self.read() as s:
            q = select(Evaluation).where(Evaluation.run_id == run_id)
            if candidate_id is not None:
                q = q.where(Evaluation.candidate_id == candidate_id)
            return list(s.exec(q.order_by(Evaluation.id)))

    def newest_evaluation(self, run_id: int) -> Evaluation | None:
        with self.read() as s:
            newest = s.exec(select(func.max(Evaluation.id)).where(Evaluation.run_id == run_id)).one()
            return s.get(Evaluation, newest) if newest is not None else None

    def replicated_values(self, run_id: int) -> dict[int, list[float]]:
        """The val_bpb of every COMPLETE evaluation of each candidate that has more than one (what
        the pooled σ̂ is made of), selected in SQL: most candidates are measured once."""
        done = (Evaluation.run_id == run_id, Evaluation.state == COMPLETE, Evaluation.val_bpb != None)  # noqa: E711
        twice = select(Evaluation.candidate_id).where(*done).group_by(Evaluation.candidate_id).having(func.count() > 1)
        groups: dict[int, list[float]] = {}
        with self.read() as s:
            for cid, value in s.exec(select(Evaluation.candidate_id, Evaluation.val_bpb)
                                     .where(*done, Evaluation.candidate_id.in_(twice)).order_by(Evaluation.id)):
                groups.setdefault(cid, []).append(value)
        return groups

    def first_complete(self, run_id: int) -> dict[int, int]:
        """Candidate id -> the id of its first COMPLETE evaluation."""
        with self.read() as s:
            return dict(s.exec(select(Evaluation.candidate_id, func.min(Evaluation.id))
                               .where(Evaluation.run_id == run_id, Evaluation.state == COMPLETE)
                               .group_by(Evaluation.candidate_id)).all())

    def outcomes(self, run_id: int) -> list[Any]:
        """Every candidate of the run as (id, number, parent_id, state, accepted, val_bpb) rows, by number:
        what rules over the whole run's history read, without the texts."""
        with self.read() as s:
            return list(s.exec(select(Candidate.id, Candidate.number, Candidate.parent_id, Candidate.state,
                                      Candidate.accepted, Candidate.val_bpb)
                               .where(Candidate.run_id == run_id).order_by(Candidate.number)).all())

    def curve(self, evaluation_id: int) -> list[CurvePoint]:
        with self.read() as s:
            return list(s.exec(select(CurvePoint).where(CurvePoint.evaluation_id == evaluation_id).order_by(CurvePoint.step)))

    def events(self, run_id: int, limit: int | None = None, kind: str | None = None) -> list[Event]:
        """The run's events, oldest first (the last `limit`; of one `kind`)."""
        with self.read() as s:
            q = select(Event).where(Event.run_id == run_id).order_by(Event.id.desc())
            if kind is not None:
                q = q.where(Event.kind == kind)
            rows = list(s.exec(q.limit(limit) if limit else q))
        return rows[::-1]

    def llm_calls(self, run_id: int) -> list[LLMCall]:
        with self.read() as s:
            return list(s.exec(select(LLMCall).where(LLMCall.run_id == run_id).order_by(LLMCall.id)))

    # ----- writes: each is one transaction with its event ----------------------------------

    def _event(self, s: Session, run_id: int, kind: str, message: str, candidate_id: int | None = None,
               **data: Any) -> None:
        ev = Event(run_id=run_id, candidate_id=candidate_id, at=self.clock(), kind=kind, message=message,
                   data=json.dumps(data, default=str) if data else None)
        s.add(ev)
        s.info.setdefault("events", []).append(ev)

    def create_run(self, name: str, config: dict) -> Run:
        with self.session() as s:
            if s.exec(select(Run).where(Run.name == name)).first() is not None:
                raise ArchiveError(f"a run named {name!r} already exists; pass --resume to continue it, or choose another --name.")
            run = Run(name=name, config=json.dumps(config, sort_keys=True), created_at=self.clock())
            s.add(run)
            s.flush()
            self._event(s, run.id, "run", f"run {name!r} created")
        return run

    def delete_run(self, run_id: int) -> bool:
        """Remove a run that archived no candidate (a start that failed), so its name is free again.
        A run with candidates is kept: returns whether the run was deleted."""
        with self.session() as s:
            if s.exec(select(Candidate.id).where(Candidate.run_id == run_id)).first() is not None:
                return False
            s.exec(delete(Event).where(Event.run_id == run_id))
            s.exec(delete(LLMCall).where(LLMCall.run_id == run_id))
            s.exec(delete(Run).where(Run.id == run_id))
        return True

    def remove_run(self, run_id: int) -> None:
        """Delete a run and everything it archived, in one transaction: its candidates with their
        evaluations, curves, diffs and LLM calls, its events, and the code no other run uses. Its
        folder of evaluation files is the caller's to remove (after this commits)."""
        with self.session() as s:
            run = s.get(Run, run_id)
            if run.status == ACTIVE and run.owner and owner_alive(run.owner):  # checked where the delete commits
                raise ArchiveError(f"run {run.name!r} is running ({run.owner}); stop it first with "
                                   f"`evo stop --name {run.name}`.")
            evaluations = select(Evaluation.id).where(Evaluation.run_id == run_id)
            candidates = select(Candidate.id).where(Candidate.run_id == run_id)
            heirs = s.exec(select(Run.name).join(Candidate, Candidate.run_id == Run.id).where(
                Candidate.run_id != run_id, (Candidate.parent_id.in_(candidates)) | (Candidate.parent2_id.in_(candidates)))
                .distinct()).all()
            if heirs:
                raise ArchiveError(f"run {run.name!r} holds parents of candidates of run(s) "
                                   f"{', '.join(heirs)}; delete those first.")
            s.exec(delete(CurvePoint).where(CurvePoint.evaluation_id.in_(evaluations)))
            s.exec(delete(CandidateDiff).where(CandidateDiff.candidate_id.in_(candidates)))
            for table in (Evaluation, LLMCall, Event):
                s.exec(delete(table).where(table.run_id == run_id))
            # A candidate's parent may be a later-numbered one (a crossover's second parent): no order is safe.
            s.exec(update(Candidate).where(Candidate.run_id == run_id).values(parent_id=None, parent2_id=None))
            s.exec(update(Run).where(Run.id == run_id).values(seed_id=None))
            s.exec(delete(Candidate).where(Candidate.run_id == run_id))
            s.exec(delete(Run).where(Run.id == run_id))
            s.exec(delete(Code).where(Code.hash.not_in(select(Candidate.code_hash))))

    def claim_run(self, run_id: int, owner: str, stale_after: float) -> None:
        """Make `owner` the run's owner; from now on every write of this archive checks that it
        still is. Refuses while another process holds it: on this host whenever that process is
        alive, whatever its heartbeat (a stopped process keeps its run); on another host, which
        this one cannot see, until its heartbeat is `stale_after` seconds old."""
        with self.session() as s:
            run = s.get(Run, run_id)
            if run.owner and run.owner != owner:
                host, pid, _ = _parse_owner(run.owner)
                age = seconds_since(run.heartbeat_at, self.clock()) if run.heartbeat_at is not None else None
                beat = f"heartbeat {age:.0f}s ago" if age is not None else "no heartbeat yet"
                here = on_this_host(run.owner)
                if here and owner_alive(run.owner):
                    raise ArchiveError(f"run {run.name!r} is held by process {pid} on this machine, which is still "
                                       f"alive ({beat}; a stopped process keeps its run); let it finish, or end it "
                                       f"with `kill {pid}` and then --resume.")
                if not here and age is not None and age < stale_after:
                    raise ArchiveError(f"run {run.name!r} is being run by process {pid} on host {host} ({beat}); "
                                       f"stop it there first, or wait {stale_after - age:.0f}s if it died.")
            run.owner, run.heartbeat_at, run.status, run.finished_at = owner, self.clock(), ACTIVE, None
            s.add(run)
            self._event(s, run_id, "run", f"run claimed by {owner}")
        self._claim = (run_id, owner)

    def heartbeat(self, run_id: int, owner: str, active_seconds: float, slot_seconds: float | None = None) -> None:
        """Tell readers the owner is alive, and how long the run (and its slots) have been running.
        Raises OwnershipLost when another process has taken the run over: the caller must stop at once."""
        with self.session(fenced=False) as s:  # the one ownership check is this one
            run = self._owned(s, run_id, owner, or_nobody=True)
            run.heartbeat_at, run.active_seconds = self.clock(), active_seconds
            if slot_seconds is not None:
                run.slot_seconds = slot_seconds
            s.add(run)

    def _owned(self, s: Session, run_id: int, owner: str, *, or_nobody: bool = False) -> Run:
        """The run, held by `owner` (or by nobody, with `or_nobody`: an engine driven without a
        claim), else OwnershipLost."""
        # FOR UPDATE holds the row on servers that lock rows (PostgreSQL) so no takeover lands between
        # the check and this transaction's writes; SQLite's BEGIN IMMEDIATE already serialises writers.
        run = s.get(Run, run_id, with_for_update=True)
        if run.owner != owner and not (or_nobody and run.owner is None):
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
            if "status" in fields:   # when it ended (the last time: a resumed run ends again)
                run.finished_at = None if fields["status"] == ACTIVE else self.clock()
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
        s.exec(delete(CurvePoint).where(CurvePoint.evaluation_id == ev.id))
        ev.state, ev.fail_reason, ev.detail, ev.slot, ev.started_at, ev.finished_at = WAITING, None, None, None, None, None
        ev.startup_seconds = ev.trained_seconds = None  # an interrupted training is work lost, not work done
        s.add(ev)
        cand = s.get(Candidate, ev.candidate_id)
        s.flush()
        self._refresh_candidate(s, cand)
        self._event(s, ev.run_id, "recover", f"candidate {cand.number}: evaluation {ev.replicate} queued again", cand.id)

    def add_candidate(self, run_id: int, *, evaluation_seeds: Sequence[int] = (), **fields: Any) -> Candidate:
        """Store a new candidate (fields: those of `_insert_candidate`) with its first evaluations
        queued, replicate r training with evaluation_seeds[r], in one transaction: a kill never
        leaves a WAITING candidate that nothing will evaluate."""
        with self.session() as s:
            cand = self._insert_candidate(s, run_id, **fields)
            self._queue(s, cand, enumerate(evaluation_seeds))
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
            self._queue(s, cand, enumerate(evaluation_seeds))
        return cand

    def _insert_candidate(self, s: Session, run_id: int, *, code: str, operator: str, parent_id: int | None = None,
                          parent2_id: int | None = None, hypothesis: str = "", rationale: str = "",
                          model: str | None = None, rng_state: str | None = None,
                          state: str = WAITING, fail_reason: str | None = None, fail_detail: str | None = None,
                          llm_calls: list[dict] = (), accepted: bool | None = None,
                          imported_val_bpb: float | None = None, is_seed: bool = False, fix: bool = False) -> Candidate:
        """A new candidate (and its code, once) inside the caller's transaction. The run's counter
        and RNG state advance with it, so a resume continues from exactly here. `state` is its state
        until it has evaluations (an import, a duplicate, a failed proposal keep it); `fix`: it is a
        repair of its crashed parent."""
        h = code_hash(code)
        if s.get(Code, h) is None:
            s.add(Code(hash=h, text=code))
        run = s.get(Run, run_id)
        cand = Candidate(run_id=run_id, number=run.next_number, parent_id=parent_id, parent2_id=parent2_id,
                         operator=operator, code_hash=h, hypothesis=hypothesis, rationale=rationale, model=model,
                         state=state, fail_reason=fail_reason, fail_detail=fail_detail, created_at=self.clock(),
                         finished_at=self.clock() if state in (FAIL, PRUNED) else None,
                         accepted=accepted if accepted is not None else (False if state in (FAIL, PRUNED) else None),
                         imported_val_bpb=imported_val_bpb, fix=fix)
        run.next_number += 1
        if rng_state is not None:
            run.rng_state = rng_state
        s.add(cand)
        s.add(run)
        s.flush()
        for call in llm_calls:
            s.add(LLMCall(run_id=run_id, candidate_id=cand.id, at=self.clock(), **call))
        parent = s.get(Candidate, parent_id) if parent_id is not None else None
        if parent is not None:
            parent_code = code if parent.code_hash == h else s.get(Code, parent.code_hash).text
            s.add(CandidateDiff(candidate_id=cand.id,
                                text=unified_diff(parent_code, code, f"#{parent.number}", f"#{cand.number}")))
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
            (ev,) = self._queue(s, s.get(Candidate, candidate_id), [(replicate, seed)])
        return ev

    def _queue(self, s: Session, cand: Candidate, seeds: Iterable[tuple[int, int]]) -> list[Evaluation]:
        """Queue evaluations (replicate, seed) of a candidate inside the caller's transaction."""
        evs = [Evaluation(run_id=cand.run_id, candidate_id=cand.id, replicate=replicate, seed=seed)
               for replicate, seed in seeds]
        s.add_all(evs)
        if evs:
            s.flush()
            self._refresh_candidate(s, cand)
        return evs

    def cancel_waiting(self, candidate_id: int, reason: str) -> list[int]:
        """PRUNE a candidate's evaluations that have not started, with the reason, and refresh its
        state from those that ran. Returns the replicates cancelled."""
        with self.session() as s:
            cand = s.get(Candidate, candidate_id)
            waiting = list(s.exec(select(Evaluation).where(Evaluation.candidate_id == candidate_id,
                                                           Evaluation.state == WAITING).order_by(Evaluation.replicate)))
            for ev in waiting:
                ev.state, ev.detail, ev.finished_at = PRUNED, reason, self.clock()
                s.add(ev)
            if waiting:
                s.flush()
                self._refresh_candidate(s, cand)
                replicates = ", ".join(str(ev.replicate) for ev in waiting)
                self._event(s, cand.run_id, "state", f"candidate {cand.number}: evaluation(s) {replicates} cancelled: "
                            f"{reason}", cand.id)
        return [ev.replicate for ev in waiting]

    def waiting_evaluations(self, run_id: int) -> list[Evaluation]:
        with self.read() as s:
            return list(s.exec(select(Evaluation).where(Evaluation.run_id == run_id, Evaluation.state == WAITING)
                               .order_by(Evaluation.id)))

    def start_evaluation(self, evaluation_id: int, slot: str, workdir: str, load_avg: float | None = None,
                         cores: int | None = None) -> None:
        with self.session() as s:
            ev = s.get(Evaluation, evaluation_id)
            ev.state, ev.slot, ev.workdir, ev.started_at, ev.load_avg = RUNNING, slot, workdir, self.clock(), load_avg
            ev.cores = cores
            s.add(ev)
            cand = s.get(Candidate, ev.candidate_id)
            s.flush()
            self._refresh_candidate(s, cand)
            self._event(s, ev.run_id, "start", f"candidate {cand.number} evaluation {ev.replicate} on slot {slot}",
                        cand.id, slot=slot)

    def finish_evaluation(self, evaluation_id: int, *, state: str, fail_reason: str | None, detail: str,
                          metrics: dict[str, float] | None, curve: list[tuple[int, float, float]],
                          returncode: int | None, wall_seconds: float, harness_seconds: float,
                          log_tail: str, startup_seconds: float | None = None,
                          trained_seconds: float | None = None) -> Evaluation:
        """Record how an evaluation ended, with its curve, and refresh its candidate's statistics
        (start-up and training seconds by the harness's clock, where its process got that far)."""
        with self.session() as s:
            ev = s.get(Evaluation, evaluation_id)
            if ev.state != RUNNING:
                return ev  # already recorded (or re-queued by a recovery); never record twice
            ev.state, ev.fail_reason, ev.detail, ev.returncode = state, fail_reason, detail, returncode
            ev.wall_seconds, ev.harness_seconds, ev.log_tail = wall_seconds, harness_seconds, log_tail
            ev.startup_seconds, ev.trained_seconds = startup_seconds, trained_seconds
            ev.finished_at = self.clock()
            for key, value in metric_values(metrics).items():
                setattr(ev, key, value)
            s.add(ev)
            if curve:  # one executemany, not an ORM object per point
                s.execute(insert(CurvePoint), [{"evaluation_id": ev.id, "step": step, "elapsed": elapsed, "loss": loss}
                                               for step, elapsed, loss in curve])
            cand = s.get(Candidate, ev.candidate_id)
            s.flush()
            self._refresh_candidate(s, cand)
            outcome = f"val_bpb {ev.val_bpb:.6f}" if state == COMPLETE else f"{state}({fail_reason}): {detail}"
            self._event(s, ev.run_id, "finish", f"candidate {cand.number} evaluation {ev.replicate}: {outcome}",
                        cand.id, state=state, fail_reason=fail_reason, val_bpb=ev.val_bpb, slot=ev.slot)
        return ev

    def _refresh_candidate(self, s: Session, cand: Candidate) -> None:
        """Store what `derive_candidate` makes of the candidate's evaluations: every write that
        changes an evaluation ends here, the only place a candidate's state changes. Pending again
        (queued anew), it has no failure; a mean already stored stays until a new one exists."""
        evaluations = list(s.exec(select(Evaluation).where(Evaluation.candidate_id == cand.id).order_by(Evaluation.id)))
        derived = derive_candidate(evaluations)
        cand.state, cand.n_evals = derived.state, derived.n_evals
        if derived.val_bpb is not None:
            cand.val_bpb, cand.val_bpb_std = derived.val_bpb, derived.val_bpb_std
            cand.val_bpb_post = post_selection_mean(evaluations)
        if derived.state in (WAITING, RUNNING):
            cand.fail_reason, cand.fail_detail = None, None
        else:
            cand.finished_at = self.clock()
            if derived.state in (FAIL, PRUNED):  # PRUNED here: stopped early
                cand.fail_reason, cand.fail_detail = derived.fail_reason, derived.fail_detail
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
                s.add(LLMCall(run_id=run_id, candidate_id=candidate_id, at=self.clock(), **call))

    def population(self, run_id: int) -> list[Candidate]:
        with self.read() as s:
            return list(s.exec(select(Candidate).where(Candidate.run_id == run_id, Candidate.in_population == True)  # noqa: E712
                               .order_by(Candidate.number)))

    def undecided(self, run_id: int) -> list[Candidate]:
        """Candidates whose evaluations are all done but whose acceptance was never recorded."""
        with self.read() as s:
            return list(s.exec(select(Candidate).where(
                Candidate.run_id == run_id, Candidate.accepted == None,  # noqa: E711
                Candidate.state.in_([COMPLETE, FAIL, PRUNED])).order_by(Candidate.number)))

    def cost(self, run_id: int, candidate_id: int | None = None) -> float:
        """LLM spend in USD of a run, or of one of its candidates, summed in SQL (prompts and
        replies are never loaded)."""
        q = select(func.coalesce(func.sum(LLMCall.cost_usd), 0.0)).where(LLMCall.run_id == run_id)
        if candidate_id is not None:
            q = q.where(LLMCall.candidate_id == candidate_id)
        with self.read() as s:
            return float(s.exec(q).one())

    def trained_seconds(self, run_id: int) -> float:
        """Seconds the run's recorded evaluations trained by the harness's clock, summed in SQL (the
        busy figure's numerator; evaluations still running count once they are recorded)."""
        with self.read() as s:
            return float(s.exec(select(func.coalesce(func.sum(Evaluation.trained_seconds), 0.0))
                                .where(Evaluation.run_id == run_id)).one())

    def cost_by_candidate(self, run_id: int) -> dict[int, float]:
        """LLM spend in USD per candidate of a run, summed in SQL."""
        with self.read() as s:
            rows = s.exec(select(LLMCall.candidate_id, func.sum(LLMCall.cost_usd)).where(
                LLMCall.run_id == run_id, LLMCall.candidate_id.is_not(None)).group_by(LLMCall.candidate_id))
            return {cid: float(total or 0.0) for cid, total in rows}

    def count_candidates(self, run_id: int, *, after_number: int = -1, judged_only: bool = False,
                         exclude_imports: bool = False) -> int:
        """How many candidates a run has (numbered after `after_number`), counted in SQL: the engine
        asks every loop iteration, and a night can hold many thousands."""
        with self.read() as s:
            q = select(func.count()).select_from(Candidate).where(Candidate.run_id == run_id,
                                                                  Candidate.number > after_number)
            if judged_only:
                q = q.where(Candidate.accepted != None)  # noqa: E711
            if exclude_imports:
                q = q.where(Candidate.operator != "import")
            return int(s.exec(q).one())


    def count_children(self, run_id: int) -> int:
        """Candidates made after the run's seed (what --max-candidates counts); 0 before the seed exists."""
        run = self.run_by_id(run_id)
        if run.seed_id is None:
            return 0
        return self.count_candidates(run_id, after_number=self.candidate_by_id(run.seed_id).number)

    def tally(self, run_id: int) -> Counts:
        """The run's candidates counted by role and outcome (evo.core.counts, the rule every view
        shows), grouped in SQL: the live header asks twice a second."""
        seed_id = self.run_by_id(run_id).seed_id
        is_seed = case((Candidate.id == (seed_id if seed_id is not None else -1), 1), else_=0)
        is_import = case((Candidate.operator == "import", 1), else_=0)
        with self.read() as s:
            rows = s.exec(select(Candidate.state, Candidate.accepted, is_import, is_seed, func.count(),
                                 func.sum(case((Candidate.in_population == True, 1), else_=0)))  # noqa: E712
                          .where(Candidate.run_id == run_id)
                          .group_by(Candidate.state, Candidate.accepted, is_import, is_seed)).all()
        groups = []
        for state, accepted, imported, seed, n, members in rows:
            r = counts.role("import" if imported else "", bool(seed))
            groups.append((r, counts.outcome(state, accepted, r == counts.HISTORY), int(n), int(members or 0)))
        return counts.tally(groups)

    def revision(self, run_id: int) -> str:
        """A short text that changes whenever something a report shows changes (a candidate made or
        decided, an evaluation started or ended, an event, the run's status); one read, counted in
        SQL through indexes, so `evo report --watch` can ask every few seconds at 10,000 candidates."""
        with self.read() as s:
            run = s.get(Run, run_id)
            cands = s.exec(select(func.count(), func.count(Candidate.accepted),
                                  *(func.sum(case((Candidate.state == state, 1), else_=0)) for state in (COMPLETE, FAIL, PRUNED)))
                           .where(Candidate.run_id == run_id)).one()
            evals = s.exec(select(Evaluation.state, func.count()).where(Evaluation.run_id == run_id)
                           .group_by(Evaluation.state).order_by(Evaluation.state)).all()
            event = s.exec(select(func.max(Event.id)).where(Event.run_id == run_id)).one()
        if run is None:
            raise ArchiveError(f"run {run_id} is no longer in the archive.")
        return ":".join(str(x) for x in (run.status, *cands, *(f"{k}{n}" for k, n in evals), event))

    def best(self, run_id: int) -> Candidate | None:
        """THE best candidate (core.lineage.best) among the run's contenders, which SQL picks out."""
        with self.read() as s:
            return best_of(s.exec(select(Candidate).where(Candidate.run_id == run_id, Candidate.accepted == True,  # noqa: E712
                                                       Candidate.val_bpb != None)  # noqa: E711
                               .order_by(Candidate.number)))

    def calls_of(self, candidate_id: int) -> list[LLMCall]:
        with self.read() as s:
            return list(s.exec(select(LLMCall).where(LLMCall.candidate_id == candidate_id).order_by(LLMCall.id)))

    def stored_diff(self, candidate_id: int) -> str | None:
        """The candidate's diff against its first parent as archived (None: archived before evo stored them)."""
        with self.read() as s:
            row = s.get(CandidateDiff, candidate_id)
            return row.text if row is not None else None

    def count_evaluations(self, run_id: int, state: str = COMPLETE) -> int:
        """How many of a run's evaluations are in `state`, counted in SQL (the engine asks before
        each decision whether its noise estimate must be computed again)."""
        with self.read() as s:
            return int(s.exec(select(func.count()).select_from(Evaluation)
                              .where(Evaluation.run_id == run_id, Evaluation.state == state)).one())


def _store_missing_diffs(s: Session) -> None:
    """Step 3 -> 4's backfill: every candidate with a parent gets its stored diff, once (a report of
    an upgraded archive then diffs nothing). Code is read per candidate, so memory stays flat."""
    have = set(s.exec(select(CandidateDiff.candidate_id)).all())
    numbers = dict(s.exec(select(Candidate.id, Candidate.number)).all())
    pairs = s.exec(select(Candidate.id, Candidate.code_hash, Candidate.parent_id)
                   .where(Candidate.parent_id != None)).all()  # noqa: E711
    hashes = dict(s.exec(select(Candidate.id, Candidate.code_hash)).all())
    for cid, h, parent_id in pairs:
        if cid not in have and parent_id in hashes:
            old, new = s.get(Code, hashes[parent_id]).text, s.get(Code, h).text
            s.add(CandidateDiff(candidate_id=cid, text=unified_diff(old, new, f"#{numbers[parent_id]}", f"#{numbers[cid]}")))
            s.flush()
            s.expunge_all()


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


def _left_for_dead(run: Run) -> bool:
    """A run nobody is finishing: its seed failed, or it is ACTIVE with no live owner."""
    return run.status == FAILED or (run.status == ACTIVE and not (run.owner and owner_alive(run.owner)))


def owner_pid_here(owner: str) -> int | None:
    """The pid of a run's owner when it is a live process on this host (one a signal reaches), else None."""
    pid = _parse_owner(owner)[1]
    return pid if on_this_host(owner) and owner_alive(owner) else None


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
