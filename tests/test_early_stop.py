"""Early stopping against the parent's learning curve (issue 12, Build 2): the pure rule, the
runner's hook with real subprocesses (an honest bad candidate stopped, hostile ones that print fake
or garbage losses), the candidate's derived state, and the real Engine rejecting a stopped child
without a repair while its slot takes the next candidate."""

from __future__ import annotations

import json
import math
import os
import random
import re
import statistics
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from evo.config import RunConfig
from evo.engine.early import EarlyStopping
from evo.core.early_stop import (FAIL_REASON, MARGIN_SDS, MIN_GOOD, MIN_HISTORY, Completed, Threshold,
                                 gaps, loss_at, should_stop, should_stop_child, threshold)
from evo.launch.logs import Outcome
from evo.launch.runner import EvalResult, Limits, Slot, file_hash, run_evaluation
from evo.operators.tweak import TweakOperator
from evo.storage import COMPLETE, FAIL, PRUNED, Archive, derive_candidate
from tests.support.simulated import SURROGATE, SUMMARY_REST, SimulatedEvaluation, simulated_engine

PREPARE = SURROGATE / "prepare.py"
SUMMARY_BLOCK = (SURROGATE / "train.py").read_text().split('print("---")', 1)[1]


def curve(final: float, budget: float = 100.0, n: int = 50, excess: float = 1.0) -> list[tuple[int, float, float]]:
    """A learning curve ending at `final`: `excess` above it early on, decaying as (t + 0.05)^-0.5."""
    return [(j, budget * j / n, final + excess * ((j / n + 0.05) ** -0.5 - 1.05 ** -0.5)) for j in range(1, n + 1)]


def history(good_gaps: list[float], bad_gaps: list[float]) -> list[Completed]:
    return ([Completed((g, g), True) for g in good_gaps] + [Completed((g, g), False) for g in bad_gaps])


# ----- the pure rule -------------------------------------------------------------------------

def test_loss_at_interpolates_in_elapsed_and_is_none_outside_the_curve() -> None:
    points = [(1, 10.0, 4.0), (2, 20.0, 3.0), (3, 40.0, 2.0)]
    assert loss_at(points, 15.0) == pytest.approx(3.5)
    assert loss_at(points, 30.0) == pytest.approx(2.5)
    assert loss_at(points, 20.0) == 3.0
    assert loss_at(points, 5.0) is None and loss_at(points, 41.0) is None and loss_at([], 1.0) is None
    assert loss_at(list(reversed(points)), 15.0) == pytest.approx(3.5), "the order printed does not matter"


def test_loss_at_never_makes_a_non_finite_value_from_huge_numbers() -> None:
    assert loss_at([(1, 0.0, -1e308), (2, 10.0, 1e308)], 5.0) is None  # the difference overflows
    assert loss_at([(1, 0.0, 1e308), (2, 1e308, 1e308)], 5.0) == 1e308


def test_gaps_are_child_minus_parent_at_each_checkpoint() -> None:
    parent, child = curve(1.0), curve(1.3)
    assert gaps(child, parent, 100.0) == pytest.approx((0.3, 0.3))
    assert gaps(child[:30], parent, 100.0)[0] == pytest.approx(0.3)
    assert gaps(child[:30], parent[:10], 100.0) == (None, None)  # the parent's curve stops at 20 s


def test_no_threshold_before_enough_completed_children_and_good_ones() -> None:
    rng = random.Random(1)
    good = [rng.gauss(0, 0.05) for _ in range(MIN_GOOD)]
    bad = [rng.uniform(0.2, 2) for _ in range(MIN_HISTORY - MIN_GOOD)]
    assert threshold(history(good, bad[:-1])) is None, "one child short of MIN_HISTORY"
    assert threshold(history(good[:-1], bad + [1.0])) is None, "one good child short of MIN_GOOD"
    assert threshold(history(good, bad)) is not None
    assert threshold([Completed((None, None), True)] * 50) is None, "children without curves do not count"


