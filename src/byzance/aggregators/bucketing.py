"""Bucketing (Karimireddy, He, Jaggi, ICLR 2022), a pre-aggregator."""

from __future__ import annotations

import math
from typing import Any

import torch

from byzance.aggregators._distances import ExactGram
from byzance.aggregators.base import PreAggregator
from byzance.validation import Integer, check_param

#: the seeds a ``torch.Generator`` accepts
SEED = Integer(low=0, high=2**64 - 1)


class Bucketing(PreAggregator):
    """Random bucketing (Karimireddy, He, Jaggi, ICLR 2022, "Byzantine-robust learning on
    heterogeneous datasets via bucketing").

    Draw a uniformly random permutation pi of the n inputs, split it into consecutive buckets
    of size s (the last one smaller when s does not divide n) and output the mean of each
    bucket: ``y_j = mean{x_pi(i) : i in [j s, (j+1) s)}``, giving ``ceil(n/s)`` vectors.
    The permutation comes from a ``torch.Generator`` seeded with ``seed``: called on its own,
    the object keeps it and each call draws a new permutation (``reset()`` restarts the
    sequence); in training the generator's state is explicit (``init_state``,
    ``transform_step``), carried and checkpointed by the engine. A non-finite input only
    affects its own bucket. Needs s >= 1.
    An exact geometry of the inputs is passed on as ``W G W^T`` (W: the bucket averages).
    """

    name = "bucketing"

    def __init__(self, s: int = 2, seed: int = 0) -> None:
        self.s = check_param(self, "s", s, Integer(low=1))
        self.seed = check_param(self, "seed", seed, SEED)
        self.reset()

    def reset(self) -> None:
        """Restart the sequence of permutations."""
        self._generator = torch.Generator().manual_seed(self.seed)

    def output_size(self, n: int) -> int:
        return math.ceil(n / self.s)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        return self.transform_with_gram(x, None)[0]

    def init_state(self) -> torch.Tensor:
        """The state of a generator seeded with ``seed`` (the first permutation to draw)."""
        return torch.Generator().manual_seed(self.seed).get_state()

    def transform_step(self, x: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """Bucket with the generator state ``state``; return the state after the draw."""
        gen = torch.Generator()
        gen.set_state(state)
        out = self._bucket(x, None, gen)[0]
        return out, gen.get_state()

    def transform_with_gram(
        self, x: torch.Tensor, gram: ExactGram | None
    ) -> tuple[torch.Tensor, ExactGram | None]:
        return self._bucket(x, gram, self._generator)

    def _bucket(
        self, x: torch.Tensor, gram: ExactGram | None, generator: torch.Generator
    ) -> tuple[torch.Tensor, ExactGram | None]:
        n = x.shape[0]
        m = self.output_size(n)
        perm = torch.randperm(n, generator=generator)
        bucket = torch.empty(n, dtype=torch.long)
        bucket[perm] = torch.arange(n) // self.s  # input perm[i] goes to bucket i // s
        counts = torch.bincount(bucket, minlength=m).to(x.dtype)
        bucket = bucket.to(x.device)
        out = torch.zeros(m, x.shape[1], dtype=x.dtype, device=x.device)
        out.index_add_(0, bucket, x)
        out = out / counts.to(x.device)[:, None]
        if gram is None:
            return out, None
        w = torch.zeros(m, n, dtype=torch.float64)
        w[bucket.cpu(), torch.arange(n)] = 1.0
        return out, gram.linear(w / w.sum(dim=1, keepdim=True))
