"""Trust from vouches, and voting rights per item (Tournesol's first two steps).

**Trust propagation** (``LipschiTrust``; Beylerian et al. 2023, *Tournesol: permissionless
collaborative algorithmic governance with security guarantees*): pretrusted users start at
``pretrust`` (0.8); trust flows along vouches, each voucher u splitting ``decay`` (0.8) times
its trust among its vouches and a ``sink_vouch`` (5) that absorbs the rest, so a user's
influence on others is bounded whatever it vouches for. Trust is the fixed point of

    t_v = min(1, pretrust_v + decay * sum_u t_u V_uv / (sink_vouch + sum_w V_uw))

reached by iterating from ``t = pretrust`` (a contraction). A group that nobody trusted
vouches for gets trust 0 whatever it vouches among itself.

**Voting rights** (``AffineOvertrust``): on item e, the users who scored it get
``p_ue * max(t_u, c_e)`` where ``p_ue`` is 1 for public and ``privacy_penalty`` (0.5) for
private judgements, and ``c_e`` in [0, 1] is the largest level whose *overtrust*
``sum_u p_ue max(0, c_e - t_u)`` stays within ``min_overtrust + overtrust_ratio *
sum_u p_ue t_u`` (2 and 0.1): untrusted accounts share that budget, however many they are.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from byzance.preferences.data import Vouches
from byzance.validation import Integer, Real, validate_dataclass


@dataclass
class LipschiTrust:
    """The step: vouches -> trust per user (module docstring)."""

    pretrust: float = 0.8
    decay: float = 0.8
    sink_vouch: float = 5.0
    tol: float = 1e-8
    max_iter: int = 1000

    def __post_init__(self) -> None:
        validate_dataclass(
            self,
            {
                "pretrust": Real(0, 1),
                "decay": Real(0, 1),
                "sink_vouch": Real(0, closed="neither"),
                "tol": Real(0, closed="neither"),
                "max_iter": Integer(low=1),
            },
        )

    def __call__(self, vouches: Vouches, n_users: int) -> np.ndarray:
        v = vouches
        if v.pretrusted.shape != (n_users,):
            raise ValueError(
                f"Vouches.pretrusted: expected {n_users} flags (one per user), "
                f"got shape {v.pretrusted.shape}"
            )
        out_total = np.bincount(v.voucher, v.value, n_users)
        share = self.decay * v.value / (self.sink_vouch + out_total[v.voucher])
        pre = np.where(v.pretrusted, self.pretrust, 0.0)
        trust = pre.copy()
        for _ in range(self.max_iter):
            new = np.minimum(1.0, pre + np.bincount(v.vouchee, trust[v.voucher] * share, n_users))
            done = np.max(np.abs(new - trust), initial=0.0) < self.tol
            trust = new
            if done:
                break
        return trust


@dataclass
class AffineOvertrust:
    """The step: trust per user, who scored what -> voting right per (user, item) score."""

    privacy_penalty: float = 0.5
    min_overtrust: float = 2.0
    overtrust_ratio: float = 0.1

    def __post_init__(self) -> None:
        validate_dataclass(
            self,
            {
                "privacy_penalty": Real(0, 1),
                "min_overtrust": Real(0),
                "overtrust_ratio": Real(0),
            },
        )

    def __call__(
        self,
        trust: np.ndarray,
        user: np.ndarray,
        item: np.ndarray,
        n_items: int,
        private: np.ndarray | None = None,
    ) -> np.ndarray:
        t = trust[user]
        p = np.ones_like(t) if private is None else np.where(private, self.privacy_penalty, 1.0)
        budget = self.min_overtrust + self.overtrust_ratio * np.bincount(item, p * t, n_items)
        lo, hi = np.zeros(n_items), np.ones(n_items)
        for _ in range(50):  # overtrust(c) is continuous and non-decreasing in c
            mid = 0.5 * (lo + hi)
            over = np.bincount(item, p * np.maximum(0.0, mid[item] - t), n_items) > budget
            hi = np.where(over, mid, hi)
            lo = np.where(over, lo, mid)
        return p * np.maximum(t, lo[item])
