"""The search's decision rules (issue 12): the hold-then-cool schedule, σ̂ pooled with a prior,
follow-through, the elite as parent, the budget's population, P(better than the seed), and the real
Engine using them: a many-slot run with the new defaults, and greedy settings that stay greedy."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from evo.cli.app import app
from evo.config import RunConfig
from evo.core import acceptance, lineage, selection
from evo.core.format import candidate_bpb
from evo.core.selection import FollowThrough, Member, follow_through
from evo.engine.loop import Engine
from evo.engine.seeding import SeedPlan
from evo.launch import apparatus
from evo.launch.logs import Outcome
from evo.launch.runner import EvalResult, Slot
from evo.operators.tweak import TweakOperator
from evo.storage import (CHOOSING_REPLICATE, COMPLETE, FINISHED, PRUNED, REPORTING_REPLICATE, SCHEMA_VERSION, Archive,
                         utcnow)
from tests.support.old_schema import downgrade
from tests.support.simulated import (SUMMARY_REST, SURROGATE, Night, NightArchive, SimulatedEvaluation,
                                     simulated_engine)

SEED_CODE = (SURROGATE / "train.py").read_text()
TARGETS = (2.0, 0.5, 4.0, 1.5)
NOISE = 0.002


def measure(code: str, seed: int) -> float:
    """The surrogate's landscape (prepare.true_bpb) with seeded noise: a function of the code's
    X constants and the evaluation's seed, as a real evaluation is of the code and EVO_SEED."""
    xs = [float(re.search(rf"^X{i + 1} = (\S+)", code, re.M).group(1)) for i in range(len(TARGETS))]
    true = 1.0 + 0.01 * sum((math.log(x) - math.log(t)) ** 2 for x, t in zip(xs, TARGETS))
    return true + random.Random(f"{seed}:{code}").gauss(0.0, NOISE)


# ----- pure rules --------------------------------------------------------------------------------

def test_hold_then_cool_schedule() -> None:
    t0, f = 0.01, acceptance.FINAL_FRACTION
    assert "hold" in acceptance.COOLING_SCHEDULES and RunConfig(name="x").cooling == "hold"
    assert acceptance.temperature_at(t0, 0.0, "hold") == t0
    assert acceptance.temperature_at(t0, acceptance.HOLD_FRACTION, "hold") == t0
    assert acceptance.temperature_at(t0, 0.8, "hold") == pytest.approx(t0 * f ** 0.5)
    assert acceptance.temperature_at(t0, 1.0, "hold") == pytest.approx(t0 * f)
    assert acceptance.temperature_at(t0, 1.5, "hold") == pytest.approx(t0 * f)  # clamped
    # the old schedules are unchanged
    assert acceptance.temperature_at(t0, 0.5, "exp") == pytest.approx(t0 * f ** 0.5)
    assert acceptance.temperature_at(t0, 0.25, "linear") == pytest.approx(0.75 * t0)


def test_pooled_sigma_with_and_without_prior_and_its_floor() -> None:
    groups = [[1.0, 3.0], [2.0, 2.0, 2.0], [5.0]]  # SS 2 over 1 + 2 dof; the singleton adds nothing
    assert acceptance.pooled_sigma(groups) == pytest.approx(math.sqrt(2 / 3))
    assert acceptance.pooled_sigma(groups, prior=0.5) == pytest.approx(math.sqrt((2 + 4 * 0.25) / (3 + 4)))
    assert acceptance.pooled_sigma(groups, prior=0.5, prior_dof=1.0) == pytest.approx(math.sqrt((2 + 0.25) / 4))
    # identical replicates are real observations of no spread: with many, the floor holds
    assert acceptance.pooled_sigma([[1.0] * 50], prior=1.0) == pytest.approx(0.5)
    assert acceptance.pooled_sigma([[1.0] * 50]) == 0.0
    assert acceptance.pooled_sigma([], prior=0.3) == pytest.approx(0.3)
    assert acceptance.pooled_sigma([[1.0], []]) is None
    # the seed's replicates alone: the sample standard deviation, as before
    values = [0.91, 0.913, 0.9105]
    assert acceptance.pooled_sigma([values]) == pytest.approx(acceptance.noise_sigma(values))


