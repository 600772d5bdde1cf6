"""Nearest Neighbor Mixing (Allouah et al., AISTATS 2023)."""

from __future__ import annotations

import torch

from byzance.aggregators._distances import (
    ExactGram,
    nearest,
    nearest_weights,
    sq_distances,
    weighted_rows,
)
from byzance.aggregators._distances import gram as _gram  # `gram` names the argument below
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
    and the output's geometry is ``W G W^T`` (W the mixing matrix). In a ``Chain`` in front of
    a coordinate-wise rule (Median, TrimmedMean, Meamed) the product is not formed: the rule
    reduces ``W @ x`` block by block (``mixing``, ``aggregate_mixed``).
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

    def _weights(
        self, x: torch.Tensor, gram: ExactGram | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The (n, n) mixing matrix (x's dtype) and the bad-row mask."""
        g, bad = _gram(x, gram)
        return nearest_weights(g, bad, x.shape[0] - self.f, x.dtype, x.device), bad

    def mixing(
        self, x: torch.Tensor, gram: ExactGram | None = None, *, geometry: bool = True
    ) -> tuple[torch.Tensor, ExactGram | None]:
        """The mixing matrix W (n x n, x's dtype; row i puts ``1 / (n - f)`` on each of the
        neighbours of input i) and the exact geometry of the output (``gram.linear(W)``; None
        without ``gram`` or with ``geometry=False``), without forming the output:
        ``transform(x)`` is ``W @ x`` with zero weights skipped (``_distances.weighted_rows``).
        ``Chain`` hands W to a rule that reduces ``W @ x`` on the fly (``aggregate_mixed`` of
        the coordinate-wise rules)."""
        w, _ = self._weights(x, gram)
        return w, (gram.linear(w) if gram is not None and geometry else None)

    def transform_with_gram(
        self, x: torch.Tensor, gram: ExactGram | None
    ) -> tuple[torch.Tensor, ExactGram | None]:
        w, bad = self._weights(x, gram)
        return weighted_rows(x, w, bad), (None if gram is None else gram.linear(w))
