"""Shared kernels of the distance-based rules: one Gram matrix, distances, neighbours, scores.

Everything pairwise is derived from a single Gram matrix ``G = X X^T``, so a rule costs one
(n, d) x (d, n) product plus O(n^2) or O(n d) work, never a Python loop over pairs. When the
vectors share a common component much larger than their spread, ``||xi||^2 + ||xj||^2 -
2<xi, xj>`` cancels badly in float32 (measured, d = 2e5, spread 1e-2 of the norm: 2e-2
relative error on the distances, 1e2 at 1e-4); ``gram`` detects this from the Gram matrix itself
and then recomputes it on the vectors centred on one of them (error back to ~2e-6, ~2.5x the
cost of one product). Distances are translation invariant, so the origin does not matter.

Non-finite inputs. A row is *bad* if it has a non-finite entry or if its squared norm (after
centring) overflows. Bad rows get distance ``+inf`` to every row, themselves included, so they
rank last everywhere and are never selected while enough good rows exist.

Exact geometry from outside (``ExactGram``). A caller that knows the exact Gram matrix of the
rows, while the rows it passes are only a sketch of them (e.g. ``Optimal`` evaluating candidates
on a few coordinates), gives it as ``gram=`` to ``gram``/``sq_distances`` (and through them to
the rules, see ``aggregators.base.apply_rule``): the pairwise geometry then comes from it and
not from the rows; rows that are bad for it, or non-finite in the sketch, are bad.
"""

from __future__ import annotations

import torch

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
    on centred (hence small) values, accumulated in float64, with one reused block buffer."""
    n, d = x.shape
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

    The rounding error of ``G_ii + G_jj - 2 G_ij`` is about ``K eps (G_ii + G_jj)`` (K ~ 16
    measured for float32, d = 1e6), to compare with the typical squared distance: the
    estimate uses the medians over the finite rows (so a few huge or duplicated Byzantine
    vectors neither trigger nor hide it).
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

    def centred(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(G, bad)`` as ``gram`` returns them: G about the origin, bad rows zeroed."""
        n = self.n
        g = self.a[:n, :n]
        bad = self.bad()
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

    ``G[i, j] = <x_i - o, x_j - o>``, computed in the input's dtype and promoted to float64,
    where the origin o is 0 (one ``X X^T`` product), or, when the rounding error of the
    distances derived from it is estimated above ``_TOL`` relative (vectors sharing a large
    common component compared with their spread), o is one of the inputs (the finite one of
    median norm) and G is recomputed from the centred rows. Distances do not depend on o.
    Rows and columns of bad rows are set to 0; ``bad`` is an (n,) bool tensor: the row has a
    non-finite entry or its squared norm overflows.

    With ``exact`` (an ``ExactGram`` of the n rows), G and bad come from it instead (a row
    with a non-finite entry in ``x``, or a non-finite row sum, is bad too), and ``x`` is not
    read but for that check.
    """
    if exact is not None:
        exact.check(x.shape[0])
        g, bad = exact.centred()
        # a non-finite entry makes the row sum non-finite (so does a float overflow of the
        # sum, which implies one of the squared norm): one cheap pass over the sketch
        odd = ~torch.isfinite(x.sum(dim=1)).to(g.device)
        if bool((odd & ~bad).any()):
            bad = bad | odd
            g = torch.where(bad[:, None] | bad[None, :], torch.zeros_like(g), g)
        return g, bad
    g = torch.mm(x, x.T).double()
    bad = ~torch.isfinite(torch.diagonal(g))
    if _cancellation_risk(g, bad, torch.finfo(x.dtype).eps):
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
