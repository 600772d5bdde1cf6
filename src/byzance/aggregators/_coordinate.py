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

Mixing (``mix=``): every function also reduces the m rows of ``mix @ x`` for an (m, n) matrix
``mix`` (e.g. NNM's: ``Chain(NNM(f), TrimmedMean(f))``), zero weights skipped (``mixed_rows``).
The kernel forms each mixed row in its block buffer from the block of x (four weighted rows
added per pass over the lanes), so the (m, d) mixed matrix is never written nor read back;
the fallback forms it (``mixed_rows``). NaN -> +inf applies to the mixed values.

Threading: numba's default threading layer (OpenMP when available) keeps its worker threads
spinning after each kernel, which competes with torch's own OpenMP threads and was measured
to slow the torch operations that follow (a CNN's gradients up to 3x on 2 cores). Unless the
user set ``NUMBA_THREADING_LAYER`` (or numba's parallel backend is already running), the
``workqueue`` layer, whose idle threads sleep, is selected before the first launch. It does
not support concurrent launches, so launches are serialised by a lock (the kernel releases
the GIL, so other Python threads still run meanwhile).

Sums (trimmed mean, window mean) may differ between the two paths by float rounding only;
each path is bit-for-bit deterministic. With ``mix=`` the mixed values themselves may differ
by rounding, so the order statistics may too, and the window of ``closest_to_median_mean``
may differ at a distance tie (two window ends equally far from the median, e.g. equal mixed
rows), which rounding breaks either way.
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
    from byzance.aggregators._distances import weighted_rows  # it imports this module

    bad = ~torch.isfinite(x).all(dim=1)
    return weighted_rows(x, mix.to(device=x.device, dtype=x.dtype), bad)


def _rows(x: torch.Tensor, mix: torch.Tensor | None) -> torch.Tensor:
    return x if mix is None else mixed_rows(x, mix)


def coordinate_median(x: torch.Tensor, mix: torch.Tensor | None = None) -> torch.Tensor:
    """Coordinate-wise median of the rows of ``x`` (mean of the two middle values for even n).

    With ``mix`` (an (m, n) matrix), the median of the m rows of ``mix @ x`` (see
    ``mixed_rows``), computed without forming them on the kernel path.
    """
    if _use_kernel(x, mix, _rows_to_reduce(x, mix)):
        return _run_kernel(x, mix, 0, 0)
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
    if _use_kernel(x, mix, n):
        return _run_kernel(x, mix, 1, f)
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
    if _use_kernel(x, mix, n):
        return _run_kernel(x, mix, 2, k)
    return _window_mean(_sorted(_rows(x, mix)), k)


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


def compiled_input(x: torch.Tensor, *others: torch.Tensor) -> bool:
    """Whether a compiled (numba) kernel can take ``x``: numba is installed and ``x`` is a CPU
    float32/float64 tensor without autograd; ``others`` (e.g. an origin) on the CPU with the
    same dtype, without autograd. Each kernel adds its own conditions (sizes, a switch)."""
    return (
        numba is not None
        and x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.float64)
        and not x.requires_grad
        and all(t.device == x.device and t.dtype == x.dtype and not t.requires_grad for t in others)
    )


def _use_kernel(x: torch.Tensor, mix: torch.Tensor | None = None, rows: int | None = None) -> bool:
    """Whether the kernel runs: ``compiled_input(x)``, > 1 row to reduce (``rows``: n, or m
    with a mixing matrix, which must then be on the CPU too)."""
    rows = x.shape[0] if rows is None else rows
    return (
        _kernel_enabled
        and compiled_input(x)
        and rows > 1
        and (mix is None or (mix.device.type == "cpu" and not mix.requires_grad))
    )


#: set to False to force the torch fallback (tests compare both paths)
_kernel_enabled = True


@functools.lru_cache(maxsize=64)
def _network(n: int) -> tuple[np.ndarray, np.ndarray]:
    return merge_sort_network(n)


def _run_kernel(x: torch.Tensor, mix: torch.Tensor | None, mode: int, param: int) -> torch.Tensor:
    xn = x.detach().numpy()
    if mix is None:  # a placeholder of the right type: one compilation serves both cases
        mn = np.empty((0, 0), dtype=xn.dtype)
    else:
        mn = np.ascontiguousarray(mix.detach().to(x.dtype).numpy())
    lo, hi = _network(mn.shape[0] if mix is not None else x.shape[0])
    out = np.empty(x.shape[1], dtype=xn.dtype)
    kernel = _kernel(xn.size >= _PARALLEL_MIN_SIZE)
    with _launch_lock:
        kernel(xn, mn, mix is not None, lo, hi, mode, param, out)
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


#: fewest input elements for the parallel kernel: below, the single-threaded one is faster
#: (a parallel launch costs ~50-100 us, e.g. 0.3 ms against 0.1 ms at n=12, d=16384)
_PARALLEL_MIN_SIZE = 1 << 19


@functools.lru_cache(maxsize=2)
def _kernel(parallel: bool = True):  # compiled on first use
    if parallel:
        _select_threading_layer()
    lanes = _LANES

    @numba.njit(parallel=parallel, cache=True, nogil=True)
    def kernel(x, mix, mixed, lo, hi, mode, param, out):  # pragma: no cover - compiled
        # Every inner loop runs over the lanes of one row of the block (contiguous, so it is
        # vectorised); a loop over the rows of one lane would not be, and cost 3-4x.
        # The rows reduced are those of x, or (mixed) the m rows of mix @ x, each formed in
        # the block buffer from the rows of x with a non-zero weight (see the load below).
        p, d = x.shape
        n = mix.shape[0] if mixed else p  # rows to reduce
        # mixed: the columns j where all the rows of mix have the same non-zero weight make a
        # part shared by every mixed row (with NNM: the inputs that are everyone's neighbour),
        # summed once per block into the extra buffer row n; row i < n starts from it and adds
        # its other weights. Row i <= n sums the rows cols[i, :cnt[i]] of x (increasing) with
        # the weights wts[i, :cnt[i]]; zero weights are skipped, as 0 * inf is NaN. A row of
        # mix equal to an earlier row e (same[i] = e; frequent with NNM too) is copied.
        # (explicit loops: with parallel=True an array expression is a parallel launch)
        cols = np.empty((n + 1, p), dtype=np.int64)
        wts = np.empty((n + 1, p), dtype=x.dtype)
        cnt = np.empty(n + 1, dtype=np.int64)
        same = np.empty(n, dtype=np.int64)
        for i in range(n + 1):
            cnt[i] = 0
        if mixed:
            for j in range(p):
                shared = mix[0, j] != 0
                for i in range(n):
                    shared = shared and mix[i, j] == mix[0, j]
                for i in range(n + 1):
                    c = mix[0, j] if i == n else mix[i, j]
                    if c != 0 and shared == (i == n):
                        cols[i, cnt[i]] = j
                        wts[i, cnt[i]] = c
                        cnt[i] += 1
        for i in range(n):
            same[i] = -1
            for e in range(i if mixed else 0):
                equal = same[e] < 0
                for j in range(p):
                    equal = equal and mix[e, j] == mix[i, j]
                if equal:
                    same[i] = e
                    break
        blocks = (d + lanes - 1) // lanes
        # parallel tasks, each with its own buffers (single-threaded: one, so the buffers
        # are allocated once, not per block; ~15% of the kernel at n=12, d=16384)
        groups = min(blocks, 256 if parallel else 1)
        per = (blocks + groups - 1) // groups
        for grp in numba.prange(groups):
            buf = np.empty((n + 1, lanes), dtype=x.dtype)  # row n: mixed, the shared part
            raw = np.empty((p if mixed else 0, lanes), dtype=x.dtype)  # block of x, if mixed
            acc = np.empty(lanes, dtype=x.dtype)
            mid = np.empty(lanes, dtype=x.dtype)
            start = np.empty(lanes, dtype=np.int64)
            for blk in range(grp * per, min(blocks, (grp + 1) * per)):
                j0 = blk * lanes
                w = min(lanes, d - j0)
                # load: buf[i] = row i of x, or of mix @ x; then NaN -> +inf. The lanes past
                # d are padding (0).
                if not mixed:
                    for i in range(n):
                        src = x[i, j0 : j0 + w]
                        row = buf[i]
                        for lane in range(w):
                            v = src[lane]
                            row[lane] = np.inf if v != v else v
                        for lane in range(w, lanes):
                            row[lane] = 0.0
                for i in range(raw.shape[0]):  # mixed: the block of x, as is
                    src = x[i, j0 : j0 + w]
                    row = raw[i]
                    for lane in range(w):
                        row[lane] = src[lane]
                    for lane in range(w, lanes):
                        row[lane] = 0.0
                for r in range(n + 1 if mixed else 0):  # the shared part first, then 0..n-1
                    i = n if r == 0 else r - 1
                    row = buf[i]
                    if i < n and same[i] >= 0:  # an equal mixed row, already formed
                        twin = buf[same[i]]
                        for lane in range(lanes):
                            row[lane] = twin[lane]
                        continue
                    base = buf[n]
                    for lane in range(lanes):  # -0.0 + v is v, -0.0 included
                        row[lane] = -0.0 if i == n else base[lane]
                    # weighted rows added four at a time (halves the loads and stores of
                    # row), then one by one
                    t = 0
                    while t + 4 <= cnt[i]:
                        a0, a1, a2, a3 = (
                            raw[cols[i, t]],
                            raw[cols[i, t + 1]],
                            raw[cols[i, t + 2]],
                            raw[cols[i, t + 3]],
                        )
                        c0, c1, c2, c3 = wts[i, t], wts[i, t + 1], wts[i, t + 2], wts[i, t + 3]
                        for lane in range(lanes):
                            row[lane] += (c0 * a0[lane] + c1 * a1[lane]) + (
                                c2 * a2[lane] + c3 * a3[lane]
                            )
                        t += 4
                    for rest in range(t, cnt[i]):
                        a0, c0 = raw[cols[i, rest]], wts[i, rest]
                        for lane in range(lanes):
                            row[lane] += c0 * a0[lane]
                    if i < n:
                        for lane in range(lanes):
                            v = row[lane]
                            row[lane] = np.inf if v != v else v
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
