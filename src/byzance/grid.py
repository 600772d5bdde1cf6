"""Benchmark grids: a TOML file = a base config + lists to sweep; expansion, validation, running.

A grid file::

    name = "robustness"            # optional
    [base]                         # ExperimentConfig fields shared by every run
    dataset = "digits"
    rounds = 100
    [sweep]                        # Cartesian product of these lists (last key varies fastest)
    aggregator = ["average", "nnm+trimmed_mean", "krum"]
    attack = ["none", "alie", "sign_flipping"]
    f = [1, 3]
    heterogeneity = ["iid", {heterogeneity = "dirichlet", alpha = 0.1}]
    seed = [0, 1, 2]

A list item that is a table sets several fields together (``{heterogeneity = "dirichlet",
alpha = 0.1}``), so dependent settings are swept without useless combinations; for such a key
the name is only a label. ``aggregator_params`` and ``attack_params`` items are values (tables).

Every expanded config is validated (``ExperimentConfig.from_dict(...).validate()``) before any
run starts. Each run's id is ``run_key(config.to_dict(), engine, options)``: finished runs in the
database are skipped, so an interrupted grid resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from byzance.results import open_db, run_id

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    try:
        import tomli as tomllib  # type: ignore[no-redef]
    except ModuleNotFoundError:
        tomllib = None  # type: ignore[assignment]

#: config fields whose values are tables (a sweep item for them is a value, not joint fields)
DICT_FIELDS = frozenset({"aggregator_params", "attack_params"})
GRID_KEYS = ("name", "description", "base", "sweep")
ENGINES = ("sim", "ray")


class GridError(ValueError):
    """A problem with a grid file or one of its expanded configs (a user error)."""


@dataclass
class GridPoint:
    """One expanded config: ``coords`` are the swept fields and values that produced it."""

    index: int
    coords: dict[str, Any]
    config: dict[str, Any]

    def describe(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.coords.items())
        return f"grid entry #{self.index} ({shown or 'base'})"


@dataclass
class Grid:
    name: str
    base: dict[str, Any]
    sweep: dict[str, list[Any]]
    points: list[GridPoint] = field(default_factory=list)


def parse_grid(data: Mapping[str, Any], source: str = "grid") -> Grid:
    """Check the layout of a parsed grid file and expand it."""
    unknown = sorted(set(data) - set(GRID_KEYS))
    if unknown:
        raise GridError(
            f"{source}: unknown top-level key(s) {unknown}; allowed: {list(GRID_KEYS)} "
            "(config fields go in [base], lists to sweep in [sweep])"
        )
    base = data.get("base", {})
    sweep = data.get("sweep", {})
    for key, value in (("base", base), ("sweep", sweep)):
        if not isinstance(value, dict):
            raise GridError(f"{source}: [{key}] must be a table, got {type(value).__name__}")
    for key, values in sweep.items():
        if not isinstance(values, list) or not values:
            raise GridError(f"{source}: sweep.{key} must be a non-empty list, got {values!r}")
        for item in values:
            if isinstance(item, dict) and key not in DICT_FIELDS and not item:
                raise GridError(f"{source}: sweep.{key} has an empty table")
    grid = Grid(name=str(data.get("name", Path(source).stem)), base=dict(base), sweep=dict(sweep))
    grid.points = expand(grid.base, grid.sweep)
    return grid


def load_grid(path: str | Path) -> Grid:
    """Read and expand a grid TOML file (``GridError`` if it is malformed)."""
    return parse_grid(load_toml(path, "grid file"), str(path))


def load_toml(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """Parse a TOML file; ``GridError`` (a ``ValueError``) if missing or malformed."""
    if tomllib is None:  # pragma: no cover
        raise GridError("reading TOML files on Python 3.10 needs tomli: pip install tomli")
    path = Path(path)
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise GridError(f"{what} {str(path)!r} not found") from None
    except IsADirectoryError:
        raise GridError(f"{what} {str(path)!r} is a folder, expected a .toml file") from None
    except tomllib.TOMLDecodeError as err:
        raise GridError(f"{what} {str(path)!r} is not valid TOML: {err}") from None


def expand(base: Mapping[str, Any], sweep: Mapping[str, Sequence[Any]]) -> list[GridPoint]:
    """Cartesian product of the sweep lists applied on top of ``base`` (file order kept)."""
    keys = list(sweep)
    points = []
    for index, combo in enumerate(itertools.product(*(sweep[k] for k in keys))):
        config = dict(base)
        coords: dict[str, Any] = {}
        for key, item in zip(keys, combo, strict=True):
            if isinstance(item, dict) and key not in DICT_FIELDS:
                config.update(item)
                coords.update(item)
            else:
                config[key] = item
                coords[key] = item
        points.append(GridPoint(index=index, coords=coords, config=config))
    return points


def build_config(config: Mapping[str, Any]) -> Any:
    """``ExperimentConfig.from_dict(config)``, validated (``ValueError`` names the field)."""
    from byzance.sim import ExperimentConfig

    cfg = ExperimentConfig.from_dict(dict(config))
    cfg.validate()
    return cfg


def validate_points(
    points: Sequence[GridPoint],
) -> tuple[list[tuple[GridPoint, Any]], list[tuple[GridPoint, str]]]:
    """Split points into ``(point, ExperimentConfig)`` that validate and ``(point, error)``."""
    valid, invalid = [], []
    for point in points:
        try:
            valid.append((point, build_config(point.config)))
        except (ValueError, TypeError) as err:
            invalid.append((point, str(err)))
    return valid, invalid


# -- running ---------------------------------------------------------------------------------


def run_key(
    config_dict: Mapping[str, Any],
    engine: str = "sim",
    engine_options: Mapping[str, Any] | None = None,
) -> str:
    """The run's id in the results DB: ``run_id`` of the config plus the Ray options that change
    the result.

    Must match what the engines record: the Ray engine keys a run by its config and quorum
    (``q``); the decentralised one by its config and ``DecentralizedOptions`` (model aggregator;
    q only bounds what a node may aggregate there). Options that do not change the result
    (address, round timeout, checkpoints, CPUs) are left out, so a run resumes under new ones.
    """
    keyed = dict(config_dict)
    options = engine_options or {}
    if engine == "ray" and options.get("decentralized"):
        # = dataclasses.asdict(DecentralizedOptions(model_aggregator=...)) in decentralized.py
        keyed["decentralized"] = {
            "model_aggregator": options.get("model_aggregator") or DEFAULT_MODEL_AGGREGATOR,
            "equivocate": True,
        }
    elif engine == "ray" and options.get("q") is not None:
        keyed["ray_quorum"] = options["q"]
    return run_id(keyed, engine)


#: engine options that go to ``RayOptions`` as they are (``q`` becomes ``quorum``)
RAY_OPTION_FIELDS = (
    "address",
    "round_timeout",
    "checkpoint_dir",
    "checkpoint_every",
    "num_cpus",
    "worker_cpus",
)
DEFAULT_MODEL_AGGREGATOR = "trimmed_mean"


def ray_options(module: Any, engine_options: Mapping[str, Any] | None) -> Any:
    """``module.RayOptions`` from the engine options given (``None`` values left at default)."""
    given = {k: v for k, v in (engine_options or {}).items() if v is not None}
    kwargs = {k: given[k] for k in RAY_OPTION_FIELDS if k in given}
    if "q" in given:
        kwargs["quorum"] = given["q"]
    return module.RayOptions(**kwargs)


def run_engine(
    config: Any,
    engine: str = "sim",
    engine_options: Mapping[str, Any] | None = None,
    on_metrics: Callable[[dict], None] | None = None,
    progress: bool = False,
    db_path: str | None = None,
) -> Any:
    """Run one validated ``ExperimentConfig`` on the simulator or on Ray; returns a RunResult.

    ``engine_options`` (Ray only): ``address``, ``q`` (vectors aggregated per round),
    ``round_timeout`` (seconds), ``checkpoint_dir``, ``checkpoint_every``, ``num_cpus``,
    ``worker_cpus``, passed on as ``RayOptions``; ``decentralized=True`` runs
    ``run_decentralized_ray`` with ``DecentralizedOptions(model_aggregator=...)`` instead (its
    records carry ``spread``). ``db_path`` (Ray only): the engine records the run in that
    results DB itself (with ``missing_workers``).
    """
    if engine == "sim":
        from byzance.sim import run_experiment

        return run_experiment(config, on_metrics=on_metrics, progress=progress)
    if engine == "ray":
        module = load_ray_engine()
        options = ray_options(module, engine_options)
        if (engine_options or {}).get("decentralized"):
            return _run_decentralized(
                config, options, engine_options or {}, on_metrics, progress, db_path
            )
        return module.run_experiment_ray(
            config,
            address=options.address,
            options=options,
            on_metrics=on_metrics,
            db=db_path,
            progress=progress,
        )
    raise ValueError(f"engine must be one of {list(ENGINES)}, got {engine!r}")


def _run_decentralized(
    config: Any,
    options: Any,
    engine_options: Mapping[str, Any],
    on_metrics: Callable[[dict], None] | None,
    progress: bool,
    db_path: str | None,
) -> Any:
    """``run_decentralized_ray`` wrapped into a ``RunResult`` (accuracy: mean over honest nodes)."""
    from byzance.engines.decentralized import DecentralizedOptions, run_decentralized_ray
    from byzance.sim.simulation import RunResult

    dec = DecentralizedOptions(
        model_aggregator=engine_options.get("model_aggregator") or DEFAULT_MODEL_AGGREGATOR
    )

    def report(record: dict) -> None:
        if progress:
            print(
                f"    round {record['round']}: accuracy {record['test_accuracy']:.3f} "
                f"(min {record['test_accuracy_min']:.3f}), spread {record['spread']:.3g}",
                file=sys.stderr,
                flush=True,
            )
        if on_metrics is not None:
            on_metrics(record)

    out = run_decentralized_ray(
        config,
        address=options.address,
        options=options,
        decentralized=dec,
        on_metrics=report,
        db=db_path,
    )
    history = out["history"]
    return RunResult(
        config=config,
        history=history,
        final_accuracy=history[-1]["test_accuracy"],
        seconds=out["seconds"],
        timings={"rounds": config.rounds},
    )


def load_ray_engine() -> Any:
    """Import the Ray engine lazily; ``ImportError`` with an install hint if Ray is missing."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise ImportError(
            "--engine ray needs Ray, which is not installed: pip install 'byzance[ray]'"
        ) from None
    try:
        from byzance.engines import ray_engine
    except ImportError as err:
        raise ImportError(f"the Ray engine is not available in this byzance: {err}") from None
    if not hasattr(ray_engine, "run_experiment_ray"):
        raise ImportError("the Ray engine in this byzance has no run_experiment_ray")
    return ray_engine


