"""The worker processes of a parallel grid (``run_pool``).

At most ``jobs`` runs are in flight, one per spawned worker process; a worker gets its next run
only when it has returned the last one, so nothing waits inside a worker. Workers ignore
SIGINT: on Ctrl-C (which a terminal sends to every process of the group) the bench alone
decides: it sends no more runs, stops the workers at once (SIGTERM) and marks their runs
``failed`` (``interrupted: ...``); they run again on resume. A worker that dies (killed, out of
memory) fails its run only: the run is marked ``failed`` in the results DB with the reason
(``worker process died (signal 9, SIGKILL)``), a new worker takes the next run, and the grid
goes on.

Test fault hook: with the environment variable ``BYZANCE_TEST_KILL_RUN`` set to a run id, a
pool worker running that run kills itself (SIGKILL) right after the run's first metrics
record is stored. It exists for the tests of a dead worker (``tests/test_bench_faults.py``);
never set it otherwise.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

from byzance.runner import execute_run

#: the test fault hook (module docstring)
TEST_KILL_ENV = "BYZANCE_TEST_KILL_RUN"
#: the error of a run whose worker was stopped by an interrupt
INTERRUPTED = "interrupted: the bench was stopped before this run ended"


def execute_task(
    config: dict[str, Any], db_path: str, engine: str, options: Any, rid: str, in_pool: bool
) -> dict[str, Any]:
    """One run of a grid (``byzance.runner.execute_run``), its result left in the DB."""
    if in_pool and os.environ.get(TEST_KILL_ENV) == rid:
        from byzance.runner import run

        run(config, engine, options, db=db_path, on_metrics=_kill_self)
    out = execute_run(config, db_path, engine, options)
    out["result"] = None  # results stay in the DB; do not pickle histories back
    return out


def _kill_self(_record: Any) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _exit_when_orphaned(parent: int) -> None:
    """Watchdog thread: if the bench process dies (even kill -9), stop this worker at once.

    Its run stays ``running`` in the DB and is re-run from scratch on resume; without this an
    orphaned worker would keep writing beside the resumed grid.
    """
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os._exit(3)


def _init_worker(threads: int, parent: int) -> None:
    threading.Thread(target=_exit_when_orphaned, args=(parent,), daemon=True).start()
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["MKL_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set in this process
        pass


def _worker_main(conn: Connection, threads: int, parent: int) -> None:
    """A worker: runs the tasks it receives, one at a time, until told to stop (None)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the bench decides (module docstring)
    try:
        _init_worker(threads, parent)
        while True:
            task = conn.recv()
            if task is None:
                return
            conn.send(execute_task(*task, in_pool=True))
    except (EOFError, BrokenPipeError):
        return  # the bench is gone


def death_reason(exitcode: int | None) -> str:
    """What ended a worker process, for the ``error`` of its run."""
    if exitcode is None:
        return "worker process stopped"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            return f"worker process died (signal {-exitcode})"
        return f"worker process died (signal {-exitcode}, {name})"
    return f"worker process exited with status {exitcode} during the run"


@dataclass
class _Worker:
    process: Any
    conn: Connection
    task: tuple[str, dict[str, Any]] | None = None  # (run id, config) in flight


def run_pool(
    todo: Sequence[tuple[str, dict[str, Any]]],
    task_args: tuple[str, str, Any],
    jobs: int,
    collect: Callable[[dict[str, Any]], None],
    should_run: Callable[[str], bool],
    abandon: Callable[[str, dict[str, Any] | None, str], None],
) -> None:
    """Run ``todo`` (run id, config) in at most ``jobs`` worker processes; ``task_args``:
    (db path, engine, options). ``collect(out)`` gets each run's outcome (``execute_run``'s
    dict); ``should_run(rid)`` is asked just before a run is sent (False: skipped);
    ``abandon(rid, config or None, reason)`` records a run whose worker died or was stopped."""
    ctx = multiprocessing.get_context("spawn")
    threads = max(1, (os.cpu_count() or 1) // jobs)
    queue = deque(todo)
    workers: list[_Worker] = []

    def idle_worker() -> _Worker:
        for w in workers:
            if w.task is None and w.process.is_alive():
                return w
        for w in [w for w in workers if w.task is None]:
            _retire(w, workers)  # died while idle
        ours, theirs = ctx.Pipe()
        process = ctx.Process(
            target=_worker_main, args=(theirs, threads, os.getpid()), name="byzance-bench-worker"
        )
        with _sigint_ignored():  # inherited through exec: covers the worker's start-up too
            process.start()
        theirs.close()
        workers.append(_Worker(process, ours))
        return workers[-1]

    clean = False
    try:
        while queue or any(w.task for w in workers):
            while queue and sum(w.task is not None for w in workers) < jobs:
                rid, config = queue.popleft()
                if not should_run(rid):
                    continue
                worker = idle_worker()
                worker.task = (rid, config)
                with contextlib.suppress(OSError):  # a dead worker is seen below
                    worker.conn.send((config, *task_args, rid))
            busy = [w for w in workers if w.task is not None]
            if not busy:
                continue
            wait([w.conn for w in busy] + [w.process.sentinel for w in busy])
            for worker in busy:
                out = _outcome(worker)
                if out is None:
                    continue
                if out.pop("dead", False):  # its run only fails; a new worker takes the next
                    abandon(*worker.task, out["error"])  # type: ignore[misc]
                    _retire(worker, workers)
                worker.task = None
                collect(out)
        clean = True
    finally:
        _stop(workers, interrupted=not clean, abandon=abandon)


def _outcome(worker: _Worker) -> dict[str, Any] | None:
    """The finished run of a busy worker, a failed one if the worker died, or None (busy)."""
    try:
        if worker.conn.poll():
            return worker.conn.recv()
    except (EOFError, OSError):  # its end of the pipe closed: the worker is ending
        worker.process.join(timeout=5)
    if worker.process.is_alive():
        return None
    worker.process.join()
    rid, _ = worker.task  # type: ignore[misc]
    return {
        "run_id": rid,
        "status": "failed",
        "final_accuracy": None,
        "error": death_reason(worker.process.exitcode),
        "dead": True,
    }


def _retire(worker: _Worker, workers: list[_Worker]) -> None:
    worker.conn.close()
    worker.process.join(timeout=1)
    workers.remove(worker)


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored in this process for the block (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _stop(
    workers: list[_Worker],
    *,
    interrupted: bool,
    abandon: Callable[[str, dict[str, Any] | None, str], None],
) -> None:
    """End the workers: when the grid is done, tell them to stop; on an interrupt or an error,
    terminate them at once and mark the runs they had ``failed`` (``INTERRUPTED``)."""
    for w in workers:
        if interrupted:
            w.process.terminate()
        else:
            with contextlib.suppress(OSError):
                w.conn.send(None)
    for w in workers:
        w.process.join(timeout=5 if interrupted else 30)
        if w.process.is_alive():
            w.process.kill()
            w.process.join()
        w.conn.close()
    for w in workers:
        if w.task is not None:
            abandon(w.task[0], None, INTERRUPTED)
    del workers[:]
