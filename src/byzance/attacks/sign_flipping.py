"""Sign flipping: send the opposite of the honest mean."""

from __future__ import annotations

import torch

from byzance.attacks.base import LinearAttack, honest_mean


class SignFlipping(LinearAttack):
    """Every Byzantine worker sends ``-mean(honest)`` (a standard baseline of the literature).

    With ``mu = (1/h) sum_i x_i`` the honest mean, each Byzantine vector is ``-mu``
    (``anchor = 0``, ``direction = -mu``, ``scale = 1``).
    """

    name = "sign_flipping"

    def line(self, honest: torch.Tensor, f: int) -> tuple[torch.Tensor, torch.Tensor]:
        mean = honest_mean(honest)
        return torch.zeros_like(mean), -mean

    def default_scale(self, n: int, f: int) -> float:
        return 1.0
