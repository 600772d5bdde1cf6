"""Minimum-Diameter Averaging (El Mhamdi, Guerraoui, Rouault 2020; El Mhamdi et al. 2021)."""

from __future__ import annotations

import numpy as np
import torch

from byzance.aggregators._distances import ExactGram, mean_rows, sq_distances
from byzance.aggregators.base import Aggregator, check_f, require


def _bitmasks(conflict: np.ndarray) -> list[int]:
    """Row i of a boolean (n, n) matrix as the integer sum of 2**j over its True entries."""
    n = conflict.shape[1]
    if n <= 62:
        return (conflict.astype(np.int64) @ (np.int64(1) << np.arange(n, dtype=np.int64))).tolist()
    return [sum(1 << int(j) for j in np.flatnonzero(row)) for row in conflict]


def _has_cover(adj: list[int], verts: int, budget: int) -> bool:
    """Whether the edges of the conflict graph inside ``verts`` (a bitmask) can be covered by at
    most ``budget`` vertices (bounded search tree: for a vertex u of maximum degree, either u is
    in the cover or all its neighbours are; a vertex of degree > budget must be taken)."""
    best_u, best_deg = -1, 0
    rest = verts
    while rest:
        low = rest & -rest
        u = low.bit_length() - 1
        rest ^= low
        deg = (adj[u] & verts).bit_count()
        if deg > best_deg:
            best_u, best_deg = u, deg
    if best_deg == 0:
        return True
    if budget <= 0:
        return False
    u = best_u
    if _has_cover(adj, verts & ~(1 << u), budget - 1):
        return True
    if best_deg > budget:
        return False
    return _has_cover(adj, verts & ~(adj[u] & verts), budget - best_deg)


def min_diameter_subset(d2: torch.Tensor, f: int) -> list[int]:
    """Exact minimiser of the diameter over subsets of size n - f, from the (n, n)
    squared-distance matrix ``d2`` (sorted indices).

    Ties (several subsets of the minimal diameter, e.g. two subsets sharing the pair that
    spans it): the first in the lexicographic order of the inputs ranked by centrality, i.e.
    by the sum of their squared distances to all others (then by index), so that the choice
    does not depend on the order of the inputs (except between identical inputs).

    A subset of diameter <= t is a clique of the graph {d2 <= t}, i.e. the complement of a
    vertex cover of the *conflict graph* {d2 > t}. The smallest t among the pairwise values for
    which a cover of size <= f exists is found by bisection, each test by a bounded search tree
    of at most 2^f leaves; the optimal subset is then built greedily (visit the inputs in the
    order of centrality, keep one whenever a completion stays feasible). Cost
    O(n^2 log n + 2^f n^2) in the worst case, far below the C(n, f) subsets of plain
    enumeration.
    """
    n = d2.shape[0]
    size = n - f
    dist = d2.detach().cpu().numpy()
    iu = np.triu_indices(n, 1)
    cands = np.unique(np.concatenate([[0.0], dist[iu]]))
    everyone = (1 << n) - 1
    off_diag = ~np.eye(n, dtype=bool)

    def adjacency(t: float) -> list[int]:
        return _bitmasks((dist > t) & off_diag)

    lo, hi = 0, len(cands) - 1  # cands[-1] (the largest value) is always feasible
    while lo < hi:
        mid = (lo + hi) // 2
        if _has_cover(adjacency(float(cands[mid])), everyone, f):
            hi = mid
        else:
            lo = mid + 1
    adj = adjacency(float(cands[lo]))
    kept: list[int] = []
    kept_mask = excluded = 0
    undecided = everyone
    centrality = np.where(off_diag, dist, 0.0).sum(axis=1)
    for i in np.argsort(centrality, kind="stable").tolist():
        bit = 1 << i
        undecided &= ~bit
        if excluded & bit:
            continue
        if len(kept) < size and not adj[i] & kept_mask:
            new_excl = excluded | (adj[i] & undecided)
            budget = f - new_excl.bit_count()
            rest = undecided & ~new_excl
            if budget >= 0 and _has_cover(adj, rest, budget):
                kept.append(i)
                kept_mask |= bit
                excluded = new_excl
                undecided = rest
                continue
        excluded |= bit
    return sorted(kept)


class MDA(Aggregator):
    r"""Minimum-Diameter Averaging: the mean of the n - f inputs with the smallest diameter.

    El Mhamdi, Guerraoui, Rouault, "Distributed Momentum for Byzantine-resilient Stochastic
    Gradient Descent", ICLR 2021 (and "Fast and Robust Distributed Learning in High Dimension",
    2020):

    .. math:: S^* = \arg\min_{S \subseteq [n], |S| = n - f} \max_{i, j \in S} \|x_i - x_j\|,
              \qquad \mathrm{MDA}(x_1..x_n) = \frac{1}{n - f} \sum_{i \in S^*} x_i

    Exact (see ``min_diameter_subset``: bisection over the pairwise distances plus a vertex
    cover search of depth <= f, not an enumeration of the C(n, f) subsets); ties: see
    ``min_diameter_subset`` (independent of the order of the inputs). Requires
    :math:`n > 2f`. Non-finite inputs are at distance :math:`+\infty` from everything, so
    they are excluded while f suffice to exclude them.
    """

    name = "mda"

    def __init__(self, f: int = 0) -> None:
        self.f = check_f("MDA", f)

    def check(self, n: int) -> None:
        require("MDA", n > 2 * self.f, "n > 2f", n=n, f=self.f)

    def subset(self, x: torch.Tensor) -> list[int]:
        """Sorted indices of the selected n - f inputs."""
        d2, _ = sq_distances(x)
        return min_diameter_subset(d2, self.f)

    def aggregate(self, x: torch.Tensor, gram: ExactGram | None = None) -> torch.Tensor:
        d2, bad = sq_distances(x, gram)
        kept = min_diameter_subset(d2, self.f)
        idx = torch.tensor(kept, device=x.device)[None, :]
        return mean_rows(x, idx, bad)[0]
