"""Repair rounds per 100 proposals on the reply corpus (tests/support/replies.py), for the edit
parser of this tree and of an earlier revision: each reply is parsed, applied to the corpus's
parent and validated as the LLM operator does; a refused reply costs a repair round (a second LLM
call), a misapplied one costs a slot or silently changes the wrong code.

    python3 bench/reply_repairs.py [--before REV]

REV defaults to 7725015 (main before issue 13). Its edits.py and validate.py are loaded from git
as they were; this tree's are imported."""

from __future__ import annotations

import argparse
import subprocess
import sys
import types
from collections import Counter

from _common import ROOT, header, table

from evo.operators.base import OperatorError
from tests.support.replies import CASES, PARENT

BEFORE = "7725015"


def load(rev: str, path: str, name: str) -> types.ModuleType:
    """A module as it was at `rev`."""
    source = subprocess.check_output(["git", "show", f"{rev}:{path}"], cwd=ROOT, text=True)
    module = types.ModuleType(name)
    sys.modules[name] = module  # dataclasses look their module up there
    exec(compile(source, f"{rev}:{path}", "exec"), module.__dict__)
    return module


def outcomes(edits, validate) -> Counter:
    counts: Counter = Counter()
    for case in CASES:
        try:
            parsed = edits.parse_reply(case.reply, truncated=case.truncated)
            code = edits.apply_reply(PARENT, parsed)
            validate.validate_child(code, PARENT)
        except OperatorError:
            counts["refused, recoverable" if case.refused is None else "refused, unusable"] += 1
            continue
        if case.refused is not None:
            counts["applied, should be refused"] += 1
        elif code != case.expected():
            counts["misapplied"] += 1
        else:
            counts["applied" if parsed.hypothesis == case.title else "applied, wrong title"] += 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default=BEFORE, help="the revision to compare with (default %(default)s)")
    args = parser.parse_args()
    header("reply corpus: repair rounds per 100 proposals")
    from evo.operators import edits, validate
    trees = {f"before ({args.before})": (load(args.before, "evo/operators/edits.py", "edits_before"),
                                         load(args.before, "evo/operators/validate.py", "validate_before")),
             "this tree": (edits, validate)}
    recoverable = sum(c.refused is None for c in CASES)
    rows = []
    for label, (e, v) in trees.items():
        n = outcomes(e, v)
        refused = n["refused, recoverable"] + n["refused, unusable"]
        rows.append([label, len(CASES), n["applied"], n["applied, wrong title"], n["misapplied"],
                     n["applied, should be refused"], f"{n['refused, recoverable']}/{recoverable}",
                     n["refused, unusable"], f"{100 * refused / len(CASES):.0f}"])
    table(["parser", "replies", "applied right", "wrong title", "misapplied", "applied, should be refused",
           "recoverable refused", "unusable refused", "repair rounds per 100"], rows)


if __name__ == "__main__":
    main()
