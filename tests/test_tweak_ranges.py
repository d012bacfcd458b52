"""The tweak operator keeps every perturbed constant in its natural range (issue 9, item 21)."""

from __future__ import annotations

import random

import pytest

from evo.operators.tweak import FACTORS, Constant, find_constants, in_unit_interval, perturb_by, tweak

# Constants as seed_train.py and autoresearch-style train.py files spell them (the model and batch
# size are plain numbers in the seed of a run, so they are tweaked too)
SOURCE = '''
MUON_MOMENTUM = 0.95
MUON_MOMENTUM_START = 0.85
ADAM_BETA1 = 0.8
ADAM_BETA2 = 0.95
EMA_DECAY = 0.9999
DROPOUT = 0.1
WARMDOWN_RATIO = 0.5
WARMUP_FRAC = 1.0
DEPTH = 8
ASPECT_RATIO = 64
HEAD_DIM = 128
TOTAL_BATCH_SIZE = 2**19
DEVICE_BATCH_SIZE = 128
MATRIX_LR = 0.04
WEIGHT_DECAY = 0.2
LOGIT_SOFTCAP = 15.0
NS_STEPS = 5
N_KV_HEAD = 1
NEG_SHIFT = -1
'''
UNIT = {"MUON_MOMENTUM", "MUON_MOMENTUM_START", "ADAM_BETA1", "ADAM_BETA2", "EMA_DECAY", "DROPOUT",
        "WARMDOWN_RATIO", "WARMUP_FRAC"}


def _constant(name: str, value: float | int) -> Constant:
    return find_constants(f"{name} = {value!r}\n")[0]


def test_which_constants_live_in_the_unit_interval() -> None:
    assert {c.name for c in find_constants(SOURCE) if in_unit_interval(c)} == UNIT


@pytest.mark.parametrize("factor", FACTORS)
@pytest.mark.parametrize("name, value", [(c.name, c.value) for c in find_constants(SOURCE)])
def test_every_step_stays_in_the_natural_range(name: str, value: float | int, factor: float) -> None:
    c = _constant(name, value)
    new = perturb_by(c, factor)
    assert new != value and type(new) is type(value)
    if name in UNIT:
        assert 0 < new < 1
        assert (new > value) == (factor > 1) or value == 1.0, "the step keeps its direction"
    elif isinstance(value, int):
        assert abs(new) >= 1 and (new > 0) == (value > 0)
    else:
        assert new > 0 and (new > value) == (factor > 1)


def test_momentum_of_the_issue_no_longer_leaves_the_interval() -> None:
    # 0.95 * 1.25 = 1.1875 and 0.95 * 1.4 = 1.33 before; scaling the odds keeps both below 1
    assert 0.95 < perturb_by(_constant("MUON_MOMENTUM", 0.95), 1.25) < 1
    assert 0.95 < perturb_by(_constant("ADAM_BETA2", 0.95), 1.4) < 1
    assert perturb_by(_constant("MUON_MOMENTUM", 0.95), 2.0) == pytest.approx(0.9744, abs=1e-4)


def test_tweak_written_code_keeps_ranges_over_many_draws() -> None:
    for seed in range(300):
        code, changes = tweak(SOURCE, random.Random(seed))
        written = {c.name: c.value for c in find_constants(code)}
        for name, old, new in changes:
            assert written[name] == new != old
            if name in UNIT:
                assert 0 < new < 1
            elif isinstance(old, int):
                assert abs(new) >= 1 and (new > 0) == (old > 0)
            else:
                assert new > 0


def test_one_cannot_shrink_to_zero_and_grows_instead() -> None:
    for factor in FACTORS:
        assert perturb_by(_constant("N_KV_HEAD", 1), factor) >= 2
        assert perturb_by(_constant("NEG_SHIFT", -1), factor) <= -2


def test_a_fraction_at_the_edge_of_rounding_still_moves() -> None:
    # 0.9999 with its odds doubled rounds to 1.0 at four digits: it takes a visible step instead
    up = perturb_by(_constant("EMA_DECAY", 0.9999), 2.0)
    assert 0.9999 < up < 1
    code, _ = tweak("EMA_DECAY = 0.9999\n", random.Random(0), n=1)
    assert find_constants(code)[0].value != 0.9999
