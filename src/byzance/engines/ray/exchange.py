"""One round of the decentralised mode on Ray (see ``byzance.engines.ray.decentralized``): its
three phases over the node actors, each waited for with the round timeout, and the record of
an evaluated round."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np
import torch

from byzance.engines.ray.options import QuorumError
from byzance.round.record import metrics_record

log = logging.getLogger("byzance.engines.ray")


def run_round(
    actors: list[Any], h: int, f: int, q: int, t: int, timeout: float
) -> tuple[dict[int, str], list[float]]:
    """Round ``t``'s three phases (momentum, gradient exchange + step, model exchange);
    return the nodes missing (node -> reason) and the honest nodes' batch losses."""
    import ray

    byz = actors[h:]
    missing: dict[int, str] = {}
    calls = {i: actors[i].compute.remote(None, t) for i in range(h)}
    m_refs = phase(calls, "momentum", t, missing, timeout)
    ids = sorted(m_refs)
    round_losses = [ray.get(m_refs[i])[1] for i in ids]
    if len(ids) + f < q:
        raise QuorumError(
            f"round {t}: {len(ids)} honest nodes answered, q={q}, f={f}; missing: {missing}"
        )
    b_refs = [b.forge_for.remote(t, *[m_refs[i] for i in ids]) for b in byz]
    calls = {
        i: actors[i].gradient_step.remote(
            t, pos, len(ids) - 1, *[m_refs[j] for j in ids if j != i], *b_refs
        )
        for pos, i in enumerate(ids)
    }
    p_refs = phase(calls, "gradient", t, missing, timeout)
    ids = sorted(p_refs)
    bm_refs = [b.forge_for.remote(t, *[p_refs[i] for i in ids]) for b in byz]
    calls = {
        i: actors[i].model_step.remote(
            t, pos, len(ids) - 1, *[p_refs[j] for j in ids if j != i], *bm_refs
        )
        for pos, i in enumerate(ids)
    }
    phase(calls, "model", t, missing, timeout)
    return missing, round_losses


def phase(
    calls: dict[int, Any], label: str, t: int, missing: dict[int, str], timeout: float
) -> dict[int, Any]:
    """Wait up to ``timeout`` s for every node's call; ``{node: ref}`` of those that answered,
    the others recorded in ``missing`` (first reason of the round kept)."""
    import ray

    ready, _ = ray.wait(list(calls.values()), num_returns=len(calls), timeout=timeout)
    got: dict[int, Any] = {}
    ready_set = set(ready)
    for i, ref in calls.items():
        if ref not in ready_set:
            missing.setdefault(i, f"timeout ({label})")
            continue
        try:
            ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - a faulty node, not the run
            log.warning("round %d: node %d failed in %s: %s", t, i, label, exc)
            missing.setdefault(i, f"error ({label})")
            continue
        got[i] = ref
    return got


def honest_params(actors: list[Any], h: int) -> torch.Tensor:
    """The honest nodes' models, (h, d)."""
    import ray

    return torch.from_numpy(np.stack(ray.get([actors[i].params.remote() for i in range(h)])))


def evaluation_record(
    setup: Any,
    actors: list[Any],
    h: int,
    t: int,
    round_losses: list[float],
    t_start: float,
    since: list[dict[str, Any]],
) -> dict[str, Any]:
    """Round ``t``'s record: every honest model evaluated (the mean, min and max accuracy),
    their spread (diameter); ``time``: seconds since ``t_start`` (``time.perf_counter``)."""
    thetas = honest_params(actors, h)
    accs = [setup.evaluate(th) for th in thetas]
    vals = [setup.evaluate_validation(th) for th in thetas]
    spread = float(torch.cdist(thetas[None], thetas[None])[0].max())
    return metrics_record(
        t,
        train_loss=float(np.mean(round_losses)) if round_losses else math.nan,
        test_accuracy=float(np.mean(accs)),
        val_accuracy=None if vals[0] is None else float(np.mean(vals)),
        agg_distance=math.nan,
        lr=setup.lr_at(t),
        time=time.perf_counter() - t_start,
        test_accuracy_min=float(np.min(accs)),
        test_accuracy_max=float(np.max(accs)),
        spread=spread,
        missing_workers=since,
    )
