"""Slot utilisation: the share of wall time the slots spend evaluating. Target >= 95 %.

The real `evo.engine.loop.Engine` runs with 4 slots (`Slot("cpu0")` .. `Slot("cpu3")`), an in-process
simulated evaluation (passed as `Engine(..., evaluate=...)`) that sleeps B seconds and returns a
COMPLETE `EvalResult`, and an operator whose `propose` sleeps 0.2·B before making a real
`evo.operators.tweak.tweak` of its parent (an LLM call that takes a fifth of a training run).

Utilisation is measured from the archive's evaluation rows (started_at / finished_at):

    busy slot-seconds / (slots × span)

over two windows:
  whole run     span = first evaluation start .. last evaluation end; includes the seed phase,
                where only `replicates` slots can work (the seed must be scored before anything
                can be proposed), and the final drain, where the budget is spent and slots empty;
  steady state  span = the moment the seed is decided (its last replicate ends) .. last end.
A third column, "steady, no drain", ends the window when the first slot goes idle for good
(the last evaluation start), which isolates the loop's dispatch/proposal gaps from the drain.

Evaluations are exactly B seconds unless --jitter is given (each then lasts B·U(1-j, 1+j)).

    python3 bench/slot_utilisation.py                       # defaults: about 1 minute
    python3 bench/slot_utilisation.py --candidates 200 --budget 2 --lookahead 0 1 2 --repeats 3
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path

from _common import SURROGATE, header, table

from evo.launch.apparatus import Apparatus, load
from evo.storage import COMPLETE, Archive
from evo.config import RunConfig
from evo.engine.loop import Engine
from evo.engine.seeding import SeedPlan
from evo.launch.logs import Outcome
from evo.operators.base import Operator, Parent, Proposal
from evo.operators.tweak import find_constants, tweak
from evo.launch.runner import EvalResult, Slot

TARGETS = (2.0, 0.5, 4.0, 1.5)  # the surrogate's landscape, as in tests/fixtures/surrogate/prepare.py


class SlowTweak(Operator):
    """The tweak operator behind a fixed proposal latency."""
    name = "tweak"
    n_parents = 1

    def __init__(self, latency: float):
        self.latency = latency

    def propose(self, parents: list[Parent], rng: random.Random) -> Proposal:
        time.sleep(self.latency)
        code, changes = tweak(parents[0].code, rng)
        return Proposal(code=code, hypothesis="tweak " + ", ".join(f"{n} {a:g} -> {b:g}" for n, a, b in changes))


def make_evaluate(budget: float, jitter: float, sigma: float = 0.001):
    import math

    def evaluate(*, code, workdir, prepare_src, locked_hash, slot, seed, limits, preset, stop):
        rng = random.Random(f"{seed}:{code}")
        seconds = budget * (rng.uniform(1 - jitter, 1 + jitter) if jitter else 1.0)
        time.sleep(seconds)
        xs = {c.name: float(c.value) for c in find_constants(code)}
        true = 1.0 + 0.01 * sum((math.log(xs[f"X{i + 1}"]) - math.log(t)) ** 2 for i, t in enumerate(TARGETS))
        summary = {"val_bpb": true + rng.gauss(0.0, sigma), "training_seconds": seconds, "total_seconds": seconds,
                   "peak_vram_mb": 0.0, "mfu_percent": 0.0, "total_tokens_M": 0.0, "num_steps": 3,
                   "num_params_M": 0.0, "depth": 1}
        return EvalResult(Outcome(COMPLETE, summary=summary), [], 0, seconds, 0.0, "")
    return evaluate


def utilisation(intervals: list[tuple[float, float]], n_slots: int, lo: float, hi: float) -> float:
    busy = sum(max(0.0, min(e, hi) - max(s, lo)) for s, e in intervals)
    return busy / (n_slots * (hi - lo)) if hi > lo else float("nan")


def one_run(args, lookahead: int, rep: int, root: Path) -> dict:
    archive = Archive(f"sqlite:///{root}/slots-{lookahead}-{rep}.db")
    config = RunConfig(name=f"u{lookahead}", preset="smoke", population=args.population,
                       temperature=args.temperature, replicates=args.replicates, max_candidates=args.candidates,
                       lookahead=lookahead, seed=rep).validate()
    run = archive.create_run(config.name, config.to_dict())
    app = Apparatus(prepare_path=SURROGATE / "prepare.py", preset="smoke", locked_hash="x",
                    time_budget=args.budget, manifest=Path("."),
                    allowances=load(SURROGATE / "prepare.py", "smoke").allowances, seed_sizes={})
    slots = [Slot(f"cpu{i}") for i in range(args.slots)]
    engine = Engine(archive, run, config, SlowTweak(args.propose_fraction * args.budget), slots, app,
                    SeedPlan((SURROGATE / "train.py").read_text()), evaluate=make_evaluate(args.budget, args.jitter))
    t0 = time.monotonic()
    engine.execute()
    wall = time.monotonic() - t0

    def ts(d: datetime) -> float:
        return d.timestamp()

    evs = [e for e in archive.evaluations(run.id) if e.started_at and e.finished_at]
    intervals = [(ts(e.started_at), ts(e.finished_at)) for e in evs]
    seed_id = archive.run_by_id(run.id).seed_id
    seed_end = max(ts(e.finished_at) for e in evs if e.candidate_id == seed_id)
    first, last = min(s for s, _ in intervals), max(e for _, e in intervals)
    last_start = max(s for s, _ in intervals)
    # When each evaluation became runnable: a child's first evaluation when the operator's proposal
    # was stored (its candidate's "propose" event), a confirmation when the previous evaluation of
    # the same candidate finished (the decision that queues it follows at once).
    events = archive.events(run.id)
    proposed = {e.candidate_id: ts(e.at) for e in events if e.kind == "propose"}
    ends: dict[int, list[float]] = {}
    for e in sorted(evs, key=lambda e: e.replicate):
        ends.setdefault(e.candidate_id, []).append(ts(e.finished_at))
    # Per-slot idle gaps after the seed, split into waiting for work to exist (the operator) and
    # work waiting for the engine loop to dispatch it.
    gaps, no_work, undispatched = [], 0.0, 0.0
    for name in {e.slot for e in evs}:
        mine = sorted((e for e in evs if e.slot == name), key=lambda e: e.started_at)
        for a, b in zip(mine, mine[1:]):
            end, start = ts(a.finished_at), ts(b.started_at)
            if start < seed_end:
                continue
            end = max(end, seed_end)
            gaps.append(start - end)
            ready = proposed.get(b.candidate_id) if b.replicate == 0 else ends[b.candidate_id][b.replicate - 1]
            ready = min(max(ready, end), start) if ready is not None else end
            no_work += ready - end
            undispatched += start - ready
    cands = archive.candidates(run.id)
    out = {
        "lookahead": lookahead, "evaluations": len(evs), "candidates": len(cands) - 1,
        "pruned": sum(1 for c in cands if c.state == "PRUNED"),
        "wall": wall, "span": last - first,
        "whole": utilisation(intervals, args.slots, first, last),
        "steady": utilisation(intervals, args.slots, seed_end, last),
        "core": utilisation(intervals, args.slots, seed_end, last_start),
        "gap_mean": statistics.fmean(gaps) if gaps else float("nan"),
        "gap_max": max(gaps) if gaps else float("nan"),
        "no_work": no_work, "undispatched": undispatched,
        "seed_phase": seed_end - first, "drain": last - last_start,
    }
    archive.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--slots", type=int, default=4, help="slots [4]")
    ap.add_argument("--budget", "-B", type=float, default=1.0, help="seconds per evaluation, B [1.0]")
    ap.add_argument("--propose-fraction", type=float, default=0.2, help="operator latency as a fraction of B [0.2]")
    ap.add_argument("--candidates", type=int, default=40, help="max_candidates of each run [40]")
    ap.add_argument("--lookahead", type=int, nargs="+", default=[0, 1, 2], help="RunConfig.lookahead values [0 1 2]")
    ap.add_argument("--repeats", type=int, default=1, help="runs per lookahead (engine seeds 0..) [1]")
    ap.add_argument("--replicates", type=int, default=2, help="seed replicates [2]")
    ap.add_argument("--temperature", default="0.001", help="temperature (a number; or auto) [0.001]")
    ap.add_argument("--population", type=int, default=8, help="population [8]")
    ap.add_argument("--jitter", type=float, default=0.0, help="evaluation time B·U(1-j, 1+j) [0: exactly B]")
    args = ap.parse_args()
    header("Slot utilisation (target >= 95 %)")
    print(f"{args.slots} slots, B = {args.budget:g} s, propose = {args.propose_fraction:g}·B, "
          f"{args.candidates} candidates, replicates {args.replicates}, temperature {args.temperature}, "
          f"population {args.population}, jitter {args.jitter:g}, confirm on\n")

    rows = []
    with tempfile.TemporaryDirectory(prefix="evo-bench-") as tmp:
        for la in args.lookahead:
            for rep in range(args.repeats):
                r = one_run(args, la, rep, Path(tmp))
                rows.append([la, rep, r["candidates"], r["pruned"], r["evaluations"], f"{r['wall']:.1f}",
                             f"{r['span']:.1f}", f"{r['seed_phase']:.2f}", f"{r['drain']:.2f}",
                             f"{100 * r['whole']:.1f}", f"{100 * r['steady']:.1f}", f"{100 * r['core']:.1f}",
                             f"{1000 * r['gap_mean']:.0f}", f"{1000 * r['gap_max']:.0f}",
                             f"{r['no_work']:.2f}", f"{r['undispatched']:.2f}"])
    table(["lookahead", "run", "candidates", "pruned", "evaluations", "wall s", "span s", "seed phase s",
           "drain s", "util whole %", "util steady %", "util steady, no drain %", "slot idle gap mean ms",
           "gap max ms", "idle: no work s", "idle: queued s"], rows)
    print("util whole: first start .. last end; steady: seed decided .. last end; "
          "no drain: seed decided .. last evaluation start.\n"
          "slot idle gap: on one slot, from an evaluation's end to that slot's next start (after the seed).\n"
          "idle: no work = slot-seconds of those gaps before the next evaluation existed (waiting on the operator);\n"
          "idle: queued = slot-seconds after it was queued until it started (the engine loop's dispatch latency).")


if __name__ == "__main__":
    main()
