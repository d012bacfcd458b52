"""The model bandit on its own: no client, no server, only the rng."""

from __future__ import annotations

import random
from collections import Counter

from evo.operators.llm.bandit import Arm, ModelBandit, thompson_pick


def test_thompson_prefers_the_model_that_improves_per_dollar():
    rng = random.Random(0)
    arms = [Arm(improved=0, outcomes=30), Arm(improved=25, outcomes=30)]
    picks = Counter(thompson_pick(arms, rng, slot_cost_usd=0.25) for _ in range(200))
    assert picks[1] > 190


def test_thompson_weighs_the_price_of_a_proposal():
    # same record, but the second model costs $20 a proposal against a $0.25 slot: the cheap one wins
    rng = random.Random(1)
    arms = [Arm(improved=10, outcomes=20), Arm(improved=10, outcomes=20, spent=400.0)]
    picks = Counter(thompson_pick(arms, rng, slot_cost_usd=0.25) for _ in range(200))
    assert picks[0] > 190
    # a free local model is not infinitely cheap: the slot cost keeps a better paid model ahead
    arms = [Arm(improved=2, outcomes=20), Arm(improved=15, outcomes=20, spent=2.0)]
    picks = Counter(thompson_pick(arms, random.Random(2), slot_cost_usd=0.25) for _ in range(200))
    assert picks[1] > 150


def test_unproven_models_keep_being_tried():
    rng = random.Random(3)
    arms = [Arm(improved=3, outcomes=10), Arm()]
    picks = Counter(thompson_pick(arms, rng, slot_cost_usd=0.25) for _ in range(400))
    assert picks[1] > 20 and picks[0] > 20


def test_record_feeds_the_arm_and_ignores_unknown_models():
    bandit = ModelBandit(["a", "b"], [0.1, 0.2])
    bandit.record("a", True, 0.5)
    bandit.record("a", False, -3.0)      # a negative cost never lowers the spend
    bandit.record(None, True, 1.0)       # a merge: no model
    bandit.record("c", True, 1.0)
    assert bandit.stats() == {"a": {"improved": 1, "outcomes": 2, "spent_usd": 0.5},
                              "b": {"improved": 0, "outcomes": 0, "spent_usd": 0.0}}


def test_choose_follows_the_evidence_and_fixed_weights():
    bandit = ModelBandit(["a", "b"], [0.0, 0.0])
    for _ in range(20):
        bandit.record("a", False, 0.0)
        bandit.record("b", True, 0.0)
    rng = random.Random(4)
    assert Counter(bandit.choose(rng) for _ in range(100))[1] > 95
    weighted = ModelBandit(["a", "b"], [0.0, 0.0], weights=[0, 1])
    bandit.record("a", True, 0.0)
    assert {weighted.choose(rng) for _ in range(50)} == {1}
    assert ModelBandit(["only"], [5.0]).choose(rng) == 0


def test_same_seed_same_choices():
    def picks(seed: int) -> list[int]:
        bandit = ModelBandit(["a", "b", "c"], [0.05, 0.2, 0.0])
        bandit.record("b", True, 0.3)
        rng = random.Random(seed)
        return [bandit.choose(rng) for _ in range(30)]
    assert picks(7) == picks(7)
    assert len(set(picks(7))) > 1
