"""The real Engine with a simulated evaluation: no subprocess, no GPU, no wait. A stand-in for
`evo.launch.runner.run_evaluation` (same keyword signature) returns what a `measure` function says
of the candidate's code, so search behaviour (selection, Metropolis, confirmation, elitism,
duplicates, failures) is the engine's own and only the measurement is simulated."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable

from evo.config import RunConfig
from evo.engine.loop import Engine
from evo.engine.seeding import SeedPlan
from evo.launch import apparatus
from evo.launch.logs import Outcome
from evo.launch.runner import EvalResult, Slot
from evo.operators import Operator
from evo.operators.tweak import TweakOperator
from evo.storage import COMPLETE, FAIL, Archive

SURROGATE = Path(__file__).resolve().parent.parent / "fixtures" / "surrogate"
# The summary keys a real run prints besides val_bpb, with neutral values.
SUMMARY_REST = {"training_seconds": 1.0, "total_seconds": 1.0, "peak_vram_mb": 0.0, "mfu_percent": 0.0,
                "total_tokens_M": 0.0, "num_steps": 1, "num_params_M": 0.0, "depth": 1}

# A measurement: a val_bpb, or a whole EvalResult (a failure, a curve, a log tail).
Measure = Callable[[str, int], "float | EvalResult"]


class SimulatedEvaluation:
    """Stands in for run_evaluation. `measure(code, evaluation_seed)` gives a val_bpb (recorded as
    a COMPLETE evaluation with neutral other metrics) or a whole EvalResult (a failure, a curve).
    With `cap`, the engine is asked to stop once that many evaluations have started: the last one
    proposes and dispatches nothing more (attach the engine with `engine=` or `.engine`)."""

    def __init__(self, measure: Measure, *, cap: int | None = None):
        self.measure, self.cap = measure, cap
        self.count = 0
        self.engine: Engine | None = None
        self._lock = threading.Lock()  # slot threads count concurrently

    def __call__(self, *, code: str, workdir: Path, prepare_src: Path, locked_hash: str, slot: Slot, seed: int,
                 limits, preset: str, stop: threading.Event) -> EvalResult:
        with self._lock:
            self.count += 1
            last = self.cap is not None and self.count >= self.cap
        if last and self.engine is not None:
            self.engine.request_stop()
        measured = self.measure(code, seed)
        if isinstance(measured, EvalResult):
            return measured
        return EvalResult(Outcome(COMPLETE, summary={"val_bpb": measured, **SUMMARY_REST}), [], 0, 0.0, 0.0, "")


def failed(reason: str, detail: str, **rest) -> EvalResult:
    """A failed evaluation, for a `measure` that makes some candidates fail."""
    return EvalResult(Outcome(FAIL, fail_reason=reason, detail=detail), rest.pop("curve", []), rest.pop("returncode", 1),
                      rest.pop("wall_seconds", 0.0), rest.pop("harness_seconds", 0.0), rest.pop("log_tail", detail))


def simulated_engine(archive: Archive, config: RunConfig, seed_code: str, evaluate: SimulatedEvaluation, *,
                     operator: Operator | None = None, slots: list[str] | None = None) -> Engine:
    """A new run named config.name in `archive`, with the real Engine over `slots` (names; one
    "cpu" slot by default) evaluating through `evaluate`; the surrogate apparatus (smoke preset)."""
    run = archive.create_run(config.name, config.to_dict())
    app = apparatus.load(SURROGATE / "prepare.py", "smoke")
    engine = Engine(archive, run, config, operator or TweakOperator(), [Slot(s) for s in slots or ["cpu"]], app,
                    SeedPlan(seed_code), evaluate=evaluate)
    evaluate.engine = engine
    return engine
