"""Smallest Maximum Eigenvalue Averaging (Allouah et al., AISTATS 2023)."""

from __future__ import annotations

import itertools
import math

import torch

from byzance.aggregators._distances import ExactGram, mean_rows
from byzance.aggregators._distances import gram as gram_matrix
from byzance.aggregators.base import Aggregator, check_f, require
from byzance.validation import Integer, check_param

#: default bound on C(n, f), the number of subsets SMEA enumerates
MAX_SUBSETS = 100_000
_CHUNK = 4096


class SMEA(Aggregator):
    r"""SMEA: the mean of the n - f inputs whose empirical covariance has the smallest top
    eigenvalue.

    Allouah, Farhadkhani, Guerraoui, Gupta, Pinot, Stephan, "Fixing by Mixing: A Recipe for
    Optimal Byzantine ML under Heterogeneity", AISTATS 2023:

    .. math:: S^* = \arg\min_{|S| = n - f} \lambda_{\max}\Big(\frac{1}{|S|} \sum_{i \in S}
              (x_i - \bar x_S)(x_i - \bar x_S)^\top\Big), \qquad
              \mathrm{SMEA} = \bar x_{S^*}

    Exact enumeration of all C(n, f) subsets (exponential in f): the top eigenvalue of each
    subset's covariance is that of its centred (n - f) x (n - f) Gram matrix divided by
    n - f, evaluated in batches with ``torch.linalg.eigvalsh`` (float64) from one n x n Gram
    matrix. Ties: the lexicographically smallest S. Requires :math:`n > 2f` and
    :math:`C(n, f) \le` ``max_subsets`` (default 100000); beyond, use MDA, NNM or CAF.
    Subsets holding a non-finite input score :math:`+\infty`.
    """

    name = "smea"

    def __init__(self, f: int = 0, max_subsets: int = MAX_SUBSETS) -> None:
        self.f = check_f("SMEA", f)
        self.max_subsets = check_param(self, "max_subsets", max_subsets, Integer(low=1))

    def check(self, n: int) -> None:
        require("SMEA", n > 2 * self.f, "n > 2f", n=n, f=self.f)
        count = math.comb(n, self.f)
        if count > self.max_subsets:
            raise ValueError(
                f"SMEA requires C(n, f) <= max_subsets (it enumerates every subset), got "
                f"n={n}, f={self.f}, C(n, f)={count}, max_subsets={self.max_subsets}; "
                "use 'mda', 'nnm+trimmed_mean' or 'caf' for larger n or f"
            )

    def subset(self, x: torch.Tensor) -> list[int]:
        """Sorted indices of the selected n - f inputs."""
        self.check(x.shape[0])
        g, bad = gram_matrix(x)
        return self._best(g, bad)

    def _best(self, g: torch.Tensor, bad: torch.Tensor) -> list[int]:
        n = g.shape[0]
        m = n - self.f
        best_val, best_set = math.inf, list(range(m))
        combos = itertools.combinations(range(n), m)  # lexicographic order
        while True:
            chunk = list(itertools.islice(combos, _CHUNK))
            if not chunk:
                break
            idx = torch.tensor(chunk, device=g.device)
            sub = g[idx[:, :, None], idx[:, None, :]]
            row = sub.mean(dim=2, keepdim=True)
            centred = sub - row - row.transpose(1, 2) + row.mean(dim=1, keepdim=True)
            top = torch.linalg.eigvalsh(centred)[:, -1] / m
            top = torch.where(bad[idx].any(dim=1), torch.full_like(top, math.inf), top)
            i = int(torch.argmin(top))
            if float(top[i]) < best_val:
                best_val, best_set = float(top[i]), list(chunk[i])
        return best_set

    def aggregate(self, x: torch.Tensor, gram: ExactGram | None = None) -> torch.Tensor:
        g, bad = gram_matrix(x, gram)
        idx = torch.tensor(self._best(g.detach(), bad), device=x.device)[None, :]
        return mean_rows(x, idx, bad)[0]
