"""A little is enough (Baruch, Baruch, Goldberg, NeurIPS 2019)."""

from __future__ import annotations

import functools
import math
from statistics import NormalDist

import numpy as np
import torch

from byzance.aggregators._coordinate import (
    _launch_lock,
    _select_threading_layer,
    compiled_input,
    numba,
)
from byzance.attacks.base import LinearAttack, check_real

#: fewest elements (h x d) for the compiled one-pass kernel (below: torch, cheaper to launch)
_KERNEL_MIN_SIZE = 1 << 19
#: set to False to force the torch path (tests compare both)
_kernel_enabled = True


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
    """
    h = honest.shape[0]
    if _use_kernel(honest):
        return _line_kernel(honest)
    mean = honest.mean(dim=0)
    dev = honest - mean
    var = dev.mul_(dev).sum(dim=0)
    return mean, var.div_(max(h - 1, 1)).sqrt_().neg_()


def _use_kernel(x: torch.Tensor) -> bool:
    return _kernel_enabled and compiled_input(x) and x.dim() == 2 and x.numel() >= _KERNEL_MIN_SIZE


def _line_kernel(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``honest_line`` in one pass over ``x`` (the torch path reads it four times and writes
    an (h, d) temporary): per block of coordinates, the mean then the sum of squared
    deviations, both accumulated in float64, in the block's cache lines."""
    xn = np.ascontiguousarray(x.detach().numpy())
    mean = np.empty(xn.shape[1], dtype=xn.dtype)
    direction = np.empty(xn.shape[1], dtype=xn.dtype)
    kernel = _compiled()
    with _launch_lock:
        kernel(xn, mean, direction)
    return torch.from_numpy(mean), torch.from_numpy(direction)


@functools.lru_cache(maxsize=1)
def _compiled():  # compiled on first use
    _select_threading_layer()
    lanes = 256

    @numba.njit(parallel=True, cache=True, nogil=True)
    def kernel(x, mean, direction):  # pragma: no cover - compiled
        # inner loops run along the coordinates of one row (contiguous: vectorised)
        h, d = x.shape
        blocks = (d + lanes - 1) // lanes
        scale = 1.0 / h
        denom = 1.0 / max(h - 1, 1)
        for blk in numba.prange(blocks):
            j0 = blk * lanes
            w = min(lanes, d - j0)
            acc = np.zeros(lanes, dtype=np.float64)
            for i in range(h):
                row = x[i, j0 : j0 + w]
                for lane in range(w):
                    acc[lane] += row[lane]
            mu = np.empty(lanes, dtype=np.float64)
            for lane in range(w):
                mu[lane] = acc[lane] * scale
                acc[lane] = 0.0
            for i in range(h):
                row = x[i, j0 : j0 + w]
                for lane in range(w):
                    dev = row[lane] - mu[lane]
                    acc[lane] += dev * dev
            for lane in range(w):
                mean[j0 + lane] = mu[lane]
                direction[j0 + lane] = -np.sqrt(acc[lane] * denom)

    return kernel


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

    def default_scale(self, n: int, f: int) -> float:
        return self.z if self.z is not None else alie_z_max(n, f)
