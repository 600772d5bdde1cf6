r"""The robustness coefficient of an aggregation rule, searched for: ``kappa(rule, n, f)``.

A rule F is :math:`(f, \kappa)`-robust (Allouah et al., AISTATS 2023) when for every input
:math:`x_1..x_n` and every set S of n - f indices,
:math:`\|F(x) - \bar x_S\|^2 \le \kappa \frac{1}{|S|} \sum_{i \in S} \|x_i - \bar x_S\|^2`;
the smallest such :math:`\kappa` is its :math:`\kappa^\star` (Bareilles, Bouaziz, Fageot,
El-Mhamdi, 2026). ``kappa`` maximises the ratio of the two sides over inputs whose first
n - f rows are S, and returns the largest ratio found with the input attaining it: a
certified lower bound on kappa* (anyone can recompute it with ``robustness_ratio``).

The search needs no gradient (the rules are not differentiable) and calls the rule itself:

1. structured starts (``kappa_starts``: the construction of the universal lower bound,
   two honest clusters with the Byzantine points on a grid of the line, off the line, split,
   honest points on a simplex with a tight Byzantine group, random inputs), all evaluated;
2. from the best ``restarts`` of them, a local search: batches of ``batch`` perturbed copies
   of the current best (Byzantine rows moved together or apart, one row, every row, and for
   rules that do not commute with translations and scalings, the whole frame), the best
   kept when it improves, the step grown on success and shrunk otherwise (a (1, lambda)
   evolution strategy with a success rule);
3. rays to infinity from the best input (Byzantine rows pushed away, honest rows shrunk,
   the input scaled up and down): a ratio that grows without bound along one of them gives
   ``value = inf`` and ``unbounded = True``, with the ratios measured along the ray in
   ``growth`` (the plain mean: the ratio grows as the square of the distance).

Where the rule commutes with translations and positive scalings (checked on a random input),
the ratio is invariant under them and every candidate is normalised (honest mean 0, honest
mean squared deviation 1); a rotation-equivariant rule needs at most n - 1 dimensions (the
span of n points), a coordinate-wise rule one (its ratio is a weighted mean of the ratios of
the coordinates), which are the defaults of ``dim``. Other rules (centered clipping,
clipping, sign vote, randomised bucketing) are searched in their own frame, scales and
shifts included; a randomised rule's value is the worst over the draws the search made.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from byzance.analysis.kappa_bounds import ProvenBound, proven_upper_bound, universal_lower_bound
from byzance.analysis.kappa_eval import (
    COORDINATE_WISE,
    RatioEvaluator,
    build_rule,
    honest_moments,
    robustness_ratio,
    single_thread,
)
from byzance.analysis.kappa_starts import structured_starts
from byzance.validation import Integer, OptionalOf, check_param

__all__ = ["KappaResult", "kappa", "max_f", "robustness_ratio"]

_T = torch.float64
#: scales of the rays to infinity
SCALES = tuple(10.0**k for k in range(1, 9))


@dataclass(frozen=True)
class KappaResult:
    """What ``kappa`` found. ``value``: the largest ratio found (a lower bound on kappa*;
    ``inf`` when it grows without bound), attained by ``x`` (rows ``:n - f`` honest).
    ``growth``: (scale, ratio) along the ray that showed the growth (empty otherwise).
    ``starts``: the best ratio of each family of structured starts; ``restarts``: the best
    ratio after each local search. ``lower_bound``: f / (n - 2f); ``upper_bound``: the proven
    bound, if any. ``equivariant``: whether the search normalised the inputs."""

    rule: str
    n: int
    f: int
    dim: int
    value: float
    x: torch.Tensor
    unbounded: bool
    growth: tuple[tuple[float, float], ...]
    lower_bound: float
    upper_bound: ProvenBound | None
    evaluations: int
    seconds: float
    equivariant: bool
    randomised: bool
    starts: dict[str, float] = field(default_factory=dict)
    restarts: tuple[float, ...] = ()

    @property
    def above_upper_bound(self) -> bool:
        """True if the value found exceeds the proven upper bound (a bug somewhere)."""
        return self.upper_bound is not None and self.value > self.upper_bound.value * (1 + 1e-9)


def max_f(aggregator: str, n: int) -> int:
    """The largest f with n > 2f that the rule ``aggregator`` (a spec) accepts on n inputs
    (0 if none)."""
    from byzance.aggregators import create

    best = 0
    for f in range(1, (n - 1) // 2 + 1):
        try:
            create(aggregator, f=f).check(n)
        except ValueError:
            continue
        best = f
    return best


def _normalise(x: torch.Tensor, m: int) -> torch.Tensor:
    """Translate and scale each candidate so its honest rows have mean 0, mean sq. dev. 1."""
    mean, var = honest_moments(x, m)
    sd = torch.where(var > 0, var.sqrt(), torch.ones_like(var))
    return (x - mean.unsqueeze(-2)) / sd[..., None, None]


class _Search:
    def __init__(self, ev: RatioEvaluator, gen: torch.Generator, batch: int) -> None:
        self.ev, self.gen, self.batch = ev, gen, batch
        self.n, self.m, self.d = ev.n, ev.m, ev.dim

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return _normalise(x, self.m) if self.ev.equivariant else x

    def score(self, x: torch.Tensor) -> torch.Tensor:
        r = self.ev(x)
        return torch.where(torch.isnan(r), -torch.inf, r)

    def frames(self, x: torch.Tensor) -> torch.Tensor:
        """A non-equivariant rule sees each start at several scales and shifts too."""
        if self.ev.equivariant:
            return x
        mean, var = honest_moments(x, self.m)
        sd = var.sqrt().clamp_min(1e-300)[:, None, None]
        e1 = torch.zeros(self.d, dtype=_T)
        e1[0] = 1.0
        out = [x]
        for s in (1e-3, 1e-1, 10.0, 1e3):
            out.append(x * s)
        for c in (-3.0, 3.0):
            out.append(x + c * sd * e1)
        z = x - mean.unsqueeze(1)
        out.append(z)  # honest mean at the origin
        return torch.cat(out)

    def direction(self, x: torch.Tensor) -> torch.Tensor:
        """A random direction (n, d) of one kind: the Byzantine rows (independently or
        together), one row, one honest row, every row, or (non-equivariant rules) the frame."""
        n, m, d, g = self.n, self.m, self.d, self.gen
        kinds = 6 if not self.ev.equivariant else 5
        k = int(torch.randint(0, kinds, (1,), generator=g))
        u = torch.randn(n, d, generator=g, dtype=_T)
        mask = torch.zeros(n, 1, dtype=_T)
        if k == 0 and n > m:
            mask[m:] = 1.0
        elif k == 1 and n > m:
            u[m:] = u[m].clone()
            mask[m:] = 1.0
        elif k == 2:
            mask[int(torch.randint(0, n, (1,), generator=g))] = 1.0
        elif k == 3:
            mask[int(torch.randint(0, m, (1,), generator=g))] = 1.0
        elif k == 4 or k == 1 or k == 0:
            mask[:] = 1.0
        else:  # the frame: a scaling about the origin and a shift
            u = x * float(torch.randn(1, generator=g)) + u[0]
            mask[:] = 1.0
        u = u * mask
        return u / u.norm().clamp_min(1e-300)

    def propose(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """``batch`` candidates around x, in units of the honest rows' spread: half on a line
        through x along one random direction (steps +-sigma 4^-k, a random line search),
        half Gaussian moves of sigma, each along a direction of its own."""
        _, var = honest_moments(x, self.m)
        sd = math.sqrt(float(var)) if float(var) > 0 else 1.0
        line = self.batch // 2
        half = (line + 1) // 2
        mags = sigma * sd * 4.0 ** -torch.arange(half, dtype=_T)
        steps = torch.cat([mags, -mags])[:line]
        u = self.direction(x)
        moves = [steps[:, None, None] * u.unsqueeze(0)]
        rest = self.batch - line
        if rest:
            gauss = torch.randn(rest, generator=self.gen, dtype=_T).abs() * sigma * sd
            dirs = torch.stack([self.direction(x) for _ in range(rest)])
            moves.append(dirs * gauss[:, None, None])
        return self.prepare(x.unsqueeze(0) + torch.cat(moves))

    def local(self, x: torch.Tensor, value: float, iterations: int) -> tuple[torch.Tensor, float]:
        sigma = 1.0
        for _ in range(iterations):
            cand = self.propose(x, sigma)
            r = self.score(cand)
            j = int(torch.argmax(r))
            if float(r[j]) > value:
                x, value = cand[j], float(r[j])
                sigma = min(sigma * 2.0, 4.0)
            else:
                sigma = max(sigma * 0.7, 1e-4)
        return x, value

    def rays(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(len(SCALES), n, d) inputs along each ray to infinity from x."""
        m = self.m
        mean, var = honest_moments(x, m)
        sd = math.sqrt(float(var)) if float(var) > 0 else 1.0
        h, byz = x[:m], x[m:]
        e1 = torch.zeros(self.d, dtype=_T)
        e1[0] = sd
        if byz.shape[0] and float((byz - mean).norm(dim=1).max()) > 1e-9 * sd:
            away = byz - mean
        else:
            away = e1.expand(byz.shape[0], self.d)
        out = []
        for make in (
            lambda c: torch.cat([h, mean + c * away]),
            lambda c: torch.cat([h, mean + c * e1.expand_as(byz)]),
            lambda c: torch.cat([mean + (h - mean) / c, byz]),
            lambda c: x * c,
            lambda c: x / c,
        ):
            out.append(torch.stack([make(c) for c in SCALES]))
        return out if not self.ev.equivariant else out[:3]


