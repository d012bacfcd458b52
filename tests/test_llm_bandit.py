"""The model bandit on its own: no client, no server, only the rng."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from evo.core.acceptance import proposal_reward
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
    bandit = ModelBandit(["a", "b"], [0.1, 0.2], decay=1.0)
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


def test_the_reward_is_the_posterior_probability_not_the_sign():
    sigma = 0.01
    assert proposal_reward("COMPLETE", None, -0.0001, 1, 1, sigma) == pytest.approx(0.5, abs=0.01)  # noise
    assert proposal_reward("COMPLETE", None, -0.05, 1, 1, sigma) > 0.99                           # a real gain
    assert proposal_reward("COMPLETE", None, +0.05, 1, 1, sigma) < 0.01
    more = proposal_reward("COMPLETE", None, -0.01, 4, 4, sigma)
    assert more > proposal_reward("COMPLETE", None, -0.01, 1, 1, sigma)  # confirmed: more certain
    assert proposal_reward("COMPLETE", None, -0.01, 1, 1, None) == 1.0   # no σ̂ yet: the sign
    for state, reason in (("FAIL", "invalid"), ("FAIL", "crash"), ("FAIL", "timeout"), ("PRUNED", "duplicate"),
                          ("PRUNED", "early_stop")):
        assert proposal_reward(state, reason, None, 0, 1, sigma) == 0.0  # cost something, gave nothing
    assert proposal_reward("FAIL", "harness", None, 0, 1, sigma) is None  # evo's failure, not the model's
    assert proposal_reward("COMPLETE", None, None, 1, 1, sigma) is None    # not judged


def _night(seed: int, proposals: int = 300) -> float:
    """Share of proposals a cheap model gets that fails a third of the time (unusable replies)
    and is otherwise exactly as good as a dearer one whose replies always work."""
    rng = random.Random(seed)
    bandit = ModelBandit(["cheap", "steady"], [0.01, 0.05])
    sigma, got = 1.0, Counter()
    for _ in range(proposals):
        name = bandit.names[bandit.choose(rng)]
        got[name] += 1
        cost = 0.01 if name == "cheap" else 0.05
        if name == "cheap" and rng.random() < 1 / 3:
            bandit.record(name, proposal_reward("FAIL", "invalid", None, 0, 1, sigma), cost)
        else:
            delta = rng.gauss(-0.3, sigma * 2 ** 0.5)  # child minus rival, both measured once
            bandit.record(name, proposal_reward("COMPLETE", None, delta, 1, 1, sigma), cost)
    return got["cheap"] / proposals


def test_a_model_that_fails_a_third_of_the_time_loses_the_majority():
    shares = [_night(seed) for seed in range(20)]
    assert sum(shares) / len(shares) < 0.4, shares


def test_evidence_decays_so_a_model_that_got_worse_loses_its_lead():
    bandit = ModelBandit(["a", "b"], [0.0, 0.0])
    for _ in range(100):
        bandit.record("a", 0.9, 0.0)
        bandit.record("b", 0.5, 0.0)
    for _ in range(150):  # a started failing (a provider outage answered with garbage)
        bandit.record("a", 0.0, 0.0)
        bandit.record("b", 0.5, 0.0)
    rng = random.Random(5)
    assert Counter(bandit.choose(rng) for _ in range(200))[1] > 180
    assert bandit.stats()["a"]["outcomes"] < 100  # older evidence weighs less
