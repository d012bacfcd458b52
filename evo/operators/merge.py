"""Crossover without an LLM: a 3-way text merge of two parents against their lowest common
ancestor (evo.core.lineage finds it), with `git merge-file` semantics (through GitPython)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import git


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
