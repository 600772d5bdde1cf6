"""SQLite results database shared by ``byzance run``/``bench``, the simulator and the Ray engine.

Tables (schema version ``SCHEMA_VERSION``, stored in ``meta``)::

    runs(run_id PRIMARY KEY, config_json, engine, status, started, finished,
         final_accuracy, seconds, error)
    metrics(run_id, round, train_loss, test_accuracy, agg_distance, lr, time,
            missing_workers TEXT NULL, val_accuracy NULL, extra TEXT NULL,
            PRIMARY KEY(run_id, round))

``status`` is ``running`` from ``start_run`` until ``finish_run`` (``finished``) or ``fail_run``
(``failed``): a run found ``running`` by a later process died mid-way and is re-run from scratch
(``start_run`` replaces its partial metrics). Every write is committed at once (WAL journal,
``busy_timeout`` so several processes can write), so a crash loses at most the record in flight.
Metric keys beyond the named columns are kept as JSON in ``extra``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1

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
#: config keys that say where a run executes, not what it computes, left out of its id (a grid
#: started on a GPU machine resumes on a CPU one; the recorded config keeps the device used)
ID_EXCLUDED_KEYS = frozenset({"data_dir", "device"})
STATUSES = ("running", "finished", "failed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    config_json TEXT NOT NULL,
    engine TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'finished', 'failed')),
    started TEXT,
    finished TEXT,
    final_accuracy REAL,
    seconds REAL,
    error TEXT
);
CREATE TABLE IF NOT EXISTS metrics (
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


def _canonical(config: Mapping[str, Any]) -> str:
    return json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)


def run_id(
    config: Mapping[str, Any], engine: str = "sim", id_fields: Mapping[str, Any] | None = None
) -> str:
    """Stable id of a run, the one definition: a hash of its config, its engine and the
    engine options that change the result (``id_fields``, from ``Engine.id_fields``).

    Left out: where the data and the computation are (``data_dir``, ``device``), and the
    settings of protocols not in use (``byzance.protocols.id_config``). The same config gives
    the same id in every process and session, which is what lets a grid resume; the simulator
    (``engine="sim"``) and another engine get different ids.
    """
    from byzance.protocols import id_config

    kept = {k: v for k, v in id_config(config).items() if k not in ID_EXCLUDED_KEYS}
    kept.update(id_fields or {})
    text = _canonical(kept) if engine == "sim" else _canonical({"config": kept, "engine": engine})
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _float(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


class ResultsDB:
    """One connection to a results database file (created if missing).

    Usable as a context manager. Safe to open the same file from several processes at once:
    each write is one short committed transaction and waits up to ``timeout`` seconds for a lock.
    """

    def __init__(self, path: str | Path, timeout: float = 60.0) -> None:
        self.path = Path(path)
        if self.path.parent and not self.path.parent.exists():
            raise ValueError(f"results DB: folder {str(self.path.parent)!r} does not exist")
        self._conn = sqlite3.connect(str(self.path), timeout=timeout, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
        self._conn.execute("PRAGMA journal_mode = WAL")
        with self._write():
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._conn.execute(statement)
            row = self._conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row is None:
                self._conn.execute(
                    "INSERT INTO meta(key, value) VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
            elif int(row[0]) != SCHEMA_VERSION:
                raise ValueError(
                    f"results DB {str(self.path)!r} has schema version {row[0]}, "
                    f"this byzance reads version {SCHEMA_VERSION}"
                )

    # -- transactions ------------------------------------------------------------------------
    class _Txn:
        def __init__(self, conn: sqlite3.Connection) -> None:
            self.conn = conn

        def __enter__(self) -> sqlite3.Connection:
            self.conn.execute("BEGIN IMMEDIATE")
            return self.conn

        def __exit__(self, exc_type: Any, *_: Any) -> None:
            self.conn.execute("COMMIT" if exc_type is None else "ROLLBACK")

    def _write(self) -> ResultsDB._Txn:
        return ResultsDB._Txn(self._conn)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> ResultsDB:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    # -- writes ------------------------------------------------------------------------------
    def start_run(
        self,
        config: Mapping[str, Any],
        engine: str = "sim",
        *,
        run_id_: str | None = None,
        overwrite: bool = False,
    ) -> str:
        """Mark a run ``running`` (from scratch: earlier metrics of the same id are deleted).

        Returns the run id (``run_id(config, engine)`` unless given). Raises ``ValueError`` if the
        run already finished, unless ``overwrite``.
        """
        rid = run_id_ or run_id(config, engine)
        with self._write() as conn:
            row = conn.execute("SELECT status FROM runs WHERE run_id=?", (rid,)).fetchone()
            if row is not None and row["status"] == "finished" and not overwrite:
                raise ValueError(
                    f"results DB: run {rid} already finished; pass overwrite=True to run it again"
                )
            conn.execute("DELETE FROM metrics WHERE run_id=?", (rid,))
            conn.execute(
                "INSERT OR REPLACE INTO runs(run_id, config_json, engine, status, started, "
                "finished, final_accuracy, seconds, error) "
                "VALUES (?, ?, ?, 'running', ?, NULL, NULL, NULL, NULL)",
                (rid, _canonical(config), engine, _now()),
            )
        return rid

    def record_metrics(self, run_id_: str, record: Mapping[str, Any]) -> None:
        """Store (commit) one evaluation record ``{"round": int, "train_loss": ..., ...}``."""
        if "round" not in record:
            raise ValueError(
                f"results DB: a metrics record needs a 'round', got keys {sorted(record)}"
            )
        values: list[Any] = [run_id_, int(record["round"])]
        for key in METRIC_COLUMNS:
            value = record.get(key)
            if key == "missing_workers":
                values.append(None if value is None else json.dumps(list(value)))
            else:
                values.append(_float(value))
        extra = {k: v for k, v in record.items() if k != "round" and k not in METRIC_COLUMNS}
        values.append(_canonical(extra) if extra else None)
        columns = ", ".join(("run_id", "round", *METRIC_COLUMNS, "extra"))
        marks = ", ".join("?" * len(values))
        with self._write() as conn:
            conn.execute(f"INSERT OR REPLACE INTO metrics({columns}) VALUES ({marks})", values)

    def finish_run(self, run_id_: str, final_accuracy: float, seconds: float) -> None:
        """Mark a run ``finished`` with its final test accuracy and wall-clock seconds."""
        self._set_final(run_id_, "finished", _float(final_accuracy), float(seconds), None)

    def fail_run(self, run_id_: str, error: str, seconds: float | None = None) -> None:
        """Mark a run ``failed`` with its error message (it is re-run on resume)."""
        self._set_final(run_id_, "failed", None, seconds, error)

    def _set_final(
        self, rid: str, status: str, acc: float | None, seconds: float | None, error: str | None
    ) -> None:
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE runs SET status=?, finished=?, final_accuracy=?, seconds=?, error=? "
                "WHERE run_id=?",
                (status, _now(), acc, seconds, error, rid),
            )
            if cur.rowcount != 1:
                raise ValueError(f"results DB: no run {rid}; call start_run first")

    # -- reads -------------------------------------------------------------------------------
    def finished_ids(self) -> set[str]:
        """Ids of runs that finished (skipped when a grid resumes)."""
        rows = self._conn.execute("SELECT run_id FROM runs WHERE status='finished'")
        return {r[0] for r in rows}

    def status(self, run_id_: str) -> str | None:
        row = self._conn.execute("SELECT status FROM runs WHERE run_id=?", (run_id_,)).fetchone()
        return None if row is None else row[0]

    def load_runs(self, status: str | None = None) -> list[dict[str, Any]]:
        """All runs (or those with ``status``) as dicts; ``config`` is the parsed config."""
        if status is not None and status not in STATUSES:
            raise ValueError(f"results DB: status must be one of {STATUSES}, got {status!r}")
        query = "SELECT * FROM runs" + (" WHERE status=?" if status else "") + " ORDER BY started"
        rows = self._conn.execute(query, (status,) if status else ())
        out = []
        for r in rows:
            d = dict(r)
            d["config"] = json.loads(d.pop("config_json"))
            out.append(d)
        return out

    def load_metrics(self, run_ids: Iterable[str] | None = None) -> dict[str, list[dict[str, Any]]]:
        """``run_id -> records`` sorted by round (``extra`` keys merged into each record)."""
        rows = self._conn.execute("SELECT * FROM metrics ORDER BY run_id, round")
        wanted = None if run_ids is None else set(run_ids)
        out: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            if wanted is not None and r["run_id"] not in wanted:
                continue
            d = {k: r[k] for k in ("round", *METRIC_COLUMNS) if r[k] is not None}
            if "missing_workers" in d:
                d["missing_workers"] = json.loads(d["missing_workers"])
            if r["extra"]:
                d.update(json.loads(r["extra"]))
            out.setdefault(r["run_id"], []).append(d)
        return out


def record_run(
    db: str | os.PathLike[str] | ResultsDB | None,
    config: Mapping[str, Any],
    engine: str,
    run_id_: str,
    run: Callable[[Callable[[Mapping[str, Any]], None]], Any],
    *,
    overwrite: bool = False,
) -> Any:
    """``run(record)`` with the run stored in ``db`` (a path or an open ``ResultsDB``; None:
    nothing stored): marked ``running`` first, every record committed as ``record`` gets it,
    then ``finished`` with the result's final accuracy and seconds, or ``failed`` with the
    first line of the error (re-raised). Returns what ``run`` returns."""
    database = open_db(db) if isinstance(db, (str, os.PathLike)) else db
    owned = database is not None and database is not db
    start = time.perf_counter()
    try:
        if database is not None:
            database.start_run(config, engine, run_id_=run_id_, overwrite=overwrite)

        def record(rec: Mapping[str, Any]) -> None:
            if database is not None:
                database.record_metrics(run_id_, rec)

        try:
            result = run(record)
        except BaseException as exc:
            if database is not None and database.status(run_id_) == "running":
                lines = f"{type(exc).__name__}: {exc}".strip().splitlines()
                database.fail_run(run_id_, lines[0] if lines else "", time.perf_counter() - start)
            raise
        if database is not None:
            database.finish_run(run_id_, result.final_accuracy, result.seconds)
        return result
    finally:
        if owned:
            database.close()


def open_db(path: str | Path, timeout: float = 60.0) -> ResultsDB:
    """Open (creating if needed) the results database at ``path``."""
    return ResultsDB(path, timeout=timeout)
