"""Gaussian noise: Byzantine vectors drawn at random, independent of the honest ones."""

from __future__ import annotations

from typing import Any

import torch

from byzance.attacks.base import SEED, Attack, check_real
from byzance.validation import check_param


class Gaussian(Attack):
    """Every Byzantine vector is drawn i.i.d. from ``N(mu, sigma^2 I_d)``.

    The random stream is seeded once (``seed``) and advances across rounds, so a run is
    reproducible; ``reset()`` restarts it. Draws are made in float64 on the CPU, clamped to the
    finite range of honest's dtype and cast to it and its device, so results do not depend on
    the device.
    """

    name = "gaussian"

    def __init__(self, mu: float = 0.0, sigma: float = 200.0, seed: int = 0) -> None:
        who = type(self).__name__
        self.mu = check_real(who, "mu", mu)
        self.sigma = check_real(who, "sigma", sigma, low=0.0)
        self.seed = check_param(who, "seed", seed, SEED)
        self._generator = torch.Generator().manual_seed(self.seed)

    def reset(self) -> None:
        self._generator = torch.Generator().manual_seed(self.seed)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self._generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._generator = torch.Generator()
        self._generator.set_state(state["generator"])

    def forge(self, honest: torch.Tensor, f: int) -> torch.Tensor:
        noise = torch.randn(f, honest.shape[1], generator=self._generator, dtype=torch.float64)
        out = self.mu + self.sigma * noise
        info = torch.finfo(honest.dtype)  # finite in the dtype (float16: +-65504)
        return out.clamp_(info.min, info.max).to(dtype=honest.dtype, device=honest.device)
