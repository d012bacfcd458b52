"""The storage package's layout (issue 10): the pure rules of models.py, the one place a
candidate's state is derived, the ownership fence checked once per heartbeat, the read models of
queries.py, and the schema step that made the fix marker a column."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import event

from evo.engine.proposals import Asked, Proposals
from evo.operators.base import Operator, Parent, Proposal
from evo.operators.memory import ArchiveMemory
from evo.storage import (COMPLETE, FAIL, PRUNED, RUNNING, SCHEMA_VERSION, WAITING, Archive, ArchiveError, Evaluation,
                         OwnershipLost, busy_share, derive_candidate, queries)
from evo.storage.models import METRICS, metric_values
from tests.support.old_schema import downgrade

SEED = "x = 1\n"


def ev(state: str, val_bpb: float | None = None, fail_reason: str | None = None, detail: str | None = None):
    return SimpleNamespace(state=state, val_bpb=val_bpb, fail_reason=fail_reason, detail=detail)


# ----- pure rules --------------------------------------------------------------------------------

def test_a_pending_evaluation_makes_the_candidate_waiting_or_running() -> None:
    assert derive_candidate([ev(COMPLETE, 1.0), ev(WAITING)]).state == WAITING
    assert derive_candidate([ev(WAITING), ev(RUNNING)]).state == RUNNING
    assert derive_candidate([ev(FAIL, fail_reason="crash"), ev(WAITING)]) == \
        derive_candidate([ev(WAITING)])  # pending again: no failure is carried


def test_a_candidate_fails_only_when_no_evaluation_completed() -> None:
    failed = derive_candidate([ev(FAIL, fail_reason="oom", detail="a"), ev(PRUNED), ev(FAIL, fail_reason="crash",
                                                                                       detail="b")])
    assert (failed.state, failed.fail_reason, failed.fail_detail, failed.n_evals) == (FAIL, "crash", "b", 0)
    mixed = derive_candidate([ev(FAIL, fail_reason="crash"), ev(COMPLETE, 1.0), ev(COMPLETE, 1.2)])
    assert (mixed.state, mixed.n_evals, mixed.fail_reason) == (COMPLETE, 2, None)
    assert mixed.val_bpb == pytest.approx(1.1) and mixed.val_bpb_std == pytest.approx(0.02 ** 0.5)


def test_candidate_with_only_cancelled_evaluations_is_complete_without_a_mean() -> None:
    d = derive_candidate([ev(PRUNED)])
    assert (d.state, d.n_evals, d.val_bpb, d.val_bpb_std) == (COMPLETE, 0, None, None)


def test_metric_values_keep_only_metric_columns_and_whole_numbers() -> None:
    printed = {"val_bpb": 0.99, "num_steps": 120.0, "depth": 1e30, "seed": 7.0, "wall_seconds": 3.0, "id": 1.0}
    assert metric_values(printed) == {"val_bpb": 0.99, "num_steps": 120, "depth": None}
    assert isinstance(metric_values(printed)["num_steps"], int)
    assert metric_values(None) == {}
    assert all(hasattr(Evaluation, key) for key in METRICS)  # one column per metric


def test_chunked_covers_every_item_once_in_order() -> None:
    assert list(queries.chunked(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(queries.chunked([], 3)) == []


# ----- candidate state through the archive -------------------------------------------------------

@pytest.fixture
def archive(tmp_path: Path):
    a = Archive(f"sqlite:///{tmp_path / 'evo.db'}")
    yield a
    a.close()


def finish(a: Archive, evaluation_id: int, state: str, val_bpb: float | None = None, reason: str | None = None):
    a.finish_evaluation(evaluation_id, state=state, fail_reason=reason, detail=reason or "",
                        metrics={"val_bpb": val_bpb} if val_bpb is not None else None, curve=[(1, 0.1, 3.0)],
                        returncode=0, wall_seconds=1.0, harness_seconds=0.1, log_tail="")


def test_every_evaluation_write_derives_the_candidate_state(archive: Archive) -> None:
    run = archive.create_run("r", {})
    cand = archive.add_seed(run.id, [], dict(code=SEED, operator="seed"), [11, 12])
    first, second = archive.evaluations(run.id, cand.id)
    archive.start_evaluation(first.id, "s0", "w")
    assert archive.candidate_by_id(cand.id).state == RUNNING
    finish(archive, first.id, COMPLETE, 1.0)
    assert archive.candidate_by_id(cand.id).state == WAITING  # replicate 1 still queued
    archive.start_evaluation(second.id, "s0", "w")
    finish(archive, second.id, FAIL, reason="interrupted")
    done = archive.candidate_by_id(cand.id)
    assert (done.state, done.n_evals, done.val_bpb) == (COMPLETE, 1, 1.0)
    # A recovery queues the interrupted replicate again: the candidate is pending again, not
    # COMPLETE with a queued evaluation.
    assert archive.recover(run.id) == [second.id]
    assert archive.candidate_by_id(cand.id).state == WAITING
    assert archive.cancel_waiting(cand.id, "stop") == [1]
    assert archive.candidate_by_id(cand.id).state == COMPLETE
    third = archive.queue_evaluation(run.id, cand.id, 2, 13)
    assert third.id is not None and archive.candidate_by_id(cand.id).state == WAITING


# ----- heartbeat: one ownership check, the guarantee kept ----------------------------------------

def owner_checks(a: Archive) -> list[str]:
    """SELECTs of the run row this archive's writer issues (the ownership check reads it FOR
    UPDATE where the database locks rows; SQLite drops that clause, so count reads of the run)."""
    seen: list[str] = []

    @event.listens_for(a.engine, "before_cursor_execute")
    def _seen(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("SELECT") and "FROM run" in statement:
            seen.append(statement)

    return seen


def test_heartbeat_of_a_claimed_run_checks_ownership_once(archive: Archive) -> None:
    run = archive.create_run("r", {})
    archive.claim_run(run.id, "here:1:1", stale_after=60)
    seen = owner_checks(archive)
    archive.heartbeat(run.id, "here:1:1", 5.0)
    assert len(seen) == 1, seen
    assert archive.run_by_id(run.id).active_seconds == 5.0


def test_heartbeat_refuses_an_owner_that_lost_the_run_claimed_or_not(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'evo.db'}"
    claimed, unclaimed = Archive(url), Archive(url)
    run = claimed.create_run("r", {})
    claimed.claim_run(run.id, "away:1:1", stale_after=60)
    unclaimed.update_run(run.id, owner="other:2:2")  # taken over
    with pytest.raises(OwnershipLost):
        claimed.heartbeat(run.id, "away:1:1", 1.0)
    with pytest.raises(OwnershipLost):  # an engine that never claimed, heartbeating as "away"
        unclaimed.heartbeat(run.id, "away:1:1", 1.0)
    unclaimed.update_run(run.id, owner=None)
    unclaimed.heartbeat(run.id, "away:1:1", 2.0)  # a run nobody holds: nothing to lose
    assert unclaimed.run_by_id(run.id).active_seconds == 2.0
    claimed.close()
    unclaimed.close()


# ----- the fix marker ----------------------------------------------------------------------------

class Repairer(Operator):
    name, n_parents, repairs = "mutate", 1, True


def test_repairs_are_stored_as_fixes_and_bound_per_lineage_by_the_column(archive: Archive) -> None:
    run = archive.create_run("r", {})
    seed = archive.add_seed(run.id, [], dict(code=SEED, operator="seed"), [])
    proposals = Proposals(archive, run.id, Repairer())
    parent = Parent(seed.id, seed.number, SEED, "", None)
    # A plain child whose hypothesis merely reads "fix:" is no repair.
    proposals.store(Asked([parent], 0.0), Proposal("x = 2\n", "fix: the prefix is just text"), "[]", [1])
    child = archive.candidate(run.id, 1)
    assert child.fix is False
    archive.start_evaluation(archive.evaluations(run.id, child.id)[0].id, "s", "w")
    finish(archive, archive.evaluations(run.id, child.id)[0].id, FAIL, reason="crash")
    crashed = archive.candidate(run.id, 1)
    assert proposals.wants_fix(crashed, is_seed=False)
    # A repair (the operator's extra says so) is stored as one, its hypothesis kept for display.
    crashed_parent = Parent(crashed.id, crashed.number, "x = 2\n", crashed.hypothesis, None)
    proposals.store(Asked([crashed_parent], 0.0), Proposal("x = 3\n", "fix: define x", extra={"fix": True}), "[]", [2])
    repair = archive.candidate(run.id, 2)
    assert (repair.fix, repair.hypothesis) == (True, "fix: define x")
    ev_id = archive.evaluations(run.id, repair.id)[0].id
    archive.start_evaluation(ev_id, "s", "w")
    finish(archive, ev_id, FAIL, reason="crash")
    assert not proposals.wants_fix(archive.candidate(run.id, 2), is_seed=False)  # one repair per line


def make_v1(db: Path) -> dict[str, object]:
    """A version-1 archive, as evo wrote it before the fix column."""
    a = Archive(f"sqlite:///{db}")
    run = a.create_run("old", {"k": 1})
    seed = a.add_seed(run.id, [], dict(code=SEED, operator="seed"), [5])
    for n, hypothesis in enumerate(["fix: repair it", "Fix: capital", "a fix: inside", "plain"]):
        a.add_candidate(run.id, code=f"x = {n + 10}\n", operator="mutate", parent_id=seed.id, hypothesis=hypothesis,
                        evaluation_seeds=[n])
    a.close()
    downgrade(db, 1)
    con = sqlite3.connect(db)
    before = {table: con.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
              for table in ("run", "candidate", "evaluation", "event", "code")}
    con.close()
    return before


def fixes(a: Archive) -> dict[str, bool]:
    return {c.hypothesis: c.fix for c in a.candidates(a.find_run("old").id)}


EXPECTED = {"": False, "fix: repair it": True, "Fix: capital": False, "a fix: inside": False, "plain": False}


def test_a_version_1_archive_is_read_as_is_and_migrated_by_a_writer(tmp_path: Path) -> None:
    db = tmp_path / "evo.db"
    before = make_v1(db)
    url = f"sqlite:///{db}"
    # A reader sees the marker the prefix made, and leaves the file as it was.
    reader = Archive(url, writer=False)
    assert fixes(reader) == EXPECTED
    with queries.reader(reader) as (view, s):
        snap = queries.snapshot(s, view.find_run("old").id)
    assert [c.fix for c in snap.cands] == [EXPECTED[c.hypothesis] for c in snap.cands]
    reader.close()
    con = sqlite3.connect(db)
    assert "fix" not in [row[1] for row in con.execute("PRAGMA table_info(candidate)")]
    assert con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "1"
    con.close()
    # A writer adds the column, backfills it, and loses nothing.
    writer = Archive(url)
    assert fixes(writer) == EXPECTED
    writer.close()
    con = sqlite3.connect(db)
    assert con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
    after = {table: con.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] for table in before}
    con.close()
    assert after == before
    again = Archive(url)  # a migrated archive opens as a current one
    assert fixes(again) == EXPECTED and again.find_run("old").config == '{"k": 1}'
    again.close()


def test_a_newer_schema_is_still_refused(tmp_path: Path) -> None:
    db = tmp_path / "evo.db"
    Archive(f"sqlite:///{db}").close()
    con = sqlite3.connect(db)
    con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    con.commit()
    con.close()
    for writer in (True, False):
        with pytest.raises(ArchiveError, match="newer than this evo"):
            Archive(f"sqlite:///{db}", writer=writer)


# ----- the lineage memory's read model -----------------------------------------------------------

def test_lineage_memory_reads_one_snapshot_with_each_candidates_latest_evaluation(archive: Archive) -> None:
    run = archive.create_run("r", {})
    seed = archive.add_seed(run.id, [], dict(code=SEED, operator="seed"), [1, 2])
    for k, e in enumerate(archive.evaluations(run.id, seed.id)):
        archive.start_evaluation(e.id, "s", "w")
        archive.finish_evaluation(e.id, state=COMPLETE, fail_reason=None, detail="", metrics={"val_bpb": 1.0 + k,
                                  "num_steps": 10.0 + k}, curve=[], returncode=0, wall_seconds=1.0,
                                  harness_seconds=0.1, log_tail=f"tail {k}")
    kids = [archive.add_candidate(run.id, code=f"x = {n}\n", operator="mutate", parent_id=seed.id,
                                  hypothesis=f"h{n}", evaluation_seeds=[n]) for n in range(3)]
    for kid in kids[:2]:
        e = archive.evaluations(run.id, kid.id)[0]
        archive.start_evaluation(e.id, "s", "w")
        finish(archive, e.id, FAIL, reason="crash")
    rows = queries.lineage_rows(archive, run.id, seed.id, recent_failures=1)
    assert rows.node.id == seed.id and rows.ancestors == []
    assert [c.id for c in rows.siblings] == [k.id for k in kids]
    assert [c.id for c in rows.failures] == [kids[1].id]  # the latest one only
    assert rows.last_evaluation[seed.id].replicate == 1
    told = ArchiveMemory(archive, run.id).lineage(seed.id)
    assert told.node.metrics["num_steps"] == 11 and told.node.log_tail == "tail 1"
    assert ArchiveMemory(archive, run.id).code(kids[2].id) == "x = 2\n"


def test_a_childs_diff_is_stored_once_when_archived_and_an_older_archive_gets_them_on_upgrade(tmp_path: Path) -> None:
    """The report and `evo show` read the diff made when the child was archived; an archive from
    before (schema 3) is read with no stored diffs, and its writer upgrade stores every one."""
    from evo.core.diff import unified_diff
    db = tmp_path / "evo.db"
    url = f"sqlite:///{db}"
    a = Archive(url)
    run = a.create_run("r", {})
    seed = a.add_seed(run.id, [], {"code": "A = 1\nB = 2\n", "operator": "seed"}, [])
    child = a.add_candidate(run.id, code="A = 1\nB = 3\n", operator="tweak", parent_id=seed.id)
    want = unified_diff("A = 1\nB = 2\n", "A = 1\nB = 3\n", f"#{seed.number}", f"#{child.number}")
    assert a.stored_diff(child.id) == want and "+B = 3" in want and a.stored_diff(seed.id) is None
    a.close()
    downgrade(db, 3)  # no stored diffs, no indexes
    old = Archive(url, writer=False)
    assert old.stored_diff(child.id) is None
    old.close()
    upgraded = Archive(url)
    assert upgraded.stored_diff(child.id) == want
    upgraded.close()
    con = sqlite3.connect(db)
    assert "ix_llmcall_candidate_id" in {row[1] for row in con.execute("PRAGMA index_list(llmcall)")}
    con.close()


def test_the_busy_figure_is_training_seconds_over_slot_seconds_and_an_older_archive_counts_from_zero(
        tmp_path: Path) -> None:
    """Schema 4 measured neither training seconds nor slot time: an upgraded run (and a reader of
    the old file) counts both from zero, so its busy figure is "not measured" rather than 0 %, and
    covers only the sessions that measured their training once it resumes."""
    assert busy_share(30.0, 0.0) is None and busy_share(30.0, 120.0) == 0.25 and busy_share(130.0, 120.0) == 1.0
    db = tmp_path / "evo.db"
    url = f"sqlite:///{db}"
    a = Archive(url)
    run = a.create_run("r", {})
    seed = a.add_seed(run.id, [], {"code": SEED, "operator": "seed"}, [1, 2, 3])
    for e, slot in zip(a.evaluations(run.id, seed.id), ["gpu0", "gpu1", "gpu0"]):
        a.start_evaluation(e.id, slot, "w")
        a.finish_evaluation(e.id, state=COMPLETE, fail_reason=None, detail="", metrics={"val_bpb": 1.0}, curve=[],
                            returncode=0, wall_seconds=12.0, harness_seconds=0.1, log_tail="", startup_seconds=2.0,
                            trained_seconds=9.5)
    a.update_run(run.id, active_seconds=50.0, slot_seconds=100.0)
    assert a.trained_seconds(run.id) == 28.5
    assert busy_share(a.trained_seconds(run.id), a.run_by_id(run.id).slot_seconds) == pytest.approx(0.285)
    a.close()
    downgrade(db, 4)
    for writer in (False, True):  # a reader of the old file, then its upgrade
        archive = Archive(url, writer=writer)
        assert archive.run_by_id(run.id).slot_seconds == 0.0 and archive.run_by_id(run.id).active_seconds == 50.0
        assert {(e.startup_seconds, e.trained_seconds) for e in archive.evaluations(run.id)} == {(None, None)}
        assert busy_share(archive.trained_seconds(run.id), archive.run_by_id(run.id).slot_seconds) is None
        archive.close()
    con = sqlite3.connect(db)
    indexes = {row[1] for row in con.execute("PRAGMA index_list(evaluation)")}
    con.close()
    assert {"ix_evaluation_run_state_values", "ix_evaluation_run_state"} <= indexes
