"""Adaptive attacks: search the scale of a base attack against the deployed aggregator.

The search's pieces (candidate evaluation, golden-section search) are ``attacks.search``; the
exact geometry of the candidates is ``geometry.line_gram``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from byzance.attacks.alie import ALittleIsEnough
from byzance.attacks.base import (
    SEED,
    Attack,
    LinearAttack,
    check_int,
    check_memory,
    check_real,
)
from byzance.attacks.ipm import InnerProductManipulation
from byzance.attacks.search import (
    CandidateRows,
    Memo,
    Probe,
    draw_coordinates,
    golden_section,
    repeat_point,
)
from byzance.geometry import line_gram
from byzance.validation import Boolean, OptionalOf, Real, check_param, param_error

#: what ``base`` accepts: anchor + scale * direction, the line the search moves along
_LINEAR = "a linear attack (alie, ipm, sign_flipping, large_norm) or its name"


def check_aggregator(who: str, aggregator: Any) -> Any:
    """An aggregator (or chain) exposing ``aggregate(x)`` on an (n, d) tensor."""
    if aggregator is None:
        raise param_error(
            f"{who}.aggregator",
            f"the deployed aggregation rule ({who} is adaptive and needs it, e.g. "
            "attacks.create('optimal_alie', aggregator=aggregators.create('krum', f=2)))",
            aggregator,
        )
    if not callable(getattr(aggregator, "aggregate", None)):
        raise param_error(
            f"{who}.aggregator",
            "an aggregation rule (an object with an aggregate(x) method, e.g. a byzance "
            "Aggregator or Chain)",
            aggregator,
            wrong_type=True,
        )
    return aggregator


def adaptive_memory(who: str, honest: torch.Tensor, f: int, k: int) -> None:
    """Refuse an ``f`` whose aggregator input would not fit in memory: the (h + f, k) input
    (twice: candidate rows and the rule's copies), the (f, d) output, and the float64
    (h + f) x (h + f) matrices of a distance-based rule (Gram, distances, sorted: ~4)."""
    h, d = honest.shape
    n, item = h + f, honest.element_size()
    nbytes = item * (2 * n * k + f * d) + 4 * 8 * n * n
    check_memory(who, f, nbytes, honest.device, f"the aggregator's input of {n} rows")


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
    ``search.CONFIDENCE = 3`` standard errors of the paired difference (estimated from the k
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
        given = base
        if isinstance(base, str):
            from byzance.attacks import create

            try:
                base = create(base)
            except (TypeError, ValueError):
                raise param_error(f"{who}.base", _LINEAR, given) from None
        if not isinstance(base, LinearAttack):
            raise param_error(f"{who}.base", _LINEAR, given, wrong_type=not isinstance(given, str))
        self.base = base
        self.aggregator = check_aggregator(who, aggregator)
        self.low = check_real(who, "low", low, low=0.0, strict=True)
        self.high = check_real(who, "high", high, low=0.0, strict=True)
        if self.high < self.low:
            raise ValueError(
                f"{who}.low, {who}.high: expected low <= high, got low={self.low!r}, "
                f"high={self.high!r}"
            )
        self.points = check_int(who, "points", points, low=2)
        self.refine = check_int(who, "refine", refine, low=0)
        self.sketch = None if sketch is None else check_int(who, "sketch", sketch, low=0)
        self.warm_start = check_param(who, "warm_start", warm_start, Boolean())
        self.seed = check_param(who, "seed", seed, SEED)
        self.reset()

    def reset(self) -> None:
        """Forget the previous round's best scale (next search is cold) and re-seed the sketch."""
        self._last_scale: float | None = None
        self._hint: float | None = None
        self._generator = torch.Generator().manual_seed(self.seed)

    def state_dict(self) -> dict[str, Any]:
        return {
            "last_scale": self._last_scale,
            "hint": self._hint,
            "generator": self._generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        last, hint = state["last_scale"], state["hint"]
        self._last_scale = None if last is None else float(last)
        self._hint = None if hint is None else float(hint)
        self._generator = torch.Generator()
        self._generator.set_state(state["generator"])

    @property
    def last_scale(self) -> float | None:
        return self._last_scale

    def forge(self, honest: torch.Tensor, f: int) -> torch.Tensor:
        h, d = honest.shape
        self.aggregator.check(h + f)
        adaptive_memory(type(self).__name__, honest, f, min(self.sketch or d, d))
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
            idx = draw_coordinates(d, k, self._generator).to(honest.device)
            c = math.sqrt(d / k)
            x = honest.new_empty(h + f, k)  # the sketched input, honest rows written here
            torch.index_select(honest, 1, idx, out=x[:h])
            x[:h].mul_(c)
            rows = CandidateRows(
                probe,
                x[:h],
                mean.index_select(0, idx).mul_(c),
                anchor.index_select(0, idx).mul_(c),
                direction.index_select(0, idx).mul_(c),
                f,
                line,
                x,
            )
            exact = CandidateRows(probe, honest, mean, anchor, direction, f)
        else:
            rows = exact = CandidateRows(probe, honest, mean, anchor, direction, f)

        value = Memo(lambda t: rows.damage(center * math.exp(t)))
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
        return repeat_point(anchor, direction, scale, f)

    def _search(self, value: Memo) -> None:
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
        golden_section(value, a, b, self.refine)


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
        z = check_param(self, "z", z, OptionalOf(Real(low=0)))  # named as this attack's
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
        epsilon = check_param(self, "epsilon", epsilon, Real(low=0, closed="neither"))
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
