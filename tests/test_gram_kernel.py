"""The compiled Gram kernel (``kernels.gram.kernel_gram``) and the functions that use it.

Every result is compared with a float64 brute force (``torch.mm`` on float64 copies of the
rows), and the kernel path with the torch path (``kernels.gram._kernel_enabled = False``).
"""

from __future__ import annotations

import numba
import pytest
import torch

from byzance import geometry as G
from byzance.aggregators import _distances as D
from byzance.geometry import line_gram
from byzance.kernels import gram as K

DTYPES = [torch.float32, torch.float64]


@pytest.fixture(params=[True, False], ids=["kernel", "torch"])
def path(request, monkeypatch):
    """Run a test on the compiled path and on the torch path."""
    monkeypatch.setattr(K, "_kernel_enabled", request.param)
    monkeypatch.setattr(K, "_KERNEL_MIN_SIZE", 0)  # small inputs take the kernel too
    return request.param


@pytest.fixture
def any_size(monkeypatch):
    monkeypatch.setattr(K, "_KERNEL_MIN_SIZE", 0)


def rows(seed: int, n: int, d: int, dtype=torch.float32, shift: float = 0.5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g, dtype=torch.float64) + shift).to(dtype)


def f64(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float64)


def brute(*vectors: torch.Tensor) -> torch.Tensor:
    """float64 Gram matrix of the rows of the given (n, d) or (d,) tensors, stacked."""
    y = torch.cat([v.double().reshape(-1, v.shape[-1]) for v in vectors])
    return y @ y.T


def close(g: torch.Tensor, ref: torch.Tensor, rel: float) -> bool:
    """|g - ref| <= rel * sqrt(ref_ii ref_jj) (the scale of each entry), all entries."""
    norms = torch.diagonal(ref).clamp_min(0).sqrt()
    return bool(((g - ref).abs() <= rel * norms[:, None] * norms[None, :] + 1e-300).all())


# --------------------------------------------------------------------------- the kernel


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 12, 13, 33])
@pytest.mark.parametrize("d", [1, 3, 17, 255, 256, 257, 1000, 5000])
def test_kernel_matches_float64_brute_force(n, d, dtype):
    x = rows(n * 1000 + d, n, d, dtype)
    o = rows(7, 1, d, dtype)[0]
    a, b = rows(8, 2, d, dtype)
    g = K.kernel_gram(x)
    assert g.dtype == torch.float64 and g.shape == (n, n)
    assert close(g, brute(x), 1e-13) and torch.equal(g, g.T)
    for extras in ([], [(o, False)], [(a, True), (b, False), (o, False)], [(b, False), (a, True)]):
        g = K.kernel_gram(x, o, extras)
        ref = brute(f64(x) - f64(o), *[f64(e) - f64(o) if c else e for e, c in extras])
        assert g.shape == (n + len(extras),) * 2
        assert close(g, ref, 1e-13) and torch.equal(g, g.T), extras


