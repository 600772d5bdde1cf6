"""What the server of ``RayEngine`` makes of its workers' replies: fetching a task's result (task
errors, dead actors), checking a vector, dropping the results of stale tasks, and the metric
record of an evaluated round."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from byzance.engines.ray.transport import IN_SHARED_ROW, SharedRows

log = logging.getLogger("byzance.engines.ray")


def fetch_result(
    w: int, ref: Any, on_dead: Callable[[int], None], stale: bool = False
) -> tuple[Any, str | None]:
    """``(result, None)`` or ``(None, reason)`` for worker w's task ``ref``; a dead actor is
    reported to ``on_dead(w)``, a raised exception logged unless the task is ``stale``."""
    import ray
    from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError

    try:
        return ray.get(ref), None
    except ActorUnavailableError:
        return None, "unavailable"
    except RayActorError:
        on_dead(w)
        return None, "dead"
    except RayTaskError as exc:
        cause = exc.cause if getattr(exc, "cause", None) is not None else exc
        if not stale:
            log.warning("worker %d raised %s: %s", w, type(cause).__name__, cause)
        return None, f"error: {type(cause).__name__}"


def reap_stale(busy: dict[int, Any], get: Callable[..., Any]) -> None:
    """Free the workers of ``busy`` (worker -> outstanding task) whose stale task finished;
    drop its result (``get(w, ref, stale=True)``)."""
    import ray

    if not busy:
        return
    refs = list(busy.values())
    done, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
    done_set = set(done)
    for w, ref in list(busy.items()):
        if ref in done_set:
            del busy[w]
            get(w, ref, stale=True)


def check_vector(
    w: int,
    out: Any,
    *,
    forger: bool,
    rows: SharedRows | None,
    dim: int,
    reject_nonfinite: bool,
) -> tuple[np.ndarray | None, float, str | None]:
    """``(vector, loss, None)`` or ``(None, loss, reason)`` for worker w's result ``out``
    (``(vector, loss)``, or a forger's vector alone).

    A vector written into the shared matrix ``rows`` is checked in place (row w)."""
    loss = float("nan")
    vec = out
    if not forger:
        if not (isinstance(out, tuple) and len(out) == 2):
            return None, loss, "malformed: not (vector, loss)"
        vec, loss = out
    if isinstance(vec, str) and vec == IN_SHARED_ROW and rows is not None:
        vec = rows.array[w]
    if not isinstance(vec, np.ndarray) or vec.dtype.kind != "f":
        return None, loss, f"malformed: {type(vec).__name__}"
    d = dim
    if vec.shape != (d,):
        return None, loss, f"malformed: shape {tuple(vec.shape)} != ({d},)"
    # a finite sum proves every entry finite (NaN and inf propagate); only an overflowing
    # sum of finite values needs the element-wise check
    if reject_nonfinite and not np.isfinite(np.add.reduce(vec)):
        if not bool(np.isfinite(vec).all()):
            return None, loss, "malformed: non-finite"
    return vec, float(loss), None


def round_record(
    wl: Any, t: int, out: dict[str, Any], elapsed: float, since: list[dict[str, Any]]
) -> dict[str, Any]:
    """The metric record of round ``t`` (``out``: what ``RayEngine.run_round`` returned);
    evaluates the workload's current parameters."""
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
