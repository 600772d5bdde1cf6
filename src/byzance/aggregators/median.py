"""Coordinate-wise rules: Median, TrimmedMean and Meamed.

Each works independently on every coordinate of the (n, d) input. Non-finite values: NaN is
ranked like ``+inf`` (sorted to the end), ``+inf``/``-inf`` like huge values. With at most
f < n/2 non-finite or huge inputs per coordinate the output stays finite.

``aggregate_mixed(x, w)`` is ``aggregate(w @ x)`` for an (m, n) mixing matrix ``w`` (zero
weights skipped, see ``_coordinate.mixed_rows``), computed without forming the m mixed rows:
``Chain`` uses it after a pre-aggregator that is a mixing (``NNM.mixing``). The rule's
condition then applies to the m mixed rows.
"""

from __future__ import annotations

import torch

from byzance.aggregators._coordinate import (
    closest_to_median_mean,
    coordinate_median,
    coordinate_trimmed_mean,
)
from byzance.aggregators.base import Aggregator, check_f, require


class Median(Aggregator):
    """Coordinate-wise median (Yin et al., ICML 2018, "Byzantine-robust distributed learning").

    ``out[j] = median_i x_i[j]``; for an even n the mean of the two middle values. Tolerates any
    f < n/2: with at most f inputs arbitrary (NaN/inf included) each output coordinate lies
    between the smallest and largest honest value of that coordinate. Needs n >= 1.
    """

    name = "median"

    def aggregate(self, x: torch.Tensor) -> torch.Tensor:
        return coordinate_median(x)

    def aggregate_mixed(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``aggregate(w @ x)`` without forming ``w @ x`` (see the module docstring)."""
        return coordinate_median(x, mix=w)


class TrimmedMean(Aggregator):
    """Coordinate-wise trimmed mean (Yin et al., ICML 2018).

    Per coordinate, sort the n values ``v_(1) <= ... <= v_(n)`` and average the middle ones:
    ``out[j] = (1 / (n - 2f)) sum_{k=f+1}^{n-f} v_(k)``. Requires n > 2f. With at most f
    arbitrary inputs every kept value lies within the honest range, hence so does the output.
    """

    name = "trimmed_mean"

    def __init__(self, f: int) -> None:
        self.f = check_f("TrimmedMean", f)

    def check(self, n: int) -> None:
        require("TrimmedMean", n > 2 * self.f, "n > 2f", n=n, f=self.f)

    def aggregate(self, x: torch.Tensor) -> torch.Tensor:
        return coordinate_trimmed_mean(x, self.f)

    def aggregate_mixed(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``aggregate(w @ x)`` without forming ``w @ x`` (see the module docstring)."""
        return coordinate_trimmed_mean(x, self.f, mix=w)


class Meamed(Aggregator):
    """Mean around the median (Xie, Koyejo, Gupta 2018, "Generalized Byzantine-tolerant SGD").

    Per coordinate j, with ``m_j`` the coordinate-wise median, average the n - f values
    ``x_i[j]`` closest to ``m_j`` (distance ties go to the smaller value). Requires n > 2f.
    Huge or non-finite inputs (at most f) are never among the closest values; note that the
    output may leave the honest range by a bounded amount when Byzantine values sit just
    outside it, unlike Median and TrimmedMean.
    """

    name = "meamed"

    def __init__(self, f: int) -> None:
        self.f = check_f("Meamed", f)

    def check(self, n: int) -> None:
        require("Meamed", n > 2 * self.f, "n > 2f", n=n, f=self.f)

    def aggregate(self, x: torch.Tensor) -> torch.Tensor:
        return closest_to_median_mean(x, x.shape[0] - self.f)

    def aggregate_mixed(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``aggregate(w @ x)`` without forming ``w @ x`` (see the module docstring)."""
        return closest_to_median_mean(x, w.shape[0] - self.f, mix=w)
