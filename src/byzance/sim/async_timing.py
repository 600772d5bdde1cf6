"""The asynchronous simulator's timing model: who delivers a vector when, and which model it
was computed on.

Each worker computes without pause: it reads the server's newest model, computes for a time
drawn from its own distribution, delivers, reads again. Worker w's k-th compute time is
``mean_w * E`` with ``E ~ Exp(1)`` (``compute_time = "exponential"``) or ``mean_w`` exactly
(``"fixed"``), drawn from generators seeded by (seed, w, block) so that the times of a worker
never depend on the others or on how many were drawn. Means: 1 for an honest worker;
``straggler_slowdown`` for the last ``round(straggler_fraction * n_honest)`` honest workers;
``1 / byzantine_speed`` for a Byzantine worker (a large speed floods the server).

Since communication is instantaneous and the server processes a delivery at once, a worker's
deliveries fall at the cumulative sums of its compute times, whatever the server does: the
whole schedule is known before training. Deliveries are processed in order of time, ties by
worker id. ``Arrivals.read[j]``: how many deliveries the server had processed when the worker
of delivery j read its model (0 for a worker's first vector, else one more than the position
of its previous delivery).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_BLOCK_SEED = 0x5EED_A5C
_BLOCK = 256  # draws per block: a worker's times are blocks 0, 1, ... of its own streams


@dataclass(frozen=True)
class Arrivals:
    """The first ``len(worker)`` deliveries, in the order the server processes them."""

    worker: torch.Tensor  # (N,) int64: who delivers
    time: torch.Tensor  # (N,) float64: when (simulated time)
    count: torch.Tensor  # (N,) int64: the worker's k-th vector, 1-based
    read: torch.Tensor  # (N,) int64: deliveries processed when its model was read


def worker_means(
    n_honest: int,
    n_byzantine: int,
    straggler_fraction: float = 0.0,
    straggler_slowdown: float = 1.0,
    byzantine_speed: float = 1.0,
) -> torch.Tensor:
    """(n_honest + n_byzantine,) mean compute times (see the module docstring)."""
    means = torch.ones(n_honest + n_byzantine, dtype=torch.float64)
    n_slow = int(round(straggler_fraction * n_honest))
    if n_slow:
        means[n_honest - n_slow : n_honest] = straggler_slowdown
    means[n_honest:] = 1.0 / byzantine_speed
    return means


def _draw(seed: int, worker: int, block: int, size: int, kind: str) -> torch.Tensor:
    if kind == "fixed":
        return torch.ones(size, dtype=torch.float64)
    gen = torch.Generator().manual_seed((seed * 1_000_003 + worker * 7_919 + block) ^ _BLOCK_SEED)
    return torch.empty(size, dtype=torch.float64).exponential_(generator=gen)


def schedule(total: int, means: torch.Tensor, kind: str = "exponential", seed: int = 0) -> Arrivals:
    """The first ``total`` deliveries of workers with compute-time ``means``."""
    if kind not in ("exponential", "fixed"):
        raise ValueError(f"schedule: expected kind 'exponential' or 'fixed', got {kind!r}")
    if total < 1:
        raise ValueError(f"schedule: expected total >= 1, got {total}")
    n = means.numel()
    rate = 1.0 / means
    # enough draws per worker to cover its share of ``total``, doubled until they do
    per = (rate / rate.sum() * total * 1.5 + 8).ceil().long()
    blocks: list[list[torch.Tensor]] = [[] for _ in range(n)]
    while True:
        for w in range(n):  # set-up: a few draws per worker
            while len(blocks[w]) * _BLOCK < int(per[w]):
                blocks[w].append(_draw(seed, w, len(blocks[w]), _BLOCK, kind))
        times = [torch.cat(b).cumsum(0) * float(means[w]) for w, b in enumerate(blocks)]
        flat = torch.cat(times)
        if flat.numel() >= total:
            order = torch.sort(flat, stable=True).indices[:total]
            cutoff = flat[order[-1]]
            if all(bool(t[-1] > cutoff) for t in times):
                break
        per = per * 2
    sizes = torch.tensor([t.numel() for t in times])
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), sizes.cumsum(0)[:-1]])
    owner = torch.repeat_interleave(torch.arange(n), sizes)
    worker = owner[order]
    count = order - offsets[worker] + 1
    position = torch.full((flat.numel(),), -1, dtype=torch.int64)
    position[order] = torch.arange(total)
    prev = torch.where(count > 1, order - 1, order)
    read = torch.where(count > 1, position[prev] + 1, torch.zeros_like(order))
    return Arrivals(worker=worker, time=flat[order], count=count, read=read)
