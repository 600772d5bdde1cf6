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
    chunks = _CHUNKS_PER_THREAD * numba.get_num_threads()
    with _launch_lock:
        kernel(xn, mean, direction, chunks)
    return torch.from_numpy(mean), torch.from_numpy(direction)


#: coordinates per block of ``_compiled``'s kernel (h x 128 values: a few KiB, in L1; wider
#: blocks measured slower)
_LANES = 128
#: blocks are split into this many chunks per thread (one pair of scratch buffers per chunk)
_CHUNKS_PER_THREAD = 4


@functools.lru_cache(maxsize=1)
def _compiled():  # compiled on first use
    _select_threading_layer()
    lanes = _LANES

    @numba.njit(inline="always", nogil=True)
    def block(x, j0, w, acc, mu, mean, direction, scale, denom):  # pragma: no cover - compiled
        # Columns j0 .. j0 + w - 1: the mean, then the sum of squared deviations, both in
        # float64. Every inner loop runs along the coordinates of rows (contiguous:
        # vectorised); w is the constant ``lanes`` for full blocks (a fixed trip count). Rows
        # are taken 4 at a time (fewer loads and stores of acc), added to acc in row order,
        # ((acc + r0) + r1) + ..., so the sums are those of a loop over single rows.
        h = x.shape[0]
        h4 = h - h % 4
        for lane in range(w):
            acc[lane] = 0.0
        for i in range(0, h4, 4):
            r0 = x[i, j0 : j0 + w]
            r1 = x[i + 1, j0 : j0 + w]
            r2 = x[i + 2, j0 : j0 + w]
            r3 = x[i + 3, j0 : j0 + w]
            for lane in range(w):
                acc[lane] = acc[lane] + r0[lane] + r1[lane] + r2[lane] + r3[lane]
        for i in range(h4, h):
            row = x[i, j0 : j0 + w]
            for lane in range(w):
                acc[lane] += row[lane]
        for lane in range(w):
            mu[lane] = acc[lane] * scale
            acc[lane] = 0.0
        for i in range(0, h4, 4):
            r0 = x[i, j0 : j0 + w]
            r1 = x[i + 1, j0 : j0 + w]
            r2 = x[i + 2, j0 : j0 + w]
            r3 = x[i + 3, j0 : j0 + w]
            for lane in range(w):
                m = mu[lane]
                d0 = r0[lane] - m
                d1 = r1[lane] - m
                d2 = r2[lane] - m
                d3 = r3[lane] - m
                acc[lane] = acc[lane] + d0 * d0 + d1 * d1 + d2 * d2 + d3 * d3
        for i in range(h4, h):
            row = x[i, j0 : j0 + w]
            for lane in range(w):
                dev = row[lane] - mu[lane]
                acc[lane] += dev * dev
        out_mean = mean[j0 : j0 + w]
        out_direction = direction[j0 : j0 + w]
        for lane in range(w):
            out_mean[lane] = mu[lane]
            out_direction[lane] = -np.sqrt(acc[lane] * denom)

    @numba.njit(parallel=True, cache=True, nogil=True)
    def kernel(x, mean, direction, chunks):  # pragma: no cover - compiled
        # chunks: how many chunks of blocks to spread over the threads (a few per thread)
        h, d = x.shape
        full = d // lanes  # full blocks; then one narrower tail block, if any
        scale = 1.0 / h
        denom = 1.0 / max(h - 1, 1)
        chunks = max(1, min(full, chunks))
        for c in numba.prange(chunks):  # scratch buffers once per chunk of blocks
            acc = np.empty(lanes, dtype=np.float64)
            mu = np.empty(lanes, dtype=np.float64)
            for blk in range(c * full // chunks, (c + 1) * full // chunks):
                block(x, blk * lanes, lanes, acc, mu, mean, direction, scale, denom)
        j0 = full * lanes
        if j0 < d:
            acc = np.empty(lanes, dtype=np.float64)
            mu = np.empty(lanes, dtype=np.float64)
            block(x, j0, d - j0, acc, mu, mean, direction, scale, denom)

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
