"""Shared kernels of the distance-based rules: one Gram matrix, distances, neighbours, scores.

Everything pairwise is derived from a single Gram matrix ``G = X X^T``, so a rule costs one
(n, d) x (d, n) product plus O(n^2) or O(n d) work, never a Python loop over pairs. When the
vectors share a common component much larger than their spread, ``||xi||^2 + ||xj||^2 -
2<xi, xj>`` cancels badly in float32 (measured, d = 2e5, spread 1e-2 of the norm: 2e-2
relative error on the distances, 1e2 at 1e-4); ``gram`` detects this from the Gram matrix itself
and then recomputes it on the vectors centred on one of them (error back to ~2e-6, ~2.5x the
cost of one product). Distances are translation invariant, so the origin does not matter.

Compiled Gram kernel. For a few rows (up to ``_KERNEL_ROWS``: 64 float32, 128 float64) of a
CPU tensor of 2^19 elements or more, when numba is installed, every Gram matrix here (``gram``,
``centred_gram``, ``ExactGram.of``, and ``attacks.optimal.line_gram``; so also those of
GeometricMedian and CenteredClipping) comes from a numba kernel instead of BLAS:
for n = 12, d = 431,080 float32 a BLAS ``X X^T`` is far from its peak (M = N = 12, huge K); the
kernel reads each value once per 4 x 4 tile of rows, converts (and centres) it in float64 and
sums exact products in float64, over a fixed number of column groups (bit-for-bit the same
result for any number of threads). It is both faster (see ``docs/benchmarks.md``) and far more
accurate than the float32 product: the centred recomputation is only needed when the spread
of the vectors is below ~1e-5 of their norm (float32 products: ~0.2).

Non-finite inputs. A row is *bad* if it has a non-finite entry or if its squared norm (after
centring) overflows (in the input's dtype, whatever the precision of the products). Bad rows
get distance ``+inf`` to every row, themselves included, so they rank last everywhere and are
never selected while enough good rows exist.

Exact geometry from outside (``ExactGram``). A caller that knows the exact Gram matrix of the
rows, while the rows it passes are only a sketch of them (e.g. ``Optimal`` evaluating candidates
on a few coordinates), gives it as ``gram=`` to ``gram``/``sq_distances`` (and through them to
the rules, see ``aggregators.base.apply_rule``): the pairwise geometry then comes from it and
not from the rows; rows that are bad for it, or non-finite in the sketch, are bad.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch

from byzance.aggregators._coordinate import (
    _launch_lock,
    _select_threading_layer,
    compiled_input,
    numba,
)

INF = float("inf")
#: elements per column block of the Gram accumulation (16 MiB of float32)
_BLOCK = 1 << 22
#: largest accepted estimated relative error of the distances from the raw Gram matrix
_TOL = 1e-4


def _centre_index(x: torch.Tensor) -> int:
    """Row used as the origin: the finite row of median norm (ties: smallest index).

    With fewer than n/2 outliers the median norm lies within the range of the inliers' norms,
    so this is a cheap, outlier-tolerant choice (one pass over x, no sort of the data).
    """
    norms = torch.linalg.vector_norm(x, dim=1).double()
    finite = torch.isfinite(norms)
    if not bool(finite.any()):
        return 0
    idx = torch.nonzero(finite).flatten()
    vals = norms[idx]
    order = torch.sort(vals, stable=True).indices
    return int(idx[order[(len(order) - 1) // 2]])


def _centred_gram(x: torch.Tensor) -> torch.Tensor:
    """``Xc Xc^T`` with ``Xc = X - x_c`` (c from ``_centre_index``), accumulated in float64 over
    column blocks centred into a small reused buffer (no n x d copy of the input)."""
    return centred_gram(x, x[_centre_index(x)])


def centred_gram(x: torch.Tensor, origin: torch.Tensor) -> torch.Tensor:
    """Gram matrix (float64) of the rows ``x_i - origin``: block products in the input's dtype
    on centred (hence small) values, accumulated in float64, with one reused block buffer (or,
    for a few rows on the CPU, the compiled kernel: centred and multiplied in float64)."""
    n, d = x.shape
    if _use_kernel(n, x, origin):
        return _kernel_gram(x, origin)
    step = max(1, min(d, _BLOCK // max(n, 1)))
    buf = torch.empty(n, step, dtype=x.dtype, device=x.device)
    g = torch.zeros(n, n, dtype=torch.float64, device=x.device)
    for start in range(0, d, step):  # over column blocks only, never over rows or pairs
        stop = min(d, start + step)
        xb = buf[:, : stop - start]
        torch.sub(x[:, start:stop], origin[start:stop], out=xb)
        g += torch.mm(xb, xb.T).double()
    return g


def _cancellation_risk(g: torch.Tensor, bad: torch.Tensor, eps: float) -> bool:
    """Whether distances from the raw Gram may be inaccurate (relative error above ``_TOL``).

    The rounding error of ``G_ii + G_jj - 2 G_ij`` is about ``K eps (G_ii + G_jj)``, ``eps``
    that of the products' dtype (K ~ 16 measured for float32 BLAS, d = 1e6; the float64
    kernel, eps = 2.2e-16, measured K <= 2.4 up to d = 4e6, so K = 16 is a safe bound for
    both), to compare with the typical squared distance: the estimate uses the medians over
    the finite rows (so a few huge or duplicated Byzantine vectors neither trigger nor hide
    it).
    """
    good = ~bad
    if int(good.sum()) < 2:
        return False
    gg = g[good][:, good]
    diag = torch.diagonal(gg)
    iu = torch.triu_indices(gg.shape[0], gg.shape[0], 1, device=g.device)
    d2 = (diag[:, None] + diag[None, :] - 2 * gg)[iu[0], iu[1]]
    scale = float(torch.median(d2.clamp_min(0)))
    err = 16 * eps * 2 * float(torch.median(diag))
    return err > _TOL * scale


class ExactGram:
    """The exact geometry of the n rows ``x_1..x_n`` of an input, known apart from its values.

    Holds ``a``, the float64 (n + 1, n + 1) Gram matrix of ``[x_1 - o, ..., x_n - o, o]`` for
    some origin ``o`` (ideally near the rows, so that the centred products do not cancel):
    ``a[:n, :n]`` gives the distances (translation invariant), the last row and column the
    true norms (``||x_i||^2 = a_ii + 2 a_in + a_nn``). Row maps ``y = L x`` (mixing,
    averaging, scaling) transform it exactly, ``y_i - o = (L (x - o))_i + ((L 1)_i - 1) o``, so
    pre-aggregators pass it on (``linear``). A row whose diagonal entry is not finite is bad.
    """

    def __init__(self, a: torch.Tensor) -> None:
        if a.dim() != 2 or a.shape[0] != a.shape[1] or a.shape[0] < 1:
            raise ValueError(f"ExactGram needs an (n + 1, n + 1) matrix, got {tuple(a.shape)}")
        self.a = a.to(torch.float64)

    @classmethod
    def of(cls, x: torch.Tensor, origin: torch.Tensor | None = None) -> ExactGram:
        """Computed from the rows of ``x`` (origin: ``origin``, by default the row of median
        norm), each product over centred values, accumulated in float64."""
        if origin is None:
            origin = x[_centre_index(x)]
            if not bool(torch.isfinite(origin).all()):
                origin = torch.zeros_like(origin)
        if _use_kernel(x.shape[0] + 1, x, origin):  # no copy of x
            return cls(_kernel_gram(x, origin, extras=[(origin, False)]))
        rows = torch.cat([x, (2 * origin)[None]])  # last row centred on origin: origin itself
        return cls(centred_gram(rows, origin))

    @property
    def n(self) -> int:
        return self.a.shape[0] - 1

    def check(self, n: int) -> None:
        if self.n != n:
            raise ValueError(f"ExactGram describes {self.n} rows, the input has {n}")

    def bad(self) -> torch.Tensor:
        """(n,) bool: the rows whose squared norm (about the origin) is not finite."""
        return ~torch.isfinite(torch.diagonal(self.a)[: self.n])

    def centred(self, odd: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(G, bad)`` as ``gram`` returns them: G about the origin, bad rows (and the rows
        ``odd``, if given) zeroed. On the CPU in numpy: the same values, ~4x faster than the
        torch steps at n ~ 12 (``attacks.Optimal`` calls it per candidate)."""
        n = self.n
        if self.a.device.type == "cpu" and not self.a.requires_grad:
            a = self.a.numpy()
            bad_np = ~np.isfinite(np.diagonal(a)[:n])
            if odd is not None:
                bad_np |= odd.cpu().numpy()
            g_np = (a[:n, :n] + a[:n, :n].T) / 2
            if bad_np.any():
                g_np[bad_np, :] = 0.0
                g_np[:, bad_np] = 0.0
            return torch.from_numpy(g_np), torch.from_numpy(bad_np)
        g = self.a[:n, :n]
        bad = self.bad()
        if odd is not None:
            bad = bad | odd.to(bad.device)
        if bool(bad.any()):
            g = torch.where(bad[:, None] | bad[None, :], torch.zeros_like(g), g)
        return (g + g.T) / 2, bad

    def sq_norms(self) -> torch.Tensor:
        """(n,) float64 squared norms ``||x_i||^2`` (non-finite for bad rows)."""
        n = self.n
        return torch.diagonal(self.a)[:n] + 2 * self.a[:n, n] + self.a[n, n]

    def linear(self, w: torch.Tensor) -> ExactGram:
        """The geometry of ``y = w x`` for an (m, n) matrix ``w``: ``M a M^T`` with
        ``M = [[w, w 1 - 1], [0, 1]]``. As in ``weighted_rows``, an output row that puts weight
        on a bad row is bad; bad rows with zero weight do not matter."""
        n = self.n
        w = w.to(device=self.a.device, dtype=torch.float64)
        m = w.shape[0]
        bad = self.bad()
        a = self.a
        if bool(bad.any()):
            drop = torch.cat([bad, bad.new_zeros(1)])
            a = torch.where(drop[:, None] | drop[None, :], torch.zeros_like(a), a)
        lift = torch.zeros(m + 1, n + 1, dtype=torch.float64, device=a.device)
        lift[:m, :n] = w
        lift[:m, n] = w.sum(dim=1) - 1
        lift[m, n] = 1
        out = lift @ a @ lift.T
        hit = ((w != 0) & bad[None, :]).any(dim=1)
        if bool(hit.any()):
            mark = torch.cat([hit, hit.new_zeros(1)])
            out = torch.where(mark[:, None] | mark[None, :], torch.zeros_like(out), out)
            out[:m][hit, torch.nonzero(hit).flatten()] = INF
        return ExactGram(out)


