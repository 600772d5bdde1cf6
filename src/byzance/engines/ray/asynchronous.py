"""The ``async`` protocol on Ray: real asynchrony, the driver applying vectors as they come.

One actor per worker (``actors.WorkerActor`` over the round's cores, ``workload``): an honest
(or data-poisoning) worker computes its k-th vector (the batch of round k, its momentum) at
the newest model the driver had when it last delivered, then delivers and gets the newest
model again; nothing waits for anybody. The driver runs ``byzance.round.kardam
.KardamServer`` (Kardam's filters, staleness dampening, the ``Server`` step) on each vector
as ``ray.wait`` returns it; a worker's staleness is the number of updates applied since the
driver sent it its model. A gradient-attack Byzantine worker forges its row of the attack
(``ForgerCore``) from the honest workers' latest vectors, which the driver sends it; it starts
once every honest worker has delivered once and is called again at each honest delivery
after its own (it delivers as often as new honest vectors let it). ``filter_attack =
"lipschitz_edge"`` shapes its vector on the driver, which knows the filter's state
(``round.kardam.lipschitz_edge``: the adversary is omniscient).

The run stops after ``rounds * n`` deliveries; a round's record is made every n deliveries
(``eval_every``, the last). A worker whose actor fails (crash, exception) or whose vector is
malformed simply stops contributing (``missing_workers`` in the next record); the run fails
only when no vector arrives within ``RayOptions.round_timeout`` seconds or every worker has
stopped. Records carry the simulator's keys (``applied``, ``rejected_lipschitz``,
``rejected_frequency``, ``byzantine_applied``, ``staleness``) with ``sim_time`` the wall
time. Checkpoints and a quorum do not apply (refused by ``check_async_ray``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from byzance.engines.ray.options import RayOptions
from byzance.round.kardam import KardamServer, lipschitz_edge
from byzance.round.record import Record, RunResult, metrics_record

log = logging.getLogger("byzance.engines.ray")


def check_async_ray(config: Any, options: RayOptions) -> int:
    """What the async protocol on Ray cannot take (before Ray starts); the number of actors."""
    if options.quorum is not None:
        raise ValueError(
            f"RayOptions.quorum: does not apply to protocol async (each vector is applied as "
            f"it arrives), got {options.quorum}"
        )
    if options.checkpoint_dir:
        raise ValueError(
            "RayOptions.checkpoint_dir: protocol async on Ray keeps no checkpoints, got "
            f"{options.checkpoint_dir!r}"
        )
    return config.n_received


def run_async(
    config: Any,
    options: RayOptions,
    on_metrics: Callable[[Record], None] | None,
    progress: bool,
    engine_hook: Callable[[list[Any]], None] | None = None,
) -> RunResult:
    """Train ``config`` asynchronously on Ray (see the module docstring); ``engine_hook``
    gets the actors once they are up (a test hook: fault injection)."""
    import ray

    from byzance.engines.ray.actors import WorkerActor
    from byzance.engines.ray.cluster import check_resources, connect, kill_actors, start_actors
    from byzance.engines.ray.workload import ExperimentWorkload
    from byzance.progress import RoundProgress
    from byzance.round.setup import Setup

    n = check_async_ray(config, options)
    started = connect(options)
    actors: list[Any] = []
    bar = RoundProgress(config.rounds, enabled=progress)
    try:
        check_resources(n, options)
        setup = Setup(config)
        work = ExperimentWorkload(setup)
        cores = [work.honest_core(w) for w in range(setup.h)]
        cores += [work.byzantine_core(i) for i in range(n - setup.h)]
        args = [(c, w, options.torch_threads) for w, c in enumerate(cores)]
        actors, _ = start_actors(WorkerActor, options, args, label="worker")
        loop = _Driver(setup, work, actors, options)
        if engine_hook is not None:
            engine_hook(actors)

        def record(rec: Record) -> None:
            bar.update(rec["round"], rec)
            if on_metrics is not None:
                on_metrics(rec)

        start = time.perf_counter()
        history = loop.run(record)
        seconds = time.perf_counter() - start
    finally:
        bar.close()
        kill_actors(actors)
        if started and ray.is_initialized():
            ray.shutdown()
    timings = {"rounds": float(history[-1]["round"]), "applied": float(loop.kardam.version)}
    return RunResult.from_history(
        config,
        history,
        seconds,
        timings,
        diverged=loop.diverged,
        params=loop.kardam.params.detach().cpu().clone(),
    )


class _Driver:
    """The driver's loop: dispatch, receive, filter and apply, re-dispatch, record."""

    def __init__(self, setup: Any, work: Any, actors: list[Any], options: RayOptions) -> None:
        cfg = setup.config
        self.setup, self.config, self.actors, self.options = setup, cfg, actors, options
        self.h, self.n = setup.h, len(actors)
        self.computing = self.h + (self.n - self.h if setup.data_attack else 0)
        self.kardam = KardamServer(
            work.server,
            self.n,
            setup.f,
            filter=cfg.async_filter,
            dampening=cfg.dampening,
            alpha=cfg.dampening_alpha,
        )
        self.version_sent = [0] * self.n
        self.counts = [0] * self.n
        self.latest = np.zeros((self.h, setup.dim), dtype=np.float32)
        self.delivered_once: set[int] = set()
        self.idle_forgers: list[int] = []
        self.pending: dict[Any, int] = {}
        self.stopped: dict[int, str] = {}
        self.diverged = False
        self._params_ref: tuple[int, Any] | None = None

    def _params(self) -> Any:
        import ray

        version = self.kardam.version
        if self._params_ref is None or self._params_ref[0] != version:
            array = self.kardam.params.detach().cpu().numpy().copy()
            self._params_ref = (version, ray.put(array))
        return self._params_ref[1]

    def _dispatch(self, w: int, round_: int) -> None:
        self.version_sent[w] = self.kardam.version
        if w < self.computing:
            self.counts[w] += 1
            ref = self.actors[w].compute.remote(self._params(), self.counts[w])
        else:
            ref = self.actors[w].forge.remote(round_, self.latest.copy())
        self.pending[ref] = w

    def _receive(self, timeout: float) -> tuple[int, Any] | None:
        """The next delivery ``(worker, vector)``; None if that worker stopped."""
        import ray

        ready, _ = ray.wait(list(self.pending), num_returns=1, timeout=timeout)
        if not ready:
            raise RuntimeError(
                f"async on Ray: no vector arrived within {timeout:g} s "
                f"(RayOptions.round_timeout); workers stopped: {self.stopped or 'none'}"
            )
        w = self.pending.pop(ready[0])
        try:
            out = ray.get(ready[0])
        except Exception as exc:  # noqa: BLE001 - a crashed or failing worker stops
            self.stopped[w] = f"failed: {str(exc).splitlines()[0][:200]}"
            return None
        vec = out[0] if isinstance(out, tuple) else out
        loss = float(out[1]) if isinstance(out, tuple) else math.nan
        if not isinstance(vec, np.ndarray) or vec.shape != (self.setup.dim,):
            self.stopped[w] = "malformed vector"
            return None
        return w, (torch.from_numpy(np.array(vec, dtype=np.float32)), loss)

    def run(self, record: Callable[[Record], None]) -> list[Record]:
        cfg, k = self.config, self.kardam
        total = cfg.rounds * self.n
        for w in range(self.n):
            if w < self.computing:
                self._dispatch(w, 1)
            else:
                self.idle_forgers.append(w)
        history: list[Record] = []
        acc = _RoundSums(self.setup.dim)
        missing: list[dict[str, Any]] = []
        reported: set[int] = set()
        t0 = time.perf_counter()
        delivered, byz_applied = 0, 0
        while delivered < total:
            if not self.pending:
                raise RuntimeError(f"async on Ray: every worker stopped: {self.stopped}")
            got = self._receive(self.options.round_timeout)
            r = delivered // self.n + 1
            if got is None:
                for w, why in self.stopped.items():
                    if w not in reported:
                        reported.add(w)
                        missing.append({"round": r, "worker": w, "reason": why})
                continue
            w, (vec, loss) = got
            if w >= self.computing and cfg.filter_attack == "lipschitz_edge":
                vec = lipschitz_edge(vec, k)
            tau = k.version - self.version_sent[w]
            outcome = k.receive(w, vec, tau, r)
            acc.add(w < self.h, vec, loss, tau, outcome == "applied")
            byz_applied += outcome == "applied" and w >= self.h
            delivered += 1
            if w < self.h:
                self.latest[w] = vec.numpy()
                self.delivered_once.add(w)
            if w < self.computing:
                self._dispatch(w, r)
            else:
                self.idle_forgers.append(w)
            if w < self.h and len(self.delivered_once) == self.h:
                forgers, self.idle_forgers = self.idle_forgers, []
                for b in forgers:
                    self._dispatch(b, r)
            if delivered % self.n == 0:
                if not bool(torch.isfinite(k.params).all()):
                    self.diverged = True
                if self.diverged or r == cfg.rounds or r % cfg.eval_every == 0:
                    rec = acc.record(self, r, time.perf_counter() - t0)
                    rec["byzantine_applied"] = byz_applied
                    rec["missing_workers"] = missing
                    missing = []
                    history.append(rec)
                    record(rec)
                acc = _RoundSums(self.setup.dim)
                if self.diverged:
                    break
        return history


