"""Counter-based batch sampling: each worker's batch depends only on integers, never on
which other workers are computed together.

Index j of worker w at (round t, local step s) is ``hash(seed, w, t, s, j) mod |shard_w|``
(sampling with replacement): a per-worker (e.g. Ray) engine reproduces the vectorised batches
exactly, and it runs as a few elementwise integer ops on the whole (k, B) block. ``Shards``
holds the workers' shards as one padded index matrix.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

_MASK32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """``(x * c) mod 2**32`` for 0 <= x < 2**32 in int64 without overflow."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _MASK32


def hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mixer (the "lowbias32" constants) applied elementwise to int64 input."""
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def counter_random(seed: int, stream: torch.Tensor, *counters: int | torch.Tensor) -> torch.Tensor:
    """Uniform 32-bit integers (int64 tensor) determined by (seed, stream, counters...).

    ``stream`` and tensor counters broadcast; the result has their broadcast shape.
    """
    h = hash32(stream.to(torch.int64) + hash32(torch.tensor(seed & _MASK32)))
    for c in counters:
        c_t = c if isinstance(c, torch.Tensor) else torch.tensor(int(c))
        h = hash32(h ^ hash32(c_t.to(torch.int64, copy=False).to(h.device) + 0x9E3779B9))
    return h


class Shards:
    """Workers' data shards as one padded index matrix, for one-op batch gathering.

    ``index[w, :sizes[w]]`` are the global training indices of worker w's shard.
    """

    def __init__(self, shards: Sequence[torch.Tensor], device: torch.device | str = "cpu"):
        if len(shards) == 0:
            raise ValueError("Shards: need at least one worker shard")
        sizes = [int(s.numel()) for s in shards]
        empty = [w for w, s in enumerate(sizes) if s == 0]
        if empty:
            raise ValueError(
                f"Shards: worker(s) {empty} received no training data (sizes {sizes}); use "
                "fewer workers or a less extreme heterogeneity (e.g. larger alpha)"
            )
        width = max(sizes)
        index = torch.zeros(len(shards), width, dtype=torch.int64)
        for w, s in enumerate(shards):  # setup only, once per run
            index[w, : sizes[w]] = s.to(torch.int64).cpu()
        self.index = index.to(device)
        self.sizes = torch.tensor(sizes, dtype=torch.int64, device=device)

    def __len__(self) -> int:
        return self.index.shape[0]

    def sample_indices(
        self, seed: int, workers: torch.Tensor, round_: int, step: int, batch_size: int
    ) -> torch.Tensor:
        """(k, batch_size) global indices: the batches of ``workers`` at (round, local step)."""
        workers = workers.to(self.index.device)
        local = local_positions(seed, workers, round_, step, batch_size, self.sizes[workers])
        return self.index[workers[:, None], local]


def local_positions(
    seed: int,
    workers: torch.Tensor,
    round_: int,
    step: int,
    batch_size: int,
    shard_sizes: torch.Tensor,
) -> torch.Tensor:
    """(k, batch_size) positions inside each worker's shard, sampled with replacement from
    the counter hash of (seed, worker, round, step, position): the same rows for a worker
    whether it is computed alone (Ray actor) or with all others (simulator)."""
    pos = torch.arange(batch_size, device=workers.device)
    r = counter_random(seed, workers[:, None], round_, step, pos[None, :])
    return r % shard_sizes.to(workers.device)[:, None]


def poison_seed(seed: int, worker: int, round_: int, step: int) -> int:
    """Seed of the generator a data-poisoning worker uses at (round, local step)."""
    return int(counter_random(seed, torch.tensor(worker), round_, step, 7919))
