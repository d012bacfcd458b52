"""Annealing acceptance, pure functions: the Metropolis rule, cooling schedules, and the initial
temperature calibrated against the measured run-to-run noise σ.

Temperatures are in val_bpb units. At T, a child worse than its competitor by Δ is accepted with
probability exp(-Δ/T); a child that is not worse is always accepted (at T = 0, only a strictly
better child is: greedy autoresearch's rule, where a tie is discarded).
"""

from __future__ import annotations

import math
from typing import Sequence

COOLING_SCHEDULES = ("hold", "exp", "linear", "none")
# "hold" keeps T0 until this fraction of the budget, then cools exponentially to FINAL_FRACTION·T0:
# exponential cooling from the start halves T by 23 % of the budget, before the second uphill step
# a valley needs can happen.
HOLD_FRACTION = 0.6
# The prior σ (a previous run's) weighs as this many degrees of freedom: the seed's 3 replicates
# alone give 2, whose 90 % range is 0.23σ to 1.73σ.
PRIOR_DOF = 4.0
# `--temperature auto` starts at AUTO_SIGMAS × σ: a child one σ worse (within noise) is then
# accepted with probability exp(-1/2) ≈ 0.61, one 3σ worse (a real loss) with ≈ 0.22.
AUTO_SIGMAS = 2.0
# ...for a night of 100 evaluations or fewer; from 400 on, 3σ (0.72 and 0.37): a longer night can
# afford to wander further before it cools (bench/search_quality.py: at 400 evaluations on the
# deceptive landscape 3σ crosses the barrier about twice as often; at 100, 2σ exploits better).
AUTO_SIGMAS_RANGE = ((100.0, AUTO_SIGMAS), (400.0, 3.0))
# Exponential cooling ends at this fraction of T0: 0.1σ at the end, which is nearly greedy.
FINAL_FRACTION = 0.05


def acceptance_probability(delta: float, temperature: float) -> float:
    """P(accept) for a child whose val_bpb exceeds its competitor's by delta (lower is better)."""
    if temperature < 0:
        raise ValueError("temperature must be >= 0")
    if temperature == 0:
        return 1.0 if delta < 0 else 0.0
    if delta <= 0:
        return 1.0
    return math.exp(-delta / temperature)


def accept(delta: float, temperature: float, u: float) -> tuple[bool, float]:
    """Decide with a uniform draw u in [0, 1). Returns (accepted, probability)."""
    p = acceptance_probability(delta, temperature)
    return u < p, p


def temperature_at(t0: float, progress: float, cooling: str, final_fraction: float = FINAL_FRACTION) -> float:
    """Temperature at `progress` ∈ [0, 1] of the run's budget."""
    p = min(max(progress, 0.0), 1.0)
    if cooling == "none":
        return t0
    if cooling == "hold":
        if p <= HOLD_FRACTION:
            return t0
        return t0 * final_fraction ** ((p - HOLD_FRACTION) / (1.0 - HOLD_FRACTION))
    if cooling == "exp":
        return t0 * final_fraction ** p
    if cooling == "linear":
        return t0 * (1.0 - p)
    raise ValueError(f"unknown cooling schedule {cooling!r}; choose one of {', '.join(COOLING_SCHEDULES)}")


def initial_temperature(setting: float | str, sigma: float | None, sigmas: float = AUTO_SIGMAS) -> float:
    """Resolve `--temperature`: a number in val_bpb units, or 'auto' = `sigmas` × σ."""
    if setting == "auto":
        if sigma is None:
            raise ValueError("temperature 'auto' needs the measured noise σ (--replicates 2 or more)")
        return sigmas * sigma
    return float(setting)


def auto_sigmas(evaluations: float | None) -> float:
    """How many σ `--temperature auto` starts at for a budget of `evaluations` in all (None: no
    budget, a long night): AUTO_SIGMAS_RANGE's ends, log-linear between."""
    return AUTO_SIGMAS_RANGE[1][1] if evaluations is None else log_linear(evaluations, *AUTO_SIGMAS_RANGE)


def log_linear(x: float, low: tuple[float, float], high: tuple[float, float]) -> float:
    """A setting scaled by a budget x: low[1] up to x = low[0], high[1] from x = high[0], linear in
    log x between."""
    (low_x, low_y), (high_x, high_y) = low, high
    if x <= low_x:
        return low_y
    if x >= high_x:
        return high_y
    return low_y + (high_y - low_y) * math.log(x / low_x) / math.log(high_x / low_x)


def noise_sigma(values: list[float]) -> float | None:
    """Sample standard deviation of replicate val_bpb values (None with fewer than two)."""
    if len(values) < 2:
        return None
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def pooled_sigma(groups: Sequence[Sequence[float]], prior: float | None = None,
                 prior_dof: float = PRIOR_DOF) -> float | None:
    """The run's noise σ̂: the within-group spread pooled over every candidate measured more than
    once (the seed's replicates, confirmations, re-measures), combined with `prior` as `prior_dof`
    pseudo-degrees of freedom and floored at half the prior. None with neither."""
    ss, dof = 0.0, 0
    for values in groups:
        if len(values) >= 2:
            mean = sum(values) / len(values)
            ss += sum((v - mean) ** 2 for v in values)
            dof += len(values) - 1
    if prior is None:
        return math.sqrt(ss / dof) if dof else None
    sigma = math.sqrt((ss + prior_dof * prior ** 2) / (dof + prior_dof))
    return max(sigma, prior / 2.0)


def probability_better(mean: float, n: int, seed_mean: float, seed_n: int, sigma: float | None) -> float | None:
    """P(a candidate's true val_bpb is below the seed's), a normal approximation on the two means
    (n and seed_n evaluations) with the run's noise σ̂. None without a σ̂ to judge by."""
    if sigma is None or sigma <= 0 or n < 1 or seed_n < 1:
        return None
    z = (seed_mean - mean) / (sigma * math.sqrt(1.0 / n + 1.0 / seed_n))
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


def progress(elapsed_seconds: float, hours: float | None, candidates: int, max_candidates: int | None) -> float:
    """How far through its budget the run is: the further of time and candidate count."""
    parts = [0.0]
    if hours:
        parts.append(elapsed_seconds / (hours * 3600.0))
    if max_candidates:
        parts.append(candidates / max_candidates)
    return min(1.0, max(parts))


def ignores_seed(values: list[float]) -> bool:
    """Whether replicates with different EVO_SEEDs scored exactly alike: the code ignores its seed
    (on a CPU the harness's score of one trained model is exact), so their spread says nothing."""
    return len(values) >= 2 and len(set(values)) == 1


# Failures that are the machine's or evo's, not the proposer's: they say nothing about it.
NOT_THE_PROPOSERS = frozenset({"harness", "interrupted"})


def proposal_reward(state: str, fail_reason: str | None, delta: float | None, n: int, rival_n: int,
                    sigma: float | None) -> float | None:
    """What one proposal earns the model that made it, in [0, 1]: the posterior probability that
    the child beats its rival (Δ = child minus rival, n and rival_n evaluations, noise σ̂; the sign
    of Δ without a σ̂), not the sign of Δ, which pure noise gets right half the time; 0 for a
    proposal that gave nothing usable (FAIL: unusable reply, crash, timeout; PRUNED: a duplicate,
    stopped early); None when the outcome says nothing about the proposer."""
    if state in ("FAIL", "PRUNED"):
        return None if fail_reason in NOT_THE_PROPOSERS else 0.0
    if delta is None:
        return None
    p = probability_better(delta, max(n, 1), 0.0, max(rival_n, 1), sigma)
    return p if p is not None else float(delta < 0)
