"""Crossover without an LLM: a 3-way text merge of two parents against their lowest common
ancestor, with `git merge-file` semantics (through GitPython), and the ancestor search itself."""

from __future__ import annotations

import tempfile
from collections import deque
from pathlib import Path
from typing import Mapping, Sequence

import git

ParentMap = Mapping[int, "int | None | Sequence[int | None]"]


def merge3(base: str, ours: str, theirs: str, labels: tuple[str, str, str] = ("A", "ancestor", "B")) -> tuple[str, bool]:
    """Merge the changes base->ours and base->theirs. Returns (text, clean); a text that is not
    clean holds git's conflict markers. Raises RuntimeError when git itself fails."""
    with tempfile.TemporaryDirectory(prefix="evo-merge-") as tmp:
        paths = []
        for name, text in (("ours.py", ours), ("base.py", base), ("theirs.py", theirs)):
            path = Path(tmp) / name
            path.write_bytes(text.encode("utf-8"))
            paths.append(str(path))
        status, out, err = git.Git(tmp).execute(
            ["git", "merge-file", "-p", "-L", labels[0], "-L", labels[1], "-L", labels[2], *paths],
            with_extended_output=True, with_exceptions=False, strip_newline_in_stdout=False,
            stdout_as_string=False)
    if status < 0 or status > 127:
        raise RuntimeError(f"git merge-file failed (status {status}): {err.strip()}")
    return out.decode("utf-8", errors="replace"), status == 0


def _parents_of(node: int, parents: ParentMap) -> list[int]:
    value = parents.get(node)
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    return [p for p in value if p is not None]


def _distances(start: int, parents: ParentMap) -> dict[int, int]:
    """Generations from `start` to each of its ancestors (itself at 0), over every parent edge."""
    seen = {start: 0}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for p in _parents_of(node, parents):
            if p not in seen:
                seen[p] = seen[node] + 1
                queue.append(p)
    return seen


def lowest_common_ancestor(a: int, b: int, parents: ParentMap) -> int | None:
    """The common ancestor of a and b (either may be the other's) closest to both: the least
    total number of generations, ties broken by the nearer of the two, then the newer id.
    `parents` maps a candidate id to its parent id, None, or a sequence of parent ids."""
    da, db = _distances(a, parents), _distances(b, parents)
    common = set(da) & set(db)
    if not common:
        return None
    return min(common, key=lambda n: (da[n] + db[n], max(da[n], db[n]), -n))