def test_threshold_is_above_every_good_child_by_a_margin() -> None:
    good, bad = [-0.1, 0.02, 0.08, 0.05], [0.5 + 0.1 * k for k in range(20)]
    learned = threshold(history(good, bad))
    sd = statistics.stdev(good)
    assert learned.gaps == pytest.approx((0.08 + MARGIN_SDS * sd,) * 2)
    assert learned.good_max == (0.08, 0.08) and learned.children == 24
    below = threshold(history([-0.3, -0.2, -0.25], bad))
    assert below.gaps[0] == pytest.approx(MARGIN_SDS * statistics.stdev([-0.3, -0.2, -0.25])), \
        "never below the parent's loss plus the margin"


def test_no_good_child_of_the_history_would_have_been_stopped() -> None:
    rng = random.Random(7)
    for _ in range(200):
        rows = [Completed((rng.gauss(d, 0.2), rng.gauss(d, 0.1)), d < 0.1)
                for d in (rng.choice([-0.2, 0.0, 0.5, 2.0]) for _ in range(rng.randint(20, 60)))]
        learned = threshold(rows)
        if learned is None:
            continue
        for row in rows:
            if row.good:
                assert all(limit is None or gap <= limit for gap, limit in zip(row.gaps, learned.gaps))


def test_thresholds_are_learned_per_checkpoint() -> None:
    rows = [Completed((0.5, None), k % 3 == 0) for k in range(30)]
    learned = threshold(rows)
    assert learned.gaps[0] is not None and learned.gaps[1] is None


THRESHOLD = Threshold((0.2, 0.15), (0.1, 0.05), 30)


def test_should_stop_only_once_a_checkpoint_is_passed_and_far_above() -> None:
    parent, far, near = curve(1.0), curve(1.5), curve(1.1)
    assert should_stop(far[:12], parent, THRESHOLD, 100.0) is None, "not before 25 % of the budget"
    why = should_stop(far[:13], parent, THRESHOLD, 100.0)
    assert why is not None and "25%" in why and "0.5" in why and "30 completed children" in why
    assert should_stop(near, parent, THRESHOLD, 100.0) is None
    assert should_stop(far, parent[:5], THRESHOLD, 100.0) is None, "no parent loss at that time"
    assert should_stop(far, parent, Threshold((None, None), (None, None), 30), 100.0) is None


def test_hostile_parent_printing_low_losses_cannot_get_its_children_stopped() -> None:
    """A member whose log reads lower than it trains would have every child stopped, and so never
    be replaced by one: a child is stopped only when it is also far above the seed's curve."""
    seed, honest_parent, child = curve(1.0), curve(1.0), curve(1.05)
    fake_parent = [(j, t, loss - 0.5) for j, t, loss in honest_parent]
    assert should_stop(child, fake_parent, THRESHOLD, 100.0) is not None, "against the parent alone it would be"
    assert should_stop_child(child, fake_parent, seed, THRESHOLD, 100.0) is None
    far = curve(1.6)
    assert should_stop_child(far, fake_parent, seed, THRESHOLD, 100.0) == should_stop(far, fake_parent, THRESHOLD, 100.0)
    assert should_stop_child(far, seed, seed, THRESHOLD, 100.0) is not None, "the seed's own children"
    assert should_stop_child(far, honest_parent, [], THRESHOLD, 100.0) is None, "no seed curve: never stopped"


def test_should_stop_at_the_second_checkpoint() -> None:
    parent, child = curve(1.0), curve(1.18)  # below 0.2 at 25 %, above 0.15 at 45 %
    assert should_stop(child[:22], parent, THRESHOLD, 100.0) is None
    assert "45%" in should_stop(child[:23], parent, THRESHOLD, 100.0)


