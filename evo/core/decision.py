"""The decision on a measured child, a pure function: confirm it, accept it (and who leaves the
population), or reject it.

    failed confirmation      -> Reject (a child is confirmed at most once, so a failure ends it)
    would-be new best        -> Confirm (with --confirm, while it has one evaluation)
    otherwise                -> Metropolis against its competitor at temperature T, then
                                replacement with elitism (the best never leaves)

The engine gathers the inputs from the archive, calls `decide`, and writes the result. The seed and
children whose own evaluation failed are decided by the engine without a policy (the seed enters,
a failed child is rejected).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from evo.core import acceptance, selection
from evo.core import format as fmt


@dataclass(frozen=True)
class Child:
    """A measured child: its mean val_bpb over `n_evaluations` evaluations (failed ones included)."""
    id: int
    number: int
    score: float
    parent_id: int | None
    n_evaluations: int
    failures: tuple[tuple[str | None, str | None], ...] = ()   # (fail_reason, detail) of failed evaluations


@dataclass(frozen=True)
class Confirm:
    """Measure the child once more (evaluation number `replicate`) before deciding on the mean."""
    replicate: int
    message: str


@dataclass(frozen=True)
class Accept:
    leaving: tuple[int, ...]
    reason: str
    temperature: float
    probability: float
    delta: float
    competitor_id: int


@dataclass(frozen=True)
class Reject:
    reason: str
    temperature: float | None = None
    probability: float = 0.0
    delta: float | None = None
    competitor_id: int | None = None


Decision = Confirm | Accept | Reject


def decide(child: Child, members: Sequence[selection.Member], elite: selection.Member, temperature: float,
           draw: Callable[[], float], *, confirm: bool, population: int,
           numbers: Mapping[int, int]) -> Decision:
    """Decide on `child` against the population `members` (non-empty; `elite` is its best).

    `draw` gives the uniform number u in [0, 1) of the Metropolis rule; it is called once, and
    only when the rule is applied, so the run's random stream advances exactly as before.
    `numbers` maps member ids to the candidate numbers the reason names."""
    if child.failures:  # only a confirmation gives a child a second evaluation: confirmed at most once
        reason, detail = child.failures[-1]
        return Reject(f"would-be new best ({fmt.bpb(child.score)}), but its confirmation failed ({reason}: {detail})")
    if confirm and child.n_evaluations < 2 and child.score < elite.score:
        return Confirm(child.n_evaluations, f"candidate {child.number} would be the new best "
                       f"({fmt.bpb(child.score)} < {fmt.bpb(elite.score)}): confirming with another evaluation")
    me = selection.Member(child.id, child.score)
    rival = selection.competitor(list(members), child.parent_id)
    delta = me.score - rival.score
    ok, p = acceptance.accept(delta, temperature, draw())
    leaving: list[int] = []
    reason = f"Δ {fmt.delta(delta)} vs candidate {numbers[rival.id]}, T {fmt.bpb(temperature)}, p {p:.3f}"
    if ok:
        rep = selection.replacement(list(members), me, rival, population)
        if rep.enters:
            leaving = rep.leaving
        else:
            ok, reason = False, reason + "; the population's only member is the best, which never leaves"
    if ok and me.score < elite.score:
        reason += "; new best"
    if ok:
        return Accept(tuple(leaving), reason, temperature, p, delta, rival.id)
    return Reject(reason, temperature, p, delta, rival.id)
