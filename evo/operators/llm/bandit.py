"""Which model proposes next: fixed `weights` when given; otherwise a Thompson-sampling bandit on
improvement per dollar.

Each model has a Beta(1 + wins, 1 + losses) posterior of the chance that its proposal improves,
fed by `record` with a reward in [0, 1]: for a judged child, the posterior probability that it
beats its rival (`evo.core.acceptance.proposal_reward`), not the sign of Δ, which pure noise gets right half the time; for a
proposal that cost something and gave nothing (an unusable reply, a duplicate, a crash, a timeout,
a child stopped early), 0. Evidence decays by `DECAY` per outcome recorded, so a model that got
worse (or a provider that started failing) loses its lead. A draw from the posterior is divided
by the expected dollars per proposal: the model's mean LLM spend per proposal (starting from its
list price for a typical 15k-in / 2k-out call, `prior_cost`) plus `slot_cost_usd`, the GPU time an
evaluation costs (default $0.25: five minutes of a rented H100), so a free local model is not
infinitely cheap. The highest score proposes. Unproven models keep being tried because their
posterior is wide. The engine replays a resumed run's outcomes from the archive, so the bandit
goes on where it stopped.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass
from typing import Sequence

DEFAULT_SLOT_COST_USD = 0.25
TYPICAL_CALL_TOKENS = (15_000, 2_000)
DECAY = 0.99                 # evidence kept per outcome recorded (a memory of about 100 outcomes)


@dataclass
class Arm:
    """What the bandit knows about one model (wins and outcomes decay, so they are fractional)."""
    improved: float = 0.0
    outcomes: float = 0.0
    spent: float = 0.0
    prior_cost: float = 0.0


def thompson_pick(arms: Sequence[Arm], rng: random.Random, slot_cost_usd: float) -> int:
    """The index of the arm with the highest sampled improvement per expected dollar (one Beta draw
    per arm, in order, so a seeded rng picks reproducibly)."""
    scores = []
    for arm in arms:
        p = rng.betavariate(1 + arm.improved, 1 + arm.outcomes - arm.improved)
        per_proposal = (arm.spent + arm.prior_cost) / (arm.outcomes + 1)
        scores.append(p / (per_proposal + slot_cost_usd + 1e-9))
    return max(range(len(scores)), key=scores.__getitem__)


class ModelBandit:
    """The model choice of one operator; safe to share between proposal threads."""

    def __init__(self, names: Sequence[str], prior_costs: Sequence[float], *, weights: Sequence[float] | None = None,
                 slot_cost_usd: float = DEFAULT_SLOT_COST_USD, decay: float = DECAY):
        """names: the models in order (a model named twice shares one arm); prior_costs: each one's
        list price for a typical call; weights: fixed odds per model instead of the bandit."""
        self.names = list(names)
        self.weights = list(weights) if weights is not None else None
        self.slot_cost_usd, self.decay = slot_cost_usd, decay
        self._arms = {name: Arm(prior_cost=cost) for name, cost in zip(self.names, prior_costs)}
        self._lock = threading.Lock()

    def record(self, model: str | None, won: float, cost: float) -> None:
        """A proposal by `model` earned `won` (in [0, 1], see `acceptance.proposal_reward`) and its LLM calls cost `cost`
        USD. Every arm's evidence decays first. Unknown models (merges have none) are ignored."""
        with self._lock:
            arm = self._arms.get(model) if model else None
            if arm is None:
                return
            for other in self._arms.values():
                other.improved *= self.decay
                other.outcomes *= self.decay
                other.spent *= self.decay
            arm.outcomes += 1
            arm.improved += min(1.0, max(0.0, float(won)))
            arm.spent += max(0.0, float(cost))

    def choose(self, rng: random.Random) -> int:
        """The index (in the models' order) of the model to ask next."""
        if len(self.names) == 1:
            return 0
        if self.weights is not None:
            return rng.choices(range(len(self.names)), weights=self.weights)[0]
        with self._lock:
            return thompson_pick([self._arms[name] for name in self.names], rng, self.slot_cost_usd)

    def stats(self) -> dict[str, dict]:
        """The bandit's state per model, for status views."""
        with self._lock:
            return {name: {"improved": round(a.improved, 3), "outcomes": round(a.outcomes, 3),
                           "spent_usd": round(a.spent, 6)} for name, a in self._arms.items()}
