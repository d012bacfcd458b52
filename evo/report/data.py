"""Pure functions that turn archive rows into the data behind each part of the report.

Nothing here touches the database: every function takes rows (SQLModel `Candidate`, `Evaluation`,
... instances, or any object with the same attributes) and returns plain Python data, so each
figure's content can be unit-tested without an archive. `figures.py` turns these into plotly
figures; `load.py` reads the rows.

Conventions: candidates come ordered by `number` (as `Archive.candidates` returns them) and are
referred to by their position `i` in that list; times are timezone-aware UTC datetimes (naive
values from the database are taken as UTC).
"""

from __future__ import annotations

import base64
import bisect
import json
import math
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Sequence

from evo.storage import ACTIVE, COMPLETE, FAIL, PRUNED, RUNNING, busy_share
from evo.core import counts, noise
from evo.core import format as fmt
from evo.core.lineage import best_index, line
from evo.cli.view import run_status

MAX_CODE_CHARS = 200_000   # a root candidate's code shown in full up to this size

# Marker symbol of each operator (plotly names); unknown operators get a circle.
OPERATOR_SYMBOLS = {
    "seed": "star", "import": "square", "mutate": "circle", "tweak": "triangle-up",
    "crossover": "diamond", "merge": "hexagon", "fix": "cross",
}


def utc(moment: datetime | None) -> datetime | None:
    """Stored timestamps may come back naive (SQLite); they are UTC."""
    if moment is None:
        return None
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment


def operator_symbol(operator: str) -> str:
    return OPERATOR_SYMBOLS.get(operator, "circle")


def escape(text: str | None) -> str:
    """Text for plotly's hover labels and annotations, which read a subset of HTML."""
    return (text or "").replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def shorten(text: str | None, limit: int) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---------------------------------------------------------------------------
# The candidate list: positions, parents, best, path, generations
# ---------------------------------------------------------------------------

@dataclass
class Lineage:
    """How candidates relate: parent positions (-1 when none), generation, best and its path."""
    pos: dict[int, int]                 # candidate id -> position in the list
    parent: list[int]                   # position of parent_id, -1 if none (or not in this run)
    parent2: list[int]                  # position of parent2_id, -1 if none
    generation: list[int]               # depth from the seed (imported history before it is negative)
    best: int                           # position of the best candidate, -1 if none yet
    path: list[int]                     # positions from the first ancestor to the best, inclusive
    seed: int                           # position of the seed, -1 if none
    role: list[str]                     # evo.core.counts: history, seed or child
    outcome: list[str]                  # evo.core.counts: accepted, rejected, undecided, ..., failed, pruned


def lineage(cands: Sequence[Any], seed_id: int | None) -> Lineage:
    pos = {c.id: i for i, c in enumerate(cands)}
    parent = [pos.get(c.parent_id, -1) if c.parent_id is not None else -1 for c in cands]
    parent2 = [pos.get(c.parent2_id, -1) if c.parent2_id is not None else -1 for c in cands]
    depth = [0] * len(cands)
    # Depth along primary parents (so every parent → child edge spans one generation). Parents
    # are created before their children, so one pass in number order suffices; a parent found
    # later (a damaged archive) counts as a root rather than looping.
    for i in range(len(cands)):
        depth[i] = depth[parent[i]] + 1 if 0 <= parent[i] < i else 0
    seed = pos.get(seed_id, -1) if seed_id is not None else -1
    if seed < 0:
        seed = next((i for i, c in enumerate(cands) if c.operator == "seed"), -1)
    shift = depth[seed] if seed >= 0 else 0
    best = best_position(cands)
    seed_id = cands[seed].id if seed >= 0 else None
    roles, outcomes = zip(*(counts.candidate_outcome(c, seed_id) for c in cands)) if cands else ((), ())
    return Lineage(pos, parent, parent2, [d - shift for d in depth], best, ancestry(parent, best), seed,
                   list(roles), list(outcomes))


def best_position(cands: Sequence[Any]) -> int:
    """The best candidate's position (evo.core.lineage's rule, the same as `evo best`), -1 if none;
    a would-be best awaiting confirmation is not accepted yet."""
    return best_index(cands)


def ancestry(parent: Sequence[int], end: int) -> list[int]:
    """Positions from the root of `end`'s primary-parent line down to `end` (empty for -1)."""
    return line(end if end >= 0 else None, lambda i: parent[i] if parent[i] >= 0 else None)[::-1]


