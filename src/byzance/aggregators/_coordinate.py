"""Shared coordinate-wise kernels: median, trimmed mean, mean around the median.

All kernels take an (n, d) floating tensor ``x`` and reduce over the n rows, independently for
each of the d coordinates. They never write into ``x``. NaN is ranked as ``+inf`` (sorted to
the end), so a NaN input behaves like a huge positive value: up to f < n/2 non-finite inputs
per coordinate leave the median and trimmed mean finite and within the honest range.

Two exact implementations give the same order statistics:

* fast path (float32/float64 CPU tensors, when the optional ``numba`` package is installed):
  a compiled kernel that sorts each block of 128 coordinates in L1 with Batcher's odd-even
  merge sorting network (every step vectorised across the coordinates of the block, including
  the load and the final sums; the network is a runtime array, so one compilation serves
  every n) and parallelised over blocks; measured about 2-3x the cost of a plain mean at
  n=32, d=1e6 and 4x at n=12, d=4.3e5 (a per-lane loop over the rows for the load and sums
  made it 10x and 20x);
* fallback (any device/dtype, or without numba): ``torch.sort`` along the rows.

Threading: numba's default threading layer (OpenMP when available) keeps its worker threads
spinning after each kernel, which competes with torch's own OpenMP threads and was measured
to slow the torch operations that follow (a CNN's gradients up to 3x on 2 cores). Unless the
user set ``NUMBA_THREADING_LAYER`` (or numba's parallel backend is already running), the
``workqueue`` layer, whose idle threads sleep, is selected before the first launch. It does
not support concurrent launches, so launches are serialised by a lock (the kernel releases
the GIL, so other Python threads still run meanwhile).

Sums (trimmed mean, window mean) may differ between the two paths by float rounding only;
each path is bit-for-bit deterministic.
"""

from __future__ import annotations

import functools
import os
import threading

import numpy as np
import torch


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


def coordinate_median(x: torch.Tensor) -> torch.Tensor:
    """Coordinate-wise median of the rows of ``x`` (mean of the two middle values for even n)."""
    if _use_kernel(x):
        return _run_kernel(x, 0, 0)
    return _middle(_sorted(x))


def coordinate_trimmed_mean(x: torch.Tensor, f: int) -> torch.Tensor:
    """Per coordinate, drop the ``f`` largest and ``f`` smallest values, average the n-2f left."""
    n = x.shape[0]
    if not 0 <= 2 * f < n:
        raise ValueError(f"coordinate_trimmed_mean requires n > 2f, got n={n}, f={f}")
    if f == 0:
        return x.mean(dim=0)
    if _use_kernel(x):
        return _run_kernel(x, 1, f)
    return _sorted(x)[f : n - f].mean(dim=0)


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


def closest_to_median_mean(x: torch.Tensor, k: int) -> torch.Tensor:
    """Per coordinate, the mean of the ``k`` values of ``x`` closest to the coordinate-wise median.

    Ties in distance are broken towards the smaller value (deterministic).
    """
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"closest_to_median_mean requires 1 <= k <= n, got k={k}, n={n}")
    if _use_kernel(x):
        return _run_kernel(x, 2, k)
    return _window_mean(_sorted(x), k)


# ---------------------------------------------------------------------------------------------
# compiled fast path


