"""The engine's parts (issue 10): the slot pool on its own, and the synthetic archives of
tests/support built by driving the real Engine with a simulated evaluation (no engine rules
re-implemented, no rows rewritten)."""

from __future__ import annotations

import importlib.util
import threading
from concurrent.futures import wait
from datetime import datetime, timezone
from pathlib import Path

import pytest

from evo.config import RunConfig
from evo.core.acceptance import pooled_sigma
from evo.engine.slots import SlotPool
from evo.launch import apparatus
from evo.launch.runner import Slot
from evo.storage import COMPLETE, FINISHED, RUNNING, STALE_AFTER_SECONDS, WAITING, Archive, liveness, owner_id
from tests.support.simulated import SURROGATE, SimulatedEvaluation, simulated_engine
from tests.support.synthetic import default_code, synthesize


def test_slot_pool_knows_what_runs_where_and_frees_slots() -> None:
    release = threading.Event()

    def evaluate(**kw):
        release.wait(60)
        return kw["code"]

    app = apparatus.load(SURROGATE / "prepare.py", "smoke")
    pool = SlotPool([Slot("gpu0"), Slot("gpu1")], evaluate, app, None, threading.Event())
    try:
        pool.start(Slot("gpu1"), 7, 3, "code", Path("/nonexistent"), 42, "candidate 3 r0")
        assert [s.name for s in pool.free()] == ["gpu0"] and pool.evaluation_ids() == {7}
        assert {k: label for k, (label, _) in pool.status.items()} == {"gpu1": "candidate 3 r0"}
        release.set()
        done, _ = wait(list(pool.running), timeout=60)
        [(pending, fut)] = pool.collect(done)
        assert (pending.evaluation_id, pending.candidate_id, pending.slot.name, fut.result()) == (7, 3, "gpu1", "code")
        assert len(pool.free()) == 2 and pool.status == {} and not pool.running
    finally:
        release.set()
        pool.shutdown()


def test_simulated_evaluation_stops_the_engine_at_its_cap(tmp_path: Path) -> None:
    archive = Archive(f"sqlite:///{tmp_path}/evo.db")
    config = RunConfig(name="capped", preset="smoke", population=4, replicates=3, max_candidates=50, lookahead=0,
                       operator="tweak", seed=3).validate()
    evaluate = SimulatedEvaluation(lambda code, seed: 1.0 + 1e-4 * (hash(code) % 97) + 1e-5 * seed, cap=10)
    engine = simulated_engine(archive, config, default_code(), evaluate)
    assert engine.execute() == "INTERRUPTED"  # a stop asked for, as Ctrl-C would
    ran = [e for e in archive.evaluations(engine.run.id) if e.state != WAITING]
    assert evaluate.count == 10 == len(ran), "the tenth evaluation is the last one started"


def test_synthetic_run_is_the_engines_own(tmp_path: Path) -> None:
    archive = Archive(f"sqlite:///{tmp_path}/evo.db")
    run = synthesize(archive, 40, name="night", slots=3, population=6, seed=5, fail_rate=0.3)  # P(no failure) ~ 1e-6
    assert run.status == FINISHED and run.owner is None
    cands = archive.candidates(run.id)
    assert len(cands) == 41 and {c.operator for c in cands[1:]} == {"tweak"}
    # σ̂ pools the seed's replicates with every later one (confirmations), and T0 = 2σ̂ as the engine's `auto` does
    seed_values = [e.val_bpb for e in archive.evaluations(run.id, cands[0].id) if e.state == COMPLETE]
    groups: dict[int, list[float]] = {}
    for e in archive.evaluations(run.id):
        if e.state == COMPLETE:
            groups.setdefault(e.candidate_id, []).append(e.val_bpb)
    assert len(seed_values) == 3 and run.sigma == pytest.approx(pooled_sigma(list(groups.values())))
    assert run.temperature0 == pytest.approx(2 * run.sigma)
    assert len(archive.population(run.id)) <= 6
    assert all(c.accepted is not None for c in cands), "every child judged"
    assert any(c.fail_reason in ("crash", "oom", "timeout", "nan") for c in cands)
    evals = archive.evaluations(run.id)
    assert any(e.replicate == 1 for e in evals if e.candidate_id != cands[0].id), "a would-be best was confirmed"
    # timestamps are the engine's own: an evaluation starts after its candidate exists, on a slot of the run
    created = {c.id: c.created_at for c in cands}
    assert all(created[e.candidate_id] <= e.started_at <= e.finished_at for e in evals)
    assert {e.slot for e in evals} == {"gpu0", "gpu1", "gpu2"}