def test_garbage_numbers_never_raise_and_fake_low_losses_are_never_stopped() -> None:
    parent = curve(1.0)
    garbage = [(1, 1e308, 1e308), (2, 25.0, -1e308), (3, 26.0, 1e308), (4, 5e-324, 5e-324), (2**60, 30.0, 0.0),
               (5, 45.0, 1e300), (6, 44.0, -1e300), (7, 0.0, 1e308)]
    rng = random.Random(3)
    for _ in range(300):
        points = rng.sample(garbage, rng.randint(1, len(garbage)))
        why = should_stop(points, parent, THRESHOLD, 100.0)
        assert why is None or isinstance(why, str)
    huge = threshold([Completed((1e308, -1e308), True)] * 3 + [Completed((-1e308, 1e308), False)] * 20)
    assert huge.gaps[0] >= 1e308, "a good child printed huge losses: nothing is stopped at that checkpoint"
    fake = [(j, t, 0.001) for j, t, _ in curve(1.5)]
    assert should_stop(fake, parent, THRESHOLD, 100.0) is None


# ----- the candidate's state -------------------------------------------------------------------

def ev(state: str, val_bpb: float | None = None, fail_reason: str | None = None, detail: str | None = None):
    return SimpleNamespace(state=state, val_bpb=val_bpb, fail_reason=fail_reason, detail=detail)


def test_an_evaluation_stopped_early_makes_the_candidate_pruned() -> None:
    d = derive_candidate([ev(PRUNED, fail_reason=FAIL_REASON, detail="at 25% ...")])
    assert (d.state, d.fail_reason, d.fail_detail, d.n_evals, d.val_bpb) == (PRUNED, FAIL_REASON, "at 25% ...", 0, None)
    cancelled = derive_candidate([ev(PRUNED, detail="the seed failed")])
    assert cancelled.state == COMPLETE, "a cancelled replicate is not an early stop"


# ----- the runner's hook, real subprocesses ------------------------------------------------------

BUDGET = 2.0


def candidate(losses: list[str], then: str = "") -> str:
    """A train.py (no torch) printing one progress line per loss, elapsed 0.1 s apart by its own
    account and 0.05 s apart in fact (so the harness polls in between), then running `then`, then
    handing over and printing the summary as the surrogate does."""
    lines = "".join(f"print('step {j:05d} | elapsed: {0.1 * j:.1f}s | loss: {loss}', flush=True)\ntime.sleep(0.05)\n"
                    for j, loss in enumerate(losses, start=1))
    return ("import time\nfrom prepare import evaluate_bpb\nt0 = time.time()\n" + lines + then
            + "\nval_bpb = evaluate_bpb({'X1': 1.0, 'X2': 1.0, 'X3': 1.0, 'X4': 1.0}, 0.001)\nprint('---')"
            + SUMMARY_BLOCK)


def rule(parent: list[tuple[int, float, float]]):
    return lambda points: should_stop(points, parent, THRESHOLD, BUDGET)


def evaluate(tmp_path: Path, code: str, early_stop) -> EvalResult:
    return run_evaluation(code=code, workdir=tmp_path / "work", prepare_src=PREPARE, locked_hash=file_hash(PREPARE),
                          slot=Slot("cpu", {"CUDA_VISIBLE_DEVICES": ""}), seed=42,
                          limits=Limits(time_budget=BUDGET, startup_allowance=60, eval_allowance=60, kill_grace=2),
                          preset="smoke", early_stop=early_stop)


PARENT = curve(1.0, budget=BUDGET, n=20)


def test_runner_stops_a_child_far_above_its_parent_and_keeps_its_curve(tmp_path: Path) -> None:
    # Far above from the start, then it would hang: only the rule ends it before its timeout.
    losses = [f"{loss + 1.0:.6f}" for _, _, loss in PARENT[:8]]
    result = evaluate(tmp_path, candidate(losses, "time.sleep(600)"), rule(PARENT))
    o = result.outcome
    assert (o.state, o.fail_reason) == (PRUNED, FAIL_REASON), o
    assert o.detail.startswith("at 25% of the budget") and o.summary is None
    steps = [p[0] for p in result.curve]
    assert steps == list(range(1, len(steps) + 1)) and result.curve[-1][1] >= 0.25 * BUDGET, "the curve so far is kept"
    assert not (tmp_path / "work.harness" / "model.pt2").exists(), "nothing was scored"


