"""``run_flower(config)``: an ``ExperimentConfig`` as a Flower simulation (``--engine flower``).

Flower's simulation engine (``flwr.simulation.run_simulation``: the ServerApp in a thread of
this process, ClientApps in Ray actors, local and offline) runs the trusted-server protocol
with byzance's round steps, so a config gives the simulator's trajectory up to float
round-off:

* nodes: one per worker that computes (the ``n_honest`` honest workers, plus the f Byzantine
  workers under a data attack, which poison their own batches); node ``partition-id`` p is
  worker p (``byzance.flower.engine_client``);
* each round the ServerApp sends the flat parameters and each worker's previous momentum,
  the nodes reply their vectors (``Workers.step``), each reply is checked on its own
  (``byzance.flower.replies.check_reply``: shape, dtype, finite values; a rejected or failed
  node is recorded in ``missing_workers`` and its vector left out);
* a gradient attack's f vectors are forged on the server from the honest vectors of the
  round (``Setup.make_adversary``, the omniscient adversary of the threat model), as in the
  simulator; the server step is ``byzance.round.Server`` (rule with its state, weight decay,
  momentum, schedule);
* records: ``metrics_record`` with the common keys and ``missing_workers``.

If a round leaves fewer vectors than the rule needs, the run stops with the rule's error.
Ray: an initialised Ray instance is reused and left running; otherwise Flower starts one
(``ray_cpus`` logical CPUs; None: all) and stops it at the end.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from byzance.flower.replies import check_reply, short_reason
from byzance.progress import RoundProgress
from byzance.round.record import Record, RunResult, agg_distance, metrics_record
from byzance.round.setup import Setup


class _Server:
    """The ServerApp's loop over the rounds (run in Flower's server thread)."""

    def __init__(self, setup: Setup) -> None:
        self.setup, self.cfg = setup, setup.config
        self.on_metrics: Callable[[Record], None] | None = None
        self.server = setup.make_server()
        self.adversary = setup.make_adversary()
        self.nodes = setup.h + (setup.f if setup.data_attack else 0)
        self.momenta: dict[int, np.ndarray] = {}
        self.history: list[Record] = []
        self.timings = {"clients": 0.0, "aggregation": 0.0, "evaluation": 0.0}
        self.rounds_run = 0
        self.diverged = False
        self.pending: list[dict[str, Any]] = []  # missing since the last record
        self.reference = {"vector": np.zeros(setup.dim, dtype=np.float32)}

    def workers_of(self, grid: Any, timeout: float) -> dict[int, int]:
        """node id -> worker, asked once of every node."""
        from flwr.app import Message, MessageType, RecordDict

        deadline = time.monotonic() + timeout
        while len(ids := list(grid.get_node_ids())) < self.nodes:
            if time.monotonic() > deadline:
                raise RuntimeError(f"flower: {len(ids)} of {self.nodes} nodes connected")
            time.sleep(0.05)
        asks = [Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY) for n in ids]
        mapping: dict[int, int] = {}
        for reply in grid.send_and_receive(asks, timeout=timeout):
            if reply.has_error():
                raise RuntimeError(f"flower: node query failed: {reply.error.reason}")
            mapping[reply.metadata.src_node_id] = int(reply.content["metrics"]["worker"])
        if sorted(mapping.values()) != list(range(self.nodes)):
            raise RuntimeError(f"flower: nodes answered workers {sorted(mapping.values())}")
        return mapping

    def train_messages(self, workers: dict[int, int], round_: int) -> list[Any]:
        from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict

        params = Array(self.server.params.detach().cpu().numpy())
        out = []
        for node, w in workers.items():
            arrays = ArrayRecord({"params": params})
            if w in self.momenta:
                arrays["momentum"] = Array(self.momenta[w])
            content = RecordDict({"arrays": arrays, "config": ConfigRecord({"round": round_})})
            out.append(Message(content, dst_node_id=node, message_type=MessageType.TRAIN))
        return out

    def collect(
        self, replies: Any, workers: dict[int, int], round_: int
    ) -> tuple[dict[int, tuple[np.ndarray, float]], list[dict[str, Any]]]:
        """Accepted (vector, loss) per worker, and the missing workers with their reason."""
        got: dict[int, tuple[np.ndarray, float]] = {}
        missing: dict[int, str] = {w: "no reply" for w in workers.values()}
        for reply in replies:
            w = workers.get(reply.metadata.src_node_id)
            if w is None:
                continue
            if reply.has_error():
                missing[w] = "error: " + short_reason(reply.error.reason)
                continue
            record = reply.content.array_records.get("arrays")
            arrays = {k: v.numpy() for k, v in record.items()} if record is not None else {}
            reason = check_reply(arrays, self.reference)
            if reason is not None:
                missing[w] = f"malformed: {reason}"
                continue
            got[w] = (arrays["vector"], float(reply.content["metrics"]["loss"]))
            missing.pop(w)
        gone = [{"round": round_, "worker": w, "reason": r} for w, r in sorted(missing.items())]
        return got, gone

    def round(self, grid: Any, workers: dict[int, int], round_: int, start: float) -> None:
        setup, cfg = self.setup, self.cfg
        t0 = time.perf_counter()
        replies = grid.send_and_receive(self.train_messages(workers, round_), timeout=3600.0)
        got, missing = self.collect(replies, workers, round_)
        t1 = time.perf_counter()
        self.timings["clients"] += t1 - t0
        for w, (vector, _) in got.items():
            self.momenta[w] = vector
        order = sorted(got)
        rows = torch.from_numpy(np.stack([got[w][0] for w in order])) if order else None
        honest_idx = [i for i, w in enumerate(order) if w < setup.h]
        if rows is None or not honest_idx:
            raise RuntimeError(f"flower: round {round_}: no honest vector arrived: {missing}")
        honest = rows[honest_idx]
        vectors = rows
        if self.adversary is not None:
            vectors = torch.cat([rows, self.adversary.forge(honest)])
        agg = self.server.aggregate(vectors)
        self.server.apply(agg, round_)
        t2 = time.perf_counter()
        self.timings["aggregation"] += t2 - t1
        self.rounds_run += 1
        if not bool(torch.isfinite(self.server.params).all()):
            self.diverged = True
        if self.diverged or round_ == cfg.rounds or round_ % cfg.eval_every == 0:
            loss = float(np.mean([got[w][1] for w in order if w < setup.h]))
            params = self.server.params
            record = metrics_record(
                round_,
                train_loss=loss,
                test_accuracy=setup.evaluate(params),
                val_accuracy=setup.evaluate_validation(params),
                agg_distance=agg_distance(agg, honest),
                lr=self.server.lr_at(round_),
                time=time.perf_counter() - start,
                missing_workers=self.pending + missing,
            )
            self.pending = []
            self.timings["evaluation"] += time.perf_counter() - t2
            self.history.append(record)
            if self.on_metrics is not None:
                self.on_metrics(record)
        else:
            self.pending += missing

    def main(self, grid: Any) -> None:
        start = time.perf_counter()
        workers = self.workers_of(grid, timeout=600.0)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.seed + 1)
            for r in range(1, self.cfg.rounds + 1):
                self.round(grid, workers, r, start)
                if self.diverged:
                    break


def run_flower(
    config: Any,
    *,
    client_cpus: float = 1.0,
    ray_cpus: int | None = None,
    on_metrics: Callable[[Record], None] | None = None,
    progress: bool = False,
) -> RunResult:
    """Run ``config`` (trusted-server protocol) as a Flower simulation; see the module
    docstring. ``client_cpus``: Ray CPUs per ClientApp."""
    from flwr.clientapp import ClientApp  # noqa: F401 - fails early without Flower
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    from byzance.flower.engine_client import make_client_app

    setup = Setup(config)
    cfg = setup.config
    bar = RoundProgress(cfg.rounds, enabled=progress)
    loop = _Server(setup)
    failure: list[BaseException] = []
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Any, context: Any) -> None:
        try:
            loop.main(grid)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            failure.append(exc)

    backend = {
        "client_resources": {"num_cpus": float(client_cpus), "num_gpus": 0.0},
        "init_args": {"include_dashboard": False, "logging_level": logging.ERROR,
                      "log_to_driver": False},
    }  # fmt: skip
    if ray_cpus is not None:
        backend["init_args"]["num_cpus"] = int(ray_cpus)
    def simulate() -> None:
        try:
            run_simulation(
                server_app, make_client_app(cfg.to_dict()), num_supernodes=loop.nodes,
                backend_config=backend,
            )  # fmt: skip
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            failure.append(exc)

    # the simulation runs in a thread and its ServerApp in another one of Flower's: records
    # come back through a queue, so ``on_metrics`` runs in the caller's thread (the results
    # database is bound to it) as each record is made
    records: queue.Queue[Record] = queue.Queue()
    loop.on_metrics = records.put
    start = time.perf_counter()
    with _quiet_flower(), _keep_running_ray():
        thread = threading.Thread(target=simulate, name="byzance-flower", daemon=True)
        thread.start()
        while thread.is_alive() or not records.empty():
            try:
                record = records.get(timeout=0.1)
            except queue.Empty:
                continue
            if on_metrics is not None:
                on_metrics(record)
            bar.update(record["round"], record)
        thread.join()
    seconds = time.perf_counter() - start
    bar.close()
    if failure:
        raise failure[0]
    if not loop.history:
        raise RuntimeError("flower: the simulation ended before its first record")
    timings = dict(loop.timings)
    timings["rounds"] = float(loop.rounds_run)
    return RunResult.from_history(
        cfg, loop.history, seconds, timings, diverged=loop.diverged,
        params=loop.server.params.detach().cpu().clone(),
    )  # fmt: skip


class _quiet_flower:
    """Flower's INFO logs (a line per message) down to warnings, for the run."""

    def __enter__(self) -> None:
        self.logger = logging.getLogger("flwr")
        self.level = self.logger.level
        self.logger.setLevel(logging.WARNING)

    def __exit__(self, *exc: Any) -> None:
        self.logger.setLevel(self.level)


class _keep_running_ray:
    """Flower's Ray backend calls ``ray.shutdown()`` at the end; a Ray instance started by
    someone else (a test, a cluster) is left running."""

    def __enter__(self) -> None:
        import ray

        self.ray, self.shutdown = ray, None
        if ray.is_initialized():
            self.shutdown = ray.shutdown
            ray.shutdown = lambda *a, **k: None

    def __exit__(self, *exc: Any) -> None:
        if self.shutdown is not None:
            self.ray.shutdown = self.shutdown