class _RoundSums:
    """What a round's record sums over its deliveries."""

    def __init__(self, dim: int) -> None:
        self.applied, self.honest = torch.zeros(dim), torch.zeros(dim)
        self.n_applied = self.n_honest = self.tau = 0
        self.loss = 0.0

    def add(self, honest: bool, vec: torch.Tensor, loss: float, tau: int, applied: bool):
        self.tau += tau
        if honest:
            self.honest += vec
            self.n_honest += 1
            self.loss += loss
        if applied:
            self.applied += vec
            self.n_applied += 1

    def record(self, driver: _Driver, r: int, elapsed: float) -> Record:
        if self.n_applied and self.n_honest:
            distance = float(torch.dist(self.applied / self.n_applied, self.honest / self.n_honest))
        else:
            distance = math.nan
        params, stats = driver.kardam.params, driver.kardam.stats
        return metrics_record(
            r,
            train_loss=self.loss / self.n_honest if self.n_honest else math.nan,
            test_accuracy=driver.setup.evaluate(params),
            val_accuracy=driver.setup.evaluate_validation(params),
            agg_distance=distance,
            lr=driver.kardam.server.lr_at(r),
            time=elapsed,
            sim_time=elapsed,
            applied=stats["applied"],
            rejected_lipschitz=stats["rejected_lipschitz"],
            rejected_frequency=stats["rejected_frequency"],
            staleness=self.tau / driver.n,
        )
