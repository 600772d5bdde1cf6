"""Running a grid: the runs not yet finished in the results database, ``jobs`` at a time.

Runs execute in spawned worker processes (``byzance.grid.workers``: each with
``cpu_count // jobs`` torch threads, at most ``jobs`` runs in flight, a dead worker fails its
run only), each through ``byzance.runner`` (the only writer of the database): an interrupted
grid resumes where it stopped, and a finished run is never repeated. A second bench on the
same database file, under any path, is refused while one runs (``exclusive_bench``); any other
writer of a run the bench is running (``byzance run --db``) is refused by the database itself
(``byzance.results``: one writer per run).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from byzance import engines
from byzance.grid.spec import GridError, GridPoint
from byzance.grid.workers import execute_task, run_pool
from byzance.progress import RunsProgress
from byzance.results import ResultsDB, open_db, run_id
from byzance.results.locks import LockHeld, exclusive
from byzance.runner import build_config


@dataclass
class BenchSummary:
    total: int
    skipped: int
    finished: int
    failed: list[tuple[str, str]]  # (run id, error)
    duplicates: int
    seconds: float


@contextlib.contextmanager
def exclusive_bench(db_path: str) -> Iterator[None]:
    """Hold an exclusive lock on the results DB ``db_path`` while a grid runs on it.

    Two grids on one DB would both run the same unfinished configs; the second one is refused
    instead. The lock (``flock`` on ``<real path>.lock``, symlinks resolved, so every path to
    the file meets it) is released by the OS if the process dies, so a crashed grid never
    blocks the next one. Where ``fcntl`` does not exist (Windows) nothing is locked.
    """
    try:
        with exclusive(db_path):
            yield
    except LockHeld as held:
        raise GridError(
            f"another byzance bench (pid {held.owner}) is running on {db_path}"
            + ("" if held.path == os.path.abspath(db_path) + ".lock" else f" (lock {held.path})")
            + ": wait for it to finish, or give this grid another --db"
        ) from None


def check_grid(
    points: Sequence[GridPoint], engine: str = "sim", options: Any = None, *, progress: bool = False
) -> tuple[list[tuple[GridPoint, Any, str]], list[tuple[GridPoint, str]]]:
    """Split points into ``(point, ExperimentConfig, run id)`` that validate and run on
    ``engine`` with ``options`` (``Engine.check``), and ``(point, error)``.

    Each distinct config is validated once and its run id computed once (duplicates share
    them); ``progress`` shows a bar on stderr when this takes over a second."""
    from tqdm.auto import tqdm

    from byzance.sim import ExperimentConfig

    eng = engines.get(engine)
    opts = eng.make_options(options)
    # the base check validates the config itself: no need to validate it twice
    checks_config = type(eng).check is engines.Engine.check
    seen: dict[bytes, tuple[Any, str] | str] = {}  # config digest -> (config, id) or error
    valid: list[tuple[GridPoint, Any, str]] = []
    invalid: list[tuple[GridPoint, str]] = []
    bar = tqdm(
        total=len(points),
        desc="checking configs",
        unit="config",
        file=sys.stderr,
        delay=1.0,
        mininterval=0.5,
        disable=not progress,
    )
    try:
        for i, point in enumerate(points):
            text = json.dumps(point.config, sort_keys=True, default=str)
            key = hashlib.blake2b(text.encode(), digest_size=16).digest()
            outcome = seen.get(key)
            if outcome is None:
                try:
                    if checks_config:
                        cfg = ExperimentConfig.from_dict(dict(point.config))
                    else:
                        cfg = build_config(point.config)
                    eng.check(cfg, opts)
                    outcome = (cfg, run_id(cfg.to_dict(), engine, eng.id_fields(cfg, opts)))
                except (ValueError, TypeError) as err:
                    outcome = str(err)
                seen[key] = outcome
            if isinstance(outcome, str):
                invalid.append((point, outcome))
            else:
                valid.append((point, *outcome))
            if i % 256 == 255:
                bar.update(256)
        bar.update(len(points) - bar.n)
    finally:
        bar.close()
    return valid, invalid


def run_grid(
    configs: Sequence[Any],
    db_path: str | Path,
    *,
    jobs: int = 1,
    engine: str = "sim",
    engine_options: Any = None,
    progress: RunsProgress | bool = True,
) -> BenchSummary:
    """Run validated ``ExperimentConfig``s not yet finished in the DB, ``jobs`` at a time.

    Duplicate configs (same id) run once. Interrupting stops at once: no new run starts, runs
    in flight are marked failed; unfinished runs are re-run from scratch on the next call,
    finished ones are never repeated. Engines that start their own processes (``ray``) run one
    config at a time. ``ValueError`` if ``db_path`` is not a results DB (nor a new path)."""
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    open_db(db_path).close()  # a clear error for a bad path, before any lock file is made
    with exclusive_bench(str(db_path)):
        return _run_grid(configs, str(db_path), jobs, engine, engine_options, progress)


def _run_grid(
    configs: Sequence[Any],
    db_path: str,
    jobs: int,
    engine: str,
    engine_options: Any,
    progress: RunsProgress | bool,
) -> BenchSummary:
    start = time.perf_counter()
    options = engine_options
    eng = engines.get(engine)
    opts = eng.make_options(options)
    unique: dict[str, dict[str, Any]] = {}
    for cfg in configs:
        if isinstance(cfg, Mapping):
            cfg = build_config(cfg)
        rid = run_id(cfg.to_dict(), engine, eng.id_fields(cfg, opts))
        unique.setdefault(rid, cfg.to_dict())
    duplicates = len(configs) - len(unique)
    with open_db(db_path) as db:
        return _run_unique(unique, db, db_path, jobs, engine, options, progress, start, duplicates)


def _run_unique(
    unique: dict[str, dict[str, Any]],
    db: ResultsDB,
    db_path: str,
    jobs: int,
    engine: str,
    options: Any,
    progress: RunsProgress | bool,
    start: float,
    duplicates: int,
) -> BenchSummary:
    done_ids = db.finished_ids() & set(unique)
    previous = {r["run_id"]: r["final_accuracy"] for r in db.load_runs("finished")}
    todo = [(rid, c) for rid, c in unique.items() if rid not in done_ids]
    bar = (
        progress
        if isinstance(progress, RunsProgress)
        else RunsProgress(len(unique), len(done_ids), enabled=bool(progress))
    )
    for rid in done_ids:
        bar.add_accuracy(previous.get(rid))
    bar.render()
    finished = skipped = 0
    failed: list[tuple[str, str]] = []

    def collect(out: dict[str, Any]) -> None:
        nonlocal finished
        if out["status"] == "finished":
            finished += 1
        else:
            failed.append((out["run_id"], out["error"]))
        bar.update(out["status"], out["final_accuracy"])

    def should_run(rid: str) -> bool:
        """False if another writer (``byzance run --db``) finished it meanwhile."""
        nonlocal skipped
        if db.status(rid) != "finished":
            return True
        skipped += 1
        bar.update("finished", None)
        return False

    def abandon(rid: str, config: dict[str, Any] | None, reason: str) -> None:
        label = engines.get(engine).label(build_config(config)) if config else engine
        with contextlib.suppress(ValueError, sqlite3.Error):  # else it stays "running"
            db.abandon_run(rid, reason, config=config, engine=label)

    try:
        if jobs == 1 or not engines.get(engine).parallel_runs or len(todo) <= 1:
            for rid, cfg in todo:
                if should_run(rid):
                    collect(execute_task(cfg, db_path, engine, options, rid, False))
        else:
            run_pool(todo, (db_path, engine, options), jobs, collect, should_run, abandon)
    finally:
        bar.close()
    return BenchSummary(
        total=len(unique),
        skipped=len(done_ids) + skipped,
        finished=finished,
        failed=failed,
        duplicates=duplicates,
        seconds=time.perf_counter() - start,
    )
