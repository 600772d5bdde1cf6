"""Splitting a dataset among workers, from i.i.d. to fully label-sorted.

Every scheme assigns each sample to exactly one worker (disjoint, covering all samples), is
reproducible given ``seed`` (a private ``numpy.random.Generator``; global RNGs are untouched)
and leaves no worker empty.

* ``"iid"``: shuffle, then split into ``num_workers`` near-equal parts.
* ``"extreme"``: sort by label (random order within a class), then split into contiguous
  near-equal shards: each worker sees one or two classes when ``num_workers >= num_classes``.
* ``"gamma"``: gamma-similarity of Allouah et al. 2023, "Fixing by Mixing: A Recipe for
  Optimal Byzantine ML under Heterogeneity" (AISTATS): a fraction ``gamma`` of the samples,
  drawn at random, is spread i.i.d.; the remaining ``1 - gamma`` is sorted by label and split
  in contiguous shards. Each worker gets as many samples in total as under ``"iid"``.
  ``gamma = 1`` is i.i.d., ``gamma = 0`` is ``"extreme"``.
* ``"dirichlet"``: for each class ``c``, proportions ``p_c ~ Dir(alpha * 1_W)`` over the
  ``W`` workers; the class's samples (shuffled) are cut at ``floor(cumsum(p_c) * n_c)``
  (Hsu et al. 2019, "Measuring the Effects of Non-Identical Data Distribution"). Small
  ``alpha`` means strong label skew, large ``alpha`` approaches i.i.d. Draws leaving a
  worker empty are redrawn (up to ``MAX_DIRICHLET_DRAWS`` times, deterministically).

``min_size`` (many workers: the clients of a federated population): every worker gets at least
that many samples, and fewer samples than ``num_workers * min_size`` is an error. The
near-equal schemes satisfy it by themselves; ``"dirichlet"`` makes one draw (no redraws: with
thousands of workers a draw leaving none below the minimum is too rare to wait for) and tops
up each worker left below ``min_size`` with samples taken uniformly at random from the
samples the other workers hold beyond their own ``min_size`` (so nobody falls below it). The
top-up dilutes the label skew of the smallest workers only (a few samples each).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

SCHEMES = ("iid", "dirichlet", "gamma", "extreme")
MAX_DIRICHLET_DRAWS = 100


def _as_labels(labels: Any) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        arr = labels.detach().cpu().numpy()
    elif isinstance(labels, np.ndarray):
        arr = labels
    else:
        raise TypeError(
            f"partition: labels must be a 1-D torch.Tensor or numpy array, got "
            f"{type(labels).__name__}"
        )
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"partition: labels must be a non-empty 1-D array, got shape {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise ValueError(f"partition: labels must be integers, got dtype {arr.dtype}")
    if arr.min() < 0:
        raise ValueError(f"partition: labels must be >= 0, got minimum {arr.min()}")
    return arr.astype(np.int64, copy=False)


def _split_sizes(total: int, parts: int) -> np.ndarray:
    """Sizes of ``np.array_split(range(total), parts)``: near-equal, larger first."""
    sizes = np.full(parts, total // parts, dtype=np.int64)
    sizes[: total % parts] += 1
    return sizes


def _label_sorted(y: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``idx`` (already shuffled) reordered by label; the shuffle order is kept within classes."""
    return idx[np.argsort(y[idx], kind="stable")]


def _by_worker(owner: np.ndarray, num_workers: int) -> list[np.ndarray]:
    order = np.argsort(owner, kind="stable")
    counts = np.bincount(owner, minlength=num_workers)
    return np.split(order, np.cumsum(counts)[:-1])


def _dirichlet_draw(
    y: np.ndarray, classes: np.ndarray, num_workers: int, alpha: float, rng: np.random.Generator
) -> np.ndarray:
    """One draw: the owner of every sample, class by class (module docstring)."""
    owner = np.empty(len(y), dtype=np.int64)
    for c in classes:
        members = rng.permutation(np.flatnonzero(y == c))
        p = rng.dirichlet(np.full(num_workers, alpha))
        cuts = np.floor(np.cumsum(p) * len(members)).astype(np.int64)
        cuts[-1] = len(members)
        counts = np.diff(cuts, prepend=0)
        owner[members] = np.repeat(np.arange(num_workers), counts)
    return owner


def _top_up(owner: np.ndarray, num_workers: int, min_size: int, rng: np.random.Generator) -> None:
    """Give every worker at least ``min_size`` samples, in place, taking them uniformly from
    the samples held beyond ``min_size`` (requires ``len(owner) >= num_workers * min_size``)."""
    counts = np.bincount(owner, minlength=num_workers)
    deficit = np.maximum(min_size - counts, 0)
    if not deficit.any():
        return
    surplus = np.maximum(counts - min_size, 0)
    n = len(owner)
    order = rng.permutation(n)
    grouped = order[np.argsort(owner[order], kind="stable")]  # by owner, random within
    rank = np.empty(n, dtype=np.int64)
    rank[grouped] = np.arange(n) - np.repeat(np.cumsum(counts) - counts, counts)
    offered = np.flatnonzero(rank < surplus[owner])  # surplus[w] random samples of each w
    taken = rng.choice(offered, size=int(deficit.sum()), replace=False)
    owner[taken] = np.repeat(np.arange(num_workers), deficit)


