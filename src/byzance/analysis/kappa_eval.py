r"""The robustness ratio of a rule on one input, and on many candidate inputs at once.

With S the first n - f rows (the honest ones),

.. math:: r(x) = \frac{\|F(x) - \bar x_S\|^2}{\frac{1}{|S|} \sum_{i \in S} \|x_i - \bar x_S\|^2}

(Allouah et al., AISTATS 2023): every value of r is a lower bound on the rule's kappa*.
``RatioEvaluator`` computes r for a batch of candidates with the rule's own computation:
a coordinate-wise rule (mean, median, trimmed mean, Meamed, sign vote) gets the whole batch
in one call, the candidates side by side as columns of one (n, B d) input (its output on a
column depends on that column only); any other rule is called once per candidate. It also
tells whether the rule commutes with translations and positive scalings (then r is
invariant under them and the search may normalise the honest rows) and whether two calls on
one input differ (a randomised rule, e.g. bucketing).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from byzance.aggregators import Average, Meamed, Median, SignMajority, TrimmedMean
from byzance.aggregators import create as create_rule

#: rules whose output on a coordinate depends on that coordinate of the inputs only
COORDINATE_WISE: tuple[type, ...] = (Average, Median, TrimmedMean, Meamed, SignMajority)


def build_rule(aggregator: Any, f: int) -> Any:
    """A rule object from a spec (``create(spec, f=f)``) or the given callable itself."""
    if isinstance(aggregator, str):
        return create_rule(aggregator, f=f)
    if not callable(aggregator):
        raise ValueError(f"kappa: expected a rule spec or a callable rule, got {aggregator!r}")
    return aggregator


def honest_moments(x: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (..., d) and mean squared deviation (...,) of the first ``m`` rows of ``x``."""
    h = x[..., :m, :]
    mean = h.mean(dim=-2)
    var = ((h - mean.unsqueeze(-2)) ** 2).sum(dim=-1).mean(dim=-1)
    return mean, var


def ratio_of(out: torch.Tensor, x: torch.Tensor, m: int) -> torch.Tensor:
    """r for outputs ``out`` (..., d) of inputs ``x`` (..., n, d); +inf where the honest rows
    coincide and the output differs from them, 0 where both vanish."""
    mean, var = honest_moments(x, m)
    num = ((out - mean) ** 2).sum(dim=-1)
    safe = torch.where(var > 0, var, torch.ones_like(var))
    return torch.where(var > 0, num / safe, torch.where(num > 0, torch.inf, 0.0))


def robustness_ratio(aggregator: Any, x: Any, f: int) -> float:
    """r(x) for one (n, d) input ``x`` whose first n - f rows are the honest ones, computed
    by one plain call of the rule (a spec is built with ``create(spec, f=f)``)."""
    rule = build_rule(aggregator, f)
    t = torch.as_tensor(x, dtype=torch.float64)
    if t.ndim != 2 or not 0 <= f < t.shape[0]:
        raise ValueError(f"robustness_ratio: expected an (n, d) input and 0 <= f < n, got shape "
                         f"{tuple(t.shape)}, f={f!r}")
    out = torch.as_tensor(rule(t), dtype=torch.float64).reshape(-1)
    return float(ratio_of(out, t, t.shape[0] - f))


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one thread inside the block (tiny inputs: threads only add overhead)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class RatioEvaluator:
    """r on batches of candidate inputs (B, n, d) for one rule, n and f; counts evaluations."""

    def __init__(self, rule: Any, n: int, f: int, dim: int) -> None:
        self.rule, self.n, self.f, self.dim, self.m = rule, n, f, dim, n - f
        self.coordinate_wise = type(rule) in COORDINATE_WISE
        self.evaluations = 0
        self.randomised, self.equivariant = self._probe()

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(self.rule(x), dtype=torch.float64).reshape(-1)

    def _probe(self) -> tuple[bool, bool]:
        gen = torch.Generator().manual_seed(12345)
        x = torch.randn(self.n, self.dim, generator=gen, dtype=torch.float64)
        y = self._call(x)
        if any(not torch.equal(y, self._call(x)) for _ in range(4)):  # draws may coincide
            return True, False
        for scale in (1e-3, 2.5, 1e3):  # F(c + s x) = c + s F(x) at small and large scales
            shift = torch.randn(self.dim, generator=gen, dtype=torch.float64) * 3.0 * scale
            moved = shift + scale * x
            tol = 1e-7 * float(moved.abs().max())
            if not torch.allclose(self._call(moved), shift + scale * y, rtol=1e-7, atol=tol):
                return False, False
        return False, True

    def outputs(self, xb: torch.Tensor) -> torch.Tensor:
        """F on each candidate: (B, n, d) -> (B, d)."""
        b, n, d = xb.shape
        self.evaluations += b
        if self.coordinate_wise:
            cols = xb.permute(1, 0, 2).reshape(n, b * d)
            return self._call(cols).reshape(b, d)
        return torch.stack([self._call(xb[i]) for i in range(b)])

    def __call__(self, xb: torch.Tensor) -> torch.Tensor:
        """r of each candidate (B,), float64 (NaN where the rule's output is NaN)."""
        return ratio_of(self.outputs(xb), xb, self.m)
