"""Which model proposes next: fixed `weights` when given; otherwise a Thompson-sampling bandit on
improvement per dollar.

Each model has a Beta(1 + improved, 1 + not improved) posterior of the chance that its proposal
improves (fed by `record`); a draw from it is divided by the expected dollars per proposal: the
model's mean LLM spend per proposal (starting from its list price for a typical 15k-in / 2k-out
call, `prior_cost`) plus `slot_cost_usd`, the GPU time an evaluation costs (default $0.25: five
minutes of a rented H100), so a free local model is not infinitely cheap. The highest score
proposes. Unproven models keep being tried because their posterior is wide.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass
from typing import Sequence

DEFAULT_SLOT_COST_USD = 0.25
TYPICAL_CALL_TOKENS = (15_000, 2_000)


@dataclass
class Arm:
    """What the bandit knows about one model."""
    improved: int = 0
    outcomes: int = 0
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
                 slot_cost_usd: float = DEFAULT_SLOT_COST_USD):
        """names: the models in order (a model named twice shares one arm); prior_costs: each one's
        list price for a typical call; weights: fixed odds per model instead of the bandit."""
        self.names = list(names)
        self.weights = list(weights) if weights is not None else None
        self.slot_cost_usd = slot_cost_usd
        self._arms = {name: Arm(prior_cost=cost) for name, cost in zip(self.names, prior_costs)}
        self._lock = threading.Lock()

    def record(self, model: str, improved: bool, cost: float) -> None:
        """A proposal by `model` was judged; `cost` is what its LLM calls cost in USD. Unknown models
        (merges have none) are ignored."""
        with self._lock:
            arm = self._arms.get(model)
            if arm is not None:
                arm.outcomes += 1
                arm.improved += bool(improved)
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
            return {name: {"improved": a.improved, "outcomes": a.outcomes, "spent_usd": a.spent}
                    for name, a in self._arms.items()}
