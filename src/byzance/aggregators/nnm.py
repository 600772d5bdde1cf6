"""Nearest Neighbor Mixing (Allouah et al., AISTATS 2023)."""

from __future__ import annotations

import torch

from byzance.aggregators._distances import (
    ExactGram,
    nearest,
    selection_weights,
    sq_distances,
    weighted_rows,
)
from byzance.aggregators.base import PreAggregator, check_f, require


class NNM(PreAggregator):
    r"""Nearest Neighbor Mixing: replace each input by the mean of its n - f nearest neighbours.

    Allouah, Farhadkhani, Guerraoui, Gupta, Pinot, Stephan, "Fixing by Mixing: A Recipe for
    Optimal Byzantine ML under Heterogeneity", AISTATS 2023:

    .. math:: \mathrm{NNM}(x_1..x_n)_i = \frac{1}{n - f} \sum_{j \in N_i} x_j

    where :math:`N_i` holds the :math:`n - f` inputs nearest to :math:`x_i`, itself included
    (ties: smallest index). Outputs n vectors. Requires :math:`n > 2f`. Computed from one Gram
    matrix and one (n, n) @ (n, d) product with the 0/1 selection matrix. Inputs with a
    non-finite entry are never a neighbour while n - f finite inputs exist (also for
    themselves: a non-finite input is replaced by the mean of n - f finite ones).
    With an exact geometry of the inputs (``transform_with_gram``) the neighbours come from it
    and the output's geometry is ``W G W^T`` (W the mixing matrix).
    """

    name = "nnm"

    def __init__(self, f: int = 0) -> None:
        self.f = check_f("NNM", f)

    def check(self, n: int) -> None:
        require("NNM", n > 2 * self.f, "n > 2f", n=n, f=self.f)

    def neighbours(self, x: torch.Tensor, gram: ExactGram | None = None) -> torch.Tensor:
        """(n, n - f) indices of each input's nearest neighbours."""
        d2, bad = sq_distances(x, gram)
        return nearest(d2, bad, x.shape[0] - self.f)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        return self.transform_with_gram(x, None)[0]

    def transform_with_gram(
        self, x: torch.Tensor, gram: ExactGram | None
    ) -> tuple[torch.Tensor, ExactGram | None]:
        n = x.shape[0]
        d2, bad = sq_distances(x, gram)
        w = selection_weights(nearest(d2, bad, n - self.f), n, x.dtype, x.device)
        y = weighted_rows(x, w, bad)
        return y, (None if gram is None else gram.linear(w))