def test_live_synthetic_run_is_in_progress(tmp_path: Path) -> None:
    archive = Archive(f"sqlite:///{tmp_path}/evo.db")
    run = synthesize(archive, 8, name="live", slots=2, seed=2, live=True)
    states = [e.state for e in archive.evaluations(run.id)]
    assert states.count(RUNNING) == 2 and WAITING in states
    alive, age = liveness(archive.run_by_id(run.id))
    assert run.status == "ACTIVE" and alive and age is not None


def test_report_synthetic_is_not_shipped() -> None:
    assert importlib.util.find_spec("evo.report.synthetic") is None


def test_archive_writes_every_timestamp_on_its_clock(tmp_path: Path) -> None:
    moment = datetime(2026, 3, 6, 22, 0, tzinfo=timezone.utc)
    archive = Archive(f"sqlite:///{tmp_path}/evo.db", clock=lambda: moment)
    run = archive.create_run("clocked", {})
    archive.claim_run(run.id, owner_id(), STALE_AFTER_SECONDS)
    archive.heartbeat(run.id, owner_id(), 5.0)
    cand = archive.add_candidate(run.id, evaluation_seeds=[42, 43], code="A = 1\n", operator="tweak",
                                 llm_calls=[{"model": "m"}])
    archive.add_candidate(run.id, code="A = 2\n", operator="tweak", state="PRUNED", fail_reason="duplicate")
    first, second = archive.evaluations(run.id, cand.id)
    archive.start_evaluation(first.id, "gpu0", str(tmp_path / "w"))
    archive.finish_evaluation(first.id, state=COMPLETE, fail_reason=None, detail="", metrics={"val_bpb": 1.0},
                              curve=[], returncode=0, wall_seconds=1.0, harness_seconds=0.1, log_tail="")
    archive.cancel_waiting(cand.id, "enough")
    archive.decide(cand.id, accepted=True, temperature=0.1, probability=1.0, delta=None, competitor_id=None,
                   leaving=[], reason="seed")
    archive.record_llm_calls(run.id, [{"model": "m"}])
    stamps = [archive.run_by_id(run.id).created_at, archive.run_by_id(run.id).heartbeat_at]
    stamps += [t for c in archive.candidates(run.id) for t in (c.created_at, c.finished_at)]
    stamps += [t for e in archive.evaluations(run.id) for t in (e.started_at, e.finished_at) if t is not None]
    stamps += [e.at for e in archive.events(run.id)] + [c.at for c in archive.llm_calls(run.id)]
    assert len(stamps) == 2 + 4 + 3 + len(archive.events(run.id)) + 2
    assert {t.replace(tzinfo=timezone.utc) for t in stamps} == {moment}


def test_synthetic_run_is_a_night_on_the_simulated_clock(tmp_path: Path) -> None:
    """Evaluations occupy their slot for their simulated wall seconds, slots run in parallel, a
    slot never runs two at once, and the engine's decisions come after what they judge."""
    archive = Archive(f"sqlite:///{tmp_path}/evo.db")
    run = synthesize(archive, 40, name="night", slots=3, population=6, seed=5)
    utc = lambda t: t.replace(tzinfo=timezone.utc)  # noqa: E731 - SQLite hands back naive UTC
    evals = [e for e in archive.evaluations(run.id) if e.started_at is not None]
    assert evals and all(e.finished_at is not None for e in evals)
    for e in evals:
        assert abs((e.finished_at - e.started_at).total_seconds() - e.wall_seconds) < 1e-3
    for slot in {e.slot for e in evals}:
        mine = sorted((e for e in evals if e.slot == slot), key=lambda e: e.started_at)
        assert all(a.finished_at <= b.started_at for a, b in zip(mine, mine[1:])), f"{slot} ran two at once"
    seed = [e for e in evals if e.candidate_id == run.seed_id]
    assert len({e.slot for e in seed}) == 3 and len({e.started_at for e in seed}) == 1, "slots run in parallel"
    first, last = min(e.started_at for e in evals), max(e.finished_at for e in evals)
    busy = sum(e.wall_seconds for e in evals)
    assert (last - first).total_seconds() >= busy / 3 > 3600, "40 candidates of ~5 minutes on 3 slots: hours"
    assert abs(run.active_seconds - (utc(last) - utc(run.created_at)).total_seconds()) < 1e-3, "the engine's clock"
    created = {c.id: c.created_at for c in archive.candidates(run.id)}
    ended: dict[int, datetime] = {}
    for e in evals:
        assert created[e.candidate_id] <= e.started_at
        ended[e.candidate_id] = max(ended.get(e.candidate_id, e.finished_at), e.finished_at)
    decisions = [ev for ev in archive.events(run.id) if ev.kind == "decide"]
    assert {ev.candidate_id for ev in decisions} >= set(ended), "every evaluated candidate judged"
    # judged once every evaluation it had ended (the final re-measure of the top members comes later)
    assert all(e.finished_at <= ev.at for ev in decisions for e in evals
               if e.candidate_id == ev.candidate_id and e.started_at < ev.at)