def test_runner_without_a_rule_or_near_the_parent_completes(tmp_path: Path) -> None:
    near = [f"{loss + 0.05:.6f}" for _, _, loss in PARENT]
    asked: list[int] = []

    def counting(points):
        asked.append(len(points))
        return should_stop(points, PARENT, THRESHOLD, BUDGET)

    for name, early_stop in (("rule", counting), ("none", None)):
        result = evaluate(tmp_path / name, candidate(near), early_stop)
        assert result.outcome.state == COMPLETE, result.outcome
        assert len(result.curve) == len(PARENT)
    assert asked and asked == sorted(set(asked)), "asked only when new points arrived"


def test_hostile_candidate_printing_fake_low_losses_is_not_stopped_and_scored_by_the_harness(tmp_path: Path) -> None:
    result = evaluate(tmp_path, candidate(["0.000001"] * 20), rule(PARENT))
    assert result.outcome.state == COMPLETE, result.outcome
    assert result.outcome.summary["val_bpb"] == pytest.approx(1.0 + 0.01 * sum(
        math.log(t) ** 2 for t in (2.0, 0.5, 4.0, 1.5)), abs=0.01), "the harness's score, not the printed loss"


def test_hostile_candidate_printing_garbage_losses_does_not_crash_the_rule(tmp_path: Path) -> None:
    garbage = ["1e308", "-1e308", "nan", "inf", "-inf", "1e999", "5e-324", "-0", "1e308", "-1e308", "1.2.3", "e5",
               "99999999999999999999999", "-1e308", "1e308", "0.5", "1e308", "-1e308", "nan", "1e-300"]
    asked: list[int] = []

    def counting(points):
        asked.append(len(points))
        return should_stop(points, PARENT, THRESHOLD, BUDGET)

    result = evaluate(tmp_path, candidate(garbage), counting)
    assert asked, "the rule was asked"
    assert result.outcome.state in (COMPLETE, PRUNED), result.outcome
    assert all(math.isfinite(loss) for _, _, loss in result.curve)
    if result.outcome.state == PRUNED:
        assert result.outcome.fail_reason == FAIL_REASON and re.match(r"at \d+% of the budget", result.outcome.detail)


# ----- the engine: a stopped child is rejected, no repair, the slot goes on ----------------------------------

class Curves:
    """A simulated evaluation's measure: the surrogate's true val_bpb with seed noise, and a
    learning curve over the smoke preset's budget whose early losses follow the final value, so
    clearly worse children are far above their parent at 25 %."""

    def __init__(self) -> None:
        import importlib.util
        spec = importlib.util.spec_from_file_location("surrogate_prepare", PREPARE)
        self.prepare = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(self.prepare)
        self.budget = self.prepare.TIME_BUDGET

    @staticmethod
    def params(code: str) -> dict[str, float]:
        return {k: float(v) for k, v in re.findall(r"^(X\d) = (\S+)", code, re.MULTILINE)}

    def truth(self, code: str) -> float:
        return self.prepare.true_bpb(self.params(code))

    def __call__(self, code: str, seed: int) -> EvalResult:
        value = self.prepare._noisy(self.params(code), 0.001, str(seed))
        points = curve(value, budget=self.budget, n=20, excess=2.0 + 20 * (value - 1.0))
        return EvalResult(Outcome(COMPLETE, summary={**SUMMARY_REST, "val_bpb": value}), points, 0, self.budget, 0.0, "")


