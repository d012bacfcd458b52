"""Pure: when a measurement says more about the machine than about the candidate.

A fixed wall-clock budget measures the machine as much as the code: replicates of one candidate
that trained very different numbers of steps (or tokens per second) ran on a machine whose speed
changed, and an evaluation that started with the load well above the core count shared its CPU.
The figures these warnings name are what a person needs to discount a "new best"."""

from __future__ import annotations

from typing import Any, Iterable

SPEED_RATIO = 2.0  # replicates whose steps or tokens per second differ by more than this
# A CPU run's own training keeps the load near the core count (each slot uses cores/slots threads),
# and the 1-minute average lags: only a load this far above the cores says something else ran.
LOAD_RATIO = 1.5


def tokens_per_second(e: Any) -> float | None:
    """An evaluation's training throughput from its summary (total_tokens_M over training_seconds)."""
    if e.total_tokens_M is None or not e.training_seconds:
        return None
    return e.total_tokens_M * 1e6 / e.training_seconds


def speed_warning(evaluations: Iterable[Any]) -> str | None:
    """The sentence for a candidate whose COMPLETE replicates ran at speeds more than SPEED_RATIO apart."""
    done = [e for e in evaluations if e.state == "COMPLETE"]
    for what, values in (("steps", [e.num_steps for e in done]), ("tokens/s", [tokens_per_second(e) for e in done])):
        values = [v for v in values if v is not None and v > 0]
        if len(values) > 1 and max(values) > SPEED_RATIO * min(values):
            return (f"its replicates trained {min(values):,.0f} to {max(values):,.0f} {what} (x{max(values) / min(values):.1f}): "
                    "the machine's speed changed between them, so their val_bpb differ by more than the code")
    return None


def load_warning(e: Any, cores: int) -> str | None:
    """The sentence for an evaluation that started with the 1-minute load well above the core count
    (the evaluation's own `cores` where it recorded them, else `cores`)."""
    cores = getattr(e, "cores", None) or cores
    if e.load_avg is None or e.load_avg <= LOAD_RATIO * cores:
        return None
    return (f"evaluation {e.replicate} started at load {e.load_avg:.1f} on {cores} cores: it shared the CPU, "
            "and a wall-clock budget then measures the load")


def warnings(evaluations: list[Any], cores: int) -> list[str]:
    """Every noise warning for one candidate's evaluations: speed first, then load, by replicate
    (`cores`: for evaluations that did not record the machine's core count)."""
    found = [speed_warning(evaluations)] + [load_warning(e, cores) for e in evaluations]
    return [w for w in found if w is not None]
