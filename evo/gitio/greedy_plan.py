"""The import plan of a greedy autoresearch run, decided without git: a pure function from the run as
read from its repository (`GreedyRun`: a commit graph, results.tsv's rows, what each row's hash may
name) to the ImportPlan. evo.gitio.greedy reads the repository into a GreedyRun; the rules are in its
module docstring.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import islice
from typing import Iterator, Mapping, Sequence

from evo.engine.seeding import STATUSES, UNRECORDED, Imported, ImportPlan
from evo.gitio import GitError
from evo.gitio.results_tsv import ResultRow, to_float

MAX_TIP_HISTORY = 200          # without a results.tsv: at most this many train.py commits as history
_TRAILER = re.compile(r"^(Evo-[A-Za-z-]+):\s*(.*?)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class CommitInfo:
    """One commit of the graph."""
    sha: str
    parents: tuple[str, ...]
    message: str
    train_blob: str | None        # the blob id of its train.py; None when it has none

    @property
    def subject(self) -> str:
        return (self.message.strip().splitlines() or [""])[0].strip()

    @property
    def trailers(self) -> dict[str, str]:
        """The message's Evo-* trailers (an evo export writes them)."""
        return {k: v for k, v in _TRAILER.findall(self.message)}


@dataclass(frozen=True)
class GreedyRun:
    """A greedy run as its repository holds it. `commits` and `code` are only ever indexed by sha
    (never iterated), so a reader may fill them on demand: a long history is not read whole."""
    origin: str                          # REPO@REF as the user wrote it, for hypotheses
    ref_name: str                        # the name REF was read as, for notes
    tip: str                             # the commit REF names
    rows: tuple[ResultRow, ...]          # results.tsv, as parsed; empty in tip mode
    commits: Mapping[str, CommitInfo]    # every commit reachable from `order`
    code: Mapping[str, str]              # sha -> the text of its train.py
    matches: Mapping[str, tuple[str, ...]]  # a row's (short) hash -> the commits reachable from REF that
                                            # start with it, else any commits of the repository that do
    order: Sequence[str]                 # the commits reachable from the tip and from every commit a row
                                         # names, oldest first, in git's topological order
    notes: tuple[str, ...] = ()          # what reading it said (which results.tsv, which mode)


@dataclass
class _Entry:
    """What results.tsv says about one commit (its rows merged)."""
    key: str
    sha: str | None
    rows: list[ResultRow]

    @property
    def status(self) -> str:
        statuses = {r.status for r in self.rows}
        return next(s for s in STATUSES if s in statuses)

    @property
    def val_bpb(self) -> float | None:
        values = [r.val_bpb for r in self.rows if r.status == self.status and r.val_bpb is not None]
        return sum(values) / len(values) if values else None

    @property
    def description(self) -> str:
        return next((r.description for r in self.rows if r.status == self.status and r.description), "")

    @property
    def line(self) -> int:
        return self.rows[0].line


def plan_import(run: GreedyRun, *, max_tip_history: int = MAX_TIP_HISTORY) -> ImportPlan:
    """The seed and the history of a greedy run (see evo.gitio.greedy). Raises GitError when no
    commit has a train.py to start from."""
    return _Planner(run, max_tip_history).plan()


