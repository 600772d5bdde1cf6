"""Fast paths of the small (n, n) work: they must give exactly what the torch code gives.

``_distances.nearest_weights`` (compiled) against the composition of ``sq_distances_from_gram``,
``nearest`` and ``selection_weights``; the numpy and torch paths of ``ExactGram.centred``
(through ``gram(x, exact)``) against its definition; ``Optimal``'s forge against a plain
re-implementation of its output.
"""

from __future__ import annotations

import pytest
import torch

from byzance import aggregators as agg
from byzance import attacks as atk
from byzance import geometry as G
from byzance.aggregators import _distances as D


def reference_weights(g: torch.Tensor, bad: torch.Tensor, k: int, dtype: torch.dtype):
    d2 = D.sq_distances_from_gram(g, bad)
    return D.selection_weights(D.nearest(d2, bad, k), g.shape[0], dtype, g.device)


def gram_case(seed: int, n: int, ties: bool, n_bad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A Gram matrix of n rows (some duplicated or on a coarse grid: distance ties) with
    ``n_bad`` bad rows, as ``gram`` returns it."""
    gen = torch.Generator().manual_seed(seed)
    if ties:  # integer points: many equal distances; some duplicated rows
        x = torch.randint(-2, 3, (n, 3), generator=gen).double()
        x[n // 2] = x[0]
    else:
        x = torch.randn(n, 5, generator=gen, dtype=torch.float64)
    if n_bad:
        x[torch.randperm(n, generator=gen)[:n_bad], 0] = float("nan")
    return G.gram(x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
@pytest.mark.parametrize("n", range(3, 21))
def test_nearest_weights_kernel_equals_torch(n, ties, dtype):
    for seed in range(4):
        for n_bad in sorted({0, 1, n // 3, n - 1}):
            g, bad = gram_case(seed + 100 * n, n, ties, n_bad)
            for k in sorted({1, max(1, n // 2), n - 1, n}):
                got = D.nearest_weights(g, bad, k, dtype, g.device)
                want = reference_weights(g, bad, k, dtype)
                assert got.dtype == dtype and torch.equal(got, want), (n, n_bad, k)


def test_nearest_weights_kernel_handles_nan_and_negative_distances():
    g = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, float("nan")], [0.0, float("nan"), 4.0]])
    g = g.double()
    g[0, 1] = g[1, 0] = 1.0 + 1e-12  # rounding: a slightly negative squared distance
    bad = torch.zeros(3, dtype=torch.bool)
    for k in (1, 2, 3):
        want = reference_weights(g, bad, k, torch.float32)
        assert torch.equal(D.nearest_weights(g, bad, k, torch.float32, g.device), want)


def test_nearest_weights_falls_back_without_the_kernel(monkeypatch):
    monkeypatch.setattr(D, "_select_kernel_enabled", False)
    g, bad = gram_case(1, 7, True, 2)
    want = reference_weights(g, bad, 4, torch.float32)
    assert torch.equal(D.nearest_weights(g, bad, 4, torch.float32, g.device), want)


@pytest.mark.parametrize("n_bad", [0, 1, 3])
@pytest.mark.parametrize("odd", [False, True], ids=["finite-sketch", "nan-in-sketch"])
def test_gram_with_exact_numpy_and_torch_paths_equal_the_definition(n_bad, odd):
    gen = torch.Generator().manual_seed(n_bad)
    x = torch.randn(8, 50, generator=gen)
    exact = G.ExactGram.of(x.double())
    if n_bad:
        exact.a[torch.arange(n_bad), torch.arange(n_bad)] = float("inf")
    sketch = x[:, :10].clone()
    if odd:
        sketch[5, 3] = float("nan")
    # the definition: (A + A^T) / 2 about the origin, rows with a non-finite squared norm or
    # a non-finite entry in the sketch (and their columns) zeroed
    a = exact.a[:8, :8]
    want_bad = ~torch.isfinite(torch.diagonal(a))
    want_bad[5] |= odd
    want_g = torch.where(want_bad[:, None] | want_bad[None, :], 0.0, (a + a.T) / 2)
    g, bad = G.gram(sketch, exact)  # numpy path
    assert torch.equal(bad, want_bad) and torch.equal(g, want_g)
    g, bad = G.gram(sketch, G.ExactGram(exact.a.clone().requires_grad_()))  # torch path
    assert torch.equal(bad, want_bad) and torch.equal(g.detach(), want_g)


@pytest.mark.parametrize("spec", ["nnm+trimmed_mean", "nnm+median", "krum"])
@pytest.mark.parametrize("sketch", [None, 256])
def test_optimal_output_is_the_chosen_point_repeated(spec, sketch):
    gen = torch.Generator().manual_seed(7)
    honest = torch.randn(9, 3000, generator=gen) * 0.1 + 1.0
    attack = atk.OptimalALIE(aggregator=agg.create(spec, f=3), sketch=sketch)
    for _ in range(2):  # cold, then warm
        byz = attack(honest, 3)
        anchor, direction = attack.base.line(honest, 3)
        assert torch.equal(byz, (anchor + attack.last_scale * direction).expand(3, -1))


def test_repeat_point_with_no_byzantine_rows():
    from byzance.attacks.search import repeat_point

    anchor, direction = torch.ones(5), torch.arange(5.0)
    assert repeat_point(anchor, direction, 2.0, 0).shape == (0, 5)
    assert torch.equal(repeat_point(anchor, direction, 2.0, 1), (anchor + 2.0 * direction)[None])
