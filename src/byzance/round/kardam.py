"""Kardam's filters and staleness dampening: the asynchronous server's step, once for every
engine (Damaskinos, El Mhamdi, Guerraoui, Patra, Taziki, "Asynchronous Byzantine Machine
Learning (the case of SGD)", ICML 2018).

The server applies each vector as it arrives. Worker p sent ``g``, computed at the model it
read, ``tau`` accepted updates ago (its staleness). Two filters decide whether ``g`` is
applied, and dampening scales what is applied:

Lipschitz filter
    The arriving vector's *empirical Lipschitz coefficient* is
    ``k = ||g - g_last|| / ||x_t - x_prev||``, where ``g_last`` is the last vector the server
    applied (undampened) and ``x_t - x_prev`` the last step the server took (the current model
    minus the model before the last accepted update); before the first update, with no last
    vector, ``k = ||g|| / ||x_t||`` (as the reference code does); ``x/0 = inf``, ``0/0 = 0``.
    The server keeps the latest coefficient of every worker, ``K = {k_q}`` (m <= n of them),
    and ``g`` passes if ``k <= K^{(n-f)/n}``: with all n workers in K, the paper's ``(n-f)/n``
    quantile taken as the nearest-rank order statistic, the (n-f)-th smallest; with m
    recorded, the (m-f)-th smallest (what the (n-f)-th smallest is when the n - m missing
    workers count as the largest), and nothing passes while ``m <= f``. Whatever the f
    Byzantine coefficients are, the threshold is then at most the largest honest one (the
    rule ``robust_threshold``). K holds the coefficients recorded *before* this arrival; then
    ``k`` becomes p's latest, whether ``g`` is applied or not.
frequency filter
    No worker may have more than one vector among any ``2f + 1`` consecutive applied ones:
    ``g`` passes only if p is not among the last ``2f`` workers whose vectors were applied.
    Among any 2f + 1 consecutive applied vectors at least f + 1 are then honest, whatever the
    Byzantine workers' speed (this is what stops flooding).
dampening ``Lambda(tau)``
    the applied step is ``Lambda(tau) g``: ``exponential`` ``exp(-alpha tau)`` (Kardam's,
    ``alpha = 0.2`` by default, the value of the authors' reference code), ``inverse``
    ``1 / (1 + tau)`` (staleness-aware SGD, Zhang et al. 2016), ``none`` 1.

What the paper and the authors' reference code (the Java template LPD-EPFL/kardam) do
differently, and what we follow (the paper's text was not available to us: the definitions
are our reading of it, checked against that code): the coefficient tested against the
quantile is computed, as in the reference code's check, from the last applied vector and the
server's last step (a denominator that is never zero, also when several workers read the
same model). For K the reference code keeps, per worker, coefficients of its own consecutive
vectors and takes the 2/3 percentile of the per-worker maxima over the last 26, and accepts
anything after n consecutive rejections; we use the ``(n-f)/n`` quantile over the workers'
latest coefficients, with no forced acceptance. Since K is refreshed by every arrival
(accepted or not), the threshold does not drift down as it would if only accepted
coefficients entered it. Until more than f workers have a coefficient nothing passes: the
reference code accepts every vector while it has none, so a Byzantine worker that delivers
first would set the model (with a vector of norm 1e6, for good). The window of the
frequency filter, 2f + 1, is our reading of the paper (the reference code has no frequency
filter).
``tests/test_async_kardam.py`` checks every rule on hand-computed cases.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import torch

FILTERS = ("kardam", "lipschitz", "frequency", "none")
DAMPENINGS = ("exponential", "inverse", "none")
#: Kardam needs n >= 3f + 1 workers (the paper's resilience bound)
KARDAM_BOUND = 3


def dampening(kind: str, tau: int | float, alpha: float = 0.2) -> float:
    """``Lambda(tau)``: ``exponential`` exp(-alpha tau), ``inverse`` 1/(1 + tau), ``none`` 1."""
    if tau < 0:
        raise ValueError(f"dampening: expected a staleness tau >= 0, got {tau!r}")
    if kind == "exponential":
        return math.exp(-alpha * tau)
    if kind == "inverse":
        return 1.0 / (1.0 + tau)
    if kind == "none":
        return 1.0
    raise ValueError(f"dampening: expected one of {', '.join(DAMPENINGS)}, got {kind!r}")


dampening_factor = dampening  # the name the server uses (its argument is called dampening)


def lipschitz_coefficient(diff_norm: float, step_norm: float) -> float:
    """``||g - g_last|| / ||x_t - x_prev||`` from the two norms (0/0 = 0, x/0 = inf)."""
    if step_norm > 0:
        return diff_norm / step_norm
    return 0.0 if diff_norm == 0 else math.inf


def robust_threshold(coefficients: torch.Tensor, f: int) -> float:
    """The ``(m - f)``-th smallest of the m values of the 1-D ``coefficients`` (one per
    worker, at most f of them Byzantine): at most the largest honest value; ``-inf`` (nothing
    passes) while ``m <= f``. With m = n it is the nearest-rank ``(n-f)/n`` quantile."""
    m = coefficients.numel()
    if m <= f:
        return -math.inf
    return float(torch.kthvalue(coefficients.double(), m - f).values)


class LipschitzFilter:
    """The workers' latest coefficients ``K`` (NaN: none yet) and the test against them."""

    def __init__(self, n: int, f: int) -> None:
        self.n, self.f = n, f
        self.latest = torch.full((n,), math.nan, dtype=torch.float64)

    def threshold(self) -> float:
        """``K^{(n-f)/n}`` over the recorded coefficients (``robust_threshold``)."""
        return robust_threshold(self.latest[~torch.isnan(self.latest)], self.f)

    def passes(self, k: float) -> bool:
        return k <= self.threshold()

    def record(self, worker: int, k: float) -> None:
        self.latest[worker] = k


