"""NNM fused into the coordinate-wise rules: ``Chain(NNM(f), rule)`` never forms ``W @ x``.

The fused chain (``rule.aggregate_mixed(x, W)``) must equal the unfused composition
``rule.aggregate(nnm.transform(x))`` up to the rounding of the mixing sums, on the numba kernel
and on the torch fallback, with or without an exact geometry, and with non-finite inputs (at
most f of them, so that no mixed row uses one, and more, so that some mixed rows do).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import byzance as bz
from byzance.aggregators import NNM, Bucketing, Chain, Krum, Meamed, Median, TrimmedMean
from byzance.aggregators import _coordinate as C
from byzance.aggregators import nnm as nnm_module
from byzance.geometry import ExactGram
from byzance.kernels import coordinate as KC

RULES = (Median, TrimmedMean, Meamed)
#: what a Byzantine row may hold (1e30: finite, but its squared norm overflows in float32)
BAD = (float("inf"), float("-inf"), float("nan"), 1e30)


@pytest.fixture(params=[True, False], ids=["kernel", "torch"])
def path(request, monkeypatch):
    """Run on the compiled fast path and on the torch fallback."""
    monkeypatch.setattr(KC, "_kernel_enabled", request.param)
    return request.param


def make_rule(cls, f):
    return cls() if cls is Median else cls(f)


def inputs(n: int, d: int, dtype: torch.dtype, bad: int, seed: int) -> torch.Tensor:
    """n rows, ``bad`` of them (random positions) Byzantine: whole rows of +-inf / NaN / 1e30,
    or a single NaN entry."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=dtype) * 3 + 1
    for k, r in enumerate(torch.randperm(n, generator=g)[:bad].tolist()):
        kind = (seed + k) % (len(BAD) + 1)
        if kind == len(BAD):
            x[r, int(torch.randint(d, (1,), generator=g))] = float("nan")
        else:
            x[r] = BAD[kind]
    return x


def rel(dtype: torch.dtype) -> float:
    """Tolerance for the rounding of the mixing sums (relative to the values' scale)."""
    return 1e-5 if dtype == torch.float32 else 1e-11


def assert_rule_close(rule, got: torch.Tensor, y: torch.Tensor) -> None:
    """``got`` is ``rule.aggregate(y)`` up to the rounding of the mixed rows ``y``.

    Median and TrimmedMean are order statistics, continuous in y: equal up to rounding.
    Meamed is discontinuous at a distance tie between the two ends of the window (frequent
    here: inputs with the same neighbours have equal mixed rows), which the rounding of the
    sums may break either way: any window whose start is optimal within ``eps`` is accepted.
    """
    t = rel(y.dtype)
    if not isinstance(rule, Meamed):
        torch.testing.assert_close(got, rule.aggregate(y), equal_nan=True, rtol=t, atol=t)
        return
    s = torch.sort(torch.nan_to_num(y.double(), nan=float("inf")), dim=0).values
    n, k = s.shape[0], s.shape[0] - rule.f
    m = C._middle(s)
    eps = 100 * t * (1 + m.abs())
    # the kernel's start: #{t : m - s[t] > s[t + k] - m}, decreasing terms; within eps
    gap = (m - s[: n - k]) - (s[k:] - m)
    first, last = (gap > eps).sum(dim=0), (gap > -eps).sum(dim=0)
    ok = torch.zeros_like(got, dtype=torch.bool)
    for start in range(n - k + 1):
        mean = s[start : start + k].mean(dim=0).to(got.dtype)
        near = torch.isclose(got, mean, rtol=10 * t, atol=10 * t, equal_nan=True)
        ok |= (first <= start) & (start <= last) & near
    assert bool(ok.all()), (rule, torch.nonzero(~ok).flatten()[:5])


def check_fused(x: torch.Tensor, f: int, gram: ExactGram | None = None) -> None:
    y = NNM(f).transform_with_gram(x, gram)[0]
    for cls in RULES:
        rule = make_rule(cls, f)
        got = Chain(NNM(f), rule).aggregate(x, gram=gram)
        assert got.dtype == x.dtype and got.shape == (x.shape[1],)
        assert_rule_close(rule, got, y)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("n", range(3, 21))
