"""Partition of sample indices among workers: disjoint, complete, seeded, skew as specified."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from byzance.datasets import SCHEMES, label_distribution, label_skew, partition


@st.composite
def problems(draw: st.DrawFn) -> tuple[torch.Tensor, int, str, float, float, int]:
    n = draw(st.integers(1, 300))
    c = draw(st.integers(1, 10))
    seed = draw(st.integers(0, 2**16))
    labels = torch.from_numpy(np.random.default_rng(seed).integers(0, c, n))
    workers = draw(st.integers(1, min(n, 12)))
    scheme = draw(st.sampled_from(SCHEMES))
    alpha = draw(st.sampled_from([0.3, 1.0, 10.0]))
    gamma = draw(st.floats(0, 1))
    return labels, workers, scheme, alpha, gamma, seed


def balanced_labels(n_per_class: int = 100, classes: int = 10) -> torch.Tensor:
    return torch.arange(classes).repeat_interleave(n_per_class)


@given(problems())
@settings(max_examples=50)
def test_disjoint_complete_nonempty_reproducible(problem) -> None:  # noqa: ANN001
    labels, workers, scheme, alpha, gamma, seed = problem
    if scheme == "dirichlet" and len(labels) < 3 * workers:
        alpha = 10.0  # keep empty-worker redraws rare on tiny inputs
    try:
        parts = partition(labels, workers, scheme, alpha=alpha, gamma=gamma, seed=seed)
    except ValueError as e:
        assert scheme == "dirichlet" and "left a worker empty" in str(e)
        return
    assert len(parts) == workers
    assert all(p.dtype == torch.int64 and p.dim() == 1 and len(p) > 0 for p in parts)
    everything = torch.cat(parts).sort().values
    assert torch.equal(everything, torch.arange(len(labels)))  # disjoint and complete
    again = partition(labels, workers, scheme, alpha=alpha, gamma=gamma, seed=seed)
    assert all(torch.equal(a, b) for a, b in zip(parts, again, strict=True))
    if scheme != "dirichlet":  # sizes as even as possible
        sizes = [len(p) for p in parts]
        assert max(sizes) - min(sizes) <= 1


def test_seed_changes_the_split() -> None:
    y = balanced_labels(20)
    for scheme in SCHEMES:
        a = partition(y, 5, scheme, alpha=1.0, gamma=0.5, seed=0)
        b = partition(y, 5, scheme, alpha=1.0, gamma=0.5, seed=1)
        assert any(not torch.equal(p, q) for p, q in zip(a, b, strict=True)), scheme


def test_extreme_is_label_sorted() -> None:
    y = torch.from_numpy(np.random.default_rng(3).integers(0, 7, 200))
    parts = partition(y, 9, "extreme", seed=2)
    for left, right in zip(parts, parts[1:], strict=False):
        assert y[left].max() <= y[right].min()
    # one class per worker when workers == classes and classes are balanced
    dist = label_distribution(balanced_labels(), partition(balanced_labels(), 10, "extreme"))
    assert torch.equal(dist, torch.eye(10, dtype=dist.dtype))


def test_gamma_endpoints_are_iid_and_extreme() -> None:
    y = torch.from_numpy(np.random.default_rng(5).integers(0, 4, 97))
    for seed in (0, 7):
        iid = partition(y, 6, "iid", seed=seed)
        ext = partition(y, 6, "extreme", seed=seed)
        g1 = partition(y, 6, "gamma", gamma=1.0, seed=seed)
        g0 = partition(y, 6, "gamma", gamma=0.0, seed=seed)
        assert all(torch.equal(a, b) for a, b in zip(iid, g1, strict=True))
        assert all(torch.equal(a, b) for a, b in zip(ext, g0, strict=True))


@given(st.integers(0, 2**16))
@settings(max_examples=25)
def test_skew_grows_as_alpha_or_gamma_decreases(seed: int) -> None:
    y = balanced_labels()
    skew = {
        a: label_skew(y, partition(y, 10, "dirichlet", alpha=a, seed=seed)) for a in (0.05, 100)
    }
    assert skew[0.05] > 0.5 > 0.1 > skew[100]
    g = [label_skew(y, partition(y, 10, "gamma", gamma=v, seed=seed)) for v in (0.0, 0.5, 1.0)]
    assert g[0] == pytest.approx(0.9)  # every worker holds one class
    assert g[0] > g[1] + 0.2 > g[2] + 0.2
    assert g[1] == pytest.approx(0.45, abs=0.06)  # half of each worker's data is iid


def test_gamma_mix_fraction() -> None:
    y = balanced_labels()
    parts = partition(y, 10, "gamma", gamma=0.3, seed=4)
    # 30% iid data: worker 0's dominant class holds ~70% + 3% of its samples
    top = label_distribution(y, parts).max(dim=1).values
    assert torch.all((top > 0.6) & (top < 0.85))


def test_dirichlet_impossible_raises() -> None:
    with pytest.raises(ValueError, match="dirichlet.*left a worker empty.*alpha=0.001"):
        partition(torch.zeros(4, dtype=torch.long), 4, "dirichlet", alpha=0.001)


def test_numpy_labels_and_label_distribution() -> None:
    y = np.array([0, 0, 1, 1, 2, 2, 2, 2])
    parts = partition(y, 2, "iid", seed=1)
    dist = label_distribution(y, parts, num_classes=4)
    assert dist.shape == (2, 4)
    torch.testing.assert_close(dist.sum(1), torch.ones(2, dtype=dist.dtype))
    assert label_skew(y, [torch.arange(8)]) == 0.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_workers": 0}, "num_workers must be in"),
        ({"num_workers": 11}, "num_workers=11 for 10 samples"),
        ({"scheme": "pathological"}, "unknown scheme 'pathological'.*dirichlet"),
        ({"alpha": 0.0}, "alpha must be .* > 0, got alpha=0.0"),
        ({"alpha": float("inf")}, "alpha must be a finite"),
        ({"alpha": float("nan")}, "alpha must be a finite"),
        ({"gamma": 1.5}, r"gamma must be in \[0, 1\], got gamma=1.5"),
        ({"gamma": -0.1}, "gamma must be in"),
        ({"seed": -1}, "seed must be an int >= 0"),
        ({"labels": torch.zeros(2, 5, dtype=torch.long)}, "1-D"),
        ({"labels": torch.zeros(0, dtype=torch.long)}, "non-empty"),
        ({"labels": torch.zeros(10)}, "integers"),
        ({"labels": -torch.ones(10, dtype=torch.long)}, "labels must be >= 0"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    args = {"labels": torch.arange(10) % 3, "num_workers": 2, "scheme": "dirichlet"}
    args.update(kwargs)
    labels, workers, scheme = args.pop("labels"), args.pop("num_workers"), args.pop("scheme")
    with pytest.raises(ValueError, match=f"partition: .*{match}"):
        partition(labels, workers, scheme, **args)


def test_bad_types() -> None:
    with pytest.raises(TypeError, match="num_workers must be an int"):
        partition(torch.arange(4), 2.0, "iid")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="labels must be a 1-D torch.Tensor or numpy array"):
        partition([0, 1, 2], 2, "iid")  # type: ignore[arg-type]