class _Planner:
    """One plan; holds what the steps share (the run, the ambiguous hashes, the notes)."""

    def __init__(self, run: GreedyRun, max_tip_history: int):
        self.run, self.rows, self.max_tip_history = run, run.rows, max_tip_history
        self.commits = run.commits
        self.ambiguous: dict[str, int] = {}   # a row's short hash -> how many commits start with it
        self.notes = list(run.notes)

    # --- the graph ---------------------------------------------------------------------------

    def first_parent(self, sha: str) -> str | None:
        parents = self.commits[sha].parents
        return parents[0] if parents else None

    def fp_walk(self, sha: str) -> Iterator[str]:
        node: str | None = sha
        while node is not None:
            yield node
            node = self.first_parent(node)

    def changed_train(self, sha: str) -> bool:
        blob = self.commits[sha].train_blob
        parent = self.first_parent(sha)
        return blob is not None and (parent is None or self.commits[parent].train_blob != blob)

    def resolve(self, text: str) -> str | None:
        """A row's (short) hash -> the commit it names when that one has a train.py, else None.
        Several matches leave the row unresolved and are remembered as ambiguous."""
        matches = self.run.matches.get(text, ())
        if len(matches) > 1:
            self.ambiguous[text] = len(matches)
            return None
        return matches[0] if matches and self.commits[matches[0]].train_blob is not None else None

    def effective_tip(self) -> str | None:
        """The last commit on REF's first-parent line that changed train.py (its code is the tip's)."""
        return next((sha for sha in self.fp_walk(self.run.tip) if self.changed_train(sha)), None)

    # --- the plan ----------------------------------------------------------------------------

    def plan(self) -> ImportPlan:
        resolved = {r.commit: self.resolve(r.commit) for r in self.rows if not r.is_baseline}
        t = self.effective_tip()
        baseline = self.baseline(resolved, t)

        # merge rows per commit
        entries: dict[str, _Entry] = {}
        for r in self.rows:
            sha = baseline if r.is_baseline else resolved[r.commit]
            key = sha or r.commit
            entries.setdefault(key, _Entry(key, sha, [])).rows.append(r)

        best = self.best(entries, t)
        starts = list(dict.fromkeys([self.run.tip, best,
                                     *(e.sha for e in entries.values() if e.sha and e.status == "keep")]))
        if baseline:
            starts.append(baseline)
        chain = self.chain(entries, best, baseline, starts)

        history: list[Imported] = []
        keys: set[str] = set()
        for sha in self.run.order:
            if sha not in chain:
                continue
            parent = next((p for p in islice(self.fp_walk(sha), 1, None) if p in chain), None)
            kept = sha in (best, baseline) or not self.rows
            history.append(self._chain_item(sha, parent, entries.get(sha), kept))
            keys.add(sha)
        unrecorded = sum(1 for h in history if h.status == UNRECORDED)
        if unrecorded:
            self.notes.append(f"{unrecorded} commit(s) on {self.run.ref_name} changed train.py but are not in "
                              f"results.tsv (an unfinished experiment, a revert): imported as not kept")

        # the rejected rows, each the child of the kept commit it was made on
        previous_keep = baseline
        for r in self.rows:
            entry = entries[baseline if r.is_baseline else (resolved[r.commit] or r.commit)]
            if entry.key in keys:
                if entry.status == "keep":
                    previous_keep = entry.key
                continue
            parent = None
            if entry.sha:  # the commit it was made on, when the commit still exists
                parent = next((p for p in islice(self.fp_walk(entry.sha), 1, None) if p in keys), None)
            if parent is None:
                parent = previous_keep if previous_keep in keys else None
            history.append(self._rejected_item(entry, parent, fallback=best))
            keys.add(entry.key)
        for text, n in self.ambiguous.items():
            self.notes.append(f"results.tsv names {text!r}, which is ambiguous ({n} commits start with it): imported "
                              f"with the code it was tried on; write more of the hash to import its own")

        info = entries.get(best)
        val = info.val_bpb if info else self._trailer_val(best)
        description = info.description if info and info.description else self.commits[best].subject
        return ImportPlan(code=self.run.code[best], operator="import",
                          hypothesis=f"imported {best[:7]} from {self.run.origin}: {description}",
                          imported_val_bpb=val, parent_key=best, history=tuple(history), notes=tuple(self.notes))

    def baseline(self, resolved: dict[str, str | None], t: str | None) -> str | None:
        """The first keep row's commit; `baseline` stands for the commit the first kept change was
        made on, or the tip when no kept change resolves. None in tip mode."""
        if not self.rows:
            return None
        keeps = [r for r in self.rows if r.status == "keep"]
        resolved_keeps = [resolved[r.commit] for r in keeps if not r.is_baseline and resolved[r.commit]]
        if keeps and not keeps[0].is_baseline and resolved[keeps[0].commit]:
            baseline = resolved[keeps[0].commit]
        elif resolved_keeps:
            parent = self.first_parent(resolved_keeps[0])
            baseline = parent if parent and self.commits[parent].train_blob else resolved_keeps[0]
        else:
            baseline = t
        if baseline is None:
            raise GitError(f"{self.run.origin} has no train.py, and no results.tsv row names a commit that has one.")
        return baseline

    def best(self, entries: dict[str, _Entry], t: str | None) -> str:
        """The keep row with the lowest val_bpb, unless an evo export at the tip is newer; else the tip."""
        eligible = [e for e in entries.values() if e.sha and e.status == "keep" and e.val_bpb is not None]
        best_entry = min(eligible, key=lambda e: (e.val_bpb, e.line), default=None)
        best = best_entry.sha if best_entry else None
        export_tip = t is not None and t not in entries and "Evo-Candidate" in self.commits[t].trailers
        if export_tip:
            best = t  # an evo export on top of the greedy run
        if best is None:
            best = t
        if best is None:
            raise GitError(f"{self.run.origin} has no train.py at its tip.")
        if self.rows:
            self.notes.append(f"the seed is {best[:7]}: " + (
                "an evo export at the tip, newer than the greedy rows" if export_tip else
                "the keep row with the lowest val_bpb" if best_entry else
                f"the tip of {self.run.ref_name}, as no keep row names a commit with a train.py"))
        return best

    def chain(self, entries: dict[str, _Entry], best: str, baseline: str | None, starts: list[str]) -> set[str]:
        """The commits from the baseline on, along first-parent lines, that changed train.py or are
        results.tsv rows. Only keep rows (and the baseline and the best) are kept: a commit that
        results.tsv does not list (an interrupted experiment, a revert) was never accepted. In tip
        mode, the last `max_tip_history` commits of REF that changed train.py."""
        chain: set[str] = {best}
        if not baseline:
            chain.update(islice((sha for sha in self.fp_walk(self.run.tip) if self.changed_train(sha)),
                                self.max_tip_history))
            return chain
        chain.add(baseline)
        chain.update(e.sha for e in entries.values() if e.sha and e.status == "keep")
        region: dict[str, bool] = {}

        def in_region(sha: str) -> bool:
            path = []
            for node in self.fp_walk(sha):
                if node in region or node == baseline:
                    result = region.get(node, True)
                    break
                path.append(node)
            else:
                result = False
            for node in path:
                region[node] = result
            return result

        for start in starts:
            if not in_region(start):
                continue
            for node in self.fp_walk(start):
                if node == baseline:
                    break
                if node in entries or self.changed_train(node):
                    chain.add(node)
        return chain

    # --- the items -----------------------------------------------------------------------------

    def _trailer_val(self, sha: str) -> float | None:
        trailers = self.commits[sha].trailers
        return to_float(trailers.get("Evo-Val-Bpb")) or to_float(trailers.get("Evo-Imported-Val-Bpb"))

    def _chain_item(self, sha: str, parent: str | None, entry: _Entry | None, kept: bool) -> Imported:
        """A commit of the chain: as results.tsv has it, else kept (the baseline, the best, any
        commit in tip mode) or not in results.tsv."""
        subject = self.commits[sha].subject
        if entry is not None:
            description = entry.description or subject
            return Imported(key=sha, parent_key=parent, code=self.run.code[sha], hypothesis=f"{description} [{sha[:7]}]",
                            val_bpb=entry.val_bpb, status="keep" if kept else entry.status)
        hypothesis = f"{subject} [{sha[:7]}]" + ("" if kept else " (not in results.tsv: not kept)")
        return Imported(key=sha, parent_key=parent, code=self.run.code[sha], hypothesis=hypothesis,
                        val_bpb=self._trailer_val(sha), status="keep" if kept else UNRECORDED)

    def _rejected_item(self, entry: _Entry, parent: str | None, fallback: str) -> Imported:
        description = entry.description or entry.status
        if entry.sha:
            code, hypothesis = self.run.code[entry.sha], f"{description} [{entry.sha[:7]}]"
        else:
            source = parent or fallback
            code = self.run.code[source]
            problem = (f"is ambiguous ({self.ambiguous[entry.key]} commits start with it)"
                       if entry.key in self.ambiguous else "no longer exists")
            hypothesis = (f"{description} [{entry.key[:7]} {problem}; the code shown is the kept commit "
                          f"{source[:7]} it was tried on]")
        status = entry.status if entry.status != "keep" else "discard"
        if entry.status == "keep":
            hypothesis += " (kept in results.tsv, but the commit cannot be read)"
        return Imported(key=entry.key, parent_key=parent, code=code, hypothesis=hypothesis,
                        val_bpb=entry.val_bpb, status=status)
