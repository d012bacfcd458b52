"""Parent selection and replacement in a steady-state population, pure functions.

Parents are drawn by tournament: TOURNAMENT_SIZE members are sampled uniformly and the best
(lowest val_bpb) wins. Tournament selection depends only on ranks, so it behaves the same whatever
the scale of val_bpb differences, and its pressure is mild enough to keep the population diverse.
With annealing the engine also passes `elite_share` (the best member is the first parent that
often) and `follow` (after an accepted worse step, its children come next: `follow_through`), and
sizes the population to the budget (`default_population`).

A child competes with its first parent (deterministic crowding: a child replaces the lineage it
came from, so one good family does not take over the whole population). If that parent has
already left the population, it competes with the worst member. The best candidate ever found
never leaves: when the child would push it out, the worst other member leaves instead.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from evo.core.acceptance import log_linear

TOURNAMENT_SIZE = 2
# With annealing, the elite is the first parent this often: at ~100 evaluations a binary tournament
# spreads the few children over members that rarely lead anywhere.
ELITE_SHARE = 0.5
# Children of an accepted-worse member judged before selection takes over again.
FOLLOW_TRIES = 3
# Population by evaluations per slot: few members where the budget is small (exploit), more where
# it is large (explore); log-linear between.
POPULATION_RANGE = ((100.0, 2), (400.0, 8))


@dataclass(frozen=True)
class Member:
    id: int
    score: float  # mean val_bpb; lower is better


def tournament(members: list[Member], rng: random.Random, k: int = TOURNAMENT_SIZE) -> Member:
    if not members:
        raise ValueError("cannot select from an empty population")
    contenders = [members[rng.randrange(len(members))] for _ in range(min(k, len(members)))]
    return min(contenders, key=lambda m: (m.score, m.id))


def select_parents(members: list[Member], n: int, rng: random.Random, *, elite_share: float = 0.0,
                   follow: int | None = None) -> list[Member]:
    """n parents, distinct where the population allows. The first: the member `follow` while it is
    one (the line an accepted-worse step opened), else the elite with probability `elite_share`,
    else a tournament; further ones by tournament. With elite_share 0 and no follow the draws are
    exactly those of plain tournaments, so seeded runs repeat."""
    followed = next((m for m in members if m.id == follow), None) if follow is not None else None
    if followed is not None:
        first = followed
    elif elite_share > 0 and members and rng.random() < elite_share:
        first = best(members)
    else:
        first = tournament(members, rng)
    chosen = [first]
    while len(chosen) < n:
        others = [m for m in members if m.id not in {c.id for c in chosen}] or members
        chosen.append(tournament(others, rng))
    return chosen


@dataclass(frozen=True)
class FollowThrough:
    """The line the next proposals descend from after an accepted worse step: without it the worse
    member is a dead end (a binary tournament picks the worst of 8 with probability 1/64), and
    a valley's second uphill step never happens."""
    member: int | None = None    # the accepted-worse child the next proposals descend from
    tries: int = 0               # its children judged (rejected) so far


def follow_through(state: FollowThrough, *, parent_id: int | None, child_id: int, accepted: bool,
                   worse: bool) -> FollowThrough:
    """The state after a child of `parent_id` was judged (`worse`: its Δ against its competitor > 0)."""
    if accepted and worse:
        return FollowThrough(child_id, 0)
    if state.member is None or parent_id != state.member:
        return state
    if accepted:
        return FollowThrough()  # the line improved: selection takes over
    tries = state.tries + 1
    return FollowThrough() if tries >= FOLLOW_TRIES else FollowThrough(state.member, tries)


def default_population(evaluations_per_slot: float) -> int:
    """Population size for a budget of `evaluations_per_slot`: 2 at 100 or fewer, 8 at 400 or more,
    log-linear (rounded) between."""
    return round(log_linear(evaluations_per_slot, *POPULATION_RANGE))


# The final re-measure, once the budget is spent: the REMEASURE_TOP members with the lowest means are
# measured once more each (choosing); the best of them by its mean over every evaluation is the run's
# chosen best, measured REMEASURE_REPORTING times more (reporting). Only those last evaluations,
# made after the choice, give the value reported for it: any value the choice looked at is biased
# low among the kept (the winner's curse), these are not.
REMEASURE_TOP = 3
REMEASURE_REPORTING = 3


def finalists(members: list[Member], k: int = REMEASURE_TOP) -> list[Member]:
    """The k members with the lowest means, best first."""
    return sorted(members, key=lambda m: (m.score, m.id))[:k]


def best(members: list[Member]) -> Member:
    return min(members, key=lambda m: (m.score, m.id))


def competitor(members: list[Member], parent_id: int | None) -> Member:
    """Whom a child is judged against: its parent while it lives, else the worst member."""
    for m in members:
        if m.id == parent_id:
            return m
    return max(members, key=lambda m: (m.score, -m.id))


@dataclass(frozen=True)
class Replacement:
    enters: bool          # whether an accepted child can enter at all
    leaving: list[int]    # members that leave to make room


def replacement(members: list[Member], child: Member, rival: Member, capacity: int) -> Replacement:
    """Who leaves when an accepted child enters a population of `capacity`."""
    if len(members) < capacity:
        return Replacement(True, [])
    elite = best(members)
    if rival.id != elite.id or child.score < elite.score:
        return Replacement(True, [rival.id])
    others = [m for m in members if m.id != elite.id]
    if not others:
        return Replacement(False, [])  # population 1 holding the best: only a better child enters
    worst = max(others, key=lambda m: (m.score, -m.id))
    return Replacement(True, [worst.id])
