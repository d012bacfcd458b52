"""autoresearch's results.tsv, parsed without git: rows of `commit val_bpb memory_gb status
description`, columns found by the header's names."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from evo.engine.seeding import STATUSES
from evo.gitio import GitError

COLUMNS = ("commit", "val_bpb", "memory_gb", "status", "description")
_HEX = re.compile(r"[0-9a-fA-F]{4,64}")


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
        val_bpb = to_float(fields[index["val_bpb"]])
        if val_bpb is None and status != "crash":
            raise GitError(f"results.tsv line {lineno}: val_bpb {fields[index['val_bpb']]!r} is not a number.")
        if val_bpb is not None and val_bpb <= 0:
            val_bpb = None  # crashes are written 0.000000
        memory_gb = None
        if "memory_gb" in index and index["memory_gb"] < len(fields):
            memory_gb = to_float(fields[index["memory_gb"]])  # informational only
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


def to_float(text: str | None) -> float | None:
    try:
        value = float(text) if text else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None
