"""Bulyan (El Mhamdi, Guerraoui, Rouault, ICML 2018) and Multi-Bulyan (El Mhamdi et al. 2020)."""

from __future__ import annotations

import torch

from byzance.aggregators import _coordinate
from byzance.aggregators._distances import (
    ExactGram,
    krum_ranking,
    krum_scores,
    sq_distances,
    weighted_rows,
)
from byzance.aggregators.base import Aggregator, check_f, require


def iterated_krum(
    d2: torch.Tensor, f: int, theta: int, multi: bool
) -> tuple[list[int], torch.Tensor]:
    """Select ``theta`` inputs by Krum applied repeatedly to the remaining set.

    At step t the remaining set R has r = n - t inputs; Krum scores are computed within R with
    ``max(r - f - 2, 1)`` neighbours (one distance matrix, masked, never recomputed) and the
    best-scored input is removed from R (exact ties: ``krum_ranking``, by the distances to the
    next nearest inputs of R, then by index). Returns the removed indices and a (theta, n)
    weight matrix: row t selects the Krum winner (``multi=False``) or averages the
    ``max(r - f, 1)`` best-scored inputs of R (``multi=True``, Multi-Krum with m = r - f).
    """
    n = d2.shape[0]
    active = torch.ones(n, dtype=torch.bool, device=d2.device)
    w = torch.zeros(theta, n, dtype=torch.float64, device=d2.device)
    chosen: list[int] = []
    for t in range(theta):  # sequential by definition; O(n^2 log n) per step
        r = n - t
        k = max(r - f - 2, 1)
        scores = krum_scores(d2, k, active)
        m = max(r - f, 1) if multi else 1
        ranked = krum_ranking(d2, scores, k, m, active)
        best = int(ranked[0])
        if multi:
            w[t, ranked] = 1.0 / m
        else:
            w[t, best] = 1.0
        chosen.append(best)
        active[best] = False
    return chosen, w


class Bulyan(Aggregator):
    r"""Bulyan: iterated Krum selection, then a coordinate-wise trimmed average around the median.

    El Mhamdi, Guerraoui, Rouault, "The Hidden Vulnerability of Distributed Learning in
    Byzantium", ICML 2018. With :math:`\theta = n - 2f` and :math:`\beta = \theta - 2f`:

    1. Selection: starting from all inputs, :math:`\theta` times apply Krum (score = sum of
       squared distances to the :math:`\max(r - f - 2, 1)` nearest others within the
       :math:`r` remaining inputs) and move the selected input to the selection set :math:`S`.
    2. Aggregation: for each coordinate k, the mean of the :math:`\beta` values
       :math:`\{y_k : y \in S\}` closest to their median
       (``_coordinate.closest_to_median_mean``).

    Small remaining sets. The paper applies Krum to the remaining set at every step: a selected
    vector is one whose nearest remaining neighbours are close to it, so that with an honest
    majority in the remaining set (at most f Byzantine among the :math:`r \ge 2f + 1` inputs
    left at any step when :math:`n \ge 4f + 3`) it stays near the honest ones. The last step
    sees :math:`r = n - \theta + 1 = 2f + 1` inputs, where Krum's :math:`r - f - 2` neighbours
    are :math:`f - 1`: none for f = 1, every score would be 0 and the order of the inputs would
    pick the vector (an outlier in the first row always selected). We score with at least one
    neighbour (the distance to the nearest remaining input), which keeps that meaning.
    Exact ties of the best score (with one neighbour, the two inputs of the closest pair
    always tie) are broken by the distances to the next nearest remaining inputs, then by
    index (``_distances.krum_ranking``), so the output does not depend on the order of the
    inputs except between identical inputs (and, at f = 0, between the last two remaining
    inputs, which nothing distinguishes; Bulyan then selects every input anyway).

    Requires :math:`n \ge 4f + 3`. Non-finite inputs are never selected (distance
    :math:`+\infty`) while enough finite inputs remain.
    """

    name = "bulyan"
    _multi = False

    def __init__(self, f: int = 0) -> None:
        self.f = check_f(type(self).__name__, f)

    def check(self, n: int) -> None:
        require(type(self).__name__, n >= 4 * self.f + 3, "n >= 4f + 3", n=n, f=self.f)

    def select(self, x: torch.Tensor, gram: ExactGram | None = None) -> torch.Tensor:
        """The (theta, d) selected vectors (phase 1; distances from ``gram`` when given)."""
        n = x.shape[0]
        d2, bad = sq_distances(x, gram)
        chosen, w = iterated_krum(d2, self.f, n - 2 * self.f, self._multi)
        if not self._multi:
            return x[torch.tensor(chosen, device=x.device)]
        return weighted_rows(x, w, bad)

    def aggregate(self, x: torch.Tensor, gram: ExactGram | None = None) -> torch.Tensor:
        y = self.select(x, gram)
        beta = y.shape[0] - 2 * self.f
        return _coordinate.closest_to_median_mean(y, beta)


class MultiBulyan(Bulyan):
    r"""Multi-Bulyan: Bulyan whose selection keeps Multi-Krum averages instead of single inputs.

    El Mhamdi, Guerraoui, Rouault, "Fast and Robust Distributed Learning in High Dimension",
    SRDS 2020. With :math:`\theta = n - 2f`, :math:`\beta = \theta - 2f`: for
    :math:`t = 1..\theta`, on the remaining set :math:`R` (:math:`r = |R|`, initially all
    inputs) compute the Krum scores within R (:math:`\max(r - f - 2, 1)` nearest others, as
    :class:`Bulyan`); the t-th selected vector is the Multi-Krum average of the
    :math:`m = r - f` best-scored inputs of R, and the single best-scored input (Krum's
    choice) is removed from R. The output is, per coordinate, the mean of the :math:`\beta`
    selected values closest to their median. Requires :math:`n \ge 4f + 3`. Ties are broken
    as in :class:`Bulyan` (at f = 0 the last two remaining inputs tie and the smaller index is
    removed: the one output that then depends on the order of distinct inputs).
    """

    name = "multibulyan"
    _multi = True
