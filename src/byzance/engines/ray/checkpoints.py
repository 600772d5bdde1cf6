"""Checkpoint files of the Ray engines (one per run, written atomically) and the collection of
every actor's state for them.

A checkpoint holds tensors and plain data only (dicts, lists, tuples, numbers, strings, None):
the server's parameters, momentum and rule state, the workers' momenta, the attack's state
(``Attack.state_dict``; the attack is rebuilt from the config), the history. It is read with
``torch.load(weights_only=True)``, which rebuilds nothing else, so a crafted file in a
``--checkpoint-dir`` cannot run code when a run resumes: it is refused with a ``ValueError``.
"""

from __future__ import annotations

import os
import warnings
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


#: the keys of a checkpoint: of the server engine, of the decentralised one
LAYOUTS: tuple[frozenset[str], ...] = (
    frozenset({"round", "server", "workers", "history", "missing_log"}),
    frozenset({"round", "nodes", "history", "missing_since", "elapsed"}),
)


def _reason(exc: BaseException) -> str:
    """The informative line of a ``torch.load`` error (the weights-only unpickler's are long)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for line in lines:
        if "GLOBAL" in line or "Unsupported" in line:
            return line
    return f"{type(exc).__name__}: {lines[0] if lines else exc!r}"


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint at ``path``, read as tensors and plain data only (see the module
    docstring); a file that is not one (code, other objects, damaged, another layout) raises
    ``ValueError`` naming it, and nothing in it is executed."""
    invalid = f"{path} is not a valid byzance checkpoint"
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise ValueError(f"cannot read checkpoint {path}: {exc}") from exc
    try:
        with fh, warnings.catch_warnings():  # e.g. on the pickle protocol of a foreign file
            warnings.simplefilter("ignore")
            state = torch.load(fh, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - whatever the unpickler refuses or chokes on
        raise ValueError(f"{invalid} ({_reason(exc)}); delete it to start the run afresh") from None
    if not isinstance(state, dict) or not any(keys <= state.keys() for keys in LAYOUTS):
        what = sorted(map(str, state)) if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{invalid} (it holds {what}); delete it to start the run afresh")
    round_ = state["round"]
    if isinstance(round_, bool) or not isinstance(round_, int) or round_ < 0:
        raise ValueError(f"{invalid} (round {round_!r}); delete it to start the run afresh")
    return state


def load_checkpoint_file(options: RayOptions, name: str) -> dict[str, Any] | None:
    """The checkpoint of run ``name`` if there is one and ``options.resume``, else ``None``
    (read by ``read_checkpoint``: ``ValueError`` if the file is not a valid checkpoint)."""
    path = checkpoint_path(options, name)
    if path is None or not options.resume or not path.exists():
        return None
    return read_checkpoint(path)


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
