"""Storage: the archive in any SQLAlchemy database through SQLModel.

    models.py   the tables, lifecycle states and run statuses, the metric columns, and the pure
                rules over rows (code_hash, derive_candidate: a candidate's state, in one place;
                busy_share: the share of slot time that trained)
    db.py       engines (reader vs writer), pragmas, the checks of a SQLite file, StorageError
    archive.py  Archive: every write one transaction with its event; the ownership fence; the
                schema steps
    queries.py  the read models: the report's snapshot and details rows, the lineage memory

Other modules import from here (`from evo.storage import Archive, COMPLETE, queries`)."""

from evo.storage import queries
from evo.storage.archive import (STALE_AFTER_SECONDS, Archive, OwnershipLost, liveness, owner_alive, owner_id,
                                 owner_pid_here)
from evo.storage.db import DEFAULT_STORAGE, ArchiveError, StorageError, storage_error
from evo.storage.models import (ACTIVE, COMPLETE, FAIL, FAILED, FINISHED, INTERRUPTED, METRICS, NO_PROPOSAL, PRUNED,
                                RUNNING, CHOOSING_REPLICATE, REPORTING_REPLICATE, SCHEMA_VERSION, WAITING, Candidate, Code,
                                CurvePoint, Evaluation, Event, LLMCall, Meta,
                                Run, busy_share, code_hash, derive_candidate, seconds_since, utcnow)

__all__ = [
    "queries", "Archive", "OwnershipLost", "ArchiveError", "StorageError", "storage_error", "STALE_AFTER_SECONDS",
    "DEFAULT_STORAGE", "SCHEMA_VERSION", "CHOOSING_REPLICATE", "REPORTING_REPLICATE", "liveness", "owner_alive", "owner_id",
    "owner_pid_here",
    "WAITING", "RUNNING", "COMPLETE", "FAIL", "PRUNED", "ACTIVE", "FINISHED", "INTERRUPTED", "FAILED", "METRICS", "NO_PROPOSAL",
    "Meta", "Code", "Run", "Candidate", "Evaluation", "CurvePoint", "Event", "LLMCall",
    "busy_share", "code_hash", "derive_candidate", "seconds_since", "utcnow",
]