def delta_vs_parent(cands: Sequence[Any], parent: Sequence[int]) -> list[float | None]:
    out: list[float | None] = []
    for c, p in zip(cands, parent):
        pv = cands[p].val_bpb if p >= 0 else None
        out.append(c.val_bpb - pv if c.val_bpb is not None and pv is not None else None)
    return out


def is_history(i: int, lin: Lineage) -> bool:
    """Imported history (a greedy run's commits, another run's candidates): measured elsewhere,
    never here. The seed of a seeded run is an import too, but it is re-measured here."""
    return lin.role[i] == counts.HISTORY


# ---------------------------------------------------------------------------
# Header
# ---------------------------------------------------------------------------

def summary(run: Any, config: dict, cands: Sequence[Any], evals: Sequence[Any], calls: Sequence[Any],
            lin: Lineage, now: datetime, owner_alive: bool = False) -> dict:
    """The header: the run's settings and its totals, and its status as `evo status` shows it."""
    tally = counts.count(cands, cands[lin.seed].id if lin.seed >= 0 else None)
    wall = sum(e.wall_seconds or 0.0 for e in evals)
    slots = sorted({e.slot for e in evals if e.slot})
    gpu = any(s.startswith("gpu") for s in slots) or not slots
    best = cands[lin.best] if lin.best >= 0 else None
    seed = cands[lin.seed] if lin.seed >= 0 else None
    sigma = run.sigma
    best_spread = (best.val_bpb_std if best is not None and best.val_bpb_std is not None else sigma)
    improvement = (best.val_bpb - seed.val_bpb) if best is not None and seed is not None and seed.val_bpb is not None else None
    models = list(config.get("models") or [])
    for c in cands:
        if c.model and c.model not in models:
            models.append(c.model)
    started = utc(run.created_at)
    finished = utc(run.finished_at)
    heartbeat = utc(run.heartbeat_at)
    heartbeat_age = (now - heartbeat).total_seconds() if heartbeat else None
    status, status_note = run_status(run, owner_alive, heartbeat_age)
    return {
        "name": run.name,
        "status": status,
        "status_note": status_note,
        "owner": run.owner,
        "live": status == ACTIVE,
        "heartbeat_age": heartbeat_age,
        "created": started.isoformat() if started else None,
        "finished": finished.isoformat() if finished else None,
        "generated": now.isoformat(),
        "active_hours": (run.active_seconds or 0.0) / 3600.0,
        "preset": config.get("preset"),
        "operator": config.get("operator"),
        "population": config.get("population"),
        "temperature": config.get("temperature"),
        "cooling": config.get("cooling"),
        "replicates": config.get("replicates"),
        "confirm": config.get("confirm"),
        "hours": config.get("hours"),
        "max_candidates": config.get("max_candidates"),
        "max_cost": config.get("max_cost"),
        "models": models,
        "sigma": sigma,
        "temperature0": run.temperature0,
        "slots": slots,
        "candidates": tally.total,
        "children": tally.n_children,
        "outcomes": {o: tally[o] for o in counts.OUTCOMES},
        "history": {"n": tally.n_history, **{w: tally.history.get(o, 0) for o, w in counts.HISTORY_WORDS.items()}},
        "accepted": tally[counts.ACCEPTED],
        "rejected": tally[counts.REJECTED],
        "evaluations": sum(1 for e in evals if e.state in (COMPLETE, FAIL)),
        "slot_hours": wall / 3600.0,
        "busy": busy_share(sum(e.trained_seconds or 0.0 for e in evals), run.slot_seconds or 0.0),
        "slot_kind": "GPU" if gpu else "CPU",
        "llm_cost": sum(c.cost_usd or 0.0 for c in calls),
        "llm_calls": len(calls),
        "llm_tokens_in": sum(c.tokens_in or 0 for c in calls),
        "llm_tokens_out": sum(c.tokens_out or 0 for c in calls),
        "llm_errors": sum(1 for c in calls if c.error),
        "best": None if best is None else {
            "i": lin.best, "number": best.number, "val_bpb": best.val_bpb, "spread": best_spread,
            "spread_is_sigma": best.val_bpb_std is None and sigma is not None, "n_evals": best.n_evals,
            "confirmed": best.n_evals >= 2, "hypothesis": best.hypothesis,
            "improvement": improvement,
            "improvement_sigmas": improvement / sigma if improvement is not None and sigma else None,
            "path_length": len(lin.path),
        },
        "seed": None if seed is None else {"i": lin.seed, "number": seed.number, "val_bpb": seed.val_bpb,
                                           "spread": seed.val_bpb_std, "n_evals": seed.n_evals},
    }


