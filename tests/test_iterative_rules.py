"""GeometricMedian, CenteredClipping, Clipping and Bucketing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize

import byzance as bz
from byzance.aggregators import Bucketing, CenteredClipping, Clipping, GeometricMedian


def objective(z: np.ndarray, x: np.ndarray) -> float:
    return float(np.linalg.norm(x - z, axis=1).sum())


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10**6), n=st.integers(1, 9), d=st.integers(1, 4))
def test_geometric_median_minimises_the_objective(seed, n, d):
    x = np.random.default_rng(seed).normal(size=(n, d))
    z = GeometricMedian()(x)
    best = minimize(objective, np.median(x, axis=0), args=(x,), method="Nelder-Mead",
                    options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 20000})
    assert objective(z, x) <= min(best.fun, objective(np.median(x, axis=0), x)) + 1e-7


def test_geometric_median_cases():
    # collinear: any point between the two middle ones; odd count: the middle point
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [5.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(GeometricMedian()(x), torch.tensor([1.0, 0.0], dtype=torch.float64))
    # optimum at a data point (the Weiszfeld fixed point would be stuck elsewhere)
    tri = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [0.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(GeometricMedian()(tri), torch.zeros(2, dtype=torch.float64))
    # equilateral triangle: the centre
    eq = torch.tensor([[0.0, 0.0], [2.0, 0.0], [1.0, math.sqrt(3)]], dtype=torch.float64)
    assert torch.allclose(GeometricMedian()(eq), torch.tensor([1.0, 1 / math.sqrt(3)],
                                                              dtype=torch.float64), atol=1e-7)


def test_geometric_median_robustness_and_types():
    g = torch.Generator().manual_seed(0)
    honest = torch.randn(8, 5, generator=g)
    bad = torch.tensor([[float("nan")] * 5, [float("inf")] * 5, [1e30] * 5])
    x = torch.cat([honest, bad])
    before = x.clone()
    out = GeometricMedian(f=3)(x)
    assert torch.isfinite(out).all() and out.dtype == torch.float32
    assert torch.equal(x.isnan(), before.isnan())
    assert (out - honest.mean(0)).norm() < 2 * honest.norm(dim=1).max()
    assert torch.equal(GeometricMedian()(x), out)
    perm = torch.randperm(11, generator=g)
    assert torch.allclose(GeometricMedian()(x[perm]), out, atol=1e-5)
    assert isinstance(GeometricMedian()(x.numpy()), np.ndarray)
    assert GeometricMedian()(x.double()).dtype == torch.float64
    with pytest.raises(ValueError, match=r"GeometricMedian requires n > 2f, got n=4, f=2"):
        GeometricMedian(f=2)(torch.zeros(4, 2))
    with pytest.raises(ValueError, match=r"GeometricMedian\.tol: expected a finite float > 0"):
        GeometricMedian(tol=0)


def direct_cc(x: torch.Tensor, v: torch.Tensor, tau: float, iterations: int) -> torch.Tensor:
    for _ in range(iterations):
        u = x - v
        norms = u.norm(dim=1, keepdim=True)
        v = v + (u * torch.clamp(tau / norms, max=1.0)).mean(0)
    return v


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10**6), n=st.integers(1, 12), tau=st.floats(0.01, 10),
       iterations=st.integers(1, 5))
def test_centered_clipping_matches_direct_formula(seed, n, tau, iterations):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g, dtype=torch.float64) * 3
    center = torch.randn(6, generator=g, dtype=torch.float64)
    cc = CenteredClipping(tau=tau, iterations=iterations)
    med = bz.aggregators.Median()(x)
    assert torch.allclose(cc(x), direct_cc(x, med, tau, iterations), atol=1e-9)
    cc.center = center
    assert torch.allclose(cc(x), direct_cc(x, center, tau, iterations), atol=1e-9)


def test_centered_clipping_non_finite_and_errors():
    x = torch.tensor([[1.0, 1.0], [1.0, 1.0], [float("nan"), 0.0], [float("inf"), 1.0]])
    cc = CenteredClipping(tau=1.0, iterations=3, center=torch.zeros(2))
    before = x.clone()
    out = cc(x)
    # only the two finite rows move v: each iteration adds 2/4 of clip(x - v)
    assert torch.allclose(out, _cc_ref(), atol=1e-6)
    assert torch.equal(x.isnan(), before.isnan())
    with pytest.raises(ValueError, match=r"CenteredClipping\.tau: expected a finite float > 0"):
        CenteredClipping(tau=0)
    with pytest.raises(ValueError, match=r"CenteredClipping\.iterations: expected an int >= 1"):
        CenteredClipping(iterations=0)
    with pytest.raises(ValueError, match="center has shape"):
        CenteredClipping(center=torch.zeros(3))(torch.zeros(2, 2))


def _cc_ref() -> torch.Tensor:
    v = torch.zeros(2)
    for _ in range(3):
        u = torch.ones(2) - v
        v = v + 2 / 4 * u * min(1.0, 1.0 / float(u.norm()))
    return v


def test_clipping():
    x = torch.tensor([[3.0, 4.0], [0.3, 0.4], [float("inf"), 0.0], [3e30, 4e30]])
    out = Clipping(c=1.0)(x)
    assert torch.allclose(out[0], torch.tensor([0.6, 0.8]))
    assert torch.equal(out[1], x[1])
    assert torch.equal(out[2], x[2])  # non-finite passed on unchanged
    assert torch.allclose(out[3], torch.tensor([0.6, 0.8]))  # no overflow
    assert Clipping(2.0).output_size(7) == 7
    with pytest.raises(ValueError, match=r"Clipping\.c: expected a finite float > 0, got -1"):
        Clipping(c=-1)


def test_bucketing():
    x = torch.arange(7, dtype=torch.float64)[:, None].repeat(1, 3)
    b = Bucketing(s=3, seed=1)
    out1, out2 = b(x), b(x)
    assert out1.shape == (3, 3) and b.output_size(7) == 3
    # every output is the mean of a bucket; together they use each input once
    sizes = torch.tensor([3, 3, 1], dtype=torch.float64)
    assert torch.isclose((out1[:, 0] * sizes).sum(), x[:, 0].sum())
    assert not torch.equal(out1, out2)  # a new permutation per call
    b.reset()
    assert torch.equal(b(x), out1)
    assert torch.equal(Bucketing(s=3, seed=1)(x), out1)  # reproducible
    assert torch.equal(Bucketing(s=1, seed=0)(x).sort(0).values, x)
    y = x.clone()
    y[0, 0] = float("nan")
    assert torch.isnan(Bucketing(s=2)(y)).sum() == 1  # only its own bucket
    chain = bz.aggregators.create("bucketing(s=2)+median")
    chain.check(7)
    assert chain(x).shape == (3,)
    with pytest.raises(ValueError, match=r"Bucketing\.s: expected an int >= 1, got 0"):
        Bucketing(s=0)


def test_registry_names():
    assert isinstance(bz.aggregators.create("geometric_median", f=2), GeometricMedian)
    assert isinstance(bz.aggregators.create("rfa"), GeometricMedian)
    assert bz.aggregators.create("cc(tau=2.0)").tau == 2.0
    assert isinstance(bz.aggregators.create("clipping(c=2.0)+average").pre[0], Clipping)
