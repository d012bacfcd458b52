"""The Python API, for people who analyse runs in a notebook: a run's candidates and evaluations
as plain records (what `evo candidates -f json` prints), and as pandas DataFrames when pandas is
installed (`pip install 'evo[dataframe]'`), the way Optuna's `study.trials_dataframe()` reads.

    import evo
    night = evo.load(run="night-1", storage="sqlite:///archive/evo.db")
    df = night.to_dataframe()                     # one row a candidate
    evals = night.to_dataframe("evaluations")     # one row an evaluation, with its candidate's number
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from evo.storage import DEFAULT_STORAGE, Archive, queries


@dataclass(frozen=True)
class RunRecords:
    """One run as read when it was loaded: its row and its candidates, each with its evaluations."""
    run: dict[str, Any]
    candidates: list[dict[str, Any]]

    @property
    def evaluations(self) -> list[dict[str, Any]]:
        """Every evaluation, each with its candidate's number (`candidate`), in candidate order."""
        return [{"candidate": c["number"], **e} for c in self.candidates for e in c["evaluations"]]

    def to_dataframe(self, what: str = "candidates"):
        """A pandas DataFrame of the candidates (their evaluations counted, not nested) or of the
        evaluations, with time columns as datetimes."""
        if what not in ("candidates", "evaluations"):
            raise ValueError(f"to_dataframe takes 'candidates' or 'evaluations', not {what!r}")
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("to_dataframe needs pandas: pip install 'evo[dataframe]' (or pandas); the records "
                              "are in .candidates and .evaluations without it") from None
        if what == "evaluations":
            frame = pd.DataFrame(self.evaluations)
        else:
            frame = pd.DataFrame([{**{k: v for k, v in c.items() if k != "evaluations"},
                                   "n_evaluations": len(c["evaluations"])} for c in self.candidates])
        for column in frame.columns:
            if column.endswith("_at") or column == "training_start":
                frame[column] = pd.to_datetime(frame[column])
        return frame


def load(run: str | None = None, storage: str | None = None) -> RunRecords:
    """Read a run (by name; the default is the one `evo status` shows) from an archive (the CLI's:
    --storage's URL, else EVO_STORAGE, else the default), read-only: safe while the run writes.
    Raises evo.storage.ArchiveError with the CLI's sentence when there is no such archive or run."""
    archive = Archive(storage or os.environ.get("EVO_STORAGE") or DEFAULT_STORAGE, writer=False)
    try:
        row = archive.find_run(run)
        return RunRecords(row.model_dump(mode="json"),
                          queries.candidate_records(archive, row.id, archive.candidates(row.id)))
    finally:
        archive.close()
