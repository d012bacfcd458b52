"""Landscapes for the search benchmark and tests: what a candidate's code truly scores, how one
evaluation of it measures (seed noise, crashes), and how a simulated operator proposes children.

One instance is one problem instance for one searcher's run: it carries the bench seed (the noise
stream, common to every searcher of that seed) and the operator's memory of rejected ideas.

    ideas      an LLM-like idea pool (ideas.py)
    hpo        real hyperparameter responses with real seed noise (hpo.py)
    deceptive  a double well whose barrier only a worse step crosses (surrogates.py)
    smooth     one bowl over five constants (surrogates.py)
"""

from __future__ import annotations

import random
from typing import Callable, Protocol

from evo.operators import Operator, Parent, Proposal


class Landscape(Protocol):
    name: str
    sigma: float        # the seed noise σ of one evaluation, in val_bpb units
    n_parents: int      # 2 when the operator can merge two parents

    def seed_code(self) -> str: ...
    def true(self, code: str) -> float: ...
    def measure(self, code: str, eval_seed: int) -> float | None: ...   # None: the code crashes
    def propose(self, parents: list[str], rng: random.Random) -> str: ...
    def feedback(self, code: str, parent: str, accepted: bool) -> None: ...   # the operator's memory
    def crossed(self, code: str) -> bool | None: ...                   # past the barrier (deceptive only)


class LandscapeOperator(Operator):
    """The landscape's simulated operator as an evo Operator, so the real Engine searches it. The
    engine tells an operator nothing of its decisions: the operator's memory stays empty."""

    name = "mutate"

    def __init__(self, landscape: Landscape):
        self.landscape, self.n_parents = landscape, landscape.n_parents

    def propose(self, parents: list[Parent], rng: random.Random) -> Proposal:
        return Proposal(code=self.landscape.propose([p.code for p in parents], rng), hypothesis="a simulated idea")


def make(name: str, bench_seed: int) -> Landscape:
    """A fresh instance of landscape `name` for bench seed `bench_seed`."""
    return _FACTORIES[name](bench_seed)


def _ideas(bench_seed: int) -> Landscape:
    from tests.support.landscapes.ideas import IdeaPool
    return IdeaPool(bench_seed)


def _surrogate(kind: str) -> Callable[[int], Landscape]:
    def factory(bench_seed: int) -> Landscape:
        from tests.support.landscapes.surrogates import Surrogate
        return Surrogate(kind, bench_seed)
    return factory


def _hpo(bench_seed: int) -> Landscape:
    from tests.support.landscapes.tabular import TableLandscape
    return TableLandscape(bench_seed)


_FACTORIES: dict[str, Callable[[int], Landscape]] = {
    "ideas": _ideas, "hpo": _hpo, "deceptive": _surrogate("deceptive"), "smooth": _surrogate("smooth")}
NAMES = tuple(_FACTORIES)
