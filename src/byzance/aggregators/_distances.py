"""Distances, neighbours and scores of the distance-based rules, from one Gram matrix.

Everything pairwise is derived from a single float64 Gram matrix (``byzance.geometry.gram``,
re-exported here with ``ExactGram`` and ``centred_gram`` for the rules: the geometry itself,
its cancellation control, its compiled kernel and its bad rows are described there), so a rule
costs one (n, d) x (d, n) product plus O(n^2) or O(n d) work, never a Python loop over pairs.
Bad rows (a non-finite entry, or a squared norm that overflows) get distance ``+inf`` to every
row, themselves included, so they rank last everywhere and are never selected while enough
good rows exist. With an ``ExactGram`` (``exact=``) the pairwise geometry comes from it and not
from the rows (see ``geometry.gram``).
"""

from __future__ import annotations

import numpy as np
import torch

from byzance.geometry import ExactGram, gram
from byzance.geometry import centred_gram as centred_gram  # re-exported for the rules
from byzance.kernels.gram import BLOCK
from byzance.kernels.nearest import NUMPY_DTYPES, nearest_kernel

INF = float("inf")
NAN = float("nan")


def sq_distances_to(x: torch.Tensor, r: int) -> torch.Tensor:
    """Squared distances (n,) float64 from every row to row ``r``, computed directly (no
    cancellation) over column blocks; NaN and overflow become ``+inf``. For ranking only:
    computed on ``x`` detached from autograd."""
    x = x.detach()
    n, d = x.shape
    step = max(1, min(d, BLOCK // max(n, 1)))
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


def krum_ranking(
    d2: torch.Tensor,
    scores: torch.Tensor,
    k: int,
    count: int,
    active: torch.Tensor | None = None,
) -> torch.Tensor:
    """Indices of the ``count`` best rows by Krum score (``scores`` from ``krum_scores(d2,
    k, active)``), best first, inactive rows after all active ones.

    Exact ties of finite scores are broken by the distances to the following neighbours (the
    (k+1)-th nearest active row, then the (k+2)-th, ...), then by index: with one neighbour
    (k = 1) the two rows of the closest pair always tie, and the order of the inputs must not
    decide between them. Without a tie among the first ``count + 1`` this is a stable sort of
    the scores (what it always was).
    """
    n = d2.shape[0]
    key = scores if active is None else torch.where(active, scores, torch.full_like(scores, NAN))
    order = torch.sort(key, stable=True).indices
    head = key[order[: count + 1]]
    if not bool(((head[1:] == head[:-1]) & torch.isfinite(head[1:])).any()):
        return order[:count]
    m = d2.clone()
    m.fill_diagonal_(INF)
    if active is not None:
        m[:, ~active] = INF
    following = torch.sort(m, dim=1).values[:, max(k, 0) :]
    columns = [following[:, j] for j in range(following.shape[1] - 1, -1, -1)]
    inactive = torch.zeros(n, dtype=torch.bool) if active is None else ~active
    keys = [c.detach().cpu().double().numpy() for c in (*columns, scores)]
    keys.append(inactive.cpu().numpy())
    ranked = np.lexsort(keys)  # the last key first; stable, so ties end by index
    return torch.from_numpy(ranked[:count].copy()).to(d2.device)


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
    (``g``, ``bad`` as ``gram`` returns them). On the CPU, one compiled call (``kernels.nearest``:
    the same arithmetic and order, so the same matrix) instead of ~20 small torch
    operations (~50 us at n = 12; NNM's mixing matrix, evaluated per candidate by
    ``attacks.Optimal``)."""
    n = g.shape[0]
    if (
        _select_kernel_enabled
        and g.device.type == "cpu"
        and bad.device.type == "cpu"
        and torch.device(device).type == "cpu"
        and dtype in NUMPY_DTYPES
        and 1 <= k <= n
    ):
        out = np.zeros((n, n), dtype=NUMPY_DTYPES[dtype])
        nearest_kernel()(g.detach().numpy().astype(np.float64, copy=False), bad.numpy(), k, out)
        return torch.from_numpy(out)
    return selection_weights(nearest(sq_distances_from_gram(g, bad), bad, k), n, dtype, device)


#: set to False to force the torch composition in ``nearest_weights`` (tests compare both)
_select_kernel_enabled = True


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
