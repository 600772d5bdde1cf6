"""A config's run as a Ray ``Workload``: the round's steps (``byzance.round``) split between
the driver (server, evaluation) and one actor per worker.

``WorkerCore`` (actor side) is the ``Workers`` step of one worker, holding only its shard and
a copy of the model: batch ``j`` of worker ``w`` at (round t, local step s) is the same example
as in the simulator, and so are the gradient, the local steps and the momentum. ``ForgerCore``
is a Byzantine worker's row of the ``Adversary``'s matrix (the f actors hold copies of the same
adversary and see the same honest vectors, so they forge what the simulator forges).
``ExperimentWorkload`` (driver side) holds the ``Setup``, the ``Server`` and the evaluation.
With the same seed a synchronous Ray run (q = n) reproduces the simulator's trajectory up to
float rounding (the simulator computes all workers in one pass).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from byzance.round.adversary import Adversary
from byzance.round.setup import Setup
from byzance.round.workers import Workers


class WorkerCore:
    """Worker ``worker``'s step (an honest or a data-poisoning Byzantine worker)."""

    def __init__(self, workers: Workers, params0: torch.Tensor) -> None:
        self.workers = workers
        self.worker = int(workers.ids[0])
        self.params0 = params0
        self.rows = torch.zeros(1, dtype=torch.int64)

    def warmup(self) -> None:
        """Build the model functions and run one gradient (no state change)."""
        poisoner, self.workers.poisoner = self.workers.poisoner, None
        try:
            self.workers.gradients(self.rows, self.params0, 1)
        finally:
            self.workers.poisoner = poisoner

    def compute(self, params: np.ndarray, round_: int) -> tuple[np.ndarray, float]:
        m, loss = self.workers.step(self.rows, torch.from_numpy(params), round_)
        return m[0].detach().numpy(), float(loss[0])  # m is a new tensor each round

    def state_dict(self) -> dict[str, Any]:
        return self.workers.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.workers.load_state_dict(state)


class ForgerCore:
    """A gradient-attack Byzantine worker: row ``index`` of the adversary's (f, d) matrix."""

    def __init__(self, adversary: Adversary, index: int) -> None:
        self.adversary = adversary
        self.index = index

    def forge(self, honest: np.ndarray, round_: int) -> np.ndarray:
        return self.adversary.forge(torch.from_numpy(honest))[self.index].numpy().copy()

    def state_dict(self) -> dict[str, Any]:
        return self.adversary.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.adversary.load_state_dict(state)


class ExperimentWorkload:
    """Driver side of a config's run: the server step, the evaluation and the cores."""

    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        cfg = setup.config
        self.n_honest = setup.h
        self.f = setup.f
        self.n_byzantine = setup.f if setup.attack is not None else 0
        self.data_attack = bool(setup.data_attack)
        self.dim = setup.dim
        self.rounds = cfg.rounds
        self.eval_every = cfg.eval_every
        self.aggregator = setup.aggregator
        self.num_classes = setup.num_classes
        self.server = setup.make_server()
        self._adversary = setup.make_adversary()

    @property
    def params(self) -> torch.Tensor:
        return self.server.params

    def honest_core(self, worker: int) -> WorkerCore:
        return WorkerCore(self.setup.make_workers([worker]), self.setup.params0.cpu())

    def byzantine_core(self, index: int) -> WorkerCore | ForgerCore:
        if self.data_attack:
            return self.honest_core(self.n_honest + index)
        return ForgerCore(self._adversary, index)

    def server_step(self, vectors: torch.Tensor, round_: int) -> torch.Tensor:
        return self.server.step(vectors.to(self.setup.device), round_)

    def lr_at(self, round_: int) -> float:
        return self.server.lr_at(round_)

    def evaluate(self, params: torch.Tensor) -> dict[str, Any]:
        out: dict[str, Any] = {
            "test_accuracy": self.setup.evaluate(params),
            "val_accuracy": self.setup.evaluate_validation(params),
        }
        if not bool(torch.isfinite(params).all()):
            out["diverged"] = True
        return out

    def server_state(self) -> dict[str, Any]:
        return self.server.state_dict()

    def load_server_state(self, state: dict[str, Any]) -> None:
        self.server.load_state_dict(state)
