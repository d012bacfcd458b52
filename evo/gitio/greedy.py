"""Seeding from a greedy autoresearch repository: `--seed-from REPO[@REF]` becomes a SeedPlan. This
module reads the repository into a GreedyRun (a commit graph, results.tsv's rows, what each row's
hash may name); evo.gitio.greedy_plan decides the plan from it without git.

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

from pathlib import Path
from typing import Callable

import git as gitpython
from git.exc import GitCommandError

from evo.storage import Archive
from evo.engine.seeding import ImportPlan, SeedPlan, seed_from_evo
from evo.gitio import GitError
from evo.gitio.greedy_plan import MAX_TIP_HISTORY, CommitInfo, GreedyRun, plan_import
from evo.gitio.repo import RESULTS, TRAIN, blob_of, decode_text, git_failed, head_sha, open_repo, resolve_ref
from evo.gitio.results_tsv import ResultRow, parse_results_tsv


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


class _OnDemand(dict):
    """A dict whose missing values are read on first use: the planner visits only part of a long
    history."""

    def __init__(self, read: Callable[[str], object]):
        super().__init__()
        self._read = read

    def __missing__(self, key: str):
        value = self[key] = self._read(key)
        return value


def read_greedy_run(repo: gitpython.Repo, tip: str, ref_name: str, rows: list[ResultRow], origin: str,
                    notes: list[str]) -> GreedyRun:
    """The repository as the planner sees it. A row's hash names the commits reachable from REF
    that start with it; only when none does, any commit of the repository (discards were reset
    away); blobs and trees never count."""
    on_ref: list[str] = repo.git.rev_list(tip).split() if rows else []

    def candidates(text: str) -> tuple[str, ...]:
        found = [sha for sha in on_ref if sha.startswith(text)]
        if not found:
            found = [sha for sha in repo.git.rev_parse(f"--disambiguate={text}").split()
                     if repo.git.cat_file("-t", sha) == "commit"]
        return tuple(found)

    matches = {r.commit: candidates(r.commit) for r in rows if not r.is_baseline}
    named = dict.fromkeys(found[0] for found in matches.values() if len(found) == 1 and found[0] != tip)
    # parents as rev-list sees them (a shallow clone's boundary has none); the planner wants oldest first
    graph = [line.split() for line in repo.git.rev_list("--parents", "--topo-order", tip, *named).splitlines()]
    parents = {shas[0]: tuple(shas[1:]) for shas in graph}

    def commit_info(sha: str) -> CommitInfo:
        commit = repo.commit(sha)
        blob = blob_of(commit, TRAIN)
        return CommitInfo(sha, parents[sha], commit.message, blob.hexsha if blob is not None else None)

    def code(sha: str) -> str:
        blob = blob_of(repo.commit(sha), TRAIN)
        return decode_text(blob.data_stream.read(), f"train.py at {sha[:7]} in {origin}")

    return GreedyRun(origin=origin, ref_name=ref_name, tip=tip, rows=tuple(rows), commits=_OnDemand(commit_info),
                     code=_OnDemand(code), matches=matches, order=[shas[0] for shas in reversed(graph)],
                     notes=tuple(notes))


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
            return plan_import(read_greedy_run(repo, tip, ref_name, rows, origin, notes))
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