def test_kernel_products_are_exact_for_float32():
    # float32 values with 24-bit mantissas: every product is exact in float64, and the sums
    # of few terms too, so the Gram matrix of small integers is exact
    g = torch.Generator().manual_seed(0)
    x = torch.randint(-1000, 1000, (6, 777), generator=g).float()
    assert torch.equal(K.kernel_gram(x), brute(x))
    assert torch.equal(K.kernel_gram(x, x[2]), brute(x - x[2]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_kernel_is_deterministic_whatever_the_threads(dtype):
    x = rows(1, 12, 100_003, dtype)
    o = x.mean(0)
    K.kernel_gram(x[:, :10])  # the threading layer is chosen before the first launch
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = K.kernel_gram(x), K.kernel_gram(x, o, [(x[0], True), (o, False)])
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        two = K.kernel_gram(x), K.kernel_gram(x, o, [(x[0], True), (o, False)])
        again = K.kernel_gram(x), K.kernel_gram(x, o, [(x[0], True), (o, False)])
    finally:
        numba.set_num_threads(before)
    for u, v, w in zip(one, two, again, strict=True):
        assert torch.equal(u, v) and torch.equal(v, w)


@pytest.mark.parametrize("dtype", DTYPES)
def test_kernel_non_finite_entries_propagate_like_a_matrix_product(dtype):
    x = rows(2, 9, 300, dtype)
    x[1, 5] = float("inf")
    x[4, 299] = float("-inf")
    x[6, 0] = float("nan")
    g = K.kernel_gram(x)
    ref = brute(x)
    assert torch.isfinite(torch.diagonal(g)).tolist() == [i not in (1, 4, 6) for i in range(9)]
    # same non-finite pattern as the float64 product (inf * 0 = NaN in the pair terms too)
    assert torch.equal(torch.isnan(g), torch.isnan(ref))
    assert torch.equal(torch.isinf(g), torch.isinf(ref))
    fin = torch.isfinite(ref)
    assert torch.allclose(g[fin], ref[fin], rtol=1e-12, atol=1e-12)


def test_kernel_marks_a_squared_norm_beyond_the_dtype_as_infinite():
    # exact float64 products would hold 1e30^2: the row still overflows in float32 (as in the
    # torch path), and in float64 only beyond float64's range
    x = rows(3, 5, 40)
    x[2] = 1e30
    g = K.kernel_gram(x)
    assert torch.isinf(g[2, 2]) and torch.isfinite(torch.diagonal(g)[[0, 1, 3, 4]]).all()
    assert torch.isfinite(K.kernel_gram(x.double())).all()
    y = x.double()
    y[2] = 1e160
    assert torch.isinf(K.kernel_gram(y)[2, 2])


def test_use_kernel_conditions(monkeypatch):
    big = rows(0, 12, -(-K._KERNEL_MIN_SIZE // 12))
    assert K.use_gram_kernel(12, big) and not K.use_gram_kernel(12, big[:, :-1])
    monkeypatch.setattr(K, "_KERNEL_MIN_SIZE", 0)
    x = rows(0, 12, 50)
    assert K.use_gram_kernel(12, x)
    assert K.use_gram_kernel(K._KERNEL_ROWS[torch.float32], x)
    assert not K.use_gram_kernel(K._KERNEL_ROWS[torch.float32] + 1, x)
    assert not K.use_gram_kernel(0, x)
    assert not K.use_gram_kernel(12, x.half())
    assert not K.use_gram_kernel(12, x.requires_grad_())
    assert not K.use_gram_kernel(12, rows(0, 12, 50), torch.zeros(50, dtype=torch.float64))
    monkeypatch.setattr(K, "_kernel_enabled", False)
    assert not K.use_gram_kernel(12, rows(0, 12, 50))


@pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")
def test_gram_with_autograd_takes_the_torch_path():
    x = rows(5, 6, 30).requires_grad_()
    g, bad = G.gram(x)
    assert g.requires_grad  # a torch product, not the kernel (which would detach it)
    assert not bad.any() and torch.allclose(g, brute(x.detach()), rtol=1e-5)


# --------------------------------------------------------------------------- the users


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("n", "d"), [(1, 7), (2, 1), (3, 100), (12, 4321), (13, 600)])
def test_gram_functions_match_brute_force_on_both_paths(path, n, d, dtype):
    # the kernel is exact to float64 rounding; the torch path multiplies in the input's dtype
    rel = 1e-13 if path or dtype == torch.float64 else 1e-5
    x = rows(n + d, n, d, dtype)
    o = x[n // 2]
    g, bad = G.gram(x)
    assert not bad.any() and close(g, brute(x), rel)
    assert close(G.centred_gram(x, o), brute(f64(x) - f64(o)), rel)
    e = G.ExactGram.of(x, o)
    assert close(e.a, brute(f64(x) - f64(o), o), rel)
    assert torch.allclose(e.sq_norms(), torch.diagonal(brute(x)), rtol=4 * rel, atol=0)
    anchor, direction = x.mean(0) - 0.7 * x.std(0, correction=0), -x.std(0, correction=0)
    line = line_gram(x, x.mean(0), anchor, direction)
    mu = x.mean(0)
    assert close(line, brute(f64(x) - f64(mu), f64(anchor) - f64(mu), direction, mu), rel)
    assert torch.equal(line, line.T)
    # the anchor given as the origin itself (ALIE): its row skipped, the same matrix
    same = line_gram(x, mu, mu, direction)
    assert torch.equal(same, line_gram(x, mu, mu.clone(), direction))
    assert not same[n].any() and not same[:, n].any()


@pytest.mark.parametrize("dtype", DTYPES)
def test_kernel_and_torch_paths_agree(dtype, monkeypatch, any_size):
    x = rows(11, 12, 20_001, dtype)
    x[3] *= 3
    mu = x.mean(0)
    anchor, direction = mu - 1.5 * x.std(0), -x.std(0)
    a = (
        G.gram(x),
        G.centred_gram(x, x[5]),
        G.ExactGram.of(x).a,
        line_gram(x, mu, anchor, direction),
    )
    monkeypatch.setattr(K, "_kernel_enabled", False)
    b = (
        G.gram(x),
        G.centred_gram(x, x[5]),
        G.ExactGram.of(x).a,
        line_gram(x, mu, anchor, direction),
    )
    rel = 1e-12 if dtype == torch.float64 else 1e-5
    assert torch.equal(a[0][1], b[0][1])
    for u, v in zip((a[0][0], *a[1:]), (b[0][0], *b[1:]), strict=True):
        assert close(u, v, rel)
    d2a = D.sq_distances_from_gram(*a[0])
    d2b = D.sq_distances_from_gram(*b[0])
    off = ~torch.eye(12, dtype=torch.bool)
    assert float(((d2a - d2b).abs() / d2b)[off].max()) < 10 * rel


@pytest.mark.parametrize("dtype", DTYPES)
def test_gram_bad_rows_on_both_paths(path, dtype):
    x = rows(4, 10, 333, dtype)
    x[1, 2] = float("nan")
    x[3, 0] = float("inf")
    x[5, 100] = float("-inf")
    x[7] = 1e30 if dtype == torch.float32 else 1e200  # squared norm overflows the dtype
    x[8] = 1e15 if dtype == torch.float32 else 1e100  # huge, but its square fits
    g, bad = G.gram(x)
    assert bad.tolist() == [i in (1, 3, 5, 7) for i in range(10)]
    assert torch.isfinite(g).all()
    assert (g[bad] == 0).all() and (g[:, bad] == 0).all()
    d2 = D.sq_distances_from_gram(g, bad)
    assert torch.isinf(d2[bad]).all() and torch.isinf(d2[:, bad]).all()
    good = ~bad
    assert torch.isfinite(d2[good][:, good]).all()
    ref = brute(x[good])
    assert close(g[good][:, good], ref, 1e-5)
    # the geometry computed apart gives the same bad rows
    assert G.ExactGram.of(x).bad().tolist() == bad.tolist()
    assert not bool(torch.isfinite(line_gram(x, x[0], x[2], x[4])).all())


@pytest.mark.parametrize("spread", [1e-2, 1e-3, 1e-4])
def test_gram_distances_resist_cancellation_on_both_paths(path, spread):
    g = torch.Generator().manual_seed(0)
    common = torch.randn(50_000, generator=g) * 100
    x = (common + spread * torch.randn(8, 50_000, generator=g)).float()
    d2, bad = D.sq_distances(x)
    x64 = x.double()
    ref = ((x64[:, None] - x64[None]) ** 2).sum(-1)
    off = ~torch.eye(8, dtype=torch.bool)
    assert not bad.any()
    assert float(((d2 - ref).abs() / ref)[off].max()) < G._TOL


def test_float64_products_need_the_centred_recomputation_far_less_often(path, monkeypatch):
    # spread 1e-3 of the norm: float32 products cancel (recomputed on centred rows), the
    # kernel's float64 products do not need it; at 1e-7 both need it
    calls = []
    centred = G._centred_gram
    monkeypatch.setattr(G, "_centred_gram", lambda x: calls.append(1) or centred(x))
    g = torch.Generator().manual_seed(1)
    common = torch.randn(20_000, generator=g, dtype=torch.float64)
    for spread, kernel_recomputes in ((1e-3, False), (1e-7, True)):
        calls.clear()
        x = common + spread * torch.randn(6, 20_000, generator=g, dtype=torch.float64)
        d2, _ = D.sq_distances(x.float())
        assert bool(calls) == (kernel_recomputes or not path), spread
        ref = ((x.float().double()[:, None] - x.float().double()[None]) ** 2).sum(-1)
        off = ~torch.eye(6, dtype=torch.bool)
        assert float(((d2 - ref).abs() / ref)[off].max()) < G._TOL


def test_rules_give_the_same_selection_on_both_paths(monkeypatch, any_size):
    import byzance as bz

    g = torch.Generator().manual_seed(3)
    x = torch.randn(15, 5000, generator=g) + 1.0
    x[:3] = x[3:].mean(0) + 0.3 * torch.randn(3, 5000, generator=g)  # close Byzantine rows
    x[14] = float("nan")
    specs = ["krum", "multikrum", "nnm+trimmed_mean", "mda", "bulyan", "caf", "arc+krum"]
    got = {s: bz.aggregators.create(s, f=3)(x) for s in specs}
    monkeypatch.setattr(K, "_kernel_enabled", False)
    for s in specs:
        want = bz.aggregators.create(s, f=3)(x)
        assert torch.allclose(got[s], want, rtol=1e-5, atol=1e-6), s
        assert torch.isfinite(got[s]).all(), s
