"""The cores of the decentralised mode's nodes (run inside ``NodeActor``s): an honest node's
model, momentum and two rules (``NodeCore``), and a Byzantine node that may equivocate
(``EquivocatingForger``). See ``byzance.engines.ray.decentralized`` for the algorithm."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from byzance.round.adversary import Adversary
from byzance.round.server import RuleState, Server


class NodeCore:
    """An honest node: its worker step (shard, momentum), its model with the server step of
    ``byzance.round`` (its gradient rule, weight decay, lr schedule; no momentum) and its
    model rule, each rule with its own state across rounds (e.g. centered clipping's centre:
    the node's previous aggregate)."""

    def __init__(self, worker: Any, node: int, server: Server, model_rule: Any) -> None:
        self.worker = worker
        self.node = node
        self.server = server
        self.model = RuleState(model_rule)
        self.m: np.ndarray | None = None
        self.loss = float("nan")

    @property
    def theta(self) -> torch.Tensor:
        return self.server.params

    def warmup(self) -> None:
        getattr(self.worker, "warmup", lambda: None)()

    def compute(self, params: np.ndarray, round_: int) -> tuple[np.ndarray, float]:
        """Phase 1: momentum at the node's own model (``params`` ignored)."""
        self.m, self.loss = self.worker.compute(self.theta.numpy(), round_)
        return self.m, self.loss

    @staticmethod
    def _gather(own: np.ndarray, pos: int, k: int, vectors: tuple[np.ndarray, ...]) -> torch.Tensor:
        rows = [own, *vectors[:k]] + [b[pos] for b in vectors[k:]]
        return torch.from_numpy(np.stack(rows))

    def gradient_step(self, round_: int, pos: int, k: int, *vectors: np.ndarray) -> np.ndarray:
        """Phase 2-3: the server step on own momentum + ``k`` honest + Byzantine rows ``pos``."""
        assert self.m is not None
        self.server.step(self._gather(self.m, pos, k, vectors), round_)
        return self.theta.numpy().copy()

    def model_step(self, round_: int, pos: int, k: int, *vectors: np.ndarray) -> np.ndarray:
        """Phase 4: aggregate own model + ``k`` honest + Byzantine rows ``pos``."""
        x = self._gather(self.theta.numpy().copy(), pos, k, vectors)
        self.theta.copy_(self.model.aggregate(x))
        return self.theta.numpy().copy()

    def params(self) -> np.ndarray:
        return self.theta.numpy().copy()

    def state_dict(self) -> dict[str, Any]:
        """Model and gradient rule's state (the server's), worker state (momentum), and the
        model rule's state."""
        return {
            "server": self.server.state_dict(),
            "worker": self.worker.state_dict(),
            "model_rule": self.model.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.server.load_state_dict(state["server"])
        self.worker.load_state_dict(state["worker"])
        self.model.load_state_dict(state["model_rule"])


class EquivocatingForger:
    """A Byzantine node: its row of the adversary's matrix, sent to each recipient as
    ``Adversary.for_recipients`` says (re-anchored at the recipient's own vector when
    ``equivocate``)."""

    def __init__(self, forger: Any, equivocate: bool) -> None:
        self.forger = forger
        self.equivocate = equivocate

    def forge(self, honest: np.ndarray, round_: int) -> np.ndarray:
        a = torch.from_numpy(self.forger.forge(honest, round_))[None, :]
        x = torch.from_numpy(honest)
        return Adversary.for_recipients(a, x, x, self.equivocate)[0].numpy()

    def state_dict(self) -> dict[str, Any]:
        return self.forger.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.forger.load_state_dict(state)