def _restart_points(values: list[torch.Tensor], count: int) -> list[int]:
    """Indices (into the concatenated starts) of the ``count`` starts to search from: the
    best of each family in turn (best family first), then the next best of each, ..."""
    offsets = [0]
    for v in values[:-1]:
        offsets.append(offsets[-1] + len(v))
    ranked = [
        [o + int(i) for i in torch.argsort(v, descending=True)]
        for o, v in zip(offsets, values, strict=True)
    ]
    ranked.sort(key=lambda idx: -float(torch.cat(values)[idx[0]]))
    out: list[int] = []
    depth = 0
    while len(out) < count and depth < max(len(r) for r in ranked):
        out += [r[depth] for r in ranked if depth < len(r)][: count - len(out)]
        depth += 1
    return out


def kappa(
    aggregator: Any,
    n: int,
    f: int,
    *,
    dim: int | None = None,
    restarts: int = 4,
    iterations: int = 200,
    batch: int = 16,
    seed: int = 0,
) -> KappaResult:
    """Search for the input maximising the robustness ratio of ``aggregator`` (a spec such as
    ``"nnm+trimmed_mean"``, built with ``f``, or a callable rule) with f of n inputs
    Byzantine; see the module docstring. ``dim``: the dimension of the inputs (default: 1
    for a coordinate-wise rule, else n - 1); ``restarts`` local searches of ``iterations``
    batches of ``batch`` candidates each; ``seed`` fixes every random draw.
    """
    n = check_param("kappa", "n", n, Integer(low=2))
    f = check_param("kappa", "f", f, Integer(low=0))
    if n <= 2 * f:
        raise ValueError(f"kappa requires n > 2f, got n={n}, f={f}")
    dim = check_param("kappa", "dim", dim, OptionalOf(Integer(low=1)))
    restarts = check_param("kappa", "restarts", restarts, Integer(low=0))
    iterations = check_param("kappa", "iterations", iterations, Integer(low=0))
    batch = check_param("kappa", "batch", batch, Integer(low=1))
    seed = check_param("kappa", "seed", seed, Integer(low=0))
    rule = build_rule(aggregator, f)
    if hasattr(rule, "check"):
        rule.check(n)
    name = aggregator if isinstance(aggregator, str) else repr(rule)
    start = time.perf_counter()
    with single_thread(), torch.no_grad():
        if dim is None:
            dim = 1 if type(rule) in COORDINATE_WISE else n - 1
        ev = RatioEvaluator(rule, n, f, dim)
        gen = torch.Generator().manual_seed(seed)
        search = _Search(ev, gen, batch)
        starts, pool, values = {}, [], []
        for family, xs in structured_starts(n, f, dim, gen).items():
            xs = search.prepare(search.frames(xs))
            r = search.score(xs)
            starts[family] = float(r.max())
            pool.append(xs)
            values.append(r)
        xs, r = torch.cat(pool), torch.cat(values)
        order = torch.argsort(r, descending=True)
        best_x, best = xs[order[0]], float(r[order[0]])
        finals = []
        for i in _restart_points(values, restarts):
            x, v = search.local(xs[i], float(r[i]), iterations)
            finals.append(v)
            if v > best:
                best_x, best = x, v
        unbounded, growth, finite = math.isinf(best), (), best
        for ray in [] if unbounded else search.rays(best_x):
            rr = search.score(ray)
            j = int(torch.argmax(rr))
            if float(rr[j]) > best:
                best_x, best = ray[j], float(rr[j])
            # growth: increasing from scale 1e4 on, x10 from 1e6 to 1e8, and far above the rest
            mid, hi = float(rr[5]), float(rr[-1])
            floor = max(float(rr[3]), finite, universal_lower_bound(n, f), 1e-6)
            rising = bool((rr[3:].diff() > 0).all()) and hi > 10 * mid
            if math.isinf(hi) or (rising and hi > 100 * floor):
                unbounded = True
                growth = tuple(zip(SCALES, rr.tolist(), strict=True))
                best_x = ray[-1]
                break
        if unbounded:
            value = math.inf
        elif ev.randomised:  # a new call draws anew: keep the ratio the search measured
            value = best
        else:  # certified: one plain call of the rule on the input returned
            value = robustness_ratio(rule, best_x, f)
        evaluations = ev.evaluations
    return KappaResult(
        rule=name, n=n, f=f, dim=dim, value=value, x=best_x, unbounded=unbounded,
        growth=growth, lower_bound=universal_lower_bound(n, f),
        upper_bound=proven_upper_bound(rule, n, f),
        evaluations=evaluations, seconds=time.perf_counter() - start,
        equivariant=ev.equivariant, randomised=ev.randomised, starts=starts,
        restarts=tuple(finals),
    )
