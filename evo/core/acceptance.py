"""Annealing acceptance, pure functions: the Metropolis rule, cooling schedules, and the initial
temperature calibrated against the measured run-to-run noise σ.

Temperatures are in val_bpb units. At T, a child worse than its competitor by Δ is accepted with
probability exp(-Δ/T); a child that is not worse is always accepted (at T = 0, only a strictly
better child is: greedy autoresearch's rule, where a tie is discarded).
"""

from __future__ import annotations

import math

COOLING_SCHEDULES = ("exp", "linear", "none")
# `--temperature auto` starts at AUTO_SIGMAS × σ: a child one σ worse (within noise) is then
# accepted with probability exp(-1/2) ≈ 0.61, one 3σ worse (a real loss) with ≈ 0.22.
AUTO_SIGMAS = 2.0
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
    if cooling == "exp":
        return t0 * final_fraction ** p
    if cooling == "linear":
        return t0 * (1.0 - p)
    raise ValueError(f"unknown cooling schedule {cooling!r}; choose one of {', '.join(COOLING_SCHEDULES)}")


def initial_temperature(setting: float | str, sigma: float | None) -> float:
    """Resolve `--temperature`: a number in val_bpb units, or 'auto' = AUTO_SIGMAS × σ."""
    if setting == "auto":
        if sigma is None:
            raise ValueError("temperature 'auto' needs the measured noise σ (--replicates 2 or more)")
        return AUTO_SIGMAS * sigma
    return float(setting)


def noise_sigma(values: list[float]) -> float | None:
    """Sample standard deviation of replicate val_bpb values (None with fewer than two)."""
    if len(values) < 2:
        return None
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


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
