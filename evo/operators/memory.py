"""Lineage memory: what the LLM operator is told about a candidate, read from the archive.

This is the shell around the pure prompt builders: it turns the storage's lineage read model
(`queries.lineage_rows`, one read transaction) into the prompts' own dataclasses
(CandidateSummary, Lineage), so prompts never see the database."""

from __future__ import annotations

from evo.storage import Archive, Candidate, Evaluation, METRICS as STORED_METRICS, queries
from evo.core.diff import unified_diff
from evo.operators.prompts import CandidateSummary, Lineage

METRICS = tuple(key for key in STORED_METRICS if key != "val_bpb")  # val_bpb is told on its own
RECENT_FAILURES = 10
LEDGER_SIZE = 400            # ideas of the run the ledger can hold (the prompt's budget drops more)


def summary(c: Candidate, last: Evaluation | None, with_tail: bool = True,
            parent: Candidate | None = None) -> CandidateSummary:
    """What the prompts are told about one candidate, given its latest evaluation. An imported
    candidate was never judged here: its Δ is against its parent's imported value, if `parent`."""
    metrics = {k: getattr(last, k) for k in METRICS if last is not None and getattr(last, k) is not None}
    delta = c.accept_delta
    if delta is None and c.operator == "import" and parent is not None and c.imported_val_bpb is not None \
            and _value(parent) is not None:
        delta = c.imported_val_bpb - _value(parent)
    return CandidateSummary(
        c.number, c.hypothesis, _value(c), c.val_bpb_std, c.state,
        c.fail_reason, (last.log_tail or "") if (with_tail and last) else "", c.operator, id=c.id,
        parent_id=c.parent_id, parent2_id=c.parent2_id, delta=delta, accepted=c.accepted,
        n_evals=c.n_evals, fail_detail=c.fail_detail or "", rationale=c.rationale, metrics=metrics)


def _value(c: Candidate) -> float | None:
    return c.val_bpb if c.val_bpb is not None else c.imported_val_bpb


class ArchiveMemory:
    """`lineage(candidate_id)` and `code(candidate_id)` callbacks over one run of an archive."""

    def __init__(self, archive: Archive, run_id: int):
        self.archive, self.run_id = archive, run_id

    def lineage(self, candidate_id: int) -> Lineage:
        rows = queries.lineage_rows(self.archive, self.run_id, candidate_id, RECENT_FAILURES, LEDGER_SIZE)
        by_id = {c.id: c for c in (*rows.ledger, *rows.ancestors, rows.node, *([rows.seed] if rows.seed else []))}

        def told(c: Candidate, with_tail: bool) -> CandidateSummary:
            return summary(c, rows.last_evaluation.get(c.id), with_tail)

        best_diff = ""
        if rows.best is not None and rows.seed is not None and rows.best.code_hash != rows.seed.code_hash:
            best_diff = unified_diff(self.code(rows.seed.id), self.code(rows.best.id), f"seed #{rows.seed.number}",
                                     f"best #{rows.best.number}")

        return Lineage(
            node=told(rows.node, True),
            ancestors=tuple(told(c, False) for c in reversed(rows.ancestors)),
            siblings=tuple(told(c, False) for c in rows.siblings),
            failures=tuple(told(c, True) for c in rows.failures),
            best=told(rows.best, False) if rows.best else None,
            sigma=rows.sigma,
            ledger=tuple(summary(c, None, False, by_id.get(c.parent_id)) for c in rows.ledger),
            best_diff=best_diff)

    def code(self, candidate_id: int) -> str:
        return queries.code_of(self.archive, candidate_id)