# ---------------------------------------------------------------------------
# Progress: val_bpb over wall time and over candidate number
# ---------------------------------------------------------------------------

@dataclass
class Progress:
    points: dict[str, list[int]]         # children by outcome: evaluated ones, and failed and pruned ones
    seed: int                            # position of the seed if it was measured here, else -1
    history: dict[str, list[int]]        # imported history by outcome (kept, discarded, crashed)
    history_best: list[tuple[int, float, int]]      # the imported run's own running best over candidate number
    when: list[datetime | None]          # per candidate: when it was decided (finished_at)
    best_time: list[tuple[datetime, float, int]]    # running best steps over time: (t, value, position)
    best_number: list[tuple[int, float, int]]       # running best steps over candidate number
    improvements: list[int]              # positions where the best improved, in time order
    temperature_time: list[tuple[datetime, float]]  # (t, T) of each Metropolis decision
    temperature_number: list[tuple[int, float]]


PROGRESS_OUTCOMES = (counts.ACCEPTED, counts.REJECTED, counts.UNDECIDED, counts.FAILED, counts.PRUNED)


def decided_at(cands: Sequence[Any], lin: Lineage, evals: Sequence[Any], seed_replicates: int) -> list[datetime | None]:
    """When each candidate was first judged: the end of its first evaluation (the seed: of its
    first `seed_replicates`). A candidate's finished_at moves on with each confirmation and
    re-measure, so it would put the seed, re-measured at the end of a run, after its children."""
    ends: dict[int, list[tuple[int, datetime]]] = defaultdict(list)
    for e in evals:
        end = utc(e.finished_at)
        if end is not None and e.state in (COMPLETE, FAIL):
            ends[e.candidate_id].append((e.replicate, end))
    out = []
    for i, c in enumerate(cands):
        mine = sorted(ends.get(c.id, ()))
        first = [t for r, t in mine if r < (seed_replicates if i == lin.seed else 1)] or [t for _, t in mine[:1]]
        out.append(max(first) if first else utc(c.finished_at))
    return out


def progress(cands: Sequence[Any], lin: Lineage, when: Sequence[datetime | None] | None = None) -> Progress:
    """What the progress figure draws. Its children's points by outcome are the header's counts
    (those running or waiting have no point yet); the seed is a point of its own; imported history
    is a series of its own with its own running best (autoresearch's progress view), on the
    candidate-number axis only: it was measured elsewhere, before this run. `when`: each
    candidate's time on the time axis (`decided_at`; default its finished_at)."""
    points: dict[str, list[int]] = {k: [] for k in PROGRESS_OUTCOMES}
    history: dict[str, list[int]] = {counts.ACCEPTED: [], counts.REJECTED: [], counts.FAILED: []}
    when = list(when) if when is not None else [utc(c.finished_at) for c in cands]
    for i, c in enumerate(cands):
        kind = lin.outcome[i]
        if lin.role[i] == counts.CHILD and kind in points:
            points[kind].append(i)
        elif lin.role[i] == counts.HISTORY and kind in history:
            history[kind].append(i)
    history_best, current = [], math.inf
    for i in history[counts.ACCEPTED]:
        v = cands[i].imported_val_bpb
        if v is not None and v < current:
            current = v
            history_best.append((cands[i].number, v, i))
    seed = lin.seed if lin.seed >= 0 and cands[lin.seed].val_bpb is not None else -1
    accepted = sorted(points[counts.ACCEPTED] + ([seed] if seed >= 0 and cands[seed].accepted else []))
    by_time = sorted((i for i in accepted if when[i] is not None), key=lambda i: (when[i], cands[i].number))
    best_time, improvements, current = [], [], math.inf
    for i in by_time:
        if cands[i].val_bpb < current:
            current = cands[i].val_bpb
            best_time.append((when[i], current, i))
            improvements.append(i)
    best_number, current = [], math.inf
    for i in accepted:  # in number order
        if cands[i].val_bpb < current:
            current = cands[i].val_bpb
            best_number.append((cands[i].number, current, i))
    temps = [(i, c.accept_temperature) for i, c in enumerate(cands)
             if c.accept_temperature is not None and lin.role[i] == counts.CHILD]
    temperature_time = sorted((when[i], t) for i, t in temps if when[i] is not None)
    temperature_number = [(cands[i].number, t) for i, t in temps]
    return Progress(points, seed, history, history_best, when, best_time, best_number, improvements,
                    temperature_time, temperature_number)