def test_fused_chain_equals_the_composition(n, dtype, path):
    for f in range((n - 1) // 2 + 1):
        d = (37, 2 * KC._LANES + 5)[(n + f) % 2]  # < 128, or over 2 blocks; not a multiple
        for bad in sorted({0, f, f + 1, min(n - 1, 2 * f + 1)}):
            check_fused(inputs(n, d, dtype, bad, seed=100 * n + 10 * f + bad), f)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("n", [3, 8, 13, 20])
def test_fused_chain_with_an_exact_gram(n, dtype, path):
    for f in range((n - 1) // 2 + 1):
        for bad in sorted({0, f, f + 1}):
            x = inputs(n, 150, dtype, bad, seed=n + f + bad)
            check_fused(x, f, ExactGram.of(x))


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    n=st.integers(3, 20),
    d=st.integers(1, 300),
    seed=st.integers(0, 10**6),
    double=st.booleans(),
    data=st.data(),
)
def test_fused_chain_property(n, d, seed, double, data, path):
    f = data.draw(st.integers(0, (n - 1) // 2))
    bad = data.draw(st.integers(0, n - 1))
    x = inputs(n, d, torch.float64 if double else torch.float32, bad, seed)
    check_fused(x, f, ExactGram.of(x) if data.draw(st.booleans()) else None)


def test_kernel_and_torch_fused_paths_agree():
    x = inputs(16, 1000, torch.float32, bad=9, seed=3)  # > f bad: some mixed rows are inf
    y = NNM(4).transform(x)
    for enabled in (True, False):
        KC._kernel_enabled = enabled
        try:
            outs = [Chain(NNM(4), make_rule(cls, 4)).aggregate(x) for cls in RULES]
        finally:
            KC._kernel_enabled = True
        assert not torch.isfinite(outs[0]).all()  # the case is exercised
        for cls, out in zip(RULES, outs, strict=True):
            assert_rule_close(make_rule(cls, 4), out, y)


def test_fused_chain_is_deterministic():
    x = inputs(12, 50_000, torch.float32, bad=2, seed=0)
    chain = Chain(NNM(2), TrimmedMean(2))
    first = chain.aggregate(x)
    assert torch.equal(chain.aggregate(x), first)
    assert torch.equal(chain(x), first)


def test_the_fused_path_does_not_form_the_mixed_rows(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("the mixed rows were formed")

    x = inputs(10, 300, torch.float32, bad=1, seed=1)
    want = TrimmedMean(2).aggregate(NNM(2).transform(x))
    monkeypatch.setattr(nnm_module, "weighted_rows", forbidden)
    for gram in (None, ExactGram.of(x)):
        got = Chain(NNM(2), TrimmedMean(2)).aggregate(x, gram=gram)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(AssertionError, match="formed"):  # unfused: goes through transform
        Chain(NNM(2), Krum(2)).aggregate(x)


def test_other_chains_are_unchanged(path):
    x = inputs(12, 40, torch.float64, bad=1, seed=2)
    # a mixing that is not last: the composition, step by step
    chain = Chain(NNM(2), Bucketing(s=2, seed=4), TrimmedMean(1))
    manual = TrimmedMean(1).aggregate(Bucketing(s=2, seed=4).transform(NNM(2).transform(x)))
    assert torch.equal(chain.aggregate(x), manual)
    # a mixing last after another step: fused on the bucket means
    chain = Chain(Bucketing(s=2, seed=4), NNM(1), Meamed(1))
    y = NNM(1).transform(Bucketing(s=2, seed=4).transform(x))
    assert_rule_close(Meamed(1), chain.aggregate(x), y)
    # a rule without aggregate_mixed
    assert torch.equal(Chain(NNM(2), Krum(2)).aggregate(x), Krum(2).aggregate(NNM(2).transform(x)))


def test_overriding_transform_or_aggregate_prevents_the_fusion():
    class DoubledNNM(NNM):  # its transform is used, not the inherited mixing
        def transform(self, x):
            return super().transform(x) * 2.0

    class ShiftedMedian(Median):  # its aggregate is used, not the inherited aggregate_mixed
        def aggregate(self, x):
            return super().aggregate(x) + 1.0

    x = inputs(9, 30, torch.float64, bad=0, seed=5)
    y = NNM(2).transform(x)
    assert torch.equal(Chain(DoubledNNM(2), Median()).aggregate(x), Median().aggregate(y * 2.0))
    assert torch.equal(Chain(NNM(2), ShiftedMedian()).aggregate(x), Median().aggregate(y) + 1.0)
    median = Median()  # same on an instance (e.g. a spy)
    median.aggregate = lambda v: Median().aggregate(v) - 1.0
    assert torch.equal(Chain(NNM(2), median).aggregate(x), Median().aggregate(y) - 1.0)


def test_mixing_matrix_and_geometry():
    x = inputs(11, 60, torch.float64, bad=1, seed=6)
    nnm = NNM(3)
    w, none = nnm.mixing(x)
    assert none is None and w.shape == (11, 11) and w.dtype == x.dtype
    assert torch.equal((w != 0).sum(dim=1), torch.full((11,), 8))
    torch.testing.assert_close(w.sum(dim=1), torch.ones(11, dtype=x.dtype))
    g = ExactGram.of(x)
    w2, gy = nnm.mixing(x, g)
    y, gy2 = nnm.transform_with_gram(x, g)
    assert torch.equal(w2, w) and torch.equal(gy.a, gy2.a)
    assert nnm.mixing(x, g, geometry=False)[1] is None
    torch.testing.assert_close(y, C.mixed_rows(x, w))


def test_registry_pipeline_is_fused_and_checked():
    agg = bz.aggregators.create("nnm+trimmed_mean", f=2)
    x = inputs(10, 50, torch.float32, bad=2, seed=7)
    torch.testing.assert_close(agg(x), TrimmedMean(2)(NNM(2)(x)), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="NNM requires n > 2f"):
        agg(x[:4])
