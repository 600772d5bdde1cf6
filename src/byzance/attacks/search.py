"""The line search of ``attacks.Optimal``: evaluating candidates, and the search itself.

``Probe`` evaluates the deployed aggregator without consuming its randomness;
``CandidateRows`` is the aggregator's input for one candidate scale (honest rows written once,
sketched or full, with the candidates' exact geometry from ``geometry.line_gram``) and the
damage it takes; ``golden_section`` and ``Memo`` the golden-section search on log-scales;
``draw_coordinates`` the sketch's coordinates, ``repeat_point`` the forged rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from byzance.aggregators.base import apply_rule
from byzance.attacks.base import clamp_finite, line_point
from byzance.geometry import ExactGram

_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0
#: the best sketched candidate is kept without an exact check when its sketched squared damage
#: exceeds the base scale's by this many standard errors of the (paired) difference
CONFIDENCE = 3.0


class Probe:
    """Evaluate ``aggregator.aggregate`` without consuming the randomness of the pipeline.

    Stochastic steps (e.g. ``Bucketing``) keep a ``torch.Generator``; its state is saved at
    construction and restored after every evaluation, so each trial sees the draw that the
    server's real aggregation of this round will use, and the run's random stream is
    unchanged by the search.
    """

    def __init__(self, aggregator: Any) -> None:
        self.aggregator = aggregator
        steps = getattr(aggregator, "steps", None) or (aggregator,)
        self._generators = [
            g for step in steps for g in vars(step).values() if isinstance(g, torch.Generator)
        ]
        self._states = [g.get_state() for g in self._generators]

    def __call__(self, x: torch.Tensor, gram: ExactGram | None = None) -> torch.Tensor:
        try:
            return apply_rule(self.aggregator, x, gram)
        finally:
            for g, state in zip(self._generators, self._states, strict=True):
                g.set_state(state)


def golden_section(value: Memo, a: float, b: float, steps: int) -> None:
    """``steps`` new evaluations of a golden-section search for a maximum of ``value`` on [a, b].

    ``value`` is memoised (a point seen before costs nothing and is not counted).
    """
    if steps <= 0 or not b > a:
        return
    value.start()
    c, d = b - _GOLDEN * (b - a), a + _GOLDEN * (b - a)
    for _ in range(2 * steps + 2):  # each turn evaluates at least one new point but the last
        if value.count >= steps:
            return
        if value(c) >= value(d):
            b, d = d, c
            c = b - _GOLDEN * (b - a)
        else:
            a, c = c, d
            d = a + _GOLDEN * (b - a)


class Memo:
    """Memoised objective on log-scales ``t``; ``count`` = new evaluations since ``start``."""

    def __init__(self, fn: Callable[[float], float]) -> None:
        self.fn = fn
        self.seen: dict[float, float] = {}
        self.count = 0

    def start(self) -> None:
        self.count = 0

    def __call__(self, t: float) -> float:
        if t not in self.seen:
            self.seen[t] = self.fn(t)
            self.count += 1
        return self.seen[t]

    def best(self) -> float:
        return max(self.seen, key=lambda t: (self.seen[t], -abs(t)))

    def neighbours(self, t: float) -> tuple[float | None, float | None]:
        below = [u for u in self.seen if u < t]
        above = [u for u in self.seen if u > t]
        return (max(below) if below else None), (min(above) if above else None)


def draw_coordinates(d: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """``k`` coordinates out of ``d`` (int64) drawn uniformly with replacement, sorted (the
    same values as ``torch.sort``; numpy sorts int32 ~2x faster than torch sorts int64)."""
    idx = torch.randint(d, (k,), generator=generator)
    if d <= np.iinfo(np.int32).max:
        return torch.from_numpy(np.sort(idx.numpy().astype(np.int32)).astype(np.int64))
    return idx.sort().values


def repeat_point(
    anchor: torch.Tensor, direction: torch.Tensor, scale: float, f: int
) -> torch.Tensor:
    """``(anchor + scale * direction).expand(f, -1).clone()``, written in place (the same
    values, two (d,) temporaries less), clamped to the dtype's finite range (``line_point``)."""
    out = anchor.new_empty(f, anchor.shape[0])
    if f > 0:
        line_point(anchor, direction, scale, out=out[0])
        out[1:] = out[0]
    return out


