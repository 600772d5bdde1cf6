"""Krum and Multi-Krum (Blanchard, El Mhamdi, Guerraoui, Stainer, NeurIPS 2017)."""

from __future__ import annotations

import torch

from byzance.aggregators._distances import (
    ExactGram,
    krum_scores,
    lowest,
    mean_rows,
    sq_distances,
)
from byzance.aggregators.base import Aggregator, check_f, require


class Krum(Aggregator):
    r"""Krum: the input closest to its neighbours.

    Blanchard et al., "Machine Learning with Adversaries: Byzantine Tolerant Gradient Descent",
    NeurIPS 2017. With :math:`N_i` the :math:`n - f - 2` nearest inputs to :math:`x_i` among the
    others,

    .. math:: \mathrm{score}(i) = \sum_{j \in N_i} \|x_i - x_j\|^2, \qquad
              \mathrm{Krum}(x_1..x_n) = x_{i^*}, \ i^* = \arg\min_i \mathrm{score}(i)

    (ties: smallest index). Requires :math:`n \ge 2f + 3`. Inputs with a non-finite entry are
    at distance :math:`+\infty` from everything and are never selected. ``gram``: an exact
    geometry of the inputs to take the distances from (``ExactGram``).
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
        i = int(torch.argmin(self.scores(x, gram)))
        return x[i].clone()


class MultiKrum(Aggregator):
    r"""Multi-Krum: the average of the :math:`m` inputs with the best Krum scores.

    Blanchard et al., NeurIPS 2017 (Section 5), with the Krum score of :class:`Krum`
    (:math:`n - f - 2` nearest others). :math:`m` defaults to :math:`n - f`; ties in the
    ranking are broken by smallest index. Requires :math:`n \ge 2f + 3` and
    :math:`1 \le m \le n`. ``m=1`` is Krum.
    """

    name = "multikrum"

    def __init__(self, f: int = 0, m: int | None = None) -> None:
        self.f = check_f("MultiKrum", f)
        if m is not None:
            if isinstance(m, bool) or not isinstance(m, int):
                raise TypeError(f"MultiKrum: m must be an int or None, got {type(m).__name__}")
            if m < 1:
                raise ValueError(f"MultiKrum requires m >= 1, got m={m}")
        self.m = m

    def _m(self, n: int) -> int:
        return n - self.f if self.m is None else self.m

    def check(self, n: int) -> None:
        require("MultiKrum", n >= 2 * self.f + 3, "n >= 2f + 3", n=n, f=self.f)
        require("MultiKrum", self._m(n) <= n, "m <= n", m=self._m(n), n=n)

    def aggregate(self, x: torch.Tensor, gram: ExactGram | None = None) -> torch.Tensor:
        n = x.shape[0]
        d2, bad = sq_distances(x, gram)
        scores = krum_scores(d2, n - self.f - 2)
        chosen = lowest(scores, self._m(n))
        return mean_rows(x, chosen[None, :], bad)[0]
