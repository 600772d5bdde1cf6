"""Compiled Gram kernel: the float64 Gram matrix of a few wide rows, in place of BLAS.

For a few rows (up to ``_KERNEL_ROWS``: 64 float32, 128 float64) of a CPU tensor of 2^19
elements or more (``use_gram_kernel``), every Gram matrix of ``byzance.geometry`` (``gram``,
``centred_gram``, ``ExactGram.of``, ``line_gram``; so also those of GeometricMedian and
CenteredClipping) comes from this numba kernel instead of BLAS: for n = 12, d = 431,080
float32 a BLAS ``X X^T`` is far from its peak (M = N = 12, huge K); the kernel reads each value
once per 4 x 4 tile of rows, converts (and centres) it in float64 and sums exact products in
float64, over a fixed number of column groups (bit-for-bit the same result for any number of
threads). It is both faster (see ``docs/benchmarks.md``) and far more accurate than the
float32 product: the centred recomputation of ``geometry.gram`` is only needed when the spread
of the vectors is below ~1e-5 of their norm (float32 products: ~0.2).

``BLOCK``: the column block of the torch paths that accumulate a Gram matrix (or distances)
block by block, for whatever the kernel does not take.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numba
import numpy as np
import torch

from byzance.kernels.numba_setup import compiled_input, launch_lock, select_threading_layer

INF = float("inf")
#: elements per column block of the torch Gram accumulation (16 MiB of float32)
BLOCK = 1 << 22

#: most rows (extra rows included) for which the kernel replaces BLAS, per input dtype
#: (measured, see docs/benchmarks.md)
_KERNEL_ROWS = {torch.float32: 64, torch.float64: 128}
#: fewest elements (rows x d) for which the kernel is used: below, its fixed cost (a parallel
#: launch, ~50-100 us) outweighs what it saves (measured, see docs/benchmarks.md)
_KERNEL_MIN_SIZE = 1 << 19
#: column groups of the kernel: fixed, so its summation order (every bit of the result) does
#: not depend on the number of threads
_GROUPS = 32
#: bytes of each row read per column block
_CHUNK = 2048

#: set to False to force the torch path (tests compare both paths)
_kernel_enabled = True


def use_gram_kernel(rows: int, *tensors: torch.Tensor) -> bool:
    """Whether ``kernel_gram`` applies to these tensors (rows, origin, extra rows), making a
    Gram matrix of ``rows`` rows: a few rows of float32/float64 CPU tensors without autograd."""
    x = tensors[0]
    return (
        _kernel_enabled
        and compiled_input(*tensors)
        and 1 <= rows <= _KERNEL_ROWS[x.dtype]
        and rows * x.shape[-1] >= _KERNEL_MIN_SIZE
    )


def kernel_gram(
    x: torch.Tensor,
    origin: torch.Tensor | None = None,
    extras: Sequence[tuple[torch.Tensor, bool]] = (),
) -> torch.Tensor:
    """The float64 Gram matrix of the rows ``[x_1 - o, ..., x_n - o, e_1 - c_1 o, ...]`` (no
    centring of x without ``origin``; ``extras``: up to 3 vectors ``e_k`` with their flags
    ``c_k``, only with an origin), by the compiled kernel (check ``use_gram_kernel`` first).

    Every value is converted to float64 and centred there, and the products are taken and
    summed in float64: exact products for float32 inputs, so the result is about as accurate
    as a float64 product of the exact rows. A squared norm beyond the largest value of the
    input's dtype is set to ``+inf``: such a row overflows in its own dtype (as in a product
    in it), so which rows are bad does not depend on the path taken.
    """
    if len(extras) > 3 or (extras and origin is None):
        raise ValueError("kernel_gram takes at most 3 extra rows, with an origin")
    xn = x.detach().contiguous().numpy()
    on = (x[0] if origin is None else origin).detach().contiguous().numpy()
    es = [e.detach().contiguous().numpy() for e, _ in extras]
    flags = np.zeros(3, dtype=np.bool_)
    flags[: len(extras)] = [c for _, c in extras]
    es += [on] * (3 - len(es))  # unused slots
    r = x.shape[0] + len(extras)
    out = np.empty((r, r), dtype=np.float64)
    lanes = max(16, _CHUNK // x.element_size())
    kernel = _gram_kernel(origin is not None)
    with launch_lock:
        kernel(xn, on, es[0], es[1], es[2], len(extras), flags, lanes, _GROUPS, out)
    g = torch.from_numpy(out)
    if x.dtype != torch.float64:
        diag = torch.diagonal(g)
        over = diag > torch.finfo(x.dtype).max
        if bool(over.any()):
            diag[over] = INF
    return g


@functools.lru_cache(maxsize=2)
def _gram_kernel(centred: bool):  # compiled on first use, once per value of ``centred``
    select_threading_layer()

    @numba.njit(parallel=True, cache=True, nogil=True, fastmath={"reassoc", "contract"})
    def kernel(x, origin, e0, e1, e2, ne, flags, lanes, groups, out):  # pragma: no cover
        # Columns are cut into blocks of `lanes`, the blocks into `groups` contiguous runs
        # (fewer if there are fewer blocks), one run per parallel task with its own partial
        # sums, added in a fixed order at the end: the result does not depend on the threads.
        # Every value is converted to float64 (and centred: `centred`, a compile-time
        # constant, for the rows of x, one origin load for all of them; the flags for the
        # extra rows) as it is read, so the products of float32 values are exact. Each dot
        # product is a sum along the lanes of a block (vectorised: "reassoc" allows it; no
        # "nnan"/"ninf", so inf and NaN propagate as in any matrix product), 4 rows against 4
        # others at a time: 8 loads for 16 multiply-adds (10 in the 4 x 4 tiles on the
        # diagonal). Rows of x past n (padding to a multiple of 4) repeat its last row, the
        # extra rows are a 4-row tile (unused ones repeat the origin or are 0): the sums of
        # padding rows are never read.
        n, d = x.shape
        n4 = (n + 3) // 4 * 4
        size = n4 + 4  # partial sums: rows of x (padded), then the tile of extra rows
        blocks = (d + lanes - 1) // lanes
        groups = min(groups, blocks)
        per = (blocks + groups - 1) // groups if groups > 0 else 0
        # no array expression outside the prange: numba would run each as one more
        # parallel launch (~50 us each)
        part = np.empty((max(groups, 1), size, size))
        for grp in numba.prange(groups):
            acc = part[grp]
            acc[:, :] = 0.0
            zero = np.zeros(lanes, dtype=x.dtype)
            for blk in range(grp * per, min(blocks, (grp + 1) * per)):
                j0 = blk * lanes
                w = min(lanes, d - j0)
                o = origin[j0 : j0 + w]
                z = zero[:w]
                # the extra rows e_k - c_k o, each with its own origin (o or 0)
                f0 = e0[j0 : j0 + w]
                f1 = e1[j0 : j0 + w]
                f2 = e2[j0 : j0 + w]
                q0 = o if flags[0] else z
                q1 = o if flags[1] else z
                q2 = o if flags[2] else z
                for a in range(0, n4 + 4 * (ne > 0), 4):
                    if a < n4:
                        a0 = x[a, j0 : j0 + w]
                        a1 = x[min(a + 1, n - 1), j0 : j0 + w]
                        a2 = x[min(a + 2, n - 1), j0 : j0 + w]
                        a3 = x[min(a + 3, n - 1), j0 : j0 + w]
                        s00 = s01 = s02 = s03 = s11 = s12 = s13 = s22 = s23 = s33 = 0.0
                        for lane in range(w):
                            v0 = np.float64(a0[lane])
                            v1 = np.float64(a1[lane])
                            v2 = np.float64(a2[lane])
                            v3 = np.float64(a3[lane])
                            if centred:
                                c = np.float64(o[lane])
                                v0 -= c
                                v1 -= c
                                v2 -= c
                                v3 -= c
                            s00 += v0 * v0
                            s01 += v0 * v1
                            s02 += v0 * v2
                            s03 += v0 * v3
                            s11 += v1 * v1
                            s12 += v1 * v2
                            s13 += v1 * v3
                            s22 += v2 * v2
                            s23 += v2 * v3
                            s33 += v3 * v3
                    else:  # the tile of extra rows on the diagonal
                        s00 = s01 = s02 = s03 = s11 = s12 = s13 = s22 = s23 = s33 = 0.0
                        for lane in range(w):
                            v0 = np.float64(f0[lane]) - np.float64(q0[lane])
                            v1 = np.float64(f1[lane]) - np.float64(q1[lane])
                            v2 = np.float64(f2[lane]) - np.float64(q2[lane])
                            s00 += v0 * v0
                            s01 += v0 * v1
                            s02 += v0 * v2
                            s11 += v1 * v1
                            s12 += v1 * v2
                            s22 += v2 * v2
                    acc[a, a] += s00
                    acc[a, a + 1] += s01
                    acc[a, a + 2] += s02
                    acc[a, a + 3] += s03
                    acc[a + 1, a + 1] += s11
                    acc[a + 1, a + 2] += s12
                    acc[a + 1, a + 3] += s13
                    acc[a + 2, a + 2] += s22
                    acc[a + 2, a + 3] += s23
                    acc[a + 3, a + 3] += s33
                    if a >= n4:
                        continue
                    for b in range(a + 4, n4 + 4 * (ne > 0), 4):
                        s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = 0.0
                        s20 = s21 = s22 = s23 = s30 = s31 = s32 = s33 = 0.0
                        if b < n4:  # rows of x against rows of x
                            b0 = x[b, j0 : j0 + w]
                            b1 = x[min(b + 1, n - 1), j0 : j0 + w]
                            b2 = x[min(b + 2, n - 1), j0 : j0 + w]
                            b3 = x[min(b + 3, n - 1), j0 : j0 + w]
                            for lane in range(w):
                                u0 = np.float64(b0[lane])
                                u1 = np.float64(b1[lane])
                                u2 = np.float64(b2[lane])
                                u3 = np.float64(b3[lane])
                                v0 = np.float64(a0[lane])
                                v1 = np.float64(a1[lane])
                                v2 = np.float64(a2[lane])
                                v3 = np.float64(a3[lane])
                                if centred:
                                    c = np.float64(o[lane])
                                    u0 -= c
                                    u1 -= c
                                    u2 -= c
                                    u3 -= c
                                    v0 -= c
                                    v1 -= c
                                    v2 -= c
                                    v3 -= c
                                s00 += v0 * u0
                                s01 += v0 * u1
                                s02 += v0 * u2
                                s03 += v0 * u3
                                s10 += v1 * u0
                                s11 += v1 * u1
                                s12 += v1 * u2
                                s13 += v1 * u3
                                s20 += v2 * u0
                                s21 += v2 * u1
                                s22 += v2 * u2
                                s23 += v2 * u3
                                s30 += v3 * u0
                                s31 += v3 * u1
                                s32 += v3 * u2
                                s33 += v3 * u3
                        else:  # rows of x against the extra rows (the 4th is padding)
                            for lane in range(w):
                                u0 = np.float64(f0[lane]) - np.float64(q0[lane])
                                u1 = np.float64(f1[lane]) - np.float64(q1[lane])
                                u2 = np.float64(f2[lane]) - np.float64(q2[lane])
                                v0 = np.float64(a0[lane])
                                v1 = np.float64(a1[lane])
                                v2 = np.float64(a2[lane])
                                v3 = np.float64(a3[lane])
                                if centred:
                                    c = np.float64(o[lane])
                                    v0 -= c
                                    v1 -= c
                                    v2 -= c
                                    v3 -= c
                                s00 += v0 * u0
                                s01 += v0 * u1
                                s02 += v0 * u2
                                s10 += v1 * u0
                                s11 += v1 * u1
                                s12 += v1 * u2
                                s20 += v2 * u0
                                s21 += v2 * u1
                                s22 += v2 * u2
                                s30 += v3 * u0
                                s31 += v3 * u1
                                s32 += v3 * u2
                        acc[a, b] += s00
                        acc[a, b + 1] += s01
                        acc[a, b + 2] += s02
                        acc[a, b + 3] += s03
                        acc[a + 1, b] += s10
                        acc[a + 1, b + 1] += s11
                        acc[a + 1, b + 2] += s12
                        acc[a + 1, b + 3] += s13
                        acc[a + 2, b] += s20
                        acc[a + 2, b + 1] += s21
                        acc[a + 2, b + 2] += s22
                        acc[a + 2, b + 3] += s23
                        acc[a + 3, b] += s30
                        acc[a + 3, b + 1] += s31
                        acc[a + 3, b + 2] += s32
                        acc[a + 3, b + 3] += s33
        r = n + ne
        for i in range(r):  # fixed order: group 0, 1, ...
            pi = i if i < n else n4 + i - n
            for j in range(i, r):
                pj = j if j < n else n4 + j - n
                s = 0.0
                for grp in range(groups):
                    s += part[grp, pi, pj]
                out[i, j] = s
                out[j, i] = s

    return kernel
