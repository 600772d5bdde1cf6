"""``ResultsDB``: one connection to a results database, its writes and reads (the rules are
in the package docstring, ``byzance.results``)."""

from __future__ import annotations

import json
import math
import os
import socket
import sqlite3
import urllib.parse
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from byzance.results.ids import canonical, run_id
from byzance.results.locks import WriterLock, writer_alive
from byzance.results.schema import (
    METRIC_COLUMNS,
    RUN_COLUMNS,
    STATUSES,
    IncompleteRunError,
    NotAResultsDB,
    RunClaimedError,
    check_path,
    create_or_migrate,
    schema_version,
)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _float(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


class ResultsDB:
    """One connection to a results database file (created if missing, unless ``readonly``).

    Usable as a context manager. Safe to open the same file from several processes at once:
    each write is one short committed transaction and waits up to ``timeout`` seconds for a
    lock; a run is written by the one ``ResultsDB`` that claimed it (module docstring).
    Raises ``ValueError`` (``NotAResultsDB`` for a file of something else) if ``path`` cannot
    be opened as a results database; nothing is written to such a file.
    """

    def __init__(self, path: str | Path, timeout: float = 60.0, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._lock = WriterLock()
        self._conn: sqlite3.Connection | None = None
        shown = repr(str(self.path))
        check_path(self.path, readonly=readonly)
        try:
            if readonly:
                uri = "file:" + urllib.parse.quote(os.path.abspath(self.path)) + "?mode=ro"
                self._conn = sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None)
            else:
                self._conn = sqlite3.connect(str(self.path), timeout=timeout, isolation_level=None)
            self._conn.row_factory = sqlite3.Row
            self._conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            if readonly:
                version = schema_version(self._conn, shown)
                if version is None:
                    raise NotAResultsDB(f"{shown} is not a byzance results database (no table)")
            else:
                with self._write() as conn:
                    version = create_or_migrate(conn, shown)
                # only once the file is known to be ours (the journal mode is in the file)
                self._conn.execute("PRAGMA journal_mode = WAL")
        except sqlite3.Error as err:
            self.close()
            raise ValueError(f"results DB {shown}: cannot open it ({err})") from None
        except BaseException:
            self.close()
            raise
        self.schema_version = version

    # -- transactions ------------------------------------------------------------------------
    class _Txn:
        def __init__(self, conn: sqlite3.Connection) -> None:
            self.conn = conn

        def __enter__(self) -> sqlite3.Connection:
            self.conn.execute("BEGIN IMMEDIATE")
            return self.conn

        def __exit__(self, exc_type: Any, *_: Any) -> None:
            self.conn.execute("COMMIT" if exc_type is None else "ROLLBACK")

    def _writable(self) -> sqlite3.Connection:
        if self.readonly:
            raise ValueError(f"results DB {str(self.path)!r} was opened read-only")
        if self._conn is None:
            raise ValueError(f"results DB {str(self.path)!r} is closed")
        return self._conn

    def _write(self) -> ResultsDB._Txn:
        return ResultsDB._Txn(self._writable())

    def close(self) -> None:
        """Close the connection and give up this writer's claims (its runs still ``running``
        can then be taken over)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._lock.release()

    def __del__(self) -> None:  # a dropped connection is a crashed writer: release its lock
        lock = getattr(self, "_lock", None)
        if lock is not None:
            lock.release()

    def __enter__(self) -> ResultsDB:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    # -- claims ------------------------------------------------------------------------------
    def _claim(self, conn: sqlite3.Connection, rid: str) -> sqlite3.Row | None:
        return conn.execute(
            "SELECT status, started, writer, writer_pid, writer_host, writer_lock "
            "FROM runs WHERE run_id=?",
            (rid,),
        ).fetchone()

    def _mine(self, row: sqlite3.Row | None) -> bool:
        token = self._lock.token
        return row is not None and token is not None and row["writer"] == token

    def _held_by_other(self, row: sqlite3.Row | None) -> bool:
        """The run is ``running`` under another writer that is alive."""
        return (
            row is not None
            and row["status"] == "running"
            and not self._mine(row)
            and writer_alive(row["writer_lock"])
        )

    @staticmethod
    def _who(row: sqlite3.Row) -> str:
        return f"pid {row['writer_pid']} on {row['writer_host']}, running since {row['started']}"

    def _require_claim(self, conn: sqlite3.Connection, rid: str, action: str) -> None:
        row = self._claim(conn, rid)
        if row is None:
            raise ValueError(f"results DB: no run {rid}; call start_run first")
        if row["status"] == "running" and self._mine(row):
            return
        if row["status"] == "running":
            why = f"it was taken over by another writer ({self._who(row)})"
        else:
            why = f"it is {row['status']}" + ("" if self._mine(row) else " (by another writer)")
        raise RunClaimedError(
            f"results DB: cannot {action} run {rid}: {why}; this writer no longer owns it"
        )

    def owns(self, run_id_: str) -> bool:
        """Whether this ``ResultsDB`` holds run ``run_id_`` (claimed, still ``running``)."""
        if self.readonly:
            return False
        assert self._conn is not None
        row = self._claim(self._conn, run_id_)
        return self._mine(row) and row is not None and row["status"] == "running"

    # -- writes ------------------------------------------------------------------------------
    def start_run(
        self,
        config: Mapping[str, Any],
        engine: str = "sim",
        *,
        run_id_: str | None = None,
        overwrite: bool = False,
    ) -> str:
        """Claim a run for this writer and mark it ``running`` (from scratch: earlier metrics
        of the same id are deleted).

        Returns the run id (``run_id(config, engine)`` unless given). Raises
        ``RunClaimedError`` if another live writer is running it (whatever ``overwrite``), and
        ``ValueError`` if the run already finished, unless ``overwrite``.
        """
        rid = run_id_ or run_id(config, engine)
        self._writable()  # before a lock file is made
        token = self._lock.acquire(self.path)
        with self._write() as conn:
            row = self._claim(conn, rid)
            if self._held_by_other(row):
                raise RunClaimedError(
                    f"results DB {str(self.path)!r}: run {rid} is being run by another writer "
                    f"({self._who(row)}); two writers on one run would delete each other's "
                    "records: wait for it to end (or stop it), then run it again"
                )
            if row is not None and row["status"] == "finished" and not overwrite:
                raise ValueError(
                    f"results DB: run {rid} already finished; pass overwrite=True to run it again"
                )
            conn.execute("DELETE FROM metrics WHERE run_id=?", (rid,))
            conn.execute(
                "INSERT OR REPLACE INTO runs(run_id, config_json, engine, status, started, "
                "finished, final_accuracy, seconds, error, writer, writer_pid, writer_host, "
                "writer_lock) VALUES (?, ?, ?, 'running', ?, NULL, NULL, NULL, NULL, ?, ?, ?, ?)",
                (
                    rid,
                    canonical(config),
                    engine,
                    _now(),
                    token,
                    os.getpid(),
                    socket.gethostname(),
                    self._lock.path,
                ),
            )
        return rid

    def record_metrics(self, run_id_: str, record: Mapping[str, Any]) -> None:
        """Store (commit) one evaluation record ``{"round": int, "train_loss": ..., ...}`` of
        a run this writer holds (``RunClaimedError`` otherwise)."""
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
        values.append(canonical(extra) if extra else None)
        columns = ", ".join(("run_id", "round", *METRIC_COLUMNS, "extra"))
        marks = ", ".join("?" * len(values))
        with self._write() as conn:
            self._require_claim(conn, run_id_, "record metrics of")
            conn.execute(f"INSERT OR REPLACE INTO metrics({columns}) VALUES ({marks})", values)

    def finish_run(
        self,
        run_id_: str,
        final_accuracy: float,
        seconds: float,
        *,
        expected_rounds: Iterable[int] | None = None,
    ) -> None:
        """Mark a run ``finished`` with its final test accuracy and wall-clock seconds.

        With ``expected_rounds``, every one of them must have its record stored: otherwise
        the run is marked ``failed`` (saying which are missing) and ``IncompleteRunError`` is
        raised, so that a resumed grid runs it again."""
        missing: list[int] = []
        with self._write() as conn:
            self._require_claim(conn, run_id_, "finish")
            if expected_rounds is not None:
                stored = conn.execute("SELECT round FROM metrics WHERE run_id=?", (run_id_,))
                missing = sorted({int(r) for r in expected_rounds} - {r[0] for r in stored})
            if missing:
                shown = ", ".join(map(str, missing[:10])) + (", ..." if len(missing) > 10 else "")
                error = (
                    f"incomplete: the records of {len(missing)} round(s) ({shown}) are missing "
                    "from the results DB"
                )
                self._set_final(conn, run_id_, "failed", None, float(seconds), error)
            else:
                self._set_final(
                    conn, run_id_, "finished", _float(final_accuracy), float(seconds), None
                )
        if missing:
            raise IncompleteRunError(
                f"results DB: run {run_id_} {error}; marked failed (it runs again on resume)"
            )

    def fail_run(self, run_id_: str, error: str, seconds: float | None = None) -> None:
        """Mark a run this writer holds ``failed`` with its error message (it is re-run on
        resume)."""
        with self._write() as conn:
            self._require_claim(conn, run_id_, "fail")
            self._set_final(conn, run_id_, "failed", None, seconds, error)

    def abandon_run(
        self,
        run_id_: str,
        reason: str,
        *,
        config: Mapping[str, Any] | None = None,
        engine: str = "sim",
    ) -> bool:
        """Mark ``failed`` with ``reason`` a run whose writer died (e.g. a bench's worker
        process killed): only if it is ``running`` and no live writer holds it, or, with its
        ``config``, not recorded at all. Returns whether it was marked."""
        with self._write() as conn:
            row = self._claim(conn, run_id_)
            if row is None:
                if config is None:
                    return False
                conn.execute(
                    "INSERT INTO runs(run_id, config_json, engine, status, started, finished, "
                    "error) VALUES (?, ?, ?, 'failed', ?, ?, ?)",
                    (run_id_, canonical(config), engine, _now(), _now(), reason),
                )
                return True
            if row["status"] != "running" or self._held_by_other(row):
                return False
            self._set_final(conn, run_id_, "failed", None, None, reason)
            return True

    @staticmethod
    def _set_final(
        conn: sqlite3.Connection,
        rid: str,
        status: str,
        acc: float | None,
        seconds: float | None,
        error: str | None,
    ) -> None:
        conn.execute(
            "UPDATE runs SET status=?, finished=?, final_accuracy=?, seconds=?, error=? "
            "WHERE run_id=?",
            (status, _now(), acc, seconds, error, rid),
        )

    # -- reads -------------------------------------------------------------------------------
    def _read(self, query: str, args: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        if self._conn is None:
            raise ValueError(f"results DB {str(self.path)!r} is closed")
        return self._conn.execute(query, args)

    def finished_ids(self) -> set[str]:
        """Ids of runs that finished (skipped when a grid resumes)."""
        return {r[0] for r in self._read("SELECT run_id FROM runs WHERE status='finished'")}

    def status(self, run_id_: str) -> str | None:
        row = self._read("SELECT status FROM runs WHERE run_id=?", (run_id_,)).fetchone()
        return None if row is None else row[0]

    def load_runs(self, status: str | None = None) -> list[dict[str, Any]]:
        """All runs (or those with ``status``) as dicts; ``config`` is the parsed config."""
        if status is not None and status not in STATUSES:
            raise ValueError(f"results DB: status must be one of {STATUSES}, got {status!r}")
        query = f"SELECT {', '.join(RUN_COLUMNS)} FROM runs"
        query += (" WHERE status=?" if status else "") + " ORDER BY started"
        out = []
        for r in self._read(query, (status,) if status else ()):
            d = dict(r)
            d["config"] = json.loads(d.pop("config_json"))
            out.append(d)
        return out

    def load_metrics(self, run_ids: Iterable[str] | None = None) -> dict[str, list[dict[str, Any]]]:
        """``run_id -> records`` sorted by round (``extra`` keys merged into each record)."""
        rows = self._read("SELECT * FROM metrics ORDER BY run_id, round")
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
