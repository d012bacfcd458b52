"""The operator interface: parents in; child code, a one-line hypothesis and a rationale out."""

from __future__ import annotations

import ast
import random
import threading
from dataclasses import dataclass, field

# Proposals run in threads, and CPython 3.11's parser is not safe to run in two at once (a
# SystemError "AST constructor recursion depth mismatch", gh-106905): one parse at a time.
_PARSING = threading.Lock()


def parse(code: str) -> ast.Module:
    """ast.parse, safe from any proposal thread."""
    with _PARSING:
        return ast.parse(code)


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
    heat: float | None = None   # the search's temperature when it was chosen, in units of the noise σ̂


@dataclass
class Proposal:
    code: str
    hypothesis: str
    rationale: str = ""
    model: str | None = None
    # operator: the glossary name that made it (default: the operator's own name);
    # parent2_used: whether the second parent contributed; llm_calls: dicts of LLMCall fields
    extra: dict = field(default_factory=dict)


class Operator:
    """Every hook the engine calls, declared here: an operator subclasses this, names itself
    (`name`, a glossary operator), says how many parents it takes, and overrides what it does."""

    name: str
    n_parents: int
    repairs: bool = False  # whether propose_fix repairs a child that crashed

    def propose(self, parents: list[Parent], rng: random.Random) -> Proposal:
        raise NotImplementedError

    def propose_fix(self, failed: Parent, rng: random.Random) -> Proposal:
        """A repair of the crashed child `failed`; called only when `repairs` is set."""
        raise NotImplementedError

    def record_outcome(self, model: str | None, won: float, cost: float) -> None:
        """What a proposal by `model` earned, in [0, 1] (the posterior probability that the child
        beat its competitor; 0 for nothing usable), and what its LLM calls cost (the LLM operator's
        model bandit learns from it); operators without models ignore it."""
