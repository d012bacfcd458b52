"""Search quality: evo against greedy autoresearch and other baselines at equal evaluations, on
the nights users have: N asynchronous slots, 300 s ± 5 % evaluations, crashes, LLM latency,
budgets of 100 to 800 evaluations, hundreds of seeds.

Each searcher runs in tests/support/searchsim.py, a discrete-event simulation of the engine's
loop that makes its decisions with evo.core's rules (selection, decide, the schedule, pooled σ,
the tempering swap); tests/test_searchsim.py holds it to the real Engine. Landscapes
(tests/support/landscapes): `ideas` (an LLM-like idea pool with diminishing returns, sign-epistatic
pairs, crashes, and an informed operator with a memory and a union merge), `hpo` (real
hyperparameter responses with real seed noise from a tabular benchmark), `deceptive` (a barrier
only a worse step crosses) and `smooth` (one bowl).

Searchers (each gets exactly the same number of evaluations; seed replicates, confirmations and
re-measures count):
  evo                 the engine's defaults: population from the budget, T = 2σ̂ held then cooled,
                      σ̂ pooled over every replicate, the elite as parent half the time,
                      follow-through after an accepted worse child, confirm, re-measure the top 3
  evo-pt              parallel tempering: one chain per slot on a ladder of temperatures, swaps
  evo-v1              evo as shipped before this redesign: population 8, exp cooling from 2σ̂ of the
                      seed's 3 replicates, tournament parents, no re-measure
  greedy              autoresearch: one measurement, keep iff strictly lower (batch greedy on N slots)
  greedy-confirm      greedy, re-measuring a would-be new best once
  greedy-independent  N independent greedy runs (one per slot), the top 3 re-measured at the end
  random              children of the seed; the best measured

Per searcher and cell: Δ = (true value of its returned best − greedy's) in σ units, mean ± standard
error over seeds (negative: better than greedy), paired wins/losses/ties against greedy, the
barrier-crossing rate (deceptive), the optimism of the reported best (its true value − what the
searcher reports it measures, σ units: positive = it looks better than it is; the winner's curse
of keeping the luckiest measurement), and P(the returned best is truly worse than the seed).

    python3 bench/search_quality.py                      # the measures' cells, 100 seeds, JSON to docs/search_quality.json
    python3 bench/search_quality.py --landscapes ideas --slots 1 --budgets 100 300 --seeds 200 --json -
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import statistics
import time
from pathlib import Path

from _common import ROOT, header, table

from tests.support.landscapes import NAMES, make
from tests.support.searchsim import SEARCHERS, simulate

BASELINE = "greedy"
# The cells the measures are read from (landscape, slots, evaluations); flags for a grid.
CELLS = [("ideas", 1, 100), ("ideas", 1, 300), ("ideas", 4, 300), ("ideas", 8, 800), ("hpo", 1, 100), ("hpo", 8, 800),
         ("deceptive", 1, 400), ("deceptive", 8, 800), ("smooth", 1, 100), ("smooth", 1, 300)]


def one_seed(task: tuple[str, int, int, int, list[str]]) -> dict:
    """Every searcher on one landscape instance, slot count, budget and bench seed."""
    landscape, slots, budget, seed, searchers = task
    out: dict = {}
    for name in searchers:
        ls = make(landscape, seed)
        r = simulate(ls, name, budget, slots, seed)
        out[name] = dict(f=(r.true - r.seed_true) / ls.sigma, optimism=(r.true - r.reported) / ls.sigma,
                         worse=r.true > r.seed_true, crossed=r.crossed, evaluations=r.evaluations, hours=r.hours)
    return out


def cell_summary(runs: list[dict], searchers: list[str]) -> dict[str, dict]:
    out = {}
    for name in searchers:
        deltas = [r[name]["f"] - r[BASELINE]["f"] for r in runs]
        n = len(deltas)
        crossed = [r[name]["crossed"] for r in runs if r[name]["crossed"] is not None]
        out[name] = dict(
            n=n, delta_mean=statistics.fmean(deltas),
            delta_se=statistics.stdev(deltas) / math.sqrt(n) if n > 1 else float("nan"),
            wins=sum(d < -1e-9 for d in deltas), losses=sum(d > 1e-9 for d in deltas),
            gain_vs_seed=-statistics.fmean(r[name]["f"] for r in runs),
            optimism=statistics.fmean(r[name]["optimism"] for r in runs),
            p_worse_than_seed=statistics.fmean(r[name]["worse"] for r in runs),
            crossed=statistics.fmean(crossed) if crossed else None,
            evaluations=statistics.fmean(r[name]["evaluations"] for r in runs),
            hours=statistics.fmean(r[name]["hours"] for r in runs))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=100, help="bench seeds per cell [100]")
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--landscapes", nargs="+", choices=list(NAMES), help="a grid instead of the default cells: "
                    "these landscapes [all] x --slots [1 4 8] x --budgets [100 300 800]")
    ap.add_argument("--slots", nargs="+", type=int)
    ap.add_argument("--budgets", nargs="+", type=int, help="evaluations per night")
    ap.add_argument("--searchers", nargs="+", default=list(SEARCHERS), choices=list(SEARCHERS))
    ap.add_argument("--jobs", type=int, default=min(2, mp.cpu_count() or 1), help="worker processes [2]")
    ap.add_argument("--json", type=Path, default=ROOT / "docs" / "search_quality.json",
                    help="where the machine-readable summary goes [docs/search_quality.json]; '-' for none")
    args = ap.parse_args()
    searchers = [BASELINE] + [s for s in args.searchers if s != BASELINE]
    header("Search quality: evo vs greedy and baselines at equal evaluations (simulated nights)")
    if args.landscapes or args.slots or args.budgets:
        cells = [(ls, n, b) for ls in args.landscapes or NAMES for n in args.slots or [1, 4, 8]
                 for b in args.budgets or [100, 300, 800]]
    else:
        cells = CELLS
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    tasks = [(ls, n, b, s, searchers) for ls, n, b in cells for s in seeds]
    t0 = time.monotonic()
    with mp.get_context("fork").Pool(args.jobs) as pool:
        results = pool.map(one_seed, tasks, chunksize=4)
    wall = time.monotonic() - t0
    summary = []
    for ls in dict.fromkeys(c[0] for c in cells):
        rows = []
        for _, n, b in [c for c in cells if c[0] == ls]:
            runs = [r for (l2, n2, b2, _, _), r in zip(tasks, results) if (l2, n2, b2) == (ls, n, b)]
            stats = cell_summary(runs, searchers)
            summary.append(dict(landscape=ls, slots=n, budget=b, seeds=len(runs), searchers=stats))
            for name in searchers:
                st = stats[name]
                rows.append([n, b, name, "-" if name == BASELINE else f"{st['delta_mean']:+.2f} ± {st['delta_se']:.2f}",
                             "-" if name == BASELINE else f"{st['wins']}/{st['losses']}", f"{st['gain_vs_seed']:.2f}",
                             f"{st['optimism']:+.2f}", f"{st['p_worse_than_seed']:.2f}",
                             "-" if st["crossed"] is None else f"{st['crossed']:.2f}", f"{st['hours']:.1f}"])
        table(["slots", "evaluations", "searcher", "Δ vs greedy (σ) ± SE", "wins/losses", "gain over seed (σ)",
               "optimism (σ)", "P(worse than seed)", "crossed", "night (h)"], rows,
              f"{ls}: {args.seeds} seeds per cell; Δ < 0 is better than greedy")
    print(f"{len(tasks)} nights x {len(searchers)} searchers in {wall:.0f} s on {args.jobs} processes")
    if str(args.json) != "-":
        args.json.write_text(json.dumps(dict(command="python3 bench/search_quality.py " + " ".join(
            f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in vars(args).items() if k != "json" and v is not None), cells=summary), indent=1) + "\n")
        print(f"summary: {args.json}")


if __name__ == "__main__":
    main()
