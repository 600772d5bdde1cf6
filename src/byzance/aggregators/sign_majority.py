"""Majority vote on signs (signSGD with majority vote)."""

from __future__ import annotations

import torch

from byzance.aggregators.base import Aggregator


class SignMajority(Aggregator):
    """Coordinate-wise majority vote of signs (Bernstein et al., ICML 2018 "signSGD:
    compressed optimisation for non-convex problems"; ICLR 2019 "signSGD with majority vote is
    communication efficient and fault tolerant").

    ``out[j] = sign(sum_i sign(x_i[j]))`` in {-1, 0, +1}, in the input's dtype. A NaN value
    casts no vote (counts as 0); ``+inf``/``-inf`` vote like any positive/negative value.
    Each input moves a coordinate's tally by at most 1, so f Byzantine inputs cannot flip a
    coordinate whose honest margin exceeds 2f. Needs n >= 1.
    """

    name = "sign_majority"

    def aggregate(self, x: torch.Tensor) -> torch.Tensor:
        # exact: a sum of at most 2^24 values in {-1, 0, 1} is exact in float32
        return torch.nansum(torch.sign(x), dim=0).sign()
