"""The loop over rounds that the simulators of protocols with many models share (``byzsgd``,
``decentralized``): rounds 1..``rounds`` under the RNG stream ``seed + 1``, a record every
``eval_every`` rounds, at the last round and when the run diverges (then it stops), each
record passed to ``on_metrics`` as it is made, a progress bar."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from byzance.progress import RoundProgress
from byzance.round.record import Record


def run_rounds(
    config: Any,
    round_fn: Callable[[int], dict[str, Any]],
    record_fn: Callable[[int, dict[str, Any], float], Record],
    *,
    on_metrics: Callable[[Record], None] | None = None,
    progress: bool = False,
) -> tuple[list[Record], float, bool]:
    """Run the rounds: ``round_fn(r)`` returns the round's outputs (with ``"finite"``: whether
    the models stayed finite); ``record_fn(r, outputs, seconds)`` makes a record. Returns the
    records, the seconds taken and whether the run diverged."""
    history: list[Record] = []
    bar = RoundProgress(config.rounds, enabled=progress)
    start = time.perf_counter()
    diverged = False
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed + 1)
        for r in range(1, config.rounds + 1):
            out = round_fn(r)
            diverged = not out["finite"]
            if diverged or r == config.rounds or r % config.eval_every == 0:
                record = record_fn(r, out, time.perf_counter() - start)
                history.append(record)
                if on_metrics is not None:
                    on_metrics(record)
                bar.update(r, record)
            if diverged:
                break
    seconds = time.perf_counter() - start
    bar.close()
    return history, seconds, diverged