def test_engine_rejects_a_child_stopped_early_without_a_repair(tmp_path: Path) -> None:
    archive = Archive(f"sqlite:///{tmp_path}/evo.db")
    config = RunConfig(name="early", preset="smoke", population=4, temperature=0.0, replicates=1, confirm=False,
                       max_candidates=80, operator="tweak", seed=3).validate()
    measure = Curves()
    evaluate = SimulatedEvaluation(measure)
    engine = simulated_engine(archive, config, (SURROGATE / "train.py").read_text(), evaluate,
                              operator=TweakOperator())
    engine.execute()
    cands = archive.candidates(engine.run.id)
    by_id = {c.id: c for c in cands}
    stopped = [c for c in cands if c.state == PRUNED and c.fail_reason == FAIL_REASON]
    assert stopped, "some clearly worse child was stopped once the history allowed"
    assert all(measure.truth(archive.code(c.code_hash)) > measure.truth(archive.code(by_id[c.parent_id].code_hash))
               for c in stopped), "only children truly worse than their parent"
    judged = [c for c in cands[1:] if c.state != PRUNED or c.fail_reason == FAIL_REASON]
    first_stop = min(c.number for c in stopped)
    done_before = sum(1 for c in judged if c.number < first_stop and c.state == COMPLETE)
    assert done_before >= MIN_HISTORY, "no stopping before enough completed children"
    for c in stopped:
        assert c.accepted is False and not c.in_population
        (e,) = archive.evaluations(engine.run.id, c.id)
        assert (e.state, e.fail_reason) == (PRUNED, FAIL_REASON) and e.detail == c.fail_detail
        assert archive.curve(e.id), "its curve so far is kept"
        reasons = [x.message for x in archive.events(engine.run.id) if x.kind == "decide" and x.candidate_id == c.id]
        assert len(reasons) == 1 and "stopped early: at " in reasons[0]
    assert not any(c.fix for c in cands), "a stopped child gets no repair proposal"
    assert not any(c.state == FAIL for c in cands)
    assert sum(1 for c in cands[1:] if c.accepted is not None) == len(cands) - 1, "every child decided"

    # The rule is built only for a child's first evaluation, never for the seed nor with the switch off.
    early, seed = engine.early, cands[0]
    done = next(c for c in cands[1:] if c.state == COMPLETE)
    fresh = archive.add_candidate(engine.run.id, code="X1 = 3.0\n", operator="tweak", parent_id=seed.id,
                                  evaluation_seeds=[42])
    assert early.rule(fresh, is_seed=False) is not None
    assert early.rule(done, is_seed=False) is None, "a confirmation or replicate runs in full"
    assert early.rule(seed, is_seed=True) is None
    assert EarlyStopping(archive, engine.run.id, measure.budget, enabled=False).rule(fresh, is_seed=False) is None


def test_no_early_stop_switch_runs_every_child_in_full(tmp_path: Path) -> None:
    archive = Archive(f"sqlite:///{tmp_path}/evo.db")
    config = RunConfig(name="off", preset="smoke", population=4, temperature=0.0, replicates=1, confirm=False,
                       max_candidates=40, operator="tweak", seed=3, early_stop=False).validate()
    evaluate = SimulatedEvaluation(Curves())
    engine = simulated_engine(archive, config, (SURROGATE / "train.py").read_text(), evaluate,
                              operator=TweakOperator())
    engine.execute()
    cands = archive.candidates(engine.run.id)
    assert len(cands) > MIN_HISTORY + 10
    assert all(c.state == COMPLETE for c in cands if c.fail_reason != "duplicate")


# ----- the switch on the command line ----------------------------------------------------------------

def test_cli_no_early_stop_is_stored_and_a_resume_may_turn_it_back_on(tmp_path: Path) -> None:
    env = {**os.environ, "EVO_STORAGE": f"sqlite:///{tmp_path}/archive/evo.db"}
    base = [sys.executable, "-m", "evo", "run", "--name", "e", "--prepare", str(PREPARE), "--seed-train",
            str(SURROGATE / "train.py"), "--preset", "smoke", "--operator", "tweak", "--max-candidates", "1",
            "--replicates", "2"]
    first = subprocess.run(base + ["--no-early-stop"], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=300)
    assert first.returncode == 0, first.stderr
    stored = lambda: json.loads(Archive(env["EVO_STORAGE"], writer=False).find_run("e").config)["early_stop"]  # noqa: E731
    assert stored() is False
    resumed = subprocess.run(base + ["--resume", "--early-stop"], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert stored() is True
