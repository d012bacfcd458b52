"""Nights that never wedge: a failed confirmation, an evaluation or a proposal that raises, a kill
between two writes that belong together, a stop while an LLM call hangs, an outage seen by many
proposals at once, and a seed that cannot run here. Real archive, real candidate subprocesses
(the surrogate), real signals."""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
from concurrent.futures import Future
from pathlib import Path

import pytest
from sqlmodel import Session

import evo.engine.loop
from evo.launch import apparatus
from evo.storage import COMPLETE, FAIL, FAILED, FINISHED, INTERRUPTED, PRUNED, RUNNING, WAITING, Archive, Candidate, Evaluation
from evo.config import RunConfig
from evo.core import selection
from evo.engine.loop import Engine, EngineError
from evo.engine.proposals import Asked as _Asked
from evo.engine.seeding import Imported, SeedPlan
from evo.operators import OperatorUnavailable
from evo.operators.base import Operator, Parent, Proposal
from evo.launch.runner import Slot, run_evaluation

from conftest import wait_until
from llm_server import FakeLLMServer

ROOT = Path(__file__).resolve().parent.parent
SURROGATE = ROOT / "tests" / "fixtures" / "surrogate"
SEED_CODE = (SURROGATE / "train.py").read_text()


def make_engine(tmp_path: Path, operator, *, prepare: Path = SURROGATE / "prepare.py", seed: SeedPlan | None = None,
                evaluate=run_evaluation, name: str = "w", **config) -> tuple[Archive, Engine]:
    archive = Archive(f"sqlite:///{tmp_path}/evo.db")
    settings = dict(name=name, preset="smoke", temperature=0.001, replicates=2, slots=1)
    cfg = RunConfig(**{**settings, **config}).validate()
    run = archive.create_run(name, cfg.to_dict())
    app = apparatus.load(prepare, "smoke")
    return archive, Engine(archive, run, cfg, operator, [Slot("cpu")], app, seed or SeedPlan(SEED_CODE),
                           evaluate=evaluate)


def with_x1(code: str, value: float) -> str:
    return re.sub(r"X1 = [0-9.]+", f"X1 = {value}", code)


class StepOperator(Operator):
    """Each proposal moves X1 one step (distinct code every time); `extra` is appended to the
    proposal numbered `extra_on`, and proposals numbered in `raise_on` raise that exception."""
    name = "tweak"
    n_parents = 1

    def __init__(self, extra: str = "", extra_on: int = 0, raise_on: dict[int, Exception] | None = None):
        self.extra, self.extra_on, self.raise_on = extra, extra_on, raise_on or {}
        self.calls = 0
        self.lock = threading.Lock()  # proposals run concurrently

    def propose(self, parents: list[Parent], rng: random.Random) -> Proposal:
        with self.lock:
            self.calls += 1
            call = self.calls
        if call in self.raise_on:
            raise self.raise_on[call]
        code = with_x1(SEED_CODE, 1.0 + call / 10)
        if call == self.extra_on:
            code += self.extra
        return Proposal(code=code, hypothesis=f"X1 step {call}")


# ----- 1: a would-be best is confirmed at most once ---------------------------------------------

def test_failed_confirmation_is_decided_not_retried(tmp_path: Path) -> None:
    # X1 = 2.0 hits the surrogate's optimum (a sure new best) on seed 42; every other seed crashes,
    # so each confirmation the old loop queued failed again.
    flaky = "\nimport os\nif os.environ.get('EVO_SEED') != '42':\n    raise SystemExit('fails off seed 42')\n"

    class BestThenFlaky(StepOperator):
        def propose(self, parents, rng):
            proposal = super().propose(parents, rng)
            if self.calls == 1:
                proposal.code = with_x1(SEED_CODE, 2.0) + flaky
            return proposal

    evaluations = []

    def bounded(**kw):  # the old loop re-queued the confirmation forever: cut it off so the test ends
        evaluations.append(kw["seed"])
        if len(evaluations) > 8:
            engine.request_stop()
        return run_evaluation(**kw)

    archive, engine = make_engine(tmp_path, BestThenFlaky(), evaluate=bounded, max_candidates=1)
    assert engine.execute() == FINISHED
    child = archive.candidates(engine.run.id)[1]
    evs = archive.evaluations(engine.run.id, child.id)
    assert [(e.state, e.fail_reason) for e in evs] == [(COMPLETE, None), (FAIL, "crash")], "confirmed exactly once"
    assert child.accepted is False and not child.in_population
    decision = [e.message for e in archive.events(engine.run.id) if e.kind == "decide" and e.candidate_id == child.id]
    assert len(decision) == 1 and "confirmation failed (crash" in decision[0]
    # then the final re-measure: the only member, the seed, once more to choose it, then to report it
    assert len(evaluations) == 2 + 2 + 1 + selection.REMEASURE_REPORTING, \
        "seed replicates, the child, one confirmation, the seed's re-measure"


