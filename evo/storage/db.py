"""Engines and the database file: reader vs writer engines, per-connection pragmas, the checks of
a SQLite file before it is used, and the one sentence for a database that fails.

SQLite (the default) runs in WAL mode with a busy timeout, and writers take their lock up front
(BEGIN IMMEDIATE) so two writers never deadlock on a lock upgrade; readers use plain BEGIN, so
`evo status`, a report or the live view never take the write lock.

A database that fails (a damaged file, a full disk, a lock held too long) raises StorageError, one
sentence naming the file and the next step, from any statement: the engine's `handle_error` hook
is the one place that translates.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, DatabaseError, OperationalError, SQLAlchemyError
from sqlmodel import create_engine

DEFAULT_STORAGE = "sqlite:///archive/evo.db"


class ArchiveError(Exception):
    """Bad input about the archive (unknown run or candidate, unusable URL): one sentence."""
    code = 2  # exit status of a command that ends with it


class StorageError(ArchiveError):
    """The database itself failed (a damaged or foreign file, a full disk, a lock held too long):
    an environment problem, one sentence naming the file and the next step."""
    code = 1


# What a failing database means and what to do, by SQLite error name (extended names such as
# SQLITE_IOERR_WRITE match their prefix) or, for other drivers, a fragment of the message.
RESTORE = "restore it from a backup, or pass --storage to use another archive"
_STORAGE_PROBLEMS = (
    ("SQLITE_FULL", "or disk is full", "the disk is full", "free disk space, then `evo run --resume` continues the run"),
    ("SQLITE_CORRUPT", "malformed", "the file is damaged", RESTORE),
    ("SQLITE_NOTADB", "not a database", "it is not a SQLite database", RESTORE),
    ("SQLITE_BUSY", "is locked", "another process held its lock for too long", "try again once that process is done"),
    ("SQLITE_READONLY", "readonly database", "it is read-only", "make it and its folder writable, or pass --storage"),
    ("SQLITE_CANTOPEN", "unable to open", "it cannot be opened", "check that its folder exists and is readable, or pass --storage"),
    ("SQLITE_IOERR", "I/O error", "the disk failed to read or write it (is it full?)", "free disk space or check the disk, "
     "then try again"),
)


# A database server that cannot be used as given (PostgreSQL's messages): the URL is wrong, or the
# server is not up. Bad input (exit status 2), not a failing archive.
_SERVER_PROBLEMS = (
    ("does not exist", "the database does not exist on the server",
     "create it first (`createdb NAME`), or fix the database name in --storage"),
    ("Connection refused", "no server answers there", "start the server, or fix the host and port in --storage"),
    ("authentication failed", "the server refused the login", "check the user and password in --storage"),
    ("translate host name", "the host name is unknown", "fix the host in --storage"),
    ("Name or service not known", "the host name is unknown", "fix the host in --storage"),
    ("timeout expired", "the server did not answer in time", "check that it is up and reachable from here"),
)


def storage_error(where: str, error: BaseException) -> ArchiveError:
    """The one sentence for a database failure."""
    name = getattr(error, "sqlite_errorname", "") or ""
    detail = " ".join(str(error).split()).rstrip(".") or type(error).__name__
    if not name:
        for fragment, meaning, step in _SERVER_PROBLEMS:
            if fragment in detail:
                return ArchiveError(f"the archive {where} cannot be reached: {meaning} ({detail}); {step}.")
    for code, fragment, meaning, step in _STORAGE_PROBLEMS:
        if name == code or name.startswith(code + "_") or fragment in detail:
            return StorageError(f"the archive {where} cannot be used: {meaning} ({detail}); {step}.")
    return StorageError(f"the archive {where} cannot be used ({detail}); {RESTORE}.")


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL; None for another database or SQLite in memory."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        return Path(parsed.database)
    return None


def cut_short(header: bytes, size: int) -> int | None:
    """The size a SQLite file should have when it is shorter (a truncated copy), from its first 100
    bytes; None when it is not, or when the header cannot tell (SQLite then judges the file).
    Checked on every open: SQLite itself only fails when a read reaches a missing page."""
    if len(header) < 100 or not header.startswith(b"SQLite format 3\0"):
        return None
    page_size = int.from_bytes(header[16:18], "big")
    pages = int.from_bytes(header[28:32], "big")
    size_valid = pages > 0 and header[24:28] == header[92:96]  # change counter == version-valid-for
    expected = pages * (65536 if page_size == 1 else page_size)
    return expected if size_valid and size < expected else None


_opened: set[Path] = set()


def _first_open(db: Path) -> bool:
    """Whether this process opens `db` for the first time. Only then may it read the file itself:
    closing any descriptor of a file drops every POSIX lock the process holds on it, including the
    locks of SQLite connections already open, and another process could then checkpoint under a
    reader (SQLite reports "malformed") or write beside a writer."""
    key = db.resolve()
    first = key not in _opened
    _opened.add(key)
    return first


def _wal_has_frames(db: Path) -> bool:
    """A checkpoint copies WAL frames in page order, so page 1 (with the new size) can reach the
    file before the file grows: while the WAL holds frames, the header's size proves nothing."""
    try:
        return db.with_name(db.name + "-wal").stat().st_size > 32  # more than the WAL header
    except OSError:
        return False


