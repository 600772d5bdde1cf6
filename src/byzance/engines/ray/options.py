"""Settings of the Ray engines (``RayOptions``), the quorum q and the error when it is missed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from byzance.engines.base import constraints_of, option
from byzance.validation import (
    Boolean,
    Integer,
    Mapping,
    OptionalOf,
    Real,
    String,
    validate_dataclass,
)


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
    ``object_store_memory``: for a local instance started here (``checkpoint_every``
    defaults to 10 with a ``checkpoint_dir``). ``torch_threads``: intra-op
    threads per actor. ``reject_nonfinite``: treat vectors with NaN/inf as malformed.
    ``shared_memory``: workers on the driver's node write their vectors straight into the
    server's (n, d) matrix, a file in ``/dev/shm`` mapped by both (``SharedRows``), instead of
    returning them through the object store; workers on other nodes always use the object
    store. Ignored where ``/dev/shm`` does not exist.
    """

    address: str | None = option(
        None,
        OptionalOf(String()),
        "Ray cluster address (auto, host:port, ray://host:port); default: local Ray",
        metavar="ADDRESS",
    )
    quorum: int | None = option(
        None,
        OptionalOf(Integer(low=1)),
        "vectors aggregated per round, q (default n - f)",
        flag="--q",
        metavar="Q",
    )
    round_timeout: float = option(
        60.0,
        Real(low=0, closed="neither"),
        "seconds the server waits for q vectors (default 60)",
        metavar="SECONDS",
    )
    startup_timeout: float = option(
        300.0,
        Real(low=0, closed="neither"),
        "seconds for every actor to start (default 300)",
        metavar="SECONDS",
    )
    connect_timeout: float = option(
        10.0,
        Real(low=0, closed="neither"),
        "seconds to reach a cluster address (default 10)",
        metavar="SECONDS",
    )
    worker_cpus: float = option(
        1.0, Real(low=0), "CPUs each worker actor reserves (default 1; e.g. 0.5)"
    )
    worker_resources: dict[str, float] = option(
        {}, Mapping(Real(low=0)), "custom Ray resources per actor", cli=False
    )
    spread: bool = option(True, Boolean(), "spread the actors over the nodes (default on)")
    max_restarts: int = option(0, Integer(low=0), "Ray-level actor restarts", cli=False)
    recreate_limit: int = option(
        3, Integer(low=0), "times the server re-creates a dead worker (default 3)"
    )
    checkpoint_dir: str | None = option(
        None,
        OptionalOf(String(path=True)),
        "save checkpoints in DIR: the server's and every worker's state (decentralized: every "
        "node's model, momentum and attack state) and the history; the same run started again "
        "resumes from its last one",
        metavar="DIR",
    )
    checkpoint_every: int | None = option(
        None,
        OptionalOf(Integer(low=0)),
        "checkpoint every N rounds (needs --checkpoint-dir; default with it: 10)",
    )
    resume: bool = option(True, Boolean(), "resume from a checkpoint of the same run (default on)")
    num_cpus: int | None = option(
        None,
        OptionalOf(Integer(low=1)),
        "logical CPUs of the local Ray instance started here (default: the machine's); each "
        "worker reserves --worker-cpus",
    )
    object_store_memory: int | None = option(
        None, OptionalOf(Integer(low=1)), "object store bytes of a local instance", cli=False
    )
    torch_threads: int = option(1, Integer(low=1), "intra-op torch threads per actor (default 1)")
    reject_nonfinite: bool = option(
        True, Boolean(), "treat vectors with NaN/inf as malformed", cli=False
    )
    shared_memory: bool = option(
        True, Boolean(), "same-node workers write into the server's matrix in /dev/shm"
    )

    def validate(self) -> None:
        """Check every field against its declared constraint (``ValueError`` naming it),
        then the checks across fields (``finish``)."""
        validate_dataclass(self, constraints_of(RayOptions))
        self.finish()

    def finish(self) -> None:
        """``checkpoint_every``: 10 with a ``checkpoint_dir``, else 0 (never), unless set;
        a positive value needs a ``checkpoint_dir``."""
        if self.checkpoint_every is None:
            self.checkpoint_every = 10 if self.checkpoint_dir else 0
        if self.checkpoint_every and not self.checkpoint_dir:
            raise ValueError(
                f"RayOptions.checkpoint_every={self.checkpoint_every} needs a checkpoint_dir"
            )


def quorum_for(config: Any, options: RayOptions) -> tuple[int, int]:
    """``(n, q)`` for an ``ExperimentConfig``: workers present and vectors aggregated.

    ``n = n_honest + f`` (``n_honest`` with ``attack="none"``: the f workers are absent);
    ``q = n - f`` unless ``options.quorum`` is set (the server cannot tell silent Byzantine
    workers from slow honest ones, so it never waits for more than n - f).
    """
    n = config.n_received
    q = options.quorum if options.quorum is not None else n - config.f
    return n, q
