"""The functional core: acceptance, cooling, selection, the tweak operator, log parsing."""

from __future__ import annotations

import ast
import math
import random

import pytest

from evo.core import acceptance, selection
from evo.launch.logs import scored_verdict, SummaryError, classify, parse_curve, parse_summary
from evo.operators.base import OperatorError
from evo.operators.tweak import find_constants, tweak

# ----- acceptance -------------------------------------------------------------------------------

def test_zero_temperature_never_accepts_worse_or_equal() -> None:
    rng = random.Random(0)
    for delta in (1e-9, 1e-4, 0.0, 1.0):
        assert not any(acceptance.accept(delta, 0.0, rng.random())[0] for _ in range(1000))
    assert acceptance.accept(-1e-9, 0.0, 0.999)[0]


def test_better_is_always_accepted() -> None:
    assert acceptance.acceptance_probability(-0.01, 0.001) == 1.0


def test_huge_temperature_accepts_almost_everything() -> None:
    rng = random.Random(1)
    rate = sum(acceptance.accept(0.01, 1e3, rng.random())[0] for _ in range(2000)) / 2000
    assert rate > 0.99


@pytest.mark.parametrize("delta, temperature", [(0.001, 0.001), (0.0006, 0.0003), (0.002, 0.004)])
def test_acceptance_frequency_matches_metropolis(delta: float, temperature: float) -> None:
    rng = random.Random(42)
    n = 20_000
    hits = sum(acceptance.accept(delta, temperature, rng.random())[0] for _ in range(n))
    p = math.exp(-delta / temperature)
    assert abs(hits / n - p) < 4 * math.sqrt(p * (1 - p) / n)  # 4 standard errors


def test_negative_temperature_rejected() -> None:
    with pytest.raises(ValueError):
        acceptance.acceptance_probability(0.1, -1.0)


def test_cooling_schedules() -> None:
    assert acceptance.temperature_at(1.0, 0.5, "none") == 1.0
    assert acceptance.temperature_at(1.0, 0.0, "exp") == 1.0
    assert acceptance.temperature_at(1.0, 1.0, "exp") == pytest.approx(acceptance.FINAL_FRACTION)
    assert acceptance.temperature_at(2.0, 0.5, "linear") == pytest.approx(1.0)
    assert acceptance.temperature_at(1.0, 1.7, "linear") == 0.0  # clamped
    temps = [acceptance.temperature_at(1.0, p / 10, "exp") for p in range(11)]
    assert temps == sorted(temps, reverse=True)
    with pytest.raises(ValueError):
        acceptance.temperature_at(1.0, 0.5, "bogus")


def test_auto_temperature_is_calibrated_to_noise() -> None:
    assert acceptance.initial_temperature("auto", 3e-4) == pytest.approx(acceptance.AUTO_SIGMAS * 3e-4)
    assert acceptance.initial_temperature(0.002, None) == 0.002
    with pytest.raises(ValueError):
        acceptance.initial_temperature("auto", None)
    assert acceptance.noise_sigma([1.0]) is None
    assert acceptance.noise_sigma([1.0, 1.002]) == pytest.approx(math.sqrt(2e-6))


def test_progress_takes_the_further_budget() -> None:
    assert acceptance.progress(1800, 1.0, 10, 100) == 0.5
    assert acceptance.progress(0, None, 75, 100) == 0.75
    assert acceptance.progress(10, None, 5, None) == 0.0
    assert acceptance.progress(7200, 1.0, 0, None) == 1.0


# ----- selection -------------------------------------------------------------------------------

M = selection.Member


def test_tournament_prefers_lower_scores_statistically() -> None:
    members = [M(i, 1.0 + i * 0.01) for i in range(8)]
    rng = random.Random(3)
    wins = [selection.tournament(members, rng).id for _ in range(4000)]
    # with k=2, member i wins with probability ((n-i)^2 - (n-i-1)^2) / n^2
    for i in (0, 3, 7):
        expected = ((8 - i) ** 2 - (7 - i) ** 2) / 64
        assert abs(wins.count(i) / 4000 - expected) < 0.03
    assert selection.tournament([M(5, 2.0)], rng).id == 5


