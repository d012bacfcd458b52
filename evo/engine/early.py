"""Early stopping, the engine's side: the rule (evo.core.early_stop) for one child, built from the
archive. Its first parent's curve is the curve of the parent's first COMPLETE evaluation; the
threshold is learned from the run's decided children that completed, each with the gaps between
its first COMPLETE evaluation's curve and its parent's. Read-only: the runner applies the rule and
the loop records what it did."""

from __future__ import annotations

import functools

from evo.core import early_stop
from evo.launch.runner import EarlyStop
from evo.storage import COMPLETE, Archive, Candidate


class EarlyStopping:
    def __init__(self, archive: Archive, run_id: int, time_budget: float, enabled: bool):
        self.archive, self.run_id, self.time_budget, self.enabled = archive, run_id, time_budget, enabled
        # A COMPLETE evaluation's curve never changes: curves and children's gaps are read once.
        self._curves: dict[int, list[early_stop.Point]] = {}
        self._gaps: dict[int, tuple[float | None, ...]] = {}

    def rule(self, cand: Candidate, is_seed: bool) -> EarlyStop | None:
        """The rule for `cand`'s next evaluation, or None: not for the seed, nor for a candidate
        that completed an evaluation already (a confirmation or replicate must run in full), nor
        without its parent's curve or enough completed children to learn the threshold from. The
        seed's curve confirms a stop (core.early_stop.should_stop_child)."""
        if not self.enabled or is_seed or cand.parent_id is None or cand.n_evals > 0:
            return None
        parent_curve = self._first_curve(cand.parent_id)
        seed_curve = self._first_curve(self.archive.run_by_id(self.run_id).seed_id)
        if all(early_stop.loss_at(parent_curve, f * self.time_budget) is None for f in early_stop.CHECKPOINTS):
            return None  # nothing to compare with: the history (every completed child) need not be read
        threshold = early_stop.threshold(self._history(self._first_complete()))
        if threshold is None:
            return None
        return functools.partial(early_stop.should_stop_child, parent_curve=parent_curve, seed_curve=seed_curve,
                                 threshold=threshold, time_budget=self.time_budget)

    def _first_curve(self, candidate_id: int | None) -> list[early_stop.Point]:
        """The curve of the candidate's first COMPLETE evaluation (empty without one)."""
        if candidate_id is None:
            return []
        first = next((e.id for e in self.archive.evaluations(self.run_id, candidate_id) if e.state == COMPLETE), None)
        return [] if first is None else self._curve(first)

    def _first_complete(self) -> dict[int, int]:
        """Candidate id -> its first COMPLETE evaluation's id."""
        return self.archive.first_complete(self.run_id)

    def _curve(self, evaluation_id: int) -> list[early_stop.Point]:
        if evaluation_id not in self._curves:
            self._curves[evaluation_id] = [(p.step, p.elapsed, p.loss) for p in self.archive.curve(evaluation_id)]
        return self._curves[evaluation_id]

    def _history(self, first: dict[int, int]) -> list[early_stop.Completed]:
        """The run's decided children whose parent and themselves completed an evaluation here."""
        candidates = self.archive.outcomes(self.run_id)
        by_id = {c.id: c for c in candidates}
        history = []
        for c in candidates:
            parent = by_id.get(c.parent_id) if c.parent_id is not None else None
            if (c.accepted is None or c.state != COMPLETE or c.val_bpb is None or parent is None
                    or parent.val_bpb is None or c.id not in first or parent.id not in first):
                continue
            if c.id not in self._gaps:
                self._gaps[c.id] = early_stop.gaps(self._curve(first[c.id]), self._curve(first[parent.id]),
                                                   self.time_budget)
            history.append(early_stop.Completed(self._gaps[c.id], c.val_bpb < parent.val_bpb or bool(c.accepted)))
        return history
