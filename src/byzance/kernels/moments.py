"""Compiled per-coordinate mean and standard deviation of the rows, in one pass.

``kernel_mean_std(x)`` gives ``(mean, -std)`` (unbiased std; ALIE's ``honest_line``, its
anchor and direction) for an (h, d) float32/float64 CPU tensor of 2^19 elements or more
(``use_moments_kernel``): the torch path reads the input four times and writes an (h, d)
temporary, the kernel reads each block of coordinates once, in L1, with float64 sums.
"""

from __future__ import annotations

import functools

import numba
import numpy as np
import torch

from byzance.kernels.numba_setup import compiled_input, launch_lock, select_threading_layer

#: fewest elements (h x d) for the compiled one-pass kernel (below: torch, cheaper to launch)
_KERNEL_MIN_SIZE = 1 << 19
#: set to False to force the torch path (tests compare both)
_kernel_enabled = True


def use_moments_kernel(x: torch.Tensor) -> bool:
    """Whether ``kernel_mean_std`` applies: a 2-D ``compiled_input`` of 2^19 elements or more."""
    return _kernel_enabled and compiled_input(x) and x.dim() == 2 and x.numel() >= _KERNEL_MIN_SIZE


def kernel_mean_std(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean, -std)`` of the rows of ``x`` (``attacks.alie.honest_line``) in one pass over
    ``x`` (the torch path reads it four times and writes an (h, d) temporary): per block of
    coordinates, the mean then the sum of squared deviations, both accumulated in float64, in
    the block's cache lines. Check ``use_moments_kernel`` first."""
    xn = np.ascontiguousarray(x.detach().numpy())
    mean = np.empty(xn.shape[1], dtype=xn.dtype)
    direction = np.empty(xn.shape[1], dtype=xn.dtype)
    kernel = _compiled()
    chunks = _CHUNKS_PER_THREAD * numba.get_num_threads()
    with launch_lock:
        kernel(xn, mean, direction, chunks)
    return torch.from_numpy(mean), torch.from_numpy(direction)


#: coordinates per block of ``_compiled``'s kernel (h x 128 values: a few KiB, in L1; wider
#: blocks measured slower)
_LANES = 128
#: blocks are split into this many chunks per thread (one pair of scratch buffers per chunk)
_CHUNKS_PER_THREAD = 4


# Module level, not a closure: numba keys a cached function by the pickled values of its
# closure variables, and a dispatcher pickles with a per-process id, so a kernel closing over
# ``_block`` would compile again (and add a cache entry) in every new process.
@numba.njit(inline="always", nogil=True, cache=True)
def _block(x, j0, w, acc, mu, mean, direction, scale, denom):  # pragma: no cover - compiled
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


@functools.lru_cache(maxsize=1)
def _compiled():  # compiled on first use (from numba's cache after the first process)
    select_threading_layer()
    lanes = _LANES

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
                _block(x, blk * lanes, lanes, acc, mu, mean, direction, scale, denom)
        j0 = full * lanes
        if j0 < d:
            acc = np.empty(lanes, dtype=np.float64)
            mu = np.empty(lanes, dtype=np.float64)
            _block(x, j0, d - j0, acc, mu, mean, direction, scale, denom)

    return kernel