def test_select_two_distinct_parents() -> None:
    rng = random.Random(0)
    members = [M(1, 1.0), M(2, 1.1), M(3, 1.2)]
    for _ in range(100):
        a, b = selection.select_parents(members, 2, rng)
        assert a.id != b.id
    assert [p.id for p in selection.select_parents([M(1, 1.0)], 2, rng)] == [1, 1]


def test_competitor_is_parent_else_worst() -> None:
    members = [M(1, 1.0), M(2, 1.3), M(3, 1.1)]
    assert selection.competitor(members, 3).id == 3
    assert selection.competitor(members, 99).id == 2


def test_replacement_fills_then_replaces_rival() -> None:
    members = [M(1, 1.0), M(2, 1.3)]
    assert selection.replacement(members, M(9, 1.2), members[1], capacity=3) == selection.Replacement(True, [])
    assert selection.replacement(members, M(9, 1.2), members[1], capacity=2) == selection.Replacement(True, [2])


def test_elitism_best_never_leaves() -> None:
    members = [M(1, 1.0), M(2, 1.3), M(3, 1.2)]
    # a worse child accepted against the elite pushes out the worst other member instead
    assert selection.replacement(members, M(9, 1.1), members[0], capacity=3).leaving == [2]
    # a better child does replace the elite: it is the new best
    assert selection.replacement(members, M(9, 0.9), members[0], capacity=3).leaving == [1]
    # population 1 holding the best: a worse child cannot enter
    assert not selection.replacement([M(1, 1.0)], M(9, 1.1), M(1, 1.0), capacity=1).enters


# ----- tweak -------------------------------------------------------------------------------------

SOURCE = '''"""doc"""
import os
DEPTH = 8              # layers
MATRIX_LR = 0.04
TOTAL_BATCH_SIZE = 2**19
DEVICE_BATCH_SIZE = 128
WARMDOWN_RATIO: float = 0.5
NEG = -3
EXIT_DIVERGED = 3
SEED = 42
lower_case = 1.0
NAME = "text"
BETAS = (0.8, 0.95)
FLAG = True

def f():
    INNER = 5
'''


def test_find_constants_only_top_level_numeric_uppercase() -> None:
    names = [c.name for c in find_constants(SOURCE)]
    assert names == ["DEPTH", "MATRIX_LR", "TOTAL_BATCH_SIZE", "DEVICE_BATCH_SIZE", "WARMDOWN_RATIO", "NEG"]
    powers = {c.name for c in find_constants(SOURCE) if c.power_of_two}
    assert powers == {"DEPTH", "TOTAL_BATCH_SIZE", "DEVICE_BATCH_SIZE"}


