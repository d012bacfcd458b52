"""Synthetic runs for tests and benchmarks of the report: `synthesize(archive, n)` drives the real
Engine (tweak operator, population, Metropolis acceptance on a cooling schedule, confirmations of
would-be bests, elitism, duplicates pruned by code hash) over several slots with a simulated
evaluation: a candidate's val_bpb comes from a smooth landscape over its constants plus seeded
noise, a fixed share of candidates fail (crash, oom, timeout, nan), and every evaluation has a
training curve, a summary and a log tail. Nothing is written around the engine: the archive is
what `evo run` would have written. Time is a simulated night (`tests.support.simulated.Night`):
each evaluation occupies its slot for its simulated wall seconds (the budget plus a jittered
startup; failures their own), slots run in parallel, and the night is placed so that it ends about
now, so hundreds of candidates span hours of timestamps yet take seconds to write.

`live=True` leaves the run as a report sees a run in progress: ACTIVE, owned by this process,
its last candidates RUNNING on every slot and one WAITING. The engine is stopped there as a
`kill -9` would stop it: nothing recorded after that moment. Once those last candidates start,
the night follows real time, so the run's heartbeat is fresh."""

from __future__ import annotations

import math
import random
import time
from datetime import timedelta
from hashlib import sha256

from evo.config import RunConfig
from evo.engine.seeding import Imported, SeedPlan
from evo.launch.logs import Outcome
from evo.launch.runner import EvalResult
from evo.operators.tweak import find_constants
from evo.storage import (COMPLETE, RUNNING, STALE_AFTER_SECONDS, WAITING, Archive, Run, owner_id,
                         utcnow)
from tests.support.simulated import Night, NightArchive, SimulatedEvaluation, failed, simulated_engine

REASONS = (("crash", 0.4), ("oom", 0.2), ("timeout", 0.2), ("nan", 0.2))
DETAILS = {"crash": "Traceback (most recent call last): ... RuntimeError: shape mismatch",
           "oom": "CUDA out of memory. Tried to allocate 2.00 GiB",
           "timeout": "no summary after the allowance; killed",
           "nan": "loss is nan at step 412"}
SIGMA = 0.0008  # measurement noise in val_bpb
LIVE_WAIT = 120.0  # seconds a live run may take to fill its slots; generous for a loaded machine


