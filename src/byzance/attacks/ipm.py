"""Inner product manipulation (Xie, Koyejo, Gupta, UAI 2019, "Fall of Empires")."""

from __future__ import annotations

import torch

from byzance.attacks.base import LinearAttack, check_real, honest_mean


class InnerProductManipulation(LinearAttack):
    """Every Byzantine worker sends ``-epsilon * mean(honest)``.

    Xie, Koyejo & Gupta, "Fall of Empires: Breaking Byzantine-tolerant SGD by Inner Product
    Manipulation", UAI 2019: with ``mu`` the honest mean, the Byzantine vectors are
    ``-epsilon * mu`` so that the aggregate ``g`` gets a negative inner product with the true
    gradient, ``<g, mu> < 0``, while a small ``epsilon`` keeps them close to the honest cloud.
    ``anchor = 0``, ``direction = -mu``, ``scale = epsilon`` (``epsilon > 0``, default 0.1).
    """

    name = "ipm"

    def __init__(self, epsilon: float = 0.1) -> None:
        self.epsilon = check_real(type(self).__name__, "epsilon", epsilon, low=0.0, strict=True)

    def line(self, honest: torch.Tensor, f: int) -> tuple[torch.Tensor, torch.Tensor]:
        mean = honest_mean(honest)
        return torch.zeros_like(mean), -mean

    def default_scale(self, n: int, f: int) -> float:
        return self.epsilon
