"""The archive on a real PostgreSQL server (issue 16, item 2): `evo run` and every reading command
against `--storage postgresql+psycopg://...`, two readers while a run writes, ownership with a
heartbeat and the takeover of a stale owner, kill -9 then --resume, the schema created on first
use and its version checked, and an unreachable server in one sentence."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import select

from evo.storage import COMPLETE, FINISHED, Archive, ArchiveError, Meta, OwnershipLost, utcnow
from evo.report import build_report
from tests.support import postgres
from test_engine import SURROGATE, check_invariants, slow_surrogate

pytestmark = pytest.mark.skipif(postgres.unavailable() is not None, reason=postgres.unavailable() or "")


@pytest.fixture(scope="module")
def server():
    s = postgres.Server()
    yield s
    s.stop()


def evo(cwd: Path, url: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "evo", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "EVO_STORAGE": url})


def run_cmd(name: str, seed: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "evo", "run", "--name", name, "--prepare", str(SURROGATE / "prepare.py"),
            "--seed-train", str(seed), "--preset", "smoke", "--operator", "tweak", *args]


def test_a_night_on_postgres_with_two_readers(server: postgres.Server, tmp_path: Path) -> None:
    url = server.database()
    seed = slow_surrogate(tmp_path, 0.3)
    proc = subprocess.Popen(run_cmd("pg", seed, "--max-candidates", "16", "--slots", "2", "--population", "4"),
                            cwd=tmp_path, env={**os.environ, "EVO_STORAGE": url}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    seen: dict[str, list[int]] = {"status": [], "report": []}
    errors: list[str] = []

    def reader(kind: str) -> None:
        while proc.poll() is None:
            try:
                archive = Archive(url, writer=False)
                run = archive.find_run("pg")
                seen[kind].append(archive.tally(run.id).total if kind == "status"
                                  else build_report(archive, "pg").candidates)
                archive.close()
            except ArchiveError as e:   # before the run exists
                if "no run" not in str(e) and "no archive" not in str(e) and "no runs" not in str(e):
                    errors.append(str(e))
            time.sleep(0.1)

    threads = [threading.Thread(target=reader, args=(k,)) for k in seen]
    for t in threads:
        t.start()
    out, err = proc.communicate(timeout=900)
    for t in threads:
        t.join()
    assert proc.returncode == 0, err[-3000:]
    assert errors == []
    for kind, counts in seen.items():
        assert len(counts) >= 3 and counts == sorted(counts) and counts[0] < 17, (kind, counts)

    archive = Archive(url, writer=False)
    run = archive.find_run("pg")
    assert run.status == FINISHED and archive.tally(run.id).n_children == 16
    check_invariants(archive, run.id, population=4)
    named = ["--name", "pg"]
    for args in (["status", *named], ["list"], ["candidates", *named], ["candidates", "-f", "json", *named],
                 ["candidates", "-f", "tsv", *named], ["show", "best", *named], ["best", *named],
                 ["diff", "0", "best", *named], ["report", "--out", str(tmp_path / "r.html"), *named],
                 ["export", "best", "--to", str(tmp_path / "best.py"), *named],
                 ["export", "--lineage", "pg", "--repo", str(tmp_path / "lineage")]):
        done = evo(tmp_path, url, *args)
        assert done.returncode == 0, (args, done.stderr)
    assert "candidates 17: seed accepted; 16 children" in evo(tmp_path, url, "status", "--name", "pg").stdout
    assert (tmp_path / "best.py").read_text() == archive.code(archive.best(run.id).code_hash)


def test_ownership_heartbeat_and_takeover_on_postgres(server: postgres.Server) -> None:
    url = server.database()
    old, new = Archive(url), Archive(url)
    run = old.create_run("t", {})
    away = "far-away-host:4242:17"
    old.claim_run(run.id, away, stale_after=60)
    here = f"{os.uname().nodename}:{os.getpid()}:1"
    with pytest.raises(ArchiveError, match="being run by process 4242 on host far-away-host"):
        new.claim_run(run.id, here, stale_after=60)
    new.update_run(run.id, heartbeat_at=utcnow() - timedelta(seconds=90))   # silent for longer than the limit
    new.claim_run(run.id, here, stale_after=60)
    with pytest.raises(OwnershipLost, match="taken over"):
        old.heartbeat(run.id, away, 12.0)
    with pytest.raises(OwnershipLost):   # every write of the old owner is refused
        old.update_run(run.id, "the old owner writes", active_seconds=99.0)
    assert new.run_by_id(run.id).active_seconds != 99.0
    new.heartbeat(run.id, here, 3.0)
    assert new.run_by_id(run.id).active_seconds == 3.0


def test_kill_9_then_resume_on_postgres(server: postgres.Server, tmp_path: Path) -> None:
    url = server.database()
    seed = slow_surrogate(tmp_path, 0.5)
    cmd = run_cmd("k", seed, "--max-candidates", "8", "--replicates", "2")
    proc = subprocess.Popen(cmd, cwd=tmp_path, env={**os.environ, "EVO_STORAGE": url}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:   # killed once some candidate has been judged
            try:
                archive = Archive(url, writer=False)
                done = [c for c in archive.candidates(archive.find_run("k").id) if c.accepted is not None]
                archive.close()
                if len(done) >= 3:
                    break
            except ArchiveError:
                pass
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    before = {(e.candidate_id, e.replicate): e.val_bpb for e in Archive(url, writer=False).evaluations(
        Archive(url, writer=False).find_run("k").id) if e.state == COMPLETE}
    resumed = subprocess.run(cmd + ["--resume"], cwd=tmp_path, env={**os.environ, "EVO_STORAGE": url},
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    archive = Archive(url, writer=False)
    run = archive.find_run("k")
    after = {(e.candidate_id, e.replicate): e.val_bpb for e in archive.evaluations(run.id) if e.state == COMPLETE}
    assert all(after[k] == v for k, v in before.items()), "nothing completed before the kill was lost or redone"
    assert run.status == FINISHED and archive.tally(run.id).n_children == 8
    check_invariants(archive, run.id, population=8)


def test_schema_is_made_on_first_use_and_a_newer_one_refused(server: postgres.Server, tmp_path: Path) -> None:
    url = server.database()
    with pytest.raises(ArchiveError, match="no archive"):
        Archive(url, writer=False)
    archive = Archive(url)
    with archive.session() as s:
        meta = s.exec(select(Meta).where(Meta.key == "schema_version")).one()
        meta.value = "999"
        s.add(meta)
    with pytest.raises(ArchiveError, match="newer than this evo"):
        Archive(url)
    done = evo(tmp_path, url, "status")
    assert done.returncode == 2 and "newer than this evo" in done.stderr and "Traceback" not in done.stderr


def test_an_unreachable_server_is_one_sentence(server: postgres.Server, tmp_path: Path) -> None:
    url = f"postgresql+psycopg://postgres@127.0.0.1:{server.port}/no_such_database"
    for args in (["status"], ["run", "--preset", "smoke", "--operator", "tweak", "--max-candidates", "1"]):
        done = evo(tmp_path, url, *args, timeout=120)
        assert done.returncode == 2, (args, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in done.stderr and "no_such_database" in lines[0], done.stderr
