"""The exact pairwise geometry of vectors: Gram matrices, and ``ExactGram``.

Everything pairwise is derived from a single Gram matrix ``G = X X^T``, so a rule costs one
(n, d) x (d, n) product plus O(n^2) or O(n d) work, never a Python loop over pairs. When the
vectors share a common component much larger than their spread, ``||xi||^2 + ||xj||^2 -
2<xi, xj>`` cancels badly in float32 (measured, d = 2e5, spread 1e-2 of the norm: 2e-2
relative error on the distances, 1e2 at 1e-4); ``gram`` detects this from the Gram matrix itself
and then recomputes it on the vectors centred on one of them (error back to ~2e-6, ~2.5x the
cost of one product). Distances are translation invariant, so the origin does not matter.

Compiled Gram kernel. For a few rows of a large CPU tensor, every Gram matrix here (``gram``,
``centred_gram``, ``ExactGram.of``, ``line_gram``) comes from the numba kernel of
``byzance.kernels.gram`` instead of BLAS: products in float64, faster and far more accurate
(the centred recomputation is then only needed when the spread of the vectors is below ~1e-5
of their norm; float32 products: ~0.2). Otherwise: torch products in the input's dtype,
accumulated in float64 over column blocks.

Non-finite inputs. A row is *bad* if it has a non-finite entry or if its squared norm (after
centring) overflows (in the input's dtype, whatever the precision of the products). Bad rows
get distance ``+inf`` to every row, themselves included, so they rank last everywhere and are
never selected while enough good rows exist.

Exact geometry from outside (``ExactGram``). A caller that knows the exact Gram matrix of the
rows, while the rows it passes are only a sketch of them (e.g. ``attacks.Optimal`` evaluating
candidates on a few coordinates, from ``line_gram``), gives it as ``gram=`` to ``gram`` /
``aggregators._distances.sq_distances`` (and through them to the rules, see
``aggregators.base.apply_rule``): the pairwise geometry then comes from it and not from the
rows; rows that are bad for it, or non-finite in the sketch, are bad.
"""

from __future__ import annotations

import numpy as np
import torch

from byzance.kernels.gram import BLOCK, kernel_gram, use_gram_kernel

INF = float("inf")
#: largest accepted estimated relative error of the distances from the raw Gram matrix
_TOL = 1e-4


def centre_index(x: torch.Tensor) -> int:
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
    """``Xc Xc^T`` with ``Xc = X - x_c`` (c from ``centre_index``), accumulated in float64 over
    column blocks centred into a small reused buffer (no n x d copy of the input)."""
    return centred_gram(x, x[centre_index(x)])


def centred_gram(x: torch.Tensor, origin: torch.Tensor) -> torch.Tensor:
    """Gram matrix (float64) of the rows ``x_i - origin``: block products in the input's dtype
    on centred (hence small) values, accumulated in float64, with one reused block buffer (or,
    for a few rows on the CPU, the compiled kernel: centred and multiplied in float64)."""
    n, d = x.shape
    if use_gram_kernel(n, x, origin):
        return kernel_gram(x, origin)
    step = max(1, min(d, BLOCK // max(n, 1)))
    buf = torch.empty(n, step, dtype=x.dtype, device=x.device)
    g = torch.zeros(n, n, dtype=torch.float64, device=x.device)
    grad = x.requires_grad or origin.requires_grad  # autograd: no out= (differentiable)
    for start in range(0, d, step):  # over column blocks only, never over rows or pairs
        stop = min(d, start + step)
        if grad:
            xb = x[:, start:stop] - origin[start:stop]
        else:
            xb = buf[:, : stop - start]
            torch.sub(x[:, start:stop], origin[start:stop], out=xb)
        prod = torch.mm(xb, xb.T).double()
        if grad:
            g = g + prod
        else:
            g += prod
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
    gg = g.detach()[good][:, good]
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
            origin = x[centre_index(x)]
            if not bool(torch.isfinite(origin).all()):
                origin = torch.zeros_like(origin)
        if use_gram_kernel(x.shape[0] + 1, x, origin):  # no copy of x
            return cls(kernel_gram(x, origin, extras=[(origin, False)]))
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
        ``M = [[w, w 1 - 1], [0, 1]]``. As in ``aggregators._distances.weighted_rows``, an
        output row that puts weight on a bad row is bad; bad rows with zero weight do not
        matter."""
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
    ``kernel_gram``), where the origin o is 0 (one ``X X^T`` product), or, when the rounding
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
    if use_gram_kernel(x.shape[0], x):  # products in float64 (exact for float32 inputs)
        g, eps = kernel_gram(x), torch.finfo(torch.float64).eps
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


def line_gram(
    honest: torch.Tensor, origin: torch.Tensor, anchor: torch.Tensor, direction: torch.Tensor
) -> torch.Tensor:
    """The float64 (h + 3, h + 3) Gram matrix of ``[honest - o; anchor - o; direction; o]``.

    One pass over the full vectors, over column blocks (products in the input's dtype on
    centred values, accumulated in float64, as ``centred_gram``; for a few rows on
    the CPU, the compiled kernel, products in float64, no copy of the rows). Every candidate's
    exact geometry is a 2 x 2 combination of it (see ``attacks.search.CandidateRows.gram``).
    """
    h, d = honest.shape
    m = h + 3
    if use_gram_kernel(m, honest, origin, anchor, direction):
        if anchor is origin:  # (ALIE: the anchor is the mean) its row is 0: one row less
            g = torch.zeros(m, m, dtype=torch.float64)
            keep = torch.tensor([*range(h), h + 1, h + 2])
            extras = [(direction, False), (origin, False)]
            g[keep[:, None], keep] = kernel_gram(honest, origin, extras)
            return g
        extras = [(anchor, True), (direction, False), (origin, False)]
        return kernel_gram(honest, origin, extras)
    step = max(1, min(d, BLOCK // m))
    buf = honest.new_empty(m, step)
    g = torch.zeros(m, m, dtype=torch.float64, device=honest.device)
    for start in range(0, d, step):  # over column blocks only
        stop = min(d, start + step)
        xb = buf[:, : stop - start]
        o = origin[start:stop]
        torch.sub(honest[:, start:stop], o, out=xb[:h])
        torch.sub(anchor[start:stop], o, out=xb[h])
        xb[h + 1] = direction[start:stop]
        xb[h + 2] = o
        g += torch.mm(xb, xb.T).double()
    return (g + g.T) / 2
