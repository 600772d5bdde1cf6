"""Adaptive Robust Clipping (Allouah et al., arXiv:2405.14432, ICLR 2025)."""

from __future__ import annotations

import math

import torch

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
    with rescaling.
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
        n = x.shape[0]
        k = self.num_clipped(n)
        if k == 0:
            return x.clone()
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
        return x * factor.to(x.dtype)[:, None]
