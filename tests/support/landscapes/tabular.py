"""The `hpo` landscape: a real HPO table (hpo.py) as the benchmark's Landscape. The operator moves
one or two hyperparameters to adjacent grid values, or merges two parents by uniform crossover;
like a random tweak it remembers nothing."""

from __future__ import annotations

import random

from tests.support.landscapes import hpo

# blood_transfusion: greedy ends furthest from the table's best (about 1.9σ after 100 evaluations),
# so the searchers have room to differ; kc1 (hpo.DEFAULT) leaves about 1σ.
TABLE = "hpo-blood_transfusion-mlp"
MERGE_SHARE = 0.2


class TableLandscape:
    n_parents = 2

    def __init__(self, bench_seed: int, table: str = TABLE):
        self.table = hpo.load(table)
        self.name, self.sigma, self.bench_seed = "hpo", self.table.sigma, bench_seed

    def seed_code(self) -> str:
        return self.table.seed_code()

    def true(self, code: str) -> float:
        return self.table.true(code)

    def measure(self, code: str, eval_seed: int) -> float:
        return self.table.measure(code, eval_seed, self.bench_seed)

    def propose(self, parents: list[str], rng: random.Random) -> str:
        if len(parents) > 1 and parents[0] != parents[1] and rng.random() < MERGE_SHARE:
            child = self.table.merge(parents[0], parents[1], rng)
            if child not in parents:
                return child
        return self.table.neighbour(parents[0], rng)

    def feedback(self, code: str, parent: str, accepted: bool) -> None:
        """Grid moves remember nothing."""

    def crossed(self, code: str) -> bool | None:
        return None
