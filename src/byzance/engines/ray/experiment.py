"""The experiment API of the Ray engine, kept for library users: ``run_experiment_ray`` and
``run_decentralized_ray`` run an ``ExperimentConfig`` on the ``ray`` engine with the trusted
server or decentralised (``Engine.execute`` records it in a results database);
``check_experiment`` checks it without Ray."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from byzance.engines.ray.options import RayOptions
from byzance.protocols import PROTOCOLS


@dataclass
class DecentralizedOptions:
    """The decentralised protocol's settings as they were passed before they became config
    fields (``ExperimentConfig.model_aggregator`` / ``equivocate``): kept for
    ``run_decentralized_ray``."""

    model_aggregator: str = PROTOCOLS["decentralized"].fields["model_aggregator"]
    equivocate: bool = PROTOCOLS["decentralized"].fields["equivocate"]


def check_experiment(config: Any, options: RayOptions) -> None:
    """Everything checkable without Ray: the config, the options and the rule on q."""
    from byzance.engines.ray.engine import RayClusterEngine

    engine = RayClusterEngine()
    engine.check(config, engine.make_options(options))


def run_experiment_ray(
    config: Any,
    *,
    address: str | None = None,
    options: RayOptions | None = None,
    on_metrics: Callable[[dict[str, Any]], None] | None = None,
    db: Any = None,
    progress: bool = False,
    engine_hook: Callable[[Any], None] | None = None,
    before_round: Callable[[Any, int], None] | None = None,
) -> Any:
    """Run an ``ExperimentConfig`` (or a dict of its fields) on Ray; return a ``RunResult``.

    ``address`` overrides ``options.address``. ``db``: a results DB path or ``ResultsDB``;
    the run is recorded with ``engine="ray"`` (every evaluation committed as it arrives, with
    ``missing_workers``), marked finished or failed (a finished run of the same id is run
    again). With ``options.checkpoint_dir`` a run found there is resumed from its last
    checkpoint. ``engine_hook(engine)`` is called once the actors are up and
    ``before_round(engine, t)`` before each round (tests: fault injection).
    """
    from byzance.engines.ray.engine import RayClusterEngine

    options = dataclasses.replace(options or RayOptions())
    if address is not None:
        options.address = address
    return RayClusterEngine().execute(
        config,
        options,
        db=db,
        overwrite=True,
        progress=progress,
        on_metrics=on_metrics,
        engine_hook=engine_hook,
        before_round=before_round,
    )


def run_decentralized_ray(
    config: Any,
    *,
    address: str | None = None,
    options: RayOptions | None = None,
    decentralized: DecentralizedOptions | None = None,
    on_metrics: Callable[[dict[str, Any]], None] | None = None,
    db: Any = None,
    before_round: Callable[[list[Any], int], None] | None = None,
) -> dict[str, Any]:
    """Run ``config`` decentralised on Ray (``Engine.execute`` with ``protocol =
    "decentralized"``); return ``{"history", "params" (h, d), "seconds", "run_id"}``.

    ``decentralized`` overrides the config's ``model_aggregator`` / ``equivocate``;
    ``address`` overrides ``options.address``. Recorded in ``db`` with
    ``engine="ray-decentralized"``. ``before_round(actors, t)``: a hook for tests.
    """
    from byzance.engines.ray.engine import RayClusterEngine
    from byzance.sim.config import ExperimentConfig

    cfg = config.to_dict() if isinstance(config, ExperimentConfig) else dict(config)
    cfg["protocol"] = "decentralized"
    if decentralized is not None:
        cfg.update(dataclasses.asdict(decentralized))
    options = dataclasses.replace(options or RayOptions())
    if address is not None:
        options.address = address
    result = RayClusterEngine().execute(
        cfg,
        options,
        db=db,
        overwrite=True,
        on_metrics=on_metrics,
        before_round=before_round,
    )
    return {
        "history": result.history,
        "params": result.params,
        "seconds": result.seconds,
        "run_id": result.run_id,
    }
