r"""ByzSGD on Ray (``protocol = "byzsgd"``): the correct servers and the honest workers are real
processes, one actor each; the protocol is the simulator's (``byzance.sim.byzsgd``, whose
docstring has the algorithm).

Actors: ``h`` honest workers (``ByzWorkerCore``: the pull, a median of the replies it is sent,
then the worker step of ``byzance.round`` on its own shard) and ``s = n_servers - f_servers``
correct servers (``ServerCore``: the server step of ``byzance.round`` with its own rule state,
and the median contraction). The Byzantine parties are the omniscient colluding adversary: the
driver forges what they send (``sim.byzsgd.ByzantineServers`` for the servers' models,
``round.Adversary`` and ``sim.byzsgd.mirrored`` for the workers' vectors), from what the
correct parties sent, as the simulator does. Round t: (1) the driver fetches the correct
models and forges the Byzantine servers' replies; worker w is sent its window of correct
models (object refs) and its Byzantine replies; (2) the honest momenta; the forged vectors;
(3) every correct server steps on the honest momenta and its Byzantine rows; (4) every
``contraction_every`` rounds each correct server takes the median of its window of correct
models and its Byzantine replies. Every phase waits for all its actors up to
``round_timeout`` (a synchronous protocol: a missing actor stops the run with an error).

Same config and seed: the simulator's run up to float rounding (the simulator computes all
workers' gradients in one pass).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from byzance.engines.ray.actors import WorkerActor
from byzance.engines.ray.options import RayOptions
from byzance.round.agreement import diameter, window
from byzance.round.record import Record, RunResult, metrics_record


def _median(rows: list[np.ndarray]) -> torch.Tensor:
    from byzance.aggregators.median import Median

    return Median().aggregate(torch.from_numpy(np.stack(rows)))


class ByzWorkerCore:
    """An honest worker: pull (median of its replies), then its worker step."""

    def __init__(self, workers: Any, params0: torch.Tensor) -> None:
        self.workers, self.params0 = workers, params0
        self.rows = torch.zeros(1, dtype=torch.int64)

    def warmup(self) -> None:
        self.workers.gradients(self.rows, self.params0, 1)

    def pull_compute(
        self, round_: int, byz: np.ndarray | None, *correct: np.ndarray
    ) -> tuple[np.ndarray, float]:
        """Momentum at the median of the ``correct`` models and the Byzantine rows ``byz``."""
        rows = list(correct) + ([] if byz is None else list(byz))
        m, loss = self.workers.step(self.rows, _median(rows), round_)
        return m[0].detach().numpy().copy(), float(loss[0])

    def state_dict(self) -> dict[str, Any]:
        return self.workers.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.workers.load_state_dict(state)


class ServerCore:
    """A correct server: its model, the server step with its rule state, the contraction."""

    def __init__(self, server: Any) -> None:
        self.server = server

    def step(self, round_: int, honest: np.ndarray, byz: np.ndarray | None) -> np.ndarray:
        x = torch.from_numpy(honest if byz is None else np.concatenate([honest, byz]))
        self.server.step(x, round_)
        return self.params()

    def contract(self, round_: int, byz: np.ndarray | None, *correct: np.ndarray) -> np.ndarray:
        rows = list(correct) + ([] if byz is None else list(byz))
        self.server.params.copy_(_median(rows))
        return self.params()

    def params(self) -> np.ndarray:
        return self.server.params.numpy().copy()

    def state_dict(self) -> dict[str, Any]:
        return self.server.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.server.load_state_dict(state)


class ByzSGDActor(WorkerActor):
    """Actor body of a ByzSGD worker or server: ``call(method, *args)`` on its core."""

    def call(self, method: str, *args: Any) -> Any:
        return getattr(self.core, method)(*args)


def check_byzsgd_ray(config: Any, options: RayOptions) -> int:
    """What the Ray run adds to the config's checks: the number of actors (h + s)."""
    if options.quorum is not None:
        raise ValueError(
            "RayOptions.quorum: protocol byzsgd is synchronous (every worker and server in "
            f"every round); leave q unset, got q={options.quorum}"
        )
    if options.checkpoint_dir:
        raise ValueError(
            "RayOptions.checkpoint_dir: protocol byzsgd on ray does not checkpoint yet"
        )
    return config.n_honest + config.n_servers - config.f_servers


def _get(refs: list[Any], timeout: float, label: str, t: int) -> list[Any]:
    import ray

    ready, pending = ray.wait(refs, num_returns=len(refs), timeout=timeout)
    if pending:
        raise TimeoutError(
            f"round {t}: {len(pending)} {label} actors did not answer within {timeout:g} s "
            "(RayOptions.round_timeout; protocol byzsgd is synchronous)"
        )
    return ray.get(refs)


