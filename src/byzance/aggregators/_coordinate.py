"""Shared coordinate-wise reductions: median, trimmed mean, mean around the median.

All functions take an (n, d) floating tensor ``x`` and reduce over the n rows, independently
for each of the d coordinates. They never write into ``x``. NaN is ranked as ``+inf`` (sorted
to the end), so a NaN input behaves like a huge positive value: up to f < n/2 non-finite inputs
per coordinate leave the median and trimmed mean finite and within the honest range.

Two exact implementations give the same order statistics:

* fast path (float32/float64 CPU tensors): the compiled kernel of
  ``byzance.kernels.coordinate`` (sorting networks over blocks of 128 coordinates, in
  parallel; about 2-3x the cost of a plain mean at n=32, d=1e6);
* torch path (any other device/dtype, autograd): ``torch.sort`` along the rows.

Mixing (``mix=``): every function also reduces the m rows of ``mix @ x`` for an (m, n) matrix
``mix`` (e.g. NNM's: ``Chain(NNM(f), TrimmedMean(f))``), zero weights skipped (``mixed_rows``).
The kernel forms each mixed row in its block buffer from the block of x, so the (m, d) mixed
matrix is never written nor read back; the torch path forms it (``mixed_rows``). NaN -> +inf
applies to the mixed values.

Sums (trimmed mean, window mean) may differ between the two paths by float rounding only;
each path is bit-for-bit deterministic. With ``mix=`` the mixed values themselves may differ
by rounding, so the order statistics may too, and the window of ``closest_to_median_mean``
may differ at a distance tie (two window ends equally far from the median, e.g. equal mixed
rows), which rounding breaks either way.
"""

from __future__ import annotations

import torch

from byzance.aggregators._distances import weighted_rows
from byzance.kernels.coordinate import run_coordinate_kernel, use_coordinate_kernel


def _sorted(x: torch.Tensor) -> torch.Tensor:
    """Rows sorted per coordinate, NaN mapped to +inf (out of place)."""
    x = torch.nan_to_num(x, nan=float("inf"), posinf=float("inf"), neginf=float("-inf"))
    return torch.sort(x, dim=0).values


def _middle(s: torch.Tensor) -> torch.Tensor:
    """Median of already sorted rows: the middle row, or the mean of the two middle rows."""
    n = s.shape[0]
    if n % 2:
        return s[n // 2].clone()
    # halves first: no overflow for values near the dtype's max
    return s[n // 2 - 1] * 0.5 + s[n // 2] * 0.5


def _rows_to_reduce(x: torch.Tensor, mix: torch.Tensor | None) -> int:
    """Number of rows to reduce: n, or m for an (m, n) mixing matrix (checked against x)."""
    if mix is None:
        return x.shape[0]
    if mix.dim() != 2 or mix.shape[1] != x.shape[0]:
        raise ValueError(
            f"mix must be an (m, n) matrix for an input of n={x.shape[0]} rows, "
            f"got {tuple(mix.shape)}"
        )
    return mix.shape[0]


def mixed_rows(x: torch.Tensor, mix: torch.Tensor) -> torch.Tensor:
    """``mix @ x`` for an (m, n) mixing matrix, skipping the zero weights (torch path).

    A row of ``x`` with zero weight never enters an output row (a non-finite one does not make
    it NaN through ``0 * inf``); an output row that puts weight on a non-finite row is the sum
    of its weighted rows only, non-finite as its definition says. Same semantics as
    ``_distances.weighted_rows`` (which it calls) and as the kernel's fused load.
    """
    bad = ~torch.isfinite(x).all(dim=1)
    return weighted_rows(x, mix.to(device=x.device, dtype=x.dtype), bad)


def _rows(x: torch.Tensor, mix: torch.Tensor | None) -> torch.Tensor:
    return x if mix is None else mixed_rows(x, mix)


def coordinate_median(x: torch.Tensor, mix: torch.Tensor | None = None) -> torch.Tensor:
    """Coordinate-wise median of the rows of ``x`` (mean of the two middle values for even n).

    With ``mix`` (an (m, n) matrix), the median of the m rows of ``mix @ x`` (see
    ``mixed_rows``), computed without forming them on the kernel path.
    """
    if use_coordinate_kernel(x, mix, _rows_to_reduce(x, mix)):
        return run_coordinate_kernel(x, mix, 0, 0)
    return _middle(_sorted(_rows(x, mix)))


def coordinate_trimmed_mean(
    x: torch.Tensor, f: int, mix: torch.Tensor | None = None
) -> torch.Tensor:
    """Per coordinate, drop the ``f`` largest and ``f`` smallest values, average the n-2f left.

    With ``mix`` (an (m, n) matrix), the trimmed mean of the m rows of ``mix @ x`` (m > 2f).
    """
    n = _rows_to_reduce(x, mix)
    if not 0 <= 2 * f < n:
        raise ValueError(f"coordinate_trimmed_mean requires n > 2f, got n={n}, f={f}")
    if f == 0:
        return _rows(x, mix).mean(dim=0)
    if use_coordinate_kernel(x, mix, n):
        return run_coordinate_kernel(x, mix, 1, f)
    return _sorted(_rows(x, mix))[f : n - f].mean(dim=0)


def _window_mean(s: torch.Tensor, k: int) -> torch.Tensor:
    """Mean of the k sorted values closest to the median, per coordinate (s sorted, dim 0).

    The k values closest to m form a window ``s[t : t + k]`` of the sorted values. Sliding the
    window up by one swaps ``s[t]`` for ``s[t+k]``, which helps iff ``m - s[t] > s[t+k] - m``;
    as ``s[t] + s[t+k]`` grows with t this holds for a prefix of t = 0..n-k-1, so the best
    start is the number of t where it holds. A distance tie keeps the lower value, i.e. the
    window is the k first values ranked by ``(|v - m|, v)``.
    """
    n = s.shape[0]
    if k == n:
        return s.mean(dim=0)
    m = _middle(s)
    g = n - k  # number of values left out; windows start at t = 0..g
    start = ((m - s[:g]) > (s[k:] - m)).sum(dim=0, keepdim=True)
    rows = start + torch.arange(k, device=s.device).unsqueeze(1)  # (k, d): each window's rows
    return s.gather(0, rows).mean(dim=0)


def closest_to_median_mean(
    x: torch.Tensor, k: int, mix: torch.Tensor | None = None
) -> torch.Tensor:
    """Per coordinate, the mean of the ``k`` values of ``x`` closest to the coordinate-wise median.

    Ties in distance are broken towards the smaller value (deterministic). With ``mix`` (an
    (m, n) matrix), the same over the m rows of ``mix @ x`` (1 <= k <= m).
    """
    n = _rows_to_reduce(x, mix)
    if not 1 <= k <= n:
        raise ValueError(f"closest_to_median_mean requires 1 <= k <= n, got k={k}, n={n}")
    if use_coordinate_kernel(x, mix, n):
        return run_coordinate_kernel(x, mix, 2, k)
    return _window_mean(_sorted(_rows(x, mix)), k)
