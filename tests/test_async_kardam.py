"""Kardam's filters and staleness dampening against hand-computed cases of their definitions
(``byzance.round.kardam``)."""

from __future__ import annotations

import math

import pytest
import torch

from byzance.round.kardam import (
    FrequencyFilter,
    KardamServer,
    LipschitzFilter,
    dampening,
    lipschitz_coefficient,
    robust_threshold,
)
from byzance.round.server import Server


# ----------------------------------------------------------------------------- dampening
def test_dampening_functions() -> None:
    assert dampening("exponential", 0) == 1.0
    assert dampening("exponential", 3, alpha=0.2) == pytest.approx(math.exp(-0.6))
    assert dampening("exponential", 5) == pytest.approx(math.exp(-1.0))  # alpha = 0.2 default
    assert dampening("inverse", 0) == 1.0
    assert dampening("inverse", 3) == 0.25
    assert dampening("none", 7) == 1.0
    with pytest.raises(ValueError, match=r"dampening: expected a staleness tau >= 0, got -1"):
        dampening("inverse", -1)
    with pytest.raises(ValueError, match=r"dampening: expected one of .*got 'linear'"):
        dampening("linear", 1)


# ----------------------------------------------------------------------------- Lipschitz
def test_coefficient_and_threshold_by_hand() -> None:
    assert lipschitz_coefficient(3.0, 2.0) == 1.5
    assert lipschitz_coefficient(0.0, 0.0) == 0.0
    assert lipschitz_coefficient(1.0, 0.0) == math.inf
    k = torch.tensor([5.0, 1.0, 3.0, 2.0])
    # n = m = 4, f = 1: the (n-f)/n = 3/4 quantile, nearest rank: the 3rd smallest
    assert robust_threshold(k, 1) == 3.0
    # m = 2 recorded, f = 1: the (m - f) = 1st smallest; m <= f: nothing passes
    assert robust_threshold(torch.tensor([4.0, 1.0]), 1) == 1.0
    assert robust_threshold(torch.tensor([4.0]), 1) == -math.inf
    assert robust_threshold(torch.tensor([]), 0) == -math.inf
    # n = 10, f = 3: the 7th smallest of 10
    assert robust_threshold(torch.arange(10.0).flip(0), 3) == 6.0


