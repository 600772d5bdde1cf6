"""The metrics record of a round and the result of a run: the same keys for every engine.

A record (one per evaluation: every ``eval_every`` rounds, at the last round, and when the run
diverges) holds ``round``, ``train_loss`` (mean honest batch loss of that round),
``test_accuracy``, ``val_accuracy`` (None without a validation split), ``agg_distance``
(``||aggregate - mean of the honest vectors aggregated||``), ``lr``, ``time`` (seconds since
the start). Engines add their own keys: ``missing_workers`` (workers left out since the last
record, with the reason), and for the decentralised protocol ``spread`` (the honest models'
diameter ``max_ij ||theta_i - theta_j||``) and ``test_accuracy_min`` / ``_max`` over nodes; a
sampled client population (``byzance.sim.population``) adds ``sampled_byzantine`` (the
Byzantine clients sampled in each round since the last record), ``aggregator_f`` and
``rounds_over_f``.
A diverged run (non-finite parameters) reports chance accuracy, 1 / num_classes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

Record = dict[str, Any]
#: the keys every engine's records have (``metrics_record``'s common keys)
RECORD_KEYS = frozenset(
    ("round", "train_loss", "test_accuracy", "val_accuracy", "agg_distance", "lr", "time")
)


def agg_distance(aggregate: torch.Tensor, honest: torch.Tensor) -> float:
    """``||aggregate - mean(honest)||`` (NaN when no honest vector was aggregated)."""
    if honest.shape[0] == 0:
        return math.nan
    with torch.no_grad():
        return float(torch.linalg.vector_norm(aggregate - honest.mean(0)))


def metrics_record(
    round_: int,
    *,
    train_loss: float | torch.Tensor,
    test_accuracy: float,
    val_accuracy: float | None,
    agg_distance: float,
    lr: float,
    time: float,
    **extra: Any,
) -> Record:
    """One record with the common keys first, then the engine's ``extra`` keys."""
    return {
        "round": round_,
        "train_loss": float(train_loss),
        "test_accuracy": test_accuracy,
        "val_accuracy": val_accuracy,
        "agg_distance": agg_distance,
        "lr": lr,
        "time": time,
        **extra,
    }


@dataclass
class RunResult:
    """Outcome of one run, whatever the engine.

    ``history``: the metric records; ``final_accuracy``: test accuracy at the end (chance if
    diverged); ``seconds``: wall time of the training loop; ``timings``: seconds per phase
    (engine-specific keys) and ``rounds`` run; ``params``: final flat parameters (CPU; for the
    decentralised protocol the honest nodes' models, one row each); ``run_id``: its id in the
    results database (set by the runner).
    """

    config: Any
    history: list[Record]
    final_accuracy: float
    seconds: float
    timings: dict[str, float]
    diverged: bool = False
    final_val_accuracy: float | None = None
    params: torch.Tensor | None = field(default=None, repr=False)
    run_id: str | None = None

    @classmethod
    def from_history(
        cls,
        config: Any,
        history: list[Record],
        seconds: float,
        timings: dict[str, float],
        *,
        diverged: bool = False,
        params: torch.Tensor | None = None,
    ) -> RunResult:
        final = history[-1]
        return cls(
            config=config,
            history=history,
            final_accuracy=final["test_accuracy"],
            seconds=seconds,
            timings=timings,
            diverged=diverged,
            final_val_accuracy=final.get("val_accuracy"),
            params=params,
        )
