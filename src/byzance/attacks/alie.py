"""A little is enough (Baruch, Baruch, Goldberg, NeurIPS 2019)."""

from __future__ import annotations

import math
from statistics import NormalDist

import torch

from byzance.attacks.base import LinearAttack, all_finite, check_real, wide
from byzance.kernels.moments import kernel_mean_std, use_moments_kernel


def alie_z_max(n: int, f: int) -> float:
    """The paper's largest undetected shift, in honest standard deviations.

    Baruch et al. 2019: with n workers of which f are Byzantine, the attacker
    needs ``s = floor(n/2 + 1) - f`` honest workers on its side for a majority, and picks
    the largest ``z`` such that ``s`` honest values are expected to lie farther from the mean
    than ``z`` standard deviations: ``z_max = Phi^{-1}((n - s) / n)`` (Phi: the standard
    normal CDF). E.g. n=50, f=12: s=14, z_max = Phi^{-1}(0.72) = 0.5828.
    Requires ``1 <= f <= floor(n/2)`` (else s <= 0 and z_max is infinite).
    """
    if f < 1 or f > n // 2:
        raise ValueError(
            f"ALittleIsEnough: z_max needs 1 <= f <= floor(n/2) (so s = floor(n/2+1) - f >= 1), "
            f"got n={n}, f={f}; pass z explicitly"
        )
    s = math.floor(n / 2 + 1) - f
    return NormalDist().inv_cdf((n - s) / n)


def honest_line(honest: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mu, -sigma)``: per-coordinate mean and unbiased standard deviation of the rows.

    ``sigma_j = sqrt(sum_i (x_ij - mu_j)^2 / (h - 1))`` (``h - 1`` replaced by 1 when h = 1,
    giving 0). Two passes, mean then sum of squared deviations (numerically as stable as
    ``torch.std_mean``, which is 10-30x slower on a wide (h, d) input reduced over dim 0).
    If that overflows for finite inputs (squared deviations beyond the dtype's range, e.g.
    float16 values of a few hundred), both are computed again in float64 on the inputs scaled
    by a power of two (``base.wide``) and ``sigma`` is clamped to the dtype's finite range.
    """
    h = honest.shape[0]
    if use_moments_kernel(honest):  # one compiled pass (``kernels.moments``)
        mean, neg_sigma = kernel_mean_std(honest)
    else:
        mean = honest.mean(dim=0)
        dev = honest - mean
        var = dev.mul_(dev).sum(dim=0)
        neg_sigma = var.div_(max(h - 1, 1)).sqrt_().neg_()
    if (all_finite(mean) and all_finite(neg_sigma)) or not bool(torch.isfinite(honest).all()):
        return mean, neg_sigma
    scaled, unit = wide(honest)  # float64, exactly scaled to at most 1
    mean64 = scaled.mean(dim=0)
    sigma64 = (scaled - mean64).square_().sum(dim=0).div_(max(h - 1, 1)).sqrt_()
    big = torch.finfo(honest.dtype).max
    mean = (mean64 * unit).to(honest.dtype)
    return mean, (sigma64 * unit).clamp_(max=big).neg_().to(honest.dtype)


class ALittleIsEnough(LinearAttack):
    """Shift the honest mean by ``z`` per-coordinate standard deviations: ``mu - z * sigma``.

    Baruch, Baruch & Goldberg, "A Little Is Enough: Circumventing Defenses For Distributed
    Learning", NeurIPS 2019. With ``mu_j`` and ``sigma_j`` the mean and (unbiased) standard
    deviation of coordinate j over the h honest vectors, every Byzantine vector is
    ``mu - z * sigma``. The paper sets each coordinate inside the undetected range
    ``(mu_j - z sigma_j, mu_j + z sigma_j)``; the sign is a convention (we take ``-``, as the
    bucketing paper's experiments). ``z=None`` uses the paper's ``z_max(n, f)`` with
    ``n = h + f`` workers in total (see ``alie_z_max``). ``anchor = mu``,
    ``direction = -sigma``, ``scale = z``.
    """

    name = "alie"

    def __init__(self, z: float | None = None) -> None:
        if z is not None:
            z = check_real(type(self).__name__, "z", z, low=0.0)
        self.z = z

    def line(self, honest: torch.Tensor, f: int) -> tuple[torch.Tensor, torch.Tensor]:
        return honest_line(honest)

    def line_with_mean(
        self, honest: torch.Tensor, f: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(anchor, direction, mean)``: ``line`` and the honest mean, which is the anchor
        (``Optimal`` uses it instead of computing the mean again). The compiled path's mean is
        accumulated in float64, so it may differ from ``honest.mean(dim=0)`` by an ulp."""
        anchor, direction = self.line(honest, f)
        return anchor, direction, anchor

    def default_scale(self, n: int, f: int) -> float:
        return self.z if self.z is not None else alie_z_max(n, f)
