"""Non-finite vectors: every coordinate +inf, or NaN (tests a rule's handling of garbage)."""

from __future__ import annotations

import torch

from byzance.attacks.base import Attack


class Inf(Attack):
    """Every Byzantine vector is ``(+inf, ..., +inf)``."""

    name = "inf"

    def forge(self, honest: torch.Tensor, f: int) -> torch.Tensor:
        return honest.new_full((f, honest.shape[1]), float("inf"))


class NaN(Attack):
    """Every Byzantine vector is ``(NaN, ..., NaN)``."""

    name = "nan"

    def forge(self, honest: torch.Tensor, f: int) -> torch.Tensor:
        return honest.new_full((f, honest.shape[1]), float("nan"))