def test_follow_through_transitions() -> None:
    empty = FollowThrough()
    # an accepted worse child is followed, whoever its parent
    assert follow_through(empty, parent_id=1, child_id=7, accepted=True, worse=True) == FollowThrough(7, 0)
    state = FollowThrough(7, 1)
    assert follow_through(state, parent_id=7, child_id=9, accepted=True, worse=True) == FollowThrough(9, 0)
    # the followed line improved: selection takes over
    assert follow_through(state, parent_id=7, child_id=9, accepted=True, worse=False) == FollowThrough()
    # its children rejected: counted, and given up at FOLLOW_TRIES
    assert follow_through(FollowThrough(7, 0), parent_id=7, child_id=9, accepted=False, worse=True) == FollowThrough(7, 1)
    last = FollowThrough(7, selection.FOLLOW_TRIES - 1)
    assert follow_through(last, parent_id=7, child_id=9, accepted=False, worse=False) == FollowThrough()
    # other lines leave it alone
    assert follow_through(state, parent_id=3, child_id=9, accepted=False, worse=True) == state
    assert follow_through(state, parent_id=3, child_id=9, accepted=True, worse=False) == state
    assert follow_through(empty, parent_id=None, child_id=9, accepted=False, worse=False) == empty


def todays_select_parents(members: list[Member], n: int, rng: random.Random) -> list[Member]:
    """select_parents as it was before the elite and follow-through, to compare streams with."""
    chosen = [selection.tournament(members, rng)]
    while len(chosen) < n:
        others = [m for m in members if m.id not in {c.id for c in chosen}] or members
        chosen.append(selection.tournament(others, rng))
    return chosen


def test_select_parents_keeps_todays_stream_and_follows_or_takes_the_elite() -> None:
    members = [Member(i, 1.0 + ((i * 37) % 11) / 100) for i in range(1, 9)]
    new, old = random.Random(5), random.Random(5)
    for k in range(300):
        n = 1 + k % 2
        assert selection.select_parents(members, n, new) == todays_select_parents(members, n, old)
    assert new.getstate() == old.getstate()
    elite = selection.best(members)
    rng = random.Random(1)
    assert all(selection.select_parents(members, 1, rng, elite_share=1.0)[0] == elite for _ in range(50))
    # the followed member first while it is one, whatever the share; a second parent is another member
    first, second = selection.select_parents(members, 2, rng, elite_share=1.0, follow=6)
    assert first.id == 6 and second.id != 6
    # a followed member that left: the usual rule (here the elite)
    assert selection.select_parents(members, 1, rng, elite_share=1.0, follow=99)[0] == elite
    # half the time the elite: many draws land near the share (a tournament alone picks it far less)
    rng = random.Random(2)
    firsts = [selection.select_parents(members, 1, rng, elite_share=selection.ELITE_SHARE)[0] for _ in range(2000)]
    assert 0.5 < sum(m == elite for m in firsts) / len(firsts) < 0.65


@pytest.mark.parametrize("per_slot, population", [(50, 2), (100, 2), (200, 5), (400, 8), (1000, 8)])
def test_default_population_scales_with_the_budget(per_slot: float, population: int) -> None:
    assert selection.default_population(per_slot) == population


def test_resolve_search_says_what_it_chose() -> None:
    config = RunConfig(name="x", hours=8.0, slots=1)
    line = config.resolve_search(1, 300.0)
    assert config.population == 2
    assert line == ("search: population 2 (≈ 96 evaluations per slot in 8 h), temperature auto (2σ̂), "
                    "hold-then-cool, 3 replicates, confirm on")
    unbounded = RunConfig(name="y")
    assert "population 8 (no budget given)" in unbounded.resolve_search(4, 300.0)
    given = RunConfig(name="z", population=3, max_candidates=4000)
    assert given.resolve_search(4, 300.0).startswith("search: population 3 (as given)") and given.population == 3
    assert RunConfig(name="w", max_candidates=1600).resolve_search(4, 1.0).startswith("search: population 8")