class CandidateRows:
    """The (h + f, k) input of the aggregator, honest rows written once.

    Each candidate only rewrites the f Byzantine rows (no concatenation per evaluation);
    ``damage(scale)`` is ``||A(rows) - mean||`` (NaN counted as infinite damage), memoised per
    scale with the output ``A(rows)`` in ``outs`` (sketched only, for ``clearly_better``).
    With ``line`` (the ``line_gram`` of the full vectors) every evaluation is given the exact
    geometry of the full candidate input (``gram(scale)``), the rows being a sketch of it.
    ``x``: the (h + f, k) input buffer with the honest rows already written, if the caller
    has one (else allocated and filled on first use).
    """

    def __init__(
        self,
        probe: Probe,
        honest: torch.Tensor,
        mean: torch.Tensor,
        anchor: torch.Tensor,
        direction: torch.Tensor,
        f: int,
        line: torch.Tensor | None = None,
        x: torch.Tensor | None = None,
    ) -> None:
        self.probe, self.h, self.f, self.mean = probe, honest.shape[0], f, mean
        self.anchor, self.direction, self.line = anchor, direction, line
        self.honest = honest
        self._x = x  # else written on first use (often never, if exact)
        self._lift: torch.Tensor | None = None
        self.values: dict[float, float] = {}
        self.outs: dict[float, torch.Tensor] = {}

    def gram(self, scale: float) -> ExactGram:
        """Exact geometry of ``[honest; b(scale) x f]`` (origin: the ``line_gram`` origin)."""
        assert self.line is not None
        h, f, lift = self.h, self.f, self._lift
        if lift is None:  # built once; only the scale changes
            lift = torch.zeros(h + f + 1, h + 3, dtype=torch.float64, device=self.line.device)
            lift[:h, :h] = torch.eye(h, dtype=torch.float64)
            lift[h : h + f, h] = 1.0  # b(s) - o = (anchor - o) + s * direction
            lift[h + f, h + 2] = 1.0
            self._lift = lift
        lift[h : h + f, h + 1] = scale
        return ExactGram(lift @ self.line @ lift.T)

    def damage(self, scale: float) -> float:
        if scale in self.values:
            return self.values[scale]
        h, x = self.h, self._x
        if x is None:
            x = self._x = self.honest.new_empty(h + self.f, self.honest.shape[1])
            x[:h] = self.honest
        if abs(scale) <= torch.finfo(x.dtype).max:
            torch.add(self.anchor, self.direction, alpha=scale, out=x[h])
            clamp_finite(x[h])
        else:
            line_point(self.anchor, self.direction, scale, out=x[h])
        x[h + 1 :] = x[h]
        out = self.probe(x, None if self.line is None else self.gram(scale))
        value = float(torch.linalg.vector_norm(out.to(self.mean.dtype) - self.mean))
        value = math.inf if math.isnan(value) else value
        self.values[scale] = value
        if self.line is not None:  # sketched: kept for clearly_better
            self.outs[scale] = out
        return value

    def clearly_better(self, scale: float, base: float) -> bool:
        """Whether the sketched squared damage at ``scale`` exceeds that at ``base`` by more
        than ``CONFIDENCE`` standard errors of the paired difference (the sketch's k
        coordinates are i.i.d. draws, so the difference is a sum of k i.i.d. terms)."""
        a, b = self.damage(scale), self.damage(base)
        if not (math.isfinite(a) and math.isfinite(b)):
            return False
        mean = self.mean.to(torch.float64)
        diffs = [self.outs[s].to(torch.float64) - mean for s in (scale, base)]
        terms = diffs[0].square() - diffs[1].square()
        k = terms.numel()
        gap = float(terms.sum())
        se = math.sqrt(k) * float(terms.std()) if k > 1 else math.inf
        return gap > CONFIDENCE * se
