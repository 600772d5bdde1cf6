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
import os
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from byzance.engines.workload import Workload

log = logging.getLogger("byzance.engines.ray")

#: kinds of faults a test can inject into a worker actor (``RayEngine.inject_fault``)
FAULT_KINDS = ("delay", "raise", "nan", "shape", "exit")


class QuorumError(RuntimeError):
    """Fewer than q valid vectors arrived in a round (too many workers missing)."""


@dataclass
class RayOptions:
    """Settings of the Ray engine (the experiment itself is an ``ExperimentConfig``).

    ``address``: ``None`` starts a local Ray instance (or uses the one already initialised /
    ``RAY_ADDRESS``); ``"auto"`` or ``"host:port"`` / ``"ray://host:port"`` joins a cluster,
    checked reachable within ``connect_timeout`` seconds first. ``quorum``: q, the number of
    vectors aggregated per round (default n - f, n = workers present). ``round_timeout``:
    seconds the server waits for q vectors; ``startup_timeout``: seconds for all actors to
    start. ``worker_cpus`` / ``worker_resources``: Ray resources each worker actor reserves
    (custom resources force placement); ``spread`` spreads actors over nodes.
    ``max_restarts``: Ray-level actor restarts; ``recreate_limit``: how many times the server
    re-creates a dead worker. ``checkpoint_dir`` / ``checkpoint_every``: checkpointing
    (0 = never); ``resume``: continue from a checkpoint found there. ``num_cpus`` /
    ``object_store_memory``: for a local instance started here. ``torch_threads``: intra-op
    threads per actor. ``reject_nonfinite``: treat vectors with NaN/inf as malformed.
    ``shared_memory``: workers on the driver's node write their vectors straight into the
    server's (n, d) matrix, a file in ``/dev/shm`` mapped by both (``SharedRows``), instead of
    returning them through the object store; workers on other nodes always use the object
    store. Ignored where ``/dev/shm`` does not exist.
    """

    address: str | None = None
    quorum: int | None = None
    round_timeout: float = 60.0
    startup_timeout: float = 300.0
    connect_timeout: float = 10.0
    worker_cpus: float = 1.0
    worker_resources: dict[str, float] = field(default_factory=dict)
    spread: bool = True
    max_restarts: int = 0
    recreate_limit: int = 3
    checkpoint_dir: str | None = None
    checkpoint_every: int = 0
    resume: bool = True
    num_cpus: int | None = None
    object_store_memory: int | None = None
    torch_threads: int = 1
    reject_nonfinite: bool = True
    shared_memory: bool = True

    def validate(self) -> None:
        """Raise ``ValueError`` naming the field on a bad value."""
        positive = {
            "round_timeout": self.round_timeout,
            "startup_timeout": self.startup_timeout,
            "connect_timeout": self.connect_timeout,
        }
        for name, value in positive.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"RayOptions.{name}: expected a number > 0, got {value!r}")
        if not isinstance(self.worker_cpus, (int, float)) or self.worker_cpus < 0:
            raise ValueError(f"RayOptions.worker_cpus: expected >= 0, got {self.worker_cpus!r}")
        for name in ("max_restarts", "recreate_limit", "checkpoint_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"RayOptions.{name}: expected an int >= 0, got {value!r}")
        if self.torch_threads < 1:
            raise ValueError(f"RayOptions.torch_threads: expected >= 1, got {self.torch_threads}")
        if self.quorum is not None and (
            isinstance(self.quorum, bool) or not isinstance(self.quorum, int) or self.quorum < 1
        ):
            raise ValueError(f"RayOptions.quorum: expected an int >= 1, got {self.quorum!r}")
        if self.checkpoint_every and not self.checkpoint_dir:
            raise ValueError(
                f"RayOptions.checkpoint_every={self.checkpoint_every} needs a checkpoint_dir"
            )
        if not isinstance(self.worker_resources, dict):
            raise ValueError(
                f"RayOptions.worker_resources: expected a dict, got {self.worker_resources!r}"
            )


# --------------------------------------------------------------------------- shared rows
#: what a worker returns instead of its vector once it has written it into its shared row
IN_SHARED_ROW = "in-shared-row"


class SharedRows:
    """The server's (n, d) matrix of received vectors as a file in ``/dev/shm``, mapped by
    the server and by the worker actors on its node: worker w writes row w (one copy, no
    serialisation, no object-store round trip), the server reads and aggregates in place.

    Row w is written only by worker w's single outstanding task and read by the server only
    after that task has returned, so there are no concurrent accesses to a row.
    """

    ROOT = Path("/dev/shm")

    def __init__(self, path: str, n: int, d: int, dtype: str, node_id: str, create: bool) -> None:
        self.path, self.node_id = path, node_id
        self.spec = (path, n, d, dtype, node_id)
        mode = "w+" if create else "r+"
        self.array = np.memmap(path, dtype=np.dtype(dtype), mode=mode, shape=(n, d))

    @classmethod
    def create(cls, n: int, d: int, dtype: torch.dtype) -> SharedRows | None:
        """A new zeroed matrix on this node, or ``None`` where there is no ``/dev/shm``."""
        import uuid

        import ray

        if not cls.ROOT.is_dir():
            return None
        np_dtype = torch.empty(0, dtype=dtype).numpy().dtype.str
        path = str(cls.ROOT / f"byzance-{os.getpid()}-{uuid.uuid4().hex[:12]}")
        node = ray.get_runtime_context().get_node_id()
        return cls(path, n, d, np_dtype, node, create=True)

    @classmethod
    def attach(cls, spec: tuple[str, int, int, str, str] | None) -> SharedRows | None:
        """Map the server's matrix from a worker, if it runs on the same node (else ``None``)."""
        import ray

        if spec is None:
            return None
        path, n, d, dtype, node_id = spec
        if node_id != ray.get_runtime_context().get_node_id() or not os.path.exists(path):
            return None
        return cls(path, n, d, dtype, node_id, create=False)

    def remove(self) -> None:
        self.array = None  # type: ignore[assignment]  # unmaps once no view is left
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


# ----------------------------------------------------------------------------- checkpoints
def checkpoint_path(options: RayOptions, name: str) -> Path | None:
    """``options.checkpoint_dir/<name>.ckpt`` (``name``: the run id), ``None`` without a dir."""
    if not options.checkpoint_dir:
        return None
    return Path(options.checkpoint_dir) / f"{name}.ckpt"


def save_checkpoint_file(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` to a temp file next to ``path``, then ``os.replace`` (atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint_file(options: RayOptions, name: str) -> dict[str, Any] | None:
    """The checkpoint of run ``name`` if there is one and ``options.resume``, else ``None``."""
    path = checkpoint_path(options, name)
    if path is None or not options.resume or not path.exists():
        return None
    return torch.load(path, weights_only=False)


def start_db_run(
    database: Any, config: dict[str, Any], engine: str, rid: str, history: list[dict[str, Any]]
) -> None:
    """(Re-)open run ``rid`` in the results DB; its records are rewritten from ``history``
    (the evaluations recovered from a checkpoint, none for a fresh run)."""
    database.start_run(config, engine=engine, run_id_=rid, overwrite=True)
    for record in history:
        database.record_metrics(rid, record)


# --------------------------------------------------------------------------------- actors
class WorkerActor:
    """Body of every worker actor (wrapped with ``ray.remote`` at run time).

    ``compute`` runs an honest/data-poisoning core, ``forge`` a gradient-attack core. Injected
    faults (tests, chaos runs) apply before the computation of the chosen rounds. With a
    ``rows`` spec (``SharedRows``) and on the server's node, vectors are written into the
    worker's row of the server's matrix and ``IN_SHARED_ROW`` is returned in their place.
    """

    def __init__(
        self,
        core: Any,
        worker: int,
        torch_threads: int = 1,
        rows: tuple[str, int, int, str, str] | None = None,
    ) -> None:
        torch.set_num_threads(torch_threads)
        # parameters arrive as read-only zero-copy numpy views; cores never write into them
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        self.core = core
        self.worker = worker
        self.rows = SharedRows.attach(rows)
        self.faults: list[tuple[str, set[int] | None, float]] = []
        self.compute_cpu = 0.0
        self.calls = 0

    def info(self) -> dict[str, Any]:
        """Where this actor runs; also warms the core up (lazy set-up off the first round)."""
        import ray

        warmup = getattr(self.core, "warmup", None)
        if warmup is not None:
            warmup()
        return {
            "worker": self.worker,
            "node_id": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
            "shared_row": self.rows is not None,
        }

    def inject_fault(self, kind: str, rounds: list[int] | None, seconds: float) -> None:
        self.faults.append((kind, None if rounds is None else set(rounds), seconds))

    def clear_faults(self) -> None:
        self.faults.clear()

    def _apply_faults(self, round_: int) -> str | None:
        active = [(k, s) for k, r, s in self.faults if r is None or round_ in r]
        corrupt = None
        for kind, seconds in active:
            if kind == "delay":
                time.sleep(seconds)
            elif kind == "exit":
                os._exit(1)
            elif kind == "raise":
                raise RuntimeError(f"injected fault in worker {self.worker} at round {round_}")
            else:
                corrupt = kind
        return corrupt

    @staticmethod
    def _corrupt(vec: np.ndarray, kind: str | None) -> np.ndarray:
        if kind == "nan":
            vec = vec.copy()
            vec[0] = np.nan
        elif kind == "shape":
            vec = vec[:-1].copy()
        return vec

    def _send(self, vec: Any) -> Any:
        """Write a well-formed vector into this worker's shared row, if there is one."""
        rows = self.rows
        if (
            rows is not None
            and isinstance(vec, np.ndarray)
            and vec.dtype.kind == "f"
            and vec.shape == rows.array.shape[1:]
        ):
            np.copyto(rows.array[self.worker], vec)
            return IN_SHARED_ROW
        return vec  # returned through the object store (and checked there)

    def compute(self, params: np.ndarray, round_: int) -> tuple[Any, float]:
        kind = self._apply_faults(round_)
        c0 = time.thread_time()
        vec, loss = self.core.compute(params, round_)
        self.compute_cpu += time.thread_time() - c0
        self.calls += 1
        return self._send(self._corrupt(vec, kind)), loss

    def stats(self, reset: bool = False) -> dict[str, float]:
        """CPU seconds spent in the core's computation and number of calls (benchmarks)."""
        out = {"compute_cpu": self.compute_cpu, "calls": float(self.calls)}
        if reset:
            self.compute_cpu, self.calls = 0.0, 0
        return out

    def forge(self, round_: int, honest: list[int] | np.ndarray) -> Any:
        """This worker's row of the attack on the honest vectors: given as rows of the shared
        matrix (same node) or as an (h, d) array (through the object store)."""
        kind = self._apply_faults(round_)
        if isinstance(honest, list):
            if self.rows is None:
                raise RuntimeError("forge: honest rows given but no shared matrix is mapped")
            honest = self.rows.array[honest]  # fancy indexing: a private copy
        return self._send(self._corrupt(self.core.forge(honest, round_), kind))

    def get_state(self) -> dict[str, Any]:
        return self.core.state_dict()

    def set_state(self, state: dict[str, Any]) -> None:
        self.core.load_state_dict(state)


# ------------------------------------------------------------------------- connection
def _check_reachable(address: str, timeout: float) -> None:
    target = address.split("://", 1)[-1]
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(
            f"RayOptions.address: expected 'auto', 'host:port' or 'ray://host:port', "
            f"got {address!r}"
        )
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise ValueError(
            f"Ray cluster at {address!r} is unreachable within {timeout:g} s ({exc}); start one "
            "with `ray start --head` and pass the address it prints (see docs/ray.md)"
        ) from exc


def connect(options: RayOptions) -> bool:
    """Connect to (or start) Ray; return True if this call started it (to shut it down).

    An explicit ``host:port`` address is first checked reachable within
    ``options.connect_timeout`` seconds (``ray.init`` alone may retry for a minute). If Ray is
    already initialised in this process it is reused, unless an explicit address names
    another cluster.
    """
    import ray

    address = options.address
    explicit = address not in (None, "auto", "local")
    if explicit:
        _check_reachable(address, options.connect_timeout)
    if ray.is_initialized():
        if explicit and not address.startswith("ray://"):
            current = ray.get_runtime_context().gcs_address
            if current.rsplit(":", 1)[-1] != address.rsplit(":", 1)[-1]:
                raise ValueError(
                    f"Ray is already initialised in this process, connected to {current}, not "
                    f"to {address!r}; call ray.shutdown() first"
                )
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
    if not explicit:
        kwargs.update(num_cpus=options.num_cpus, object_store_memory=options.object_store_memory)
        if address == "local":
            address = None
    try:
        ray.init(address=address, **kwargs)
    except ConnectionError as exc:
        raise ValueError(f"cannot connect to the Ray cluster at {address!r}: {exc}") from exc
    return True


def check_resources(n_actors: int, options: RayOptions) -> None:
    """Raise ``ValueError`` if the cluster cannot host ``n_actors`` worker actors at once."""
    import ray

    total = ray.cluster_resources()
    need = {"CPU": n_actors * options.worker_cpus}
    need.update({k: n_actors * v for k, v in options.worker_resources.items()})
    for name, amount in need.items():
        have = total.get(name, 0.0)
        if amount > have + 1e-9:
            per = options.worker_cpus if name == "CPU" else options.worker_resources[name]
            raise ValueError(
                f"Ray cluster too small: {n_actors} worker actors x {per:g} {name} = "
                f"{amount:g} {name} needed, the cluster has {have:g} {name}; add nodes or "
                "lower RayOptions.worker_cpus / worker_resources"
            )


# --------------------------------------------------------------------------- engine
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
        self.actors = [self._create(w) for w in range(self.n)]
        infos = self._wait_ready(list(range(self.n)))
        self._placed(infos)
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
        import ray

        opts: dict[str, Any] = {
            "num_cpus": self.options.worker_cpus,
            "max_restarts": self.options.max_restarts,
            "max_task_retries": 0,
        }
        if self.options.worker_resources:
            opts["resources"] = dict(self.options.worker_resources)
        if self.options.spread:
            opts["scheduling_strategy"] = "SPREAD"
        cls = ray.remote(WorkerActor).options(**opts)
        rows = self._rows.spec if self._rows is not None else None
        return cls.remote(self._core_refs[w], w, self.options.torch_threads, rows)

    def _wait_ready(self, workers: list[int]) -> list[dict[str, Any]]:
        import ray

        refs = [self.actors[w].info.remote() for w in workers]
        ready, pending = ray.wait(refs, num_returns=len(refs), timeout=self.options.startup_timeout)
        if pending:
            raise ValueError(
                f"{len(pending)} of {len(refs)} worker actors did not start within "
                f"{self.options.startup_timeout:g} s (RayOptions.startup_timeout): the cluster "
                f"may lack free resources ({ray.available_resources()})"
            )
        return ray.get(ready)

    def shutdown(self) -> None:
        """Kill the actors (and Ray itself if this engine started it)."""
        import ray

        for a in self.actors:
            try:
                ray.kill(a, no_restart=True)
            except Exception:  # noqa: BLE001 - already dead
                pass
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
    def _reap_stale(self) -> None:
        """Free workers whose outstanding (stale) task finished; drop its result."""
        import ray

        if not self._busy:
            return
        refs = list(self._busy.values())
        done, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        done_set = set(done)
        for w, ref in list(self._busy.items()):
            if ref in done_set:
                del self._busy[w]
                self._get(w, ref, stale=True)

    def _get(self, w: int, ref: Any, stale: bool = False) -> tuple[Any, str | None]:
        """``(result, None)`` or ``(None, reason)``; handles dead actors."""
        import ray
        from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError

        try:
            return ray.get(ref), None
        except ActorUnavailableError:
            return None, "unavailable"
        except RayActorError:
            self._on_dead(w)
            return None, "dead"
        except RayTaskError as exc:
            cause = exc.cause if getattr(exc, "cause", None) is not None else exc
            if not stale:
                log.warning("worker %d raised %s: %s", w, type(cause).__name__, cause)
            return None, f"error: {type(cause).__name__}"

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

    def _validate(self, w: int, out: Any) -> tuple[np.ndarray | None, float, str | None]:
        """``(vector, loss, None)`` or ``(None, loss, reason)`` for worker w's result.

        A vector written into the shared matrix is checked in place (row w)."""
        loss = float("nan")
        vec = out
        if not self._is_forger(w):
            if not (isinstance(out, tuple) and len(out) == 2):
                return None, loss, "malformed: not (vector, loss)"
            vec, loss = out
        if isinstance(vec, str) and vec == IN_SHARED_ROW and self._rows is not None:
            vec = self._rows.array[w]
        if not isinstance(vec, np.ndarray) or vec.dtype.kind != "f":
            return None, loss, f"malformed: {type(vec).__name__}"
        d = self.workload.dim
        if vec.shape != (d,):
            return None, loss, f"malformed: shape {tuple(vec.shape)} != ({d},)"
        # a finite sum proves every entry finite (NaN and inf propagate); only an overflowing
        # sum of finite values needs the element-wise check
        if self.options.reject_nonfinite and not np.isfinite(np.add.reduce(vec)):
            if not bool(np.isfinite(vec).all()):
                return None, loss, "malformed: non-finite"
        return vec, float(loss), None

    def run_round(self, t: int) -> dict[str, Any]:
        """Run round ``t``: collect the first q valid vectors, step; return what was used.

        Returns ``{"aggregate", "ids" (workers aggregated), "x" (their vectors),
        "honest_rows", "missing" (worker -> reason), "loss" (mean honest batch loss)}``.
        """
        import ray

        wl = self.workload
        q = self.q
        deadline = time.monotonic() + self.options.round_timeout
        self._reap_stale()
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
                    vec, loss, reason = self._validate(w, out)
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
        import ray

        path = self.checkpoint_path()
        if path is None:
            return
        live = {w: a for w, a in enumerate(self.actors) if a is not None and w not in self._busy}
        refs = {w: a.get_state.remote() for w, a in live.items()}
        ready, _ = ray.wait(
            list(refs.values()), num_returns=len(refs), timeout=self.options.round_timeout
        )
        ready_set = set(ready)
        workers: dict[int, Any] = {}
        for w, ref in refs.items():
            if ref in ready_set:
                out, reason = self._get(w, ref, stale=True)
                if reason is None:
                    workers[w] = out
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
                record = self._record(t, out, time.perf_counter() - t_start, since)
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

    def _record(
        self, t: int, out: dict[str, Any], elapsed: float, since: list[dict[str, Any]]
    ) -> dict[str, Any]:
        wl = self.workload
        metrics = wl.evaluate(wl.params)
        x, rows = out["x"], out["honest_rows"]
        if rows:
            mean = x[rows].mean(dim=0)
            agg_distance = float(torch.linalg.vector_norm(out["aggregate"] - mean))
        else:
            agg_distance = float("nan")
        record: dict[str, Any] = {
            "round": t,
            "train_loss": out["loss"],
            "test_accuracy": float("nan"),
            "agg_distance": agg_distance,
            "lr": wl.lr_at(t),
            "time": elapsed,
        }
        record.update(metrics)
        record["missing_workers"] = list(since)
        return record


# ------------------------------------------------------------------------ experiment API
def quorum_for(config: Any, options: RayOptions) -> tuple[int, int]:
    """``(n, q)`` for an ``ExperimentConfig``: workers present and vectors aggregated.

    ``n = n_honest + f`` (``n_honest`` with ``attack="none"``: the f workers are absent);
    ``q = n - f`` unless ``options.quorum`` is set (the server cannot tell silent Byzantine
    workers from slow honest ones, so it never waits for more than n - f).
    """
    n = config.n_received
    q = options.quorum if options.quorum is not None else n - config.f
    return n, q


def check_experiment(config: Any, options: RayOptions) -> None:
    """Everything checkable without Ray: the config, the options and the rule on q."""
    options.validate()
    config.validate()
    n, q = quorum_for(config, options)
    if not 1 <= q <= n:
        raise ValueError(f"RayOptions.quorum: expected 1 <= q <= n={n}, got q={q}")
    agg = config.build_aggregator()
    try:
        agg.check(q)
    except ValueError as exc:
        raise ValueError(
            f"{config.aggregator!r} with f={config.f} cannot run on the q={q} vectors the Ray "
            f"server aggregates each round (n={n} workers, RayOptions.quorum="
            f"{options.quorum}): {exc}"
        ) from exc


def _open_db(db: Any) -> tuple[Any, bool]:
    if db is None:
        return None, False
    if isinstance(db, (str, os.PathLike)):
        from byzance.results import open_db

        return open_db(db), True
    return db, False


def run_experiment_ray(
    config: Any,
    *,
    address: str | None = None,
    options: RayOptions | None = None,
    on_metrics: Callable[[dict[str, Any]], None] | None = None,
    db: Any = None,
    progress: bool = False,
    engine_hook: Callable[[RayEngine], None] | None = None,
    before_round: Callable[[RayEngine, int], None] | None = None,
) -> Any:
    """Run an ``ExperimentConfig`` on Ray (see the module docstring); return a ``RunResult``.

    ``address`` overrides ``options.address``. ``db``: a results DB path or ``ResultsDB``;
    the run is recorded with ``engine="ray"`` (every evaluation committed as it arrives, with
    ``missing_workers``), marked finished or failed. With ``options.checkpoint_dir`` a run
    found there is resumed from its last checkpoint. ``engine_hook(engine)`` is called once
    the actors are up and ``before_round(engine, t)`` before each round (tests: fault injection).
    """
    import dataclasses

    from byzance.engines.sim_workload import SimWorkload
    from byzance.results import run_id
    from byzance.sim.config import ExperimentConfig
    from byzance.sim.simulation import RunResult, Simulation

    if isinstance(config, dict):
        config = ExperimentConfig.from_dict(config)
    options = dataclasses.replace(options or RayOptions())
    if address is not None:
        options.address = address
    check_experiment(config, options)
    cfg_dict = config.to_dict()
    keyed = dict(cfg_dict)
    if options.quorum is not None:
        keyed["ray_quorum"] = options.quorum
    rid = run_id(keyed, "ray")
    started = connect(options)  # fail fast: before loading data
    try:
        check_resources(quorum_for(config, options)[0], options)
        sim = Simulation(config)
        engine = RayEngine(SimWorkload(sim), options, checkpoint_name=rid)
    except BaseException:
        if started:
            import ray

            ray.shutdown()
        raise
    engine._started_ray = started
    database, owned = _open_db(db)
    start = time.perf_counter()
    try:
        engine.start()
        resumed = engine.load_checkpoint()
        if database is not None:
            start_db_run(database, cfg_dict, "ray", rid, engine.history)
        if resumed is not None:
            log.warning("resumed run %s from its checkpoint at round %d", rid, resumed["round"])
        if engine_hook is not None:
            engine_hook(engine)

        def record(rec: dict[str, Any]) -> None:
            if database is not None:
                database.record_metrics(rid, rec)
            if progress:
                print(
                    f"round {rec['round']}/{config.rounds}  loss {rec['train_loss']:.4f}  "
                    f"test acc {rec['test_accuracy']:.4f}  missing {len(rec['missing_workers'])}"
                    f"  ({rec['time']:.1f}s)",
                    flush=True,
                )
            if on_metrics is not None:
                on_metrics(rec)

        history = engine.run(record, before_round=before_round)
        seconds = time.perf_counter() - start
        final = history[-1]
        if database is not None:
            database.finish_run(rid, final["test_accuracy"], seconds)
    except BaseException as exc:
        if database is not None and database.status(rid) == "running":
            database.fail_run(
                rid, f"{type(exc).__name__}: {exc}".splitlines()[0], time.perf_counter() - start
            )
        raise
    finally:
        engine.shutdown()
        if owned:
            database.close()
    timings = dict(engine.timings)
    timings["recreated_workers"] = float(sum(engine.recreated.values()))
    return RunResult(
        config=config,
        history=history,
        final_accuracy=final["test_accuracy"],
        seconds=seconds,
        timings=timings,
        diverged=engine.diverged,
        final_val_accuracy=final.get("val_accuracy"),
        params=sim.params.detach().cpu().clone(),
    )
