"""How a run's candidates are counted, pure: one word per candidate (its outcome) and the totals
that every view prints. The report's header and figures, `evo status`, `evo list`, `evo show` and
the live header all read these, so two places can never count one run differently.

A candidate plays one of three roles: imported **history** (measured elsewhere: a greedy run's
commits, another run's candidates), the **seed** (measured here, even when it is an import), or a
**child** (made by this run's operators after the seed). Budgets (`--max-candidates`) and
acceptance rates count children only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

# Outcomes, in the order views list them.
ACCEPTED, REJECTED, UNDECIDED, RUNNING, WAITING, FAILED, PRUNED = (
    "accepted", "rejected", "undecided", "running", "waiting", "failed", "pruned")
OUTCOMES = (ACCEPTED, REJECTED, UNDECIDED, RUNNING, WAITING, FAILED, PRUNED)
HISTORY, SEED, CHILD = "history", "seed", "child"


def outcome(state: str, accepted: bool | None, imported: bool = False) -> str:
    """One word for where a candidate stands: accepted or rejected once decided, undecided while
    evaluated but not judged yet (awaiting its replicates or a confirmation), running, waiting,
    failed or pruned. Imported history was decided where it was measured (kept or discarded)."""
    if state == "FAIL":
        return FAILED
    if state == "PRUNED":
        return PRUNED
    if accepted is not None and (state == "COMPLETE" or imported):
        return ACCEPTED if accepted else REJECTED
    if state == "RUNNING":
        return RUNNING
    if state == "WAITING" and not imported:
        return WAITING
    return UNDECIDED


# How imported history's outcomes read: the words of the run it came from (autoresearch's results.tsv).
HISTORY_WORDS = {ACCEPTED: "kept", REJECTED: "discarded", FAILED: "crashed"}


def word(outcome_: str, role_: str) -> str:
    """The outcome as a person reads it for this role: history was kept, discarded or crashed."""
    return HISTORY_WORDS.get(outcome_, outcome_) if role_ == HISTORY else outcome_


def role(operator: str, is_seed: bool) -> str:
    return SEED if is_seed else HISTORY if operator == "import" else CHILD


def candidate_outcome(c, seed_id: int | None) -> tuple[str, str]:
    """(role, outcome) of a candidate row (any object with the candidate's fields)."""
    r = role(c.operator, c.id == seed_id)
    return r, outcome(c.state, c.accepted, r == HISTORY)


@dataclass(frozen=True)
class Counts:
    """A run's candidates counted by role and outcome, and how many are population members now."""
    children: dict[str, int] = field(default_factory=dict)   # outcome -> children
    history: dict[str, int] = field(default_factory=dict)    # outcome -> imported history
    seed: str | None = None                                  # the seed's outcome, None before it exists
    members: int = 0

    @property
    def total(self) -> int:
        return self.n_children + self.n_history + (self.seed is not None)

    @property
    def n_children(self) -> int:
        return sum(self.children.values())

    @property
    def n_history(self) -> int:
        return sum(self.history.values())

    def __getitem__(self, outcome_: str) -> int:
        """Children with this outcome (0 if none)."""
        return self.children.get(outcome_, 0)

    @property
    def judged(self) -> int:
        return self[ACCEPTED] + self[REJECTED]

    @property
    def in_flight(self) -> int:
        return self[RUNNING] + self[WAITING] + self[UNDECIDED]

    def children_line(self, inline: bool = False) -> str:
        """'12 children: 3 accepted, 6 rejected, 2 failed, 1 running' (outcomes with none left out);
        `inline`: '12 children (3 accepted, ...)', for a line that goes on."""
        parts = ", ".join(f"{self[o]} {o}" for o in OUTCOMES if self[o])
        noun = "child" if self.n_children == 1 else "children"
        return f"{self.n_children} {noun}" + ((f" ({parts})" if inline else f": {parts}") if parts else "")

    def line(self) -> str:
        """The whole count in one line, as `evo status` prints it."""
        parts = [f"seed {self.seed}" if self.seed else "no seed yet", self.children_line()]
        if self.history:
            kept = self.history.get(ACCEPTED, 0)
            parts.append(f"{self.n_history} imported ({kept} kept)")
        return f"candidates {self.total}: " + "; ".join(parts)


def tally(groups: Iterable[tuple[str, str, int, int]]) -> Counts:
    """Counts from (role, outcome, candidates, members) groups: what SQL's GROUP BY returns, or
    one group per candidate row."""
    children: dict[str, int] = {}
    history: dict[str, int] = {}
    seed, members = None, 0
    for r, o, n, m in groups:
        members += m
        if r == SEED:
            seed = o
        else:
            target = children if r == CHILD else history
            target[o] = target.get(o, 0) + n
    return Counts(children, history, seed, members)


def count(cands: Iterable, seed_id: int | None) -> Counts:
    """Counts of candidate rows (the report's snapshot)."""
    return tally((*candidate_outcome(c, seed_id), 1, int(bool(c.in_population))) for c in cands)
