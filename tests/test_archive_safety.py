"""The archive under stress: a stopped owner keeps its run (issue 9, item 4), threads never hand
out each other's events and reads never take the write lock (item 7), damaged or foreign files
and a full disk end in one sentence with nothing lost (item 9)."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import event
from sqlmodel import Session
from typer.testing import CliRunner

from evo.storage import (ACTIVE, COMPLETE, FINISHED, RUNNING, Archive, ArchiveError, OwnershipLost,
                 StorageError, owner_alive, utcnow)
from evo.cli.app import app
from test_engine import SURROGATE, check_invariants, evo, slow_surrogate, surrogate_run

HOST = os.uname().nodename


def wait_for(predicate, what: str, timeout: float = 120.0):
    """Poll archive or process state until `predicate` holds (a loaded box may be slow)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def completed(db: Path) -> dict[tuple[int, int], float]:
    archive = Archive(f"sqlite:///{db}", writer=False)
    try:
        return {(e.candidate_id, e.replicate): e.val_bpb for r in archive.runs()
                for e in archive.evaluations(r.id) if e.state == COMPLETE}
    finally:
        archive.close()


def start_time(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2:].split()[19]


# ---------------------------------------------------------------------------
# Item 4: a stopped owner keeps its run; a lost owner stops
# ---------------------------------------------------------------------------

