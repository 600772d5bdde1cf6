"""From users' scores on a common scale to one global score per item, and post-processing.

* ``StandardizedQrQuantile`` (the default; solidago 0.4.1's default ``Standardize`` scaling
  followed by ``EntitywiseQrQuantile``: ``dev_quantile = 0.9``, ``quantile = 0.2``,
  ``lipschitz = 0.1``): the scores and uncertainties are divided by
  ``σ = QrQtl_{L,0.9}`` of the scores' absolute values (all items, weighted by voting
  rights, default 1), then each item gets ``QrQtl_{L,q}`` of its standardised scores with
  their voting rights and uncertainties (q = 0.2: a cautious score that needs agreement to
  rise), and ``QrDev_L`` as its uncertainty. Scores stay in standardised units.
  One voter of voting right w moves an item by at most ``L w (1 + q / (1 - q))``
  (:meth:`StandardizedQrQuantile.bound`; for a fixed σ), however extreme its score.
* ``StandardizedQrMedian``: the same with q = 1/2 (bound ``2 L w``).
* ``Squash`` (``score_max = 100``): ``s -> score_max s / sqrt(1 + s²)`` into
  ``(-score_max, score_max)``, Lipschitz with constant ``score_max``.

All items are aggregated in one vectorised call (``groups`` = item).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from byzance.preferences.gbt import UserScores
from byzance.preferences.primitives import qr_quantile, qr_quantile_bound, qr_uncertainty
from byzance.validation import Real, validate_dataclass


@dataclass
class StandardizedQrQuantile:
    """The step: scores + voting rights -> (score, uncertainty) per item, standardised."""

    quantile: float = 0.2
    dev_quantile: float = 0.9
    lipschitz: float = 0.1

    def __post_init__(self) -> None:
        validate_dataclass(
            self,
            {
                "quantile": Real(0, 1, closed="neither"),
                "dev_quantile": Real(0, 1, closed="neither"),
                "lipschitz": Real(0, closed="neither"),
            },
        )

    def scale(self, us: UserScores, rights: np.ndarray) -> float:
        """σ, the standardisation scale."""
        return qr_quantile(
            np.abs(us.score), self.dev_quantile, lipschitz=self.lipschitz, voting_rights=rights,
            uncertainties=(us.left, us.right), default=1.0,
        )

    def __call__(self, us: UserScores, rights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sigma = max(self.scale(us, rights), 1e-12)
        x, unc = us.score / sigma, (us.left / sigma, us.right / sigma)
        kw = dict(
            lipschitz=self.lipschitz, voting_rights=rights, uncertainties=unc, groups=us.item,
            n_groups=us.n_items,
        )
        return qr_quantile(x, self.quantile, **kw), qr_uncertainty(x, **kw)

    def bound(self, voting_right) -> np.ndarray:
        """The most voters of total ``voting_right`` move an item's (standardised) score."""
        return qr_quantile_bound(self.lipschitz, self.quantile, voting_right)


@dataclass
class StandardizedQrMedian(StandardizedQrQuantile):
    """``StandardizedQrQuantile`` at the median."""

    quantile: float = 0.5


@dataclass
class Squash:
    """The step: ``s -> score_max s / sqrt(1 + s²)``; uncertainties mapped through the ends
    of ``[s - u, s + u]``."""

    score_max: float = 100.0

    def __post_init__(self) -> None:
        validate_dataclass(self, {"score_max": Real(0, closed="neither")})

    def squash(self, s: np.ndarray) -> np.ndarray:
        return self.score_max * s / np.sqrt(1.0 + s * s)

    def __call__(self, score: np.ndarray, unc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self.squash(score)
        return out, 0.5 * (self.squash(score + unc) - self.squash(score - unc))
