"""Median, TrimmedMean, Meamed, SignMajority and the shared coordinate-wise kernels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import byzance as bz
from byzance.aggregators import Meamed, Median, SignMajority, TrimmedMean
from byzance.aggregators import _coordinate as C
from byzance.kernels import coordinate as KC

SETTINGS = settings(max_examples=40, deadline=None)


def ref_median(x: np.ndarray) -> np.ndarray:
    s = np.sort(np.where(np.isnan(x), np.inf, x), axis=0)
    n = len(s)
    return s[n // 2] if n % 2 else s[n // 2 - 1] * 0.5 + s[n // 2] * 0.5


def ref_trimmed(x: np.ndarray, f: int) -> np.ndarray:
    s = np.sort(np.where(np.isnan(x), np.inf, x), axis=0)
    return s[f : len(s) - f].mean(axis=0)


def ref_meamed(x: np.ndarray, f: int) -> np.ndarray:
    """Brute force: rank every value by (|v - m|, v) and average the n - f first."""
    x = np.where(np.isnan(x), np.inf, x)
    m = ref_median(x)
    n, d = x.shape
    out = np.empty(d)
    for j in range(d):
        order = sorted(range(n), key=lambda i: (abs(x[i, j] - m[j]), x[i, j]))
        out[j] = np.mean([x[i, j] for i in order[: n - f]])
    return out


@pytest.fixture(params=[True, False], ids=["kernel", "torch"])
def path(request, monkeypatch):
    """Run each test on the compiled fast path and on the torch fallback."""
    monkeypatch.setattr(KC, "_kernel_enabled", request.param)


def test_hand_computed(path):
    x = torch.tensor(
        [[1.0, 10.0], [2.0, -4.0], [9.0, 0.0], [4.0, 3.0], [100.0, 2.0]], dtype=torch.float64
    )
    assert Median()(x).tolist() == [4.0, 2.0]
    assert TrimmedMean(1)(x).tolist() == [5.0, 5.0 / 3.0]  # (2+4+9)/3, (0+2+3)/3
    assert TrimmedMean(2)(x).tolist() == [4.0, 2.0]
    # medians 4 and 2; the 4 closest to 4: 1,2,4,9 -> 4 ; to 2: 0,2,3,-4 (6 vs 8 from 10)
    assert torch.allclose(Meamed(1)(x), torch.tensor([4.0, 0.25], dtype=torch.float64))
    even = torch.tensor([[1.0], [2.0], [5.0], [7.0]], dtype=torch.float64)
    assert Median()(even).item() == 3.5
    # tie: median 3.5, values 2 and 5 are 1.5 away -> the smaller wins
    assert Meamed(1)(even).item() == pytest.approx((2 + 5 + 1) / 3)
    assert Meamed(2)(torch.tensor([[0.0], [1.0], [2.0], [3.0], [4.0]])).item() == 2.0
    assert SignMajority()(x).tolist() == [1.0, 1.0]
    votes = torch.tensor([[1.0, -1.0, 0.0, float("nan")], [-2.0, -3.0, 0.0, float("nan")]])
    assert torch.equal(SignMajority()(votes), torch.tensor([0.0, -1.0, 0.0, 0.0]))


@SETTINGS
@given(
    n=st.integers(1, 40),
    d=st.integers(1, 70),
    seed=st.integers(0, 10**6),
    ties=st.booleans(),
    data=st.data(),
)
def test_against_brute_force(n, d, seed, ties, data):
    g = np.random.default_rng(seed)
    x = g.integers(-3, 4, size=(n, d)).astype(np.float64) if ties else g.normal(size=(n, d))
    f = data.draw(st.integers(0, (n - 1) // 2))
    for enabled in (True, False):
        KC._kernel_enabled = enabled
        try:
            assert np.allclose(Median()(x), ref_median(x), rtol=0, atol=1e-12)
            assert np.allclose(TrimmedMean(f)(x), ref_trimmed(x, f), rtol=0, atol=1e-12)
            assert np.allclose(Meamed(f)(x), ref_meamed(x, f), rtol=0, atol=1e-12)
        finally:
            KC._kernel_enabled = True


def test_network_sorts_every_01_input():
    # 0-1 principle: a comparator network sorts everything iff it sorts all 0/1 inputs
    for n in range(1, 13):
        lo, hi = KC.merge_sort_network(n)
        bits = (np.arange(2**n)[:, None] >> np.arange(n)) & 1
        for a, b in zip(lo, hi, strict=True):
            bits[:, [a, b]] = np.sort(bits[:, [a, b]], axis=1)
        assert (np.diff(bits, axis=1) >= 0).all(), n


RULES = [Median(), TrimmedMean(3), Meamed(3)]


@SETTINGS
@given(seed=st.integers(0, 10**6), n=st.integers(7, 20), d=st.integers(1, 40))
def test_equivariances(seed, n, d):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    perm = torch.randperm(n, generator=g)
    shift = torch.randn(d, generator=g, dtype=torch.float64)
    for rule in RULES:
        out = rule(x)
        assert torch.equal(rule(x[perm]), out)
        assert torch.allclose(rule(x + shift), out + shift, atol=1e-12)
        assert torch.allclose(rule(x * 2.5), out * 2.5, atol=1e-12)
    assert torch.equal(SignMajority()(x[perm]), SignMajority()(x))
    assert torch.equal(SignMajority()(3 * x), SignMajority()(x))


EXTREME = [1e30, -1e30, float("inf"), float("-inf"), float("nan")]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)  # fixture: path flag only
@given(
    seed=st.integers(0, 10**6),
    h=st.integers(1, 15),
    d=st.integers(1, 40),
    data=st.data(),
)
def test_resilience_to_extreme_rows(seed, h, d, data, path):
    f = data.draw(st.integers(0, h - 1))  # n = h + f > 2f
    g = torch.Generator().manual_seed(seed)
    honest = torch.randn(h, d, generator=g) * 10
    bad = torch.tensor(
        data.draw(st.lists(st.sampled_from(EXTREME), min_size=f * d, max_size=f * d)),
        dtype=torch.float32,
    ).reshape(f, d)
    x = torch.cat([bad, honest])[torch.randperm(h + f, generator=g)]
    lo, hi = honest.min(0).values, honest.max(0).values
    for rule in (Median(), TrimmedMean(f), Meamed(f)):
        out = rule(x)
        assert torch.isfinite(out).all(), rule
        assert (out >= lo - 1e-4).all() and (out <= hi + 1e-4).all(), rule


@pytest.mark.parametrize("rule", [*RULES, SignMajority()], ids=repr)
def test_dtypes_inputs_and_no_mutation(rule, path):
    x64 = torch.randn(9, 33, dtype=torch.float64)
    x64[0, 0] = float("nan")
    before = x64.clone()
    out = rule(x64)
    assert out.dtype == torch.float64 and out.shape == (33,)
    assert torch.equal(x64.isnan(), before.isnan())
    assert torch.equal(x64.nan_to_num(), before.nan_to_num())
    assert torch.equal(rule(x64), out)  # deterministic
    np_out = rule(x64.numpy())
    assert isinstance(np_out, np.ndarray) and np.array_equal(np_out, out.numpy())
    assert torch.equal(rule(list(x64)), out)
    out32 = rule(x64.float())
    assert out32.dtype == torch.float32
    assert torch.allclose(out32.double(), out, atol=1e-5)
    half = rule(x64.to(torch.bfloat16))  # non-kernel dtype goes to the torch path
    assert half.dtype == torch.bfloat16


def test_kernel_and_torch_paths_agree():
    x = torch.randn(32, 1000)
    x[3, ::7] = float("nan")
    x[5, ::5] = float("-inf")
    outs = {}
    for enabled in (True, False):
        KC._kernel_enabled = enabled
        try:
            outs[enabled] = [
                C.coordinate_median(x),
                C.coordinate_trimmed_mean(x, 7),
                C.closest_to_median_mean(x, 25),
            ]
        finally:
            KC._kernel_enabled = True
    assert torch.equal(outs[True][0], outs[False][0])  # order statistics: bit-for-bit
    for a, b in zip(outs[True][1:], outs[False][1:], strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_single_threaded_and_parallel_kernels_give_the_same_bits(monkeypatch):
    x = torch.randn(12, 3000)
    x[2, ::9] = float("nan")
    w = torch.zeros(12, 12)
    w[:, :10] = 0.1
    outs = {}
    for size in (1 << 40, 1):  # every input single-threaded, then every input parallel
        monkeypatch.setattr(KC, "_PARALLEL_MIN_SIZE", size)
        outs[size] = [
            C.coordinate_median(x),
            C.coordinate_trimmed_mean(x, 2),
            C.closest_to_median_mean(x, 9),
            C.coordinate_trimmed_mean(x, 2, mix=w),
        ]
    for a, b in zip(outs[1 << 40], outs[1], strict=True):
        assert torch.equal(a, b)


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"TrimmedMean requires n > 2f, got n=4, f=2"):
        TrimmedMean(2)(torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"Meamed requires n > 2f, got n=6, f=3"):
        Meamed(3).check(6)
    with pytest.raises(ValueError, match=r"TrimmedMean\.f: expected an int >= 0, got -1"):
        TrimmedMean(-1)
    with pytest.raises(TypeError):
        Meamed(1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="closest_to_median_mean requires 1 <= k <= n"):
        C.closest_to_median_mean(torch.zeros(3, 2), 4)
    with pytest.raises(ValueError, match="coordinate_trimmed_mean requires n > 2f"):
        C.coordinate_trimmed_mean(torch.zeros(4, 2), 2)


def test_registry_names():
    assert isinstance(bz.aggregators.create("median"), Median)
    assert bz.aggregators.create("trimmed_mean", f=2).f == 2
    assert isinstance(bz.aggregators.create("cwtm", f=1), TrimmedMean)
    assert isinstance(bz.aggregators.create("meamed", f=1), Meamed)
    assert isinstance(bz.aggregators.create("sign_majority"), SignMajority)


@SETTINGS
@given(n=st.integers(1, 25), d=st.integers(1, 30), seed=st.integers(0, 10**6), data=st.data())
def test_closest_to_median_mean_any_k_against_brute_force(n, d, seed, data):
    # Bulyan averages k = n - 4f values, fewer than half of them: windows then share no row
    g = np.random.default_rng(seed)
    x = g.integers(-3, 4, size=(n, d)).astype(np.float64)  # many ties
    k = data.draw(st.integers(1, n))
    want = ref_meamed(x, n - k)
    for enabled in (True, False):
        KC._kernel_enabled = enabled
        try:
            got = C.closest_to_median_mean(torch.from_numpy(x), k).numpy()
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
        finally:
            KC._kernel_enabled = True


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("n", [2, 3, 5, 12, 13, 33])
def test_kernel_blocks_small_n_and_non_finite_rows(n, dtype):
    # several full blocks of lanes plus a partial one; whole rows of NaN / +inf / -inf
    d = 3 * KC._LANES + 37
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, d, generator=g, dtype=dtype)
    x[0] = float("nan")
    if n > 2:
        x[n - 1, : d // 2] = float("inf")
        x[n - 1, d // 2 :] = float("-inf")
    x[n // 2, ::3] = float("nan")
    ref = x.numpy().astype(np.float64)
    assert KC.use_coordinate_kernel(x)
    assert np.array_equal(C.coordinate_median(x).numpy(), ref_median(ref).astype(x.numpy().dtype))
    rtol = 1e-5 if dtype == torch.float32 else 1e-12
    for f in range((n - 1) // 2 + 1):
        if f > 0:  # f = 0 is the plain mean (NaN propagates), not a kernel call
            got = C.coordinate_trimmed_mean(x, f).numpy()
            want = ref_trimmed(ref, f)
            fin = np.isfinite(want)
            assert np.array_equal(np.isfinite(got), fin)
            np.testing.assert_allclose(got[fin], want[fin], rtol=rtol, atol=rtol)
            assert np.array_equal(got[~fin], want[~fin])  # +-inf where the reference has them
        k = n - f
        KC._kernel_enabled = False
        try:
            slow = C.closest_to_median_mean(x, k).numpy()
        finally:
            KC._kernel_enabled = True
        fast = C.closest_to_median_mean(x, k).numpy()
        np.testing.assert_allclose(fast, slow, rtol=rtol, atol=rtol)


def ref_mixed(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``w @ x`` by explicit sums over the non-zero weights only (0 * inf is never formed)."""
    out = np.zeros((w.shape[0], x.shape[1]))
    for i in range(w.shape[0]):
        for j in range(w.shape[1]):
            if w[i, j] != 0:
                out[i] = out[i] + w[i, j] * x[j]
    return out


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    n=st.integers(1, 12),
    m=st.integers(1, 20),
    d=st.integers(1, 150),
    seed=st.integers(0, 10**6),
    data=st.data(),
)
def test_mixed_rows_against_brute_force(n, m, d, seed, data, path):
    # any (m, n) mixing matrix: signed dyadic weights and integer inputs keep every sum exact,
    # so ties are exact too and the results are compared bit for bit; some inputs are
    # non-finite, the mixed rows that use them are non-finite
    g = np.random.default_rng(seed)
    x = g.integers(-3, 4, size=(n, d)).astype(np.float64)
    x[g.random((n, d)) < 0.05] = np.inf
    x[g.random((n, d)) < 0.05] = -np.inf
    x[g.random((n, d)) < 0.05] = np.nan
    w = g.choice([0.0, 0.0, 0.25, 0.5, 1.0, -0.5, 2.0], size=(m, n))
    f = data.draw(st.integers(0, (m - 1) // 2))
    with np.errstate(invalid="ignore"):  # inf - inf in the references
        y = ref_mixed(x, w)
        want = [ref_median(y), ref_trimmed(y, f) if f else y.mean(axis=0), None]
        if np.isfinite(y).all():
            want[2] = ref_meamed(y, f)
    for dtype in (torch.float32, torch.float64):
        xt, wt = torch.tensor(x, dtype=dtype), torch.tensor(w, dtype=dtype)
        got = [
            C.coordinate_median(xt, mix=wt),
            C.coordinate_trimmed_mean(xt, f, mix=wt),  # f = 0: the mean of the mixed rows
            C.closest_to_median_mean(xt, m - f, mix=wt),
        ]
        for a, b in zip(got, want, strict=True):
            if b is not None:
                np.testing.assert_array_equal(a.numpy(), b.astype(a.numpy().dtype))
        assert torch.equal(C.mixed_rows(xt, wt).isnan(), torch.tensor(np.isnan(y)))


def test_mixed_rows_argument_is_checked():
    with pytest.raises(ValueError, match=r"mix must be an \(m, n\) matrix for an input of n=3"):
        C.coordinate_median(torch.zeros(3, 2), mix=torch.ones(2, 4))
    with pytest.raises(ValueError, match="coordinate_trimmed_mean requires n > 2f, got n=2"):
        C.coordinate_trimmed_mean(torch.zeros(5, 2), 1, mix=torch.ones(2, 5))
    with pytest.raises(ValueError, match="closest_to_median_mean requires 1 <= k <= n"):
        C.closest_to_median_mean(torch.zeros(5, 2), 3, mix=torch.ones(2, 5))
