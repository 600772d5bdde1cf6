"""Geometric median, computed by the Weiszfeld algorithm on a Gram matrix."""

from __future__ import annotations

from typing import Any

import torch

from byzance.aggregators.base import Aggregator, check_f, require
from byzance.geometry import ExactGram, centre_index, centred_gram
from byzance.validation import Integer, Real, check_param


def finite_rows(g: torch.Tensor) -> torch.Tensor:
    """Boolean mask of the rows whose squared norm (diagonal of the Gram matrix) is finite."""
    return torch.isfinite(torch.diagonal(g))


def combine(x: torch.Tensor, coef: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``sum_i coef_i x_i`` over the kept rows, in the dtype of ``x`` (dropped rows excluded
    before the product, so that their non-finite entries never meet a zero weight)."""
    if bool(keep.all()):
        rows = x
    else:
        rows = x[keep.to(x.device)]
    return coef.to(device=x.device, dtype=x.dtype) @ rows


class GeometricMedian(Aggregator):
    """Geometric median ``argmin_z sum_i ||z - x_i||_2`` (RFA: Pillutla, Kakade, Harchaoui,
    IEEE TSP 2022, "Robust aggregation for federated learning").

    Computed with the Weiszfeld iteration ``z <- sum_i w_i x_i / sum_i w_i``,
    ``w_i = 1 / ||z - x_i||``, in the Vardi-Zhang form (PNAS 2000) that stays correct when z
    reaches a data point: if z coincides with data points of total multiplicity ``eta`` and
    ``r = ||sum_{x_i != z} (x_i - z) / ||x_i - z|| ||``, then z is optimal when ``r <= eta``,
    else ``z <- (1 - eta/r) T(z) + (eta/r) z`` with T the Weiszfeld map over the other points.
    z is kept as a combination of the inputs, so every iteration works on the float64 Gram
    matrix of ``x_i - v0`` only (O(n^2)); the inputs are read three times in total (norms to
    pick ``v0``, the finite input of median norm, which is the starting point and the origin of
    the Gram matrix; the centred Gram matrix; the final combination). Stops
    when an iteration moves z by at most ``tol`` times the mean distance
    ``(1/n) sum_i ||z - x_i||``, or after ``max_iter`` iterations. A point is treated as
    coinciding with z when its distance is at most ``eps`` times the largest distance.

    Non-finite inputs: a vector with a NaN/inf entry is dropped (its distance to any point is
    infinite, so no finite z is preferred by it); finite huge vectors are kept and only pull
    z by a bounded amount, as in exact arithmetic. With ``f`` given, requires n > 2f (the
    breakdown point is 1/2); the default f=0 only requires n >= 1.

    ``gram`` (an ``ExactGram`` of the inputs): ``v0`` and the Gram matrix come from it (the
    norms and inner products of the real vectors) and only the final combination reads ``x``.

    Autograd: for an input that requires grad, the output's gradient is the exact derivative
    of the geometric median (implicit function theorem on its optimality condition, see
    ``median_vjp``), not the derivative of the iterations.
    """

    name = "geometric_median"

    def __init__(
        self, f: int = 0, tol: float = 1e-10, max_iter: int = 1000, eps: float = 1e-12
    ) -> None:
        self.f = check_f("GeometricMedian", f)
        self.tol = check_param(self, "tol", tol, Real(low=0, closed="neither"))
        self.max_iter = check_param(self, "max_iter", max_iter, Integer(low=1))
        self.eps = check_param(self, "eps", eps, Real(low=0))

    def check(self, n: int) -> None:
        require("GeometricMedian", n > 2 * self.f, "n > 2f", n=n, f=self.f)

    def aggregate(self, x: torch.Tensor, gram: ExactGram | None = None) -> torch.Tensor:
        if x.requires_grad and torch.is_grad_enabled():
            z = self.aggregate(x.detach(), gram)
            return _ImplicitMedian.apply(x, z, max(self.eps, 1e-12))
        if gram is None:
            v0 = x[centre_index(x)]  # a finite input of median norm: start and Gram origin
            if not bool(torch.isfinite(v0).all()):
                v0 = torch.zeros_like(v0)
            g = centred_gram(x, v0)
        else:
            v0, g = _from_exact(x, gram)
        keep = finite_rows(g)
        if not bool(keep.any()):
            return torch.full_like(x[0], float("nan"))
        a = weiszfeld(g[keep][:, keep].cpu(), self.tol, self.max_iter, self.eps)
        return v0 * (1 - float(a.sum())) + combine(x, a, keep)  # v0 + sum_i a_i (x_i - v0)


class _ImplicitMedian(torch.autograd.Function):
    """``z`` (the geometric median of the rows of ``x``, computed without autograd) as a
    differentiable function of ``x``: backward is ``median_vjp``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, z: torch.Tensor, eps: float) -> torch.Tensor:
        ctx.save_for_backward(x, z)
        ctx.eps = eps
        return z.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        x, z = ctx.saved_tensors
        return median_vjp(x, z, grad, ctx.eps), None, None


