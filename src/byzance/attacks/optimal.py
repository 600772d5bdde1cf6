"""Adaptive attacks: search the scale of a base attack against the deployed aggregator."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from byzance.attacks.alie import ALittleIsEnough
from byzance.attacks.base import Attack, LinearAttack, check_int, check_real
from byzance.attacks.ipm import InnerProductManipulation

_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def check_aggregator(who: str, aggregator: Any) -> Any:
    """An aggregator (or chain) exposing ``aggregate(x)`` on an (n, d) tensor."""
    if aggregator is None:
        raise ValueError(
            f"{who} is adaptive and needs the deployed aggregator: pass aggregator=..., "
            "e.g. attacks.create('optimal_alie', aggregator=aggregators.create('krum', f=2))"
        )
    if not callable(getattr(aggregator, "aggregate", None)):
        raise TypeError(
            f"{who}: aggregator must have an aggregate(x) method (a byzance Aggregator), "
            f"got {type(aggregator).__name__}"
        )
    return aggregator


def line_search(
    evaluate: Callable[[float], float], grid: list[float], refine: int
) -> tuple[float, float]:
    """Maximise ``evaluate`` over positive scales: grid, then golden section in log-scale.

    Evaluates every scale of the (increasing) ``grid``, then runs ``refine`` evaluations of a
    golden-section search on ``[log grid[k-1], log grid[k+1]]`` around the best grid point
    ``k``. Returns the best ``(scale, value)`` seen (so never worse than any grid point).
    """
    values = [evaluate(s) for s in grid]
    k = max(range(len(grid)), key=values.__getitem__)
    best = (grid[k], values[k])
    if refine <= 0 or len(grid) < 2:
        return best
    a = math.log(grid[max(k - 1, 0)])
    b = math.log(grid[min(k + 1, len(grid) - 1)])
    seen: dict[float, float] = {}

    def value(t: float) -> float:
        nonlocal best
        if t not in seen:
            seen[t] = evaluate(math.exp(t))
            if seen[t] > best[1]:
                best = (math.exp(t), seen[t])
        return seen[t]

    c, d = b - _GOLDEN * (b - a), a + _GOLDEN * (b - a)
    while len(seen) < refine:
        if value(c) >= value(d):
            b, d = d, c
            c = b - _GOLDEN * (b - a)
        else:
            a, c = c, d
            d = a + _GOLDEN * (b - a)
    return best


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

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        try:
            return self.aggregator.aggregate(x)
        finally:
            for g, state in zip(self._generators, self._states, strict=True):
                g.set_state(state)


def _damage(probe: Probe, honest: torch.Tensor, mean: torch.Tensor, byz: torch.Tensor) -> float:
    out = probe(torch.cat([honest, byz], dim=0))
    value = float(torch.linalg.vector_norm(out.to(mean.dtype) - mean))
    return math.inf if math.isnan(value) else value


class Optimal(Attack):
    """The base attack with its scale tuned to maximise the damage on the real pipeline.

    For a ``LinearAttack`` base with line ``b(s) = anchor + s * direction`` (ALIE:
    ``mu - s * sigma``; IPM: ``-s * mu``) and an aggregator ``A``, each round picks

        s* = argmax_s || A([honest; b(s), ..., b(s)]) - mu ||,   mu = honest mean,

    by a line search on the real pipeline (``aggregator.aggregate``): a geometric grid of
    ``points`` scales ``s0 * low ... s0 * high`` (``s0`` = the base's own scale, e.g. ALIE's
    z_max or IPM's epsilon, also evaluated), then ``refine`` golden-section steps in
    log-scale around the best grid point. ``points + refine + 1`` aggregations per round
    (24 by default; the random draws of stochastic steps such as Bucketing are replayed,
    see ``Probe``, so the search does not consume the run's randomness). The base's own
    scale is among the candidates, so the damage is never
    below the base attack's. This is the "optimised" ALIE/IPM of Allouah et al. (AISTATS 2023,
    "Fixing by Mixing") and Shejwalkar & Houmansadr (NDSS 2021), with a line search instead
    of their grid. ``last_scale`` holds the scale chosen in the last round.
    """

    name = "optimal"

    def __init__(
        self,
        base: LinearAttack | str = "alie",
        aggregator: Any = None,
        low: float = 1.0 / 16.0,
        high: float = 1024.0,
        points: int = 15,
        refine: int = 8,
    ) -> None:
        who = type(self).__name__
        if isinstance(base, str):
            from byzance.attacks import create

            base = create(base)
        if not isinstance(base, LinearAttack):
            raise ValueError(
                f"{who} requires a base attack of the form anchor + scale * direction "
                f"(alie, ipm, sign_flipping, large_norm), got {base!r}"
            )
        self.base = base
        self.aggregator = check_aggregator(who, aggregator)
        self.low = check_real(who, "low", low, low=0.0, strict=True)
        self.high = check_real(who, "high", high, low=self.low)
        self.points = check_int(who, "points", points, low=2)
        self.refine = check_int(who, "refine", refine, low=0)
        self._last_scale: float | None = None

    @property
    def last_scale(self) -> float | None:
        return self._last_scale

    def forge(self, honest: torch.Tensor, f: int) -> torch.Tensor:
        self.aggregator.check(honest.shape[0] + f)
        anchor, direction = self.base.line(honest, f)
        s0 = self.base.default_scale(honest.shape[0] + f, f)
        center = s0 if s0 > 0 else 1.0
        ratio = (self.high / self.low) ** (1.0 / (self.points - 1))
        grid = sorted({center * self.low * ratio**i for i in range(self.points)} | {center})
        mean = honest.mean(dim=0)
        probe = Probe(self.aggregator)

        def evaluate(scale: float) -> float:
            byz = (anchor + scale * direction).unsqueeze(0).expand(f, -1)
            return _damage(probe, honest, mean, byz)

        scale, value = line_search(evaluate, grid, self.refine)
        if s0 <= 0 and evaluate(0.0) >= value:  # scale 0 (e.g. ALIE's z_max = 0) may be best
            scale = 0.0
        self._last_scale = scale
        return (anchor + scale * direction).expand(f, -1).clone()


class OptimalALIE(Optimal):
    """``Optimal(base=ALittleIsEnough(z), aggregator)``: ALIE with z tuned per round."""

    name = "optimal_alie"

    def __init__(
        self,
        aggregator: Any = None,
        z: float | None = None,
        low: float = 1.0 / 16.0,
        high: float = 1024.0,
        points: int = 15,
        refine: int = 8,
    ) -> None:
        super().__init__(ALittleIsEnough(z), aggregator, low, high, points, refine)


class OptimalIPM(Optimal):
    """``Optimal(base=InnerProductManipulation(epsilon), aggregator)``: IPM with tuned epsilon."""

    name = "optimal_ipm"

    def __init__(
        self,
        aggregator: Any = None,
        epsilon: float = 0.1,
        low: float = 1.0 / 16.0,
        high: float = 1024.0,
        points: int = 15,
        refine: int = 8,
    ) -> None:
        super().__init__(InnerProductManipulation(epsilon), aggregator, low, high, points, refine)
