"""Compiled nearest-neighbour weights: from a Gram matrix, the (n, n) matrix averaging, in
row i, the k nearest rows of row i (``aggregators._distances.nearest_weights``, which decides
when to call it).

``nearest_kernel()(g, bad, k, out)``: g the float64 (n, n) Gram matrix, bad the (n,) bool mask
of bad rows (as ``geometry.gram`` returns them), out a zeroed (n, n) array of one of
``NUMPY_DTYPES``, filled with the weights. One compiled call with the same arithmetic and
order as the torch composition ``selection_weights(nearest(sq_distances_from_gram(g, bad),
bad, k), ...)``, so the same matrix, instead of ~20 small torch operations (~50 us at n = 12;
NNM's mixing matrix, evaluated per candidate by ``attacks.Optimal``). Single-threaded: no
launch lock needed.
"""

from __future__ import annotations

import functools

import numba
import numpy as np
import torch

#: the result dtypes the kernel writes, as numpy dtypes
NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}


@functools.lru_cache(maxsize=1)
def nearest_kernel():  # compiled on first use
    @numba.njit(cache=True, nogil=True)
    def kernel(g, bad, k, out):  # pragma: no cover - compiled
        # as sq_distances_from_gram, row by row: d2 = max((g_ii + g_jj) - 2 g_ij, 0) (NaN
        # kept), 0 on the diagonal, then NaN and bad rows / columns +inf; as nearest: a stable
        # sort of the row, good columns first (order kept), the first k selected
        n = g.shape[0]
        d2 = np.empty(n, dtype=np.float64)
        weight = 1.0 / k
        for i in range(n):
            for j in range(n):
                v = (g[i, i] + g[j, j]) - 2.0 * g[i, j]
                if v < 0.0:
                    v = 0.0
                if i == j:
                    v = 0.0
                if v != v or bad[i] or bad[j]:
                    v = np.inf
                d2[j] = v
            order = np.argsort(d2, kind="mergesort")
            taken = 0
            for want_bad in (False, True):
                for t in range(n):
                    j = order[t]
                    if taken < k and bad[j] == want_bad:
                        out[i, j] = weight
                        taken += 1

    return kernel
