"""Lineage memory: what the LLM operator is told about a candidate, read from the archive.

This is the shell around the pure prompt builders: it turns archive rows into the prompts' own
dataclasses (CandidateSummary, Lineage), so prompts never see the database."""

from __future__ import annotations

from evo.storage.archive import FAIL, Archive, Candidate
from evo.core.lineage import best as best_of, first_parents
from evo.launch.logs import SUMMARY_KEYS
from evo.operators.prompts import CandidateSummary, Lineage

METRICS = tuple(key for key in SUMMARY_KEYS if key != "val_bpb")  # val_bpb is told on its own
RECENT_FAILURES = 10


class ArchiveMemory:
    """`lineage(candidate_id)` and `code(candidate_id)` callbacks over one run of an archive."""

    def __init__(self, archive: Archive, run_id: int):
        self.archive, self.run_id = archive, run_id

    def summary(self, c: Candidate, with_tail: bool = True) -> CandidateSummary:
        evaluations = self.archive.evaluations(self.run_id, c.id)
        last = evaluations[-1] if evaluations else None
        metrics = {k: getattr(last, k) for k in METRICS if last is not None and getattr(last, k) is not None}
        return CandidateSummary(
            c.number, c.hypothesis, c.val_bpb if c.val_bpb is not None else c.imported_val_bpb, c.val_bpb_std, c.state,
            c.fail_reason, (last.log_tail or "") if (with_tail and last) else "", c.operator, id=c.id,
            parent_id=c.parent_id, parent2_id=c.parent2_id, delta=c.accept_delta, accepted=c.accepted,
            n_evals=c.n_evals, fail_detail=c.fail_detail or "", rationale=c.rationale, metrics=metrics)

    def lineage(self, candidate_id: int) -> Lineage:
        node = self.archive.candidate_by_id(candidate_id)
        chain = first_parents(node, self.archive.candidate_by_id)[1:]  # nearest first
        everyone = self.archive.candidates(self.run_id)
        near = {candidate_id} | {c.id for c in chain}
        failures = [c for c in everyone if c.state == FAIL and c.parent_id in near][-RECENT_FAILURES:][::-1]
        best = best_of(everyone)
        return Lineage(
            node=self.summary(node),
            ancestors=tuple(self.summary(c, False) for c in reversed(chain)),
            siblings=tuple(self.summary(c, False) for c in everyone if c.parent_id == candidate_id),
            failures=tuple(self.summary(c) for c in failures),
            best=self.summary(best, False) if best else None,
            sigma=self.archive.run_by_id(self.run_id).sigma)

    def code(self, candidate_id: int) -> str:
        return self.archive.code(self.archive.candidate_by_id(candidate_id).code_hash)
