"""Search quality: evo against greedy autoresearch and random search, at the same number of
evaluations, on two surrogate landscapes with Gaussian noise.

The candidate is a train.py-like file whose only content that matters is five UPPERCASE constants
X1..X5, all 1.1 in the seed (--seed-value). The tweak operator moves one or two of them by a
factor drawn from 0.5, 0.7, 0.8, 1.25, 1.4, 2 (log2 steps ±1, -0.51/+0.49, ±0.32). Let
u_i = log2(X_i / 1.1) (the seed is u = 0) and σ the noise (--sigma, default 0.001 val_bpb).
(Why 1.1 and not 1.0: the tweak operator writes a float that lands on a whole number, e.g.
0.8 x 1.25 = 1.0, as `1`, which it then treats as an integer constant: from 1 it can only go to 2,
never down. From 1.1 no product of the factors is a small whole number. --seed-value 1.0 shows
the effect.) A measurement is

    val_bpb = 1 + σ·F(u) + σ·ε,    ε ~ N(0, 1) seeded by (bench seed, evaluation seed, code hash)

so the same code under the same evaluation seed measures the same value (common random numbers,
as on a deterministic GPU). F is in units of σ:

  smooth     F(u) = A · Σ_{i=1..5} (u_i - s_i)²,        A = 4,  s = (1, -1, 1.5, -0.5, 0.5)
             one bowl; the seed is F = 19 (19σ) above the optimum, a 0.32 step near the
             optimum costs 0.4σ, a factor-2 step 4σ.

  deceptive  F(u) = g(u_1) + A · Σ_{i=2..5} (u_i - d_i)²,  A = 4,  d = (0.5, -0.5, 0.5, -0.5)
             g(x) = min(L(x), G(x)), a double well along X1:
               L(x) = K_L (x - l)²  for x <= l,   min(K_L (x - l)², H)  for x > l
                      local optimum at x = l = 0.5 (X1 = 1.56, next to the seed), its right wall
                      capped by a plateau of height H = 3σ (the barrier);
               G(x) = K_G (x - r)² - D
                      global optimum at x = r = 3.2 (X1 = 10.1), D = 10σ below the local one;
             K_L = 4, K_G = 13: the local wall reaches the plateau at x = 1.37, the global well
             starts below the plateau at x = 2.2. The global optimum is F = -10, the local one
             F = 0; the seed is F = 5 (1σ from g, 4σ from the other constants).
             No single tweak from the local basin's low part (g <= 2σ, x <= 1.2) reaches the
             global basin, so a searcher that only accepts measured improvements must accept a
             ≈ 3σ loss (onto the plateau) to cross; annealing at T ≈ 2σ accepts that with
             probability e^{-3/2} ≈ 0.22, then one factor-2 (or two factor-1.4) steps of X1 from
             the plateau drop into the global basin. Along a single tweak that also changes another
             constant, the other term gains at most about 1σ here (the seed's other constants are
             0.5 log2 units off), so a combined move cannot buy its way over the barrier either.

Searchers (every evaluation counts, replicates and confirmations included):

  evo     the real `evo.engine.loop.Engine`: population 8, temperature auto (T0 = 2σ̂ from 3
          replicates of the seed), cooling exp, confirm on, tweak operator, max_candidates M
          (--evo-candidates); it uses E evaluations (counted in the archive; it is stopped at
          --evaluations if it gets there first);
  evo-T2σ a diagnostic (with --fixed-t): evo with the temperature given as exactly 2σ,
          the value `auto` aims at, without the error of estimating σ from 3 replicates;
  greedy  the real Engine with population 1, temperature 0, confirm off, replicates 1: greedy
          autoresearch (up to the stale parent noted below). Stopped after exactly E evaluations (the same E as evo, per seed), or
          earlier if its 10·E candidates run out first (a converged greedy proposes mostly
          duplicates, which the engine prunes without evaluating);
  random  E evaluations, each a candidate with every constant log-uniform in 1.1·[1/16, 16] (u
          in [-4, 4], which holds both optima); returns the best measured. `random-tweak` (with
          --random tweak or both): each evaluation a random tweak of the seed.

Every searcher returns one candidate as its best (evo.core.lineage's `best`: lowest mean
val_bpb among accepted candidates; random: lowest measurement); the score is that candidate's TRUE
(noise-free) val_bpb. One slot, lookahead 0 (--lookahead to change). The engine keeps a proposal
ready for every slot, so even then the next child is drawn while the previous one evaluates: its
parent can be one decision stale (greedy's child is then a tweak of the previous incumbent, judged
against the current one), and because proposal and evaluation threads race, a rerun can differ
slightly. In-process evaluation (tests.support.simulated through Engine's `evaluate=`), SQLite archives
in a temporary folder.

    python3 bench/search_quality.py                    # defaults: 20 seeds, 120 evaluations, ~3 min on 2 idle cores
    python3 bench/search_quality.py --fixed-t --per-seed --seeds 50 --evaluations 400 --jobs 4
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import random
import statistics
import tempfile
import time
from hashlib import sha256
from pathlib import Path

from _common import header, percentile, table

from evo.storage import COMPLETE, Archive
from evo.config import RunConfig
from evo.core.lineage import best as best_of
from evo.operators.tweak import find_constants, tweak
from tests.support.simulated import SimulatedEvaluation, simulated_engine

N_CONST = 5
BASE = 1.0
A = 4.0
SMOOTH_TARGET = (1.0, -1.0, 1.5, -0.5, 0.5)
DECEPTIVE_OTHER = (0.5, -0.5, 0.5, -0.5)
K_L, L_OPT, H = 4.0, 0.5, 3.0
K_G, G_OPT, D = 13.0, 3.2, 10.0
RANDOM_BOX = 4.0  # log2 units either side of the seed

SEED_VALUE = 1.1  # see the module docstring: 1.0 would let tweaks land on integers


def make_code(values: list[float]) -> str:
    lines = ['"""Search-quality surrogate train.py: only the constants below matter."""', ""]
    lines += [f"X{i + 1} = {v!r}" for i, v in enumerate(values)]
    return "\n".join(lines + ["", 'print("---")', ""])


# ----- landscapes (F in units of σ) ----------------------------------------------------------------

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


def coords(code: str) -> list[float]:
    values = {c.name: float(c.value) for c in find_constants(code)}
    return [math.log2(values[f"X{i + 1}"] / SEED_VALUE) for i in range(N_CONST)]


def true_bpb(landscape: str, code: str, sigma: float) -> float:
    return BASE + sigma * LANDSCAPES[landscape](coords(code))


def measure(landscape: str, code: str, sigma: float, bench_seed: int, eval_seed: int) -> float:
    rng = random.Random(f"{bench_seed}:{eval_seed}:{sha256(code.encode()).hexdigest()}")
    return true_bpb(landscape, code, sigma) + sigma * rng.gauss(0.0, 1.0)


def in_global_basin(code: str) -> bool:
    """Deceptive landscape: X1 past the plateau, where the global well is below it."""
    x = coords(code)[0]
    return K_G * (x - G_OPT) ** 2 - D < H and x > L_OPT + math.sqrt(H / K_L)


# ----- searchers ---------------------------------------------------------------------------------

def engine_search(landscape: str, bench_seed: int, sigma: float, root: Path, *, kind: str,
                  max_candidates: int, eval_cap: int | None, lookahead: int, population: int = 8,
                  cooling: str = "exp") -> dict:
    """kind: 'evo' (temperature auto), 'evo-T2σ' (temperature given as exactly 2σ: the calibration
    `auto` aims at, without the error of estimating σ from 3 replicates), or 'greedy'."""
    archive = Archive(f"sqlite:///{root}/{landscape}-{kind}-{bench_seed}.db")
    if kind == "greedy":
        config = RunConfig(name="greedy", preset="smoke", population=1, temperature=0.0, replicates=1,
                           confirm=False, cooling="exp", max_candidates=max_candidates, lookahead=lookahead,
                           seed=bench_seed).validate()
    else:
        temperature = "auto" if kind == "evo" else 2.0 * sigma
        config = RunConfig(name="evo", preset="smoke", population=population, temperature=temperature,
                           replicates=3, confirm=True, cooling=cooling, max_candidates=max_candidates, lookahead=lookahead,
                           seed=bench_seed).validate()
    evaluate = SimulatedEvaluation(lambda code, seed: measure(landscape, code, sigma, bench_seed, seed), cap=eval_cap)
    engine = simulated_engine(archive, config, make_code([SEED_VALUE] * N_CONST), evaluate)
    engine.execute()
    run = engine.run
    evaluations = [e for e in archive.evaluations(run.id) if e.state == COMPLETE]
    best = best_of(archive.candidates(run.id))
    code = archive.code(best.code_hash)
    run_row = archive.run_by_id(run.id)
    cands = archive.candidates(run.id)
    out = {"evaluations": len(evaluations), "true": true_bpb(landscape, code, sigma), "measured": best.val_bpb,
           "global": in_global_basin(code), "candidates": len(cands) - 1,
           "pruned": sum(1 for c in cands if c.state == "PRUNED"),
           "sigma_hat": run_row.sigma, "t0": run_row.temperature0}
    archive.close()
    return out


def random_search(landscape: str, bench_seed: int, sigma: float, evaluations: int, mode: str) -> dict:
    rng = random.Random(f"random:{mode}:{landscape}:{bench_seed}")
    best_code, best_value = None, math.inf
    for _ in range(evaluations):
        if mode == "box":
            code = make_code([float(f"{SEED_VALUE * 2 ** rng.uniform(-RANDOM_BOX, RANDOM_BOX):.4g}")
                              for _ in range(N_CONST)])
        else:
            code, _ = tweak(make_code([SEED_VALUE] * N_CONST), rng)
        value = measure(landscape, code, sigma, bench_seed, 42)
        if value < best_value:
            best_code, best_value = code, value
    return {"evaluations": evaluations, "true": true_bpb(landscape, best_code, sigma), "measured": best_value,
            "global": in_global_basin(best_code)}


def one_seed(task: tuple) -> dict:
    """All searchers on one landscape and one bench seed (a worker process's unit of work)."""
    landscape, bench_seed, args = task
    global SEED_VALUE
    SEED_VALUE = args.seed_value
    out = {"landscape": landscape, "seed": bench_seed}
    with tempfile.TemporaryDirectory(prefix="evo-bench-") as tmp:
        root = Path(tmp)
        t0 = time.monotonic()
        evo = engine_search(landscape, bench_seed, args.sigma, root, kind="evo",
                            max_candidates=args.evo_candidates, eval_cap=args.evaluations, lookahead=args.lookahead,
                            population=args.evo_population, cooling=args.evo_cooling)
        out["evo"] = evo
        budget = evo["evaluations"]
        if args.fixed_t:
            out["evo-T2σ"] = engine_search(landscape, bench_seed, args.sigma, root, kind="evo-T2σ",
                                           max_candidates=args.evo_candidates, eval_cap=budget,
                                           lookahead=args.lookahead, population=args.evo_population,
                                           cooling=args.evo_cooling)
        out["greedy"] = engine_search(landscape, bench_seed, args.sigma, root, kind="greedy",
                                      max_candidates=10 * budget, eval_cap=budget, lookahead=args.lookahead)
        for mode in (["box", "tweak"] if args.random == "both" else [args.random]):
            out["random" if mode == "box" else "random-tweak"] = random_search(landscape, bench_seed, args.sigma,
                                                                              budget, mode)
        out["seconds"] = time.monotonic() - t0
    return out


# ----- report ------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=20, help="bench seeds per landscape [20]")
    ap.add_argument("--first-seed", type=int, default=0, help="first bench seed [0]")
    ap.add_argument("--evaluations", type=int, default=120,
                    help="evaluation budget: evo is stopped there if it gets that far; greedy and random get "
                         "exactly as many as evo used on the same seed [120]")
    ap.add_argument("--evo-candidates", type=int, default=None,
                    help="evo's max_candidates (its cooling schedule runs over these) [evaluations - 8]")
    ap.add_argument("--evo-population", type=int, default=8, help="evo's population [8]")
    ap.add_argument("--evo-cooling", choices=("exp", "linear", "none"), default="exp", help="evo's cooling [exp]")
    ap.add_argument("--seed-value", type=float, default=SEED_VALUE,
                    help="the seed's value of every constant [1.1]; 1.0 shows the tweak operator's integer bug")
    ap.add_argument("--sigma", type=float, default=0.001, help="noise σ in val_bpb [0.001]")
    ap.add_argument("--landscapes", nargs="+", default=list(LANDSCAPES), choices=list(LANDSCAPES))
    ap.add_argument("--random", choices=("box", "tweak", "both"), default="both",
                    help="random search: log-uniform box, random tweaks of the seed, or both [both]")
    ap.add_argument("--lookahead", type=int, default=0, help="RunConfig.lookahead of the engine searchers [0]")
    ap.add_argument("--fixed-t", action=argparse.BooleanOptionalAction, default=False,
                    help="also run evo with temperature exactly 2σ instead of auto (diagnostic) [off]")
    ap.add_argument("--jobs", type=int, default=min(2, mp.cpu_count() or 1), help="worker processes [2]")
    ap.add_argument("--per-seed", action="store_true", help="also print every seed's result")
    args = ap.parse_args()
    if args.evo_candidates is None:
        args.evo_candidates = args.evaluations - 8  # 3 replicates + confirmations - duplicates ≈ 8
    header("Search quality: evo vs greedy vs random at equal evaluations")
    print(f"σ = {args.sigma:g}; {args.seeds} seeds ({args.first_seed}..{args.first_seed + args.seeds - 1}); "
          f"evo: population {args.evo_population}, temperature auto, replicates 3, cooling {args.evo_cooling}, "
          f"confirm on, max_candidates "
          f"{args.evo_candidates}, stopped at {args.evaluations} evaluations; lookahead {args.lookahead}; "
          f"{args.jobs} worker processes\n")

    tasks = [(ls, s, args) for ls in args.landscapes for s in range(args.first_seed, args.first_seed + args.seeds)]
    t0 = time.monotonic()
    if args.jobs > 1:
        with mp.get_context("fork").Pool(args.jobs) as pool:
            results = pool.map(one_seed, tasks, chunksize=1)
    else:
        results = [one_seed(t) for t in tasks]
    wall = time.monotonic() - t0

    searchers = ["evo"] + (["evo-T2σ"] if args.fixed_t else []) + ["greedy"] + [k for k in ("random", "random-tweak") if k in results[0]]
    rows, per_seed = [], []
    for ls in args.landscapes:
        rs = [r for r in results if r["landscape"] == ls]
        for name in searchers:
            true = [r[name]["true"] for r in rs]
            gap = [(t - BASE) / args.sigma - OPTIMUM[ls] for t in true]
            evs = [r[name]["evaluations"] for r in rs]
            wins = sum(1 for r in rs if r[name]["true"] < r["greedy"]["true"] - 1e-12)
            ties = sum(1 for r in rs if abs(r[name]["true"] - r["greedy"]["true"]) <= 1e-12)
            q1, med, q3 = percentile(true, 25), percentile(true, 50), percentile(true, 75)
            rows.append([ls, name, f"{med:.6f}", f"{q3 - q1:.6f}", f"{percentile(gap, 50):.2f}",
                         f"{statistics.fmean(evs):.1f} ({min(evs)}-{max(evs)})",
                         "-" if name == "greedy" else f"{wins}/{len(rs) - wins - ties}/{ties}",
                         f"{sum(r[name]['global'] for r in rs)}/{len(rs)}" if ls == "deceptive" else "-"])
        for r in rs:
            per_seed.append([ls, r["seed"]] + [f"{(r[n]['true'] - BASE) / args.sigma:.2f}" for n in searchers]
                            + [r["evo"]["evaluations"], r["evo"]["candidates"], r["evo"]["pruned"],
                               f"{(r['evo']['sigma_hat'] or 0) / args.sigma:.2f}", f"{r['seconds']:.1f}"])
    table(["landscape", "searcher", "median true val_bpb", "IQR", "median gap to optimum (σ)",
           "evaluations used, mean (min-max)", "wins/losses/ties vs greedy", "ended in global basin"], rows,
          "Final TRUE (noise-free) val_bpb of the candidate each searcher returns as its best (lower is better)")
    if args.per_seed:
        table(["landscape", "seed"] + [f"{n} F (σ)" for n in searchers]
              + ["evo evals", "evo candidates", "evo pruned", "evo σ̂/σ", "seconds"], per_seed,
              "Per seed: F = (true val_bpb - 1)/σ of each searcher's returned best")
    sig = [r["evo"]["sigma_hat"] / args.sigma for r in results if r["evo"]["sigma_hat"]]
    print(f"evo's measured noise σ̂/σ over runs: median {percentile(sig, 50):.2f}, "
          f"range {min(sig):.2f}-{max(sig):.2f} (T0 = 2σ̂)")
    print(f"optimum: smooth F = 0 (val_bpb {BASE:.6f}), deceptive F = {-D:g} (val_bpb {BASE - D * args.sigma:.6f}); "
          f"deceptive local optimum F = 0")
    print(f"wall time {wall:.0f} s")


if __name__ == "__main__":
    main()
