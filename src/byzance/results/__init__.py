"""SQLite results database shared by ``byzance run``/``bench``, the simulator and the Ray engine.

Tables (schema version ``SCHEMA_VERSION``, stored in ``meta``)::

    runs(run_id PRIMARY KEY, config_json, engine, status, started, finished,
         final_accuracy, seconds, error, writer, writer_pid, writer_host, writer_lock)
    metrics(run_id, round, train_loss, test_accuracy, agg_distance, lr, time,
            missing_workers TEXT NULL, val_accuracy NULL, extra TEXT NULL,
            PRIMARY KEY(run_id, round))

``status`` is ``running`` from ``start_run`` until ``finish_run`` (``finished``) or ``fail_run``
(``failed``). Every write is committed at once (WAL journal, ``busy_timeout`` so several
processes can write), so a crash loses at most the record in flight. Metric keys beyond the
named columns are kept as JSON in ``extra``.

**One writer per run.** ``start_run`` claims the run for this ``ResultsDB`` (``writer``: its
token; ``writer_lock``: its lock file, ``byzance.results.locks.WriterLock``, held while it is
open; the pid and host for messages), in the same ``BEGIN IMMEDIATE`` transaction that reads the
run, so two writers cannot both claim it, whatever path they opened the database by. It refuses
a run ``running`` under a live writer (``RunClaimedError``, even with ``overwrite``); a run left
``running`` by a writer that died (its lock released by the OS, even on SIGKILL) is taken over
and re-run from scratch: that is how a grid resumes. ``record_metrics``, ``finish_run`` and
``fail_run`` write only for the claim's holder. ``finish_run`` checks that every expected round
is stored, else marks the run ``failed`` (``IncompleteRunError``): a finished run never has
missing rounds. ``byzance bench`` also holds ``<real path>.lock`` (``locks.exclusive``) so that
a second bench on the same file, under any name, is refused.

**Only byzance databases are written.** A path is opened for writing if it is new, an empty
file, or a byzance database (an older schema is migrated); anything else (a text file, another
application's SQLite file, a folder) is refused with a ``ValueError`` before any write.
``readonly=True`` (``byzance report``) never writes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from byzance.results.ids import ID_EXCLUDED_KEYS, run_id
from byzance.results.schema import (
    METRIC_COLUMNS,
    RUN_COLUMNS,
    SCHEMA_VERSION,
    STATUSES,
    IncompleteRunError,
    NotAResultsDB,
    RunClaimedError,
    check_path,
)
from byzance.results.store import ResultsDB

__all__ = [
    "ID_EXCLUDED_KEYS",
    "METRIC_COLUMNS",
    "RUN_COLUMNS",
    "SCHEMA_VERSION",
    "STATUSES",
    "IncompleteRunError",
    "NotAResultsDB",
    "ResultsDB",
    "RunClaimedError",
    "check_db",
    "open_db",
    "record_run",
    "run_id",
]


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
    nothing stored): claimed and marked ``running`` first (``RunClaimedError`` if another live
    writer runs it), every record committed as ``record`` gets it, then ``finished`` with the
    result's final accuracy and seconds, provided every record it got and the config's last
    round (unless the run diverged) are stored (else ``failed``, ``IncompleteRunError``), or
    ``failed`` with the first line of the error (re-raised). Returns what ``run`` returns."""
    database = open_db(db) if isinstance(db, (str, os.PathLike)) else db
    owned = database is not None and database is not db
    start = time.perf_counter()
    written: set[int] = set()
    try:
        if database is not None:
            database.start_run(config, engine, run_id_=run_id_, overwrite=overwrite)

        def record(rec: Mapping[str, Any]) -> None:
            if database is not None:
                database.record_metrics(run_id_, rec)
                written.add(int(rec["round"]))

        try:
            result = run(record)
        except BaseException as exc:
            if database is not None and database.owns(run_id_):
                lines = f"{type(exc).__name__}: {exc}".strip().splitlines()
                database.fail_run(run_id_, lines[0] if lines else "", time.perf_counter() - start)
            raise
        if database is not None:
            expected = set(written)
            last = config.get("rounds")
            if isinstance(last, int) and not getattr(result, "diverged", False):
                expected.add(last)
            database.finish_run(
                run_id_, result.final_accuracy, result.seconds, expected_rounds=expected
            )
        return result
    finally:
        if owned:
            database.close()


def open_db(path: str | Path, timeout: float = 60.0, *, readonly: bool = False) -> ResultsDB:
    """Open the results database at ``path``: for writing, creating it if the path is new or
    an empty file; ``readonly``: an existing one, never written. ``ValueError`` if ``path`` is
    not (and cannot become) a byzance results database."""
    return ResultsDB(path, timeout=timeout, readonly=readonly)


def check_db(path: str | Path) -> bool:
    """Raise ``ValueError`` unless ``path`` is a results database or a path where ``open_db``
    could create one (``bench --dry-run``); writes nothing that stays. Returns whether it
    holds a database."""
    path = Path(path)
    if check_path(path, readonly=False):
        open_db(path, readonly=True).close()
        return True
    if not path.exists():
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except OSError as err:
            raise ValueError(
                f"results DB {str(path)!r}: cannot create it ({err.strerror or err})"
            ) from None
        os.close(fd)
        os.unlink(path)
    return False
