"""Tournesol's pipeline, each step a replaceable object (Hoang et al. 2021; solidago's
defaults, stated in each step's module):

1. ``trust``: vouches -> trust per user (``LipschiTrust``; without vouches every user has
   trust 1);
2. ``preference_learning``: comparisons -> per-user scores with uncertainties
   (``UniformGBT``);
3. ``scaling``: users' scores -> a common scale (``Mehestan``), then ``zero_shift``
   (``QuantileZeroShift``);
4. ``voting_rights``: trust -> a voting right per (user, item) (``AffineOvertrust``);
5. ``aggregation``: one robust score per item (``StandardizedQrQuantile``, q = 0.2);
6. ``post_process``: squashed into (-100, 100) (``Squash``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from byzance.preferences.aggregation import Squash, StandardizedQrQuantile
from byzance.preferences.data import Comparisons, Vouches
from byzance.preferences.gbt import UniformGBT, UserScores
from byzance.preferences.scaling import Mehestan, QuantileZeroShift
from byzance.preferences.trust import AffineOvertrust, LipschiTrust


@dataclass
class PipelineResult:
    """Every step's output; ``score`` / ``uncertainty``: the final (squashed) ones per item,
    ``raw`` / ``raw_uncertainty``: before squashing."""

    trust: np.ndarray
    user_scores: UserScores
    scaled: UserScores
    rights: np.ndarray
    raw: np.ndarray
    raw_uncertainty: np.ndarray
    score: np.ndarray
    uncertainty: np.ndarray
    scale: np.ndarray
    translation: np.ndarray
    shift: float
    sigma: float
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class Pipeline:
    """The steps (module docstring); ``run`` applies them in order."""

    trust: Any = field(default_factory=LipschiTrust)
    preference_learning: Any = field(default_factory=UniformGBT)
    scaling: Any = field(default_factory=Mehestan)
    zero_shift: Any = field(default_factory=QuantileZeroShift)
    voting_rights: Any = field(default_factory=AffineOvertrust)
    aggregation: Any = field(default_factory=StandardizedQrQuantile)
    post_process: Any = field(default_factory=Squash)

    def run(
        self,
        comparisons: Comparisons,
        vouches: Vouches | None = None,
        *,
        user_scores: UserScores | None = None,
        private: np.ndarray | None = None,
        on_step: Any = None,
    ) -> PipelineResult:
        """The pipeline on ``comparisons``; ``user_scores``: reuse a fitted step 2 (attacks
        that only add users refit them alone); ``private``: a bool per comparison (a user's
        judgement of an item is private if one of its comparisons is); ``on_step(name)``
        after each step."""
        seconds: dict[str, float] = {}
        clock = time.perf_counter()

        def done(name: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            seconds[name] = now - clock
            clock = now
            if on_step is not None:
                on_step(name)

        n_users = comparisons.n_users
        trust = np.ones(n_users) if vouches is None else self.trust(vouches, n_users)
        done("trust")
        us = self.preference_learning(comparisons) if user_scores is None else user_scores
        done("preference_learning")
        scaled, a, b = self.scaling(us, trust)
        scaled, shift = self.zero_shift(scaled, trust)
        done("scaling")
        mask = None
        if private is not None:
            mask = _private_pairs(comparisons, np.asarray(private, dtype=bool), scaled)
        rights = self.voting_rights(trust, scaled.user, scaled.item, scaled.n_items, mask)
        done("voting_rights")
        sigma = float(self.aggregation.scale(scaled, rights)) if hasattr(
            self.aggregation, "scale"
        ) else 1.0
        raw, raw_unc = self.aggregation(scaled, rights)
        done("aggregation")
        score, unc = self.post_process(raw, raw_unc)
        done("post_process")
        return PipelineResult(
            trust, us, scaled, rights, raw, raw_unc, score, unc, a, b, float(shift), sigma,
            seconds,
        )


def _private_pairs(c: Comparisons, private: np.ndarray, us: UserScores) -> np.ndarray:
    """A bool per (user, item) row of ``us``: one of the user's comparisons of it is private."""
    if private.shape != (len(c),):
        raise ValueError(
            f"Pipeline.run: private: expected one bool per comparison ({len(c)}), "
            f"got shape {private.shape}"
        )
    keys = np.concatenate([c.user * c.n_items + c.a, c.user * c.n_items + c.b])
    hidden = np.unique(keys[np.concatenate([private, private])])
    return np.isin(us.user * us.n_items + us.item, hidden)