def median_vjp(x: torch.Tensor, z: torch.Tensor, g: torch.Tensor, eps: float) -> torch.Tensor:
    """``g^T dz/dx_j`` for every row j: the gradient through the geometric median ``z``.

    z solves ``F(z, x) = sum_i (z - x_i) / r_i = 0`` (``r_i = ||z - x_i||``), so by the implicit
    function theorem ``dz/dx_j = H^{-1} P_j / r_j`` with ``P_j = I - v_j v_j^T`` (``v_j`` the unit
    vector of ``x_j - z``) and ``H = sum_i P_i / r_i = s I - V^T diag(1/r) V`` (``s = sum 1/r_i``).
    H is d x d; the Woodbury identity gives ``H^{-1} g = g / s + V^T M^{-1} V g / s^2`` with the
    n x n matrix ``M = diag(r) - V V^T / s`` (pseudo-inverse where singular: collinear inputs,
    where the median is not a smooth function of them). The gradients sum to ``g``
    (translation equivariance). If z is at an input (``r_j <= eps max r``), z = x_j locally:
    that row gets ``g`` (shared between coinciding rows). Rows with a non-finite entry get 0.
    """
    out = torch.zeros_like(x)
    keep = torch.isfinite(x).all(dim=1)
    if not bool(keep.any()) or not bool(torch.isfinite(z).all()):
        return out
    g64 = g.double()
    y = x.detach()[keep].double() - z.double()
    r = torch.linalg.vector_norm(y, dim=1)
    at = r <= eps * float(r.max())
    if bool(at.any()):
        rows = g64[None, :] / int(at.sum())
        grads = torch.where(at[:, None], rows, torch.zeros_like(y))
    else:
        v = y / r[:, None]
        s = (1.0 / r).sum()
        m = torch.diag(r) - (v @ v.T) / s
        q = g64 / s + v.T @ (torch.linalg.pinv(m, hermitian=True) @ (v @ g64)) / s**2
        grads = (q[None, :] - v * (v @ q)[:, None]) / r[:, None]
    out[keep] = grads.to(x.dtype)
    return out


def _from_exact(x: torch.Tensor, gram: ExactGram) -> tuple[torch.Tensor, torch.Tensor]:
    """``(v0, G)`` as ``aggregate`` computes them, from an exact geometry of the rows: v0 the
    good row of median norm (zero if none), G the Gram matrix of the rows centred on it."""
    gram.check(x.shape[0])
    a, bad = gram.centred()
    bad = bad | ~torch.isfinite(x).all(dim=1).to(a.device)
    norms = gram.sq_norms()
    good = torch.nonzero(~bad & torch.isfinite(norms)).flatten()
    if len(good) == 0:
        v0, r = torch.zeros_like(x[0]), None
        g = a.clone()  # origin 0: the true Gram matrix
        n = gram.n
        g = g + gram.a[:n, n][:, None] + gram.a[:n, n][None, :] + gram.a[n, n]
    else:
        order = torch.sort(norms[good], stable=True).indices
        r = int(good[order[(len(order) - 1) // 2]])
        v0 = x[r]
        g = a - a[:, r : r + 1] - a[r : r + 1, :] + a[r, r]
    inf = torch.full_like(g, float("inf"))
    g = torch.where(bad[:, None] | bad[None, :], inf, g)  # as centred_gram: not finite
    return v0, g


def _distances(g: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """``||X^T a - x_i||`` for all i, from the Gram matrix ``g`` of X."""
    ga = g @ a
    return (a @ ga - 2 * ga + torch.diagonal(g)).clamp_min(0).sqrt()


def weiszfeld(g: torch.Tensor, tol: float, max_iter: int, eps: float) -> torch.Tensor:
    """Coefficients ``a`` with ``Y^T a`` the geometric median of the rows of Y (g: Gram of Y),
    starting from the origin (the coordinate-wise median, as Y is centred on it)."""
    m = g.shape[0]
    a = torch.zeros(m, dtype=g.dtype)
    dist = _distances(g, a)
    obj = float(dist.sum())
    for _ in range(max_iter):
        close = dist <= eps * float(dist.max())
        w = torch.where(close, torch.zeros_like(dist), 1.0 / torch.where(close, 1.0, dist))
        total = float(w.sum())
        if total == 0.0:  # every point coincides with z
            break
        t = w / total
        eta = float(close.sum())
        if eta > 0:
            pull = w - total * a  # coefficients of sum_{x_i != z} (x_i - z) / ||x_i - z||
            r = float((pull @ g @ pull).clamp_min(0).sqrt())
            if r <= eta:
                break  # z is the geometric median
            t = (1 - eta / r) * t + (eta / r) * a
        new_dist = _distances(g, t)
        new_obj = float(new_dist.sum())
        if new_obj > obj:  # rounding noise only: the iteration is monotone
            break
        step = t - a
        moved = float((step @ g @ step).clamp_min(0).sqrt())
        a, dist, obj = t, new_dist, new_obj
        done = moved <= tol * obj / m  # step below tol times the mean distance
        if done:
            break
    return a
