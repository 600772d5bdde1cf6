"""Datasets that need no download: scikit-learn's digits and a seeded synthetic task."""

from __future__ import annotations

import numpy as np
import torch

from byzance.datasets.errors import DatasetError

#: number of images in scikit-learn's digits, and the fraction kept for testing (a fixed,
#: seeded split)
DIGITS_SIZE = 1797
DIGITS_TEST_FRACTION = 0.2


def digits_split_sizes(total: int = DIGITS_SIZE) -> tuple[int, int]:
    """``(train, test)`` sizes of the digits split of ``total`` images (1438, 359)."""
    n_test = round(DIGITS_TEST_FRACTION * total)
    return total - n_test, n_test


def load_digits_tensors() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """UCI optical digits as shipped by scikit-learn: 1797 8x8 images, 10 classes.

    Fixed split (permutation with seed 0): 359 test, 1438 train samples. Features (pixel
    counts in [0, 16]) are standardised per feature with the training mean and standard
    deviation (a constant feature keeps std 1). Shape (N, 64).
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = np.asarray(bunch.data, dtype=np.float64)
    y = np.asarray(bunch.target, dtype=np.int64)
    perm = np.random.default_rng(0).permutation(len(y))
    n_test = digits_split_sizes(len(y))[1]
    test, train = perm[:n_test], perm[n_test:]
    mean = x[train].mean(axis=0)
    std = x[train].std(axis=0)
    std[std == 0] = 1.0
    x = (x - mean) / std
    as_x = lambda idx: torch.from_numpy(x[idx].astype(np.float32))  # noqa: E731
    return as_x(train), torch.from_numpy(y[train]), as_x(test), torch.from_numpy(y[test])


def make_synthetic(
    n_train: int = 5000,
    n_test: int = 1000,
    dim: int = 20,
    num_classes: int = 10,
    separation: float = 1.0,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gaussian-mixture classification: ``x = separation * mu_y + eps``.

    Class means ``mu_c ~ N(0, I_dim)`` and noise ``eps ~ N(0, I_dim)``; labels uniform over
    ``num_classes``. Train and test samples are drawn from the same mixture. Deterministic
    given ``seed`` (a private ``torch.Generator``; the global RNG is untouched).
    """
    for pname, value, low in (
        ("n_train", n_train, 1),
        ("n_test", n_test, 1),
        ("dim", dim, 1),
        ("num_classes", num_classes, 2),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise DatasetError(f"synthetic dataset: {pname} must be an int >= {low}, got {value!r}")
    if not separation > 0:
        raise DatasetError(f"synthetic dataset: separation must be > 0, got {separation!r}")
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(num_classes, dim, generator=g)

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(num_classes, (n,), generator=g)
        x = separation * means[y] + torch.randn(n, dim, generator=g)
        return x, y

    x_train, y_train = sample(n_train)
    x_test, y_test = sample(n_test)
    return x_train, y_train, x_test, y_test
