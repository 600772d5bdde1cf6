"""Compiled coordinate-wise kernel: median, trimmed mean, mean around the median.

For float32/float64 CPU tensors (``use_coordinate_kernel``), ``aggregators._coordinate`` reduces
the n rows of an (n, d) input (or the m rows of ``mix @ x``) with this kernel: it sorts each
block of 128 coordinates in L1 with Batcher's odd-even merge sorting network (every step
vectorised across the coordinates of the block, including the load and the final sums; the
network is a runtime array, so one compilation serves every n) and is parallelised over
blocks; measured about 2-3x the cost of a plain mean at n=32, d=1e6 and 4x at n=12, d=4.3e5 (a
per-lane loop over the rows for the load and sums made it 10x and 20x). NaN is ranked as
``+inf``, as on the torch path.

Mixing: the kernel forms each mixed row in its block buffer from the block of x (four weighted
rows added per pass over the lanes, zero weights skipped), so the (m, d) mixed matrix is never
written nor read back.

``run_coordinate_kernel(x, mix, mode, param)``: mode 0 the median, 1 the trimmed mean
(``param = f``), 2 the mean of the ``param`` values closest to the median.
"""

from __future__ import annotations

import functools

import numba
import numpy as np
import torch

from byzance.kernels.numba_setup import compiled_input, launch_lock, select_threading_layer

_LANES = 128  # coordinates sorted together by one pass of the network


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


def use_coordinate_kernel(
    x: torch.Tensor, mix: torch.Tensor | None = None, rows: int | None = None
) -> bool:
    """Whether the kernel runs: ``compiled_input(x)``, > 1 row to reduce (``rows``: n, or m
    with a mixing matrix, which must then be on the CPU too)."""
    rows = x.shape[0] if rows is None else rows
    return (
        _kernel_enabled
        and compiled_input(x)
        and rows > 1
        and (mix is None or (mix.device.type == "cpu" and not mix.requires_grad))
    )


#: set to False to force the torch path (tests compare both paths)
_kernel_enabled = True


@functools.lru_cache(maxsize=64)
def _network(n: int) -> tuple[np.ndarray, np.ndarray]:
    return merge_sort_network(n)


def run_coordinate_kernel(
    x: torch.Tensor, mix: torch.Tensor | None, mode: int, param: int
) -> torch.Tensor:
    """The (d,) reduction ``mode`` (0 median, 1 trimmed mean, 2 mean around the median; with
    its ``param``) of the rows of ``x``, or of ``mix @ x``, by the kernel (check
    ``use_coordinate_kernel`` first)."""
    xn = x.detach().numpy()
    if mix is None:  # a placeholder of the right type: one compilation serves both cases
        mn = np.empty((0, 0), dtype=xn.dtype)
    else:
        mn = np.ascontiguousarray(mix.detach().to(x.dtype).numpy())
    lo, hi = _network(mn.shape[0] if mix is not None else x.shape[0])
    out = np.empty(x.shape[1], dtype=xn.dtype)
    kernel = _kernel(xn.size >= _PARALLEL_MIN_SIZE)
    with launch_lock:
        kernel(xn, mn, mix is not None, lo, hi, mode, param, out)
    return torch.from_numpy(out)


#: fewest input elements for the parallel kernel: below, the single-threaded one is faster
#: (a parallel launch costs ~50-100 us, e.g. 0.3 ms against 0.1 ms at n=12, d=16384)
_PARALLEL_MIN_SIZE = 1 << 19


@functools.lru_cache(maxsize=2)
def _kernel(parallel: bool = True):  # compiled on first use
    if parallel:
        select_threading_layer()
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
