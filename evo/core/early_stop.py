"""Early stopping against the parent's learning curve, pure functions (multi-fidelity).

A child is judged at a few checkpoints of its training budget (CHECKPOINTS: 25 % and 45 %, before
seed_train.py's learning-rate warm-down starts at 50 %), never continuously: at a checkpoint, its
train loss is compared with its first parent's at the same elapsed training seconds. The child is
stopped when the gap (child minus parent) is above the threshold learned from the run's own
history of completed children: how far above their parents, at the same checkpoint, were the
children that ended better than their parent (or were accepted)? The rule is conservative by
construction: no stopping before MIN_HISTORY completed children with curves (MIN_GOOD of them
good), and the threshold sits above every good child's gap by a margin.

Curves are what `evo.launch.logs.parse_curve` gives: (step, elapsed training seconds, train loss),
printed by untrusted code. A candidate that prints losses lower than it trains at is never stopped
(and gains nothing: the harness scores its model anyway); one that prints nonsense at worst gets
stopped, and nothing here raises on any finite numbers.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Sequence

Point = tuple[int, float, float]  # (step, elapsed training seconds, train loss)

# Fractions of the time budget at which a child is judged.
CHECKPOINTS = (0.25, 0.45)
# The fail_reason of an evaluation (state PRUNED) that was stopped early.
FAIL_REASON = "early_stop"
# Completed children with curves before any stopping, and how many of them must have ended better
# than their parent (or been accepted): with fewer, their largest gap says little about the next.
MIN_HISTORY = 20
MIN_GOOD = 3
# The threshold is the largest good child's gap (never below 0: a child is stopped only when its
# loss is above its parent's) plus this many standard deviations of the good children's gaps: the
# next good child may well be further above its parent than the few seen so far.
MARGIN_SDS = 2.0


def loss_at(curve: Sequence[Point], elapsed: float) -> float | None:
    """The curve's loss at `elapsed` training seconds, interpolated linearly between the nearest
    points before and after it (in the order of elapsed); None when the curve does not reach that
    far on both sides, or when the numbers printed make no finite value."""
    before = after = None
    for point in curve:
        t = point[1]
        if t <= elapsed and (before is None or t >= before[1]):
            before = point
        if t >= elapsed and (after is None or t < after[1]):
            after = point
    if before is None or after is None:
        return None
    if after[1] == before[1]:
        value = after[2]
    else:
        w = (elapsed - before[1]) / (after[1] - before[1])
        value = before[2] + w * (after[2] - before[2])
    return value if math.isfinite(value) else None


def gaps(child_curve: Sequence[Point], parent_curve: Sequence[Point], time_budget: float) -> tuple[float | None, ...]:
    """Child loss minus parent loss at each checkpoint (None where either curve does not reach it)."""
    out: list[float | None] = []
    for fraction in CHECKPOINTS:
        child, parent = loss_at(child_curve, fraction * time_budget), loss_at(parent_curve, fraction * time_budget)
        gap = None if child is None or parent is None else child - parent
        out.append(gap if gap is not None and math.isfinite(gap) else None)
    return tuple(out)


@dataclass(frozen=True)
class Completed:
    """A completed child, as the threshold learns from it."""
    gaps: tuple[float | None, ...]  # at each checkpoint (see `gaps`)
    good: bool                      # it ended better than its parent, or was accepted


@dataclass(frozen=True)
class Threshold:
    """Per checkpoint, the gap above which a child is stopped (None: never at that checkpoint),
    and what it was learned from."""
    gaps: tuple[float | None, ...]
    good_max: tuple[float | None, ...]  # the largest gap of a good child at each checkpoint
    children: int                       # completed children with curves


def threshold(history: Sequence[Completed]) -> Threshold | None:
    """The stopping threshold learned from completed children, or None while there are too few
    (MIN_HISTORY with curves, MIN_GOOD of them good, at some checkpoint)."""
    limits: list[float | None] = []
    good_max: list[float | None] = []
    for k in range(len(CHECKPOINTS)):
        seen = [(c.gaps[k], c.good) for c in history if len(c.gaps) > k and c.gaps[k] is not None]
        good = [gap for gap, is_good in seen if is_good]
        if len(seen) < MIN_HISTORY or len(good) < MIN_GOOD:
            limits.append(None)
            good_max.append(None)
            continue
        top = max(good)
        limit = max(top, 0.0) + MARGIN_SDS * statistics.stdev(good)
        limits.append(limit if math.isfinite(limit) else None)
        good_max.append(top)
    with_curves = sum(1 for c in history if any(g is not None for g in c.gaps))
    return Threshold(tuple(limits), tuple(good_max), with_curves) if any(x is not None for x in limits) else None


def should_stop(child_points: Sequence[Point], parent_curve: Sequence[Point], threshold: Threshold,
                time_budget: float) -> str | None:
    """The sentence saying why the child should be stopped now, or None. Judged only at checkpoints
    the child's curve has passed, so the verdict at a checkpoint never changes once given."""
    for fraction, limit, top in zip(CHECKPOINTS, threshold.gaps, threshold.good_max):
        at = fraction * time_budget
        if limit is None or not any(p[1] >= at for p in child_points):
            continue
        child, parent = loss_at(child_points, at), loss_at(parent_curve, at)
        if child is None or parent is None or not child - parent > limit:
            continue
        return (f"at {fraction:.0%} of the budget ({at:.4g} s) its train loss {child:.4g} was {child - parent:.4g} "
                f"above its parent's {parent:.4g}; of {threshold.children} completed children, those that ended "
                f"better than their parent were at most {top:.4g} above theirs there (stop above {limit:.4g})")
    return None


def should_stop_child(child_points: Sequence[Point], parent_curve: Sequence[Point], seed_curve: Sequence[Point],
                      threshold: Threshold, time_budget: float) -> str | None:
    """`should_stop` against the parent, confirmed against the seed: a parent's curve is printed by
    candidate code, and a member printing losses lower than it trains at would have its children
    stopped, so none of them ever replaces it. A child is stopped only when it is also that far
    above the seed's curve (the user's code) at the same checkpoint."""
    why = should_stop(child_points, parent_curve, threshold, time_budget)
    if why is None or parent_curve is seed_curve or should_stop(child_points, seed_curve, threshold, time_budget):
        return why
    return None