def test_probability_better_than_the_seed() -> None:
    assert acceptance.probability_better(1.0, 3, 1.0, 3, 0.01) == pytest.approx(0.5)
    # one standard error of the difference better: Φ(1)
    se = 0.01 * math.sqrt(1 / 2 + 1 / 3)
    assert acceptance.probability_better(1.0 - se, 2, 1.0, 3, 0.01) == pytest.approx(0.841345, abs=1e-6)
    assert acceptance.probability_better(1.0 + se, 2, 1.0, 3, 0.01) == pytest.approx(1 - 0.841345, abs=1e-6)
    assert acceptance.probability_better(0.9, 2, 1.0, 3, None) is None


def test_the_best_is_ranked_by_its_post_selection_evaluations() -> None:
    class Row:
        def __init__(self, number: int, val_bpb: float, post: float | None):
            self.id, self.number, self.val_bpb, self.val_bpb_post, self.accepted = number, number, val_bpb, post, True

    lucky = Row(1, 0.900, 0.920)        # its first evaluation was luck: re-measured, it is worse
    honest = Row(2, 0.910, 0.905)
    unmeasured = Row(3, 0.890, None)    # never measured again: its one evaluation is not evidence enough
    assert lineage.best([lucky, honest, unmeasured]) is honest
    assert lineage.best_index([lucky, honest, unmeasured]) == 1
    # where nothing was measured twice (greedy settings), the mean decides as before
    assert lineage.best([Row(1, 0.900, None), Row(2, 0.890, None)]).number == 2
    assert lineage.best([]) is None and lineage.best_index([]) == -1


# ----- the real Engine ---------------------------------------------------------------------------

def decisions(archive: Archive, run_id: int) -> list[tuple[int, bool]]:
    """(candidate id, accepted) in the order the engine decided."""
    return [(ev.candidate_id, json.loads(ev.data)["accepted"]) for ev in archive.events(run_id, kind="decide")]


def test_four_slot_run_with_the_new_defaults_remeasures_its_top_members(tmp_path: Path) -> None:
    archive = Archive(f"sqlite:///{tmp_path}/evo.db")
    config = RunConfig(name="night", preset="smoke", operator="tweak", max_candidates=40).validate()
    assert config.population is None and config.cooling == "hold"
    engine = simulated_engine(archive, config, SEED_CODE, SimulatedEvaluation(measure),
                              slots=["s0", "s1", "s2", "s3"])
    assert engine.execute() == FINISHED
    run = archive.find_run("night")
    stored = json.loads(run.config)
    assert stored["population"] == 2 and engine.search.startswith("search: population 2 (≈ 10 evaluations per slot")
    assert any(ev.message == engine.search for ev in archive.events(run.id))
    # the top members by mean were measured once more each, then the best of them by mean (the
    # run's chosen best) REMEASURE_REPORTING times more, and only those give its reported value
    assert any("measuring the top" in ev.message for ev in archive.events(run.id))
    assert archive.count_candidates(run.id, after_number=0) == 40  # re-measures are evaluations, not candidates
    best = lineage.best(archive.candidates(run.id))
    reporting = [e for e in archive.evaluations(run.id, best.id) if e.replicate >= REPORTING_REPLICATE]
    assert len(reporting) == selection.REMEASURE_REPORTING and all(e.state == COMPLETE for e in reporting)
    assert best.val_bpb_post == pytest.approx(sum(e.val_bpb for e in reporting) / len(reporting))
    assert [c.number for c in archive.candidates(run.id) if c.val_bpb_post is not None] == [best.number]
    chose = [e for e in archive.evaluations(run.id, best.id) if e.replicate < REPORTING_REPLICATE]
    others = [c for c in archive.population(run.id) if c.id != best.id]
    # chosen by its mean over the evaluations before the reporting ones, against the other finalists
    assert all(sum(e.val_bpb for e in chose) / len(chose) <= c.val_bpb for c in others[:2])
    # σ̂ pools every candidate measured more than once, and T0 follows it
    groups: dict[int, list[float]] = {}
    for e in archive.evaluations(run.id):
        if e.state == COMPLETE:
            groups.setdefault(e.candidate_id, []).append(e.val_bpb)
    assert sum(len(v) >= 2 for v in groups.values()) > 1
    assert engine.sigma() == pytest.approx(acceptance.pooled_sigma(list(groups.values())))
    engine.temperature()
    run = archive.find_run("night")
    assert run.sigma == pytest.approx(engine.sigma()) and run.temperature0 == pytest.approx(2 * run.sigma)
    # `evo best` shows mean ± σ, n and P(better than the seed)
    out = CliRunner().invoke(app, ["best", "--name", "night", "--storage", f"sqlite:///{tmp_path}/evo.db"])
    assert out.exit_code == 0, out.output
    assert re.search(r"judged on .*evaluation\(s\).*: \d\.\d{6} ± \d\.\d{6} \(n=\d+", out.output)
    assert "P(better than the seed" in out.output or best.id == run.seed_id


