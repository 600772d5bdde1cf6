"""Real distributed robust SGD on Ray: one actor per worker, a partially synchronous server.

Every worker (honest or Byzantine) is a Ray actor holding its core (data shard, model, momentum;
see ``byzance.engines.workload``). The driver is the trusted server. Round ``t``:

1. the parameters are put in the object store **once** (``ray.put``) and the reference is
   passed to every available worker (zero-copy numpy reads on the same node);
2. honest workers (and data-poisoning Byzantine workers) compute their vectors; the server
   collects them as they arrive (``ray.wait``). Gradient-attack Byzantine workers (omniscient)
   are sent the references of the honest vectors received so far as soon as
   ``q - (#Byzantine)`` honest vectors are in, and forge theirs (the f colluding workers hold
   the same attack and each sends its own row of ``attack(honest, f)``);
3. the server aggregates the **first q** valid vectors (``q = n - f`` by default, configurable
   with ``RayOptions.quorum``), ordered by worker id, and takes its optimizer step.

Partial synchrony: a worker whose vector has not arrived when the quorum is reached is
*missing* for the round (reason ``late``; ``timeout`` if the round deadline passed); it gets no
new task until its outstanding one finishes (its stale vector is discarded), so up to ``n - q``
slow, silent or crashed workers never block training. If fewer than q vectors arrive within
``round_timeout`` seconds the run stops with ``QuorumError``. The rule's condition is checked
on q (``aggregator.check(q)``) before any actor starts.

Faults: a task raising an exception, or a vector of the wrong shape/dtype or with a
non-finite entry, makes the worker missing for that round (reason logged, recorded in the
metrics' ``missing_workers``) and never stops the server. A dead actor (process killed) is
detected by its failed task; it is re-created (up to ``recreate_limit`` times) from its
initial core and rejoins with the current model (its momentum restarts from zero). Every
``checkpoint_every`` rounds the server state, each worker's state and the history are saved
atomically (temp file + ``os.replace``); a run restarted with the same checkpoint folder
resumes from the last checkpoint.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from byzance.engines.ray.actors import FAULT_KINDS, WorkerActor
from byzance.engines.ray.checkpoints import (
    checkpoint_path,
    gather_states,
    load_checkpoint_file,
    save_checkpoint_file,
)
from byzance.engines.ray.cluster import (
    actor_class,
    check_resources,
    connect,
    kill_actors,
    start_actors,
)
from byzance.engines.ray.collect import check_vector, fetch_result, reap_stale, round_record
from byzance.engines.ray.options import QuorumError, RayOptions
from byzance.engines.ray.transport import SharedRows
from byzance.engines.workload import Workload

log = logging.getLogger("byzance.engines.ray")


class RayEngine:
    """Runs a ``Workload`` with one Ray actor per worker and the server on the driver.

    Worker ids: ``0..n_honest-1`` honest, then the Byzantine workers. ``run`` returns the
    history of metric records; ``placement`` maps worker id to the Ray node id it runs on.
    """

    def __init__(
        self,
        workload: Workload,
        options: RayOptions | None = None,
        *,
        checkpoint_name: str = "run",
    ) -> None:
        self.workload = workload
        self.options = options or RayOptions()
        self.options.validate()
        self.n = workload.n_honest + workload.n_byzantine
        self.q = (
            self.options.quorum
            if self.options.quorum is not None
            else self.n - getattr(workload, "f", workload.n_byzantine)
        )
        self.checkpoint_name = checkpoint_name
        self.check()
        self.actors: list[Any] = []
        self.placement: dict[int, str] = {}
        self.recreated: dict[int, int] = {}
        self._deaths: dict[int, int] = {}
        self.history: list[dict[str, Any]] = []
        self.missing_log: list[dict[str, Any]] = []
        self.timings: dict[str, float] = {}
        self.start_round = 1
        self.diverged = False
        self._busy: dict[int, Any] = {}
        self._buffer: torch.Tensor | None = None
        self._rows: SharedRows | None = None
        #: workers writing their vectors into the shared matrix (the others: object store)
        self.shared_workers: set[int] = set()
        self._core_refs: list[Any] = []
        self._started_ray = False

    # -- checks ----------------------------------------------------------------------
    def check(self) -> None:
        """The quorum and the rule's condition on q (before anything starts)."""
        n, q = self.n, self.q
        if not 1 <= q <= n:
            raise ValueError(f"RayOptions.quorum: expected 1 <= q <= n={n}, got q={q}")
        try:
            self.workload.aggregator.check(q)
        except ValueError as exc:
            raise ValueError(
                f"the aggregator cannot run on the q={q} vectors the server aggregates each "
                f"round (n={n} workers, f={getattr(self.workload, 'f', '?')}): {exc}"
            ) from exc

    @property
    def byzantine_ids(self) -> list[int]:
        return list(range(self.workload.n_honest, self.n))

    def _is_forger(self, w: int) -> bool:
        return w >= self.workload.n_honest and not self.workload.data_attack

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        """Connect, check resources, create the actors and wait until all are up."""
        import ray

        t0 = time.perf_counter()
        self._started_ray = connect(self.options) or self._started_ray
        check_resources(self.n, self.options)
        cores = [self.workload.honest_core(w) for w in range(self.workload.n_honest)]
        cores += [self.workload.byzantine_core(j) for j in range(self.workload.n_byzantine)]
        self._core_refs = [ray.put(c) for c in cores]
        dtype = self.workload.params.dtype
        if self.options.shared_memory:
            self._rows = SharedRows.create(self.n, self.workload.dim, dtype)
        if self._rows is not None:
            self._buffer = torch.from_numpy(self._rows.array)
        else:
            self._buffer = torch.empty(self.n, self.workload.dim, dtype=dtype)
        rows = self._rows.spec if self._rows is not None else None
        args = [(self._core_refs[w], w, self.options.torch_threads, rows) for w in range(self.n)]
        self.actors, ready = start_actors(WorkerActor, self.options, args)
        self._placed(ray.get(ready))
        self.timings["startup"] = time.perf_counter() - t0

    def _placed(self, infos: list[dict[str, Any]]) -> None:
        for info in infos:
            w = info["worker"]
            self.placement[w] = info["node_id"]
            if info.get("shared_row"):
                self.shared_workers.add(w)
            else:
                self.shared_workers.discard(w)

    def _create(self, w: int) -> Any:
        rows = self._rows.spec if self._rows is not None else None
        cls = actor_class(WorkerActor, self.options)
        return cls.remote(self._core_refs[w], w, self.options.torch_threads, rows)

    def shutdown(self) -> None:
        """Kill the actors (and Ray itself if this engine started it)."""
        import ray

        kill_actors(self.actors)
        self.actors = []
        self._busy.clear()
        if self._rows is not None:
            self._buffer = None
            self._rows.remove()
            self._rows = None
        if self._started_ray and ray.is_initialized():
            ray.shutdown()

    def inject_fault(
        self, worker: int, kind: str, rounds: list[int] | None = None, seconds: float = 0.0
    ) -> None:
        """Make ``worker`` misbehave at ``rounds`` (all if None); kinds in ``FAULT_KINDS``."""
        import ray

        if kind not in FAULT_KINDS:
            raise ValueError(f"inject_fault: kind must be one of {FAULT_KINDS}, got {kind!r}")
        ray.get(self.actors[worker].inject_fault.remote(kind, rounds, seconds))

    def kill_worker(self, worker: int, restart: bool = False) -> None:
        """Kill a worker's actor process (fault injection); Ray restarts it if ``restart``."""
        import ray

        ray.kill(self.actors[worker], no_restart=not restart)

    # -- one round -----------------------------------------------------------------------
    def _get(self, w: int, ref: Any, stale: bool = False) -> tuple[Any, str | None]:
        """``(result, None)`` or ``(None, reason)``; handles dead actors."""
        return fetch_result(w, ref, self._on_dead, stale=stale)

    def _on_dead(self, w: int) -> None:
        deaths = self._deaths[w] = self._deaths.get(w, 0) + 1
        if deaths <= self.options.max_restarts:  # Ray restarts this actor itself
            log.warning(
                "worker %d died; Ray restarts it (%d/%d)", w, deaths, self.options.max_restarts
            )
            return
        count = self.recreated.get(w, 0)
        if count >= self.options.recreate_limit:
            if self.actors[w] is not None:
                log.warning("worker %d died; re-creation limit reached, it stays out", w)
            self.actors[w] = None
            return
        log.warning(
            "worker %d died; re-creating it (%d/%d)", w, count + 1, self.options.recreate_limit
        )
        self.recreated[w] = count + 1
        self._deaths[w] = 0
        self.actors[w] = self._create(w)
        self.shared_workers.discard(w)  # wherever it lands, it is sent arrays from now on

    def run_round(self, t: int) -> dict[str, Any]:
        """Run round ``t``: collect the first q valid vectors, step; return what was used.

        Returns ``{"aggregate", "ids" (workers aggregated), "x" (their vectors),
        "honest_rows", "missing" (worker -> reason), "loss" (mean honest batch loss)}``.
        """
        import ray

        wl = self.workload
        q = self.q
        deadline = time.monotonic() + self.options.round_timeout
        reap_stale(self._busy, self._get)
        t_put = time.perf_counter()
        params_ref = ray.put(wl.params.detach().cpu().contiguous().numpy())
        self._tick("put", t_put)
        pending: dict[Any, int] = {}  # this round's tasks
        stale = {ref: w for w, ref in self._busy.items()}  # earlier rounds' tasks
        missing: dict[int, str] = {}

        def launch_compute(w: int) -> None:
            if self.actors[w] is None:
                missing[w] = "dead"
            elif w in self._busy:
                missing[w] = "busy"
            else:
                missing.pop(w, None)
                ref = self.actors[w].compute.remote(params_ref, t)
                pending[ref] = w
                self._busy[w] = ref

        for w in range(self.n):
            if not self._is_forger(w):
                launch_compute(w)
        forgers = [w for w in range(self.n) if self._is_forger(w)]
        launched = not forgers
        if self._buffer is None or self._buffer.dtype != wl.params.dtype:
            self._buffer = torch.empty(self.n, wl.dim, dtype=wl.params.dtype)
        buf = self._buffer.numpy()  # row w <- worker w's vector (reused every round)
        received: dict[int, np.ndarray] = {}
        losses: dict[int, float] = {}
        while len(received) < q:
            if not launched:
                live = [w for w in forgers if self.actors[w] is not None and w not in self._busy]
                honest_waiting = any(not self._is_forger(w) for w in pending.values())
                if len(received) >= q - len(live) or not (honest_waiting or stale):
                    rows = sorted(w for w in received if not self._is_forger(w))
                    stacked_ref = None  # the honest vectors, put once for remote forgers
                    for w in forgers:
                        if w not in live:
                            missing[w] = "dead" if self.actors[w] is None else "busy"
                            continue
                        if w in self.shared_workers:
                            honest_arg: Any = rows
                        else:
                            if stacked_ref is None:
                                stacked_ref = ray.put(buf[rows])
                            honest_arg = stacked_ref
                        ref = self.actors[w].forge.remote(t, honest_arg)
                        pending[ref] = w
                        self._busy[w] = ref
                    launched = True
                    continue
            remaining = deadline - time.monotonic()
            if not (pending or stale) or remaining <= 0:
                break
            waiting = [*pending, *stale]
            target = q if launched else q - len(forgers)
            need = max(1, min(target - len(received), len(waiting)))
            ready, _ = ray.wait(waiting, num_returns=need, timeout=remaining)
            for ref in ready:
                if ref in stale:  # a straggler finished: drop its stale vector, give it work
                    w = stale.pop(ref)
                    self._busy.pop(w, None)
                    self._get(w, ref, stale=True)
                    if not self._is_forger(w):
                        launch_compute(w)
                    continue
                w = pending.pop(ref)
                self._busy.pop(w, None)
                out, reason = self._get(w, ref)
                if reason is None:
                    vec, loss, reason = check_vector(
                        w,
                        out,
                        forger=self._is_forger(w),
                        rows=self._rows,
                        dim=wl.dim,
                        reject_nonfinite=self.options.reject_nonfinite,
                    )
                if reason is not None:
                    if reason.startswith("malformed"):
                        log.warning("round %d: worker %d sent a %s vector", t, w, reason)
                    missing[w] = reason
                    continue
                if not np.may_share_memory(vec, buf):  # came through the object store
                    t_copy = time.perf_counter()
                    np.copyto(buf[w], vec)  # overlapped with waiting for the others
                    self._tick("copy", t_copy)
                received[w] = vec
                if w < wl.n_honest:
                    losses[w] = loss
        timed_out = time.monotonic() >= deadline
        for w in pending.values():
            missing[w] = "timeout" if timed_out else "late"
        if len(received) < q:
            alive = sum(a is not None for a in self.actors)
            raise QuorumError(
                f"round {t}: {len(received)} valid vectors arrived within "
                f"{self.options.round_timeout:g} s (RayOptions.round_timeout), the quorum is "
                f"q={q}; {alive} of {self.n} workers alive; "
                f"missing: {dict(sorted(missing.items()))}"
            )
        ids = sorted(received)
        x = self._buffer if len(ids) == self.n else self._buffer[ids]
        honest = [i for i, w in enumerate(ids) if w < wl.n_honest]
        t_server = time.perf_counter()
        self._tick("collect", t_put)
        aggregate = wl.server_step(x, t)
        self._tick("server", t_server)
        return {
            "aggregate": aggregate,
            "ids": ids,
            "x": x,
            "honest_rows": honest,
            "missing": missing,
            "loss": float(np.mean(list(losses.values()))) if losses else float("nan"),
        }

    def _tick(self, key: str, since: float) -> None:
        self.timings[key] = self.timings.get(key, 0.0) + time.perf_counter() - since

    # -- checkpoints -------------------------------------------------------------------
    def checkpoint_path(self) -> Path | None:
        return checkpoint_path(self.options, self.checkpoint_name)

    def save_checkpoint(self, round_: int, extra: dict[str, Any] | None = None) -> None:
        """Save server, workers and history atomically (temp file, then ``os.replace``)."""
        path = self.checkpoint_path()
        if path is None:
            return
        live = {w: a for w, a in enumerate(self.actors) if a is not None and w not in self._busy}
        workers = gather_states(
            live, self.options.round_timeout, fetch=lambda w, ref: self._get(w, ref, stale=True)
        )
        state = {
            "round": round_,
            "server": self.workload.server_state(),
            "workers": workers,
            "history": self.history,
            "missing_log": self.missing_log,
            "extra": extra or {},
        }
        save_checkpoint_file(path, state)

    def load_checkpoint(self) -> dict[str, Any] | None:
        """Restore from the checkpoint if there is one (call after ``start``)."""
        import ray

        state = load_checkpoint_file(self.options, self.checkpoint_name)
        if state is None:
            return None
        self.workload.load_server_state(state["server"])
        ray.get(
            [
                self.actors[w].set_state.remote(s)
                for w, s in state["workers"].items()
                if self.actors[w] is not None
            ]
        )
        self.history = list(state["history"])
        self.missing_log = list(state["missing_log"])
        self.start_round = int(state["round"]) + 1
        return state

    # -- the loop ------------------------------------------------------------------------
    def run(
        self,
        on_metrics: Callable[[dict[str, Any]], None] | None = None,
        *,
        before_round: Callable[[RayEngine, int], None] | None = None,
    ) -> list[dict[str, Any]]:
        """Run the remaining rounds; ``on_metrics(record)`` at every evaluation.

        Records: ``round, train_loss, test_accuracy, agg_distance, lr, time`` and
        ``missing_workers``: a list of ``{"round", "worker", "reason"}`` for every worker missing
        in a round since the previous record. ``before_round(engine, t)`` is a hook (tests).
        """
        wl = self.workload
        t_start = time.perf_counter()
        since: list[dict[str, Any]] = []
        last = wl.rounds
        for t in range(self.start_round, last + 1):
            if before_round is not None:
                before_round(self, t)
            t0 = time.perf_counter()
            out = self.run_round(t)
            if t == self.start_round:
                self.timings["first_round"] = time.perf_counter() - t0
            for w, reason in sorted(out["missing"].items()):
                entry = {"round": t, "worker": w, "reason": reason}
                since.append(entry)
                self.missing_log.append(entry)
            self.diverged = not bool(torch.isfinite(wl.params).all())
            if self.diverged or t % wl.eval_every == 0 or t == last:
                record = round_record(wl, t, out, time.perf_counter() - t_start, since)
                self.history.append(record)
                if on_metrics is not None:
                    on_metrics(record)
                since = []
            every = self.options.checkpoint_every
            if every and (t % every == 0 or t == last or self.diverged):
                self.save_checkpoint(t)
            if self.diverged:
                log.warning("round %d: the parameters became non-finite; run diverged", t)
                break
        self.timings["rounds"] = time.perf_counter() - t_start
        return self.history
