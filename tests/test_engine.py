"""The engine end to end with real subprocesses: the surrogate candidate (no torch) makes a
100-candidate run take seconds."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from evo.launch import apparatus
from evo.storage import COMPLETE, FAIL, FINISHED, INTERRUPTED, PRUNED, RUNNING, WAITING, Archive
from evo.config import RunConfig
from evo.core import lineage
from evo.engine.loop import Engine
from evo.engine.seeding import SeedPlan
from evo.operators.base import Operator, Parent, Proposal
from evo.launch.runner import Slot

from conftest import wait_until

ROOT = Path(__file__).resolve().parent.parent
SURROGATE = ROOT / "tests" / "fixtures" / "surrogate"


def evo(tmp_path: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "evo", *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "EVO_STORAGE": f"sqlite:///{tmp_path}/archive/evo.db"})


def surrogate_run(tmp_path: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    return evo(tmp_path, "run", "--prepare", str(SURROGATE / "prepare.py"), "--seed-train", str(SURROGATE / "train.py"),
               "--preset", "smoke", "--operator", "tweak", *args, **kw)


def evaluations_of(db: str, name: str) -> list:
    """The named run's evaluations as a reader sees them now (raises while the run does not exist yet)."""
    archive = Archive(db, writer=False)
    try:
        return archive.evaluations(archive.find_run(name).id)
    finally:
        archive.close()


def claims_of(db: str, name: str) -> int:
    """How many times a process has claimed the named run: each `evo run` start is one claim."""
    archive = Archive(db, writer=False)
    try:
        run = archive.find_run(name)
        return sum(1 for ev in archive.events(run.id) if ev.message.startswith("run claimed by"))
    finally:
        archive.close()


