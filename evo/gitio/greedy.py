"""Seeding from a greedy autoresearch repository: `--seed-from REPO[@REF]` becomes a SeedPlan.

How a greedy run becomes history (`seed_from_repo`):

- a row's (short) hash names the commit reachable from REF that starts with it, else any commit
  of the repository (discards were reset away); blobs and trees never count, and a hash several
  commits start with is ambiguous (a note says so). Columns are found by the header's names.
- the **best commit** is the lowest val_bpb among `keep` rows of results.tsv whose commit still
  exists and has a train.py (a commit measured several times counts with its mean). Without a
  results.tsv, with a header-only one (tip mode, noted), or when no keep row resolves, it is the
  tip of REF (the last commit there that changed train.py, whose code is the tip's). An evo export
  (a commit with an `Evo-Candidate` trailer) at the tip of REF that results.tsv does not list wins
  over the greedy rows: evo's answer is newer than the greedy run it started from, so export ->
  seed-from round-trips.
- the **baseline** is the first keep row's commit; the word `baseline` stands for the commit the
  first kept change was made on (the first parent of the first kept commit that resolves), or the
  tip of REF when no kept change resolves.
- the **chain** is every commit from the baseline on, along first-parent history of REF (and
  of the best and of every kept commit), that is a results.tsv row or changed train.py: baseline ->
  ... -> best -> (commits after the best, when the tip is not the best). Each one's parent is
  the nearest such commit before it. Only keep rows (and the baseline and the best) are kept: a
  chain commit results.tsv does not list (an interrupted experiment, a revert) is imported as
  `unrecorded`, not kept; in tip mode every chain commit is kept. val_bpb and description come
  from results.tsv, else from evo's trailers, else the commit subject.
- the **rejected rows** (discard, crash) follow, in results.tsv order, each the child of the kept
  commit it was made on (its git parent when the commit still exists, else the previous keep row).
  A row whose commit no longer exists gets its parent's code, and its hypothesis says so.
- the **seed** is the best commit again: the best is imported as history like every kept commit,
  and the seed (operator `import`, re-measured on this machine) is its child. Everything greedy
  built on top of the best (kept commits after it, the discards tried from it) hangs off the
  imported best, because the engine archives the history before the seed. `evo candidates` shows
  the imported history, then the re-measured seed, with the same code as the imported best.
  With `--seed-train FILE` too (`with_seed_file`), FILE is the seed instead, the imported best its
  parent: the greedy history stays when the best cannot run here.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Iterator

import git as gitpython
from git.exc import GitCommandError

from evo.storage.archive import Archive
from evo.engine.seeding import STATUSES, UNRECORDED, Imported, ImportPlan, SeedPlan, seed_from_evo
from evo.gitio import GitError
from evo.gitio.repo import (RESULTS, TRAIN, blob_of, commit_subject, decode_text, git_failed, head_sha, open_repo,
                            read_trailers, resolve_ref)
from evo.gitio.results_tsv import ResultRow, parse_results_tsv, to_float

MAX_TIP_HISTORY = 200          # without a results.tsv: at most this many train.py commits as history


def _split_spec(spec: str) -> tuple[Path, str, str | None]:
    """REPO[@REF] -> (path, path as written, ref). The path may itself contain '@'."""
    text = spec.strip()
    if not text:
        raise GitError("--seed-from needs REPO[@REF] (a path to a git repository) or evo:RUN[:NUMBER].")
    if Path(text).expanduser().exists() or "@" not in text:
        return Path(text).expanduser(), text, None
    for i, ch in enumerate(text):
        if ch == "@" and i and Path(text[:i]).expanduser().is_dir():
            ref = text[i + 1:]
            if not ref:
                raise GitError(f"{spec!r} names no ref after '@'; write REPO or REPO@REF.")
            return Path(text[:i]).expanduser(), text[:i], ref
    head = text.split("@", 1)[0]
    raise GitError(f"{head or spec} does not exist.")


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


class _Greedy:
    """One import of a greedy run; holds the caches of a single pass over the repository."""

    def __init__(self, repo: gitpython.Repo, tip: str, ref_name: str, rows: list[ResultRow], origin: str,
                 notes: list[str]):
        self.repo, self.tip, self.ref_name, self.rows, self.origin = repo, tip, ref_name, rows, origin
        self._commits: dict[str, gitpython.Commit] = {}
        self._train_blob: dict[str, str | None] = {}
        self._on_ref: list[str] | None = None
        self.parents: dict[str, list[str]] = {}
        self.ambiguous: dict[str, int] = {}   # a row's short hash -> how many commits start with it
        self.notes = notes                    # what the plan summary says about this import

    # --- object access -------------------------------------------------------------------

    def commit(self, sha: str) -> gitpython.Commit:
        if sha not in self._commits:
            self._commits[sha] = self.repo.commit(sha)
        return self._commits[sha]

    def train_blob(self, sha: str) -> str | None:
        if sha not in self._train_blob:
            blob = blob_of(self.commit(sha), TRAIN)
            self._train_blob[sha] = blob.hexsha if blob is not None else None
        return self._train_blob[sha]

    def code(self, sha: str) -> str:
        blob = blob_of(self.commit(sha), TRAIN)
        return decode_text(blob.data_stream.read(), f"train.py at {sha[:7]} in {self.origin}")

    def first_parent(self, sha: str) -> str | None:
        if sha in self.parents:
            ps = self.parents[sha]
        else:
            ps = [p.hexsha for p in self.commit(sha).parents]
        return ps[0] if ps else None

    def changed_train(self, sha: str) -> bool:
        blob = self.train_blob(sha)
        parent = self.first_parent(sha)
        return blob is not None and (parent is None or self.train_blob(parent) != blob)

    def resolve(self, text: str) -> str | None:
        """A row's (short) hash -> the full sha of a commit that has a train.py, else None. A hash
        names the commit reachable from REF that starts with it; only when none does, any commit in
        the repository (discarded commits were reset away). Other objects (blobs, trees) never
        count. Several matches leave the row unresolved and are remembered as ambiguous."""
        if self._on_ref is None:
            self._on_ref = self.repo.git.rev_list(self.tip).split()
        matches = [sha for sha in self._on_ref if sha.startswith(text)]
        if not matches:
            found = self.repo.git.rev_parse(f"--disambiguate={text}").split()
            matches = [sha for sha in found if self.repo.git.cat_file("-t", sha) == "commit"]
        if len(matches) > 1:
            self.ambiguous[text] = len(matches)
            return None
        return matches[0] if matches and self.train_blob(matches[0]) is not None else None

    def fp_walk(self, sha: str) -> Iterator[str]:
        node: str | None = sha
        while node is not None:
            yield node
            node = self.first_parent(node)

    def effective_tip(self) -> str | None:
        """The last commit on REF's first-parent line that changed train.py (its code is the tip's)."""
        for sha in self.fp_walk(self.tip):
            if self.changed_train(sha):
                return sha
        return None

    # --- the plan --------------------------------------------------------------------------

    def plan(self) -> ImportPlan:
        resolved = {r.commit: self.resolve(r.commit) for r in self.rows if not r.is_baseline}
        t = self.effective_tip()
        keeps = [r for r in self.rows if r.status == "keep"]
        resolved_keeps = [resolved[r.commit] for r in keeps if not r.is_baseline and resolved[r.commit]]

        # the baseline
        baseline: str | None = None
        if self.rows:
            if keeps and not keeps[0].is_baseline and resolved[keeps[0].commit]:
                baseline = resolved[keeps[0].commit]
            elif resolved_keeps:
                parent = self.first_parent(resolved_keeps[0])
                baseline = parent if parent and self.train_blob(parent) else resolved_keeps[0]
            else:
                baseline = t
            if baseline is None:
                raise GitError(f"{self.origin} has no train.py, and no results.tsv row names a commit that has one.")

        # merge rows per commit
        entries: dict[str, _Entry] = {}
        for r in self.rows:
            sha = baseline if r.is_baseline else resolved[r.commit]
            key = sha or r.commit
            entries.setdefault(key, _Entry(key, sha, [])).rows.append(r)

        # the best
        eligible = [e for e in entries.values() if e.sha and e.status == "keep" and e.val_bpb is not None]
        best_entry = min(eligible, key=lambda e: (e.val_bpb, e.line), default=None)
        best = best_entry.sha if best_entry else None
        export_tip = t is not None and t not in entries and "Evo-Candidate" in read_trailers(self.commit(t).message)
        if export_tip:
            best = t  # an evo export on top of the greedy run
        if best is None:
            best = t
        if best is None:
            raise GitError(f"{self.origin} has no train.py at its tip.")
        if self.rows:
            self.notes.append(f"the seed is {best[:7]}: " + (
                "an evo export at the tip, newer than the greedy rows" if export_tip else
                "the keep row with the lowest val_bpb" if best_entry else
                f"the tip of {self.ref_name}, as no keep row names a commit with a train.py"))

        # the commit graph around every interesting start
        starts = list(dict.fromkeys([self.tip, best, *(e.sha for e in entries.values() if e.sha and e.status == "keep")]))
        if baseline:
            starts.append(baseline)
        order: list[str] = []
        for line in self.repo.git.rev_list("--parents", "--topo-order", *dict.fromkeys(starts)).splitlines():
            shas = line.split()
            self.parents[shas[0]] = shas[1:]
            order.append(shas[0])
        order.reverse()  # oldest first

        # the chain: commits from the baseline on, along first-parent lines, that changed train.py
        # or are results.tsv rows. Only keep rows (and the baseline and the best) are kept: a commit
        # that results.tsv does not list (an interrupted experiment, a revert) was never accepted.
        chain: set[str] = {best}
        if baseline:
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
        else:
            chain.update(islice((sha for sha in self.fp_walk(self.tip) if self.changed_train(sha)), MAX_TIP_HISTORY))

        history: list[Imported] = []
        keys: set[str] = set()
        for sha in order:
            if sha not in chain:
                continue
            parent = next((p for p in islice(self.fp_walk(sha), 1, None) if p in chain), None)
            kept = sha in (best, baseline) or not self.rows
            history.append(self._chain_item(sha, parent, entries.get(sha), kept))
            keys.add(sha)
        unrecorded = sum(1 for h in history if h.status == UNRECORDED)
        if unrecorded:
            self.notes.append(f"{unrecorded} commit(s) on {self.ref_name} changed train.py but are not in results.tsv "
                              f"(an unfinished experiment, a revert): imported as not kept")

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
        description = info.description if info and info.description else commit_subject(self.commit(best))
        return ImportPlan(code=self.code(best), operator="import",
                          hypothesis=f"imported {best[:7]} from {self.origin}: {description}",
                          imported_val_bpb=val, parent_key=best, history=tuple(history), notes=tuple(self.notes))

    def _trailer_val(self, sha: str) -> float | None:
        trailers = read_trailers(self.commit(sha).message)
        return to_float(trailers.get("Evo-Val-Bpb")) or to_float(trailers.get("Evo-Imported-Val-Bpb"))

    def _chain_item(self, sha: str, parent: str | None, entry: _Entry | None, kept: bool) -> Imported:
        """A commit of the chain: as results.tsv has it, else kept (the baseline, the best, any
        commit in tip mode) or not in results.tsv."""
        if entry is not None:
            description = entry.description or commit_subject(self.commit(sha))
            return Imported(key=sha, parent_key=parent, code=self.code(sha), hypothesis=f"{description} [{sha[:7]}]",
                            val_bpb=entry.val_bpb, status="keep" if kept else entry.status)
        hypothesis = f"{commit_subject(self.commit(sha))} [{sha[:7]}]" + ("" if kept else " (not in results.tsv: not kept)")
        return Imported(key=sha, parent_key=parent, code=self.code(sha), hypothesis=hypothesis,
                        val_bpb=self._trailer_val(sha), status="keep" if kept else UNRECORDED)

    def _rejected_item(self, entry: _Entry, parent: str | None, fallback: str) -> Imported:
        description = entry.description or entry.status
        if entry.sha:
            code, hypothesis = self.code(entry.sha), f"{description} [{entry.sha[:7]}]"
        else:
            source = parent or fallback
            code = self.code(source)
            problem = (f"is ambiguous ({self.ambiguous[entry.key]} commits start with it)"
                       if entry.key in self.ambiguous else "no longer exists")
            hypothesis = (f"{description} [{entry.key[:7]} {problem}; the code shown is the kept commit "
                          f"{source[:7]} it was tried on]")
        status = entry.status if entry.status != "keep" else "discard"
        if entry.status == "keep":
            hypothesis += " (kept in results.tsv, but the commit cannot be read)"
        return Imported(key=entry.key, parent_key=parent, code=code, hypothesis=hypothesis,
                        val_bpb=entry.val_bpb, status=status)


def seed_from_repo(spec: str) -> ImportPlan:
    """`REPO[@REF]` (REF defaults to what is checked out): the best commit of a greedy
    autoresearch run as the seed, with the greedy history before it. See the module docstring."""
    path, shown, ref = _split_spec(spec)
    repo = open_repo(path)
    with repo:
        try:
            head = head_sha(repo)
            notes: list[str] = []
            if ref is None:
                if head is None:
                    raise GitError(f"{shown} has no commits.")
                tip, ref_name = head, (repo.active_branch.name if not repo.head.is_detached else "HEAD")
            else:
                tip, ref_name = resolve_ref(repo, ref, shown, notes)
            origin = f"{shown}@{ref_name}"
            text, where = _read_results(repo, tip, ref_name, checked_out=tip == head, notes=notes)
            try:
                rows = parse_results_tsv(text) if text is not None else []
            except GitError as e:
                raise GitError(f"{where}: {e}") from None
            tip_mode = (f"tip mode: the last commit of {ref_name} that changed train.py is the seed, and the train.py "
                        f"commits before it (at most {MAX_TIP_HISTORY}) are kept history without val_bpb")
            if text is None:
                notes.append(f"no results.tsv (not in the work tree of {ref_name}, not committed there): {tip_mode}")
            elif not rows:
                notes.append(f"{where} has no rows yet (a header only): {tip_mode}")
            else:
                notes.append(f"read {where} ({len(rows)} row(s))")
            return _Greedy(repo, tip, ref_name, rows, origin, notes).plan()
        except GitCommandError as e:
            raise git_failed(e, shown) from None


def _read_results(repo: gitpython.Repo, tip: str, ref_name: str, *, checked_out: bool,
                  notes: list[str]) -> tuple[str | None, str]:
    """results.tsv and where it was read: from the work tree (where autoresearch leaves it
    untracked) only when REF is what is checked out, else (or when there is none) as committed at
    REF. A work-tree results.tsv of another checkout is never read; a note says so."""
    local = None if repo.bare or not repo.working_tree_dir else Path(repo.working_tree_dir) / RESULTS
    if local is not None and local.is_file():
        if checked_out:
            return decode_text(local.read_bytes(), str(local)).lstrip("\ufeff"), str(local)
        notes.append(f"{local} was not read: it belongs to what is checked out there, not to {ref_name} "
                     f"(check out {ref_name} to use it)")
    blob = blob_of(repo.commit(tip), RESULTS)
    if blob is None:
        return None, ""
    where = f"{ref_name}:{RESULTS}"
    return decode_text(blob.data_stream.read(), where), where


def seed_from(spec: str, archive: Archive | None = None) -> SeedPlan:
    """`evo:RUN[:NUMBER]` (needs the archive) or `REPO[@REF]`."""
    if spec.strip().startswith("evo:"):
        if archive is None:
            raise GitError("evo:RUN needs an archive to read the run from.")
        return seed_from_evo(archive, spec)
    return seed_from_repo(spec)
