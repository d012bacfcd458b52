"""The model bandit as the real Engine feeds it (issue 13): every judged child by the posterior
probability that it beat its rival, unusable replies and duplicates as losses with their cost,
and a resumed run's bandit told everything the archive already holds."""

from __future__ import annotations

import random
import zlib
from pathlib import Path

from evo.config import RunConfig
from evo.engine.loop import Engine
from evo.engine.seeding import SeedPlan
from evo.launch import apparatus
from evo.launch.runner import Slot
from evo.operators import OperatorError, Parent, Proposal
from evo.operators.tweak import TweakOperator
from evo.storage import FAIL, Archive
from tests.support.simulated import SURROGATE, SimulatedEvaluation, simulated_engine

CALL_COST = {"a": 0.01, "b": 0.03}


class TwoModels(TweakOperator):
    """The tweak operator, as if two LLMs made its children: model b's reply is unusable a third
    of the time. It keeps what the engine tells it."""

    def __init__(self):
        self.told: list[tuple[str, float, float]] = []

    def propose(self, parents: list[Parent], rng: random.Random) -> Proposal:
        model = rng.choice("ab")
        call = dict(model=model, purpose="mutate", tokens_in=1000, tokens_out=100, latency_s=0.1,
                    cost_usd=CALL_COST[model], error=None, prompt="p", response="r")
        if model == "b" and rng.random() < 1 / 3:
            error = OperatorError("mutate by b gave no usable edit after a repair round: no edit")
            error.llm_calls, error.model = [call], model
            raise error
        proposal = super().propose(parents, rng)
        proposal.model = model
        proposal.extra = {"llm_calls": [call]}
        return proposal

    def record_outcome(self, model, won, cost) -> None:
        self.told.append((model, round(won, 9), round(cost, 9)))


def test_the_bandit_hears_every_outcome_live_and_again_on_resume(tmp_path: Path) -> None:
    archive = Archive(f"sqlite:///{tmp_path}/evo.db")
    config = RunConfig(name="models", preset="smoke", population=3, replicates=2, max_candidates=24,
                       operator="tweak", seed=11).validate()
    seed_code = (SURROGATE / "train.py").read_text()
    evaluate = SimulatedEvaluation(lambda code, seed: apparatus_value(code, seed))
    live = TwoModels()
    engine = simulated_engine(archive, config, seed_code, evaluate, operator=live)
    engine.execute()
    cands = archive.candidates(engine.run.id)
    invalid = [c for c in cands if c.state == FAIL and c.fail_reason == "invalid"]
    assert invalid and all(c.model == "b" for c in invalid), "a failed proposal is archived with its model"
    told = sorted(live.told)
    assert ("b", 0.0, CALL_COST["b"]) in told, "an unusable reply is a loss at its cost"
    judged = [c for c in cands if c.model and c.competitor_id is not None]
    assert len(told) >= len(judged) + len(invalid) - 1  # the last proposals may still be in flight at the end
    assert any(0.0 < won < 1.0 for _, won, _ in told), "a judged child earns a probability, not a sign"

    resumed = TwoModels()
    run = archive.run_by_id(engine.run.id)
    again = Engine(archive, run, config, resumed, [Slot("cpu")], apparatus.load(SURROGATE / "prepare.py", "smoke"),
                   SeedPlan(seed_code), evaluate=SimulatedEvaluation(lambda code, seed: apparatus_value(code, seed)))
    again.execute()  # the budget is spent: it recovers, tells the bandit, and finishes
    # the same outcomes, each judged again on the run's σ̂ as it stands now (close to the live one)
    assert [(m, c) for m, _, c in sorted(resumed.told)] == [(m, c) for m, _, c in told]
    replayed = sorted(resumed.told, key=lambda t: (t[0], t[2], t[1]))
    original = sorted(told, key=lambda t: (t[0], t[2], t[1]))
    assert all(abs(x[1] - y[1]) < 0.25 for x, y in zip(replayed, original))


def apparatus_value(code: str, seed: int) -> float:
    """The surrogate's noisy val_bpb of `code` (a deterministic function of code and seed)."""
    rng = random.Random(f"{code}|{seed}")
    return 1.0 + (zlib.crc32(code.encode()) % 1000) * 1e-5 + rng.gauss(0.0, 0.001)
