"""Storage: the SQLite/SQLAlchemy archive (archive.py: tables, engines, the Archive's transactions).
Import from archive.py; this package imports nothing."""