def test_tweak_keeps_types_powers_and_comments() -> None:
    for seed in range(200):
        code, changes = tweak(SOURCE, random.Random(seed))
        assert 1 <= len(changes) <= 2
        ast.parse(code)
        assert "# layers" in code
        values = {c.name: c.value for c in find_constants(code)}
        for name, old, new in changes:
            assert new != old and values[name] == new
            if name in ("DEPTH", "TOTAL_BATCH_SIZE", "DEVICE_BATCH_SIZE"):
                assert new in (old * 2, old // 2) and isinstance(new, int)
            if name == "NEG":
                assert isinstance(new, int)
            if name in ("MATRIX_LR", "WARMDOWN_RATIO"):
                assert isinstance(new, float) and 0.4 <= new / old <= 2.5
        unchanged = {n for n in values if n not in {c[0] for c in changes}}
        original = {c.name: c.value for c in find_constants(SOURCE)}
        assert all(values[n] == original[n] for n in unchanged)


def test_tweak_writes_large_powers_as_powers() -> None:
    code, changes = tweak("TOTAL_BATCH_SIZE = 2**19\n", random.Random(0), n=1)
    assert code in ("TOTAL_BATCH_SIZE = 2**20\n", "TOTAL_BATCH_SIZE = 2**18\n")


def test_tweak_without_constants_is_an_operator_error() -> None:
    with pytest.raises(OperatorError):
        tweak("x = 1\n", random.Random(0))
    with pytest.raises(OperatorError):
        tweak("def (:\n", random.Random(0))


# ----- logs --------------------------------------------------------------------------------------

SUMMARY = """step 00001 (1.0%) | elapsed: 1.5s | loss: 9.000000 | lrm: 1.00
step 00002 (2.0%) | elapsed: 3.0s | loss: 8.500000 | lrm: 1.00
---
val_bpb:          0.997900
training_seconds: 300.1
total_seconds:    325.9
peak_vram_mb:     45060.2
mfu_percent:      39.80
total_tokens_M:   499.6
num_steps:        953
num_params_M:     50.3
depth:            8
"""


def test_parse_summary_and_curve() -> None:
    s = parse_summary(SUMMARY)
    assert s["val_bpb"] == 0.9979 and s["num_steps"] == 953 and s["depth"] == 8
    assert parse_curve(SUMMARY) == [(1, 1.5, 9.0), (2, 3.0, 8.5)]


def test_autoresearch_progress_lines_with_carriage_returns() -> None:
    text = "\rstep 00010 (3.3%) | loss: 5.000000 | lrm: 1.00 | remaining: 290s    \rstep 00020 (6.7%) | loss: 4.000000 | remaining: 280s"
    assert parse_curve(text, time_budget=300) == [(10, 10.0, 5.0), (20, 20.0, 4.0)]
    assert parse_curve(text) == []


@pytest.mark.parametrize("text, message", [
    ("no summary here", "no summary block"),
    (SUMMARY.replace("depth:            8\n", ""), "lacks depth"),
    (SUMMARY.replace("num_steps:        953", "num_steps:        many"), "not a number"),
    (SUMMARY + "val_bpb:          0.5\n", "repeats"),
])
def test_bad_summaries(text: str, message: str) -> None:
    with pytest.raises(SummaryError, match=message):
        parse_summary(text)


def test_last_summary_block_wins() -> None:
    forged_first = SUMMARY.replace("0.997900", "0.100000") + "\n" + SUMMARY
    assert parse_summary(forged_first)["val_bpb"] == 0.9979


def _classify(output: str, rc: int = 0, **kw):
    args = dict(timed_out=None, interrupted=False, time_budget=300, budget_slack=30, scored={"val_bpb": 0.9979},
                prepare_changed=False)
    args.update(kw)
    return classify(rc, output, **args)


def test_classify_outcomes() -> None:
    assert _classify(SUMMARY).state == "COMPLETE"
    # the harness's score is archived, whatever the candidate printed
    assert _classify(SUMMARY, scored={"val_bpb": 1.25}).summary["val_bpb"] == 1.25
    assert _classify(SUMMARY, scored=None).fail_reason == "invalid"  # nothing handed over
    refused = _classify(SUMMARY, scored={"fail": "invalid", "detail": "the model sees the future"})
    assert (refused.fail_reason, refused.detail) == ("invalid", "the model sees the future")
    assert _classify(SUMMARY.replace("300.1", "400.0")).fail_reason == "over_budget"
    assert _classify(SUMMARY, over_budget="ran 900 s").fail_reason == "over_budget"
    assert _classify("", rc=3).fail_reason == "nan"
    assert _classify("Traceback...\ntorch.OutOfMemoryError: CUDA out of memory", rc=1).fail_reason == "oom"
    assert _classify("Traceback\nKeyError: 'x'", rc=1).fail_reason == "crash"
    assert _classify(SUMMARY, timed_out="the final evaluation overran").detail == "the final evaluation overran"
    assert _classify(SUMMARY, interrupted=True).fail_reason == "interrupted"
    assert _classify(SUMMARY, prepare_changed=True).fail_reason == "invalid"


def test_scored_verdict_reads_only_the_evaluation_process_last_line() -> None:
    assert scored_verdict(0, 'noise\n{"val_bpb": 1.5, "tokens": 3}\n') == {"val_bpb": 1.5}
    assert scored_verdict(0, '{"fail": "invalid", "detail": "why"}') == {"fail": "invalid", "detail": "why"}
    for rc, out in ((1, '{"val_bpb": 1.5}'), (0, '{"val_bpb": NaN}'), (0, '{"val_bpb": "1.5"}'), (0, "Traceback"),
                    (0, ""), (0, '{"val_bpb": true}'), (0, "[1]")):
        assert scored_verdict(rc, out)["fail"] == "crash", (rc, out)


def test_float_that_lands_on_a_whole_number_stays_float() -> None:
    for seed in range(50):
        code, changes = tweak("X = 0.8\n", random.Random(seed), n=1)
        (name, old, new), = changes
        assert isinstance(find_constants(code)[0].value, float), code


# ---------------------------------------------------------------------------
# the budget line of `evo status` and the live header
# ---------------------------------------------------------------------------

def test_budget_says_what_is_spent_and_the_nearest_limit_at_this_pace() -> None:
    from evo.core import format as fmt
    assert [fmt.duration(s) for s in (45, 720, 3 * 3600 + 300)] == ["45 s", "12 min", "3 h 05 min"]
    # 10 of 40 children in an hour: 3 h more at this pace, but only 1 h of the 2 h budget is left
    assert fmt.budget(10, 40, 3600, 2) == "budget 10/40 children, 1.0/2 h; about 1 h 00 min left at this pace"
    assert fmt.budget(10, 40, 3600, None) == "budget 10/40 children; about 3 h 00 min left at this pace"
    assert fmt.budget(0, 40, 0, None) == "budget 0/40 children"  # no pace yet
    assert fmt.budget(50, 40, 3600, None).endswith("about 0 s left at this pace")
    assert fmt.budget(5, None, 600, None, spent=1.0, max_cost=4.0) == (
        "budget $1.00/$4.00 of LLM spend; about 30 min left at this pace")
    assert fmt.budget(7, None, 60, None).startswith("budget: none set (7 children so far")
    assert fmt.budget(40, 40, 3600, 8, live=False) == "budget 40/40 children, 1.0/8 h"  # an ended run has no pace


# ---------------------------------------------------------------------------
# noise warnings: when a measurement says more about the machine than the code
# ---------------------------------------------------------------------------

def test_noise_warnings_name_replicates_of_different_speed_and_a_loaded_start() -> None:
    from types import SimpleNamespace as E
    from evo.core import noise

    def ev(r: int, steps: int, tokens_m: float = 1.0, load: float | None = 0.5, state: str = "COMPLETE"):
        return E(replicate=r, state=state, num_steps=steps, total_tokens_M=tokens_m, training_seconds=8.0, load_avg=load)

    # the loaded CPU of the issue: 19, 168 and 12 steps for three replicates of the seed
    seed = [ev(0, 19), ev(1, 168), ev(2, 12)]
    assert noise.speed_warning(seed).startswith("its replicates trained 12 to 168 steps (x14.0)")
    steady = [ev(0, 100, 1.0), ev(1, 120, 1.1), ev(2, 90, 0.9)]
    assert noise.speed_warning(steady) is None and noise.warnings(steady, cores=2) == []
    assert "tokens/s" in noise.speed_warning([ev(0, 100, 0.3), ev(1, 100, 1.0)])  # same steps, a third of the tokens
    assert noise.speed_warning([ev(0, 100), ev(1, 10, state="FAIL")]) is None  # a failure is no measurement of speed
    assert noise.tokens_per_second(ev(0, 1, tokens_m=2.0)) == 250_000
    loaded = [ev(0, 100, load=5.2), ev(1, 110, load=2.9), ev(2, 105, load=None)]  # 2.9: evo's own training, lagging
    assert noise.warnings(loaded, cores=2) == ["evaluation 0 started at load 5.2 on 2 cores: it shared the CPU, and a "
                                               "wall-clock budget then measures the load"]
