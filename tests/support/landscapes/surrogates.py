"""Two surrogate landscapes over five UPPERCASE constants X1..X5 of a train.py-like file, searched
by the tweak operator (evo.operators.tweak): one constant or two moved by a factor of 0.5, 0.7,
0.8, 1.25, 1.4 or 2. Let u_i = log2(X_i / 1.1) (the seed is u = 0; 1.1 rather than 1.0 because a
tweak that lands on a whole number would turn a constant into an integer) and σ the noise. One
evaluation measures

    val_bpb = 1 + σ·F(u) + σ·ε,    ε ~ N(0, 1) seeded by (bench seed, evaluation seed, code hash)

so the same code under the same evaluation seed measures the same value (common random numbers,
as on a deterministic GPU). F is in units of σ:

  smooth     F(u) = A · Σ (u_i - s_i)²,  A = 4,  s = (1, -1, 1.5, -0.5, 0.5): one bowl; the seed is
             19σ above the optimum, a 0.32 step near the optimum costs 0.4σ, a factor-2 step 4σ.

  deceptive  F(u) = g(u_1) + A · Σ_{i≥2} (u_i - d_i)²,  d = (0.5, -0.5, 0.5, -0.5), and g a double
             well along X1: a local optimum at x = 0.5 next to the seed whose right wall is capped
             by a plateau H = 3σ high (the barrier), and the global optimum at x = 3.2 (X1 = 10.1),
             D = 10σ below the local one (K_L = 4, K_G = 13). No single tweak from the local basin's
             low part reaches the global basin: a searcher that keeps only measured improvements
             must accept a ≈ 3σ loss onto the plateau to cross; one factor-2 (or two factor-1.4)
             steps of X1 from the plateau then drop into the global basin.
"""

from __future__ import annotations

import math
import random
from hashlib import sha256

from evo.operators.tweak import find_constants, tweak

SIGMA = 0.001
N_CONST = 5
BASE = 1.0
A = 4.0
SMOOTH_TARGET = (1.0, -1.0, 1.5, -0.5, 0.5)
DECEPTIVE_OTHER = (0.5, -0.5, 0.5, -0.5)
K_L, L_OPT, H = 4.0, 0.5, 3.0
K_G, G_OPT, D = 13.0, 3.2, 10.0
SEED_VALUE = 1.1


def make_code(values: list[float]) -> str:
    lines = ['"""Search-quality surrogate train.py: only the constants below matter."""', ""]
    lines += [f"X{i + 1} = {v!r}" for i, v in enumerate(values)]
    return "\n".join(lines + ["", 'print("---")', ""])


def g_double_well(x: float) -> float:
    left = K_L * (x - L_OPT) ** 2
    if x > L_OPT:
        left = min(left, H)
    return min(left, K_G * (x - G_OPT) ** 2 - D)


def f_smooth(u: list[float]) -> float:
    return A * sum((ui - si) ** 2 for ui, si in zip(u, SMOOTH_TARGET))


def f_deceptive(u: list[float]) -> float:
    return g_double_well(u[0]) + A * sum((ui - di) ** 2 for ui, di in zip(u[1:], DECEPTIVE_OTHER))


LANDSCAPES = {"deceptive": f_deceptive, "smooth": f_smooth}
OPTIMUM = {"deceptive": -D, "smooth": 0.0}


def coords(code: str) -> tuple[float, ...]:
    values = {c.name: float(c.value) for c in find_constants(code)}
    return tuple(math.log2(values[f"X{i + 1}"] / SEED_VALUE) for i in range(N_CONST))


def in_global_basin(u: tuple[float, ...]) -> bool:
    """Deceptive landscape: X1 past the plateau, where the global well is below it."""
    x = u[0]
    return K_G * (x - G_OPT) ** 2 - D < H and x > L_OPT + math.sqrt(H / K_L)


class Surrogate:
    n_parents = 1

    def __init__(self, kind: str, bench_seed: int, sigma: float = SIGMA):
        self.name, self.bench_seed, self.sigma = kind, bench_seed, sigma
        self._f = LANDSCAPES[kind]
        self._coords: dict[str, tuple[float, ...]] = {}

    def seed_code(self) -> str:
        return make_code([SEED_VALUE] * N_CONST)

    def true(self, code: str) -> float:
        return BASE + self.sigma * self._f(list(self.coords(code)))

    def measure(self, code: str, eval_seed: int) -> float:
        rng = random.Random(f"{self.bench_seed}:{eval_seed}:{sha256(code.encode()).hexdigest()}")
        return self.true(code) + self.sigma * rng.gauss(0.0, 1.0)

    def propose(self, parents: list[str], rng: random.Random) -> str:
        code, changes = tweak(parents[0], rng)
        if code not in self._coords:  # the child's point from its parent's, without parsing it again
            u = list(self.coords(parents[0]))
            for name, _, new in changes:
                u[int(name[1:]) - 1] = math.log2(new / SEED_VALUE)
            self._coords[code] = tuple(u)
        return code

    def coords(self, code: str) -> tuple[float, ...]:
        if code not in self._coords:
            self._coords[code] = coords(code)
        return self._coords[code]

    def feedback(self, code: str, parent: str, accepted: bool) -> None:
        """Random tweaks remember nothing."""

    def crossed(self, code: str) -> bool | None:
        return in_global_basin(self.coords(code)) if self.name == "deceptive" else None
