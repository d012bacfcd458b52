"""Where a run starts: the seed plan (the seed's code and the history imported before it), the
import of another evo run's candidates (`evo:RUN[:N]`, no git involved), the seed file placed on top
of an import, and the plan's summary for the CLI. Git repositories are read by evo.gitio."""

from __future__ import annotations

import re
from dataclasses import dataclass

from evo.storage import COMPLETE, FAIL, Archive, ArchiveError, Candidate
from evo.core.lineage import ancestors, best as best_of, nearest

STATUSES = ("keep", "discard", "crash")
UNRECORDED = "unrecorded"      # a commit on the chain that results.tsv does not list: imported, not kept


class SeedError(Exception):
    """Bad input for a seed plan (no such run or candidate, an unreadable repository): one sentence."""


@dataclass(frozen=True)
class Imported:
    """A candidate brought in from elsewhere (a greedy run's commit, another evo run) as history:
    archived with what was measured there, never evaluated here."""
    key: str                      # identifies it among the imports (a commit hash)
    parent_key: str | None
    code: str
    hypothesis: str
    val_bpb: float | None         # as measured elsewhere
    status: str                   # keep, discard or crash


@dataclass(frozen=True)
class SeedPlan:
    """Where a run starts: the seed's code (re-measured here `replicates` times) and the history
    before it, oldest first."""
    code: str
    operator: str = "seed"
    hypothesis: str = "seed"
    imported_val_bpb: float | None = None
    parent_key: str | None = None
    history: tuple[Imported, ...] = ()


@dataclass(frozen=True)
class ImportPlan(SeedPlan):
    """A SeedPlan brought in by --seed-from, with what the import says about itself for the plan
    summary: which results.tsv it read and so which mode it ran in, what it could not resolve."""
    notes: tuple[str, ...] = ()



def find_candidate(archive: Archive, run_name: str | None, which: str) -> tuple[str, Candidate]:
    """A run's candidate by number, or 'best'; returns the run's name with it."""
    try:
        run = archive.find_run(run_name)
        if which == "best":
            cand = best_of(archive.candidates(run.id))
            if cand is None:
                raise SeedError(f"run {run.name!r} has no evaluated, accepted candidate yet.")
            return run.name, cand
        try:
            number = int(which)
        except ValueError:
            raise SeedError(f"{which!r} is not a candidate number or 'best'.") from None
        return run.name, archive.candidate(run.id, number)
    except ArchiveError as e:
        raise SeedError(str(e)) from None


def seed_from_evo(archive: Archive, spec: str) -> ImportPlan:
    """`evo:RUN[:NUMBER]`: that run's best accepted candidate (or candidate NUMBER) as the seed, the
    run's decided candidates as history (accepted: kept, rejected: discarded, failed: crashed, each
    on its first parent; pruned duplicates and undecided ones stay behind), with the candidate's
    ancestors always among them. As with a greedy repository, the candidate itself is imported and
    the seed is its re-measured child."""
    m = re.fullmatch(r"evo:(.+?)(?::(\d+|best))?", spec.strip())
    if not m:
        raise SeedError(f"{spec!r} is not evo:RUN or evo:RUN:NUMBER.")
    run_name, cand = find_candidate(archive, m.group(1), m.group(2) or "best")
    key = lambda c: f"evo:{run_name}:{c.number}"  # noqa: E731
    lineage = {c.id for c in ancestors(cand, archive.candidate_by_id)} | {cand.id}
    cands = archive.candidates(cand.run_id)
    by_id = {c.id: c for c in cands}
    first_parent = lambda i: by_id[i].parent_id if i in by_id else None  # noqa: E731
    chosen = [c for c in cands if c.id in lineage or (c.accepted is not None and c.state in (COMPLETE, FAIL))]
    imported: set[int] = set()
    history = []
    for c in chosen:  # in number order: parents first
        parent = nearest(c.parent_id, first_parent, imported.__contains__)
        status = "keep" if c.accepted else "crash" if c.state == FAIL else "discard"
        how = c.operator + (f" of #{by_id[c.parent_id].number} and #{by_id[c.parent2_id].number}"
                            if c.parent2_id in by_id and c.parent_id in by_id else "")
        failed = f", {c.state} {c.fail_reason}" if c.state == FAIL else ""
        history.append(Imported(key=key(c), parent_key=key(by_id[parent]) if parent is not None else None,
                                code=archive.code(c.code_hash),
                                hypothesis=f"evo run {run_name} #{c.number} ({how}{failed}): {c.hypothesis}",
                                val_bpb=c.val_bpb if c.val_bpb is not None else c.imported_val_bpb, status=status))
        imported.add(c.id)
    note = (f"history: evo run {run_name}'s {len(history)} decided candidate(s) (accepted ones kept, rejected "
            f"discarded, failed crashed); the seed is #{cand.number}, re-measured here")
    return ImportPlan(code=archive.code(cand.code_hash), operator="import",
                      hypothesis=f"from evo run {run_name} #{cand.number}: {cand.hypothesis}",
                      imported_val_bpb=cand.val_bpb if cand.val_bpb is not None else cand.imported_val_bpb,
                      parent_key=key(cand), history=tuple(history), notes=(note,))


def with_seed_file(plan: SeedPlan, code: str, path: str) -> ImportPlan:
    """`--seed-from X --seed-train FILE`: X's history, with FILE as the seed (measured here) in
    place of X's best; its parent is the imported best, so the lineage shows where it came from."""
    notes = getattr(plan, "notes", ())
    best = plan.parent_key[:7] if plan.parent_key else "none"
    return ImportPlan(code=code, operator="seed",
                      hypothesis=f"{path} (--seed-train), on top of the imported best {best}",
                      parent_key=plan.parent_key, history=plan.history,
                      notes=(*notes, f"--seed-train {path} is the seed instead of the imported best "
                                     f"({plan.hypothesis}), which stays in the history as its parent"))


def summarize_plan(plan: SeedPlan) -> str:
    """Lines for the CLI: what the seed is and how much history came with it, then what the import
    says about itself (which results.tsv it read, which mode, what it could not resolve)."""
    counts = {s: sum(1 for h in plan.history if h.status == s) for s in (*STATUSES, UNRECORDED)}
    measured = f" (val_bpb {plan.imported_val_bpb:.6f} there; re-measured here)" if plan.imported_val_bpb else ""
    unrecorded = f", {counts[UNRECORDED]} not in results.tsv" if counts[UNRECORDED] else ""
    head = (f"seed: {plan.hypothesis}{measured}; history: {counts['keep']} kept, {counts['discard']} discarded, "
            f"{counts['crash']} crashed{unrecorded}")
    return "\n".join([head, *getattr(plan, "notes", ())])
