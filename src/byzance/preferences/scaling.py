"""Putting users' scores on a common scale: a Mehestan-style robust scaling (Allouah,
Guerraoui, Hoang, Villemaud 2022, *Robust sparse voting*) and a zero shift.

Users rate on their own scales: user u's scores are ``a_u s + b_u`` of a common ``s``.
Mehestan estimates each user's ``(a_u, b_u)`` from the users it shares items with, through
Lipschitz-resilient means, so a few users (however extreme) move another's scale by a
bounded amount:

1. *scalers*: up to ``n_scalers`` users (the most trusted, then the most active) with trust
   > 0 and at least ``min_activity`` scored items (every user if none qualifies);
2. for a user u and a scaler v sharing ``n_uv >= 2`` items, with ``sd_u|v`` the standard
   deviation of u's scores on those items: the ratio ``ρ_uv = sd_v|u / sd_u|v`` and
   ``a_u = max(0, 1 + BrMean_L(ρ_uv - 1))`` over the scalers v, each of voting right 1
   (only trusted users are scalers: accounts without trust never scale anyone);
3. then ``b_u = BrMean_L(mean_{common}(a_v x_v + b_v) - a_u mean_{common}(x_u))``.

Scalers are scaled against the (unshifted) scalers first, then every other user against the
scaled scalers (one pass each; the paper iterates its scalers' estimates). The pairwise sums
over common items are sparse matrix products (no loop over users).

``QuantileZeroShift`` then shifts every score by ``QrQtl_{L,q}`` of all scores (q = 0.15,
each user's scores weighted ``trust / count``), so that the typical item is near 0 and scores
below it are negative, as in Tournesol.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sps

from byzance.preferences.gbt import UserScores
from byzance.preferences.primitives import br_mean, qr_quantile
from byzance.validation import Integer, Real, validate_dataclass


def _pair_sums(us: UserScores, rows: np.ndarray, cols: np.ndarray, xs: np.ndarray):
    """Dense ``len(rows) x len(cols)`` sums over the items both scored: count, sums of the
    row user's scores and squares, sums of the column user's scores ``xs`` and squares."""
    shape = (us.n_users, us.n_items)
    m = sps.csr_matrix((np.ones_like(us.score), (us.user, us.item)), shape=shape)
    x = sps.csr_matrix((us.score, (us.user, us.item)), shape=shape)
    xc = sps.csr_matrix((xs, (us.user, us.item)), shape=shape)
    mr, xr, mc, xcc = m[rows], x[rows], m[cols].T.tocsc(), xc[cols].T.tocsc()
    n = (mr @ mc).toarray()
    s1, s2 = (xr @ mc).toarray(), (xr.multiply(xr) @ mc).toarray()
    t1, t2 = (mr @ xcc).toarray(), (mr @ xcc.multiply(xcc)).toarray()
    return n, s1, s2, t1, t2


@dataclass
class Mehestan:
    """The step: ``UserScores`` + trust -> ``UserScores`` on a common scale, and the
    per-user ``(a, b)`` it applied."""

    lipschitz: float = 0.1
    min_activity: int = 10
    n_scalers: int = 100

    def __post_init__(self) -> None:
        validate_dataclass(
            self,
            {
                "lipschitz": Real(0, closed="neither"),
                "min_activity": Integer(low=2),
                "n_scalers": Integer(low=1),
            },
        )

    def scalers(self, us: UserScores, trust: np.ndarray) -> np.ndarray:
        activity = np.bincount(us.user, minlength=us.n_users)
        ok = (trust > 0) & (activity >= self.min_activity)
        if not ok.any():
            ok = activity >= 1
        order = np.lexsort((-activity, -trust))  # by trust, then activity
        return np.sort(order[ok[order]][: self.n_scalers])

    def _fit(self, us, rows, cols, a_cols, b_cols):
        n, s1, s2, t1, t2 = _pair_sums(us, rows, cols, us.score)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_u, mean_v = s1 / n, t1 / n
            var_u = s2 / n - mean_u**2
            var_v = (t2 / n - mean_v**2) * a_cols**2
        same = rows[:, None] == cols[None, :]
        ok = (n >= 2) & (var_u > 1e-12) & (var_v > 1e-12) & ~same
        g, k = np.nonzero(ok)
        w = np.ones(k.size)
        ratio = np.sqrt(var_v[g, k] / var_u[g, k])
        a = 1.0 + br_mean(
            ratio - 1.0, lipschitz=self.lipschitz, voting_rights=w, groups=g,
            n_groups=rows.size,
        )
        a = np.maximum(a, 0.0)
        ok_b = (n >= 1) & ~same
        g, k = np.nonzero(ok_b)
        shift = a_cols[k] * mean_v[g, k] + b_cols[k] - a[g] * mean_u[g, k]
        b = br_mean(
            shift, lipschitz=self.lipschitz, voting_rights=np.ones(k.size), groups=g,
            n_groups=rows.size,
        )
        return a, b

    def __call__(self, us: UserScores, trust: np.ndarray):
        scalers = self.scalers(us, trust)
        a, b = np.ones(us.n_users), np.zeros(us.n_users)
        ones, zeros = np.ones(scalers.size), np.zeros(scalers.size)
        a[scalers], b[scalers] = self._fit(us, scalers, scalers, ones, zeros)
        others = np.setdiff1d(np.arange(us.n_users), scalers)
        if others.size:
            a[others], b[others] = self._fit(us, others, scalers, a[scalers], b[scalers])
        au = a[us.user]
        return us.replace(au * us.score + b[us.user], au * us.left, au * us.right), a, b


@dataclass
class QuantileZeroShift:
    """The step: shift all scores so that their ``QrQtl_{L, zero_quantile}`` is 0."""

    zero_quantile: float = 0.15
    lipschitz: float = 0.1

    def __post_init__(self) -> None:
        validate_dataclass(
            self,
            {"zero_quantile": Real(0, 1, closed="neither"), "lipschitz": Real(0, closed="neither")},
        )

    def __call__(self, us: UserScores, trust: np.ndarray) -> tuple[UserScores, float]:
        count = np.bincount(us.user, minlength=us.n_users)
        w = trust[us.user] / np.maximum(count[us.user], 1)
        shift = qr_quantile(
            us.score, self.zero_quantile, lipschitz=self.lipschitz, voting_rights=w,
            uncertainties=(us.left, us.right),
        )
        return us.replace(us.score - shift, us.left, us.right), shift