def test_greedy_settings_stay_exactly_greedy(tmp_path: Path) -> None:
    archive = Archive(f"sqlite:///{tmp_path}/evo.db")
    config = RunConfig(name="greedy", preset="smoke", operator="tweak", population=1, temperature=0.0, confirm=False,
                       replicates=1, max_candidates=30).validate()
    engine = simulated_engine(archive, config, SEED_CODE, SimulatedEvaluation(measure))
    assert engine.execute() == FINISHED
    run = archive.find_run("greedy")
    by_id = {c.id: c for c in archive.candidates(run.id)}
    # greedy's rule by hand, in the order decided: keep a child iff strictly lower than the incumbent
    made = decisions(archive, run.id)
    assert made[0] == (run.seed_id, True)
    incumbent = by_id[run.seed_id].val_bpb
    for cand_id, accepted in made[1:]:
        child = by_id[cand_id]
        assert accepted == (child.val_bpb is not None and child.val_bpb < incumbent), child.number
        if accepted:
            incumbent = child.val_bpb
    # every candidate judged once, but duplicates (pruned by code hash, their twin's result stands)
    assert sorted(i for i, _ in made) == sorted(c.id for c in by_id.values() if c.state != PRUNED) and len(by_id) == 31
    # one evaluation each: no confirmation, no re-measure, and the best is the last one kept
    assert all(c.n_evals <= 1 and c.val_bpb_post is None for c in by_id.values())
    assert lineage.best(by_id.values()).val_bpb == incumbent
    assert [c.id for c in archive.population(run.id)] == [next(i for i, ok in reversed(made) if ok)]