class Output:
    """A child's merged stdout, collected line by line in a thread so a test can wait for a line."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=lambda: self.lines.extend(iter(proc.stdout.readline, "")), daemon=True)
        self._thread.start()

    def has(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    def text(self) -> str:
        self._thread.join(timeout=30)
        return "".join(self.lines)


def check_invariants(archive: Archive, run_id: int, population: int) -> None:
    cands = archive.candidates(run_id)
    assert [c.number for c in cands] == list(range(len(cands))), "numbers are dense and unique"
    members = [c for c in cands if c.in_population]
    assert 1 <= len(members) <= population
    # THE best: by mean, or a final re-measure's chosen best (a run resumed with more budget may have
    # chosen one at an earlier end, which may leave the population since)
    best = lineage.best(cands)
    assert best.in_population or best.val_bpb_post is not None, "the best ever found never leaves the population"
    for ev in archive.evaluations(run_id):
        assert ev.state != RUNNING, "no orphan RUNNING evaluation"
    keys = [(e.candidate_id, e.replicate) for e in archive.evaluations(run_id)]
    assert len(keys) == len(set(keys)), "no evaluation duplicated"


def test_hundred_candidate_run(tmp_path: Path) -> None:
    result = surrogate_run(tmp_path, "--name", "s", "--population", "8", "--max-candidates", "100", "--slots", "2")
    assert result.returncode == 0, result.stderr + result.stdout
    archive = Archive(f"sqlite:///{tmp_path}/archive/evo.db", writer=False)
    run = archive.find_run("s")
    assert run.status == FINISHED and run.sigma is not None and run.sigma > 0
    assert run.temperature0 == pytest.approx(2 * run.sigma)
    cands = archive.candidates(run.id)
    assert len(cands) == 101
    assert all(c.accepted is not None for c in cands)
    check_invariants(archive, run.id, 8)
    seed = cands[0]
    best = lineage.best(cands)
    assert best.val_bpb < seed.val_bpb - 0.005, "search improves on the seed"
    assert best.n_evals >= 2, "a new best is confirmed"
    # the plain log is one line per event
    assert "decide: candidate 100" in result.stdout or "candidate 100" in result.stdout

    tsv = evo(tmp_path, "candidates", "--name", "s", "-f", "tsv").stdout.splitlines()
    assert tsv[0].split("\t") == ["commit", "val_bpb", "memory_gb", "status", "description"]
    assert all(len(row.split("\t")) == 5 and row.split("\t")[3] in ("keep", "discard", "crash") for row in tsv[1:])
    rows = json.loads(evo(tmp_path, "candidates", "--name", "s", "-f", "json").stdout)
    assert len(rows) == 101 and rows[1]["parent"] == 0

    shown = evo(tmp_path, "show", "best")
    assert shown.returncode == 0 and "val_bpb:" in shown.stdout and "±" in shown.stdout
    assert "evaluation 1" in shown.stdout
    assert evo(tmp_path, "best").returncode == 0
    status = evo(tmp_path, "status")
    assert "FINISHED" in status.stdout and "best: #" in status.stdout
    out = tmp_path / "best_train.py"
    assert evo(tmp_path, "export", "best", "--to", str(out)).returncode == 0
    assert out.read_text() == archive.code(best.code_hash)
    diff = evo(tmp_path, "diff", "0", "best").stdout
    assert diff.startswith("--- #0")
    report = evo(tmp_path, "report")
    assert report.returncode == 0 and (tmp_path / "reports" / "s.html").stat().st_size > 100_000
    assert evo(tmp_path, "report", "--name", "nope").returncode == 2


def test_greedy_baseline_behaves_like_autoresearch(tmp_path: Path) -> None:
    result = surrogate_run(tmp_path, "--name", "g", "--population", "1", "--temperature", "0", "--no-confirm",
                           "--replicates", "1", "--max-candidates", "30")
    assert result.returncode == 0, result.stderr
    archive = Archive(f"sqlite:///{tmp_path}/archive/evo.db", writer=False)
    run = archive.find_run("g")
    current = None
    for c in archive.candidates(run.id):  # one slot: decisions happen in candidate order
        if c.state != COMPLETE:
            continue
        if current is None:
            current = c.val_bpb
            continue
        assert c.accepted == (c.val_bpb < current), f"candidate {c.number}"
        if c.accepted:
            current = c.val_bpb
    assert len(archive.population(run.id)) == 1


class FixedOperator(Operator):
    """Always proposes the same edit: the second proposal is a duplicate."""
    name = "tweak"
    n_parents = 1

    def propose(self, parents: list[Parent], rng: random.Random) -> Proposal:
        return Proposal(code=parents[0].code.replace("X1 = 1.0", "X1 = 2.0"), hypothesis="X1 to 2")


def test_identical_code_is_never_trained_twice(tmp_path: Path) -> None:
    archive = Archive(f"sqlite:///{tmp_path}/evo.db")
    config = RunConfig(name="d", preset="smoke", population=4, temperature=0.0, replicates=1, max_candidates=3,
                       slots=1).validate()
    run = archive.create_run("d", config.to_dict())
    app = apparatus.load(SURROGATE / "prepare.py", "smoke")
    engine = Engine(archive, run, config, FixedOperator(), [Slot("cpu")], app, SeedPlan((SURROGATE / "train.py").read_text()))
    assert engine.execute() == FINISHED
    cands = archive.candidates(run.id)
    assert [c.state for c in cands] == [COMPLETE, COMPLETE, PRUNED, PRUNED]
    assert cands[2].fail_reason == "duplicate" and "candidate 1" in cands[2].fail_detail
    assert len(archive.evaluations(run.id, cands[2].id)) == 0


@pytest.mark.parametrize("args, message", [
    (["--population", "0"], "--population must be at least 1"),
    (["--temperature", "-1"], "--temperature must be >= 0"),
    (["--temperature", "hot"], "--temperature takes a number"),
    (["--cooling", "fast"], "--cooling must be one of"),
    (["--temperature", "auto", "--replicates", "1"], "--replicates 2 or more"),
    (["--seed-train", "/nonexistent/train.py"], "cannot read the seed file"),
    (["--operator", "magic"], "unknown operator"),
    (["--gpus", "x"], "--gpus takes device numbers"),
    (["--preset", "huge"], "unknown preset"),
])
def test_bad_run_flags_are_one_sentence(tmp_path: Path, args: list[str], message: str) -> None:
    result = surrogate_run(tmp_path, "--name", "x", *args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_bad_input_to_readers(tmp_path: Path) -> None:
    assert surrogate_run(tmp_path, "--name", "r", "--max-candidates", "2", "--replicates", "2").returncode == 0
    db = tmp_path / "archive" / "evo.db"
    for args, message in [
        (["status", "--name", "nope"], "no run named 'nope'"),
        (["show", "99"], "no candidate number 99"),
        (["show", "abc"], "not a candidate number"),
        (["candidates", "-f", "xml"], "--format must be"),
        (["status", "--storage", "notaurl"], "not a valid SQLAlchemy URL"),
        (["status", "--storage", f"sqlite:///{tmp_path}/missing/evo.db"], "no archive at"),
        (["run", "--name", "r", "--prepare", str(SURROGATE / "prepare.py"), "--seed-train", str(SURROGATE / "train.py"),
          "--preset", "smoke", "--operator", "tweak"], "already exists; pass --resume"),
    ]:
        result = evo(tmp_path, *args)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr, (args, result.stderr)
    archive = Archive(f"sqlite:///{db}", writer=False)
    assert len(archive.candidates(archive.find_run("r").id)) == 3, "bad input leaves the archive as it was"


def test_syntax_error_in_seed_is_one_sentence(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def broken(:\n")
    result = evo(tmp_path, "run", "--name", "b", "--prepare", str(SURROGATE / "prepare.py"), "--seed-train", str(bad), "--operator", "tweak")
    assert result.returncode == 2 and "not valid Python" in result.stderr


def test_crashing_seed_is_one_sentence(tmp_path: Path) -> None:
    bad = tmp_path / "crash.py"
    bad.write_text("raise SystemExit('no GPU here')\n")
    result = evo(tmp_path, "run", "--name", "c", "--prepare", str(SURROGATE / "prepare.py"), "--seed-train", str(bad),
                 "--preset", "smoke", "--operator", "tweak", "--max-candidates", "2")
    assert result.returncode == 2 and "the seed failed (crash" in result.stderr
    assert "Traceback" not in result.stderr


def slow_surrogate(tmp_path: Path, seconds: float) -> Path:
    path = tmp_path / "slow_train.py"
    path.write_text((SURROGATE / "train.py").read_text().replace("t0 = time.time()", f"time.sleep({seconds})\nt0 = time.time()"))
    return path


def test_ctrl_c_once_finishes_running_then_resume(tmp_path: Path) -> None:
    seed = slow_surrogate(tmp_path, 1.0)
    cmd = [sys.executable, "-m", "evo", "run", "--name", "i", "--prepare", str(SURROGATE / "prepare.py"),
           "--seed-train", str(seed), "--preset", "smoke", "--operator", "tweak", "--max-candidates", "6", "--replicates", "2"]
    env = {**os.environ, "EVO_STORAGE": f"sqlite:///{tmp_path}/archive/evo.db"}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    db = env["EVO_STORAGE"]
    # Stop mid-run: the seed is measured and a child is training.
    wait_until(lambda: sum(e.state == COMPLETE for e in evaluations_of(db, "i")) >= 2
               and any(e.state == RUNNING for e in evaluations_of(db, "i")), "a child's evaluation to start")
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 130, out  # 128 + SIGINT, as a shell expects of a stopped command
    assert "stopping: no new candidates" in out and "resume it with `evo run --resume --name i`" in out
    archive = Archive(f"sqlite:///{tmp_path}/archive/evo.db", writer=False)
    run = archive.find_run("i")
    assert run.status == INTERRUPTED
    assert all(e.state != RUNNING for e in archive.evaluations(run.id))
    assert all(e.fail_reason != "interrupted" for e in archive.evaluations(run.id)), "the running one finished"
    done_before = {(e.candidate_id, e.replicate) for e in archive.evaluations(run.id) if e.state == COMPLETE}

    resumed = subprocess.run(cmd + ["--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    run = archive.find_run("i")
    assert run.status == FINISHED
    assert len(archive.candidates(run.id)) == 7
    after = {(e.candidate_id, e.replicate) for e in archive.evaluations(run.id) if e.state == COMPLETE}
    assert done_before <= after
    check_invariants(archive, run.id, 8)


def test_ctrl_c_twice_kills_and_resume_requeues(tmp_path: Path) -> None:
    seed = slow_surrogate(tmp_path, 30.0)
    cmd = [sys.executable, "-m", "evo", "run", "--name", "k", "--prepare", str(SURROGATE / "prepare.py"),
           "--seed-train", str(seed), "--preset", "smoke", "--operator", "tweak", "--max-candidates", "1", "--replicates", "2",
           "--startup-allowance", "60"]
    env = {**os.environ, "EVO_STORAGE": f"sqlite:///{tmp_path}/archive/evo.db"}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = Output(proc)
    wait_until(lambda: any(e.state == RUNNING for e in evaluations_of(env["EVO_STORAGE"], "k")), "the seed to start training")
    proc.send_signal(signal.SIGINT)
    # Two signals sent back to back may be delivered as one: the second goes once the first was heard.
    wait_until(lambda: output.has("stopping: no new candidates"), "the first Ctrl-C to be acknowledged")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    out = output.text()
    archive = Archive(f"sqlite:///{tmp_path}/archive/evo.db", writer=False)
    run = archive.find_run("k")
    evs = archive.evaluations(run.id)
    assert run.status == INTERRUPTED, out
    assert [e.fail_reason for e in evs if e.state == FAIL] == ["interrupted"]
    writer = Archive(f"sqlite:///{tmp_path}/archive/evo.db")
    assert writer.recover(run.id) and all(e.state in (WAITING, COMPLETE) for e in writer.evaluations(run.id))


@pytest.mark.parametrize("now", [False, True], ids=["graceful", "now"])
def test_evo_stop_from_another_terminal(tmp_path: Path, now: bool) -> None:
    """`evo stop` is the first Ctrl-C sent from elsewhere (the running evaluation finishes); with
    --now, the second (it is killed and queued again). Either way the run can be resumed."""
    seed = slow_surrogate(tmp_path, 1.5)
    cmd = [sys.executable, "-m", "evo", "run", "--name", "s", "--prepare", str(SURROGATE / "prepare.py"),
           "--seed-train", str(seed), "--preset", "smoke", "--operator", "tweak", "--max-candidates", "20",
           "--replicates", "2"]
    env = {**os.environ, "EVO_STORAGE": f"sqlite:///{tmp_path}/archive/evo.db"}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    db = env["EVO_STORAGE"]
    try:
        wait_until(lambda: sum(e.state == COMPLETE for e in evaluations_of(db, "s")) >= 2
                   and any(e.state == RUNNING for e in evaluations_of(db, "s")), "a child's evaluation to start")
        asked = evo(tmp_path, "stop", *(["--now"] if now else []))  # the default run is the running one
        assert asked.returncode == 0 and f"process {proc.pid}" in asked.stdout, asked.stdout + asked.stderr
        if not now:  # asking again changes nothing: the running evaluation still finishes
            again = evo(tmp_path, "stop")
            assert again.returncode in (0, 2), again.stderr  # 2: it had already ended
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == (143 if now else 130), out
    assert "resume it with `evo run --resume --name s`" in out
    archive = Archive(db, writer=False)
    run = archive.find_run("s")
    reasons = [e.fail_reason for e in archive.evaluations(run.id) if e.state == FAIL]
    assert run.status == INTERRUPTED and run.owner is None
    assert reasons == (["interrupted"] if now else []), reasons
    again = evo(tmp_path, "stop", "--name", "s")
    assert again.returncode == 2 and "is not running (INTERRUPTED); nothing to stop" in again.stderr


def test_evo_delete_removes_one_run_and_keeps_the_others(tmp_path: Path) -> None:
    for name in ("keep", "gone"):
        assert surrogate_run(tmp_path, "--name", name, "--max-candidates", "2", "--replicates", "2").returncode == 0
    files = tmp_path / "archive" / "runs"
    assert (files / "gone").is_dir()
    unconfirmed = evo(tmp_path, "delete", "--name", "gone")  # stdin is no terminal: no prompt to answer
    assert unconfirmed.returncode == 2 and "pass --yes" in unconfirmed.stderr
    deleted = evo(tmp_path, "delete", "--name", "gone", "--yes")
    assert deleted.returncode == 0 and "deleted run 'gone'" in deleted.stdout, deleted.stderr
    assert not (files / "gone").exists() and (files / "keep").is_dir()
    archive = Archive(f"sqlite:///{tmp_path}/archive/evo.db", writer=False)
    assert [r.name for r in archive.runs()] == ["keep"]
    keep = archive.find_run("keep")
    assert len(archive.candidates(keep.id)) == 3 and all(e.state == COMPLETE for e in archive.evaluations(keep.id))
    assert evo(tmp_path, "report", "--name", "keep").returncode == 0  # every code and diff it needs is still there
    missing = evo(tmp_path, "delete", "--name", "gone", "--yes")
    assert missing.returncode == 2 and "no run named 'gone'" in missing.stderr


def test_the_default_run_is_the_latest_one_that_runs_or_ended(tmp_path: Path) -> None:
    archive = Archive(f"sqlite:///{tmp_path}/evo.db")
    done = archive.create_run("done", {})
    archive.update_run(done.id, status=FINISHED)
    dead = archive.create_run("dead", {})  # ACTIVE, its process gone (kill -9)
    archive.update_run(dead.id, owner=f"{os.uname().nodename}:999999999:1")
    assert archive.find_run(None).name == "done"
    newer = archive.create_run("newer", {})
    archive.update_run(newer.id, status=INTERRUPTED)
    assert archive.find_run(None).name == "newer"


def test_status_while_running(tmp_path: Path) -> None:
    seed = slow_surrogate(tmp_path, 0.3)
    cmd = [sys.executable, "-m", "evo", "run", "--name", "live", "--prepare", str(SURROGATE / "prepare.py"),
           "--seed-train", str(seed), "--preset", "smoke", "--operator", "tweak", "--max-candidates", "15", "--replicates", "2", "--slots", "2"]
    env = {**os.environ, "EVO_STORAGE": f"sqlite:///{tmp_path}/archive/evo.db"}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    polls, paced = 0, False
    try:
        while proc.poll() is None:
            result = evo(tmp_path, "status", "--name", "live")
            if result.returncode == 0:
                polls += 1
                assert "run live:" in result.stdout
                budget = re.search(r"^budget (\d+)/15 children(; about .+ left at this pace)?$", result.stdout, re.M)
                assert budget, result.stdout
                paced = paced or (budget.group(2) is not None and "run live: ACTIVE" in result.stdout)
            else:
                assert "no archive" in result.stderr or "no run named" in result.stderr, result.stderr
    finally:
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert polls >= 2 and paced, "a live run's status says how long is left"
    final = evo(tmp_path, "status", "--name", "live").stdout
    assert "budget 15/15 children\n" in final, final


def test_the_live_header_counts_candidates_busy_share_and_budget(tmp_path: Path) -> None:
    from evo.cli.app import _header
    assert surrogate_run(tmp_path, "--name", "h", "--max-candidates", "2", "--replicates", "2").returncode == 0
    archive = Archive(f"sqlite:///{tmp_path}/archive/evo.db", writer=False)
    run = archive.find_run("h")
    first, second = _header(archive, run.id, "h", {"active_seconds": 60.0, "slot_seconds": 60.0}).splitlines()
    counts = archive.tally(run.id)
    assert counts.n_children == 2 and counts.judged == 2
    assert first.startswith(f"evo run h: {counts.children_line(inline=True)}, best #"), first
    assert "2 children (" in first and first.endswith("busy training 0 % of slot time")
    assert second == "budget 2/2 children; about 0 s left at this pace"


def test_replicates_of_different_speed_are_called_out_in_the_log_and_evo_show(tmp_path: Path) -> None:
    """The seed's replicates ran 10 and 100 steps in the same budget (a machine whose speed changed):
    the run's log says so when the second one lands, and `evo show` beside the figures."""
    seed = tmp_path / "uneven_train.py"
    seed.write_text((SURROGATE / "train.py").read_text().replace(
        'print("num_steps:        3")', 'import os\nprint(f"num_steps:        {10 if int(os.environ[\'EVO_SEED\']) % 2 == 0 else 100}")'))
    out = evo(tmp_path, "run", "--name", "u", "--prepare", str(SURROGATE / "prepare.py"), "--seed-train", str(seed),
              "--preset", "smoke", "--operator", "tweak", "--max-candidates", "1", "--replicates", "2")
    assert out.returncode == 0, out.stderr
    assert "noise: candidate 0: its replicates trained 10 to 100 steps (x10.0)" in out.stdout, out.stdout
    shown = evo(tmp_path, "show", "0", "--name", "u").stdout
    assert "warning: its replicates trained 10 to 100 steps (x10.0): the machine's speed changed" in shown, shown
    assert re.search(r"evaluation 0 \(seed \d+, slot cpu\): COMPLETE val_bpb [0-9.]+, (10|100) steps", shown), shown


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume(tmp_path: Path) -> None:
    """kill -9 `evo run` 20 times at random moments, resuming each time: nothing COMPLETE is lost,
    changed or duplicated, and the finished run is consistent."""
    seed = slow_surrogate(tmp_path, 0.15)
    db = f"sqlite:///{tmp_path}/archive/evo.db"
    base = [sys.executable, "-m", "evo", "run", "--name", "crash", "--prepare", str(SURROGATE / "prepare.py"),
            "--seed-train", str(seed), "--preset", "smoke", "--operator", "tweak", "--max-candidates", "40", "--replicates", "2",
            "--slots", "2", "--population", "4"]
    env = {**os.environ, "EVO_STORAGE": db}
    rng = random.Random(7)
    complete: dict[tuple[int, int], float] = {}
    progress: list[int] = []
    for i in range(20):
        proc = subprocess.Popen(base + (["--resume"] if i else []), cwd=tmp_path, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Each kill lands at a random moment after this process took the run over (importing evo
        # alone can take seconds on a loaded box), so every life does some work.
        wait_until(lambda: claims_of(db, "crash") > i or proc.poll() is not None, f"life {i} to claim the run")
        time.sleep(rng.uniform(0.3, 2.0))
        proc.kill()
        proc.wait()
        archive = Archive(db, writer=False)
        run = archive.find_run("crash")
        now = {(e.candidate_id, e.replicate): e.val_bpb for e in archive.evaluations(run.id) if e.state == COMPLETE}
        for key, value in complete.items():
            assert now.get(key) == value, f"kill {i}: COMPLETE evaluation {key} lost or changed"
        complete = now
        progress.append(len(now))
        cands = archive.candidates(run.id)
        assert [c.number for c in cands] == list(range(len(cands)))
        archive.close()
    print("COMPLETE evaluations at each kill:", progress)
    assert progress[-1] > progress[0] and progress[-1] >= 10, f"the kills must land mid-run: {progress}"
    final = subprocess.run(base + ["--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr
    archive = Archive(db, writer=False)
    run = archive.find_run("crash")
    assert run.status == FINISHED
    cands = archive.candidates(run.id)
    assert len(cands) == 41 and all(c.accepted is not None for c in cands)
    check_invariants(archive, run.id, 4)
    now = {(e.candidate_id, e.replicate): e.val_bpb for e in archive.evaluations(run.id) if e.state == COMPLETE}
    assert all(now[k] == v for k, v in complete.items())


def test_pyproject_defaults_and_flags_win(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[tool.evo]\npopulation = 3\ntemperature = "0.002"\nreplicates = 2\nmax-candidates = 2\n')
    result = surrogate_run(tmp_path, "--name", "p", "--population", "5")
    assert result.returncode == 0, result.stderr
    archive = Archive(f"sqlite:///{tmp_path}/archive/evo.db", writer=False)
    config = json.loads(archive.find_run("p").config)
    assert (config["population"], config["temperature"], config["replicates"], config["max_candidates"]) == (5, 0.002, 2, 2)

    (tmp_path / "pyproject.toml").write_text("[tool.evo]\npopulaton = 3\n")
    bad = surrogate_run(tmp_path, "--name", "q")
    assert bad.returncode == 2 and "unknown setting(s) populaton" in bad.stderr


def engine_for(tmp_path: Path, operator, **config) -> tuple[Archive, Engine]:
    archive = Archive(f"sqlite:///{tmp_path}/evo.db")
    cfg = RunConfig(name="t", preset="smoke", temperature=0.001, replicates=2, slots=1, **config).validate()
    run = archive.create_run("t", cfg.to_dict())
    app = apparatus.load(SURROGATE / "prepare.py", "smoke")
    return archive, Engine(archive, run, cfg, operator, [Slot("cpu")], app, SeedPlan((SURROGATE / "train.py").read_text()))


class ScriptedOperator(Operator):
    """Tweaks X1; optionally unavailable for the first proposals, costly, or crashing."""
    name = "tweak"
    n_parents = 1
    repairs = True

    def __init__(self, unavailable: int = 0, cost: float = 0.0, crash_first: bool = False):
        self.unavailable, self.cost, self.crash_first, self.calls = unavailable, cost, crash_first, 0
        self.lock = __import__("threading").Lock()  # proposals run concurrently

    def propose(self, parents: list[Parent], rng: random.Random) -> Proposal:
        from evo.operators import OperatorUnavailable
        with self.lock:
            self.calls += 1
            calls = self.calls
        call = {"model": "fake", "purpose": "mutate", "cost_usd": self.cost, "tokens_in": 10, "tokens_out": 5}
        if calls <= self.unavailable:
            error = OperatorUnavailable("API answered 503 five times")
            error.llm_calls = [dict(call, error="503")]
            raise error
        code = __import__("re").sub(r"X1 = [0-9.]+", f"X1 = {1.0 + calls / 10}", parents[0].code)
        if self.crash_first and calls == 1:
            code += "\nraise RuntimeError('boom')\n"
        return Proposal(code=code, hypothesis=f"X1 step {calls}", model="fake", extra={"llm_calls": [call]})

    def propose_fix(self, failed: Parent, rng: random.Random) -> Proposal:
        return Proposal(code=failed.code.replace("\nraise RuntimeError('boom')\n", "\n"), hypothesis="fix: drop the raise",
                        extra={"operator": "mutate"})


def test_unavailable_operator_pauses_then_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import evo.engine.loop
    monkeypatch.setattr(evo.engine.loop, "PAUSE_FIRST", 0.3)
    archive, engine = engine_for(tmp_path, ScriptedOperator(unavailable=2), max_candidates=3)
    assert engine.execute() == FINISHED
    messages = [e.message for e in archive.events(engine.run.id)]
    # Both proposals (one slot + lookahead) failed in flight together: one outage, one pause.
    assert sum("pausing proposals" in m for m in messages) == 1
    assert any("proposals resumed" in m for m in messages)
    cands = archive.candidates(engine.run.id)
    assert len(cands) == 4, "an outage archives no candidate"
    assert all(c.state == COMPLETE for c in cands), [(c.state, c.fail_reason, c.fail_detail) for c in cands]
    failed_calls = [c for c in archive.llm_calls(engine.run.id) if c.error]
    assert len(failed_calls) == 2 and all(c.candidate_id is None for c in failed_calls)


def test_max_cost_stops_proposing(tmp_path: Path) -> None:
    archive, engine = engine_for(tmp_path, ScriptedOperator(cost=0.4), max_candidates=20, max_cost=1.0)
    assert engine.execute() == FINISHED
    assert len(archive.candidates(engine.run.id)) == 1 + 3
    assert archive.cost(engine.run.id) == pytest.approx(1.2)
    assert any("--max-cost" in e.message for e in archive.events(engine.run.id))


def test_crashed_child_gets_one_fix(tmp_path: Path) -> None:
    archive, engine = engine_for(tmp_path, ScriptedOperator(crash_first=True), max_candidates=6)
    engine.execute()
    cands = archive.candidates(engine.run.id)
    crashed = next(c for c in cands if c.state == FAIL)
    assert crashed.fail_reason == "crash"
    fixes = [c for c in cands if c.hypothesis.startswith("fix:")]
    assert len(fixes) == 1 and fixes[0].parent_id == crashed.id and fixes[0].operator == "mutate"
    assert fixes[0].state == COMPLETE


def test_the_seed_phase_uses_every_slot_and_its_children_are_ready_when_it_is_decided(tmp_path: Path) -> None:
    """Four slots and no --replicates: the seed is measured four times at once; once one replicate
    completed its children are proposed while the others still run, and none of them trains
    before the seed is decided (T0, σ̂ and the training limit come from that verdict)."""
    from evo.launch.logs import Outcome
    from evo.launch.runner import EvalResult
    from evo.operators.tweak import TweakOperator

    archive = Archive(f"sqlite:///{tmp_path}/evo.db")
    cfg = RunConfig(name="t", preset="smoke", max_candidates=4, operator="tweak", lookahead=1).validate()
    run = archive.create_run("t", cfg.to_dict())
    seed_code = (SURROGATE / "train.py").read_text()
    engine = Engine(archive, run, cfg, TweakOperator(), [Slot(f"cpu{k}") for k in range(4)],
                    apparatus.load(SURROGATE / "prepare.py", "smoke"), SeedPlan(seed_code), evaluate=lambda **kw: measure(**kw))
    assert cfg.replicates == 4 and "4 replicates (one per slot)" in engine.search
    seed_started, children_started = [], []

    def measure(*, code: str, seed: int, **_) -> EvalResult:
        if code == seed_code:
            seed_started.append(seed)
            if seed != 42:  # the other replicates finish only once children wait for them
                wait_until(lambda: archive.count_candidates(run.id) > 1, timeout=120,
                           what="a child proposed while the seed's replicates run")
        else:
            seed_row = archive.candidate_by_id(archive.run_by_id(run.id).seed_id)
            children_started.append(seed_row.accepted)
        value = 1.0 + random.Random(f"{seed}:{code}").gauss(0, 0.01)
        return EvalResult(Outcome(COMPLETE, summary={"val_bpb": value, "training_seconds": 1.0, "num_steps": 10}),
                          [], 0, 0.0, 0.0, "")

    assert engine.execute() == FINISHED
    assert sorted(seed_started) == [42, 43, 44, 45]
    assert children_started and all(children_started), "children train only after the seed's verdict"
