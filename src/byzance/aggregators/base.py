"""The two kinds of building blocks: rules (n vectors -> 1) and pre-aggregators (n -> m)."""

from __future__ import annotations

from typing import Any

import torch

from byzance._tensor import as_matrix


def check_f(who: str, f: int) -> int:
    """Validate the number of Byzantine inputs a rule is built to tolerate."""
    if isinstance(f, bool) or not isinstance(f, int):
        raise TypeError(f"{who}: f must be an int, got {type(f).__name__}")
    if f < 0:
        raise ValueError(f"{who}: f must be >= 0, got f={f}")
    return f


def require(who: str, ok: bool, condition: str, **values: int) -> None:
    """Raise ``ValueError`` naming the rule, the violated condition and the values."""
    if not ok:
        shown = ", ".join(f"{k}={v}" for k, v in values.items())
        raise ValueError(f"{who} requires {condition}, got {shown}")


class Aggregator:
    """A robust aggregation rule: maps n vectors (an (n, d) input) to one d-vector.

    Subclasses set hyper-parameters in ``__init__``, implement ``aggregate`` on an (n, d)
    floating tensor (never writing into it) and ``check`` for the condition on n.
    """

    #: registry name, e.g. ``"krum"``
    name: str = ""

    def __call__(self, vectors: Any) -> Any:
        x, restore = as_matrix(vectors, type(self).__name__)
        self.check(x.shape[0])
        return restore(self.aggregate(x))

    def check(self, n: int) -> None:
        """Raise ``ValueError`` if the rule cannot run on ``n`` inputs (default: n >= 1)."""
        require(type(self).__name__, n >= 1, "n >= 1", n=n)

    def aggregate(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"


class PreAggregator:
    """A pre-aggregation step: maps n vectors to m vectors, fed to a rule (see ``Chain``)."""

    name: str = ""

    def __call__(self, vectors: Any) -> Any:
        x, restore = as_matrix(vectors, type(self).__name__)
        self.check(x.shape[0])
        return restore(self.transform(x))

    def check(self, n: int) -> None:
        """Raise ``ValueError`` if the step cannot run on ``n`` inputs."""
        require(type(self).__name__, n >= 1, "n >= 1", n=n)

    def output_size(self, n: int) -> int:
        """Number of vectors produced from ``n`` inputs (default: n)."""
        return n

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"
