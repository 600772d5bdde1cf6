"""The plain mean: the non-robust baseline (one Byzantine input moves it arbitrarily)."""

from __future__ import annotations

import torch

from byzance.aggregators.base import Aggregator


class Average(Aggregator):
    """Coordinate-wise mean ``(1/n) sum_i x_i``. Not robust: tolerates f = 0."""

    name = "average"

    def aggregate(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=0)