def check_not_cut_short(url: str) -> None:
    """Refuse a SQLite file shorter than its header says (a truncated copy), when this process may
    read the file itself (see _first_open) and no WAL frames make the header's size meaningless."""
    db = sqlite_file(url)
    if db is not None and db.is_file() and _first_open(db) and not _wal_has_frames(db):
        with db.open("rb") as f:
            expected = cut_short(f.read(100), db.stat().st_size)
        if expected is not None:
            raise StorageError(f"the archive {storage_name(url)} is damaged (the file is cut short: "
                               f"{db.stat().st_size} of {expected} bytes); {RESTORE}.")


def storage_name(url: str) -> str:
    """How messages name the storage: the file of a SQLite URL, else the URL without its password."""
    db = sqlite_file(url)
    return str(db) if db is not None else make_url(url).render_as_string(hide_password=True)


def files_dir(url: str) -> Path:
    """Where candidate folders live: beside a SQLite file, else ./archive."""
    db = sqlite_file(url)
    return db.parent if db is not None else Path("archive")


def _sqlite_engine(url: str, immediate: bool) -> Engine:
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        # Per-connection settings only: nothing here may change the file, which may not be an
        # archive at all (WAL mode is set once a writer has checked that it is).
        dbapi_conn.isolation_level = None  # let SQLAlchemy's begin event issue BEGIN itself
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def open_engine(url: str, *, writer: bool = True) -> Engine:
    """A writer engine (SQLite: BEGIN IMMEDIATE, the folder created) or a reader engine (plain
    BEGIN; SQLite: the file must exist), whose failures raise StorageError."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ArchiveError(f"storage URL {url!r} is not a valid SQLAlchemy URL.") from None
    if parsed.get_backend_name() == "sqlite":
        db = sqlite_file(url)
        if db is not None:
            if writer:
                try:
                    db.parent.mkdir(parents=True, exist_ok=True)
                except OSError as e:
                    raise ArchiveError(f"cannot create the archive folder {db.parent} ({e.strerror}).") from None
            elif not db.exists():
                raise ArchiveError(f"no archive at {db}; start a run with `evo run` first, or pass --storage.")
        engine = _sqlite_engine(url, immediate=writer)
    else:
        try:
            engine = create_engine(url, pool_pre_ping=True)
        except (ArgumentError, ImportError, SQLAlchemyError) as e:
            raise ArchiveError(f"cannot open storage {url!r} ({type(e).__name__}: {e}).") from None
    where = storage_name(url)

    @event.listens_for(engine, "handle_error")
    def _storage_failed(context):
        # Operational failures and a damaged file become one sentence; integrity and programming
        # errors are bugs and stay as they are. A pre-ping's failure is the pool's to handle.
        error = context.sqlalchemy_exception
        if not context.is_pre_ping and (isinstance(error, OperationalError) or type(error) is DatabaseError):
            return storage_error(where, context.original_exception)
        return None

    return engine
