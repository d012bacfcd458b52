"""The real Engine with a simulated evaluation: no subprocess, no GPU, no wait. A stand-in for
`evo.launch.runner.run_evaluation` (same keyword signature) returns what a `measure` function says
of the candidate's code, so search behaviour (selection, Metropolis, confirmation, elitism,
duplicates, failures) is the engine's own and only the measurement is simulated.

With a `Night`, time is simulated too: each evaluation occupies its slot for the wall seconds it
reports, slots run in parallel, and the archive and the engine read the night's clock, so a run of
hundreds of candidates spans hours of timestamps yet takes seconds to write."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Callable, Iterator

from evo.config import RunConfig
from evo.core.early_stop import FAIL_REASON as EARLY_STOP
from evo.engine.loop import Engine
from evo.engine.seeding import SeedPlan
from evo.launch import apparatus
from evo.launch.logs import Outcome
from evo.launch.runner import EarlyStop, EvalResult, Slot
from evo.operators import Operator
from evo.operators.tweak import TweakOperator
from evo.storage import COMPLETE, FAIL, PRUNED, Archive, Evaluation

SURROGATE = Path(__file__).resolve().parent.parent / "fixtures" / "surrogate"
# The summary keys a real run prints besides val_bpb, with neutral values.
SUMMARY_REST = {"training_seconds": 1.0, "total_seconds": 1.0, "peak_vram_mb": 0.0, "mfu_percent": 0.0,
                "total_tokens_M": 0.0, "num_steps": 1, "num_params_M": 0.0, "depth": 1}

# A measurement: a val_bpb, or a whole EvalResult (a failure, a curve, a log tail).
Measure = Callable[[str, int], "float | EvalResult"]
# Real seconds without a new evaluation in a slot after which the night moves on to the next
# evaluation's end although some slot is free: the engine has nothing (yet) to put there.
QUIET = 0.3


class Night:
    """A discrete-event clock. Simulated time moves only when an evaluation ends: a slot thread
    that has measured its evaluation (`occupy`) waits until its end is the earliest of those running
    and either every slot is busy or nothing new started for QUIET real seconds; the night then
    stands at that end. So the engine sees evaluations end in the order of their simulated ends,
    an evaluation starts when the night stands where the engine dispatched it, and it ends exactly
    its wall seconds later (`NightArchive` stamps both), whatever the threads' timing.

    `live_from`: once a candidate numbered from there starts, the night is `live`: it follows real
    time (a live run's heartbeat is then fresh when a report reads it), and an evaluation started
    from then on must not occupy a slot on the night, which would run ahead of real time."""

    def __init__(self, start: datetime, slots: int, live_from: int | None = None):
        self.start, self.slots, self.live_from = start, slots, live_from
        self.now = 0.0                               # simulated seconds since `start`
        self.live = False                            # following real time (see live_from)
        self._cond = threading.Condition()
        self._changed = time.monotonic()             # (real) when an evaluation last began or ended
        self._started: dict[str, float] = {}         # workdir -> when the archive recorded its start
        self._ends: dict[str, float] = {}            # workdir -> its simulated end, once measured
        self._running: dict[str, float] = {}         # workdir -> end, of those waiting for the night
        self._stamp = threading.local()              # the time of the write in progress, when not `now`

    def seconds(self) -> float:
        """The engine's clock."""
        if self.live:
            return max(self.now, (datetime.now(self.start.tzinfo) - self.start).total_seconds())
        return self.now

    def clock(self) -> datetime:
        """The archive's clock: the night's time, or the end of the evaluation being recorded."""
        at = getattr(self._stamp, "seconds", None)
        return self.start + timedelta(seconds=self.seconds() if at is None else at)

    def start_of(self, workdir: str, number: int) -> float:
        """The engine starts candidate `number`'s evaluation in `workdir` now: when that is."""
        with self._cond:
            if self.live_from is not None and number >= self.live_from:
                self.live = True
            self._started[workdir] = self.seconds()
            return self._started[workdir]

    def occupy(self, workdir: str, seconds: float) -> None:
        """Hold the calling slot thread until the night reaches the end of its evaluation."""
        with self._cond:
            end = self._started[workdir] + seconds
            self._ends[workdir] = self._running[workdir] = end
            self._changed = time.monotonic()
            self._cond.notify_all()
            while True:
                first = min(self._running, key=lambda w: (self._running[w], w))
                quiet = time.monotonic() - self._changed
                if first == workdir and (len(self._running) >= self.slots or quiet >= QUIET):
                    break
                self._cond.wait(max(QUIET - quiet, 0.005) if first == workdir else None)
            del self._running[workdir]
            self.now = max(self.now, end)
            self._changed = time.monotonic()
            self._cond.notify_all()

    def end_of(self, workdir: str) -> float | None:
        """The simulated end of the evaluation in `workdir` (None when it was never measured)."""
        with self._cond:
            return self._ends.pop(workdir, None)

    @contextmanager
    def at(self, seconds: float | None) -> Iterator[None]:
        """The archive's clock reads `seconds` in this thread meanwhile (None: the night's time)."""
        self._stamp.seconds = seconds
        try:
            yield
        finally:
            self._stamp.seconds = None


class NightArchive(Archive):
    """An archive on the night's clock that tells the night when the engine starts an evaluation
    and stamps its end with the simulated one. Writes nothing an Archive would not."""

    def __init__(self, url: str, night: Night):
        super().__init__(url, clock=night.clock)
        self.night = night
        self._workdirs: dict[int, str] = {}

    def start_evaluation(self, evaluation_id: int, slot: str, workdir: str, load_avg: float | None = None,
                         cores: int | None = None) -> None:
        with self.read() as s:
            number = self.candidate_by_id(s.get(Evaluation, evaluation_id).candidate_id).number
        self._workdirs[evaluation_id] = workdir
        with self.night.at(self.night.start_of(workdir, number)):
            super().start_evaluation(evaluation_id, slot, workdir)  # the simulated night's load is not this machine's

    def finish_evaluation(self, evaluation_id: int, **fields) -> Evaluation:
        with self.night.at(self.night.end_of(self._workdirs.pop(evaluation_id, ""))):
            return super().finish_evaluation(evaluation_id, **fields)


class SimulatedEvaluation:
    """Stands in for run_evaluation. `measure(code, evaluation_seed)` gives a val_bpb (recorded as
    a COMPLETE evaluation with neutral other metrics) or a whole EvalResult (a failure, a curve).
    With `cap`, the engine is asked to stop once that many evaluations have started: the last one
    proposes and dispatches nothing more (attach the engine with `engine=` or `.engine`). With a
    `night`, each evaluation occupies its slot for the wall seconds it reports."""

    def __init__(self, measure: Measure, *, cap: int | None = None, night: Night | None = None):
        self.measure, self.cap, self.night = measure, cap, night
        self.count = 0
        self.engine: Engine | None = None
        self._lock = threading.Lock()  # slot threads count concurrently

    def __call__(self, *, code: str, workdir: Path, prepare_src: Path, locked_hash: str, slot: Slot, seed: int,
                 limits, preset: str, stop: threading.Event, early_stop: EarlyStop | None = None) -> EvalResult:
        with self._lock:
            self.count += 1
            last = self.cap is not None and self.count >= self.cap
        if last and self.engine is not None:
            self.engine.request_stop()
        measured = self.measure(code, seed)
        if not isinstance(measured, EvalResult):
            measured = EvalResult(Outcome(COMPLETE, summary={"val_bpb": measured, **SUMMARY_REST}), [], 0, 0.0, 0.0, "")
        if early_stop is not None:
            measured = stopped_early(measured, early_stop, limits.time_budget)
        if self.night is not None:
            self.night.occupy(str(workdir), measured.wall_seconds)
        return measured


def stopped_early(result: EvalResult, early_stop: EarlyStop, time_budget: float) -> EvalResult:
    """What the runner makes of `result` under the rule: asked as each point of the curve arrives;
    once it gives a sentence, PRUNED(early_stop) with the curve so far and the share of the wall
    seconds that its last point's elapsed is of the budget."""
    for n in range(1, len(result.curve) + 1):
        why = early_stop(result.curve[:n])
        if why:
            share = min(1.0, result.curve[n - 1][1] / time_budget)
            return EvalResult(Outcome(PRUNED, EARLY_STOP, why), result.curve[:n], None, share * result.wall_seconds,
                              0.0, why)
    return result


def failed(reason: str, detail: str, **rest) -> EvalResult:
    """A failed evaluation, for a `measure` that makes some candidates fail."""
    return EvalResult(Outcome(FAIL, fail_reason=reason, detail=detail), rest.pop("curve", []), rest.pop("returncode", 1),
                      rest.pop("wall_seconds", 0.0), rest.pop("harness_seconds", 0.0), rest.pop("log_tail", detail))


def simulated_engine(archive: Archive, config: RunConfig, seed_code: str, evaluate: SimulatedEvaluation, *,
                     operator: Operator | None = None, slots: list[str] | None = None,
                     plan: SeedPlan | None = None) -> Engine:
    """A new run named config.name in `archive`, with the real Engine over `slots` (names; one
    "cpu" slot by default) evaluating through `evaluate`, on the clock of `evaluate`'s night if it
    has one; the surrogate apparatus (smoke preset). `plan`: where the run starts (default: a seed of
    `seed_code` without history)."""
    run = archive.create_run(config.name, config.to_dict())
    app = apparatus.load(SURROGATE / "prepare.py", "smoke")
    engine = Engine(archive, run, config, operator or TweakOperator(), [Slot(s) for s in slots or ["cpu"]], app,
                    plan or SeedPlan(seed_code), evaluate=evaluate,
                    clock=evaluate.night.seconds if evaluate.night is not None else time.monotonic)
    evaluate.engine = engine
    return engine