# ---------------------------------------------------------------------------
# Lineage
# ---------------------------------------------------------------------------

def node_value(c: Any, i: int, lin: Lineage) -> float | None:
    """Where a candidate sits on the lineage's val_bpb axis: its value measured here, or for
    imported history the value measured where it ran; None for those without one (failed,
    pruned, not evaluated yet)."""
    return c.imported_val_bpb if lin.role[i] == counts.HISTORY else c.val_bpb


def edges(lin: Lineage) -> tuple[list[tuple[int, int]], list[tuple[int, int]], list[tuple[int, int]]]:
    """(parent, child) pairs: first parents, second parents (crossover, merge), the path to the best."""
    return ([(p, i) for i, p in enumerate(lin.parent) if p >= 0],
            [(p, i) for i, p in enumerate(lin.parent2) if p >= 0],
            list(zip(lin.path, lin.path[1:])))


def hover(c: Any, parent_number: int | None, delta: float | None, sigma: float | None, outcome: str,
          role: str = counts.CHILD, steps: int | None = None, tokens_per_second: float | None = None,
          warnings: Sequence[str] = ()) -> str:
    """One candidate's hover label (plotly's HTML subset, escaped)."""
    word = counts.word(outcome, role)
    lines = [f"<b>#{c.number}</b> {escape(c.operator)}"
             + (f" of #{parent_number}" if parent_number is not None else "")
             + f" · {escape(word)}" + (" (imported history)" if role == counts.HISTORY else "")]
    if c.hypothesis:
        lines.append(escape(shorten(c.hypothesis, 90)))
    if c.val_bpb is not None and c.val_bpb_std is not None:
        lines.append(f"val_bpb {fmt.bpb(c.val_bpb, c.val_bpb_std)} (n={c.n_evals})")
    elif c.val_bpb is not None:
        lines.append(f"val_bpb {fmt.bpb(c.val_bpb)} (n={c.n_evals}" + (f"; noise σ {fmt.bpb(sigma)})" if sigma else ")"))
    elif c.imported_val_bpb is not None:
        lines.append(f"val_bpb {fmt.bpb(c.imported_val_bpb)} (imported)")
    if steps is not None:
        lines.append(f"{steps:,} steps" + (f" · {tokens_per_second:,.0f} tok/s" if tokens_per_second else ""))
    if delta is not None:
        lines.append(f"Δ vs parent {fmt.delta(delta)}")
    lines += [f"⚠ {escape(shorten(w, 110))}" for w in warnings]
    if c.state in (FAIL, PRUNED):
        lines.append(f"{c.state}: {escape(c.fail_reason or '')}")
    return "<br>".join(lines)


# ---------------------------------------------------------------------------
# Noise: how fast each candidate trained, and when the machine says more than the code
# ---------------------------------------------------------------------------

@dataclass
class Speed:
    steps: list[int | None]              # per candidate: steps of its first complete evaluation
    tokens_per_second: list[float | None]
    warnings: list[list[str]]            # per candidate: evo.core.noise's sentences


def speeds(cands: Sequence[Any], evals: Sequence[Any], cores: int) -> Speed:
    """Steps and tokens per second beside every val_bpb (a wall-clock budget measures the
    machine's speed too), and the noise warnings of each candidate's evaluations."""
    by_candidate: dict[int, list[Any]] = defaultdict(list)
    for e in evals:
        by_candidate[e.candidate_id].append(e)
    steps, rates, warnings = [], [], []
    for c in cands:
        mine = sorted(by_candidate.get(c.id, ()), key=lambda e: e.replicate)
        first = next((e for e in mine if e.state == COMPLETE), None)
        steps.append(first.num_steps if first is not None else None)
        rates.append(noise.tokens_per_second(first) if first is not None else None)
        warnings.append(noise.warnings(mine, cores))
    return Speed(steps, rates, warnings)


# ---------------------------------------------------------------------------
# The candidate table
# ---------------------------------------------------------------------------

