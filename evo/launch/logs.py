"""Pure parsing of what a candidate prints: the summary block, the training curve, and the
classification of an evaluation's outcome. No I/O here; the runner feeds these functions text."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

from evo.core import early_stop

# The block autoresearch's train.py ends with, in order; the harness needs all of them.
SUMMARY_KEYS = ("val_bpb", "training_seconds", "total_seconds", "peak_vram_mb", "mfu_percent",
                "total_tokens_M", "num_steps", "num_params_M", "depth")

# Exit status seed_train.py uses for a diverged (NaN / exploding) loss.
EXIT_DIVERGED = 3

# A training loop checks its clock after each step, so an honest one ends past the budget by at
# most one step, and on a loaded machine that step can be several times the usual. The slack is
# this many of the longest recent intervals at which the harness saw progress lines arrive (its own
# clock: step times a candidate prints do not count; a long interval is real time the candidate
# spent inside its training window, so stretching one buys it no more than the cap below) ...
SLACK_GAPS = 2.0
# ... over this many of the latest intervals ...
RECENT_GAPS = 8
# ... never below the preset's base slack, and never above this share of the budget, or
# MIN_SLACK_CAP seconds for the seconds-long test budgets, where one step under load is a large share.
MAX_SLACK_SHARE = 0.15
MIN_SLACK_CAP = 4.0
# Longer step numbers are nonsense a candidate printed (they overflow an SQLite integer, and past
# 4,300 digits int() refuses them).
MAX_STEP_DIGITS = 15

_SUMMARY_LINE = re.compile(r"^([A-Za-z_]+):\s+(\S+)\s*$")
_NUMBER = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf(?:inity)?))"
_STEP = re.compile(r"\bstep\s+(\d+)")
_ELAPSED = re.compile(r"\belapsed:\s*" + _NUMBER + "s", re.IGNORECASE)
_REMAINING = re.compile(r"\bremaining:\s*" + _NUMBER + "s", re.IGNORECASE)
_LOSS = re.compile(r"\bloss:\s*" + _NUMBER, re.IGNORECASE)
_OOM = re.compile(r"out of memory|OutOfMemoryError|CUDA error: out of memory|MemoryError", re.IGNORECASE)
_NAN = re.compile(r"\bnan\b|diverged", re.IGNORECASE)


class SummaryError(ValueError):
    """The output has no complete, well-formed summary block."""


def split_lines(text: str) -> list[str]:
    """Progress lines may be redrawn with carriage returns; each redraw is a line of its own."""
    return [line for line in re.split(r"[\r\n]+", text) if line.strip()]


def parse_summary(text: str) -> dict[str, float]:
    """The SUMMARY_KEYS of the last `---` block of the output, as numbers; other `key: value`
    lines are the candidate's own business and are dropped, so printing `seed: 7` or `state: 1`
    cannot reach the archive. Raises SummaryError when the block is missing, incomplete, repeats
    a key, or holds a value that is not a number."""
    lines = split_lines(text)
    starts = [i for i, line in enumerate(lines) if line.strip() == "---"]
    if not starts:
        raise SummaryError("no summary block ('---' line) in the output")
    summary: dict[str, float] = {}
    for line in lines[starts[-1] + 1:]:
        match = _SUMMARY_LINE.match(line.strip())
        if not match:
            break  # the block ends at the first line that is not `key: value`
        key, raw = match.groups()
        if key not in SUMMARY_KEYS:
            continue
        if key in summary:
            raise SummaryError(f"summary repeats {key!r}")
        try:
            summary[key] = float(raw)
        except ValueError:
            raise SummaryError(f"summary value {key}={raw!r} is not a number") from None
    missing = [k for k in SUMMARY_KEYS if k not in summary]
    if missing:
        raise SummaryError(f"summary lacks {', '.join(missing)}")
    return summary


def parse_curve(text: str, time_budget: float | None = None) -> list[tuple[int, float, float]]:
    """(step, elapsed training seconds, train loss) from progress lines. autoresearch's own lines
    carry `remaining: Ns` instead of elapsed; with the budget known, elapsed is derived from it.
    Never raises: this is candidate output, and a line that does not give a finite point (`loss:
    -inf`, `elapsed: nans`, a step number past any real run) is skipped."""
    points: list[tuple[int, float, float]] = []
    for line in split_lines(text):
        point = _progress_point(line, time_budget)
        if point is not None:
            points.append(point)
    return points


def _progress_point(line: str, time_budget: float | None) -> tuple[int, float, float] | None:
    step, loss = _STEP.search(line), _LOSS.search(line)
    if not (step and loss):
        return None
    elapsed = _ELAPSED.search(line)
    if elapsed:
        seconds = _finite(elapsed.group(1))
    else:
        remaining = _REMAINING.search(line)
        if not (remaining and time_budget is not None):
            return None
        left = _finite(remaining.group(1))
        seconds = None if left is None else max(0.0, time_budget - left)
    digits, value = step.group(1), _finite(loss.group(1))
    if seconds is None or seconds < 0 or value is None or len(digits) > MAX_STEP_DIGITS:
        return None
    return int(digits), seconds, value


def _finite(text: str) -> float | None:
    value = float(text)  # _NUMBER only matches what float() reads
    return value if math.isfinite(value) else None


def max_slack(time_budget: float, base: float) -> float:
    return max(base, MIN_SLACK_CAP, MAX_SLACK_SHARE * time_budget)


def training_slack(gaps: list[float], time_budget: float, base: float) -> float:
    """How far past the budget training may end, by the harness's clock: SLACK_GAPS of the longest
    recent interval between the polls that brought progress lines (`gaps`, seconds), so that one
    slow last step under load passes; at least the base slack, at most max_slack."""
    longest = max(gaps[-RECENT_GAPS:], default=0.0)
    return min(max(base, SLACK_GAPS * longest), max_slack(time_budget, base))


@dataclass(frozen=True)
class Outcome:
    """How an evaluation ended: state COMPLETE or FAIL, and for FAIL a reason and a sentence."""

    state: str
    fail_reason: str | None = None
    detail: str = ""
    summary: dict[str, float] | None = None


def scored_verdict(returncode: int | None, output: str) -> dict:
    """What the evaluation process said about a hand-over: its last line, `{"val_bpb": x}` with a
    finite x or `{"fail": reason, "detail": sentence}`; anything else is a crash of that process."""
    lines = split_lines(output)
    try:
        verdict = json.loads(lines[-1]) if lines else None
    except ValueError:
        verdict = None
    if isinstance(verdict, dict) and returncode == 0:
        bpb = verdict.get("val_bpb")
        if isinstance(bpb, (int, float)) and not isinstance(bpb, bool) and math.isfinite(bpb):
            return {"val_bpb": float(bpb)}
        if isinstance(verdict.get("fail"), str) and isinstance(verdict.get("detail"), str):
            return {"fail": verdict["fail"], "detail": verdict["detail"]}
    last = lines[-1].strip()[:300] if lines else "no output"
    return {"fail": "crash", "detail": f"the harness's evaluation of the handed-over model failed "
                                       f"(exit status {returncode}): {last}"}


def classify(returncode: int | None, output: str, *, timed_out: str | None, interrupted: bool,
             time_budget: float, budget_slack: float, scored: dict | None, prepare_changed: bool,
             over_budget: str | None = None, training_wall: float | None = None,
             stopped_early: str | None = None) -> Outcome:
    """Decide an evaluation's outcome from the training process's exit status and output and the
    harness's own score of what it handed over (`scored`: scored_verdict's dict, None when the
    training process handed nothing over). The val_bpb the candidate printed is never used: the
    archived one is the harness's. `timed_out` is the runner's sentence saying which phase overran
    its limit, `over_budget` the one saying the training process ran past its measured limit
    (None: none did); `budget_slack` how far past the budget training may end
    (logs.training_slack); `training_wall` the seconds of training the harness's own clock saw;
    `stopped_early` the early-stop rule's sentence when it stopped the candidate (PRUNED).

    Order matters: what the harness observed itself (interruption, a modified prepare.py, time)
    outranks anything the candidate printed.
    """
    if interrupted:
        return Outcome("FAIL", "interrupted", "stopped by the user")
    if prepare_changed:
        return Outcome("FAIL", "invalid", "the candidate modified the locked prepare.py")
    if over_budget:
        return Outcome("FAIL", "over_budget", over_budget)
    if timed_out:
        return Outcome("FAIL", "timeout", timed_out)
    if stopped_early:
        return Outcome("PRUNED", early_stop.FAIL_REASON, stopped_early)
    # The summary's val_bpb reads nan under the harness (the model was handed over): not a divergence.
    tail = "\n".join(line for line in split_lines(output)[-40:] if not line.startswith("val_bpb:"))
    if returncode != 0:
        if returncode == EXIT_DIVERGED or (_NAN.search(tail) and "Traceback" not in tail):
            return Outcome("FAIL", "nan", f"loss diverged (exit status {returncode})")
        if _OOM.search(tail):
            return Outcome("FAIL", "oom", "out of memory")
        last = next((line for line in reversed(split_lines(output)) if line.strip()), "")
        return Outcome("FAIL", "crash", f"exit status {returncode}: {last.strip()[:300]}")
    try:
        summary = parse_summary(output)
    except SummaryError as e:
        return Outcome("FAIL", "invalid", str(e))
    summary.pop("val_bpb")  # the candidate's own number: only the harness's is ever archived
    if scored is None:
        return Outcome("FAIL", "invalid", "the training process ended without handing its model to the harness: "
                                          "call prepare's evaluate_bpb(model, tokenizer, batch_size) once, after "
                                          "training", summary)
    if "fail" in scored:
        return Outcome("FAIL", scored["fail"], scored["detail"], summary)
    summary = {**summary, "val_bpb": scored["val_bpb"]}
    overrun = budget_overrun(summary["training_seconds"], training_wall, time_budget, budget_slack)
    if overrun:
        return Outcome("FAIL", "over_budget", overrun, summary)
    return Outcome("COMPLETE", None, "", summary)


def budget_overrun(trained: float, training_wall: float | None, time_budget: float, slack: float) -> str | None:
    """Why training went clearly past the budget, by the candidate's clock (`trained`) or the
    harness's (`training_wall`); None when it stayed within the budget plus the slack. Distinct
    from cheating: a loaded machine makes this happen to honest candidates."""
    limit = time_budget + slack
    why = (f"past the {time_budget:g} s budget and its {slack:.1f} s of slack (sized from the intervals at which the "
           f"harness saw progress lines); training must stop once elapsed reaches the budget")
    if not trained <= limit:  # also catches a training_seconds of nan
        return f"trained {trained:.1f} s by its own clock, {why}"
    if training_wall is not None and training_wall > limit:
        return (f"the harness clock saw {training_wall:.1f} s of training (from the start of its training clock to the "
                f"last progress line, or to the hand-over of the model when that came later), {why}")
    return None
