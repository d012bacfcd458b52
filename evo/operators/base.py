"""The operator interface: parents in; child code, a one-line hypothesis and a rationale out."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Protocol


class OperatorError(Exception):
    """The operator could not make a child (bad output, nothing to change): one sentence.
    The engine archives the attempt as FAIL(invalid); `llm_calls`, if set, are kept with it."""

    llm_calls: list[dict] = []


class OperatorUnavailable(Exception):
    """The operator cannot work right now (its API is down after retries). The engine pauses
    proposals and tries again later; nothing is archived as a candidate."""

    llm_calls: list[dict] = []


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
    # operator: the glossary name that made it (default: the operator's own name);
    # parent2_used: whether the second parent contributed; llm_calls: dicts of LLMCall fields
    extra: dict = field(default_factory=dict)


class Operator(Protocol):
    name: str
    n_parents: int

    def propose(self, parents: list[Parent], rng: random.Random) -> Proposal: ...

    # Optional: `propose_fix(failed: Parent, rng) -> Proposal` repairs a child that crashed.
