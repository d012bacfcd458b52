"""Reading a git repository (GitPython): open it, resolve a ref, read a blob. Nothing here writes."""

from __future__ import annotations

from pathlib import Path

import git as gitpython
from git.exc import GitCommandError, InvalidGitRepositoryError, NoSuchPathError

from evo.gitio import GitError

TRAIN = "train.py"
RESULTS = "results.tsv"


def open_repo(path: Path, *, search_parents: bool = False) -> gitpython.Repo:
    try:
        return gitpython.Repo(path, search_parent_directories=search_parents)
    except NoSuchPathError:
        raise GitError(f"{path} does not exist.") from None
    except InvalidGitRepositoryError:
        raise GitError(f"{path} is not a git repository.") from None


def git_failed(e: GitCommandError, where: object) -> GitError:
    cmd = e.command[1] if isinstance(e.command, (list, tuple)) and len(e.command) > 1 else "command"
    detail = " ".join((e.stderr or "").split()).removeprefix("stderr: ")
    if detail.startswith("'") and detail.endswith("'"):
        detail = detail[1:-1]
    detail = detail.rstrip(".")
    return GitError(f"git {cmd} failed in {where}: {detail or f'exit status {e.status}'}.")


def head_sha(repo: gitpython.Repo) -> str | None:
    try:
        return repo.head.commit.hexsha
    except ValueError:  # unborn HEAD: no commits yet
        return None


def resolve_ref(repo: gitpython.Repo, ref: str, where: object, notes: list[str]) -> tuple[str, str]:
    """REF -> (commit sha, the name it was read as). A branch that exists only as one remote's
    (a fresh clone has no local autoresearch/<tag>) is read there, with a note."""
    if ref.startswith("-"):
        raise GitError(f"{ref!r} is not a branch, tag or commit in {where}.")
    sha = ref_sha(repo, f"{ref}^{{commit}}")
    if sha is not None:
        return sha, ref
    remote = [name for name in (f"{r.name}/{ref}" for r in repo.remotes) if ref_sha(repo, f"refs/remotes/{name}")]
    if len(remote) == 1:
        notes.append(f"{ref!r} is not a local branch in {where}: read the remote branch {remote[0]}")
        return ref_sha(repo, f"refs/remotes/{remote[0]}^{{commit}}"), remote[0]
    hint = f"; the remote branches {' and '.join(remote)} exist: write {where}@{remote[0]}" if remote else ""
    raise GitError(f"{ref!r} is not a branch, tag or commit in {where}{hint}.")


def blob_of(commit: gitpython.Commit, name: str):
    try:
        obj = commit.tree / name
    except KeyError:
        return None
    return obj if obj.type == "blob" else None


def decode_text(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise GitError(f"{what} is not UTF-8 text.") from None


def ref_sha(repo: gitpython.Repo, refname: str) -> str | None:
    try:
        return repo.git.rev_parse("--verify", "--quiet", refname) or None
    except GitCommandError:
        return None