def _dirichlet(
    y: np.ndarray, num_workers: int, alpha: float, rng: np.random.Generator
) -> np.ndarray:
    classes = np.unique(y)
    for _ in range(MAX_DIRICHLET_DRAWS):
        owner = _dirichlet_draw(y, classes, num_workers, alpha, rng)
        if np.bincount(owner, minlength=num_workers).min() > 0:
            return owner
    raise ValueError(
        f"partition: scheme 'dirichlet' left a worker empty in {MAX_DIRICHLET_DRAWS} draws "
        f"(alpha={alpha}, num_workers={num_workers}, samples={len(y)}); increase alpha, "
        "use fewer workers or more samples"
    )


def partition(
    labels: torch.Tensor | np.ndarray,
    num_workers: int,
    scheme: str,
    *,
    alpha: float = 1.0,
    gamma: float = 1.0,
    seed: int = 0,
    min_size: int | None = None,
) -> list[torch.Tensor]:
    """Split sample indices ``0..N-1`` among ``num_workers`` workers (see the module doc).

    Returns one int64 index tensor per worker (order within a worker is unspecified).
    ``alpha`` is used by ``"dirichlet"`` only, ``gamma`` by ``"gamma"`` only; ``min_size``:
    the least samples per worker (None: at least one, ``"dirichlet"`` by redrawing).
    """
    y = _as_labels(labels)
    n = len(y)
    if isinstance(num_workers, bool) or not isinstance(num_workers, (int, np.integer)):
        raise TypeError(f"partition: num_workers must be an int, got {type(num_workers).__name__}")
    num_workers = int(num_workers)
    if not 1 <= num_workers <= n:
        raise ValueError(
            f"partition: num_workers must be in [1, number of samples], got "
            f"num_workers={num_workers} for {n} samples"
        )
    if scheme not in SCHEMES:
        raise ValueError(
            f"partition: unknown scheme {scheme!r}; known schemes: {', '.join(SCHEMES)}"
        )
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"partition: alpha must be a finite number > 0, got alpha={alpha!r}")
    if not (isinstance(gamma, (int, float)) and 0 <= gamma <= 1):
        raise ValueError(f"partition: gamma must be in [0, 1], got gamma={gamma!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"partition: seed must be an int >= 0, got seed={seed!r}")

    if min_size is not None:
        if isinstance(min_size, bool) or not isinstance(min_size, (int, np.integer)):
            raise TypeError(f"partition: min_size must be an int, got {type(min_size).__name__}")
        if min_size < 1 or num_workers * min_size > n:
            raise ValueError(
                f"partition: cannot give each of num_workers={num_workers} workers "
                f"min_size={min_size} samples: there are {n} samples (at most "
                f"{n // max(min_size, 1)} workers of min_size samples)"
            )

    rng = np.random.default_rng(int(seed))
    perm = rng.permutation(n)
    if scheme == "dirichlet" and min_size is not None:
        owner = _dirichlet_draw(y, np.unique(y), num_workers, float(alpha), rng)
        _top_up(owner, num_workers, int(min_size), rng)
        parts = _by_worker(owner, num_workers)
    elif scheme == "dirichlet":
        parts = _by_worker(_dirichlet(y, num_workers, float(alpha), rng), num_workers)
    else:
        sizes = _split_sizes(n, num_workers)
        k = {"iid": n, "extreme": 0}.get(scheme, round(gamma * n))
        iid_sizes = _split_sizes(k, num_workers)
        # iid_sizes <= sizes elementwise, so every worker ends up with sizes[i] samples
        iid_parts = np.split(perm[:k], np.cumsum(iid_sizes)[:-1])
        sorted_rest = _label_sorted(y, perm[k:])
        rest_parts = np.split(sorted_rest, np.cumsum(sizes - iid_sizes)[:-1])
        parts = [np.concatenate(pair) for pair in zip(iid_parts, rest_parts, strict=True)]
    return [torch.from_numpy(np.ascontiguousarray(p, dtype=np.int64)) for p in parts]


def label_distribution(
    labels: torch.Tensor | np.ndarray, parts: list[torch.Tensor], num_classes: int | None = None
) -> torch.Tensor:
    """(num_workers, num_classes) matrix: row ``i`` is worker ``i``'s label histogram."""
    y = torch.as_tensor(_as_labels(labels))
    c = int(y.max()) + 1 if num_classes is None else num_classes
    owner = torch.cat([torch.full((len(p),), i) for i, p in enumerate(parts)])
    idx = torch.cat(list(parts)).long()
    counts = torch.zeros(len(parts), c, dtype=torch.float64)
    counts.index_put_((owner, y[idx]), torch.ones(len(idx), dtype=torch.float64), accumulate=True)
    return counts / counts.sum(dim=1, keepdim=True).clamp_min(1)


def label_skew(labels: torch.Tensor | np.ndarray, parts: list[torch.Tensor]) -> float:
    """Mean total-variation distance between each worker's and the global label distribution.

    0 for perfectly balanced workers; close to ``1 - 1/num_classes`` when each worker holds
    a single class of a balanced dataset.
    """
    dist = label_distribution(labels, parts)
    y = torch.as_tensor(_as_labels(labels))
    overall = torch.bincount(y, minlength=dist.shape[1]).double()
    overall /= overall.sum()
    return float(0.5 * (dist - overall).abs().sum(dim=1).mean())
