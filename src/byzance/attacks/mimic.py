"""Mimic (Karimireddy, He, Jaggi, ICLR 2022): copy the most atypical honest worker."""

from __future__ import annotations

from typing import Any

import torch

from byzance.attacks.base import Attack, check_int


class Mimic(Attack):
    """All Byzantine workers copy one honest worker, chosen to over-weight its data.

    Karimireddy, He & Jaggi, "Byzantine-Robust Learning on Heterogeneous Datasets via
    Bucketing", ICLR 2022 (the mimic attack). Under heterogeneity, copying honest
    worker ``i*`` is undetectable but biases the aggregate towards ``i*``'s data. The paper
    picks the worker that deviates most along the top principal direction ``z`` of the
    honest vectors: ``i* = argmax_i <z, x_i - mu>``, with ``z`` estimated online by one step
    of power iteration per round on the centered honest vectors ``c_i = x_i - mu_t``:

        z_{t+1} = normalise( t/(t+1) * z_t + 1/(t+1) * (1/h) sum_i c_i <c_i, z_t> ),

    ``z_0`` = the largest centered honest vector, normalised. During the first ``warmup``
    rounds, the target is the argmax of the current round and the scores
    ``S_i = sum_t <z_{t+1}, c_{t,i}>`` accumulate; from round ``warmup`` on, ``i*`` is frozen
    to ``argmax_i S_i`` (the paper's fixed target after a warm-up phase), so the copied worker
    is consistent across rounds. Honest rows must keep the same order across rounds (worker
    ids); if h changes, the state is reset. ``reset()`` clears the state.
    """

    name = "mimic"

    def __init__(self, warmup: int = 1) -> None:
        self.warmup = check_int(type(self).__name__, "warmup", warmup, low=1)
        self.reset()

    def reset(self) -> None:
        self._z: torch.Tensor | None = None
        self._scores: torch.Tensor | None = None
        self._round = 0
        self._target: int | None = None

    def state_dict(self) -> dict[str, Any]:
        return {
            "z": None if self._z is None else self._z.clone(),
            "scores": None if self._scores is None else self._scores.clone(),
            "round": self._round,
            "target": self._target,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        z, scores = state["z"], state["scores"]
        self._z = None if z is None else z.clone()
        self._scores = None if scores is None else scores.clone()
        self._round = int(state["round"])
        self._target = None if state["target"] is None else int(state["target"])

    @property
    def target(self) -> int | None:
        """The frozen honest index copied after warm-up (None before)."""
        return self._target

    def forge(self, honest: torch.Tensor, f: int) -> torch.Tensor:
        h, d = honest.shape
        if self._scores is not None and (self._scores.shape[0] != h or self._z.shape[0] != d):
            self.reset()
        if self._target is not None:
            index = self._target
        else:
            work = honest.detach().to(torch.float64)
            centered = work - work.mean(dim=0)
            if self._z is None:
                norms = torch.linalg.vector_norm(centered, dim=1)
                z = centered[int(norms.argmax())]
                self._scores = torch.zeros(h, dtype=torch.float64, device=honest.device)
            else:
                z = self._z.to(honest.device)
            t = self._round
            step = centered.T @ (centered @ z) / h
            z = t / (t + 1) * z + step / (t + 1)
            norm = torch.linalg.vector_norm(z)
            if norm > 0:
                z = z / norm
            self._z = z
            proj = centered @ z
            self._scores = self._scores + proj
            index = int(proj.argmax())
            self._round += 1
            if self._round >= self.warmup:
                self._target = int(self._scores.argmax())
        return honest[index].expand(f, -1).clone()
