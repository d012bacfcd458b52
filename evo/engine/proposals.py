"""Proposals: choosing parents, asking the operator for a child (or a repair of a crashed child),
and archiving what came back: a new candidate queued for evaluation, a duplicate pruned by code
hash at no slot cost, or a failure to propose. The loop decides when to ask and what a failure
means for the run (pauses, the failure limit); this module only asks and stores.

Each proposal runs in its own daemon thread, so the loop never waits on the operator."""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from evo.core import lineage, selection
from evo.operators import Operator, OperatorError, Parent, Proposal
from evo.storage import FAIL, NO_PROPOSAL, PRUNED, Archive, Candidate, code_hash

MAX_FIXES_PER_LINEAGE = 1    # repair proposals along one line of descent


@dataclass
class Asked:
    """A proposal in flight: the parents it was asked for, and when (on the engine's clock)."""
    parents: list[Parent]
    submitted: float


class Proposals:
    """The proposals in flight and the crashed children waiting for a repair proposal."""

    def __init__(self, archive: Archive, run_id: int, operator: Operator,
                 clock: Callable[[], float] = time.monotonic):
        self.archive, self.run_id, self.operator, self.clock = archive, run_id, operator, clock
        self.in_flight: dict[Future, Asked] = {}
        self.fix_queue: list[int] = []

    def ask(self, members: Callable[[], Sequence[selection.Member]], rng: random.Random, *,
            elite_share: float = 0.0, follow: int | None = None, heat: float | None = None) -> None:
        """Ask the operator for one child: a repair when a crashed child waits for one, otherwise
        a child of parents chosen by `selection.select_parents` (the followed member, the elite
        `elite_share` of the time, else tournaments). `heat`: the temperature in σ units, told to the
        operator with the parents. Draws from the run's RNG in a fixed order (the child's own RNG
        first, then the parents) so seeded runs repeat."""
        child_rng = random.Random(rng.getrandbits(63))
        if self.fix_queue:
            failed = self.as_parent(self.archive.candidate_by_id(self.fix_queue.pop(0)))
            self.in_flight[in_daemon_thread(self.operator.propose_fix, failed, child_rng)] = \
                Asked([failed], self.clock())
            return
        chosen = selection.select_parents(list(members()), self.operator.n_parents, rng, elite_share=elite_share,
                                          follow=follow)
        parents = [self.as_parent(self.archive.candidate_by_id(m.id), heat) for m in chosen]
        self.in_flight[in_daemon_thread(self.operator.propose, parents, child_rng)] = \
            Asked(parents, self.clock())

    def as_parent(self, c: Candidate, heat: float | None = None) -> Parent:
        return Parent(c.id, c.number, self.archive.code(c.code_hash), c.hypothesis, c.val_bpb, heat)

    def wants_fix(self, cand: Candidate, is_seed: bool) -> bool:
        """A crashed child may get one repair proposal, bounded per line of descent."""
        if cand.fail_reason != "crash" or not self.operator.repairs or is_seed:
            return False
        line = lineage.first_parents(cand, self.archive.candidate_by_id)
        return sum(node.fix for node in line) < MAX_FIXES_PER_LINEAGE

    def store(self, asked: Asked, proposal: Proposal, rng_state: str, evaluation_seeds: list[int]) -> Candidate:
        """Archive a proposed child: queued for evaluation with `evaluation_seeds`, or PRUNED when
        its code is already in the run (the earlier candidate's result stands)."""
        parents, extra = asked.parents, proposal.extra
        second = parents[1].id if len(parents) > 1 and extra.get("parent2_used") else None
        common = dict(code=proposal.code, operator=extra.get("operator", self.operator.name), parent_id=parents[0].id,
                      parent2_id=second, hypothesis=proposal.hypothesis, rationale=proposal.rationale,
                      model=proposal.model, rng_state=rng_state, llm_calls=extra.get("llm_calls", ()), fix=bool(extra.get("fix")))
        twin = self.archive.find_code(self.run_id, code_hash(proposal.code))
        if twin is not None:
            return self.archive.add_candidate(self.run_id, **common, state=PRUNED, fail_reason="duplicate",
                                              fail_detail=f"same code as candidate {twin.number}; its result stands")
        return self.archive.add_candidate(self.run_id, **common, evaluation_seeds=evaluation_seeds)

    def store_failure(self, asked: Asked, error: Exception, rng_state: str) -> Candidate:
        """Archive a proposal that produced no code as FAIL: `invalid` for an unusable proposal
        (the operator's failure), `harness` for anything else raised on its way (evo's own)."""
        parents = asked.parents
        reason, detail = ("invalid", str(error)) if isinstance(error, OperatorError) else \
            ("harness", f"the operator raised {type(error).__name__}: {error}")
        return self.archive.add_candidate(self.run_id, code=parents[0].code,
                                   operator=getattr(error, "operator", None) or self.operator.name,
                                   model=getattr(error, "model", None),
                                   parent_id=parents[0].id, parent2_id=parents[1].id if len(parents) > 1 else None,
                                   hypothesis=NO_PROPOSAL, rng_state=rng_state, state=FAIL,
                                   fail_reason=reason, fail_detail=detail,
                                   llm_calls=getattr(error, "llm_calls", None) or ())


def in_daemon_thread(fn: Callable[..., Proposal], *args: Any) -> Future:
    """Run one proposal in a daemon thread: after a stop an LLM call still in flight is abandoned,
    and the process exits without joining it (ThreadPoolExecutor's workers are joined at exit)."""
    fut: Future = Future()
    fut.set_running_or_notify_cancel()

    def work() -> None:
        try:
            fut.set_result(fn(*args))
        except BaseException as e:  # noqa: BLE001 - handed to the loop, which decides what it means
            fut.set_exception(e)

    threading.Thread(target=work, name="evo-propose", daemon=True).start()
    return fut
