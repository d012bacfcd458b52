"""evo.core.decision.decide: the policy on a measured child, without an archive."""

from __future__ import annotations

import math

import pytest

from evo.core.decision import Accept, Child, Confirm, Reject, decide
from evo.core.selection import Member


def members(*scores: float) -> list[Member]:
    return [Member(i + 1, s) for i, s in enumerate(scores)]


NUMBERS = {i: i * 10 for i in range(1, 20)}  # candidate numbers the reasons name


def run(child: Child, pop: list[Member], *, temperature: float = 0.0, u: float = 0.5, confirm: bool = True,
        population: int = 4):
    draws: list[float] = []

    def draw() -> float:
        draws.append(u)
        return u

    elite = min(pop, key=lambda m: (m.score, m.id))
    verdict = decide(child, pop, elite, temperature, draw, confirm=confirm, population=population, numbers=NUMBERS)
    return verdict, len(draws)


def test_a_would_be_best_is_confirmed_once_without_a_draw():
    pop = members(1.00, 1.10)
    verdict, draws = run(Child(9, 90, 0.95, parent_id=1, n_evaluations=1), pop)
    assert isinstance(verdict, Confirm) and verdict.replicate == 1 and draws == 0
    assert "candidate 90 would be the new best (0.950000 < 1.000000)" in verdict.message
    # after the confirmation the mean decides: no second confirmation
    verdict, draws = run(Child(9, 90, 0.96, parent_id=1, n_evaluations=2), pop)
    assert isinstance(verdict, Accept) and draws == 1 and "new best" in verdict.reason
    # without --confirm a would-be best is judged at once
    verdict, _ = run(Child(9, 90, 0.95, parent_id=1, n_evaluations=1), pop, confirm=False)
    assert isinstance(verdict, Accept)


def test_a_failed_confirmation_rejects_without_a_draw():
    verdict, draws = run(Child(9, 90, 0.95, parent_id=1, n_evaluations=2, failures=(("timeout", "too slow"),)),
                         members(1.00, 1.10))
    assert isinstance(verdict, Reject) and draws == 0
    assert verdict.competitor_id is None and verdict.temperature is None and verdict.delta is None
    assert verdict.reason == "would-be new best (0.950000), but its confirmation failed (timeout: too slow)"


def test_downhill_is_accepted_even_at_zero_temperature():
    pop = members(1.00, 1.10, 1.20)
    verdict, draws = run(Child(9, 90, 1.05, parent_id=2, n_evaluations=1), pop, u=0.999)
    assert isinstance(verdict, Accept) and draws == 1
    assert verdict.competitor_id == 2 and verdict.delta == pytest.approx(-0.05) and verdict.probability == 1.0
    assert verdict.leaving == ()  # room left in a population of 4
    assert verdict.reason.startswith("Δ -0.050000 vs candidate 20, T 0.000000, p 1.000")
    assert "new best" not in verdict.reason


@pytest.mark.parametrize("u, accepted", [(0.10, True), (0.90, False)])
def test_uphill_is_metropolis(u, accepted):
    pop = members(1.00, 1.10)
    t = 0.01
    verdict, draws = run(Child(9, 90, 1.11, parent_id=2, n_evaluations=1), pop, temperature=t, u=u)
    p = math.exp(-0.01 / t)
    assert draws == 1 and verdict.probability == pytest.approx(p)
    assert isinstance(verdict, Accept if accepted else Reject)
    assert verdict.delta == pytest.approx(0.01) and verdict.temperature == t and verdict.competitor_id == 2


def test_the_competitor_is_the_parent_else_the_worst_member():
    pop = members(1.00, 1.10, 1.20)
    verdict, _ = run(Child(9, 90, 1.15, parent_id=7, n_evaluations=1), pop)  # parent left the population
    assert verdict.competitor_id == 3 and isinstance(verdict, Accept)


def test_a_full_population_loses_the_competitor():
    pop = members(1.00, 1.10, 1.20)
    verdict, _ = run(Child(9, 90, 1.05, parent_id=2, n_evaluations=1), pop, population=3)
    assert isinstance(verdict, Accept) and verdict.leaving == (2,)


def test_the_best_never_leaves_the_worst_other_member_does():
    pop = members(1.00, 1.10, 1.20)
    # child of the elite, accepted uphill: the elite stays, the worst other member leaves
    verdict, _ = run(Child(9, 90, 1.02, parent_id=1, n_evaluations=1), pop, temperature=1.0, u=0.0, population=3)
    assert isinstance(verdict, Accept) and verdict.leaving == (3,)
    assert "new best" not in verdict.reason


def test_the_populations_only_member_is_the_best_and_stays():
    pop = members(1.00)
    verdict, _ = run(Child(9, 90, 1.02, parent_id=1, n_evaluations=1), pop, temperature=1.0, u=0.0, population=1)
    assert isinstance(verdict, Reject) and verdict.competitor_id == 1
    assert verdict.reason.endswith("; the population's only member is the best, which never leaves")
    # a better child replaces it (after its confirmation)
    verdict, _ = run(Child(9, 90, 0.98, parent_id=1, n_evaluations=2), pop, population=1)
    assert isinstance(verdict, Accept) and verdict.leaving == (1,) and verdict.reason.endswith("; new best")
