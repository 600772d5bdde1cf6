"""One run, top-down: config -> engine -> round steps -> results database.

``run(config, engine, options, db=...)`` looks the engine up and runs ``Engine.execute``:
the options validated (``Engine.make_options``), the config checked on the engine before any
work (``Engine.check``), the run id computed (the one definition, ``byzance.results.run_id``
with the engine's ``id_fields``), and the results database written from the records the
engine reports (``byzance.results.record_run``: ``running``, every record committed as it
arrives, then ``finished`` or ``failed`` with the error); engines never write it themselves.
``execute_run`` is the same for a grid or the CLI: it never raises for a failing run.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from byzance import engines
from byzance.results import ResultsDB, run_id
from byzance.round.record import Record, RunResult


def build_config(config: Any) -> Any:
    """An ``ExperimentConfig`` from a config or a mapping, validated (``ValueError`` names the
    field)."""
    from byzance.sim import ExperimentConfig

    cfg = (
        config if isinstance(config, ExperimentConfig) else ExperimentConfig.from_dict(dict(config))
    )
    cfg.validate()
    return cfg


def run_key(config: Any, engine: str = "sim", options: Any = None) -> str:
    """The run id of ``config`` on ``engine`` with ``options`` (a mapping or the engine's
    ``Options``): what the results database and a resuming grid know the run by."""
    eng = engines.get(engine)
    cfg = build_config(config)
    return run_id(cfg.to_dict(), engine, eng.id_fields(cfg, eng.make_options(options)))


def run(
    config: Any,
    engine: str = "sim",
    options: Any = None,
    *,
    db: str | os.PathLike[str] | ResultsDB | None = None,
    overwrite: bool = False,
    progress: bool = False,
    on_metrics: Callable[[Record], None] | None = None,
    **engine_kwargs: Any,
) -> RunResult:
    """Run ``config`` on ``engine``; store it in ``db`` (a path or an open ``ResultsDB``) if
    given. ``overwrite``: run again a run the database has as finished. ``engine_kwargs`` go
    to the engine's ``run`` (e.g. test hooks). Raises what the run raised (recorded as
    ``failed`` first)."""
    return engines.get(engine).execute(
        config,
        options,
        db=db,
        overwrite=overwrite,
        progress=progress,
        on_metrics=on_metrics,
        **engine_kwargs,
    )


def execute_run(
    config_dict: Mapping[str, Any],
    db_path: str | None,
    engine: str = "sim",
    engine_options: Any = None,
    overwrite: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """``run`` that never raises for a failing run (a grid goes on): returns ``{"run_id",
    "status" (finished / failed), "final_accuracy", "seconds", "error", "result"}``.
    Top-level so that worker processes can run it."""
    start = time.perf_counter()
    rid = run_key(config_dict, engine, engine_options)
    try:
        result = run(
            config_dict,
            engine,
            engine_options,
            db=db_path,
            overwrite=overwrite,
            progress=progress,
        )
    except Exception as err:  # a failing run is recorded, the grid goes on
        return {
            "run_id": rid,
            "status": "failed",
            "final_accuracy": None,
            "seconds": time.perf_counter() - start,
            "error": f"{type(err).__name__}: {err}".strip(),
            "result": None,
        }
    return {
        "run_id": rid,
        "status": "finished",
        "final_accuracy": result.final_accuracy,
        "seconds": result.seconds,
        "error": None,
        "result": result,
    }
