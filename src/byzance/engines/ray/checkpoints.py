"""Checkpoint files of the Ray engines (one per run, written atomically) and the collection of
every actor's state for them."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from byzance.engines.ray.options import RayOptions


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


def _get_state(key: Any, ref: Any) -> tuple[Any, Any]:
    import ray

    try:
        return ray.get(ref), None
    except Exception as exc:  # noqa: BLE001 - a dead actor, not the run
        return None, exc


def gather_states(
    actors: Mapping[Any, Any],
    timeout: float,
    *,
    fetch: Callable[[Any, Any], tuple[Any, Any]] = _get_state,
    left_out: Callable[[Any, Any], None] | None = None,
) -> dict[Any, Any]:
    """``{key: actor.get_state()}``, asked of every actor of ``actors`` at once.

    An actor that does not answer within ``timeout`` seconds is left out, and so is one whose
    ``fetch(key, ref)`` (default: ``ray.get``, exceptions caught) returns ``(_, problem)``
    with a problem that is not ``None``; ``left_out(key, problem)`` is called for each
    (``problem`` ``None``: no answer in time).
    """
    import ray

    refs = {key: a.get_state.remote() for key, a in actors.items()}
    ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout)
    ready_set = set(ready)
    states: dict[Any, Any] = {}
    for key, ref in refs.items():
        problem = None
        if ref in ready_set:
            state, problem = fetch(key, ref)
            if problem is None:
                states[key] = state
                continue
        if left_out is not None:
            left_out(key, problem)
    return states