def test_threshold_is_the_order_statistic_and_the_quantile_at_m_equal_n() -> None:
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        n = int(torch.randint(2, 15, (1,), generator=gen))
        f = int(torch.randint(0, (n - 1) // 3 + 1, (1,), generator=gen))
        m = int(torch.randint(1, n + 1, (1,), generator=gen))
        values = torch.rand(m, generator=gen)
        want = float(values.sort().values[m - f - 1]) if m > f else -math.inf
        assert robust_threshold(values, f) == want
        if m == n:  # the nearest-rank (n-f)/n quantile
            assert want == float(values.sort().values[math.ceil((n - f) / n * n) - 1])


def test_threshold_is_bounded_by_the_honest_coefficients() -> None:
    """One coefficient per recorded worker, f of them arbitrary: the threshold lies between
    honest coefficients, whichever workers are recorded."""
    gen = torch.Generator().manual_seed(1)
    for m in range(4, 11):
        for _ in range(30):
            f = 3
            honest = torch.rand(m - f, generator=gen)
            byz = torch.randn(f, generator=gen) * 1e6
            t = robust_threshold(torch.cat([honest, byz]), f)
            assert t <= float(honest.max())
            if m - 2 * f >= 1:
                assert t >= float(honest.sort().values[m - 2 * f - 1])


def test_lipschitz_filter_keeps_each_workers_latest() -> None:
    lf = LipschitzFilter(4, 1)
    assert lf.threshold() == -math.inf and not lf.passes(0.0)  # nothing recorded yet
    lf.record(0, 2.0)
    assert not lf.passes(0.0)  # m = 1 <= f
    lf.record(1, 1.0)
    lf.record(0, 0.5)  # replaces worker 0's 2.0
    assert lf.threshold() == 0.5  # {0.5, 1.0}: the (m - f) = 1st smallest
    lf.record(2, 3.0)
    assert lf.threshold() == 1.0  # {0.5, 1.0, 3.0}: the 2nd smallest
    assert lf.passes(1.0) and not lf.passes(1.01)


# ----------------------------------------------------------------------------- frequency
def test_frequency_filter_window_of_2f_plus_1() -> None:
    ff = FrequencyFilter(f=1)  # the last 2f = 2 applied workers are barred
    assert ff.passes(0)
    ff.record(0)
    assert not ff.passes(0)
    ff.record(1)
    assert not ff.passes(0) and not ff.passes(1) and ff.passes(2)
    ff.record(2)
    assert ff.passes(0) and not ff.passes(1)
    free = FrequencyFilter(f=0)
    free.record(3)
    assert free.passes(3)


def test_frequency_filter_caps_any_worker_in_every_window() -> None:
    ff, applied = FrequencyFilter(f=2), []
    for w in [0, 0, 0, 1, 0, 2, 0, 3, 0, 0, 4, 1, 0] * 5:  # worker 0 floods
        if ff.passes(w):
            ff.record(w)
            applied.append(w)
    for i in range(len(applied) - 4):
        window = applied[i : i + 5]
        assert len(set(window)) == len(window)  # nobody twice in 2f + 1 = 5


# ----------------------------------------------------------------------------- the server
def _server(filter: str, n: int = 4, f: int = 1, damp: str = "none") -> KardamServer:
    base = Server(torch.tensor([0.0, 2.0], dtype=torch.float64), None, lr=1.0)
    return KardamServer(base, n, f, filter=filter, dampening=damp)


SEQUENCE = [(0, [2.0, 0.0]), (1, [0.0, 1.0]), (2, [1.0, 0.0]), (3, [1.0, 2.0]),
            (0, [1.5, 0.0]), (1, [1.5, 3.0]), (2, [1.5, 0.0])]  # fmt: skip


def test_kardam_server_hand_computed_sequence() -> None:
    """n = 4, f = 1, lr = 1, x0 = (0, 2); the coefficients worked out in the comments."""
    s = _server("lipschitz")
    out = [s.receive(w, torch.tensor(g, dtype=torch.float64), 0, 1) for w, g in SEQUENCE[:3]]
    # 1: no update yet: k = ||g|| / ||x0|| = 2 / 2 = 1; K = {} (m = 0 <= f) -> rejected
    # 2: k = 1 / 2 = 0.5; K = {1} (m = 1 <= f) -> rejected
    # 3: k = 1 / 2 = 0.5 <= 1st smallest of {1, 0.5} = 0.5 -> applied: x = (-1, 2), step 1
    assert out == ["lipschitz", "lipschitz", "applied"]
    assert torch.equal(s.params, torch.tensor([-1.0, 2.0], dtype=torch.float64))
    assert s.step_norm == 1.0 and s.lipschitz.latest[:3].tolist() == [1.0, 0.5, 0.5]
    assert math.isnan(s.lipschitz.latest[3])  # worker 3 has sent nothing yet
    out = [s.receive(w, torch.tensor(g, dtype=torch.float64), 0, 1) for w, g in SEQUENCE[3:]]
    # 4: k = ||(1,2) - (1,0)|| / 1 = 2 > 2nd smallest of {1, 0.5, 0.5} = 0.5 -> rejected
    # 5: k = ||(1.5,0) - (1,0)|| / 1 = 0.5 <= 3rd smallest of {1, .5, .5, 2} = 1 -> applied:
    #    x = (-2.5, 2), step 1.5, g_last = (1.5, 0)
    # 6: k = 3 / 1.5 = 2 > 3rd smallest of {0.5, 0.5, 0.5, 2} = 0.5 -> rejected
    # 7: k = 0 <= 3rd smallest of {0.5, 2, 0.5, 2} = 2 -> applied
    assert out == ["lipschitz", "applied", "lipschitz", "applied"]
    assert torch.equal(s.params, torch.tensor([-4.0, 2.0], dtype=torch.float64))
    assert s.stats == {"applied": 3, "rejected_lipschitz": 4, "rejected_frequency": 0}
    assert s.version == 3

    # under Kardam (both filters) the last vector passes the Lipschitz filter, but worker 2
    # is among the last 2f = 2 applied (2, 0): rejected by the frequency filter
    k = _server("kardam")
    out = [k.receive(w, torch.tensor(g, dtype=torch.float64), 0, 1) for w, g in SEQUENCE]
    assert out[:-1] == ["lipschitz", "lipschitz", "applied", "lipschitz", "applied", "lipschitz"]
    assert out[-1] == "frequency"
    assert torch.equal(k.params, torch.tensor([-2.5, 2.0], dtype=torch.float64))


def test_dampening_scales_the_applied_step() -> None:
    s = _server("none", damp="inverse")
    g = torch.tensor([4.0, 0.0], dtype=torch.float64)
    s.receive(0, g, 3, 1)  # Lambda(3) = 1/4
    assert torch.equal(s.params, torch.tensor([-1.0, 2.0], dtype=torch.float64))
    e = _server("none", damp="exponential")
    e.receive(0, g, 2, 1)
    assert float(e.params[0]) == pytest.approx(-4.0 * math.exp(-0.4))


def test_no_filter_applies_everything() -> None:
    s = _server("none")
    for w in [0, 0, 0, 1]:
        assert s.receive(w, torch.randn(2, dtype=torch.float64), 0, 1) == "applied"
    assert s.version == 4


def test_bad_filter_name() -> None:
    with pytest.raises(ValueError, match=r"KardamServer.filter: expected one of .*got 'krum'"):
        _server("krum")