# ----- 2: an evaluation that raises is recorded, the run goes on ---------------------------------

def test_evaluation_that_raises_is_recorded_failed_and_run_goes_on(tmp_path: Path) -> None:
    def evaluate(**kw):
        if "X1 = 1.2" in kw["code"]:  # the second child: the parser or runner blows up on it
            raise ValueError("could not convert string to float: '-inf'")
        return run_evaluation(**kw)

    archive, engine = make_engine(tmp_path, StepOperator(), evaluate=evaluate, max_candidates=3, confirm=False)
    assert engine.execute() == FINISHED
    cands = archive.candidates(engine.run.id)
    assert len(cands) == 4 and all(c.accepted is not None for c in cands)
    bad = next(c for c in cands if "X1 = 1.2" in archive.code(c.code_hash))
    (ev,) = archive.evaluations(engine.run.id, bad.id)
    assert (ev.state, ev.fail_reason) == (FAIL, "harness")
    assert "ValueError" in ev.detail and "'-inf'" in ev.detail
    assert bad.state == FAIL and bad.accepted is False
    assert all(e.state != RUNNING for e in archive.evaluations(engine.run.id))
    assert [c.state for c in cands if c.id != bad.id] == [COMPLETE] * 3


def test_changed_apparatus_still_stops_the_run(tmp_path: Path) -> None:
    prepare = tmp_path / "prepare.py"
    shutil.copyfile(SURROGATE / "prepare.py", prepare)
    started = []

    def evaluate(**kw):
        started.append(kw["seed"])
        if len(started) == 2:
            prepare.write_text(prepare.read_text() + "\n# edited mid-run\n")
        return run_evaluation(**kw)

    archive, engine = make_engine(tmp_path, StepOperator(), prepare=prepare, evaluate=evaluate, max_candidates=3)
    with pytest.raises(EngineError, match="apparatus is locked"):
        engine.execute()
    evs = archive.evaluations(engine.run.id)
    # (children proposed while the seed was measured wait, never started)
    assert [(e.state, e.fail_reason) for e in evs if e.state != WAITING] == [(COMPLETE, None), (FAIL, "invalid")]


# ----- 5: what belongs together is written together -----------------------------------------------

def fail_on_add(monkeypatch: pytest.MonkeyPatch, kind: type, nth: int = 1) -> None:
    """The database refuses the nth row of `kind` added (a full disk, or the moment of a kill)."""
    real, seen = Session.add, [0]

    def add(self, instance, *args, **kw):
        if isinstance(instance, kind):
            seen[0] += 1
            if seen[0] == nth:
                raise OSError("database or disk is full")
        return real(self, instance, *args, **kw)

    monkeypatch.setattr(Session, "add", add)


def seeded_plan() -> SeedPlan:
    history = (Imported("a1", None, with_x1(SEED_CODE, 1.1), "first", 1.02, "keep"),
               Imported("b2", "a1", with_x1(SEED_CODE, 1.2), "second", 1.01, "keep"))
    return SeedPlan(with_x1(SEED_CODE, 1.3), operator="import", hypothesis="greedy best", imported_val_bpb=1.0,
                    parent_key="b2", history=history)


@pytest.mark.parametrize("kind, nth", [(Evaluation, 1), (Candidate, 2), (Candidate, 3)],
                         ids=["before-replicates", "mid-history", "at-seed"])