def default_code(lines: int = 300) -> str:
    """A train.py-like text with tweakable constants, for when no real seed is given."""
    head = ["\"\"\"Synthetic train.py.\"\"\"", "import math", "", "DEPTH = 8", "ASPECT_RATIO = 64",
            "HEAD_DIM = 128", "TOTAL_BATCH_SIZE = 2**19", "DEVICE_BATCH_SIZE = 32", "EMBEDDING_LR = 0.6",
            "UNEMBEDDING_LR = 0.004", "MATRIX_LR = 0.04", "SCALAR_LR = 0.5", "WEIGHT_DECAY = 0.2",
            "WARMDOWN_RATIO = 0.5", "MUON_MOMENTUM = 0.95", ""]
    body = [f"def block_{k}(x):\n    y = x * {k + 1} + math.sin(x)  # layer {k}\n    return y\n"
            for k in range(max(1, (lines - len(head)) // 4))]
    return "\n".join(head) + "\n" + "\n".join(body)


class Landscape:
    """val_bpb as a function of a candidate's code: a bowl over the log of each constant, with an
    optimum and weights drawn from `seed`, plus noise seeded by (code, evaluation seed) as on a
    deterministic GPU. `fail_rate` of the codes (by hash; never the seed) fail."""

    def __init__(self, seed_code: str, seed: int, fail_rate: float, budget: float, curve_points: int):
        rng = random.Random(seed)
        self.seed_code, self.fail_rate, self.budget, self.curve_points = seed_code, fail_rate, budget, curve_points
        self.optimum = {c.name: _log(c.value) + rng.gauss(0.0, 0.5) for c in find_constants(seed_code)}
        if not self.optimum:
            raise ValueError("the seed code has no top-level UPPERCASE numeric constants to vary")
        self.weight = {name: 0.004 + 0.02 * rng.random() for name in self.optimum}

    def truth(self, code: str) -> float:
        constants = find_constants(code)  # its parse is thread-safe (operators.base.parse)
        return 0.95 + sum(self.weight[c.name] * (_log(c.value) - self.optimum[c.name]) ** 2
                          for c in constants if c.name in self.optimum)

    def __call__(self, code: str, eval_seed: int) -> EvalResult:
        h = sha256(code.encode()).hexdigest()
        rng = random.Random(f"{h}:{eval_seed}")
        fails = code != self.seed_code and random.Random(h).random() < self.fail_rate
        reason = random.Random(h + ":reason").choices([r for r, _ in REASONS], [w for _, w in REASONS])[0] \
            if fails else None
        value = self.truth(code) + rng.gauss(0.0, SIGMA)
        wall = self.budget + rng.uniform(25.0, 45.0) if reason is None else \
            {"timeout": self.budget + 300.0, "oom": rng.uniform(20, 60), "crash": rng.uniform(5, 40),
             "nan": rng.uniform(30, self.budget)}[reason]
        trained = min(wall, self.budget) if reason is None else wall * 0.8
        steps = max(3, self.curve_points)
        curve = [(j, trained * j / steps, 2.8 + 6.0 * math.exp(-6.0 * j / steps) + value - 1.0 + rng.gauss(0, 0.01))
                 for j in range(1, steps + 1)] if reason in (None, "nan", "timeout") else []
        lines = [f"step {j:05d} | elapsed: {t:.1f}s | loss: {loss:.6f} | lrm: 1.00" for j, t, loss in curve[-20:]]
        if reason is not None:
            return failed(reason, DETAILS[reason], curve=curve, wall_seconds=wall, harness_seconds=1.5,
                          log_tail="\n".join(lines + [DETAILS[reason]]))
        metrics = {"val_bpb": value, "training_seconds": self.budget, "total_seconds": wall - 2.0,
                   "peak_vram_mb": 44000.0 + rng.uniform(-3000, 3000), "mfu_percent": 38.0 + rng.uniform(-4, 4),
                   "total_tokens_M": 480.0, "num_steps": 950, "num_params_M": 124.5, "depth": 8}
        lines += ["---"] + [f"{key + ':':<18}{v:.6f}" if isinstance(v, float) else f"{key + ':':<18}{v}"
                            for key, v in metrics.items()]
        return EvalResult(Outcome(COMPLETE, summary=metrics), curve, 0, wall, 1.5, "\n".join(lines),
                          startup_seconds=rng.uniform(4.0, 9.0), trained_seconds=trained)


def _log(value: float) -> float:
    return math.log(abs(float(value)) + 1e-12)


class _Frozen(BaseException):
    """Ends a live run's engine the way `kill -9` ends `evo run`: nothing more is recorded. A
    BaseException, so the engine's per-evaluation error handling does not record it."""


def synthesize(archive: Archive, n: int, *, name: str = "synthetic", seed: int = 0, code: str | None = None,
               slots: int = 4, population: int = 8, budget: float = 300.0, live: bool = False,
               fail_rate: float = 0.08, curve_points: int = 30, history: tuple[Imported, ...] = ()) -> Run:
    """Run the engine for a run named `name` with a seed and `n` children in `archive` (a SQLite
    file: the engine writes through its own connection on the night's clock); `budget` is the
    simulated training time of an evaluation (its curve, wall seconds, summary). `history`: imported
    candidates archived before the seed, as `--seed-from` brings them (the seed is `code`)."""
    seed_code = code if code is not None else default_code()
    landscape = Landscape(seed_code, seed, fail_rate, budget, curve_points)
    config = RunConfig(name=name, preset="smoke", population=population, temperature="auto", cooling="exp",
                       replicates=3, confirm=True, max_candidates=n, operator="tweak", slots=slots, lookahead=1,
                       seed=seed).validate()
    frozen_from = max(1, n - slots - 1)
    # About as long as the evaluations take (the seed's replicates, then children: most complete,
    # some are confirmed), so a night ends about now. A live run joins real time once its last
    # candidates start and must not be ahead of it then: a wide margin (its slots idle before them).
    typical = budget + 35.0
    children = frozen_from - 1 if live else n
    span = math.ceil(config.replicates / slots) * typical + (2.0 if live else 1.1) * (children + 1) * typical / slots
    night = Night(utcnow() - timedelta(seconds=span), slots, live_from=frozen_from if live else None)
    holder: list = []
    measure = _live(archive, n, slots, holder, landscape, night) if live else landscape
    evaluate = SimulatedEvaluation(measure, night=night)
    writer = NightArchive(archive.url, night)
    try:
        plan = SeedPlan(seed_code, history=history) if history else None
        engine = simulated_engine(writer, config, seed_code, evaluate, slots=[f"gpu{s}" for s in range(slots)], plan=plan)
        holder.append(engine)
        writer.claim_run(engine.run.id, owner_id(), STALE_AFTER_SECONDS)  # as `evo run` does
        try:
            engine.execute()
        except _Frozen:
            states = [e.state for e in archive.evaluations(engine.run.id)]
            if states.count(RUNNING) != slots or WAITING not in states:
                raise RuntimeError(f"the live run {name!r} did not reach all {slots} slots running and one "
                                   f"evaluation waiting within {LIVE_WAIT:.0f} s (duplicates among its last "
                                   "candidates?); try another seed") from None
    finally:
        writer.close()
    return archive.run_by_id(engine.run.id)


def _live(archive: Archive, n: int, slots: int, holder: list, landscape: Landscape, night: Night):
    """A measure that holds every evaluation started once the night is live (from the first start
    of a last candidate on: the night then follows real time, which no evaluation may run ahead
    of) until every slot holds one and another waits, then stops the engine dead."""
    deadline = time.monotonic() + LIVE_WAIT
    held: list[str] = []  # codes held in slots; evaluations started earlier may still run on the night

    def in_progress() -> bool:
        engine = holder[0]
        states = [e.state for e in archive.evaluations(engine.run.id)]
        return (len(held) == slots and WAITING in states and engine.children_made() >= n
                and not engine.proposals.in_flight)

    def measure(code: str, eval_seed: int) -> EvalResult:
        engine = holder[0]
        if not night.live:
            return landscape(code, eval_seed)
        held.append(code)
        while not engine.kill.wait(0.02):
            if in_progress() or time.monotonic() > deadline:
                engine.request_kill()
        raise _Frozen
    return measure

