"""Krum and Multi-Krum (Blanchard, El Mhamdi, Guerraoui, Stainer, NeurIPS 2017)."""

from __future__ import annotations

import torch

from byzance.aggregators._distances import (
    ExactGram,
    krum_ranking,
    krum_scores,
    mean_rows,
    sq_distances,
)
from byzance.aggregators.base import Aggregator, check_f, require
from byzance.validation import Integer, OptionalOf, check_param


class Krum(Aggregator):
    r"""Krum: the input closest to its neighbours.

    Blanchard et al., "Machine Learning with Adversaries: Byzantine Tolerant Gradient Descent",
    NeurIPS 2017. With :math:`N_i` the :math:`n - f - 2` nearest inputs to :math:`x_i` among the
    others,

    .. math:: \mathrm{score}(i) = \sum_{j \in N_i} \|x_i - x_j\|^2, \qquad
              \mathrm{Krum}(x_1..x_n) = x_{i^*}, \ i^* = \arg\min_i \mathrm{score}(i)

    (exact ties: the smaller distance to the next nearest inputs, then the smallest index;
    see ``_distances.krum_ranking``). Requires :math:`n \ge 2f + 3`, so there is at least one
    neighbour. Inputs with a non-finite entry are at distance :math:`+\infty` from everything
    and are never selected. ``gram``: an exact geometry of the inputs to take the distances
    from (``ExactGram``).
    """

    name = "krum"

    def __init__(self, f: int = 0) -> None:
        self.f = check_f("Krum", f)

    def check(self, n: int) -> None:
        require("Krum", n >= 2 * self.f + 3, "n >= 2f + 3", n=n, f=self.f)

    def scores(self, x: torch.Tensor, gram: ExactGram | None = None) -> torch.Tensor:
        """The (n,) float64 Krum scores of the rows of ``x``."""
        d2, _ = sq_distances(x, gram)
        return krum_scores(d2, x.shape[0] - self.f - 2)

    def aggregate(self, x: torch.Tensor, gram: ExactGram | None = None) -> torch.Tensor:
        d2, _ = sq_distances(x, gram)
        k = x.shape[0] - self.f - 2
        i = int(krum_ranking(d2, krum_scores(d2, k), k, 1)[0])
        return x[i].clone()


class MultiKrum(Aggregator):
    r"""Multi-Krum: the average of the :math:`m` inputs with the best Krum scores.

    Blanchard et al., NeurIPS 2017 (Section 5), with the Krum score of :class:`Krum`
    (:math:`n - f - 2` nearest others). :math:`m` defaults to :math:`n - f`; ties in the
    ranking are broken as Krum's. Requires :math:`n \ge 2f + 3` and
    :math:`1 \le m \le n`. ``m=1`` is Krum.
    """

    name = "multikrum"

    def __init__(self, f: int = 0, m: int | None = None) -> None:
        self.f = check_f("MultiKrum", f)
        self.m = check_param(self, "m", m, OptionalOf(Integer(low=1)))

    def _m(self, n: int) -> int:
        return n - self.f if self.m is None else self.m

    def check(self, n: int) -> None:
        require("MultiKrum", n >= 2 * self.f + 3, "n >= 2f + 3", n=n, f=self.f)
        require("MultiKrum", self._m(n) <= n, "m <= n", m=self._m(n), n=n)

    def aggregate(self, x: torch.Tensor, gram: ExactGram | None = None) -> torch.Tensor:
        n = x.shape[0]
        d2, bad = sq_distances(x, gram)
        k = n - self.f - 2
        chosen = torch.sort(krum_ranking(d2, krum_scores(d2, k), k, self._m(n))).values
        return mean_rows(x, chosen[None, :], bad)[0]
