"""evo: overnight evolutionary search over LLM training scripts.

`evo.load(run=..., storage=...)` reads a run for analysis (evo.api); importing evo itself stays
light (the harness's own processes import this package), so the API is imported on first use."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from evo.api import RunRecords

__version__ = "0.1.0"


def load(run: str | None = None, storage: str | None = None) -> "RunRecords":
    """A run's candidates and evaluations as records (see evo.api.load)."""
    from evo import api

    return api.load(run, storage)
