"""Git in and out: seed a run from a greedy autoresearch repository (or from another evo run), and
write candidates and whole lineages back to git.

Reading never modifies the repository: train.py always comes from commits (a dirty work tree is
ignored), and only results.tsv may be read from the work tree, where autoresearch leaves it
untracked, and only when REF is what is checked out (else REF's committed results.tsv, or none).
The plan's notes say which results.tsv was read and so which mode the import ran in. A REF that is
not a local branch but one remote's (a fresh clone) is read there, with a note. Writing never
touches the user's work tree or index: trees are built in a temporary index file (GIT_INDEX_FILE)
from the base commit's tree with train.py replaced, committed with commit-tree and published with
update-ref.

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

`evo:RUN[:N]` (`seed_from_evo`) imports the run's decided candidates the same way (accepted: kept,
rejected: discarded, failed: crashed), and the seed is the re-measured child of candidate N.
"""

from __future__ import annotations

import math
import re
import tempfile
from dataclasses import dataclass
from itertools import islice
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import git as gitpython
from git.exc import GitCommandError, InvalidGitRepositoryError, NoSuchPathError

from evo.archive import Archive, ArchiveError, Candidate
from evo.core import format as fmt
from evo.core.lineage import ancestors, best as best_of, nearest
from evo.engine.seeding import (STATUSES, UNRECORDED, Imported, ImportPlan, SeedError, SeedPlan, find_candidate,
                                seed_from_evo)

TRAIN = "train.py"
RESULTS = "results.tsv"
COLUMNS = ("commit", "val_bpb", "memory_gb", "status", "description")
MAX_TIP_HISTORY = 200          # without a results.tsv: at most this many train.py commits as history
MAX_LINEAGE_LINES = 40         # lineage lines in an export's commit message
EVO_NAME, EVO_EMAIL = "evo", "evo@localhost"
_HEX = re.compile(r"[0-9a-fA-F]{4,64}")
_TRAILER = re.compile(r"^(Evo-[A-Za-z-]+):\s*(.*?)\s*$", re.MULTILINE)


class GitError(SeedError):
    """Bad input for git import or export (not a repository, unknown ref, bad results.tsv, a branch
    that exists): one sentence."""


# ---------------------------------------------------------------------------
# results.tsv (pure)
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class ResultRow:
    line: int                     # 1-based line in results.tsv
    commit: str                   # a (short) hash as written, or "baseline"
    val_bpb: float | None         # None for crashes (written 0.000000) and unusable values
    memory_gb: float | None
    status: str                   # keep, discard or crash
    description: str

    @property
    def is_baseline(self) -> bool:
        return self.commit == "baseline"


