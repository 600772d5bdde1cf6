"""The results database's file: its schema (version ``SCHEMA_VERSION``, migrations from older
ones), and the checks that a path is, or can become, a byzance results database."""

from __future__ import annotations

import sqlite3
from pathlib import Path

#: 2: the runs' writer claim (``writer``, ``writer_pid``, ``writer_host``, ``writer_lock``)
SCHEMA_VERSION = 2

#: metric keys stored in their own column (anything else goes to ``extra``)
METRIC_COLUMNS = (
    "train_loss",
    "test_accuracy",
    "agg_distance",
    "lr",
    "time",
    "missing_workers",
    "val_accuracy",
)
STATUSES = ("running", "finished", "failed")
#: the columns of ``runs`` that ``load_runs`` returns (the claim columns are bookkeeping)
RUN_COLUMNS = (
    "run_id",
    "config_json",
    "engine",
    "status",
    "started",
    "finished",
    "final_accuracy",
    "seconds",
    "error",
)

SCHEMA_SQL = """
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE runs (
    run_id TEXT PRIMARY KEY,
    config_json TEXT NOT NULL,
    engine TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'finished', 'failed')),
    started TEXT,
    finished TEXT,
    final_accuracy REAL,
    seconds REAL,
    error TEXT,
    writer TEXT,
    writer_pid INTEGER,
    writer_host TEXT,
    writer_lock TEXT
);
CREATE TABLE metrics (
    run_id TEXT NOT NULL,
    round INTEGER NOT NULL,
    train_loss REAL,
    test_accuracy REAL,
    agg_distance REAL,
    lr REAL,
    time REAL,
    missing_workers TEXT,
    val_accuracy REAL,
    extra TEXT,
    PRIMARY KEY (run_id, round)
);
"""
#: statements taking a database of schema version ``k`` to ``k + 1``
MIGRATIONS = {
    1: tuple(
        f"ALTER TABLE runs ADD COLUMN {column}"
        for column in ("writer TEXT", "writer_pid INTEGER", "writer_host TEXT", "writer_lock TEXT")
    ),
}
SQLITE_HEADER = b"SQLite format 3\x00"


class NotAResultsDB(ValueError):
    """The file is not a byzance results database (nothing was written to it)."""


class RunClaimedError(ValueError):
    """Another live writer holds the run (or took it over): this one must not write it."""


class IncompleteRunError(ValueError):
    """``finish_run`` found expected rounds missing: the run was marked ``failed``."""


def check_path(path: Path, *, readonly: bool) -> bool:
    """``ValueError`` unless ``path`` can be a results DB (an existing file, or, to write, a new
    file in an existing folder); returns whether the file exists and is not empty. Reads at
    most the file's first bytes (an SQLite file starts with its header)."""
    shown = repr(str(path))
    if path.is_dir():
        raise ValueError(f"results DB {shown} is a folder, expected a database file")
    if not path.exists():
        if readonly:
            raise ValueError(f"results DB {shown} not found")
        parent = path.parent
        above = parent
        while not above.exists() and above != above.parent:
            above = above.parent
        if above.exists() and not above.is_dir():
            raise ValueError(f"results DB {shown}: {str(above)!r} is a file, not a folder")
        if above != parent:
            raise ValueError(f"results DB: folder {str(parent)!r} does not exist")
        return False
    if not path.is_file():
        raise ValueError(f"results DB {shown} is not a regular file")
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(SQLITE_HEADER))
    except OSError as err:
        raise ValueError(f"results DB {shown}: cannot read it ({err.strerror or err})") from None
    if not head and readonly:
        raise NotAResultsDB(f"{shown} is not a byzance results database (an empty file)")
    if head and head != SQLITE_HEADER:
        raise NotAResultsDB(f"{shown} is not a byzance results database (not an SQLite file)")
    return bool(head)


def schema_version(conn: sqlite3.Connection, shown: str) -> int | None:
    """The byzance schema version of the open database; None if it has no table at all;
    ``NotAResultsDB`` if it has tables but not byzance's."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if not tables:
        return None
    row = None
    if {"meta", "runs", "metrics"} <= tables:
        try:
            row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        except sqlite3.DatabaseError:
            row = None
    if row is None or not str(row[0]).isdigit():
        listed = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
        raise NotAResultsDB(
            f"{shown} is not a byzance results database (an SQLite file with other tables: "
            f"{listed}); give run/bench a new --db path"
        )
    version = int(row[0])
    if version > SCHEMA_VERSION:
        raise ValueError(
            f"results DB {shown} has schema version {version}, this byzance reads versions "
            f"up to {SCHEMA_VERSION}: upgrade byzance"
        )
    return version


def create_or_migrate(conn: sqlite3.Connection, shown: str) -> int:
    """In a write transaction: make a database without tables (a new or empty file) a results
    database, or migrate an older byzance schema; ``NotAResultsDB`` (nothing written) for any
    other database. Returns the schema version, ``SCHEMA_VERSION``."""
    version = schema_version(conn, shown)
    if version is None:
        for statement in SCHEMA_SQL.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute(
            "INSERT INTO meta(key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
        )
        return SCHEMA_VERSION
    for old in range(version, SCHEMA_VERSION):
        for statement in MIGRATIONS[old]:
            conn.execute(statement)
    if version < SCHEMA_VERSION:
        conn.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION),))
    return SCHEMA_VERSION
