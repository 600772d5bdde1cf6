"""The learning task: softmax regression on sklearn's digits, one shard per node."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

NUM_CLASSES = 10


def load_digits_split(seed: int = 0) -> tuple[np.ndarray, ...]:
    """(x_train, y_train, x_test, y_test): digits scaled to [0, 1], 80/20, shuffled."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    x, y = x[order], y[order]
    cut = int(0.8 * len(y))
    return x[:cut], y[:cut], x[cut:], y[cut:]


def load_partition(partition: int, partitions: int) -> tuple[np.ndarray, np.ndarray]:
    """The training shard of one node (iid: every ``partitions``-th example)."""
    x, y, _, _ = load_digits_split()
    return x[partition::partitions], y[partition::partitions]


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(64, NUM_CLASSES)


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, lr: float) -> float:
    """Full-batch gradient steps; returns the last loss."""
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    loss = torch.tensor(0.0)
    for _ in range(epochs * 10):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(xs), ys)
        loss.backward()
        opt.step()
    return float(loss)


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())
