"""The adversary step, once for every engine: the f colluding Byzantine workers' vectors.

The adversary is omniscient: it sees the honest vectors of the round (h, d) and its gradient
attack returns f vectors (``attack.forge(honest, f)``). Attacks that draw from torch's global
generator draw from the adversary's own stream, seeded with ``seed + 1`` and carried from
round to round (``rng``), so every engine (the simulator, each Byzantine Ray actor holding a
copy) forges the same matrix from the same honest vectors, and a checkpoint restores it.

Per-recipient vectors (equivocation, for protocols without a trusted server): recipient i,
whose own vector is ``v_i``, gets ``v_i + (a_k - mean(honest))`` from Byzantine worker k, the
attack's deviation re-anchored at ``v_i`` (so it looks close to every recipient); without
equivocation every recipient gets ``a_k``.
"""

from __future__ import annotations

from typing import Any

import torch


class Adversary:
    """``forge(honest) -> (f, d)`` with the attack's randomness carried in ``rng``."""

    def __init__(self, attack: Any, f: int, seed: int, name: str | None = None) -> None:
        self.attack, self.f, self.seed = attack, f, seed
        self.name = name or repr(attack)
        self.rng: torch.Tensor | None = None  # the CPU generator state; None: seed + 1
        self._forge = getattr(attack, "forge", None)  # the unchecked hot path of our attacks

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_forge"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._forge = getattr(self.attack, "forge", None)

    def forge(self, honest: torch.Tensor) -> torch.Tensor:
        """The f Byzantine vectors (f, d), in the honest vectors' dtype."""
        devices = [honest.device] if honest.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            if self.rng is None:
                torch.manual_seed(self.seed + 1)
                if devices:
                    torch.cuda.manual_seed(self.seed + 1)
            else:
                torch.set_rng_state(self.rng)
            if self._forge is not None:
                byz = self._forge(honest, self.f)
            else:
                byz = self.attack(honest, self.f)
            self.rng = torch.get_rng_state()
        if byz.shape != (self.f, honest.shape[1]):
            raise ValueError(
                f"attack {self.name!r} returned shape {tuple(byz.shape)}, "
                f"expected ({self.f}, {honest.shape[1]})"
            )
        return byz.to(honest.dtype)

    @staticmethod
    def for_recipients(
        forged: torch.Tensor, honest: torch.Tensor, anchors: torch.Tensor, equivocate: bool
    ) -> torch.Tensor:
        """(f, r, d): what each of the f Byzantine workers sends to each of r recipients,
        whose own vectors are the rows of ``anchors`` (see the module docstring)."""
        f, r = forged.shape[0], anchors.shape[0]
        if not equivocate:
            return forged[:, None, :].expand(f, r, -1).clone()
        deviation = forged - honest.mean(dim=0)
        return anchors[None, :, :] + deviation[:, None, :]

    def state_dict(self) -> dict[str, Any]:
        """The attack (with whatever it keeps across rounds) and the generator state."""
        return {"attack": self.attack, "rng": self.rng}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.attack, self.rng = state["attack"], state["rng"]
        self._forge = getattr(self.attack, "forge", None)
