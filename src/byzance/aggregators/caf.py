"""Covariance-bound Agnostic Filter (Allouah, Guerraoui, Stephan et al.)."""

from __future__ import annotations

import math

import torch

from byzance.aggregators._distances import ExactGram, weighted_rows
from byzance.aggregators._distances import gram as gram_matrix
from byzance.aggregators.base import Aggregator, check_f, require


def caf_weights(g: torch.Tensor, bad: torch.Tensor, f: int) -> torch.Tensor:
    """The normalised weights (n,) of the CAF output, from a Gram matrix of the inputs.

    Everything d-dimensional is expressed through the n x n Gram matrix ``g`` (any common
    origin): with w = c / sum(c), ``K = (I - 1 w^T) g (I - w 1^T)`` holds the inner products of
    the centred inputs, and the covariance ``sum_i w_i z_i z_i^T`` has the same non-zero
    spectrum as ``diag(sqrt w) K diag(sqrt w)`` (n x n). Its top eigenpair (lambda, u) gives the
    top eigenvector of the covariance, ``v = Z^T (sqrt(w) * u) / sqrt(lambda)``, hence the
    squared projections ``tau = (K (sqrt(w) * u))^2 / lambda`` without forming a d x d matrix.
    """
    n = g.shape[0]
    c = (~bad).double()
    best_val, best_w = math.inf, c / c.sum().clamp_min(1)
    while float(c.detach().sum()) > n - 2 * f:
        w = c / c.sum()
        gw = g @ w
        k = g - gw[:, None] - gw[None, :] + w @ gw
        pos = w > 0  # sqrt(0) = 0 without its infinite derivative (autograd)
        s = torch.where(pos, torch.where(pos, w, torch.ones_like(w)).sqrt(), torch.zeros_like(w))
        vals, vecs = torch.linalg.eigh(s[:, None] * k * s[None, :])
        top, u = vals[-1], vecs[:, -1]  # tensors: the weights stay differentiable
        lam = float(top.detach())
        if lam < best_val:
            best_val, best_w = lam, w
        if lam <= 0:
            break
        tau = (k @ (s * u)).pow(2) / top
        largest = tau[c > 0].max()
        if float(largest.detach()) <= 0:
            break
        c = (c * (1 - tau / largest)).clamp_min(0)
        c = torch.where(tau >= largest, torch.zeros_like(c), c)  # the argmax drops out exactly
    return best_w


class CAF(Aggregator):
    r"""CAF (Covariance-bound Agnostic Filter): spectral filtering by soft down-weighting.

    Introduced by Allouah, Guerraoui, Stephan et al. ("Towards Trustworthy Federated Learning
    with Untrusted Participants", 2025) as a filter that needs no bound on the honest
    covariance; the steps below follow the reference description of the ByzFL library.
    Weights :math:`c_i = 1`; while :math:`\sum_i c_i > n - 2f`:

    1. :math:`\mu_c = \sum_i c_i x_i / \sum_i c_i`,
       :math:`\Sigma_c = \sum_i c_i (x_i - \mu_c)(x_i - \mu_c)^\top / \sum_i c_i`;
    2. :math:`(\lambda, v)` = top eigenpair of :math:`\Sigma_c`;
       :math:`\tau_i = ((x_i - \mu_c)^\top v)^2`;
    3. :math:`c_i \leftarrow c_i (1 - \tau_i / \max_{j: c_j > 0} \tau_j)`.

    Output: the :math:`\mu_c` with the smallest :math:`\lambda` met (the first on ties; the
    plain mean when the loop does not run, e.g. f = 0). Each step zeroes at least one weight,
    so there are at most n steps. The top eigenpair is computed exactly by
    ``torch.linalg.eigh`` on an n x n weighted centred Gram matrix (the paper uses the power
    method on the d x d covariance; same quantity): O(n^2 d) for one Gram matrix plus O(n^3)
    per step. Inputs with a non-finite entry start with weight 0. Inputs whose squared norm
    overflows the dtype (e.g. float16 entries of a few units in large d) are not outliers for
    that: the Gram matrix is then computed in float64 on the inputs scaled by a power of two
    (the weights do not depend on the scale). Requires :math:`n > 2f`.
    """

    name = "caf"

    def __init__(self, f: int = 0) -> None:
        self.f = check_f("CAF", f)

    def check(self, n: int) -> None:
        require("CAF", n > 2 * self.f, "n > 2f", n=n, f=self.f)

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """The (n,) float64 weights of the output mean."""
        return caf_weights(*_geometry(x, None), self.f)

    def aggregate(self, x: torch.Tensor, gram: ExactGram | None = None) -> torch.Tensor:
        g, bad = _geometry(x, gram)
        w = caf_weights(g, bad, self.f)
        return weighted_rows(x, w[None, :], bad)[0]


def _geometry(x: torch.Tensor, gram: ExactGram | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``gram_matrix(x, gram)``; rows bad only because their squared norm overflows x's dtype
    (finite entries) get their geometry in float64 from ``x * 2^-e``, ``2^e`` >= the largest
    finite entry (exact scaling; the weights are scale invariant)."""
    g, bad = gram_matrix(x, gram)
    if gram is None and bool(bad.any()):
        finite = torch.isfinite(x).all(dim=1)
        if bool((bad & finite).any()):
            peak = float(x.detach()[finite].abs().max().double())
            scaled = x.double() * 2.0 ** -math.frexp(peak)[1]
            g, bad = gram_matrix(scaled)
    return g, bad
