"""Adaptive Robust Clipping (Allouah et al., arXiv:2405.14432, ICLR 2025)."""

from __future__ import annotations

import math

import torch

from byzance.aggregators._distances import ExactGram
from byzance.aggregators.base import PreAggregator, check_f, require

INF = float("inf")


class ARC(PreAggregator):
    r"""ARC: clip the :math:`k = \lfloor 2 (f/n) (n - f) \rfloor` largest inputs to the norm of
    the :math:`(k+1)`-th largest.

    Allouah et al., "Adaptive Gradient Clipping for Robust Federated Learning", ICLR 2025
    (arXiv:2405.14432, first titled "Boosting Robustness by Clipping Gradients in Distributed
    Learning"). With :math:`\pi` sorting the inputs by decreasing norm
    (ties: smallest index first) and :math:`C = \|x_{\pi(k+1)}\|`:

    .. math:: \mathrm{ARC}(x_1..x_n)_i = \min\left(1, \frac{C}{\|x_i\|}\right) x_i
              \ \text{for the k inputs of largest norm, } x_i \text{ otherwise.}

    Outputs n vectors. Requires :math:`n > 2f` (k < n then). Inputs with a non-finite entry
    rank as largest and, having no usable direction, are replaced by the zero
    vector. Norms that overflow are recomputed
    with rescaling. With an exact geometry of the inputs (``transform_with_gram``) the norms
    come from it (non-finite there: a non-finite input), and it is passed on (``D G D``).
    """

    name = "arc"

    def __init__(self, f: int = 0) -> None:
        self.f = check_f("ARC", f)

    def check(self, n: int) -> None:
        require("ARC", n > 2 * self.f, "n > 2f", n=n, f=self.f)

    def num_clipped(self, n: int) -> int:
        """k = floor(2 (f / n) (n - f))."""
        return math.floor(2 * self.f * (n - self.f) / n)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        return self.transform_with_gram(x, None)[0]

    def transform_with_gram(
        self, x: torch.Tensor, gram: ExactGram | None
    ) -> tuple[torch.Tensor, ExactGram | None]:
        n = x.shape[0]
        k = self.num_clipped(n)
        if k == 0:
            return x.clone(), gram
        if gram is not None:
            gram.check(n)
            norms = gram.sq_norms().clamp_min(0).sqrt().to(x.device)
            finite = torch.isfinite(norms) & torch.isfinite(x).all(dim=1)
            norms = torch.where(finite, norms, torch.full_like(norms, INF))
            odd = torch.zeros(n, dtype=torch.bool, device=x.device)
        else:
            norms = torch.linalg.vector_norm(x, dim=1).double()
            odd = ~torch.isfinite(norms)
            finite = torch.ones(n, dtype=torch.bool, device=x.device)
        if bool(odd.any()):  # overflow or non-finite entries: rescale those rows only
            rows = torch.nonzero(odd).flatten()
            sub = x[rows].double()
            finite[rows] = torch.isfinite(sub).all(dim=1)
            peak = sub.abs().amax(dim=1).clamp_min(torch.finfo(torch.float64).tiny)
            rescaled = torch.linalg.vector_norm(sub / peak[:, None], dim=1) * peak
            norms[rows] = torch.where(finite[rows], rescaled, torch.full_like(rescaled, INF))
        order = torch.sort(-norms, stable=True).indices
        c = norms[order[k]]
        factor = torch.ones(n, dtype=torch.float64, device=x.device)
        top = order[:k]
        factor[top] = torch.where(norms[top] > c, c / norms[top], 1.0)
        if not bool(finite.all()):
            x = torch.where(finite[:, None], x, torch.zeros((), dtype=x.dtype, device=x.device))
            factor = torch.where(finite, factor, torch.zeros_like(factor))
        y = x * factor.to(x.dtype)[:, None]
        return y, (None if gram is None else gram.linear(torch.diag(factor)))