def gram(x: torch.Tensor, exact: ExactGram | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(G, bad)``: a float64 Gram matrix of the rows (up to a common origin) and the
    bad-row mask.

    ``G[i, j] = <x_i - o, x_j - o>``, computed in the input's dtype and promoted to float64
    (for a few rows on the CPU: by the compiled kernel, products in float64, see
    ``_kernel_gram``), where the origin o is 0 (one ``X X^T`` product), or, when the rounding
    error of the distances derived from it is estimated above ``_TOL`` relative (vectors
    sharing a large common component compared with their spread), o is one of the inputs (the
    finite one of median norm) and G is recomputed from the centred rows. Distances do not
    depend on o.
    Rows and columns of bad rows are set to 0; ``bad`` is an (n,) bool tensor: the row has a
    non-finite entry or its squared norm overflows.

    With ``exact`` (an ``ExactGram`` of the n rows), G and bad come from it instead (a row
    with a non-finite entry in ``x``, or a non-finite row sum, is bad too), and ``x`` is not
    read but for that check.
    """
    if exact is not None:
        exact.check(x.shape[0])
        # a non-finite entry makes the row sum non-finite (so does a float overflow of the
        # sum, which implies one of the squared norm): one cheap pass over the sketch
        return exact.centred(odd=~torch.isfinite(x.sum(dim=1).detach()))
    if _use_kernel(x.shape[0], x):  # products in float64 (exact for float32 inputs)
        g, eps = _kernel_gram(x), torch.finfo(torch.float64).eps
    else:
        g, eps = torch.mm(x, x.T).double(), torch.finfo(x.dtype).eps
    bad = ~torch.isfinite(torch.diagonal(g))
    if _cancellation_risk(g, bad, eps):
        g = _centred_gram(x)
        bad = ~torch.isfinite(torch.diagonal(g))
    if bool(bad.any()):
        g = torch.where(bad[:, None] | bad[None, :], torch.zeros_like(g), g)
    # symmetrise: the two halves of a GEMM result may differ in the last bit
    g = (g + g.T) / 2
    return g, bad


def sq_distances_to(x: torch.Tensor, r: int) -> torch.Tensor:
    """Squared distances (n,) float64 from every row to row ``r``, computed directly (no
    cancellation) over column blocks; NaN and overflow become ``+inf``."""
    n, d = x.shape
    step = max(1, min(d, _BLOCK // max(n, 1)))
    buf = torch.empty(n, step, dtype=x.dtype, device=x.device)
    out = torch.zeros(n, dtype=torch.float64, device=x.device)
    for start in range(0, d, step):  # over column blocks only
        stop = min(d, start + step)
        xb = buf[:, : stop - start]
        torch.sub(x[:, start:stop], x[r, start:stop], out=xb)
        out += torch.linalg.vector_norm(xb, dim=1).double().square()
    return torch.where(torch.isfinite(out), out, torch.full_like(out, INF))


def sq_distances_from_gram(g: torch.Tensor, bad: torch.Tensor) -> torch.Tensor:
    """Squared distances ``max(G_ii + G_jj - 2 G_ij, 0)``; 0 on the diagonal of good rows,
    ``+inf`` in the rows and columns of bad rows (NaN also becomes ``+inf``)."""
    diag = torch.diagonal(g)
    d2 = (diag[:, None] + diag[None, :] - 2 * g).clamp_min(0)
    d2.fill_diagonal_(0)
    d2 = torch.where(torch.isnan(d2), torch.full_like(d2, INF), d2)
    if bool(bad.any()):
        d2 = torch.where(bad[:, None] | bad[None, :], torch.full_like(d2, INF), d2)
    return d2


def sq_distances(
    x: torch.Tensor, exact: ExactGram | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairwise squared Euclidean distances of the rows of ``x`` (float64, (n, n)) and ``bad``
    (from ``exact`` when given, see ``gram``)."""
    g, bad = gram(x, exact)
    return sq_distances_from_gram(g, bad), bad


def nearest(d2: torch.Tensor, bad: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (n, k) of the k nearest rows of each row (itself included, as distance 0).

    Order: by distance, then good rows before bad rows, then by index (stable sorts), so a
    bad row is never a neighbour while k good rows are available, even of a bad row.
    """
    key = torch.sort(d2, dim=1, stable=True).indices
    # stable re-sort by the bad flag of the column: good columns first, order kept otherwise
    flag = bad[key].to(torch.int8)
    order = torch.sort(flag, dim=1, stable=True).indices
    return torch.gather(key, 1, order)[:, :k]


def krum_scores(d2: torch.Tensor, k: int, active: torch.Tensor | None = None) -> torch.Tensor:
    """Krum scores: ``score(i) = sum of the k smallest d2[i, j]`` over active ``j != i``.

    Inactive rows score ``+inf``. Summation is in increasing order (deterministic).
    """
    n = d2.shape[0]
    m = d2.clone()
    m.fill_diagonal_(INF)
    if active is not None:
        m[:, ~active] = INF
    if k <= 0:
        scores = torch.zeros(n, dtype=d2.dtype, device=d2.device)
    else:
        scores = torch.sort(m, dim=1).values[:, :k].sum(dim=1)
    scores = torch.where(torch.isnan(scores), torch.full_like(scores, INF), scores)
    if active is not None:
        scores = torch.where(active, scores, torch.full_like(scores, INF))
    return scores


def argmin_active(scores: torch.Tensor, active: torch.Tensor) -> int:
    """Index of the smallest score among active rows (ties: smallest index)."""
    idx = torch.nonzero(active).flatten()
    return int(idx[torch.argmin(scores[idx])])


def lowest(scores: torch.Tensor, m: int) -> torch.Tensor:
    """Indices of the m smallest scores (ties: smallest index), in increasing index order."""
    order = torch.sort(scores, stable=True).indices[:m]
    return torch.sort(order).values


def selection_weights(
    idx: torch.Tensor, n: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """The (r, n) matrix averaging, in row r, the rows ``idx[r, :]`` of an (n, d) input."""
    r, k = idx.shape
    w = torch.zeros(r, n, dtype=dtype, device=device)
    w.scatter_(1, idx, 1.0 / k)
    return w


def nearest_weights(
    g: torch.Tensor, bad: torch.Tensor, k: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """The (n, n) matrix averaging, in row i, the k nearest rows of row i: that is,
    ``selection_weights(nearest(sq_distances_from_gram(g, bad), bad, k), n, dtype, device)``
    (``g``, ``bad`` as ``gram`` returns them). On the CPU, with numba, one compiled call
    (the same arithmetic and order, so the same matrix) instead of ~20 small torch
    operations (~50 us at n = 12; NNM's mixing matrix, evaluated per candidate by
    ``attacks.Optimal``)."""
    n = g.shape[0]
    if (
        _select_kernel_enabled
        and numba is not None
        and g.device.type == "cpu"
        and bad.device.type == "cpu"
        and torch.device(device).type == "cpu"
        and dtype in _NUMPY_DTYPES
        and 1 <= k <= n
    ):
        out = np.zeros((n, n), dtype=_NUMPY_DTYPES[dtype])
        _nearest_kernel()(g.detach().numpy().astype(np.float64, copy=False), bad.numpy(), k, out)
        return torch.from_numpy(out)
    return selection_weights(nearest(sq_distances_from_gram(g, bad), bad, k), n, dtype, device)


#: set to False to force the torch composition in ``nearest_weights`` (tests compare both)
_select_kernel_enabled = True
_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}


@functools.lru_cache(maxsize=1)
def _nearest_kernel():  # compiled on first use
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


def mean_rows(x: torch.Tensor, idx: torch.Tensor, bad: torch.Tensor) -> torch.Tensor:
    """``out[r] = mean_j x[idx[r, j]]`` for an (r, k) index tensor (see ``weighted_rows``)."""
    return weighted_rows(x, selection_weights(idx, x.shape[0], x.dtype, x.device), bad)


def weighted_rows(x: torch.Tensor, w: torch.Tensor, bad: torch.Tensor) -> torch.Tensor:
    """``w @ x`` for an (r, n) weight matrix, as one product (no gather of r*k rows of size d).

    Bad rows with zero weight are zeroed first (0 * inf would give NaN); an output row that
    puts weight on a bad row is recomputed from the weighted rows only, and is non-finite, as
    its definition says.
    """
    w = w.to(x.dtype)
    if not bool(bad.any()):
        return torch.mm(w, x)
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    out = torch.mm(w, torch.where(bad[:, None], zero, x))
    hit = ((w != 0) & bad[None, :]).any(dim=1)
    for r in torch.nonzero(hit).flatten().tolist():  # only when > f rows are bad
        used = torch.nonzero(w[r]).flatten()
        out[r] = (w[r, used, None] * x[used]).sum(dim=0)
    return out


# ---------------------------------------------------------------------------------------------
# compiled fast path of the Gram matrix

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

#: set to False to force the torch fallback (tests compare both paths)
_kernel_enabled = True


def _use_kernel(rows: int, *tensors: torch.Tensor) -> bool:
    """Whether ``_kernel_gram`` applies to these tensors (rows, origin, extra rows), making a
    Gram matrix of ``rows`` rows: a few rows of float32/float64 CPU tensors without autograd."""
    x = tensors[0]
    return (
        _kernel_enabled
        and compiled_input(*tensors)
        and 1 <= rows <= _KERNEL_ROWS[x.dtype]
        and rows * x.shape[-1] >= _KERNEL_MIN_SIZE
    )


def _kernel_gram(
    x: torch.Tensor,
    origin: torch.Tensor | None = None,
    extras: Sequence[tuple[torch.Tensor, bool]] = (),
) -> torch.Tensor:
    """The float64 Gram matrix of the rows ``[x_1 - o, ..., x_n - o, e_1 - c_1 o, ...]`` (no
    centring of x without ``origin``; ``extras``: up to 3 vectors ``e_k`` with their flags
    ``c_k``, only with an origin), by the compiled kernel (check ``_use_kernel`` first).

    Every value is converted to float64 and centred there, and the products are taken and
    summed in float64: exact products for float32 inputs, so the result is about as accurate
    as a float64 product of the exact rows. A squared norm beyond the largest value of the
    input's dtype is set to ``+inf``: such a row overflows in its own dtype (as in a product
    in it), so which rows are bad does not depend on the path taken.
    """
    if len(extras) > 3 or (extras and origin is None):
        raise ValueError("_kernel_gram takes at most 3 extra rows, with an origin")
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
    with _launch_lock:
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
    _select_threading_layer()

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