def test_stopped_owner_keeps_its_run_and_finishes(tmp_path: Path) -> None:
    db = tmp_path / "archive" / "evo.db"
    url = f"sqlite:///{db}"
    seed = slow_surrogate(tmp_path, 1.5)
    cmd = [sys.executable, "-m", "evo", "run", "--name", "lid", "--prepare", str(SURROGATE / "prepare.py"),
           "--seed-train", str(seed), "--preset", "smoke", "--operator", "tweak", "--max-candidates", "3",
           "--replicates", "2"]
    env = {**os.environ, "EVO_STORAGE": url}
    owner = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        def running_evaluation():
            if not db.exists() or owner.poll() is not None:
                return owner.poll() is not None  # ends the wait; asserted below
            try:
                view = Archive(url, writer=False)
            except ArchiveError:
                return False  # not created yet
            try:
                run = view.find_run("lid")
                return run.owner and any(e.state == RUNNING for e in view.evaluations(run.id))
            except ArchiveError:
                return False
            finally:
                view.close()
        wait_for(running_evaluation, "the owner to start an evaluation")
        assert owner.poll() is None, owner.stderr.read()
        archive = Archive(url)
        run = archive.find_run("lid")
        for _ in range(5):
            owner.send_signal(signal.SIGSTOP)
            try:  # the lid stays shut past the stale limit: the heartbeat is old
                archive.update_run(run.id, heartbeat_at=utcnow() - timedelta(minutes=10))
                break
            except StorageError:  # stopped inside a write, holding the lock: let it finish that write
                owner.send_signal(signal.SIGCONT)
                time.sleep(0.5)
        held_by = run.owner
        running_before = [e.id for e in archive.evaluations(run.id) if e.state == RUNNING]

        second = subprocess.run(cmd + ["--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr
        assert len(second.stderr.strip().splitlines()) == 1 and "Traceback" not in second.stderr
        assert f"held by process {owner.pid} on this machine" in second.stderr and f"kill {owner.pid}" in second.stderr
        run = archive.find_run("lid")
        assert run.owner == held_by and run.status == ACTIVE, "the refused resume changed nothing"
        assert [e.id for e in archive.evaluations(run.id) if e.state == RUNNING] == running_before
    finally:
        owner.send_signal(signal.SIGCONT)
        _, err = owner.communicate(timeout=180)
    assert owner.returncode == 0, err
    run = archive.find_run("lid")
    assert run.status == FINISHED and run.owner is None
    evals = archive.evaluations(run.id)
    assert all(e.state == COMPLETE for e in evals), [(e.state, e.fail_reason, e.detail) for e in evals]
    assert len(archive.candidates(run.id)) == 4
    check_invariants(archive, run.id, 8)


def test_takeover_from_another_host_waits_for_a_stale_heartbeat_and_fences_the_old_owner(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/evo.db"
    old, new = Archive(url), Archive(url)
    run = old.create_run("t", {})
    away = "far-away-host:4242:17"
    old.claim_run(run.id, away, stale_after=60)
    with pytest.raises(ArchiveError, match="being run by process 4242 on host far-away-host"):
        new.claim_run(run.id, owner_here := f"{HOST}:{os.getpid()}:{start_time(os.getpid())}", stale_after=60)
    new.update_run(run.id, heartbeat_at=utcnow() - timedelta(seconds=90))  # silent for longer than the limit
    new.claim_run(run.id, owner_here, stale_after=60)

    with pytest.raises(OwnershipLost, match="taken over"):
        old.heartbeat(run.id, away, 12.0)
    events_before = len(new.events(run.id))
    with pytest.raises(OwnershipLost):  # every write of the old owner is refused, not just the heartbeat
        old.update_run(run.id, "the old owner writes", active_seconds=99.0)
    assert len(new.events(run.id)) == events_before and new.run_by_id(run.id).active_seconds != 99.0
    new.heartbeat(run.id, owner_here, 3.0)
    assert new.run_by_id(run.id).active_seconds == 3.0


def test_an_owner_that_lost_its_run_stops_at_once_and_records_nothing(tmp_path: Path) -> None:
    """Another host took the run over (after this owner's heartbeat went stale): at its next
    heartbeat the owner kills its running evaluation, records nothing, and exits 1."""
    db = tmp_path / "archive" / "evo.db"
    url = f"sqlite:///{db}"
    seed = slow_surrogate(tmp_path, 60.0)  # still training when the heartbeat comes
    cmd = [sys.executable, "-m", "evo", "run", "--name", "lost", "--prepare", str(SURROGATE / "prepare.py"),
           "--seed-train", str(seed), "--preset", "smoke", "--operator", "tweak", "--max-candidates", "2",
           "--replicates", "2", "--startup-allowance", "120"]
    owner = subprocess.Popen(cmd, cwd=tmp_path, env={**os.environ, "EVO_STORAGE": url}, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        def training_pid():
            pid_files = list((tmp_path / "archive" / "runs" / "lost").glob("c*/r*/pid"))
            return owner.poll() is not None or (pid_files and pid_files[0].read_text().strip() and pid_files[0])
        pid_file = wait_for(training_pid, "the seed's training process")
        assert owner.poll() is None, owner.stderr.read()
        archive = Archive(url)
        run = archive.find_run("lost")
        archive.update_run(run.id, owner="far-away-host:4242:17")  # the new owner, as its claim leaves the row
        events_after_takeover = len(archive.events(run.id))
        _, err = owner.communicate(timeout=120)
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
    assert owner.returncode == 1, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and "was taken over" in err, err
    training = int(pid_file.read_text())
    assert wait_for(lambda: not Path(f"/proc/{training}").exists() or
                    Path(f"/proc/{training}/stat").read_text().split(") ")[1][0] == "Z", "the training to die", 30)
    run = archive.find_run("lost")
    assert run.owner == "far-away-host:4242:17"
    assert len(archive.events(run.id)) == events_after_takeover, "the old owner wrote nothing more"
    assert [e.state for e in archive.evaluations(run.id)].count(RUNNING) >= 1, "its evaluations were not recorded"


def test_owner_liveness_on_this_host(tmp_path: Path) -> None:
    archive = Archive(f"sqlite:///{tmp_path}/evo.db")
    me = f"{HOST}:{os.getpid()}:{start_time(os.getpid())}"
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        started = start_time(live.pid)
        # A live owner on this host refuses, however old its heartbeat.
        run = archive.create_run("live", {})
        archive.update_run(run.id, owner=f"{HOST}:{live.pid}:{started}", heartbeat_at=utcnow() - timedelta(hours=3))
        with pytest.raises(ArchiveError, match=f"held by process {live.pid} on this machine, which is still alive"):
            archive.claim_run(run.id, me, stale_after=60)
        # The same pid with another start time is a reused pid: the owner is gone.
        reused = archive.create_run("reused", {})
        archive.update_run(reused.id, owner=f"{HOST}:{live.pid}:{int(started) + 1}", heartbeat_at=utcnow())
        archive.claim_run(reused.id, me, stale_after=60)
    finally:
        live.kill()
        live.wait()
    # A dead owner is taken over at once, even with a fresh heartbeat.
    dead = archive.create_run("dead", {})
    archive.update_run(dead.id, owner=f"{HOST}:{live.pid}:{started}", heartbeat_at=utcnow())
    archive.claim_run(dead.id, me, stale_after=60)
    assert archive.run_by_id(dead.id).owner == me


# ---------------------------------------------------------------------------
# Item 7: events per transaction; reads without the write lock
# ---------------------------------------------------------------------------

def test_rolled_back_events_never_reach_the_listener(tmp_path: Path) -> None:
    told: list[str] = []
    archive = Archive(f"sqlite:///{tmp_path}/evo.db", listener=lambda ev: told.append(ev.message))
    writer_ready, reader_done = threading.Event(), threading.Event()
    failures: list[BaseException] = []

    def before_commit(session: Session) -> None:
        # In the writer's thread only: its event is added, the transaction still open; let the
        # other thread read, then fail, so the transaction rolls back.
        if threading.current_thread().name == "doomed-writer":
            writer_ready.set()
            assert reader_done.wait(60), "the reader never finished"
            raise RuntimeError("the write fails before it commits")

    def doomed_writer() -> None:
        try:
            archive.create_run("doomed", {})
        except RuntimeError:
            pass
        except BaseException as e:  # noqa: BLE001 - reported to the test below
            failures.append(e)

    def reader() -> None:
        try:
            assert writer_ready.wait(60)
            archive.runs()        # another thread's read transaction ends meanwhile
            archive.candidates(1)
        except BaseException as e:  # noqa: BLE001
            failures.append(e)
        finally:
            reader_done.set()

    event.listen(Session, "before_commit", before_commit)
    try:
        threads = [threading.Thread(target=doomed_writer, name="doomed-writer"), threading.Thread(target=reader)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        event.remove(Session, "before_commit", before_commit)
    assert not failures, failures
    assert told == [], "events of a rolled-back transaction were told"
    assert archive.runs() == []
    archive.create_run("kept", {})
    assert told == ["run 'kept' created"], "a committed transaction tells its events once"


def test_reads_never_take_the_write_lock(tmp_path: Path) -> None:
    db = tmp_path / "evo.db"
    archive = Archive(f"sqlite:///{db}")
    run = archive.create_run("r", {})
    other = sqlite3.connect(db, isolation_level=None, timeout=0.1)
    other.execute("BEGIN IMMEDIATE")  # another writer holds the lock (a running `evo run`)
    other.execute("UPDATE run SET active_seconds = 5")
    try:
        t0 = time.monotonic()
        assert [r.name for r in archive.runs()] == ["r"]
        assert archive.find_run("r").active_seconds == 0.0, "a reader sees only committed data"
        assert archive.count_candidates(run.id) == 0 and archive.events(run.id)
        assert Archive(f"sqlite:///{db}", writer=False).runs()
        assert time.monotonic() - t0 < 25, "reads waited for the write lock"  # the busy timeout is 30 s
    finally:
        other.execute("ROLLBACK")
        other.close()


# ---------------------------------------------------------------------------
# Item 9: damaged and foreign files, a full disk
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real archive of a small finished run, as one self-contained file (no -wal beside it)."""
    home = tmp_path_factory.mktemp("pristine")
    assert surrogate_run(home, "--name", "p", "--max-candidates", "3", "--replicates", "2").returncode == 0
    copy = home / "copy.db"
    src, dst = sqlite3.connect(home / "archive" / "evo.db"), sqlite3.connect(copy)
    src.backup(dst)
    src.close()
    dst.close()
    return copy


def damage(pristine: Path, kind: str, target: Path) -> Path:
    data = pristine.read_bytes()
    if kind == "truncated":
        target.write_bytes(data[:len(data) // 2])
    elif kind == "random bytes":
        target.write_bytes(os.urandom(len(data)))
    elif kind == "pages overwritten":
        page = int.from_bytes(data[16:18], "big")
        assert len(data) // page >= 4, "the archive must have pages in the middle"
        middle = os.urandom(len(data) - 2 * page)  # every page but the first (the schema) and the last
        target.write_bytes(data[:page] + middle + data[-page:])
    elif kind == "foreign":
        users = sqlite3.connect(target)
        users.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT)")
        users.execute("INSERT INTO users (email) VALUES ('a@example.com')")
        users.commit()
        users.close()
    return target


KINDS = ["truncated", "random bytes", "pages overwritten", "foreign"]
READERS = [["status"], ["list"], ["candidates"], ["show", "1"], ["best"], ["report"], ["diff", "0", "1"],
           ["run", "--name", "p", "--resume", "--prepare", str(SURROGATE / "prepare.py")]]


@pytest.mark.parametrize("kind", KINDS)
def test_damaged_or_foreign_archive_is_one_sentence(kind: str, pristine: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    db = damage(pristine, kind, tmp_path / "evo.db")
    before = db.read_bytes()
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    for args in READERS:
        result = runner.invoke(app, [*args, "--storage", f"sqlite:///{db}"])
        assert result.exit_code == 1, (args, result.output, result.exception)
        assert result.exception is None or isinstance(result.exception, SystemExit), (args, result.exception)
        err = result.stderr.strip()
        assert err.startswith("evo: error: ") and len(err.splitlines()) == 1, (args, err)
        assert str(db) in err, (args, err)
        assert "backup" in err or "another file" in err, (args, err)
    assert db.read_bytes() == before, "a refused file is never modified"
    assert not (tmp_path / "evo.db-wal").exists() or kind != "foreign"
    if kind == "foreign":
        assert [r[0] for r in sqlite3.connect(db).execute("SELECT name FROM sqlite_master")] == ["users"]
    # The real command line too: one sentence, no traceback.
    shell = evo(tmp_path, "status", "--storage", f"sqlite:///{db}")
    assert shell.returncode == 1 and "Traceback" not in shell.stderr and len(shell.stderr.strip().splitlines()) == 1


def test_damage_met_halfway_through_a_command_is_one_sentence(pristine: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The archive opens (its schema and runs are intact) but the code and diff tables are damaged:
    a command that reads code or a stored diff fails there, with the same one sentence."""
    db = tmp_path / "evo.db"
    shutil.copy(pristine, db)
    probe = sqlite3.connect(db)
    roots = [probe.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0]
             for table in ("code", "candidatediff")]
    page = probe.execute("PRAGMA page_size").fetchone()[0]
    probe.close()
    with db.open("r+b") as f:
        for root in roots:
            f.seek((root - 1) * page)
            f.write(os.urandom(page))
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    assert runner.invoke(app, ["status", "--storage", f"sqlite:///{db}"]).exit_code == 0, "the rest is readable"
    for args in (["show", "1"], ["diff", "0", "1"]):
        result = runner.invoke(app, [*args, "--storage", f"sqlite:///{db}"])
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit), (args, result.exception)
        err = result.stderr.strip()
        assert len(err.splitlines()) == 1 and "the file is damaged" in err and "backup" in err, (args, err)


# `evo` as a real process whose SQLite connections may grow the archive to `limit` pages only: a
# disk that fills up partway through the night (SQLite answers SQLITE_FULL, as on a full disk).
SMALL_DISK = """
import sys
from sqlalchemy import event
from sqlalchemy.engine import Engine
limit = int(sys.argv.pop(1))
event.listen(Engine, "connect",
             lambda dbapi_conn, _record: dbapi_conn.execute(f"PRAGMA max_page_count = {limit}"))
from evo.cli.app import app
app(prog_name="evo")
"""


def test_full_disk_stops_the_run_and_loses_nothing(tmp_path: Path) -> None:
    assert surrogate_run(tmp_path, "--name", "f", "--max-candidates", "2", "--replicates", "2").returncode == 0
    db = tmp_path / "archive" / "evo.db"
    url = f"sqlite:///{db}"
    before = completed(db)
    probe = sqlite3.connect(db)
    limit = probe.execute("PRAGMA page_count").fetchone()[0] + 3  # room to claim the run, not for the night
    probe.close()

    full = subprocess.run([sys.executable, "-c", SMALL_DISK, str(limit), "run", "--name", "f", "--resume",
                           "--max-candidates", "60", "--prepare", str(SURROGATE / "prepare.py")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300, env={**os.environ, "EVO_STORAGE": url})
    assert full.returncode == 1, full.stderr
    err = full.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "the disk is full" in err and str(db) in err and "free disk space" in err, err
    archive = Archive(url, writer=False)
    run = archive.find_run("f")
    assert run.owner is None or not owner_alive(run.owner), "no live owner is left behind"
    after = completed(db)
    assert all(after.get(k) == v for k, v in before.items()), "nothing committed is lost"
    evals = archive.evaluations(run.id)
    assert not [e for e in evals if e.fail_reason == "harness"], "the full disk is not blamed on a candidate"
    assert len(archive.candidates(run.id)) > 3, "the disk filled up partway through the run"

    resumed = surrogate_run(tmp_path, "--name", "f", "--resume", "--max-candidates", "12")
    assert resumed.returncode == 0, resumed.stderr
    run = archive.find_run("f")
    assert run.status == FINISHED and run.owner is None
    assert all(completed(db).get(k) == v for k, v in after.items())
    check_invariants(archive, run.id, 8)


def test_storage_errors_name_the_file_and_the_next_step() -> None:
    full = sqlite3.OperationalError("database or disk is full")
    assert isinstance(StorageError("x"), ArchiveError) and StorageError.code == 1 and ArchiveError.code == 2
    from evo.storage import storage_error
    message = str(storage_error("/data/evo.db", full))
    assert message == ("the archive /data/evo.db cannot be used: the disk is full (database or disk is full); "
                       "free disk space, then `evo run --resume` continues the run.")
    assert "backup" in str(storage_error("/data/evo.db", sqlite3.DatabaseError("database disk image is malformed")))
