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
        self.cuda_rng: torch.Tensor | None = None  # the same on a CUDA device
        self._forge = getattr(attack, "forge", None)  # the unchecked hot path of our attacks

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_forge"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__dict__.setdefault("cuda_rng", None)
        self._forge = getattr(self.attack, "forge", None)

    def forge(self, honest: torch.Tensor, count: int | None = None) -> torch.Tensor:
        """The f Byzantine vectors (f, d), in the honest vectors' dtype; ``count``: forge that
        many instead of f (a sampled client population, ``byzance.round.clients``)."""
        f = self.f if count is None else count
        device = honest.device if honest.device.type == "cuda" else None
        with torch.random.fork_rng(devices=[device] if device is not None else []):
            if self.rng is None:
                torch.manual_seed(self.seed + 1)
            else:
                torch.set_rng_state(self.rng)
            if device is not None:  # the device's stream is carried too
                if self.cuda_rng is None:
                    torch.cuda.manual_seed(self.seed + 1)
                else:
                    torch.cuda.set_rng_state(self.cuda_rng, device)
            if self._forge is not None:
                byz = self._forge(honest, f)
            else:
                byz = self.attack(honest, f)
            self.rng = torch.get_rng_state()
            if device is not None:
                self.cuda_rng = torch.cuda.get_rng_state(device)
        if byz.shape != (f, honest.shape[1]):
            raise ValueError(
                f"attack {self.name!r} returned shape {tuple(byz.shape)}, "
                f"expected ({f}, {honest.shape[1]})"
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
        """What the attack keeps across rounds (``attack.state_dict()``: tensors and plain
        data; the attack itself is rebuilt from the config) and the generator states."""
        save = getattr(self.attack, "state_dict", None)
        attack = save() if save is not None else {}
        return {"attack": attack, "rng": self.rng, "cuda_rng": self.cuda_rng}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict`` into the attack this adversary was built with."""
        load = getattr(self.attack, "load_state_dict", None)
        if load is not None:
            load(state["attack"])
        self.rng = state["rng"]
        self.cuda_rng = state.get("cuda_rng")
