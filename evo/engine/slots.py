"""The slot pool: where evaluations run. One worker thread per slot waits on its evaluation (the
runner's subprocess, or a simulated evaluation in benchmarks and tests); the pool knows what runs
where and hands finished evaluations back to the loop, which records and judges them. Nothing
here writes the archive."""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from threading import Event
from typing import Callable, Iterable

from evo.launch.apparatus import Apparatus
from evo.launch.runner import EarlyStop, EvalResult, Limits, Slot


@dataclass
class Pending:
    """An evaluation running in a slot, since `started` (on the engine's clock)."""
    evaluation_id: int
    candidate_id: int
    slot: Slot
    started: float


class SlotPool:
    def __init__(self, slots: list[Slot], evaluate: Callable[..., EvalResult], apparatus: Apparatus, limits: Limits,
                 kill: Event, clock: Callable[[], float] = time.monotonic):
        self.slots, self.evaluate, self.apparatus, self.limits, self.kill = slots, evaluate, apparatus, limits, kill
        self.clock = clock
        self.running: dict[Future, Pending] = {}
        # slot name -> what it is doing and since when (time.monotonic, for the live view's elapsed time)
        self.status: dict[str, tuple[str, float]] = {}
        self._pool = ThreadPoolExecutor(max_workers=len(slots), thread_name_prefix="evo-slot")

    def free(self) -> list[Slot]:
        busy = {p.slot.name for p in self.running.values()}
        return [s for s in self.slots if s.name not in busy]

    def evaluation_ids(self) -> set[int]:
        return {p.evaluation_id for p in self.running.values()}

    def start(self, slot: Slot, evaluation_id: int, candidate_id: int, code: str, workdir: Path, seed: int,
              label: str, early_stop: EarlyStop | None = None, compile_cache: Path | None = None) -> None:
        """Evaluate `code` in `slot` (its evaluation already marked RUNNING in the archive), stopped
        early when the rule `early_stop` says so, starting from a copy of `compile_cache`."""
        # Passed only when given: evaluate functions that predate them (benchmarks' stand-ins) still work.
        rule = {} if early_stop is None else {"early_stop": early_stop}
        if compile_cache is not None:
            rule["compile_cache"] = compile_cache
        fut = self._pool.submit(self.evaluate, code=code, workdir=workdir, prepare_src=self.apparatus.prepare_path,
                                locked_hash=self.apparatus.locked_hash, slot=slot, seed=seed, limits=self.limits,
                                preset=self.apparatus.preset, stop=self.kill, **rule)
        self.running[fut] = Pending(evaluation_id, candidate_id, slot, self.clock())
        self.status[slot.name] = (label, time.monotonic())

    def collect(self, done: Iterable[Future]) -> list[tuple[Pending, Future]]:
        """The evaluations among `done` that ended; their slots are free again."""
        finished = [(self.running.pop(fut), fut) for fut in done if fut in self.running]
        for pending, _ in finished:
            self.status.pop(pending.slot.name, None)
        return finished

    def shutdown(self) -> None:
        """Wait for every running evaluation to end (after a kill they end at once)."""
        self._pool.shutdown(wait=True)
