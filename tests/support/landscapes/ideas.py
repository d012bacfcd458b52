"""An idea pool: a model of what an LLM proposes for train.py, for the search benchmark.

A candidate is the set of ideas applied to the seed (`IDEAS = (3, 17, 42)` in its code). Of the
N_IDEAS ideas, about half are harmful, a third neutral and a fifth helpful with a heavy tail (most
helpful ideas are worth under 1σ, a few several σ). Effects add, except that helpful ideas show
diminishing returns (together they give at most GAIN_CAP σ: the tenth good idea adds less than
the first), a few sign-epistatic PAIRS hurt alone (+1σ each) and help together (−2σ net), and a
few ideas crash the training whatever else the code holds.

The simulated operator is informed and remembers: it proposes helpful ideas more often than
harmful ones (WEIGHTS: an LLM knows which changes usually help, not whether this one will), never
proposes again an idea whose child was rejected, completes a half-done pair when it sees one
(PAIR_HINT), sometimes reverts an idea (REMOVE_SHARE), and with two parents merges them as the
union of their ideas (MERGE_SHARE).
"""

from __future__ import annotations

import itertools
import math
import random
import re
from functools import lru_cache
from hashlib import sha256

SIGMA = 0.001
BASE = 1.0
N_IDEAS = 600
KINDS = (("harmful", 0.5), ("neutral", 0.3), ("helpful", 0.2))
WEIGHTS = {"harmful": 0.8, "neutral": 1.0, "helpful": 1.6}
GAIN_CAP = 12.0       # σ: what all helpful ideas together can give at most
PAIRS = 8
PAIR_ALONE, PAIR_TOGETHER = 1.0, -2.0    # σ: each half alone, the pair's net effect
CRASH_SHARE = 0.08
MERGE_SHARE = 0.2
REMOVE_SHARE = 0.15
PAIR_HINT = 0.3
FRESH_TRIES = 100

_LIST = re.compile(r"^IDEAS = \(([\d, ]*)\)$", re.M)


def make_code(ideas: frozenset[int]) -> str:
    listed = ", ".join(str(i) for i in sorted(ideas))
    return f'"""Idea-pool train.py: the ideas below are applied to the seed."""\n\nIDEAS = ({listed}{"," if len(ideas) == 1 else ""})\n'


@lru_cache(maxsize=200_000)
def ideas_of(code: str) -> frozenset[int]:
    m = _LIST.search(code)
    if m is None:
        raise ValueError("not an idea-pool train.py (no IDEAS line)")
    return frozenset(int(x) for x in m.group(1).replace(",", " ").split())


class IdeaPool:
    name = "ideas"
    n_parents = 2

    def __init__(self, bench_seed: int, sigma: float = SIGMA):
        self.bench_seed, self.sigma = bench_seed, sigma
        rng = random.Random(f"ideas:{bench_seed}")
        self.kind: list[str] = []
        self.effect: list[float] = []
        for _ in range(N_IDEAS):
            u, kind = rng.random(), KINDS[-1][0]
            for name, share in KINDS:
                if u < share:
                    kind = name
                    break
                u -= share
            self.kind.append(kind)
            self.effect.append(math.exp(rng.gauss(math.log(1.5), 0.8)) if kind == "harmful" else
                               rng.gauss(0.0, 0.15) if kind == "neutral" else -math.exp(rng.gauss(math.log(0.8), 0.9)))
        self.crashes = frozenset(i for i in range(N_IDEAS) if rng.random() < CRASH_SHARE)
        halves = rng.sample([i for i in range(N_IDEAS) if self.kind[i] != "helpful" and i not in self.crashes], 2 * PAIRS)
        self.pairs = [(halves[2 * k], halves[2 * k + 1]) for k in range(PAIRS)]
        for i in halves:
            self.effect[i] = PAIR_ALONE
        self.partner = {a: b for a, b in self.pairs} | {b: a for a, b in self.pairs}
        self.cumulative = list(itertools.accumulate(WEIGHTS[k] for k in self.kind))
        self.rejected: set[int] = set()
        self.remember = True   # off: the operator forgets (as the real Engine's stand-in operator does)

    # ----- the landscape ------------------------------------------------------------------------

    def value(self, ideas: frozenset[int]) -> float:
        """F in σ units (the seed, no idea, is 0)."""
        linear = sum(self.effect[i] for i in ideas if self.kind[i] != "helpful")
        gain = -sum(self.effect[i] for i in ideas if self.kind[i] == "helpful")
        together = sum(PAIR_TOGETHER - 2 * PAIR_ALONE for a, b in self.pairs if a in ideas and b in ideas)
        return linear - GAIN_CAP * (1.0 - math.exp(-gain / GAIN_CAP)) + together

    def seed_code(self) -> str:
        return make_code(frozenset())

    def true(self, code: str) -> float:
        return BASE + self.sigma * self.value(ideas_of(code))

    def measure(self, code: str, eval_seed: int) -> float | None:
        if ideas_of(code) & self.crashes:
            return None
        rng = random.Random(f"{self.bench_seed}:{eval_seed}:{sha256(code.encode()).hexdigest()}")
        return self.true(code) + self.sigma * rng.gauss(0.0, 1.0)

    def crossed(self, code: str) -> bool | None:
        return None

    # ----- the operator -------------------------------------------------------------------------

    def propose(self, parents: list[str], rng: random.Random) -> str:
        first = ideas_of(parents[0])
        if len(parents) > 1 and rng.random() < MERGE_SHARE:
            union = first | ideas_of(parents[1])
            if union != first:
                return make_code(union)
        if first and rng.random() < REMOVE_SHARE:
            return make_code(first - {rng.choice(sorted(first))})
        halves = [self.partner[i] for i in sorted(first) if i in self.partner and self.partner[i] not in first]
        if halves and rng.random() < PAIR_HINT:
            return make_code(first | {rng.choice(halves)})
        for _ in range(FRESH_TRIES):  # rejection sampling: most ideas are neither applied nor rejected
            idea = rng.choices(range(N_IDEAS), cum_weights=self.cumulative)[0]
            if idea not in first and idea not in self.rejected:
                return make_code(first | {idea})
        return make_code(first - {rng.choice(sorted(first))}) if first else parents[0]  # it ran out of ideas

    def feedback(self, code: str, parent: str, accepted: bool) -> None:
        """A rejected child's new ideas are not proposed again."""
        if self.remember and not accepted:
            self.rejected |= ideas_of(code) - ideas_of(parent)