def merge_sort_network(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Comparators (lo, hi), lo < hi, of Batcher's odd-even merge sort on n inputs.

    Built for the next power of two P >= n; comparators touching an index >= n are dropped,
    which is exact: padding with +inf at the top, such a comparator never moves anything.
    """
    size = 1 << max(0, (n - 1).bit_length())
    pairs: list[tuple[int, int]] = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    a, b = i + j, i + j + k
                    if a // (2 * p) == b // (2 * p) and b < n:
                        pairs.append((a, b))
            k //= 2
        p *= 2
    arr = np.array(pairs, dtype=np.int64).reshape(-1, 2)
    return np.ascontiguousarray(arr[:, 0]), np.ascontiguousarray(arr[:, 1])


try:  # optional dependency
    import numba
except ImportError:  # pragma: no cover - exercised when numba is absent
    numba = None

_LANES = 128  # coordinates sorted together by one pass of the network


def _use_kernel(x: torch.Tensor) -> bool:
    return (
        numba is not None
        and _kernel_enabled
        and x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.float64)
        and not x.requires_grad
        and x.shape[0] > 1
    )


#: set to False to force the torch fallback (tests compare both paths)
_kernel_enabled = True


@functools.lru_cache(maxsize=64)
def _network(n: int) -> tuple[np.ndarray, np.ndarray]:
    return merge_sort_network(n)


def _run_kernel(x: torch.Tensor, mode: int, param: int) -> torch.Tensor:
    lo, hi = _network(x.shape[0])
    xn = x.detach().numpy()
    out = np.empty(x.shape[1], dtype=xn.dtype)
    kernel = _kernel()
    with _launch_lock:
        kernel(xn, lo, hi, mode, param, out)
    return torch.from_numpy(out)


#: serialises kernel launches (the workqueue layer aborts on concurrent launches)
_launch_lock = threading.Lock()


def _select_threading_layer() -> None:
    """Prefer numba's non-spinning ``workqueue`` layer (see the module docstring).

    Left alone when the user chose a layer (``NUMBA_THREADING_LAYER``) or when numba's
    parallel backend is already initialised (the layer can no longer change).
    """
    if "NUMBA_THREADING_LAYER" in os.environ:
        return
    try:
        from numba.np.ufunc import parallel
    except ImportError:  # pragma: no cover - very old or unusual numba
        return
    if not getattr(parallel, "_is_initialized", False):
        numba.config.THREADING_LAYER = "workqueue"


@functools.lru_cache(maxsize=1)
def _kernel():  # compiled on first use
    _select_threading_layer()
    lanes = _LANES

    @numba.njit(parallel=True, cache=True, nogil=True)
    def kernel(x, lo, hi, mode, param, out):  # pragma: no cover - compiled
        # Every inner loop runs over the lanes of one row of the block (contiguous, so it is
        # vectorised); a loop over the rows of one lane would not be, and cost 3-4x.
        n, d = x.shape
        blocks = (d + lanes - 1) // lanes
        groups = min(blocks, 256)
        per = (blocks + groups - 1) // groups
        for grp in numba.prange(groups):
            buf = np.empty((n, lanes), dtype=x.dtype)
            acc = np.empty(lanes, dtype=x.dtype)
            mid = np.empty(lanes, dtype=x.dtype)
            start = np.empty(lanes, dtype=np.int64)
            for blk in range(grp * per, min(blocks, (grp + 1) * per)):
                j0 = blk * lanes
                w = min(lanes, d - j0)
                for i in range(n):  # load, NaN -> +inf; the lanes past d are padding
                    src = x[i, j0 : j0 + w]
                    row = buf[i]
                    for lane in range(w):
                        v = src[lane]
                        row[lane] = np.inf if v != v else v
                    for lane in range(w, lanes):
                        row[lane] = 0.0
                for c in range(lo.shape[0]):  # the sorting network, all lanes at once
                    ra = buf[lo[c]]
                    rb = buf[hi[c]]
                    for lane in range(lanes):
                        u = ra[lane]
                        v = rb[lane]
                        ra[lane] = u if u < v else v
                        rb[lane] = v if u < v else u
                if mode == 1:  # trimmed mean, param = f: sorted rows f..n-f-1, in order
                    first = buf[param]
                    for lane in range(lanes):
                        acc[lane] = first[lane]
                    for i in range(param + 1, n - param):
                        row = buf[i]
                        for lane in range(lanes):
                            acc[lane] += row[lane]
                    k = n - 2 * param
                    for lane in range(w):
                        out[j0 + lane] = acc[lane] / k
                    continue
                upper = buf[n // 2]
                if n % 2:
                    for lane in range(lanes):
                        mid[lane] = upper[lane]
                else:
                    lower = buf[n // 2 - 1]
                    for lane in range(lanes):
                        mid[lane] = lower[lane] * 0.5 + upper[lane] * 0.5
                if mode == 0:  # median
                    for lane in range(w):
                        out[j0 + lane] = mid[lane]
                    continue
                # mean of the param values closest to the median: the window of sorted rows
                # starting at the number of t with m - s[t] > s[t + param] - m
                for lane in range(lanes):
                    start[lane] = 0
                for t in range(n - param):
                    below = buf[t]
                    above = buf[t + param]
                    for lane in range(lanes):
                        if mid[lane] - below[lane] > above[lane] - mid[lane]:
                            start[lane] += 1
                # masked sums over the rows (vectorised; a per-lane gather is not): adding -0.0
                # leaves any value unchanged, so the window's rows are summed exactly in the
                # same order as s[start] + s[start + 1] + ...
                for lane in range(lanes):
                    acc[lane] = -0.0
                for i in range(n):
                    row = buf[i]
                    for lane in range(lanes):
                        inside = start[lane] <= i and i < start[lane] + param
                        acc[lane] += row[lane] if inside else -0.0
                for lane in range(w):
                    out[j0 + lane] = acc[lane] / param
    return kernel
