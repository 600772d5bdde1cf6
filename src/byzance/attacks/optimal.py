"""Adaptive attacks: search the scale of a base attack against the deployed aggregator."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from byzance.aggregators._distances import _BLOCK, ExactGram, _kernel_gram, _use_kernel
from byzance.aggregators.base import apply_rule
from byzance.attacks.alie import ALittleIsEnough
from byzance.attacks.base import Attack, LinearAttack, check_int, check_real
from byzance.attacks.ipm import InnerProductManipulation

_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0
#: the best sketched candidate is kept without an exact check when its sketched squared damage
#: exceeds the base scale's by this many standard errors of the (paired) difference
_CONFIDENCE = 3.0


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


def _golden(value: _Memo, a: float, b: float, steps: int) -> None:
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


class _Memo:
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


def _draw(d: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """``k`` coordinates out of ``d`` (int64) drawn uniformly with replacement, sorted (the
    same values as ``torch.sort``; numpy sorts int32 ~2x faster than torch sorts int64)."""
    idx = torch.randint(d, (k,), generator=generator)
    if d <= np.iinfo(np.int32).max:
        return torch.from_numpy(np.sort(idx.numpy().astype(np.int32)).astype(np.int64))
    return idx.sort().values


def _repeat_point(
    anchor: torch.Tensor, direction: torch.Tensor, scale: float, f: int
) -> torch.Tensor:
    """``(anchor + scale * direction).expand(f, -1).clone()``, written in place (the same
    values, two (d,) temporaries less)."""
    out = anchor.new_empty(f, anchor.shape[0])
    if f > 0:
        torch.mul(direction, scale, out=out[0])
        out[0].add_(anchor)
        out[1:] = out[0]
    return out


def line_gram(
    honest: torch.Tensor, origin: torch.Tensor, anchor: torch.Tensor, direction: torch.Tensor
) -> torch.Tensor:
    """The float64 (h + 3, h + 3) Gram matrix of ``[honest - o; anchor - o; direction; o]``.

    One pass over the full vectors, over column blocks (products in the input's dtype on
    centred values, accumulated in float64, as ``_distances.centred_gram``; for a few rows on
    the CPU, the compiled kernel, products in float64, no copy of the rows). Every candidate's
    exact geometry is a 2 x 2 combination of it (see ``_Rows.gram``).
    """
    h, d = honest.shape
    m = h + 3
    if _use_kernel(m, honest, origin, anchor, direction):
        if anchor is origin:  # (ALIE: the anchor is the mean) its row is 0: one row less
            g = torch.zeros(m, m, dtype=torch.float64)
            keep = torch.tensor([*range(h), h + 1, h + 2])
            extras = [(direction, False), (origin, False)]
            g[keep[:, None], keep] = _kernel_gram(honest, origin, extras)
            return g
        extras = [(anchor, True), (direction, False), (origin, False)]
        return _kernel_gram(honest, origin, extras)
    step = max(1, min(d, _BLOCK // m))
    buf = honest.new_empty(m, step)
    g = torch.zeros(m, m, dtype=torch.float64, device=honest.device)
    for start in range(0, d, step):  # over column blocks only
        stop = min(d, start + step)
        xb = buf[:, : stop - start]
        o = origin[start:stop]
        torch.sub(honest[:, start:stop], o, out=xb[:h])
        torch.sub(anchor[start:stop], o, out=xb[h])
        xb[h + 1] = direction[start:stop]
        xb[h + 2] = o
        g += torch.mm(xb, xb.T).double()
    return (g + g.T) / 2


class _Rows:
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
        torch.add(self.anchor, self.direction, alpha=scale, out=x[h])
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
        than ``_CONFIDENCE`` standard errors of the paired difference (the sketch's k
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
        return gap > _CONFIDENCE * se


class Optimal(Attack):
    """The base attack with its scale tuned to maximise the damage on the real pipeline.

    For a ``LinearAttack`` base with line ``b(s) = anchor + s * direction`` (ALIE:
    ``mu - s * sigma``; IPM: ``-s * mu``) and an aggregator ``A``, each round picks

        s* = argmax_s D(s),   D(s) = || A([honest; b(s), ..., b(s)]) - mu ||,   mu = honest mean,

    by a line search in ``t = log(s / s0)`` on the real pipeline (``aggregator.aggregate``),
    ``s0`` being the base's own scale (ALIE's z_max, IPM's epsilon; 1 if it is 0), over
    ``s in [s0 * low, s0 * high]``. This is the "optimised" ALIE/IPM of Allouah et al.
    (AISTATS 2023, "Fixing by Mixing") and Shejwalkar & Houmansadr (NDSS 2021), with a line
    search instead of their grid.

    Search (``q = (high / low)^(1 / (points - 1))``, the grid ratio):

    * cold (first round, after ``reset()``, or ``warm_start=False``): a geometric grid of
      ``points`` scales ``s0 * low ... s0 * high`` plus ``s0``, then ``refine``
      golden-section evaluations (log-scale) between the neighbours of the best grid point;
    * warm (later rounds): the attack is called every round on slowly changing inputs, so the
      search starts from the previous round's best ``t_prev``: the 3 points ``t_prev``,
      ``t_prev +- log q``; while the best point is the bracket's lowest or highest one (and
      inside ``[low, high]``) the bracket is widened past it with doubling steps; then
      ``refine`` golden-section evaluations between the best point's neighbours, as cold.
      ``3 + refine`` evaluations (11 by default) instead of ``points + 1 + refine`` (24),
      at the risk of tracking a local maximum a cold grid would have left.

    Sketch (``sketch = k``, used when ``k < d``): the candidates are evaluated on ``k``
    coordinates drawn uniformly (with replacement, a fresh draw per round from the attack's
    own generator, ``seed``) and scaled by ``sqrt(d / k)``, with the *exact* geometry of the
    full vectors: one pass over them gives the float64 Gram matrix of
    ``[honest - mu; anchor - mu; direction; mu]`` (``line_gram``), and the full Gram matrix of
    a candidate input ``[honest; b(s), ..., b(s)]`` is a quadratic in ``s`` read from it (an
    ``ExactGram``, passed to the pipeline as ``gram=``, see ``aggregators.base.apply_rule``).
    Distance- and norm-based steps (NNM, Bucketing, Clipping, ARC, Krum, Multi-Krum, Bulyan's
    selection, MDA, CAF, SMEA, MoNNA, GeometricMedian) then select, weight and clip exactly as
    on the full vectors; coordinate-wise steps work on the sketched coordinates. For such a
    pipeline the sketched output *is* the sketch of the full output, so the sketched squared
    damage is an unbiased estimate of the full one (a sum of k i.i.d. terms, relative noise
    ``O(1 / sqrt(k))``, no bias from sketched distances, no misplaced cliff where the
    Byzantine vectors start being discarded). Steps without Gram support (user steps,
    CenteredClipping) compute their geometry from the sketch (unbiased distances, not exact),
    and so do the steps after them. An evaluation costs ``O(n k)``, plus one ``O(n d)`` pass
    per round. Final choice: the best sketched candidate is kept when its sketched squared
    damage exceeds that of the base scale ``s0`` (also evaluated on the sketch) by more than
    ``_CONFIDENCE = 3`` standard errors of the paired difference (estimated from the k
    terms); otherwise both are aggregated exactly on the full vectors and the more damaging
    is kept (2 full aggregations, the only ones). If the inputs are not finite (nor then is
    the Gram matrix of the line), the sketch falls back to its own distances and the full
    vectors are evaluated exactly at the best candidate, its nearest smaller candidate and
    ``s0`` (at most 3 full aggregations). ``sketch=None`` or ``0``: every candidate is
    evaluated exactly on all coordinates and no Gram matrix is passed.

    Guarantee: without a sketch, ``D(s*) >= D(s0)`` on the full vectors (``s0`` is among the
    exact candidates); likewise with a sketch when the sketch shows no clear gain (exact
    final comparison). Otherwise the choice between the best candidate and ``s0`` is made on
    the sketch with exact distances: for a Gram-aware pipeline a wrong choice then needs a
    3-sigma deviation of a sum of k i.i.d. terms (about 1e-3 under the normal approximation,
    and only between candidates whose full damages are close); for other pipelines the
    sketched distances add their own noise.
    Stochastic steps (e.g. Bucketing) replay this round's random draw at every evaluation and
    the run's random stream is untouched (see ``Probe``). ``last_scale`` holds the scale
    returned in the last round.
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
        sketch: int | None = 16384,
        warm_start: bool = True,
        seed: int = 0,
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
        self.sketch = None if sketch is None else check_int(who, "sketch", sketch, low=0)
        if not isinstance(warm_start, bool):
            raise TypeError(f"{who}: warm_start must be a bool, got {type(warm_start).__name__}")
        self.warm_start = warm_start
        self.seed = check_int(who, "seed", seed, low=0)
        self.reset()

    def reset(self) -> None:
        """Forget the previous round's best scale (next search is cold) and re-seed the sketch."""
        self._last_scale: float | None = None
        self._hint: float | None = None
        self._generator = torch.Generator().manual_seed(self.seed)

    @property
    def last_scale(self) -> float | None:
        return self._last_scale

    def forge(self, honest: torch.Tensor, f: int) -> torch.Tensor:
        h, d = honest.shape
        self.aggregator.check(h + f)
        anchor, direction, mean = self.base.line_with_mean(honest, f)
        s0 = self.base.default_scale(h + f, f)
        center = s0 if s0 > 0 else 1.0
        probe = Probe(self.aggregator)
        k = self.sketch or d
        line = None
        if k < d:  # candidates on a random sketch of k coordinates, scaled by sqrt(d / k)
            line = line_gram(honest, mean, anchor, direction)
            if not bool(torch.isfinite(line).all()):
                line = None  # non-finite inputs: sketched distances, exact final check
            idx = _draw(d, k, self._generator).to(honest.device)
            c = math.sqrt(d / k)
            x = honest.new_empty(h + f, k)  # the sketched input, honest rows written here
            torch.index_select(honest, 1, idx, out=x[:h])
            x[:h].mul_(c)
            rows = _Rows(
                probe,
                x[:h],
                mean.index_select(0, idx).mul_(c),
                anchor.index_select(0, idx).mul_(c),
                direction.index_select(0, idx).mul_(c),
                f,
                line,
                x,
            )
            exact = _Rows(probe, honest, mean, anchor, direction, f)
        else:
            rows = exact = _Rows(probe, honest, mean, anchor, direction, f)

        value = _Memo(lambda t: rows.damage(center * math.exp(t)))
        self._search(value)
        t_best = value.best()
        self._hint = t_best
        scale = center * math.exp(t_best)
        if rows is exact:  # exact search: compare with the base scale (usually seen already)
            if scale != s0:
                base_value = value(0.0) if s0 > 0 else exact.damage(0.0)
                if base_value >= value.seen[t_best]:
                    scale = s0
        elif line is not None:  # exact geometry on the sketch: s0 vs the best, on the sketch
            if scale != s0 and not rows.clearly_better(scale, s0):
                scale = max((s0, scale), key=lambda s: (exact.damage(s), s == s0))
        else:  # exact check of the best candidate, its lower neighbour and the base scale
            below, _ = value.neighbours(t_best)
            scales = {s0, scale} | ({center * math.exp(below)} if below is not None else set())
            scale = max(sorted(scales), key=lambda s: (exact.damage(s), s == s0))
        self._last_scale = scale
        return _repeat_point(anchor, direction, scale, f)

    def _search(self, value: _Memo) -> None:
        """Evaluate ``value`` (memoised, on t = log(s / s0)) at the points of the search."""
        lo, hi = math.log(self.low), math.log(self.high)
        step = (hi - lo) / (self.points - 1)
        if self._hint is None or not self.warm_start:
            for i in range(self.points):
                value(lo + i * step)
            if lo <= 0.0 <= hi:
                value(0.0)
        else:
            t0 = min(max(self._hint, lo), hi)
            for t in (t0 - step, t0, t0 + step):
                value(min(max(t, lo), hi))
            grow = step
            while True:  # widen past the best point while it is the bracket's edge
                best = value.best()
                below, above = value.neighbours(best)
                if below is None and best > lo:
                    grow *= 2
                    value(max(best - grow, lo))
                elif above is None and best < hi:
                    grow *= 2
                    value(min(best + grow, hi))
                else:
                    break
        best = value.best()
        below, above = value.neighbours(best)
        a = best if below is None else below
        b = best if above is None else above
        _golden(value, a, b, self.refine)


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
        sketch: int | None = 16384,
        warm_start: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__(
            ALittleIsEnough(z), aggregator, low, high, points, refine, sketch, warm_start, seed
        )


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
        sketch: int | None = 16384,
        warm_start: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__(
            InnerProductManipulation(epsilon),
            aggregator,
            low,
            high,
            points,
            refine,
            sketch,
            warm_start,
            seed,
        )
