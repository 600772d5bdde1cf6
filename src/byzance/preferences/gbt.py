"""Per-user scores from comparisons: the generalized Bradley-Terry model with the uniform root
law (Fageot, Farhadkhani, Hoang, Villemaud 2023, *Generalized Bradley-Terry models for score
estimation from paired comparisons*), Tournesol's preference-learning step.

For user u with scores ``s_u``, a comparison of ``a`` and ``b`` normalised to
``r = score / score_max`` in [-1, 1] has likelihood ∝ ``exp(r θ)`` on [-1, 1],
``θ = s_ub - s_ua``; its negative log-likelihood is ``Φ(θ) - r θ`` with the cumulant
generating function ``Φ(θ) = log(sinh θ / θ)``. Each user's scores minimise

    sum_comparisons [Φ(θ) - r θ] + sum_items s_ue² / (2 prior_std²)

(``prior_std = 7``, Tournesol's default), a strictly convex problem; all users are solved at
once by damped Newton steps on their block-diagonal sparse Hessian. The uncertainty of
``s_ue`` is, on each side, the move of that score alone (others fixed) that raises the
objective by ``nll_increase`` (1), at most ``max_uncertainty``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sps
from scipy.sparse.linalg import spsolve

from byzance.preferences.data import Comparisons
from byzance.validation import Integer, Real, validate_dataclass


def cgf(t: np.ndarray) -> np.ndarray:
    """``Φ(θ) = log(sinh θ / θ)`` (``Φ(0) = 0``), stable for every θ."""
    a = np.abs(t)
    small = a < 1e-3
    big = np.where(small, 1.0, a)
    far = big + np.log1p(-np.exp(-2 * big)) - np.log(2.0) - np.log(big)
    return np.where(small, a**2 / 6 - a**4 / 180, far)


def cgf_prime(t: np.ndarray) -> np.ndarray:
    """``Φ'(θ) = coth θ - 1/θ``, the expected r given θ."""
    small = np.abs(t) < 1e-3
    safe = np.where(small, 1.0, t)
    return np.where(small, t / 3 - t**3 / 45, 1 / np.tanh(safe) - 1 / safe)


def cgf_second(t: np.ndarray) -> np.ndarray:
    """``Φ''(θ) = 1/θ² - 1/sinh² θ`` in (0, 1/3]."""
    small = np.abs(t) < 1e-2
    safe = np.where(small, 1.0, t)
    far = 1 / safe**2 - 1 / np.sinh(np.clip(safe, -350, 350)) ** 2
    return np.where(small, 1 / 3 - t**2 / 15 + 2 * t**4 / 189, far)


@dataclass
class UserScores:
    """One row per (user, item) scored: ``score`` and its ``left`` / ``right``
    uncertainties."""

    user: np.ndarray
    item: np.ndarray
    score: np.ndarray
    left: np.ndarray
    right: np.ndarray
    n_users: int
    n_items: int

    def replace(self, score: np.ndarray, left: np.ndarray, right: np.ndarray) -> UserScores:
        return UserScores(self.user, self.item, score, left, right, self.n_users, self.n_items)


@dataclass
class UniformGBT:
    """The step: comparisons -> ``UserScores`` (module docstring)."""

    prior_std: float = 7.0
    tol: float = 1e-8
    max_iter: int = 100
    nll_increase: float = 1.0
    max_uncertainty: float = 1e3

    def __post_init__(self) -> None:
        validate_dataclass(
            self,
            {
                "prior_std": Real(0, closed="neither"),
                "tol": Real(0, closed="neither"),
                "max_iter": Integer(low=1),
                "nll_increase": Real(0, closed="neither"),
                "max_uncertainty": Real(0, closed="neither"),
            },
        )

    def __call__(self, comparisons: Comparisons) -> UserScores:
        c = comparisons
        keys_a = c.user * c.n_items + c.a
        keys_b = c.user * c.n_items + c.b
        keys, inverse = np.unique(np.concatenate([keys_a, keys_b]), return_inverse=True)
        m = len(c)
        pa, pb = inverse[:m], inverse[m:]
        r = c.score / c.score_max
        s = self._solve(pa, pb, r, keys.size)
        left, right = self._uncertainties(s, pa, pb, r)
        return UserScores(
            keys // c.n_items, keys % c.n_items, s, left, right, c.n_users, c.n_items
        )

    def _objective(self, s, pa, pb, r) -> float:
        t = s[pb] - s[pa]
        return float(np.sum(cgf(t) - r * t) + np.sum(s * s) / (2 * self.prior_std**2))

    def _solve(self, pa, pb, r, n) -> np.ndarray:
        s = np.zeros(n)
        prior = 1.0 / self.prior_std**2
        value = self._objective(s, pa, pb, r)
        for _ in range(self.max_iter):
            t = s[pb] - s[pa]
            g1 = cgf_prime(t) - r
            grad = prior * s + np.bincount(pb, g1, n) - np.bincount(pa, g1, n)
            h = cgf_second(t)
            diag = prior + np.bincount(pb, h, n) + np.bincount(pa, h, n)
            off = sps.coo_matrix(
                (np.concatenate([-h, -h]), (np.concatenate([pa, pb]), np.concatenate([pb, pa]))),
                shape=(n, n),
            )
            hess = (off + sps.diags(diag)).tocsc()
            step = spsolve(hess, grad)
            size = 1.0
            while size > 1e-6:  # backtracking: the objective must not grow
                trial = s - size * step
                new = self._objective(trial, pa, pb, r)
                if new <= value + 1e-12 * abs(value):
                    break
                size /= 2
            s, value = trial, new
            if np.max(np.abs(size * step), initial=0.0) < self.tol:
                break
        return s

    def _uncertainties(self, s, pa, pb, r) -> tuple[np.ndarray, np.ndarray]:
        n = s.size
        t = s[pb] - s[pa]
        idx = np.concatenate([pb, pa])
        sign = np.concatenate([np.ones_like(t), -np.ones_like(t)])
        tt, rr = np.concatenate([t, t]), np.concatenate([r, r])
        base = cgf(tt)
        prior = 1.0 / (2 * self.prior_std**2)

        def increase(delta: np.ndarray) -> np.ndarray:  # objective change, score p moved by δ_p
            d = sign * delta[idx]
            moved = cgf(tt + d) - base - rr * d
            return np.bincount(idx, moved, n) + prior * ((s + delta) ** 2 - s**2)

        out = []
        for direction in (-1.0, 1.0):
            lo, hi = np.zeros(n), np.full(n, self.max_uncertainty)
            for _ in range(48):
                mid = 0.5 * (lo + hi)
                over = increase(direction * mid) > self.nll_increase
                hi = np.where(over, mid, hi)
                lo = np.where(over, lo, mid)
            out.append(0.5 * (lo + hi))
        return out[0], out[1]
