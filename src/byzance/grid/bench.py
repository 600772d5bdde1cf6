"""Running a grid: the runs not yet finished in the results database, ``jobs`` at a time.

Runs execute in spawned worker processes (each with ``cpu_count // jobs`` torch threads), each
through ``byzance.runner`` (the only writer of the database): an interrupted grid resumes where
it stopped, and a finished run is never repeated. A second bench on the same database is
refused while one runs (``exclusive_bench``).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from byzance.grid.spec import GridError
from byzance.progress import RunsProgress
from byzance.results import open_db
from byzance.runner import execute_run, run_key


@dataclass
class BenchSummary:
    total: int
    skipped: int
    finished: int
    failed: list[tuple[str, str]]  # (run id, error)
    duplicates: int
    seconds: float


def _execute_in_worker(
    config_dict: dict[str, Any], db_path: str, engine: str, options: Any
) -> dict[str, Any]:
    out = execute_run(config_dict, db_path, engine, options)
    out["result"] = None  # results stay in the DB; do not pickle histories back
    return out


def _exit_when_orphaned(parent: int) -> None:
    """Watchdog thread: if the bench process dies (even kill -9), stop this worker at once.

    Its run stays ``running`` in the DB and is re-run from scratch on resume; without this an
    orphaned worker would keep taking queued runs and writing beside the resumed grid.
    """
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os._exit(3)


def _init_worker(threads: int, parent: int | None = None) -> None:
    if parent is not None:
        threading.Thread(target=_exit_when_orphaned, args=(parent,), daemon=True).start()
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["MKL_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set in this process
        pass


@contextlib.contextmanager
def exclusive_bench(db_path: str) -> Iterator[None]:
    """Hold an exclusive lock on ``DB.lock`` while a grid runs on the DB ``db_path``.

    Two grids on one DB would both run the same unfinished configs; the second one is refused
    instead. The lock (``flock``) is released by the OS if the process dies, so a crashed grid
    never blocks the next one. Where ``fcntl`` does not exist (Windows) nothing is locked.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    path = Path(f"{db_path}.lock")
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            owner = fh.read().strip() or "?"
            raise GridError(
                f"another byzance bench (pid {owner}) is running on {db_path}: wait for it to "
                "finish, or give this grid another --db"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        try:
            yield
        finally:
            path.unlink(missing_ok=True)
            fcntl.flock(fh, fcntl.LOCK_UN)


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

    Duplicate configs (same id) run once. Interrupting leaves unfinished runs ``running``:
    they are re-run from scratch on the next call, finished ones are never repeated. Engines
    that start their own processes (``ray``) run one config at a time.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
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
    unique: dict[str, dict[str, Any]] = {}
    for cfg in configs:
        unique.setdefault(run_key(cfg, engine, options), cfg.to_dict())
    duplicates = len(configs) - len(unique)
    with open_db(db_path) as db:
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
    finished = 0
    failed: list[tuple[str, str]] = []

    def collect(out: dict[str, Any]) -> None:
        nonlocal finished
        if out["status"] == "finished":
            finished += 1
        else:
            failed.append((out["run_id"], out["error"]))
        bar.update(out["status"], out["final_accuracy"])

    try:
        if jobs == 1 or engine != "sim" or len(todo) <= 1:
            for _, cfg in todo:
                collect(_execute_in_worker(cfg, db_path, engine, options))
        else:
            _run_pool(todo, db_path, jobs, engine, options, collect)
    finally:
        bar.close()
    return BenchSummary(
        total=len(unique),
        skipped=len(done_ids),
        finished=finished,
        failed=failed,
        duplicates=duplicates,
        seconds=time.perf_counter() - start,
    )


def _run_pool(todo, db_path, jobs, engine, options, collect) -> None:
    threads = max(1, (os.cpu_count() or 1) // jobs)
    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(
        max_workers=jobs, mp_context=ctx, initializer=_init_worker, initargs=(threads, os.getpid())
    )
    clean = False
    try:
        pending: dict[Future, str] = {
            pool.submit(_execute_in_worker, cfg, db_path, engine, options): rid for rid, cfg in todo
        }
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                rid = pending.pop(fut)
                try:
                    out = fut.result()
                except Exception as err:  # e.g. a worker process killed
                    message = f"{type(err).__name__}: {err}".strip()
                    out = {
                        "run_id": rid,
                        "status": "failed",
                        "final_accuracy": None,
                        "error": message,
                    }
                collect(out)
        clean = True
    finally:
        # on Ctrl-C / errors, do not wait for queued runs; in-flight ones stay "running"
        pool.shutdown(wait=clean, cancel_futures=True)