def test_sigma_prior_from_an_earlier_run_and_follow_through_survives_resume(tmp_path: Path) -> None:
    archive = Archive(f"sqlite:///{tmp_path}/evo.db")
    first = RunConfig(name="first", preset="smoke", operator="tweak", population=4, max_candidates=6).validate()
    simulated_engine(archive, first, SEED_CODE, SimulatedEvaluation(measure)).execute()
    prior = archive.find_run("first").sigma
    assert prior is not None
    # the second run starts hot so that worse children are accepted and followed
    second = RunConfig(name="second", preset="smoke", operator="tweak", population=4, temperature="auto",
                       max_candidates=30).validate()
    engine = simulated_engine(archive, second, SEED_CODE, SimulatedEvaluation(measure), slots=["a", "b"])
    assert engine.prior_sigma == prior and engine.prior_run == "first"
    assert engine.execute() == FINISHED
    run = archive.find_run("second")
    assert any(f"prior σ {prior:.6f} from run first" in ev.message for ev in archive.events(run.id))
    seed_values = [e.val_bpb for e in archive.evaluations(run.id, run.seed_id) if e.state == COMPLETE]
    t0_message = next(ev.message for ev in archive.events(run.id) if ev.message.startswith("noise σ"))
    assert f"{acceptance.pooled_sigma([seed_values], prior):.6f}" in t0_message
    # follow-through is a function of the decisions: a resumed engine replays it to the same state
    live = FollowThrough()
    by_id = {c.id: c for c in archive.candidates(run.id)}
    for ev in archive.events(run.id, kind="decide"):
        data, cand = json.loads(ev.data), by_id[ev.candidate_id]
        if cand.parent_id is not None:
            live = follow_through(live, parent_id=cand.parent_id, child_id=cand.id, accepted=data["accepted"],
                                  worse=(data["delta"] or 0) > 0)
    assert engine.follow == live
    app_ = apparatus.load(SURROGATE / "prepare.py", "smoke")
    config = RunConfig.from_dict(json.loads(run.config))
    resumed = Engine(archive, run, config, TweakOperator(), [Slot("a")], app_, SeedPlan(SEED_CODE),
                     evaluate=SimulatedEvaluation(measure))
    assert resumed.follow == engine.follow and resumed.config.population == 4


def test_a_version_2_archive_gets_its_post_selection_means(tmp_path: Path) -> None:
    db = tmp_path / "evo.db"
    url = f"sqlite:///{db}"
    archive = Archive(url)
    simulated_engine(archive, RunConfig(name="old", preset="smoke", operator="tweak", population=2,
                                        max_candidates=6).validate(), SEED_CODE, SimulatedEvaluation(measure)).execute()
    expected = {c.number: c.val_bpb_post for c in archive.candidates(archive.find_run("old").id)}
    archive.close()
    assert any(v is not None for v in expected.values())
    downgrade(db, 2)
    reader = Archive(url, writer=False)  # sees the column through a view, file untouched
    seen = {c.number: c.val_bpb_post for c in reader.candidates(reader.find_run("old").id)}
    reader.close()
    writer = Archive(url)  # migrates
    migrated = {c.number: c.val_bpb_post for c in writer.candidates(writer.find_run("old").id)}
    writer.close()
    for got in (seen, migrated):
        assert got.keys() == expected.keys()
        assert all((got[k] is None) == (v is None) and (v is None or got[k] == pytest.approx(v))
                   for k, v in expected.items())
    con = sqlite3.connect(db)
    assert con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
    con.close()