def execute_run(
    config_dict: dict[str, Any],
    db_path: str | None,
    engine: str = "sim",
    engine_options: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Run one config, storing it in the DB at ``db_path`` (if any) as its metrics arrive.

    Never raises for a failing run: returns ``{"run_id", "status", "final_accuracy", "seconds",
    "error", "result"}`` with status ``finished`` or ``failed`` (with the error message).
    Top-level so that worker processes can run it.
    """
    start = time.perf_counter()
    config = build_config(config_dict)
    stored = config.to_dict()
    rid = run_key(stored, engine, engine_options)
    if engine == "ray":  # the Ray engine records its run (and failures) in the DB itself
        try:
            result = run_engine(config, engine, engine_options, None, progress, db_path)
        except Exception as err:
            return _failed(rid, err, time.perf_counter() - start)
        return _finished(rid, result)
    db = open_db(db_path) if db_path else None
    try:
        if db is not None:
            db.start_run(stored, engine, run_id_=rid, overwrite=overwrite)
        on_metrics = (lambda record: db.record_metrics(rid, record)) if db is not None else None
        try:
            result = run_engine(config, engine, engine_options, on_metrics, progress)
        except Exception as err:  # a failing run is recorded, the grid goes on
            out = _failed(rid, err, time.perf_counter() - start)
            if db is not None:
                db.fail_run(rid, out["error"], out["seconds"])
            return out
        if db is not None:
            db.finish_run(rid, result.final_accuracy, result.seconds)
        return _finished(rid, result)
    finally:
        if db is not None:
            db.close()


def _failed(rid: str, err: BaseException, seconds: float) -> dict[str, Any]:
    message = f"{type(err).__name__}: {err}".strip()
    return {
        "run_id": rid,
        "status": "failed",
        "final_accuracy": None,
        "seconds": seconds,
        "error": message,
        "result": None,
    }


def _finished(rid: str, result: Any) -> dict[str, Any]:
    return {
        "run_id": rid,
        "status": "finished",
        "final_accuracy": result.final_accuracy,
        "seconds": result.seconds,
        "error": None,
        "result": result,
    }


def _execute_in_worker(
    config_dict: dict[str, Any], db_path: str, engine: str, options: dict[str, Any]
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


class Progress:
    """A one-line progress bar on ``stream``: runs done/total, ETA, best/worst final accuracy."""

    def __init__(
        self,
        total: int,
        done: int = 0,
        stream: TextIO | None = None,
        width: int = 24,
        enabled: bool = True,
    ) -> None:
        self.total, self.done, self.width, self.enabled = total, done, width, enabled
        self.stream = stream if stream is not None else sys.stderr
        self.resumed = done
        self.failed = 0
        self.best: float | None = None
        self.worst: float | None = None
        self.start = time.perf_counter()
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def add_accuracy(self, acc: float | None) -> None:
        if acc is None:
            return
        self.best = acc if self.best is None else max(self.best, acc)
        self.worst = acc if self.worst is None else min(self.worst, acc)

    def update(self, status: str, acc: float | None) -> None:
        self.done += 1
        self.failed += status != "finished"
        self.add_accuracy(acc)
        self.render()

    def line(self) -> str:
        frac = self.done / self.total if self.total else 1.0
        filled = int(round(frac * self.width))
        bar = "#" * filled + "-" * (self.width - filled)
        ran = self.done - self.resumed
        remaining = self.total - self.done
        if ran and remaining:
            eta = _duration((time.perf_counter() - self.start) / ran * remaining)
        else:
            eta = "--" if remaining else "0s"
        parts = [f"[{bar}] {self.done}/{self.total} runs", f"ETA {eta}"]
        if self.best is not None:
            parts.append(f"best {self.best:.3f}  worst {self.worst:.3f}")
        if self.failed:
            parts.append(f"failed {self.failed}")
        return "  ".join(parts)

    def render(self) -> None:
        if not self.enabled:
            return
        if self._tty:
            self.stream.write("\r" + self.line() + "\x1b[K")
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self._tty:
            self.stream.write("\n")
            self.stream.flush()


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


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
    engine_options: Mapping[str, Any] | None = None,
    progress: Progress | bool = True,
) -> BenchSummary:
    """Run validated ``ExperimentConfig``s not yet finished in the DB, ``jobs`` at a time.

    Workers are spawned processes, each limited to ``cpu_count // jobs`` torch threads; each
    writes its run's metrics to the DB (WAL, busy timeout) as they arrive. Duplicate configs
    (same id) run once. Interrupting leaves unfinished runs ``running``: they are re-run from
    scratch on the next call, finished ones are never repeated. A second grid started on the
    same DB while this one runs is refused (``exclusive_bench``).
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
    engine_options: Mapping[str, Any] | None,
    progress: Progress | bool,
) -> BenchSummary:
    start = time.perf_counter()
    options = dict(engine_options or {})
    unique: dict[str, dict[str, Any]] = {}
    for cfg in configs:
        stored = cfg.to_dict()
        unique.setdefault(run_key(stored, engine, options), stored)
    duplicates = len(configs) - len(unique)
    with open_db(db_path) as db:
        done_ids = db.finished_ids() & set(unique)
        previous = {r["run_id"]: r["final_accuracy"] for r in db.load_runs("finished")}
    todo = [(rid, c) for rid, c in unique.items() if rid not in done_ids]
    bar = (
        progress
        if isinstance(progress, Progress)
        else Progress(len(unique), len(done_ids), enabled=bool(progress))
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
        if jobs == 1 or engine == "ray" or len(todo) <= 1:
            for _, cfg in todo:
                collect(_execute_in_worker(cfg, db_path, engine, options))
        else:
            threads = max(1, (os.cpu_count() or 1) // jobs)
            ctx = multiprocessing.get_context("spawn")
            pool = ProcessPoolExecutor(
                max_workers=jobs,
                mp_context=ctx,
                initializer=_init_worker,
                initargs=(threads, os.getpid()),
            )
            clean = False
            try:
                pending: dict[Future, str] = {
                    pool.submit(_execute_in_worker, cfg, db_path, engine, options): rid
                    for rid, cfg in todo
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
