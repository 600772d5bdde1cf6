"""The ``ray`` engine: real workers on Ray, one actor each, from a laptop to a cluster.

Protocols: ``server`` (the partially synchronous trusted server of ``server.RayEngine``: the
first q vectors of a round are aggregated, slow, crashed or malformed workers are left out)
and ``decentralized`` (``decentralized``: every honest node aggregates its peers), ``async``
and ``byzsgd`` (``byzsgd``: replicated servers, some Byzantine, as actors beside the workers). The
workers compute the round's steps of ``byzance.round`` (``workload``); the run id keys the
quorum q under the trusted server (it changes what is aggregated), nothing else of the options.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from byzance.engines.base import Engine
from byzance.engines.ray.options import RayOptions, quorum_for
from byzance.round.record import Record, RunResult

log = logging.getLogger("byzance.engines.ray")


class RayClusterEngine(Engine):
    name = "ray"
    summary = "real workers on Ray, one actor each (pip install 'byzance[ray]')"
    Options = RayOptions
    protocols = ("server", "decentralized", "async", "byzsgd")
    parallel_runs = False  # its actors use the machine (the cluster) already

    def finish_options(self, options: RayOptions) -> None:
        options.finish()

    def id_fields(self, config: Any, options: RayOptions) -> dict[str, Any]:
        if config.protocol == "server" and options.quorum is not None:
            return {"ray_quorum": options.quorum}
        return {}

    def check(self, config: Any, options: RayOptions) -> None:
        super().check(config, options)
        if config.gradient_estimator != "backprop":
            raise ValueError(
                "ExperimentConfig.gradient_estimator: the ray engine runs 'backprop' only, got "
                f"{config.gradient_estimator!r}; run FedZero with --engine sim"
            )
        if config.has_attack and config.attack.split("(", 1)[0].strip() == "gradient_inversion":
            raise ValueError(
                "ExperimentConfig.attack: 'gradient_inversion' needs every honest gradient of the "
                "round before the Byzantine workers compute theirs, which the ray engine's actors "
                "do not share; run it with --engine sim"
            )
        from byzance.engines.ray.cluster import check_before_start

        if config.protocol == "async":
            from byzance.engines.ray.asynchronous import check_async_ray

            check_before_start(check_async_ray(config, options), options)
            return
        if config.protocol == "byzsgd":
            from byzance.engines.ray.byzsgd import check_byzsgd_ray

            check_before_start(check_byzsgd_ray(config, options), options)
            return
        if config.protocol == "decentralized":
            from byzance.engines.ray.decentralized import check_decentralized

            plan = check_decentralized(config, options)
            check_before_start(plan.n, options)
            return
        n, q = quorum_for(config, options)
        check_before_start(n, options)
        if not 1 <= q <= n:
            raise ValueError(f"RayOptions.quorum: expected 1 <= q <= n={n}, got q={q}")
        try:
            config.build_aggregator().check(q)
        except ValueError as exc:
            raise ValueError(
                f"{config.aggregator!r} with f={config.f} cannot run on the q={q} vectors the "
                f"Ray server aggregates each round (n={n} workers, RayOptions.quorum="
                f"{options.quorum}): {exc}"
            ) from exc

    def run(
        self,
        config: Any,
        options: RayOptions,
        on_metrics: Callable[[Record], None] | None = None,
        *,
        progress: bool = False,
        engine_hook: Callable[[Any], None] | None = None,
        before_round: Callable[[Any, int], None] | None = None,
    ) -> RunResult:
        """Train ``config`` on Ray. ``engine_hook(x)`` once the actors are up and
        ``before_round(x, t)`` before each round are test hooks (fault injection); ``x`` is
        the ``RayEngine`` (server) or the list of node actors (decentralized, and the worker
        actors under async)."""
        _require_ray()
        from byzance.results import run_id

        rid = run_id(config.to_dict(), self.name, self.id_fields(config, options))
        if config.protocol == "async":
            from byzance.engines.ray.asynchronous import run_async

            return run_async(config, options, on_metrics, progress, engine_hook)
        if config.protocol == "byzsgd":
            from byzance.engines.ray.byzsgd import run_byzsgd

            return run_byzsgd(config, options, on_metrics, progress)
        if config.protocol == "decentralized":
            from byzance.engines.ray.decentralized import run_nodes

            return run_nodes(config, options, rid, on_metrics, progress, before_round)
        return _run_server(config, options, rid, on_metrics, progress, engine_hook, before_round)


def _require_ray() -> None:
    try:
        import ray  # noqa: F401
    except ImportError:
        raise ImportError(
            "--engine ray needs Ray, which is not installed: pip install 'byzance[ray]'"
        ) from None


def _run_server(
    config: Any,
    options: RayOptions,
    rid: str,
    on_metrics: Callable[[Record], None] | None,
    progress: bool,
    engine_hook: Callable[[Any], None] | None,
    before_round: Callable[[Any, int], None] | None,
) -> RunResult:
    from byzance.engines.ray.cluster import check_resources, connect
    from byzance.engines.ray.server import RayEngine
    from byzance.engines.ray.workload import ExperimentWorkload
    from byzance.progress import RoundProgress
    from byzance.round.setup import Setup

    started = connect(options)  # fail fast: before loading data
    try:
        check_resources(quorum_for(config, options)[0], options)
        workload = ExperimentWorkload(Setup(config))
        engine = RayEngine(workload, options, checkpoint_name=rid)
    except BaseException:
        if started:
            import ray

            ray.shutdown()
        raise
    engine._started_ray = started
    bar = RoundProgress(config.rounds, enabled=progress)
    start = time.perf_counter()
    try:
        engine.start()
        resumed = engine.load_checkpoint()
        if resumed is not None:
            log.warning("resumed run %s from its checkpoint at round %d", rid, resumed["round"])
        for rec in engine.history:  # the records recovered from the checkpoint
            if on_metrics is not None:
                on_metrics(rec)
        if engine_hook is not None:
            engine_hook(engine)

        def record(rec: Record) -> None:
            bar.update(rec["round"], rec)
            if on_metrics is not None:
                on_metrics(rec)

        history = engine.run(record, before_round=before_round)
        seconds = time.perf_counter() - start
    finally:
        bar.close()
        engine.shutdown()
    timings = dict(engine.timings)
    timings["recreated_workers"] = float(sum(engine.recreated.values()))
    return RunResult.from_history(
        config,
        history,
        seconds,
        timings,
        diverged=engine.diverged,
        params=workload.params.detach().cpu().clone(),
    )