def run_byzsgd(
    config: Any,
    options: RayOptions,
    on_metrics: Callable[[Record], None] | None,
    progress: bool,
) -> RunResult:
    """The ByzSGD run on Ray (checked by the engine); records go to ``on_metrics``."""
    import ray

    from byzance.engines.ray.cluster import check_resources, connect, kill_actors, start_actors
    from byzance.progress import RoundProgress
    from byzance.round.setup import Setup
    from byzance.sim.byzsgd import ByzantineServers, mirrored

    n_actors = check_byzsgd_ray(config, options)
    started = connect(options)
    actors: list[Any] = []
    bar = RoundProgress(config.rounds, enabled=progress)
    start = time.perf_counter()
    try:
        check_resources(n_actors, options)
        setup = Setup(config)
        h, s = setup.h, config.n_servers - config.f_servers
        take = config.n_servers - 2 * config.f_servers
        theta0 = setup.params0.detach().cpu()
        cores: list[Any] = [ByzWorkerCore(setup.make_workers([w]), theta0) for w in range(h)]
        cores += [ServerCore(setup.make_server(theta0.clone())) for _ in range(s)]
        args = [(c, i, options.torch_threads) for i, c in enumerate(cores)]
        actors, _ = start_actors(ByzSGDActor, options, args, label="byzsgd", max_restarts=0)
        workers, servers = actors[:h], actors[h:]
        byz_servers = ByzantineServers(config)
        adversary = setup.make_adversary()
        equivocating = config.equivocate and adversary is not None and s > 1
        timeout = options.round_timeout
        theta = torch.from_numpy(
            np.stack(_get([a.call.remote("params") for a in servers], timeout, "server", 0))
        )
        spreads: list[float] = []
        history: list[Record] = []
        since = 0
        for t in range(1, config.rounds + 1):
            refs = [ray.put(row.numpy()) for row in theta]
            anchors = theta[torch.arange(h) % s]
            byz_w = byz_servers.replies(theta, anchors)
            win = window(h, s, take).tolist()
            calls = [
                workers[w].call.remote(
                    "pull_compute",
                    t,
                    None if byz_w is None else byz_w[w].numpy(),
                    *[refs[i] for i in win[w]],
                )
                for w in range(h)
            ]
            out = _get(calls, timeout, "worker", t)
            honest = torch.from_numpy(np.stack([m for m, _ in out]))
            losses = [loss for _, loss in out]
            byz_rows: list[np.ndarray | None] = [None] * s
            if adversary is not None:
                forged = adversary.forge(honest)
                per = (
                    mirrored(honest, forged, s) if equivocating else forged[None].expand(s, -1, -1)
                )
                byz_rows = [per[j].numpy() for j in range(s)]
            h_ref = ray.put(honest.numpy())
            calls = [servers[j].call.remote("step", t, h_ref, byz_rows[j]) for j in range(s)]
            theta = torch.from_numpy(np.stack(_get(calls, timeout, "server", t)))
            spreads.append(diameter(theta))
            if t % config.contraction_every == 0 and s > 1:
                refs = [ray.put(row.numpy()) for row in theta]
                byz_s = byz_servers.replies(theta, theta)
                win_s = window(s, s, take).tolist()
                calls = [
                    servers[j].call.remote(
                        "contract",
                        t,
                        None if byz_s is None else byz_s[j].numpy(),
                        *[refs[i] for i in win_s[j]],
                    )
                    for j in range(s)
                ]
                theta = torch.from_numpy(np.stack(_get(calls, timeout, "server", t)))
            if t % config.eval_every == 0 or t == config.rounds:
                accs = [setup.evaluate(th) for th in theta]
                vals = [setup.evaluate_validation(th) for th in theta]
                rec = metrics_record(
                    t,
                    train_loss=float(np.mean(losses)),
                    test_accuracy=sum(accs) / len(accs),
                    val_accuracy=None if vals[0] is None else sum(vals) / len(vals),
                    agg_distance=math.nan,
                    lr=setup.lr_at(t),
                    time=time.perf_counter() - start,
                    test_accuracy_min=min(accs),
                    test_accuracy_max=max(accs),
                    spread=diameter(theta),
                    spread_max=max(spreads[since:]),
                    server_accuracies=accs,
                )
                since = len(spreads)
                history.append(rec)
                bar.update(t, rec)
                if on_metrics is not None:
                    on_metrics(rec)
        seconds = time.perf_counter() - start
    finally:
        bar.close()
        kill_actors(actors)
        if started and ray.is_initialized():
            ray.shutdown()
    return RunResult.from_history(
        config, history, seconds, {"rounds": float(config.rounds)}, params=theta.clone()
    )
