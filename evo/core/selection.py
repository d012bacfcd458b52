"""Parent selection and replacement in a steady-state population, pure functions.

Parents are drawn by tournament: TOURNAMENT_SIZE members are sampled uniformly and the best
(lowest val_bpb) wins. Tournament selection depends only on ranks, so it behaves the same whatever
the scale of val_bpb differences, and its pressure is mild enough to keep the population diverse.

A child competes with its first parent (deterministic crowding: a child replaces the lineage it
came from, so one good family does not take over the whole population). If that parent has
already left the population, it competes with the worst member. The best candidate ever found
never leaves: when the child would push it out, the worst other member leaves instead.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

TOURNAMENT_SIZE = 2


@dataclass(frozen=True)
class Member:
    id: int
    score: float  # mean val_bpb; lower is better


def tournament(members: list[Member], rng: random.Random, k: int = TOURNAMENT_SIZE) -> Member:
    if not members:
        raise ValueError("cannot select from an empty population")
    contenders = [members[rng.randrange(len(members))] for _ in range(min(k, len(members)))]
    return min(contenders, key=lambda m: (m.score, m.id))


def select_parents(members: list[Member], n: int, rng: random.Random) -> list[Member]:
    """n parents by independent tournaments; distinct where the population allows."""
    first = tournament(members, rng)
    chosen = [first]
    while len(chosen) < n:
        others = [m for m in members if m.id not in {c.id for c in chosen}] or members
        chosen.append(tournament(others, rng))
    return chosen


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
