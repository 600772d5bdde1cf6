"""The two kinds of attacks: on gradients (``Attack``) and on a worker's data (``DataAttack``).

A gradient attack is omniscient: it sees the honest vectors of the round, an (h, d) matrix, and
returns the f Byzantine vectors, an (f, d) matrix in the same dtype and on the same device.
A data attack poisons the batch of a Byzantine worker, which then sends an honestly computed
gradient on the poisoned batch.
"""

from __future__ import annotations

from typing import Any

import torch

from byzance._tensor import as_matrix
from byzance.validation import Integer, Real, check_param

_NUM_BYZANTINE = Integer(low=1)


def check_num_byzantine(who: str, f: Any) -> int:
    """Validate the number of Byzantine vectors to produce (an int >= 1)."""
    return check_param(who, "f", f, _NUM_BYZANTINE)


def check_real(
    who: str, name: str, value: Any, *, low: float | None = None, strict: bool = False
) -> float:
    """Validate a finite real hyper-parameter, optionally ``> low`` (strict) or ``>= low``."""
    return check_param(who, name, value, Real(low=low, closed="neither" if strict else "both"))


def check_int(who: str, name: str, value: Any, *, low: int) -> int:
    """Validate an integer hyper-parameter ``>= low``."""
    return check_param(who, name, value, Integer(low=low))


class Attack:
    """A Byzantine gradient attack: ``attack(honest, f)`` -> the f Byzantine vectors.

    ``honest`` is an (h, d) torch tensor (any floating dtype, any device), an (h, d) numpy
    array or a list of 1-D vectors; the result is (f, d), of the same kind, dtype and device.
    The input is never modified. Subclasses implement ``forge`` on a tensor (the hot path,
    also callable directly) and may keep state across rounds, cleared by ``reset``.
    """

    #: registry name, e.g. ``"alie"``
    name: str = ""

    def __call__(self, honest: Any, f: int) -> Any:
        who = type(self).__name__
        x, restore = as_matrix(honest, who)
        check_num_byzantine(who, f)
        return restore(self.forge(x, f))

    def forge(self, honest: torch.Tensor, f: int) -> torch.Tensor:
        """Return the (f, d) Byzantine vectors for an (h, d) honest tensor (not validated)."""
        raise NotImplementedError

    def reset(self) -> None:
        """Forget any state kept across rounds (no-op for stateless attacks)."""

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"


class LinearAttack(Attack):
    """An attack of the form ``byzantine = anchor + scale * direction`` (one vector, f copies).

    ``anchor`` and ``direction`` depend on the honest vectors only; ``scale`` is the attack's
    hyper-parameter (``default_scale``). ``Optimal`` searches the scale against a given
    aggregator along the same line.
    """

    def line(self, honest: torch.Tensor, f: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(anchor, direction)``, two d-vectors in honest's dtype and device."""
        raise NotImplementedError

    def line_with_mean(
        self, honest: torch.Tensor, f: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(anchor, direction, mean)``: ``line`` and the honest mean (which ``Optimal``
        needs too); an attack whose line already computes the mean returns it here."""
        anchor, direction = self.line(honest, f)
        return anchor, direction, honest.mean(dim=0)

    def default_scale(self, n: int, f: int) -> float:
        """The scale used by the attack itself, for n = h + f workers in total."""
        raise NotImplementedError

    def forge(self, honest: torch.Tensor, f: int) -> torch.Tensor:
        anchor, direction = self.line(honest, f)
        scale = self.default_scale(honest.shape[0] + f, f)
        return (anchor + scale * direction).expand(f, -1).clone()


class DataAttack:
    """A data-poisoning attack applied to a Byzantine worker's batch.

    ``poison(x, y, num_classes, generator=None) -> (x', y')`` never modifies its inputs; the
    worker then computes its gradient honestly on ``(x', y')``. Extra keywords (``context``,
    e.g. ``model_params`` for ``BudgetedLabelFlipping``) are accepted and ignored by the
    attacks that do not use them, so a simulator can pass the same ones to every attack.
    """

    name: str = ""

    def poison(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        num_classes: int,
        generator: torch.Generator | None = None,
        **context: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def reset(self) -> None:
        """Forget any state kept across calls (no-op by default)."""

    def _check(self, x: torch.Tensor, y: torch.Tensor, num_classes: int) -> None:
        who = type(self).__name__
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise TypeError(f"{who}: x and y must be torch tensors")
        if y.dim() != 1 or x.shape[0] != y.shape[0]:
            raise ValueError(
                f"{who} requires y of shape (N,) and x of shape (N, ...), got "
                f"x.shape={tuple(x.shape)}, y.shape={tuple(y.shape)}"
            )
        if y.dtype.is_floating_point or y.dtype == torch.bool:
            raise TypeError(f"{who}: labels must be an integer tensor, got {y.dtype}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"{who} requires num_classes >= 2, got num_classes={num_classes}")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise ValueError(
                f"{who} requires labels in [0, num_classes), got labels in "
                f"[{int(y.min())}, {int(y.max())}], num_classes={num_classes}"
            )

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"
