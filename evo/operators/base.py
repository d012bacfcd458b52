"""The operator interface: parents in; child code, a one-line hypothesis and a rationale out."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Protocol


class OperatorError(Exception):
    """The operator could not make a child (bad output, nothing to change): one sentence."""


@dataclass(frozen=True)
class Parent:
    id: int
    number: int
    code: str
    hypothesis: str
    val_bpb: float | None


@dataclass
class Proposal:
    code: str
    hypothesis: str
    rationale: str = ""
    model: str | None = None
    extra: dict = field(default_factory=dict)


class Operator(Protocol):
    name: str
    n_parents: int

    def propose(self, parents: list[Parent], rng: random.Random) -> Proposal: ...