def test_seed_plan_is_archived_whole_or_not_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   kind: type, nth: int) -> None:
    archive, engine = make_engine(tmp_path, StepOperator(), seed=seeded_plan(), replicates=3)
    with monkeypatch.context() as m:
        fail_on_add(m, kind, nth)
        with pytest.raises(OSError):
            engine._ensure_seed()
    run = archive.run_by_id(engine.run.id)
    assert archive.candidates(run.id) == [] and archive.evaluations(run.id) == []
    assert run.seed_id is None and run.next_number == 0

    engine._ensure_seed()  # what a resume does: the plan again, once
    cands = archive.candidates(run.id)
    assert [c.operator for c in cands] == ["import", "import", "import"]
    assert cands[1].parent_id == cands[0].id and cands[2].parent_id == cands[1].id
    assert archive.run_by_id(run.id).seed_id == cands[2].id
    assert [e.replicate for e in archive.evaluations(run.id, cands[2].id)] == [0, 1, 2]


def test_child_and_its_evaluation_are_archived_together(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive, engine = make_engine(tmp_path, StepOperator())
    engine._ensure_seed()
    parent = engine._as_parent(archive.candidates(engine.run.id)[0])
    proposed: Future = Future()
    proposed.set_result(Proposal(code=with_x1(SEED_CODE, 1.5), hypothesis="X1 to 1.5"))
    with monkeypatch.context() as m:
        fail_on_add(m, Evaluation)
        with pytest.raises(OSError):
            engine._admit(_Asked([parent], 0.0), proposed)
    assert len(archive.candidates(engine.run.id)) == 1, "no WAITING child without its evaluation"
    engine._admit(_Asked([parent], 0.0), proposed)
    child = archive.candidates(engine.run.id)[1]
    assert [e.replicate for e in archive.evaluations(engine.run.id, child.id)] == [0]


def test_resume_queues_what_an_old_archive_left_unqueued(tmp_path: Path) -> None:
    """Archives written before these writes were joined: a seed and a child without evaluations."""
    archive = Archive(f"sqlite:///{tmp_path}/evo.db")
    cfg = RunConfig(name="old", preset="smoke", temperature=0.001, replicates=2, slots=1, max_candidates=1).validate()
    run = archive.create_run("old", cfg.to_dict())
    app = apparatus.load(SURROGATE / "prepare.py", "smoke")
    archive.add_candidate(run.id, code=SEED_CODE, operator="seed", hypothesis="seed", is_seed=True)
    engine = Engine(archive, run, cfg, StepOperator(), [Slot("cpu")], app, None)
    assert engine.execute() == FINISHED
    seed, child = archive.candidates(run.id)
    # its two replicates (then the final re-measure's)
    evs = archive.evaluations(run.id, seed.id)
    assert [e.replicate for e in evs][:2] == [0, 1] and {e.state for e in evs} == {COMPLETE} and seed.accepted

    orphan = archive.add_candidate(run.id, code=with_x1(SEED_CODE, 3.0), operator="tweak", parent_id=seed.id,
                                   hypothesis="left WAITING by a kill")
    cfg.max_candidates = 2  # no new proposal: the orphan is the second child
    engine = Engine(archive, archive.run_by_id(run.id), cfg, StepOperator(), [Slot("cpu")], app, None)
    assert engine.execute() == FINISHED
    orphan = archive.candidate_by_id(orphan.id)
    assert orphan.state == COMPLETE and orphan.accepted is not None
    assert len(archive.candidates(run.id)) == 3


# ----- 6: a stop is prompt even while an LLM call hangs ----------------------------------------------

@pytest.mark.parametrize("signals", [[signal.SIGINT, signal.SIGINT], [signal.SIGTERM]], ids=["ctrl-c-twice", "sigterm"])
def test_stop_does_not_wait_for_an_llm_call_in_flight(tmp_path: Path, signals: list[int]) -> None:
    db = f"sqlite:///{tmp_path}/archive/evo.db"
    env = {**os.environ, "EVO_STORAGE": db}
    env.pop("OPENAI_API_KEY", None)  # a local base URL needs no key
    with FakeLLMServer(latency=3600) as server:  # accepts every request and never answers
        proc = subprocess.Popen(
            [sys.executable, "-m", "evo", "run", "--name", "hang", "--prepare", str(SURROGATE / "prepare.py"),
             "--seed-train", str(SURROGATE / "train.py"), "--preset", "smoke", "--operator", "llm",
             "--model", f"openai:fake@{server.openai_url}", "--program", str(ROOT / "program.md"),
             "--replicates", "2", "--max-candidates", "4"],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
        reader.start()
        try:
            wait_until(lambda: server.requests or proc.poll() is not None, "an LLM call to be in flight")
            assert proc.poll() is None, "".join(lines)
            for i, signum in enumerate(signals):
                if proc.poll() is not None:
                    break  # a stop with nothing running may already have ended it
                proc.send_signal(signum)
                if i + 1 < len(signals):  # two signals back to back may be delivered as one
                    wait_until(lambda: any("stopping" in line for line in lines) or proc.poll() is not None,
                               "the first signal to be acknowledged")
            # The SDK would wait 600 s per attempt: exiting well inside that means the call was abandoned.
            returncode = proc.wait(timeout=180)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        reader.join(timeout=30)
    assert returncode == 128 + signals[0], "".join(lines)
    archive = Archive(db, writer=False)
    run = archive.find_run("hang")
    assert run.status == INTERRUPTED and run.owner is None
    assert all(e.state != RUNNING for e in archive.evaluations(run.id))
    assert len(archive.candidates(run.id)) == 1, "an abandoned proposal archives nothing"


# ----- 8: a bug in a proposal costs one proposal, not the night ----------------------------------

def test_non_operator_exception_in_a_proposal_is_archived(tmp_path: Path) -> None:
    operator = StepOperator(raise_on={2: KeyError("parent_val_bpb")})
    archive, engine = make_engine(tmp_path, operator, max_candidates=3, confirm=False)
    assert engine.execute() == FINISHED
    cands = archive.candidates(engine.run.id)
    assert len(cands) == 4
    failed = [c for c in cands if c.state == FAIL]
    assert len(failed) == 1 and failed[0].fail_reason == "harness"  # evo's own bug, not the candidate's
    assert "KeyError" in failed[0].fail_detail and "parent_val_bpb" in failed[0].fail_detail
    assert failed[0].accepted is False and archive.evaluations(engine.run.id, failed[0].id) == []
    assert sum(c.state == COMPLETE for c in cands) == 3


def test_repeated_proposal_bugs_count_toward_the_failure_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(evo.engine.loop, "MAX_OPERATOR_FAILURES", 3)
    operator = StepOperator(raise_on={n: RuntimeError("database is locked") for n in range(1, 100)})
    archive, engine = make_engine(tmp_path, operator, max_candidates=50)
    assert engine.execute() == FINISHED
    failed = [c for c in archive.candidates(engine.run.id) if c.state == FAIL]
    in_flight = len(engine.slots) + engine.config.lookahead
    assert 3 <= len(failed) < 3 + in_flight, "proposing stops at the limit"
    assert all("RuntimeError: database is locked" in c.fail_detail for c in failed)


# ----- 12: one outage, one doubling ---------------------------------------------------------------------

class OutageOperator(StepOperator):
    """The first `outage` proposals are all in flight together when the API goes down."""

    def __init__(self, outage: int):
        super().__init__()
        self.outage, self.barrier, self.asked = outage, threading.Barrier(outage), 0

    def propose(self, parents: list[Parent], rng: random.Random) -> Proposal:
        with self.lock:
            self.asked += 1
            first = self.asked <= self.outage
        if first:
            self.barrier.wait(timeout=120)  # every one of them is in flight before any fails
            error = OperatorUnavailable("API answered 503 after retries")
            error.llm_calls = [{"model": "fake", "purpose": "mutate", "error": "503"}]
            raise error
        return super().propose(parents, rng)


def test_an_outage_seen_by_many_proposals_doubles_the_pause_once(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(evo.engine.loop, "PAUSE_FIRST", 0.2)
    operator = OutageOperator(outage=4)
    archive, engine = make_engine(tmp_path, operator, lookahead=3, max_candidates=8, confirm=False)
    assert engine.execute() == FINISHED
    messages = [e.message for e in archive.events(engine.run.id)]
    assert sum("pausing proposals" in m for m in messages) == 1
    assert any("proposals resumed" in m for m in messages)
    assert len([c for c in archive.llm_calls(engine.run.id) if c.error]) == 4, "every failed call is kept"
    assert len(archive.candidates(engine.run.id)) == 9


def test_pause_doubles_again_for_a_new_outage(tmp_path: Path) -> None:
    archive, engine = make_engine(tmp_path, StepOperator())
    down = OperatorUnavailable("API down")
    asked_before = evo.engine.loop.time.monotonic() - 1.0
    engine._pause_proposals(down, asked_before)
    engine._pause_proposals(down, asked_before)  # in flight when the outage began: the same outage
    assert engine._pause == 2 * evo.engine.loop.PAUSE_FIRST
    engine._pause_proposals(down, evo.engine.loop.time.monotonic())  # asked after the pause began: still down
    assert engine._pause == 4 * evo.engine.loop.PAUSE_FIRST


# ----- 14: a seed that cannot run here ends the run, once -------------------------------------------------

def evo_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "evo", *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "EVO_STORAGE": f"sqlite:///{tmp_path}/archive/evo.db"})


def test_seed_that_cannot_run_here_fails_once_and_the_run_says_so(tmp_path: Path) -> None:
    bad = tmp_path / "cuda_train.py"
    bad.write_text("raise SystemExit('this train.py needs CUDA')\n")
    args = ["run", "--name", "c", "--prepare", str(SURROGATE / "prepare.py"), "--seed-train", str(bad),
            "--preset", "smoke", "--operator", "tweak", "--replicates", "3", "--max-candidates", "2"]
    first = evo_cli(tmp_path, *args)
    assert first.returncode == 2 and "the seed failed (crash" in first.stderr and "Traceback" not in first.stderr
    assert len(first.stderr.strip().splitlines()) == 1

    archive = Archive(f"sqlite:///{tmp_path}/archive/evo.db", writer=False)
    run = archive.find_run("c")
    assert run.status == FAILED and run.owner is None
    evs = archive.evaluations(run.id)
    assert [(e.replicate, e.state) for e in evs] == [(0, FAIL), (1, PRUNED), (2, PRUNED)], "the crash ran once"
    assert all("would fail again" in e.detail for e in evs[1:])
    assert any("the seed failed" in e.message for e in archive.events(run.id))

    resumed = evo_cli(tmp_path, *args, "--resume")
    assert resumed.returncode == 2, resumed.stdout + resumed.stderr
    assert "the seed failed (crash" in resumed.stderr and "--seed-train" in resumed.stderr
    assert len(resumed.stderr.strip().splitlines()) == 1 and "Traceback" not in resumed.stderr
    assert "run finished" not in resumed.stdout
    run = archive.find_run("c")
    assert run.status == FAILED
    assert len(archive.evaluations(run.id)) == 3 and len(archive.candidates(run.id)) == 1


def test_seed_that_times_out_here_is_measured_again_on_resume(tmp_path: Path) -> None:
    """A seed that overran its start-up allowance (a loaded box, a cold compile) is not given up:
    the run stops, says what to raise, and `--resume` with the larger allowance measures it again."""
    slow = tmp_path / "slow_train.py"
    slow.write_text(SEED_CODE.replace("t0 = time.time()", "time.sleep(4)\nt0 = time.time()"))
    args = ["run", "--name", "t", "--prepare", str(SURROGATE / "prepare.py"), "--seed-train", str(slow),
            "--preset", "smoke", "--operator", "tweak", "--replicates", "2", "--max-candidates", "1"]
    first = evo_cli(tmp_path, *args, "--startup-allowance", "1")
    assert first.returncode == 2 and "timeout" in first.stderr and "--resume --name t" in first.stderr, first.stderr
    assert len(first.stderr.strip().splitlines()) == 1 and "Traceback" not in first.stderr
    archive = Archive(f"sqlite:///{tmp_path}/archive/evo.db", writer=False)
    run = archive.find_run("t")
    assert run.status == INTERRUPTED and run.owner is None
    seed = archive.candidate_by_id(run.seed_id)
    assert seed.state == FAIL and seed.accepted is None, "undecided: it may still be measured"

    resumed = evo_cli(tmp_path, *args, "--resume", "--startup-allowance", "120")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    run = archive.find_run("t")
    seed = archive.candidate_by_id(run.seed_id)
    # its two replicates, measured again (then the final re-measure's)
    evs = archive.evaluations(run.id, seed.id)
    assert run.status == FINISHED and seed.accepted and seed.n_evals == len(evs)
    assert [e.replicate for e in evs][:2] == [0, 1] and {e.state for e in evs} == {COMPLETE}
