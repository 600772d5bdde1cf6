"""Centered clipping (Karimireddy, He, Jaggi, ICML 2021)."""

from __future__ import annotations

from typing import Any

import torch

from byzance.aggregators._coordinate import coordinate_median
from byzance.aggregators._distances import centred_gram
from byzance.aggregators.base import Aggregator
from byzance.aggregators.geometric_median import combine, finite_rows
from byzance.validation import Integer, OptionalOf, Real, Vector, check_param


class CenteredClipping(Aggregator):
    """Centered clipping (Karimireddy, He, Jaggi, ICML 2021, "Learning from history for
    Byzantine robust optimization").

    Starting from ``v_0``, repeat ``iterations`` times:
    ``v <- v + (1/n) sum_i clip_tau(x_i - v)``, ``clip_tau(u) = u * min(1, tau / ||u||)``.
    Called on its own (``cc(x)``), ``v_0`` is ``center`` when given and the coordinate-wise
    median of the inputs otherwise. In training, the paper's ``v_0`` is the previous round's
    aggregate: ``step(x, state)`` starts from ``state["center"]`` (``init_state()``:
    ``center``, then the median in the first round) and returns its output as the next
    centre; every engine's server and every decentralised node run the rule that way. Each
    iteration works on a float64 Gram matrix of ``x_i - v_0``, so the inputs are read twice
    whatever the number of iterations.

    Non-finite inputs: a vector with a NaN/inf entry contributes 0 (its clipped difference
    ``u * tau / ||u||`` has no finite limit; 0 keeps v unchanged by it); it still counts in the
    1/n. Needs n >= 1, tau > 0, iterations >= 1.

    Autograd: for an input (or ``center``) that requires grad the value is the same and the
    gradient is that of the iterations written on the vectors (``_direct``), exact.
    """

    name = "centered_clipping"

    def __init__(
        self, tau: float = 10.0, iterations: int = 1, center: torch.Tensor | None = None
    ) -> None:
        self.tau = check_param(self, "tau", tau, Real(low=0, closed="neither"))
        self.iterations = check_param(self, "iterations", iterations, Integer(low=1))
        self.center = check_param(self, "center", center, OptionalOf(Vector()))

    def init_state(self) -> dict[str, torch.Tensor | None]:
        return {"center": self.center}

    def step(self, x: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """The aggregate from the previous one, which becomes the next centre."""
        center = None if state is None else state.get("center")
        out = self._from(x, center)
        return out, {"center": out}

    def aggregate(self, x: torch.Tensor) -> torch.Tensor:
        return self._from(x, self.center)

    def _from(self, x: torch.Tensor, center: torch.Tensor | None) -> torch.Tensor:
        if torch.is_grad_enabled() and (x.requires_grad or getattr(center, "requires_grad", 0)):
            # autograd: the value as without it, the gradient of the same iterations written on
            # the vectors (differentiable; the Gram form's scalars leave the graph)
            plain = None if center is None else torch.as_tensor(center).detach()
            value = self._from(x.detach(), plain)
            direct = self._direct(x, center)
            return value + (direct - direct.detach())
        n, d = x.shape
        if center is not None:
            v0 = torch.as_tensor(center).to(device=x.device, dtype=x.dtype)
            if v0.shape != (d,):
                raise ValueError(
                    f"CenteredClipping: center has shape {tuple(v0.shape)}, expected ({d},)"
                )
        else:
            v0 = coordinate_median(x)
        if not bool(torch.isfinite(v0).all()):
            raise ValueError("CenteredClipping: the starting point (center) is not finite")
        g = centred_gram(x, v0)
        keep = finite_rows(g)
        gk = g[keep][:, keep].cpu()
        c = clip_iterations(gk, n, self.tau, self.iterations)
        # v = v0 + sum_i c_i (x_i - v0)
        return v0 * (1 - float(c.sum())) + combine(x, c, keep) if bool(keep.any()) else v0

    def _direct(self, x: torch.Tensor, center: Any) -> torch.Tensor:
        """The iterations on the vectors themselves (O(iterations n d), for autograd): the
        finite rows are clipped around v, every row counts in the 1/n."""
        n = x.shape[0]
        if center is None:
            v = coordinate_median(x)
        else:
            v = torch.as_tensor(center).to(device=x.device, dtype=x.dtype)
        keep = torch.isfinite(x).all(dim=1)
        rows = x if bool(keep.all()) else x[keep]
        for _ in range(self.iterations):
            u = rows - v
            norm = torch.linalg.vector_norm(u, dim=1)
            scale = self.tau / norm.clamp_min(self.tau)  # min(1, tau / norm), 0-safe
            v = v + (u * scale[:, None]).sum(dim=0) / n
        return v


def clip_iterations(g: torch.Tensor, n: int, tau: float, iterations: int) -> torch.Tensor:
    """Coefficients c with ``v = v0 + sum_i c_i y_i`` after the iterations (g: Gram of y)."""
    m = g.shape[0]
    c = torch.zeros(m, dtype=g.dtype)
    for _ in range(iterations):
        gc = g @ c
        # ||y_i - Y^T c||^2
        dist = (c @ gc - 2 * gc + torch.diagonal(g)).clamp_min(0).sqrt()
        scale = torch.clamp(tau / dist, max=1.0)  # dist = 0 -> inf -> 1
        c = c * (1 - float(scale.sum()) / n) + scale / n
    return c
