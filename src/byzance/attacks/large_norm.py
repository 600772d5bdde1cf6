"""Large norm: a huge vector opposite the honest mean."""

from __future__ import annotations

import torch

from byzance.attacks.base import LinearAttack, all_finite, check_real, honest_mean


class LargeNorm(LinearAttack):
    """Every Byzantine vector is ``-scale * mu / ||mu||`` (norm ``scale``, opposite the mean).

    ``mu`` is the honest mean; if it is zero the direction is ``-(1, ..., 1) / sqrt(d)``.
    Breaks the plain mean; a robust rule must discard it. ``scale >= 0`` (default 1e6); the
    vectors are clamped to the dtype's finite range (float16: +-65504).
    """

    name = "large_norm"

    def __init__(self, scale: float = 1e6) -> None:
        self.scale = check_real(type(self).__name__, "scale", scale, low=0.0)

    def line(self, honest: torch.Tensor, f: int) -> tuple[torch.Tensor, torch.Tensor]:
        mean = honest_mean(honest)
        norm = torch.linalg.vector_norm(mean)
        if not all_finite(norm) and all_finite(mean):  # overflow: the norm of mean / max|mean|
            peak = mean.abs().max()
            unit = mean / peak
            return torch.zeros_like(mean), -(unit / torch.linalg.vector_norm(unit))
        fallback = torch.full_like(mean, honest.shape[1] ** -0.5)
        unit = torch.where(norm > 0, mean / norm.clamp_min(torch.finfo(mean.dtype).tiny), fallback)
        return torch.zeros_like(mean), -unit

    def default_scale(self, n: int, f: int) -> float:
        return self.scale
