"""Archives as older evo versions wrote them, for the upgrade tests: built by the current code,
then taken back to schema version N with raw SQL, each step the inverse of a migration step in
evo.storage.archive.MIGRATIONS."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from evo.storage import SCHEMA_VERSION

UNDO: dict[int, tuple[str, ...]] = {
    1: ("ALTER TABLE candidate DROP COLUMN fix",),
    2: ("ALTER TABLE candidate DROP COLUMN val_bpb_post",),
    3: ("DROP TABLE candidatediff",
        "DROP INDEX ix_llmcall_candidate_id",
        "DROP INDEX ix_candidate_parent_id",
        "DROP INDEX ix_evaluation_run_state"),
    4: ("DROP INDEX ix_evaluation_run_state_values",
        "DROP INDEX ix_candidate_run_population",
        "DROP INDEX ix_candidate_run_judged",
        "ALTER TABLE evaluation DROP COLUMN startup_seconds",
        "ALTER TABLE evaluation DROP COLUMN trained_seconds",
        "ALTER TABLE evaluation DROP COLUMN load_avg",
        "ALTER TABLE run DROP COLUMN slot_seconds"),
    5: ("ALTER TABLE evaluation DROP COLUMN cores",),
}


def downgrade(db: Path, version: int) -> None:
    """Take the archive file `db` back to schema `version`, as that version wrote it."""
    con = sqlite3.connect(db)
    for step in range(SCHEMA_VERSION - 1, version - 1, -1):
        for statement in UNDO[step]:
            con.execute(statement)
    con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(version),))
    con.commit()
    con.close()