def table(cands: Sequence[Any], lin: Lineage, deltas: Sequence[float | None], evals: Sequence[Any],
          calls: Sequence[Any], speed: Speed | None = None) -> dict[str, list]:
    """Columns of the candidate table, one list per column, one entry per candidate."""
    duration: dict[int, float] = defaultdict(float)
    for e in evals:
        if e.wall_seconds is not None:
            duration[e.candidate_id] += e.wall_seconds
    cost: dict[int, float] = defaultdict(float)
    for call in calls:
        if call.candidate_id is not None:
            cost[call.candidate_id] += call.cost_usd or 0.0
    num = lambda p: cands[p].number if p >= 0 else None  # noqa: E731
    on_path = set(lin.path)
    return {
        "number": [c.number for c in cands],
        "parent": [num(p) for p in lin.parent],
        "parent2": [num(p) for p in lin.parent2],
        "operator": [c.operator for c in cands],
        "hypothesis": [c.hypothesis or "" for c in cands],
        "state": [c.state for c in cands],
        "fail_reason": [c.fail_reason for c in cands],
        "val_bpb": [c.val_bpb if c.val_bpb is not None else None for c in cands],
        "std": [c.val_bpb_std for c in cands],
        "imported": [c.imported_val_bpb for c in cands],
        "n_evals": [c.n_evals for c in cands],
        "delta": list(deltas),
        "accepted": [c.accepted for c in cands],
        "probability": [c.accept_probability for c in cands],
        "temperature": [c.accept_temperature for c in cands],
        "duration": [round(duration[c.id], 1) if c.id in duration else None for c in cands],
        "model": [c.model for c in cands],
        "cost": [round(cost[c.id], 6) if c.id in cost else None for c in cands],
        "generation": list(lin.generation),
        "in_population": [bool(c.in_population) for c in cands],
        "on_path": [i in on_path for i in range(len(cands))],
        "steps": list(speed.steps) if speed else [None] * len(cands),
        "tok_s": [round(r) if r else None for r in speed.tokens_per_second] if speed else [None] * len(cands),
        "warnings": list(speed.warnings) if speed else [[] for _ in cands],
        "outcome": list(lin.outcome),
        "role": list(lin.role),
    }


# ---------------------------------------------------------------------------
# Slot timeline
# ---------------------------------------------------------------------------

@dataclass
class Segment:
    slot: str
    start: datetime
    end: datetime
    outcome: str                        # COMPLETE, FAIL, RUNNING
    candidate: int                      # position
    replicate: int
    fail_reason: str | None = None


@dataclass
class Timeline:
    slots: list[str]
    segments: list[Segment]
    busy: dict[str, float]               # slot -> busy seconds
    span: tuple[datetime, datetime] | None
    utilisation: dict[str, float]        # slot -> busy share of the span
    idle: list[tuple[str, datetime, datetime]] = field(default_factory=list)  # gaps longer than min_gap


def _slot_key(name: str) -> tuple:
    head = name.rstrip("0123456789")
    tail = name[len(head):]
    return head, int(tail) if tail else -1


def timeline(evals: Sequence[Any], lin: Lineage, now: datetime, min_gap: float = 10.0) -> Timeline:
    """Which slot ran which evaluation, and when. A running evaluation ends at `now`. Idle gaps
    longer than `min_gap` seconds (inside the span) are listed."""
    segments = []
    for e in evals:
        start = utc(e.started_at)
        if e.slot is None or start is None or e.state not in (COMPLETE, FAIL, RUNNING):
            continue
        end = utc(e.finished_at) if e.state != RUNNING else now
        if end is None:
            continue
        segments.append(Segment(e.slot, start, max(end, start), e.state, lin.pos.get(e.candidate_id, -1),
                                e.replicate, e.fail_reason))
    segments.sort(key=lambda s: (s.start, s.slot))
    slots = sorted({s.slot for s in segments}, key=_slot_key)
    if not segments:
        return Timeline([], [], {}, None, {})
    lo = min(s.start for s in segments)
    hi = max(s.end for s in segments)
    total = max((hi - lo).total_seconds(), 1e-9)
    busy: dict[str, float] = {}
    idle = []
    for slot in slots:
        mine = sorted((s for s in segments if s.slot == slot), key=lambda s: s.start)
        covered, cursor = 0.0, lo
        for s in mine:
            if (s.start - cursor).total_seconds() > min_gap:
                idle.append((slot, cursor, s.start))
            start = max(s.start, cursor)
            if s.end > start:
                covered += (s.end - start).total_seconds()
            cursor = max(cursor, s.end)
        if (hi - cursor).total_seconds() > min_gap:
            idle.append((slot, cursor, hi))
        busy[slot] = covered
    return Timeline(slots, segments, busy, (lo, hi), {s: busy[s] / total for s in slots}, idle)


