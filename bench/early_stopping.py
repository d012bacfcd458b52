"""Early stopping against the parent's learning curve: evaluations gained per night, and how often
a child that would have ended better than its parent is stopped (issue 12: goal ≥ 1.3× at < 2 %).

Nights of children, each judged by the real rule (evo.core.early_stop: threshold learned online from
the night's completed children, should_stop at the first progress point past each checkpoint, as
the runner asks it) on simulated learning curves, in units of the seed noise σ of val_bpb:

  loss(f) = F + A·e^η·((f + b)^-c − (1 + b)^-c) + ε,   f = elapsed / budget, 40 points per run

F is the candidate's true value, A = 400σ the early excess (about 0.3 nats at 25 % of a 5-minute
run when σ is 3e-4 bpb), b = 0.05, c = 0.5; η is the idea's effect on the speed of training
(N(0, τ_idea), independent of its effect on F: some ideas that help in the end start slowly, as a
bigger model does) plus the run's own (N(0, 0.01)); ε is the smoothed train loss's noise (2σ). The
parent of each child is a fresh run of a candidate at F = 0; the child's F = Δ from an idea
distribution (half harmful, 30 % neutral, 20 % helpful with a heavy tail, as
tests/support/landscapes/ideas.py draws them: `pool`, harmful median 1.5σ), or with harmful ideas
of a heavier tail, as LLM edits that break training are (`broken`: median 10σ, up to a few hundred;
`severe`: median 30σ). Measured finals get
seed noise σ; a child "would have been accepted" when its measured final is below its parent's.

Columns: stopped (share of children), wrongly stopped (share of would-be-accepted children that
were stopped; goal < 2 %), stopped truly better (share of children with Δ < 0 stopped), budget
used (mean fraction of the training budget), gain (1 / budget used: evaluations per night; goal
≥ 1.3×), and gain with the fixed start-up and evaluation overhead of each evaluation counted (15 %
of the budget, which a stopped child pays too).

    python3 bench/early_stopping.py                  # 9 cells x 50 nights x 100 children, JSON to docs/early_stopping.json
    python3 bench/early_stopping.py --nights 20 --json -
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import time

from _common import ROOT, header, table

from evo.core.early_stop import CHECKPOINTS, Completed, gaps, should_stop, threshold

BUDGET = 300.0
POINTS = 40
A, B, C = 400.0, 0.05, 0.5
TAU_RUN = 0.01
POINT_NOISE = 2.0
OVERHEAD = 0.15
SHARES = (("harmful", 0.5), ("neutral", 0.3), ("helpful", 0.2))
# Harmful ideas' Δ, lognormal (log median, sd): as the search benchmark's idea pool; a heavy tail of
# edits that break training; mostly such edits.
HARMFUL = {"pool": (math.log(1.5), 0.8), "broken": (math.log(10.0), 1.2), "severe": (math.log(30.0), 1.0)}
TAUS = (0.005, 0.02, 0.05)


def idea(rng: random.Random, harmful: str) -> float:
    """Δ of one idea, σ units."""
    u = rng.random()
    if u < SHARES[0][1]:
        mu, s = HARMFUL[harmful]
        return math.exp(rng.gauss(mu, s))
    if u < SHARES[0][1] + SHARES[1][1]:
        return rng.gauss(0.0, 0.15)
    return -math.exp(rng.gauss(math.log(0.8), 0.9))


def run_curve(rng: random.Random, value: float, eta: float) -> list[tuple[int, float, float]]:
    shape = A * math.exp(eta + rng.gauss(0.0, TAU_RUN))
    tail = (1.0 + B) ** -C
    return [(k, BUDGET * k / POINTS, value + shape * ((k / POINTS + B) ** -C - tail) + rng.gauss(0.0, POINT_NOISE))
            for k in range(1, POINTS + 1)]


def night(rng: random.Random, children: int, harmful: str, tau: float) -> dict:
    history: list[Completed] = []
    used, stopped, better, wrong, truly_better, stopped_truly_better = [], 0, 0, 0, 0, 0
    for _ in range(children):
        parent = run_curve(rng, 0.0, 0.0)
        parent_final = rng.gauss(0.0, 1.0)
        delta = idea(rng, harmful)
        child = run_curve(rng, delta, rng.gauss(0.0, tau))
        child_final = delta + rng.gauss(0.0, 1.0)
        good = child_final < parent_final
        better += good
        truly_better += delta < 0
        learned = threshold(history)
        why, fraction = None, 1.0
        if learned is not None:
            for checkpoint in CHECKPOINTS:  # the runner's poll after each checkpoint; the verdict never changes later
                n = next(i for i, p in enumerate(child) if p[1] >= checkpoint * BUDGET) + 1
                why = should_stop(child[:n], parent, learned, BUDGET)
                if why:
                    fraction = child[n - 1][1] / BUDGET
                    break
        used.append(fraction)
        if why:
            stopped += 1
            wrong += good
            stopped_truly_better += delta < 0
        else:
            history.append(Completed(gaps(child, parent, BUDGET), good))
    return {"children": children, "used": sum(used), "wall": sum(f + OVERHEAD for f in used), "stopped": stopped,
            "better": better, "wrong": wrong, "truly_better": truly_better, "stopped_truly_better": stopped_truly_better}


def cell(harmful: str, tau: float, nights: int, children: int, seed: int) -> dict:
    totals: dict[str, float] = {}
    per_night_gain = []
    for k in range(nights):
        r = night(random.Random(f"{seed}:{harmful}:{tau}:{k}"), children, harmful, tau)
        per_night_gain.append(r["children"] / r["used"])
        for key, value in r.items():
            totals[key] = totals.get(key, 0) + value
    n = totals["children"]
    return {"harmful": harmful, "tau_idea": tau, "nights": nights, "children_per_night": children,
            "stopped_share": totals["stopped"] / n,
            "wrongly_stopped_rate": totals["wrong"] / max(1, totals["better"]),
            "would_be_accepted": int(totals["better"]), "wrongly_stopped": int(totals["wrong"]),
            "stopped_truly_better_rate": totals["stopped_truly_better"] / max(1, totals["truly_better"]),
            "budget_used": totals["used"] / n, "gain": n / totals["used"],
            "gain_sem": statistics.stdev(per_night_gain) / math.sqrt(nights) if nights > 1 else 0.0,
            "gain_with_overhead": n * (1 + OVERHEAD) / totals["wall"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nights", type=int, default=50)
    ap.add_argument("--children", type=int, default=100, help="children per night (one GPU overnight: about 100)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=str(ROOT / "docs" / "early_stopping.json"), help="where to write it; - for stdout")
    args = ap.parse_args()
    header("early stopping against the parent's learning curve")
    t0 = time.perf_counter()
    cells = [cell(h, tau, args.nights, args.children, args.seed) for h in HARMFUL for tau in TAUS]
    rows = [[c["harmful"], f"{c['tau_idea']:g} ({A * c['tau_idea'] * ((0.25 + B) ** -C - (1 + B) ** -C):.0f}σ)",
             f"{c['stopped_share']:.1%}", f"{c['wrongly_stopped_rate']:.2%} ({c['wrongly_stopped']}/{c['would_be_accepted']})",
             f"{c['stopped_truly_better_rate']:.2%}", f"{c['budget_used']:.3f}",
             f"{c['gain']:.2f}× ± {c['gain_sem']:.2f}", f"{c['gain_with_overhead']:.2f}×",
             "yes" if c["gain"] >= 1.3 and c["wrongly_stopped_rate"] < 0.02 else "no"]
            for c in cells]
    table(["harmful ideas", "τ_idea (at 25 %)", "stopped", "wrongly stopped", "stopped truly better", "budget used",
           "gain", "gain, overhead", "goal met"], rows,
          title=f"{args.nights} nights x {args.children} children per cell; goal: gain ≥ 1.3× at < 2 % wrongly stopped")
    print(f"{time.perf_counter() - t0:.1f} s")
    summary = {"bench": "early_stopping", "nights": args.nights, "children_per_night": args.children, "seed": args.seed,
               "model": {"budget_s": BUDGET, "points": POINTS, "A_sigma": A, "b": B, "c": C, "tau_run": TAU_RUN,
                         "point_noise_sigma": POINT_NOISE, "overhead": OVERHEAD, "shares": dict(SHARES),
                         "harmful_lognormal": HARMFUL},
               "cells": cells}
    text = json.dumps(summary, indent=1)
    if args.json == "-":
        print(text)
    else:
        with open(args.json, "w") as f:
            f.write(text + "\n")
        print(f"JSON summary: {args.json}")


if __name__ == "__main__":
    main()
