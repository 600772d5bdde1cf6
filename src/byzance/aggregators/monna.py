"""MoNNA (Farhadkhani, Guerraoui, Gupta, Pinot, ICML 2023)."""

from __future__ import annotations

import torch

from byzance.aggregators._distances import (
    ExactGram,
    lowest,
    sq_distances,
    sq_distances_to,
    weighted_rows,
)
from byzance.aggregators.base import Aggregator, check_f, require
from byzance.validation import Integer, check_param


class MoNNA(Aggregator):
    r"""MoNNA: the mean of the n - f nearest neighbours of a trusted reference input.

    Farhadkhani, Guerraoui, Gupta, Pinot, "Robust Collaborative Learning with Linear Gradient
    Overhead", ICML 2023. With :math:`r` the index of the reference (the server's / a trusted
    worker's own vector) and :math:`N_r` the :math:`n - f` inputs nearest to :math:`x_r`,
    itself included (ties: smallest index):

    .. math:: \mathrm{MoNNA}(x_1..x_n) = \frac{1}{n - f} \sum_{j \in N_r} x_j

    Requires :math:`n > 2f` and :math:`0 \le r < n`. Only the n distances to :math:`x_r` are
    needed: O(n d), computed directly (no Gram matrix). Inputs with a non-finite entry (or an
    overflowing distance) are at distance :math:`+\infty` and ranked last (after inputs at a
    finite distance, then by index); if the reference itself is not finite, the first n - f
    finite inputs are averaged. ``gram`` (an ``ExactGram`` of the inputs): the distances to
    the reference come from it instead.
    """

    name = "monna"

    def __init__(self, f: int = 0, reference: int = 0) -> None:
        self.f = check_f("MoNNA", f)
        self.reference = check_param(self, "reference", reference, Integer(low=0))

    def check(self, n: int) -> None:
        require("MoNNA", n > 2 * self.f, "n > 2f", n=n, f=self.f)
        require("MoNNA", self.reference < n, "reference < n", reference=self.reference, n=n)

    def aggregate(self, x: torch.Tensor, gram: ExactGram | None = None) -> torch.Tensor:
        n = x.shape[0]
        if gram is None:
            d2 = sq_distances_to(x, self.reference)  # +inf for rows not finite or too far
        else:
            d2 = sq_distances(x, gram)[0][self.reference].to(x.device)
        if bool(torch.isfinite(d2[self.reference])):
            bad = ~torch.isfinite(d2)
            key = d2
        else:  # the reference itself is not finite: fall back to the first finite inputs
            bad = ~torch.isfinite(x).all(dim=1)
            key = bad.double()
        chosen = lowest(key, n - self.f)
        w = torch.zeros(1, n, dtype=x.dtype, device=x.device)
        w[0, chosen] = 1.0 / (n - self.f)
        return weighted_rows(x, w, bad)[0]