# ---------------------------------------------------------------------------
# Acceptance rate against temperature
# ---------------------------------------------------------------------------

@dataclass
class AcceptanceBin:
    t_lo: float
    t_hi: float
    t_mid: float                         # median temperature of the decisions in the bin
    n: int                               # Metropolis decisions
    accepted: int
    worse: int                           # children worse than their competitor (Δ > 0)
    worse_accepted: int
    expected_worse: float | None         # mean exp(-Δ/T) over the worse ones: what the rule promises

    @property
    def rate(self) -> float:
        return self.accepted / self.n if self.n else float("nan")

    @property
    def worse_rate(self) -> float | None:
        return self.worse_accepted / self.worse if self.worse else None


def acceptance_bins(cands: Sequence[Any], lin: Lineage, bins: int = 10) -> list[AcceptanceBin]:
    """Metropolis decisions (children judged at a temperature, not failures, not the seed) in
    `bins` bins of equal count over temperature."""
    rows = sorted(((c.accept_temperature, c) for i, c in enumerate(cands)
                   if i != lin.seed and c.operator != "import" and c.accept_temperature is not None
                   and c.accept_delta is not None and c.accepted is not None), key=lambda r: (r[0], r[1].number))
    if not rows:
        return []
    temps = [t for t, _ in rows]
    k = max(1, min(bins, len(rows)))
    # Quantile edges, merged where temperatures repeat (a constant T gives one bin).
    cuts = sorted({temps[min(len(rows) - 1, (j * len(rows)) // k)] for j in range(1, k)})
    groups: list[list] = [[] for _ in range(len(cuts) + 1)]
    for t, c in rows:
        groups[bisect.bisect_right(cuts, t)].append((t, c))
    out = []
    for g in groups:
        if not g:
            continue
        ts = [t for t, _ in g]
        worse = [(t, c) for t, c in g if c.accept_delta > 0]
        expected = [math.exp(-c.accept_delta / t) if t > 0 else 0.0 for t, c in worse]
        out.append(AcceptanceBin(ts[0], ts[-1], ts[len(ts) // 2], len(g), sum(1 for _, c in g if c.accepted),
                                 len(worse), sum(1 for _, c in worse if c.accepted),
                                 sum(expected) / len(expected) if expected else None))
    return out


# ---------------------------------------------------------------------------
# Failure reasons over time
# ---------------------------------------------------------------------------

@dataclass
class Failures:
    edges: list[datetime]                # bins+1 bin edges
    counts: dict[str, list[int]]         # reason -> count per bin ("duplicate" for PRUNED)
    totals: list[int]                    # candidates finished per bin (any outcome)


def failures(cands: Sequence[Any], bins: int = 24) -> Failures:
    """Failed and pruned candidates per reason, in `bins` equal bins of wall time."""
    done = [(utc(c.finished_at) or utc(c.created_at), c) for c in cands
            if c.operator != "import" and c.state in (COMPLETE, FAIL, PRUNED)]
    done = [(t, c) for t, c in done if t is not None]
    if not done:
        return Failures([], {}, [])
    lo = min(t for t, _ in done)
    hi = max(t for t, _ in done)
    span = (hi - lo).total_seconds()
    k = bins if span > 0 else 1
    width = span / k if span > 0 else 1.0
    bin_edges = [lo + (hi - lo) * (j / k) for j in range(k + 1)]
    totals = [0] * k
    by_reason: dict[str, list[int]] = {}
    for t, c in done:
        j = min(k - 1, int((t - lo).total_seconds() / width)) if span > 0 else 0
        totals[j] += 1
        if c.state in (FAIL, PRUNED):
            reason = c.fail_reason or ("duplicate" if c.state == PRUNED else "unknown")
            by_reason.setdefault(reason, [0] * k)[j] += 1
    return Failures(bin_edges, dict(sorted(by_reason.items(), key=lambda kv: -sum(kv[1]))), totals)


# ---------------------------------------------------------------------------
# Training curves of the best path against the seed
# ---------------------------------------------------------------------------

@dataclass
class Curve:
    position: int
    number: int
    role: str                            # seed, path, best
    elapsed: list[float]
    loss: list[float]


def curve_evaluations(cands: Sequence[Any], lin: Lineage, evals: Sequence[Any]) -> dict[int, int]:
    """Which evaluation to draw for each candidate on the best path (and the seed): the first
    COMPLETE one (replicate 0, seed 42 for all: comparable under the same data order)."""
    wanted = set(lin.path) | ({lin.seed} if lin.seed >= 0 else set())
    ids = {cands[i].id: i for i in wanted}
    chosen: dict[int, tuple[int, int]] = {}
    for e in evals:
        i = ids.get(e.candidate_id)
        if i is not None and e.state == COMPLETE and (i not in chosen or e.replicate < chosen[i][1]):
            chosen[i] = (e.id, e.replicate)
    return {i: ev for i, (ev, _) in chosen.items()}


def curves(cands: Sequence[Any], lin: Lineage, points: dict[int, Sequence[Any]], max_points: int = 1500) -> list[Curve]:
    """Curves (CurvePoint rows per candidate position) in path order, the seed first; long curves
    are thinned to about `max_points` points."""
    order = list(lin.path)
    if lin.seed >= 0 and lin.seed not in order:
        order.insert(0, lin.seed)
    out = []
    for i in order:
        rows = points.get(i)
        if not rows:
            continue
        step = max(1, math.ceil(len(rows) / max_points))
        kept = list(rows[::step])
        if kept[-1] is not rows[-1]:
            kept.append(rows[-1])
        role = "best" if i == lin.best else "seed" if i == lin.seed else "path"
        out.append(Curve(i, cands[i].number, role, [p.elapsed for p in kept], [p.loss for p in kept]))
    return out


# ---------------------------------------------------------------------------
# Diffs and details
# ---------------------------------------------------------------------------

def detail(c: Any, parent: Any | None, parent2: Any | None, diff: str, evals: Sequence[Any],
           log_tail: str | None, log_replicate: int | None, calls: Sequence[Any] = (),
           max_diff_chars: int = 200_000, max_log_lines: int = 60, max_log_chars: int = 8_000) -> dict:
    """What the details panel shows for one candidate (stored compressed in the page)."""
    if len(diff) > max_diff_chars:
        diff = diff[:max_diff_chars] + f"\n… diff cut at {max_diff_chars} characters (`evo show {c.number}` has it all)\n"
    if log_tail:
        lines = log_tail.splitlines()
        if len(lines) > max_log_lines or len(log_tail) > max_log_chars:
            kept = "\n".join(lines[-max_log_lines:])[-max_log_chars:]
            log_tail = f"… (the last {kept.count(chr(10)) + 1} lines; `evo show {c.number}` has more)\n{kept}"
    return {
        "diff": diff,
        "vs": parent.number if parent is not None else None,
        "vs2": parent2.number if parent2 is not None else None,
        "rationale": c.rationale or "",
        "detail": c.fail_detail or "",
        "log": log_tail or "",
        "log_replicate": log_replicate,
        "evals": [{
            "replicate": e.replicate, "seed": e.seed, "slot": e.slot, "state": e.state,
            "fail_reason": e.fail_reason, "val_bpb": e.val_bpb, "wall": e.wall_seconds,
            "steps": e.num_steps, "vram": e.peak_vram_mb, "mfu": e.mfu_percent,
            "params": e.num_params_M, "tokens": e.total_tokens_M, "tok_s": noise.tokens_per_second(e),
            "load": e.load_avg, "cores": e.cores,
        } for e in evals],
        "calls": [{"model": k.model, "purpose": k.purpose, "in": k.tokens_in, "out": k.tokens_out,
                   "latency": k.latency_s, "cost": k.cost_usd, "error": k.error} for k in calls],
    }


def compress(text: str, level: int = 6) -> str:
    """zlib (deflate) and base64: how the page stores its data; the browser inflates it with
    DecompressionStream("deflate")."""
    return base64.b64encode(zlib.compress(text.encode("utf-8"), level)).decode("ascii")


def to_json(value: Any) -> str:
    """Compact JSON with NaN/inf as null (browsers reject NaN in JSON). The common case, no
    such number, takes one pass of the C encoder; the rare one is cleaned first."""
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (ValueError, TypeError):
        return json.dumps(_clean(value), separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return value