class FrequencyFilter:
    """At most one vector per worker among any ``2f + 1`` consecutive applied vectors."""

    def __init__(self, f: int) -> None:
        self.recent: deque[int] = deque(maxlen=2 * f) if f > 0 else deque(maxlen=0)

    def passes(self, worker: int) -> bool:
        return worker not in self.recent

    def record(self, worker: int) -> None:
        if self.recent.maxlen:
            self.recent.append(worker)


class KardamServer:
    """The asynchronous server: ``receive(worker, g, tau, round_)`` filters the vector and,
    if it passes, applies ``Lambda(tau) g`` with ``server.apply`` (weight decay, server
    momentum, the lr schedule of ``round_``: ``byzance.round.server.Server``).

    ``filter``: one of ``FILTERS``; ``n``: the number of workers; ``f``: the Byzantine ones.
    Counts what it did in ``stats`` (applied, rejected by each filter).
    """

    def __init__(
        self,
        server: Any,
        n: int,
        f: int,
        *,
        filter: str = "kardam",
        dampening: str = "exponential",
        alpha: float = 0.2,
    ) -> None:
        if filter not in FILTERS:
            raise ValueError(f"KardamServer.filter: expected one of {FILTERS}, got {filter!r}")
        self.server = server
        self.n, self.f = n, f
        self.use_lipschitz = filter in ("kardam", "lipschitz")
        self.use_frequency = filter in ("kardam", "frequency")
        self.dampening, self.alpha = dampening, alpha
        dampening_factor(dampening, 0, alpha)  # validates the name
        self.lipschitz = LipschitzFilter(n, f)
        self.frequency = FrequencyFilter(f)
        self.g_last: torch.Tensor | None = None
        self.step_norm = 0.0
        self.version = 0  # applied updates so far
        self.stats = {"applied": 0, "rejected_lipschitz": 0, "rejected_frequency": 0}

    @property
    def params(self) -> torch.Tensor:
        return self.server.params

    def coefficient(self, g: torch.Tensor) -> float:
        """The empirical Lipschitz coefficient of ``g`` against the server's last step
        (before the first update: ``||g|| / ||x_t||``)."""
        if self.g_last is None:
            return lipschitz_coefficient(float(g.norm()), float(self.server.params.norm()))
        return lipschitz_coefficient(float(torch.dist(g, self.g_last)), self.step_norm)

    def threshold(self) -> float:
        return self.lipschitz.threshold() if self.use_lipschitz else math.inf

    def receive(self, worker: int, g: torch.Tensor, tau: int, round_: int) -> str:
        """Filter and maybe apply ``g``; returns ``"applied"``, ``"lipschitz"`` or
        ``"frequency"`` (the filter that rejected it)."""
        if self.use_lipschitz:
            k = self.coefficient(g)
            ok = self.lipschitz.passes(k)
            self.lipschitz.record(worker, k)
            if not ok:
                self.stats["rejected_lipschitz"] += 1
                return "lipschitz"
        if self.use_frequency and not self.frequency.passes(worker):
            self.stats["rejected_frequency"] += 1
            return "frequency"
        self.frequency.record(worker)
        scale = dampening_factor(self.dampening, tau, self.alpha)
        params = self.server.params
        before = params.clone() if self.use_lipschitz else None
        self.server.apply(g if scale == 1.0 else g * scale, round_)
        if before is not None:
            self.step_norm = float(torch.dist(params, before))
            self.g_last = g.detach().clone()
        self.version += 1
        self.stats["applied"] += 1
        return "applied"


def lipschitz_edge(v: torch.Tensor, server: KardamServer, margin: float = 0.99) -> torch.Tensor:
    """The attack aimed at the Lipschitz filter: ``v`` moved along its deviation from the last
    applied vector to ``g_last + margin T s u`` (``u`` the unit deviation, ``T`` the
    threshold, ``s`` the last step's norm), the largest vector in that direction the filter
    accepts; ``v`` itself while the filter has no threshold or no last vector."""
    if server.g_last is None:
        return v
    threshold = server.threshold()
    dev = v - server.g_last
    norm = float(dev.norm())
    if not math.isfinite(threshold) or norm == 0:
        return v
    return server.g_last + dev * (margin * threshold * server.step_norm / norm)
