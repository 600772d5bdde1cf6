"""The Ray cluster: connecting (or starting a local instance), checking it can host the actors,
starting the actors with ``RayOptions``' placement and killing them."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from byzance.engines.ray.options import RayOptions


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
    if not explicit:  # "local": always a new instance here, never a running cluster
        kwargs.update(num_cpus=options.num_cpus, object_store_memory=options.object_store_memory)
    try:
        ray.init(address=address, **kwargs)
    except ConnectionError as exc:
        raise ValueError(f"cannot connect to the Ray cluster at {address!r}: {exc}") from exc
    return True


def check_before_start(n_actors: int, options: RayOptions) -> None:
    """What can be checked before Ray starts: an explicit address is reachable, and a local
    instance of ``num_cpus`` CPUs can host ``n_actors`` actors of ``worker_cpus`` each."""
    if options.checkpoint_dir:
        _check_checkpoint_dir(Path(options.checkpoint_dir))
    address = options.address
    if address not in (None, "auto", "local"):
        _check_reachable(address, options.connect_timeout)
    elif address != "auto" and options.num_cpus is not None:
        need = n_actors * options.worker_cpus
        if need > options.num_cpus + 1e-9:
            raise ValueError(
                f"Ray instance too small: {n_actors} worker actors x {options.worker_cpus:g} "
                f"CPU = {need:g} CPU needed, RayOptions.num_cpus={options.num_cpus}; raise "
                "--num-cpus or lower --worker-cpus"
            )


def _check_checkpoint_dir(path: Path) -> None:
    """The checkpoint folder is a folder, or can be made: its nearest existing ancestor is a
    writable folder."""
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"RayOptions.checkpoint_dir: {str(path)!r} is not a folder")
        existing = path
    else:
        existing = next(p for p in path.absolute().parents if p.exists())
        if not existing.is_dir():
            raise ValueError(
                f"RayOptions.checkpoint_dir: {str(path)!r} cannot be made: {str(existing)!r} "
                "is a file"
            )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(
            f"RayOptions.checkpoint_dir: {str(existing)!r} is not writable (checkpoints of "
            f"{str(path)!r})"
        )


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


def actor_class(body: type, options: RayOptions, *, max_restarts: int | None = None) -> Any:
    """``ray.remote(body)`` placed as ``options`` say: ``worker_cpus``, ``worker_resources``,
    SPREAD if ``spread``, and ``options.max_restarts`` Ray-level restarts (``max_restarts``
    overrides it)."""
    import ray

    opts: dict[str, Any] = {
        "num_cpus": options.worker_cpus,
        "max_restarts": options.max_restarts if max_restarts is None else max_restarts,
        "max_task_retries": 0,
    }
    if options.worker_resources:
        opts["resources"] = dict(options.worker_resources)
    if options.spread:
        opts["scheduling_strategy"] = "SPREAD"
    return ray.remote(body).options(**opts)


def start_actors(
    body: type,
    options: RayOptions,
    args: Sequence[tuple[Any, ...]],
    *,
    label: str = "worker",
    max_restarts: int | None = None,
    resources_hint: bool = True,
) -> tuple[list[Any], list[Any]]:
    """Create one actor ``body(*entry)`` per entry of ``args`` (``actor_class``) and wait
    until every one answers ``info()``; return ``(actors, info refs)``, the refs all ready.

    ``ValueError`` if some did not within ``options.startup_timeout`` (``label``: what the
    message calls them; ``resources_hint``: it shows the cluster's free resources); the actors
    are then killed, as they are on any other error here.
    """
    import ray

    actors: list[Any] = []
    try:
        cls = actor_class(body, options, max_restarts=max_restarts)
        for a in args:
            actors.append(cls.remote(*a))
        refs = [a.info.remote() for a in actors]
        ready, pending = ray.wait(refs, num_returns=len(refs), timeout=options.startup_timeout)
        if pending:
            hint = ""
            if resources_hint:
                hint = f": the cluster may lack free resources ({ray.available_resources()})"
            raise ValueError(
                f"{len(pending)} of {len(refs)} {label} actors did not start within "
                f"{options.startup_timeout:g} s (RayOptions.startup_timeout){hint}"
            )
    except BaseException:
        kill_actors(actors)
        raise
    return actors, ready


def kill_actors(actors: Iterable[Any]) -> None:
    """Kill every actor for good; dead ones (or ``None`` entries) are skipped."""
    import ray

    for a in actors:
        try:
            ray.kill(a, no_restart=True)
        except Exception:  # noqa: BLE001 - already dead
            pass
