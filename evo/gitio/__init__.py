"""Git in and out: seed a run from a greedy autoresearch repository, and write candidates and whole
lineages back to git. results_tsv.py parses results.tsv (pure), repo.py reads a repository,
greedy.py reads a greedy run's repository into a commit graph, greedy_plan.py plans its import from
that graph (pure), export.py writes commits.

Reading never modifies the repository: train.py always comes from commits (a dirty work tree is
ignored), and only results.tsv may be read from the work tree, where autoresearch leaves it
untracked, and only when REF is what is checked out (else REF's committed results.tsv, or none).
The plan's notes say which results.tsv was read and so which mode the import ran in. A REF that is
not a local branch but one remote's (a fresh clone) is read there, with a note. Writing never
touches the user's work tree or index: trees are built in a temporary index file (GIT_INDEX_FILE)
from the base commit's tree with train.py replaced, committed with commit-tree and published with
update-ref.
"""

from __future__ import annotations

from evo.engine.seeding import SeedError


class GitError(SeedError):
    """Bad input for git import or export (not a repository, unknown ref, bad results.tsv, a branch
    that exists): one sentence."""
