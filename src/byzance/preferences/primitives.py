"""Robust primitives of Tournesol's pipeline, vectorised over many items (groups) at once.

Definitions (Hoang et al. 2021, *Tournesol: a quest for a large, secure and trustworthy
database of reliable human judgments*; Allouah, Guerraoui, Hoang, Villemaud 2022, *Robust
sparse voting*), in solidago's parameterisation, where ``lipschitz`` L scales the quadratic
pull towards ``default`` (a larger L weakens it):

* **quadratically regularised quantile** ``QrQtl_{L,q}(w, x, Δ)``: the root m of the
  non-decreasing function

      D(m) = (m - default) / L + sum_i w_i a_i(m) (m - x_i) / sqrt(Δ_i² + (m - x_i)²)

  where ``a_i = q / max(q, 1 - q)`` if ``m < x_i`` (voters above pull up) and
  ``(1 - q) / max(q, 1 - q)`` otherwise, and Δ_i is voter i's left uncertainty if
  ``m < x_i``, its right one otherwise; Δ_i = 0 gives the sign of ``m - x_i`` (the
  subgradient of ``|m - x_i|``). D is the derivative of the convex objective
  ``(m - default)² / 2L + sum_i w_i a_i (sqrt(Δ_i² + (m - x_i)²) - Δ_i)`` (a smoothed
  pinball loss, continuous where the side changes); at q = 1/2 every ``a_i`` is 1
  (``QrMed``).
* **Lipschitz resilience**: every term of the sum moves by at most ``w_j (1 + r_q)``
  (``r_q = min(q, 1-q) / max(q, 1-q)``) when voter j changes its value, and D grows at
  rate >= 1/L, so the root moves by at most ``L w_j (1 + r_q)`` (``2 L w_j`` for QrMed)
  whatever the change (:func:`qr_quantile_bound`).
* **Lipschitz-resilient mean** ``BrMean_L``: the voting-right weighted mean of the values
  clipped to ``[c - ρ, c + ρ]`` with centre ``c = QrMed_{L/4}`` and radius
  ``ρ = L W / 4`` (W the total voting right); it moves by at most ``L w_j``.
* **uncertainty** ``QrDev``: ``QrQtl_{L,q_dev}`` of the deviations ``|x_i - QrMed|`` with the
  same weights and uncertainties and default ``default_dev``.

Every function takes ``groups`` (an int per value: the item it belongs to) and returns one
result per group; without it, one value (a float). The roots are found by bisection on all
groups at once (one ``bincount`` per step), to ``tol`` (absolute).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from byzance.validation import Real, check_param

ArrayLike = Any


def _as_groups(values: np.ndarray, groups: ArrayLike | None, n_groups: int | None):
    if groups is None:
        return np.zeros(values.shape[0], dtype=np.int64), 1, True
    g = np.asarray(groups)
    if g.shape != values.shape or (g.size and not np.issubdtype(g.dtype, np.integer)):
        raise ValueError(
            f"groups: expected an int array of shape {values.shape}, got dtype {g.dtype} "
            f"and shape {g.shape}"
        )
    if g.size and g.min() < 0:
        raise ValueError(f"groups: expected ints >= 0, got {int(g.min())}")
    n = int(g.max()) + 1 if g.size else 0
    if n_groups is not None:
        if n_groups < n:
            raise ValueError(f"n_groups: expected >= {n} (largest group + 1), got {n_groups}")
        n = n_groups
    return g.astype(np.int64, copy=False), n, False


def _per_value(name: str, x: ArrayLike, size: int, *, nonneg: bool) -> np.ndarray:
    arr = np.broadcast_to(np.asarray(x, dtype=np.float64), (size,))
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: expected finite numbers, got a non-finite one")
    if nonneg and size and arr.min() < 0:
        raise ValueError(f"{name}: expected numbers >= 0, got {float(arr.min())!r}")
    return arr


def _uncertainties(unc: ArrayLike | None, size: int) -> tuple[np.ndarray, np.ndarray]:
    if unc is None:
        zero = np.zeros(size)
        return zero, zero
    if isinstance(unc, tuple):
        if len(unc) != 2:
            raise ValueError(f"uncertainties: expected an array or (left, right), got {unc!r}")
        return (
            _per_value("uncertainties (left)", unc[0], size, nonneg=True),
            _per_value("uncertainties (right)", unc[1], size, nonneg=True),
        )
    u = _per_value("uncertainties", unc, size, nonneg=True)
    return u, u


def _prepare(values, voting_rights, uncertainties, groups, n_groups):
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"values: expected a 1-d array, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("values: expected finite numbers, got a non-finite one")
    w = _per_value("voting_rights", voting_rights, x.size, nonneg=True)
    left, right = _uncertainties(uncertainties, x.size)
    g, n, scalar = _as_groups(x, groups, n_groups)
    return x, w, left, right, g, n, scalar


def _out(result: np.ndarray, scalar: bool) -> Any:
    return float(result[0]) if scalar else result


def _bisect_quantile(x, w, left, right, g, n, quantile, lipschitz, default, tol):
    """The root of D (module docstring) for every group, by bisection."""
    d = np.broadcast_to(np.asarray(default, dtype=np.float64), (n,)).copy()
    total = np.bincount(g, weights=w, minlength=n)
    top = max(quantile, 1.0 - quantile)
    above, below = quantile / top, (1.0 - quantile) / top
    half = lipschitz * total * max(above, below) + tol  # |m - default| <= L W max(a)
    lo, hi = d - half, d + half
    width = float(half.max()) * 2 if n else 0.0
    steps = int(np.ceil(np.log2(max(width / tol, 1.0)))) + 1
    for _ in range(min(steps, 200)):
        mid = 0.5 * (lo + hi)
        delta = mid[g] - x
        unc = np.where(delta < 0, left, right)
        denom = np.sqrt(unc * unc + delta * delta)
        force = delta / np.where(denom > 0, denom, 1.0)
        force *= w * np.where(delta < 0, above, below)
        slope = (mid - d) / lipschitz + np.bincount(g, weights=force, minlength=n)
        up = slope > 0
        hi = np.where(up, mid, hi)
        lo = np.where(up, lo, mid)
    return 0.5 * (lo + hi)


def qr_quantile(
    values: ArrayLike,
    quantile: float,
    *,
    lipschitz: float,
    voting_rights: ArrayLike = 1.0,
    uncertainties: ArrayLike | None = None,
    default: ArrayLike = 0.0,
    groups: ArrayLike | None = None,
    n_groups: int | None = None,
    tol: float = 1e-10,
) -> Any:
    """``QrQtl_{L,q}``: the quadratically regularised ``quantile`` of ``values`` (module
    docstring). ``uncertainties``: one array (symmetric) or ``(left, right)``; ``default``:
    a number or one per group. A float without ``groups``, else an array of ``n_groups``."""
    quantile = check_param("qr_quantile", "quantile", quantile, Real(0, 1, closed="neither"))
    lipschitz = check_param("qr_quantile", "lipschitz", lipschitz, Real(0, closed="neither"))
    x, w, left, right, g, n, scalar = _prepare(
        values, voting_rights, uncertainties, groups, n_groups
    )
    out = _bisect_quantile(x, w, left, right, g, n, quantile, lipschitz, default, tol)
    return _out(out, scalar)


def qr_median(values: ArrayLike, *, lipschitz: float, **kwargs: Any) -> Any:
    """``QrMed_L = QrQtl_{L,1/2}``: the quadratically regularised median."""
    return qr_quantile(values, 0.5, lipschitz=lipschitz, **kwargs)


def qr_uncertainty(
    values: ArrayLike,
    *,
    lipschitz: float,
    voting_rights: ArrayLike = 1.0,
    uncertainties: ArrayLike | None = None,
    default_dev: float = 1.0,
    quantile: float = 0.5,
    median: ArrayLike | None = None,
    groups: ArrayLike | None = None,
    n_groups: int | None = None,
) -> Any:
    """``QrDev``: ``QrQtl_{L,quantile}`` of ``|x_i - QrMed_L|`` (``median`` if given, per
    group) with the same voting rights and uncertainties, pulled towards ``default_dev``."""
    x, w, left, right, g, n, scalar = _prepare(
        values, voting_rights, uncertainties, groups, n_groups
    )
    if median is None:
        median = qr_median(
            x, lipschitz=lipschitz, voting_rights=w, uncertainties=(left, right), groups=g,
            n_groups=n,
        )
    med = np.broadcast_to(np.asarray(median, dtype=np.float64), (n,))
    dev = np.abs(x - med[g])
    return _out(
        qr_quantile(
            dev, quantile, lipschitz=lipschitz, voting_rights=w, uncertainties=(left, right),
            default=default_dev, groups=g, n_groups=n,
        ),
        scalar,
    )


def clip_mean(
    values: ArrayLike,
    center: ArrayLike,
    radius: ArrayLike,
    *,
    voting_rights: ArrayLike = 1.0,
    default: ArrayLike = 0.0,
    groups: ArrayLike | None = None,
    n_groups: int | None = None,
) -> Any:
    """``sum_i w_i clip(x_i, c - ρ, c + ρ) / sum_i w_i`` per group (``default`` where the
    total voting right is 0)."""
    x, w, _, _, g, n, scalar = _prepare(values, voting_rights, None, groups, n_groups)
    c = np.broadcast_to(np.asarray(center, dtype=np.float64), (n,))
    r = np.broadcast_to(np.asarray(radius, dtype=np.float64), (n,))
    total = np.bincount(g, weights=w, minlength=n)
    clipped = np.clip(x, (c - r)[g], (c + r)[g])
    sums = np.bincount(g, weights=w * clipped, minlength=n)
    d = np.broadcast_to(np.asarray(default, dtype=np.float64), (n,))
    out = np.where(total > 0, sums / np.where(total > 0, total, 1.0), d)
    return _out(out, scalar)


def br_mean(
    values: ArrayLike,
    *,
    lipschitz: float,
    voting_rights: ArrayLike = 1.0,
    uncertainties: ArrayLike | None = None,
    default: ArrayLike = 0.0,
    groups: ArrayLike | None = None,
    n_groups: int | None = None,
) -> Any:
    """``BrMean_L``: the mean clipped around ``QrMed_{L/4}`` at radius ``L W / 4``; moving one
    voter of voting right w moves it by at most ``L w`` (solidago's
    ``lipschitz_resilient_mean``)."""
    lipschitz = check_param("br_mean", "lipschitz", lipschitz, Real(0, closed="neither"))
    x, w, left, right, g, n, scalar = _prepare(
        values, voting_rights, uncertainties, groups, n_groups
    )
    center = qr_median(
        x, lipschitz=lipschitz / 4, voting_rights=w, uncertainties=(left, right),
        default=default, groups=g, n_groups=n,
    )
    total = np.bincount(g, weights=w, minlength=n)
    out = clip_mean(
        x, center, lipschitz * total / 4, voting_rights=w, default=default, groups=g,
        n_groups=n,
    )
    return _out(out, scalar)


def qr_quantile_bound(lipschitz: float, quantile: float, voting_right: ArrayLike) -> Any:
    """The most one voter of ``voting_right`` can move ``QrQtl_{L,q}``:
    ``L w (1 + min(q, 1-q) / max(q, 1-q))`` (``2 L w`` for the median)."""
    ratio = min(quantile, 1 - quantile) / max(quantile, 1 - quantile)
    return lipschitz * np.asarray(voting_right, dtype=np.float64) * (1.0 + ratio)


def br_mean_bound(lipschitz: float, voting_right: ArrayLike) -> Any:
    """The most one voter of ``voting_right`` can move ``BrMean_L``: ``L w``."""
    return lipschitz * np.asarray(voting_right, dtype=np.float64)