def parse_results_tsv(text: str) -> list[ResultRow]:
    """autoresearch's results.tsv: `commit val_bpb memory_gb status description`, tab-separated
    (lines without a tab are split on whitespace). Blank lines, repeated headers, surrounding
    whitespace and exact duplicate rows are tolerated; a malformed row is a GitError naming it."""
    rows: list[ResultRow] = []
    seen: set[tuple] = set()
    index = {name: i for i, name in enumerate(COLUMNS)}
    width = len(COLUMNS)  # columns the header names; extra named columns are ignored
    for lineno, raw in enumerate(text.lstrip("\ufeff").splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        fields = [f.strip() for f in line.split("\t")] if "\t" in line else line.split(None, width - 1)
        names = [f.lower() for f in fields]
        if names[0] == "commit" or all(n in names for n in ("commit", "val_bpb", "status")):
            # the header (also when repeated by concatenated files), in any column order
            if all(n in names for n in ("commit", "val_bpb", "status")):
                index = {name: names.index(name) for name in COLUMNS if name in names}
                width = len(names)
            continue
        if len(fields) <= max(index["commit"], index["val_bpb"], index["status"]):
            raise GitError(f"results.tsv line {lineno} has {len(fields)} field(s), expected "
                           f"commit, val_bpb, memory_gb, status and description separated by tabs: {line!r}.")
        commit = fields[index["commit"]]
        if commit.lower() == "baseline":
            commit = "baseline"
        elif not _HEX.fullmatch(commit):
            raise GitError(f"results.tsv line {lineno}: {commit!r} is neither a commit hash nor 'baseline'.")
        else:
            commit = commit.lower()
        status = fields[index["status"]].lower()
        if status not in STATUSES:
            raise GitError(f"results.tsv line {lineno}: status {fields[index['status']]!r} is not keep, discard or crash.")
        val_bpb = _float(fields[index["val_bpb"]])
        if val_bpb is None and status != "crash":
            raise GitError(f"results.tsv line {lineno}: val_bpb {fields[index['val_bpb']]!r} is not a number.")
        if val_bpb is not None and val_bpb <= 0:
            val_bpb = None  # crashes are written 0.000000
        memory_gb = None
        if "memory_gb" in index and index["memory_gb"] < len(fields):
            memory_gb = _float(fields[index["memory_gb"]])  # informational only
        description = ""
        d = index.get("description")
        if d is not None and d < len(fields):
            # tabs inside a description: when the header ends with it, everything after belongs to it
            rest = fields[d:] if d == width - 1 else [fields[d]]
            description = " ".join(f for f in rest if f)
        row = ResultRow(lineno, commit, val_bpb, memory_gb, status, description)
        key = (row.commit, row.val_bpb, row.status, row.description)
        if key in seen:
            continue
        seen.add(key)
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------
# Repository helpers
# ---------------------------------------------------------------------------

def _open_repo(path: Path, *, search_parents: bool = False) -> gitpython.Repo:
    try:
        return gitpython.Repo(path, search_parent_directories=search_parents)
    except NoSuchPathError:
        raise GitError(f"{path} does not exist.") from None
    except InvalidGitRepositoryError:
        raise GitError(f"{path} is not a git repository.") from None


def _git_failed(e: GitCommandError, where: object) -> GitError:
    cmd = e.command[1] if isinstance(e.command, (list, tuple)) and len(e.command) > 1 else "command"
    detail = " ".join((e.stderr or "").split()).removeprefix("stderr: ")
    if detail.startswith("'") and detail.endswith("'"):
        detail = detail[1:-1]
    detail = detail.rstrip(".")
    return GitError(f"git {cmd} failed in {where}: {detail or f'exit status {e.status}'}.")


def _head_sha(repo: gitpython.Repo) -> str | None:
    try:
        return repo.head.commit.hexsha
    except ValueError:  # unborn HEAD: no commits yet
        return None


def _resolve_ref(repo: gitpython.Repo, ref: str, where: object, notes: list[str]) -> tuple[str, str]:
    """REF -> (commit sha, the name it was read as). A branch that exists only as one remote's
    (a fresh clone has no local autoresearch/<tag>) is read there, with a note."""
    if ref.startswith("-"):
        raise GitError(f"{ref!r} is not a branch, tag or commit in {where}.")
    sha = _ref_sha(repo, f"{ref}^{{commit}}")
    if sha is not None:
        return sha, ref
    remote = [name for name in (f"{r.name}/{ref}" for r in repo.remotes) if _ref_sha(repo, f"refs/remotes/{name}")]
    if len(remote) == 1:
        notes.append(f"{ref!r} is not a local branch in {where}: read the remote branch {remote[0]}")
        return _ref_sha(repo, f"refs/remotes/{remote[0]}^{{commit}}"), remote[0]
    hint = f"; the remote branches {' and '.join(remote)} exist: write {where}@{remote[0]}" if remote else ""
    raise GitError(f"{ref!r} is not a branch, tag or commit in {where}{hint}.")


def _blob_of(commit: gitpython.Commit, name: str):
    try:
        obj = commit.tree / name
    except KeyError:
        return None
    return obj if obj.type == "blob" else None


def _decode(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise GitError(f"{what} is not UTF-8 text.") from None


def _trailers(message: str) -> dict[str, str]:
    return {k: v for k, v in _TRAILER.findall(message)}


def _float(text: str | None) -> float | None:
    try:
        value = float(text) if text else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def _subject(commit: gitpython.Commit) -> str:
    return (commit.message.strip().splitlines() or [""])[0].strip()


# ---------------------------------------------------------------------------
# Seeding from a greedy autoresearch repository
# ---------------------------------------------------------------------------

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
            blob = _blob_of(self.commit(sha), TRAIN)
            self._train_blob[sha] = blob.hexsha if blob is not None else None
        return self._train_blob[sha]

    def code(self, sha: str) -> str:
        blob = _blob_of(self.commit(sha), TRAIN)
        return _decode(blob.data_stream.read(), f"train.py at {sha[:7]} in {self.origin}")

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
        export_tip = t is not None and t not in entries and "Evo-Candidate" in _trailers(self.commit(t).message)
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
        description = info.description if info and info.description else _subject(self.commit(best))
        return ImportPlan(code=self.code(best), operator="import",
                          hypothesis=f"imported {best[:7]} from {self.origin}: {description}",
                          imported_val_bpb=val, parent_key=best, history=tuple(history), notes=tuple(self.notes))

    def _trailer_val(self, sha: str) -> float | None:
        trailers = _trailers(self.commit(sha).message)
        return _float(trailers.get("Evo-Val-Bpb")) or _float(trailers.get("Evo-Imported-Val-Bpb"))

    def _chain_item(self, sha: str, parent: str | None, entry: _Entry | None, kept: bool) -> Imported:
        """A commit of the chain: as results.tsv has it, else kept (the baseline, the best, any
        commit in tip mode) or not in results.tsv."""
        if entry is not None:
            description = entry.description or _subject(self.commit(sha))
            return Imported(key=sha, parent_key=parent, code=self.code(sha), hypothesis=f"{description} [{sha[:7]}]",
                            val_bpb=entry.val_bpb, status="keep" if kept else entry.status)
        hypothesis = f"{_subject(self.commit(sha))} [{sha[:7]}]" + ("" if kept else " (not in results.tsv: not kept)")
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
    repo = _open_repo(path)
    with repo:
        try:
            head = _head_sha(repo)
            notes: list[str] = []
            if ref is None:
                if head is None:
                    raise GitError(f"{shown} has no commits.")
                tip, ref_name = head, (repo.active_branch.name if not repo.head.is_detached else "HEAD")
            else:
                tip, ref_name = _resolve_ref(repo, ref, shown, notes)
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
            raise _git_failed(e, shown) from None


def _read_results(repo: gitpython.Repo, tip: str, ref_name: str, *, checked_out: bool,
                  notes: list[str]) -> tuple[str | None, str]:
    """results.tsv and where it was read: from the work tree (where autoresearch leaves it
    untracked) only when REF is what is checked out, else (or when there is none) as committed at
    REF. A work-tree results.tsv of another checkout is never read; a note says so."""
    local = None if repo.bare or not repo.working_tree_dir else Path(repo.working_tree_dir) / RESULTS
    if local is not None and local.is_file():
        if checked_out:
            return _decode(local.read_bytes(), str(local)).lstrip("\ufeff"), str(local)
        notes.append(f"{local} was not read: it belongs to what is checked out there, not to {ref_name} "
                     f"(check out {ref_name} to use it)")
    blob = _blob_of(repo.commit(tip), RESULTS)
    if blob is None:
        return None, ""
    where = f"{ref_name}:{RESULTS}"
    return _decode(blob.data_stream.read(), where), where


def _find(archive: Archive, run_name: str | None, which: str) -> tuple[str, Candidate]:
    try:
        return find_candidate(archive, run_name, which)
    except SeedError as e:
        raise GitError(str(e)) from None


def seed_from(spec: str, archive: Archive | None = None) -> SeedPlan:
    """`evo:RUN[:NUMBER]` (needs the archive) or `REPO[@REF]`."""
    if spec.strip().startswith("evo:"):
        if archive is None:
            raise GitError("evo:RUN needs an archive to read the run from.")
        return seed_from_evo(archive, spec)
    return seed_from_repo(spec)


# ---------------------------------------------------------------------------
# Writing to git without touching the work tree
# ---------------------------------------------------------------------------

class _Trees:
    """Trees that are the base commit's tree with train.py replaced, built in a temporary index."""

    def __init__(self, repo: gitpython.Repo, base: str | None, tmpdir: str):
        self.repo, self.tmp = repo, Path(tmpdir)
        self.env = {"GIT_INDEX_FILE": str(self.tmp / "index")}
        self.mode = "100644"
        if base is not None:
            repo.git.read_tree(base, env=self.env)
            blob = _blob_of(repo.commit(base), TRAIN)
            if blob is not None and blob.mode == 0o100755:
                self.mode = "100755"
        self._cache: dict[str, str] = {}

    def tree_for(self, code: str) -> str:
        if code not in self._cache:
            source = self.tmp / TRAIN
            source.write_bytes(code.encode("utf-8"))
            blob = self.repo.git.hash_object("-w", "--no-filters", str(source))
            self.repo.git.update_index("--add", "--cacheinfo", f"{self.mode},{blob},{TRAIN}", env=self.env)
            self._cache[code] = self.repo.git.write_tree(env=self.env)
        return self._cache[code]


def _timestamp(moment: datetime | None) -> str:
    if moment is None:
        return "@0 +0000"
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return f"@{int(moment.timestamp())} +0000"


def _commit_tree(repo: gitpython.Repo, tree: str, parents: list[str], message: str, when: datetime | None) -> str:
    date = _timestamp(when)
    env = {"GIT_AUTHOR_NAME": EVO_NAME, "GIT_AUTHOR_EMAIL": EVO_EMAIL, "GIT_AUTHOR_DATE": date,
           "GIT_COMMITTER_NAME": EVO_NAME, "GIT_COMMITTER_EMAIL": EVO_EMAIL, "GIT_COMMITTER_DATE": date}
    args = ["--no-gpg-sign"]
    for p in parents:
        args += ["-p", p]
    return repo.git.commit_tree(*args, "-m", message, tree, env=env)


def _ref_sha(repo: gitpython.Repo, refname: str) -> str | None:
    try:
        return repo.git.rev_parse("--verify", "--quiet", refname) or None
    except GitCommandError:
        return None


def _check_branch(repo: gitpython.Repo, branch: str, where: object) -> str:
    refname = f"refs/heads/{branch}"
    try:
        if branch.startswith("-"):
            raise GitCommandError(["check-ref-format"], 1)
        repo.git.check_ref_format(refname)
    except GitCommandError:
        raise GitError(f"{branch!r} is not a valid branch name.") from None
    if refname in _checked_out(repo):
        raise GitError(f"branch {branch!r} is checked out in {where} (or one of its worktrees); export to "
                       f"another branch, or check out another branch first.")
    return refname


def _checked_out(repo: gitpython.Repo) -> set[str]:
    """Branches checked out in the repository's work tree and its linked worktrees."""
    try:
        listing = repo.git.worktree("list", "--porcelain")
        return {line.split(" ", 1)[1] for line in listing.splitlines() if line.startswith("branch ")}
    except GitCommandError:
        try:
            return set() if repo.head.is_detached else {repo.head.reference.path}
        except (TypeError, ValueError):
            return set()


def _trailer_block(run_name: str, c: Candidate) -> str:
    lines = [f"Evo-Run: {run_name}", f"Evo-Candidate: {c.number}", f"Evo-Operator: {c.operator}"]
    if c.val_bpb is not None:
        lines.append(f"Evo-Val-Bpb: {c.val_bpb:.6f}")
    if c.imported_val_bpb is not None:
        lines.append(f"Evo-Imported-Val-Bpb: {c.imported_val_bpb:.6f}")
    lines.append(f"Evo-Code: {c.code_hash[:16]}")
    return "\n".join(lines)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def candidate_message(archive: Archive, run_name: str, c: Candidate, sigma: float | None = None) -> str:
    """Subject: the hypothesis; body: metrics, rationale, lineage from the root; evo trailers."""
    subject = _one_line(c.hypothesis) or f"evo run {run_name} candidate {c.number} ({c.operator})"
    parts = [subject, ""]
    metrics = [f"evo run {run_name}, candidate #{c.number} ({c.operator}), state {c.state}"]
    parts += metrics + fmt.measurements(c, sigma)
    if c.rationale.strip():
        parts += ["", c.rationale.strip()]
    chain = ancestors(c, archive.candidate_by_id) + [c]
    parts += ["", "Lineage (root -> this):"]
    shown = chain if len(chain) <= MAX_LINEAGE_LINES else chain[:5] + [None] + chain[-(MAX_LINEAGE_LINES - 6):]
    for node in shown:
        if node is None:
            parts.append(f"  ... {len(chain) - MAX_LINEAGE_LINES + 1} more ...")
            continue
        extra = ""
        if node.parent2_id is not None:
            other = archive.candidate_by_id(node.parent2_id)
            extra = f" (with #{other.number})"
        parts.append(f"  #{node.number:<4} {node.operator:<9} {fmt.line_bpb(node):<22} {_one_line(node.hypothesis)[:100]}{extra}")
    parts += ["", _trailer_block(run_name, c)]
    return "\n".join(parts) + "\n"


def export_candidate(archive: Archive, run_name: str | None, which: str, branch: str, repo_path: Path,
                     force: bool = False) -> str:
    """Commit candidate `which` (a number or "best") as train.py on a new branch of the repository
    at `repo_path`, on top of its HEAD (so prepare.py and the rest stay). The work tree and the index
    are never touched. Returns the commit's sha."""
    name, cand = _find(archive, run_name, which)
    sigma = _find_run(archive, name).sigma
    repo = _open_repo(Path(repo_path), search_parents=True)
    with repo:
        where = repo.working_tree_dir or repo.git_dir
        try:
            refname = _check_branch(repo, branch, where)
            old = _ref_sha(repo, refname)
            if old is not None and not force:
                raise GitError(f"branch {branch!r} already exists in {where}; pass --force to replace it.")
            base = _head_sha(repo)
            with tempfile.TemporaryDirectory(prefix="evo-git-") as tmp:
                tree = _Trees(repo, base, tmp).tree_for(archive.code(cand.code_hash))
            sha = _commit_tree(repo, tree, [base] if base else [], candidate_message(archive, name, cand, sigma),
                               cand.finished_at or cand.created_at)
            repo.git.update_ref("-m", f"evo export {name} #{cand.number}", refname, sha, old or "")
            return sha
        except GitCommandError as e:
            raise _git_failed(e, where) from None


def export_lineage(archive: Archive, run_name: str, repo_path: Path) -> dict:
    """Write a run's lineage as git history in the repository at `repo_path`: every accepted
    candidate (imported keeps included) is a commit whose parent is its parent candidate's commit,
    crossover/merge children are merge commits, lineage roots sit on the repo's HEAD (or are root
    commits in an empty repository). Branch `evo/<run>` points at the best candidate, and
    `refs/evo/<run>/c<number>` at every leaf. Author, committer and dates are deterministic, so
    exporting again gives the same commits. The work tree and the index are never touched."""
    run = _find_run(archive, run_name)
    name = run.name
    cands = archive.candidates(run.id)
    chosen = [c for c in cands if c.accepted]
    if not chosen:
        raise GitError(f"run {name!r} has no accepted candidate to export yet.")
    by_id = {c.id: c for c in cands}
    repo = _open_repo(Path(repo_path), search_parents=True)
    with repo:
        where = repo.working_tree_dir or repo.git_dir
        try:
            branch_ref = _check_branch(repo, f"evo/{name}", where)
            leaf_prefix = f"refs/evo/{name}/"
            base = _head_sha(repo)
            sha_of: dict[int, str] = {}
            has_child: set[int] = set()

            first_parent = lambda i: by_id[i].parent_id if i in by_id else None  # noqa: E731

            def exported(cid: int | None) -> int | None:
                return nearest(cid, first_parent, sha_of.__contains__)

            with tempfile.TemporaryDirectory(prefix="evo-git-") as tmp:
                trees = _Trees(repo, base, tmp)
                for c in chosen:
                    p1, p2 = exported(c.parent_id), exported(c.parent2_id)
                    parents = [sha_of[p1]] if p1 is not None else ([base] if base else [])
                    if p2 is not None and p2 != p1:
                        parents.append(sha_of[p2])
                    has_child.update(p for p in (p1, p2) if p is not None)
                    tree = trees.tree_for(archive.code(c.code_hash))
                    sha_of[c.id] = _commit_tree(repo, tree, parents, _lineage_message(archive, name, c, by_id, run.sigma),
                                                c.created_at)
            best = best_of(chosen)
            if best is None:  # nothing measured here yet: the seed, else the best imported value
                imported = [c for c in chosen if c.imported_val_bpb is not None]
                best = (by_id[run.seed_id] if run.seed_id in sha_of else
                        min(imported, key=lambda c: (c.imported_val_bpb, c.number)) if imported else chosen[-1])
            repo.git.update_ref("-m", f"evo export --lineage {name}", branch_ref, sha_of[best.id])
            leaves = {f"{leaf_prefix}c{c.number}": sha_of[c.id] for c in chosen if c.id not in has_child}
            existing = repo.git.for_each_ref("--format=%(refname)", leaf_prefix).split()
            for ref in existing:
                if ref not in leaves:
                    repo.git.update_ref("-d", ref)
            for ref, sha in leaves.items():
                repo.git.update_ref("-m", f"evo export --lineage {name}", ref, sha)
            return {"run": name, "branch": f"evo/{name}", "best": {"number": best.number, "commit": sha_of[best.id]},
                    "commits": len(sha_of), "base": base, "refs": sorted(leaves),
                    "commit_of": {by_id[cid].number: sha for cid, sha in sha_of.items()}}
        except GitCommandError as e:
            raise _git_failed(e, where) from None


def _find_run(archive: Archive, run_name: str | None):
    try:
        return archive.find_run(run_name)
    except ArchiveError as e:
        raise GitError(str(e)) from None


def _lineage_message(archive: Archive, run_name: str, c: Candidate, by_id: dict[int, Candidate],
                     sigma: float | None) -> str:
    hypothesis = _one_line(c.hypothesis) or c.operator
    subject = f"#{c.number} {c.operator} {fmt.line_bpb(c)}: {hypothesis}"
    body = []
    if c.parent2_id is not None and c.parent_id is not None:
        body.append(f"{c.operator} of #{by_id[c.parent_id].number} and #{by_id[c.parent2_id].number}")
    elif c.parent_id is not None:
        body.append(f"child of #{by_id[c.parent_id].number}")
    body += fmt.measurements(c, sigma)
    if c.accept_probability is not None and c.accept_temperature is not None:
        body.append(f"accepted at T {c.accept_temperature:.6f} with probability {c.accept_probability:.3f}")
    if c.rationale.strip():
        body += ["", c.rationale.strip()]
    return "\n".join([subject, "", *body, "", _trailer_block(run_name, c)]) + "\n"
