"""Writing candidates and lineages to git without touching the work tree or the index: trees are the
base commit's tree with train.py replaced, built in a temporary index file (GIT_INDEX_FILE),
committed with commit-tree and published with update-ref."""

from __future__ import annotations

import tempfile
from datetime import datetime, timezone
from pathlib import Path

import git as gitpython
from git.exc import GitCommandError

from evo.storage import Archive, ArchiveError, Candidate
from evo.core import format as fmt
from evo.core.lineage import ancestors, best as best_of, nearest
from evo.engine.seeding import SeedError, find_candidate
from evo.gitio import GitError
from evo.gitio.repo import TRAIN, blob_of, git_failed, head_sha, open_repo, ref_sha

MAX_LINEAGE_LINES = 40         # lineage lines in an export's commit message
EVO_NAME, EVO_EMAIL = "evo", "evo@localhost"


def _find(archive: Archive, run_name: str | None, which: str) -> tuple[str, Candidate]:
    try:
        return find_candidate(archive, run_name, which)
    except SeedError as e:
        raise GitError(str(e)) from None


class _Trees:
    """Trees that are the base commit's tree with train.py replaced, built in a temporary index."""

    def __init__(self, repo: gitpython.Repo, base: str | None, tmpdir: str):
        self.repo, self.tmp = repo, Path(tmpdir)
        self.env = {"GIT_INDEX_FILE": str(self.tmp / "index")}
        self.mode = "100644"
        if base is not None:
            repo.git.read_tree(base, env=self.env)
            blob = blob_of(repo.commit(base), TRAIN)
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


def exported_commits(repo_path: Path, run_name: str) -> dict[int, str]:
    """{candidate number: commit} of a run's lineage as `evo export --lineage` wrote it to the
    repository at `repo_path` (read from the commits' Evo-Run and Evo-Candidate trailers); empty
    when there is no repository there or the run was never exported to it."""
    try:
        repo = open_repo(Path(repo_path), search_parents=True)
    except GitError:
        return {}
    with repo:
        if ref_sha(repo, f"refs/heads/evo/{run_name}") is None:
            return {}
        fields = "%H%x09%(trailers:key=Evo-Run,valueonly,separator=%x2C)%x09%(trailers:key=Evo-Candidate,valueonly,separator=%x2C)"
        try:
            log = repo.git.log(f"--format={fields}", f"refs/heads/evo/{run_name}", f"--glob=refs/evo/{run_name}/*")
        except GitCommandError:
            return {}
    commits: dict[int, str] = {}
    for line in log.splitlines():
        sha, run, number = (line.split("\t") + ["", ""])[:3]
        if run.strip() == run_name and number.strip().isdigit():
            commits.setdefault(int(number.strip()), sha)
    return commits


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
    repo = open_repo(Path(repo_path), search_parents=True)
    with repo:
        where = repo.working_tree_dir or repo.git_dir
        try:
            refname = _check_branch(repo, branch, where)
            old = ref_sha(repo, refname)
            if old is not None and not force:
                raise GitError(f"branch {branch!r} already exists in {where}; pass --force to replace it.")
            base = head_sha(repo)
            with tempfile.TemporaryDirectory(prefix="evo-git-") as tmp:
                tree = _Trees(repo, base, tmp).tree_for(archive.code(cand.code_hash))
            sha = _commit_tree(repo, tree, [base] if base else [], candidate_message(archive, name, cand, sigma),
                               cand.finished_at or cand.created_at)
            repo.git.update_ref("-m", f"evo export {name} #{cand.number}", refname, sha, old or "")
            return sha
        except GitCommandError as e:
            raise git_failed(e, where) from None


def export_lineage(archive: Archive, run_name: str, repo_path: Path) -> dict:
    """Write a run's lineage as git history in the repository at `repo_path`: every accepted
    candidate (imported keeps included) is a commit whose parent is its parent candidate's commit,
    crossover/merge children are merge commits, lineage roots sit on the repo's HEAD (or are root
    commits in an empty repository). Branch `evo/<run>` points at the best candidate, and
    `refs/evo/<run>/c<number>` at every leaf. Author, committer and dates are deterministic, so
    exporting again gives the same commits. The work tree and the index are never touched. A path
    that does not exist yet, or an empty folder, is made a new repository first."""
    run = _find_run(archive, run_name)
    name = run.name
    cands = archive.candidates(run.id)
    chosen = [c for c in cands if c.accepted]
    if not chosen:
        raise GitError(f"run {name!r} has no accepted candidate to export yet.")
    by_id = {c.id: c for c in cands}
    repo_path = Path(repo_path)
    if not repo_path.exists() or (repo_path.is_dir() and not any(repo_path.iterdir())):
        gitpython.Repo.init(repo_path, mkdir=True).close()  # a fresh path becomes a repository of the lineage alone
    repo = open_repo(repo_path, search_parents=True)
    with repo:
        where = repo.working_tree_dir or repo.git_dir
        try:
            branch_ref = _check_branch(repo, f"evo/{name}", where)
            leaf_prefix = f"refs/evo/{name}/"
            base = head_sha(repo)
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
            raise git_failed(e, where) from None


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
