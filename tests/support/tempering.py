"""Parallel tempering, pure functions, for the benchmark's `evo-pt` searcher (measured against evo's
population in docs/benchmarks.md, and not adopted by the engine: on the idea pool and the deceptive
landscape with 8 slots the population won): one chain per slot, each at its own temperature, each
mutating its own state; after a decision, two adjacent chains may exchange states, so a state a hot
chain carried over a barrier can sink into a cold chain, which then exploits it.

Temperatures are in units of the noise σ̂ (the engine multiplies by σ̂ and the cooling schedule).
Most chains are cold (COLD σ̂: a within-noise loss is accepted with probability e^-4 ≈ 0.02, so they
exploit like greedy with a little slack), some hot (HOT σ̂ down to σ̂: a 3σ loss is accepted with
probability ≈ 0.22 at 2σ̂), which cross valleys.
"""

from __future__ import annotations

import math

COLD = 0.25
HOT = 2.0


def ladder(chains: int) -> list[float]:
    """The temperatures (σ̂ units) of `chains` chains, coldest first: a quarter of them hot
    (at least one), at HOT, HOT/2, ...; the rest at COLD. One chain alone runs at σ̂."""
    if chains <= 0:
        return []
    if chains == 1:
        return [1.0]
    hot = max(1, chains // 4)
    return [COLD] * (chains - hot) + [HOT / 2 ** i for i in reversed(range(hot))]


def swap_probability(f_i: float, f_j: float, t_i: float, t_j: float) -> float:
    """P(exchange the states of chains i and j): min(1, exp((f_i - f_j)(1/t_i - 1/t_j))) on the
    states' mean val_bpb f (lower is better) at temperatures t. The exchange is always taken when
    it moves the better state to the colder chain. A chain at T = 0 is greedy: it takes a state
    only if it is better."""
    if t_i < 0 or t_j < 0:
        raise ValueError("temperatures must be >= 0")
    if t_i == t_j:
        return 1.0
    if t_i == 0 or t_j == 0:
        cold_f, hot_f = (f_i, f_j) if t_i == 0 else (f_j, f_i)
        return 1.0 if hot_f < cold_f else 0.0
    exponent = (f_i - f_j) * (1.0 / t_i - 1.0 / t_j)
    return 1.0 if exponent >= 0 else math.exp(exponent)
