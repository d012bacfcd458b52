"""Pure parsing of what a candidate prints: the summary block, the training curve, and the
classification of an evaluation's outcome. No I/O here; the runner feeds these functions text."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

# The block autoresearch's train.py ends with, in order; the harness needs all of them.
SUMMARY_KEYS = ("val_bpb", "training_seconds", "total_seconds", "peak_vram_mb", "mfu_percent",
                "total_tokens_M", "num_steps", "num_params_M", "depth")

# Exit status seed_train.py uses for a diverged (NaN / exploding) loss.
EXIT_DIVERGED = 3

_SUMMARY_LINE = re.compile(r"^([A-Za-z_]+):\s+(\S+)\s*$")
_STEP = re.compile(r"\bstep\s+(\d+)")
_ELAPSED = re.compile(r"\belapsed:\s*([0-9.]+)s")
_REMAINING = re.compile(r"\bremaining:\s*([0-9.]+)s")
_LOSS = re.compile(r"\bloss:\s*([-+0-9.eE]+|nan|inf)", re.IGNORECASE)
_OOM = re.compile(r"out of memory|OutOfMemoryError|CUDA error: out of memory|MemoryError", re.IGNORECASE)
_NAN = re.compile(r"\bnan\b|diverged", re.IGNORECASE)


class SummaryError(ValueError):
    """The output has no complete, well-formed summary block."""


def split_lines(text: str) -> list[str]:
    """Progress lines may be redrawn with carriage returns; each redraw is a line of its own."""
    return [line for line in re.split(r"[\r\n]+", text) if line.strip()]


def parse_summary(text: str) -> dict[str, float]:
    """The last `---` block of the output, as numbers. Raises SummaryError when it is missing,
    incomplete, repeats a key, or holds a value that is not a number."""
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
    carry `remaining: Ns` instead of elapsed; with the budget known, elapsed is derived from it."""
    points: list[tuple[int, float, float]] = []
    for line in split_lines(text):
        step, loss = _STEP.search(line), _LOSS.search(line)
        if not (step and loss):
            continue
        elapsed = _ELAPSED.search(line)
        if elapsed:
            seconds = float(elapsed.group(1))
        else:
            remaining = _REMAINING.search(line)
            if not (remaining and time_budget is not None):
                continue
            seconds = max(0.0, time_budget - float(remaining.group(1)))
        points.append((int(step.group(1)), seconds, float(loss.group(1))))
    return points


@dataclass(frozen=True)
class Outcome:
    """How an evaluation ended: state COMPLETE or FAIL, and for FAIL a reason and a sentence."""

    state: str
    fail_reason: str | None = None
    detail: str = ""
    summary: dict[str, float] | None = None


def classify(returncode: int | None, output: str, *, timed_out: bool, interrupted: bool,
             time_budget: float, budget_slack: float, recorded_bpb: list[float] | None,
             prepare_changed: bool) -> Outcome:
    """Decide an evaluation's outcome from its exit status, its output and the evaluator's own
    record (`recorded_bpb`: the values evaluate_bpb signed, None when no record was asked for).

    Order matters: what the harness observed itself (interruption, timeout, a modified prepare.py)
    outranks anything the candidate printed.
    """
    if interrupted:
        return Outcome("FAIL", "interrupted", "stopped by the user")
    if prepare_changed:
        return Outcome("FAIL", "invalid", "the candidate modified the locked prepare.py")
    if timed_out:
        return Outcome("FAIL", "timeout", "killed at the hard timeout")
    tail = "\n".join(split_lines(output)[-40:])
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
    bpb = summary["val_bpb"]
    if not math.isfinite(bpb):
        return Outcome("FAIL", "nan", f"val_bpb is {bpb}", summary)
    if summary["training_seconds"] > time_budget + budget_slack:
        return Outcome("FAIL", "invalid",
                       f"trained {summary['training_seconds']:.1f}s, past the {time_budget:.0f}s budget", summary)
    if recorded_bpb is not None:
        # The printed value is rounded to 6 decimals; it must match one the evaluator signed.
        if not any(abs(bpb - r) <= 1e-6 + 1e-9 * abs(r) for r in recorded_bpb):
            why = "the evaluator recorded no result" if not recorded_bpb else \
                f"the evaluator recorded {', '.join(f'{r:.6f}' for r in recorded_bpb)}"
            return Outcome("FAIL", "invalid", f"printed val_bpb {bpb:.6f} but {why}", summary)
    return Outcome("COMPLETE", None, "", summary)
