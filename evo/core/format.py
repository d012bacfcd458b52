"""How val_bpb is written, in one place: the CLI, commit messages and the report all use these.

Values have six decimals (the noise is ~3e-4, so the fourth decimal matters); a spread (the
candidate's own standard deviation, else the run's noise σ) follows as `± s`; a value imported from
elsewhere is marked as such, because it was not measured on this machine.
"""

from __future__ import annotations

from typing import Any

DECIMALS = 6  # the report's script reads this too, so a value reads the same everywhere


def bpb(value: float | None, spread: float | None = None, missing: str = "-") -> str:
    """`1.234567`, `1.234567 ± 0.000300`, or `missing`."""
    if value is None:
        return missing
    text = f"{value:.{DECIMALS}f}"
    return f"{text} ± {spread:.{DECIMALS}f}" if spread is not None else text


def delta(value: float | None, missing: str = "-") -> str:
    """A signed difference: `+0.000123`."""
    return missing if value is None else f"{value:+.{DECIMALS}f}"


def candidate_bpb(c: Any, sigma: float | None = None) -> str:
    """A candidate's val_bpb with its spread and evaluation count (`evo show`, `evo status`), and
    for the run's chosen best the mean of its reporting evaluations, the value it is reported by."""
    if c.val_bpb is None:
        return f"- (imported {bpb(c.imported_val_bpb)}, measured elsewhere)" if c.imported_val_bpb is not None else "-"
    spread = c.val_bpb_std if c.val_bpb_std is not None else sigma
    text = f"{bpb(c.val_bpb, spread)} (n={c.n_evals})"
    post = getattr(c, "val_bpb_post", None)
    return text if post is None else f"{text}; {bpb(post)} on the evaluations made after it was chosen"


def short_bpb(c: Any) -> str:
    """val_bpb in a table cell: measured here, else what another machine measured, in parentheses."""
    if c.val_bpb is not None:
        return bpb(c.val_bpb)
    return f"({bpb(c.imported_val_bpb)} imported)" if c.imported_val_bpb is not None else "-"


def line_bpb(c: Any) -> str:
    """val_bpb on a commit message's lineage line: the candidate's own spread only."""
    if c.val_bpb is None:
        return f"{bpb(c.imported_val_bpb)} (imported)" if c.imported_val_bpb is not None else "-"
    return bpb(c.val_bpb, c.val_bpb_std)


def measurements(c: Any, sigma: float | None) -> list[str]:
    """val_bpb here (mean ± spread) and as imported, one line each, for commit messages."""
    lines = []
    if c.val_bpb is not None:
        spread = c.val_bpb_std if c.val_bpb_std is not None else sigma
        lines.append(f"val_bpb {bpb(c.val_bpb, spread)} over {c.n_evals} evaluation(s)")
    if c.imported_val_bpb is not None:
        lines.append(f"imported val_bpb {bpb(c.imported_val_bpb)} (measured elsewhere)")
    return lines


def busy(share: float | None) -> str:
    """The busy figure (storage.busy_share): what share of the slots' time trained."""
    return "busy training: not measured yet" if share is None else f"busy training {100 * share:.0f} % of slot time"


def duration(seconds: float) -> str:
    """A span as a person reads it: 45 s, 12 min, 3 h 05 min."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def budget(children: int, max_candidates: int | None, active_seconds: float, hours: float | None,
           spent: float = 0.0, max_cost: float | None = None, live: bool = True) -> str:
    """The run's budget as spent (children against --max-candidates, time against --hours, LLM
    dollars against --max-cost) and, while it runs, about how long is left at the pace so far."""
    parts, left = [], []
    if max_candidates is not None:
        parts.append(f"{children}/{max_candidates} children")
        if children > 0 and active_seconds > 0:
            left.append(max(0.0, (max_candidates - children) * active_seconds / children))
    if hours is not None:
        parts.append(f"{active_seconds / 3600:.1f}/{hours:g} h")
        left.append(max(0.0, hours * 3600 - active_seconds))
    if max_cost is not None:
        parts.append(f"${spent:.2f}/${max_cost:.2f} of LLM spend")
        if spent > 0 and active_seconds > 0:
            left.append(max(0.0, (max_cost - spent) * active_seconds / spent))
    if not parts:
        return f"budget: none set ({children} children so far; Ctrl-C or `evo stop` ends the run)"
    return "budget " + ", ".join(parts) + (f"; about {duration(min(left))} left at this pace" if left and live else "")