def test_evo_run_without_search_flags_says_what_it_chose(tmp_path: Path) -> None:
    env = {**os.environ, "EVO_STORAGE": f"sqlite:///{tmp_path}/evo.db"}
    out = subprocess.run([sys.executable, "-m", "evo", "run", "--name", "n", "--prepare", str(SURROGATE / "prepare.py"),
                          "--seed-train", str(SURROGATE / "train.py"), "--preset", "smoke", "--operator", "tweak",
                          "--max-candidates", "3", "--no-sandbox"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    said = [line for line in out.stdout.splitlines() if "search: population" in line]
    assert len(said) == 1 and said[0].endswith("search: population 2 (≈ 3 evaluations per slot in 3 candidates), "
                                               "temperature auto (2σ̂), hold-then-cool, 3 replicates, confirm on")
    archive = Archive(env["EVO_STORAGE"], writer=False)
    assert json.loads(archive.find_run("n").config)["population"] == 2  # stored: --resume keeps it


def test_the_remeasure_runs_inside_an_hours_budget(tmp_path: Path) -> None:
    """Proposals stop early enough that the final re-measure ends within --hours (give or take
    the evaluations running when they stop), on a simulated night of 300 s evaluations."""
    night = Night(utcnow(), slots=1)
    archive = NightArchive(f"sqlite:///{tmp_path}/evo.db", night)

    def timed(code: str, seed: int) -> EvalResult:
        summary = {"val_bpb": measure(code, seed), **SUMMARY_REST}
        return EvalResult(Outcome(COMPLETE, summary=summary), [], 0, 300.0, 0.0, "")

    config = RunConfig(name="timed", preset="smoke", operator="tweak", population=2, hours=2.0).validate()
    engine = simulated_engine(archive, config, SEED_CODE, SimulatedEvaluation(timed, night=night))
    assert engine.execute() == FINISHED
    run = archive.find_run("timed")
    evals = archive.evaluations(run.id)
    assert any("measuring the top" in ev.message for ev in archive.events(run.id))
    assert sum(e.replicate >= REPORTING_REPLICATE for e in evals) == selection.REMEASURE_REPORTING
    # 6 re-measures of 300 s are reserved: without the reserve the run would end about 30 minutes late
    assert night.now <= 2 * 3600 + 2 * 300, night.now
    assert len(evals) >= 12


def test_auto_temperature_scales_with_the_budget() -> None:
    assert acceptance.auto_sigmas(50) == acceptance.auto_sigmas(100) == acceptance.AUTO_SIGMAS == 2.0
    assert acceptance.auto_sigmas(200) == pytest.approx(2.5)   # log-linear: 200 is halfway from 100 to 400
    assert acceptance.auto_sigmas(400) == acceptance.auto_sigmas(5000) == acceptance.auto_sigmas(None) == 3.0
    assert acceptance.initial_temperature("auto", 1e-3, 2.5) == pytest.approx(2.5e-3)
    config = RunConfig(name="n", preset="smoke", max_candidates=800).validate()
    assert "temperature auto (3σ̂)" in config.resolve_search(8, 360.0) and config.auto_sigmas == 3.0


def test_status_and_show_give_the_chosen_best_its_reported_value() -> None:
    row = dict(val_bpb=1.0123456, val_bpb_std=0.0004, n_evals=6, imported_val_bpb=None)
    assert candidate_bpb(SimpleNamespace(**row, val_bpb_post=None)) == "1.012346 ± 0.000400 (n=6)"
    assert candidate_bpb(SimpleNamespace(**row, val_bpb_post=1.0131)) == \
        "1.012346 ± 0.000400 (n=6); 1.013100 on the evaluations made after it was chosen"


def test_a_run_resumed_with_more_budget_re_measures_at_its_new_end(tmp_path: Path) -> None:
    archive = Archive(f"sqlite:///{tmp_path}/evo.db")
    config = RunConfig(name="more", preset="smoke", operator="tweak", population=3, max_candidates=6).validate()
    assert simulated_engine(archive, config, SEED_CODE, SimulatedEvaluation(measure)).execute() == FINISHED
    run = archive.find_run("more")

    def remeasures() -> list[int]:
        return sorted(e.replicate for e in archive.evaluations(run.id) if e.replicate >= CHOOSING_REPLICATE)

    once = remeasures()
    assert sum(r >= REPORTING_REPLICATE for r in once) == selection.REMEASURE_REPORTING
    app_ = apparatus.load(SURROGATE / "prepare.py", "smoke")
    same = RunConfig.from_dict(json.loads(run.config))
    assert Engine(archive, archive.find_run("more"), same, TweakOperator(), [Slot("a")], app_, SeedPlan(SEED_CODE),
                  evaluate=SimulatedEvaluation(measure)).execute() == FINISHED
    assert remeasures() == once, "resumed with nothing left to do: nothing is measured again"
    more = dataclasses.replace(same, max_candidates=12)
    assert Engine(archive, archive.find_run("more"), more, TweakOperator(), [Slot("a")], app_, SeedPlan(SEED_CODE),
                  evaluate=SimulatedEvaluation(measure)).execute() == FINISHED
    twice = remeasures()
    assert sum(r >= REPORTING_REPLICATE for r in twice) == 2 * selection.REMEASURE_REPORTING, twice
    keys = [(e.candidate_id, e.replicate) for e in archive.evaluations(run.id)]
    assert len(keys) == len(set(keys)), "no replicate number is used twice"
