"""The simulator's experiment (``byzance.sim``) as a Ray ``Workload``: one core per worker.

The driver builds a ``Simulation`` (data, model, server pipeline, attack, evaluation). Each
worker actor receives only its own shard, a copy of the model and the run's constants, and
computes exactly what ``Simulation.worker_gradients`` + ``Simulation.momentum`` compute for
its row: batch ``j`` of worker ``w`` at (round t, local step s) is example
``shard_w[hash(seed, w, t, s, j) mod |shard_w|]`` (the simulator's counter-based sampling),
gradient by ``FlatModel.batched_grad`` on a batch of one worker, momentum
``m <- m + (1 - beta)(g - m)`` with ``m_0 = 0``. With the same seed a synchronous Ray run
(q = n) therefore reproduces the simulator's trajectory up to float rounding (the simulator
vmaps over all workers at once).
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

import numpy as np
import torch

from byzance.sim.simulation import Simulation
from byzance.sim.workers import FlatModel, local_positions, poison_seed


class SimWorkerCore:
    """Worker ``worker`` of a ``Simulation``: its shard, the model, momentum (actor side)."""

    def __init__(self, sim: Simulation, worker: int) -> None:
        cfg = sim.config
        size = int(sim.shards.sizes[worker])
        index = sim.shards.index[worker, :size].cpu()
        self.worker = worker
        self.x = sim.x_train.cpu()[index].contiguous()
        self.y = sim.y_train.cpu()[index].contiguous()
        self.seed = cfg.seed
        self.batch_size = cfg.batch_size
        self.local_steps = cfg.local_steps
        self.beta = cfg.momentum
        self.lr_schedule = (cfg.lr_schedule, cfg.lr, cfg.rounds)
        self.num_classes = sim.num_classes
        self.module = copy.deepcopy(sim.flat.module).cpu()  # workers compute on CPU
        self.attack = sim.attack if (worker >= sim.h and sim.data_attack) else None
        self.poison_takes_params = self.attack is not None and (
            "model_params" in inspect.signature(self.attack.poison).parameters
        )
        self.momentum: torch.Tensor | None = None
        self._flat: FlatModel | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_flat"] = None  # rebuilt in the actor (holds vmapped closures)
        state["_grad"] = None
        return state

    def _fns(self) -> tuple[Any, Any]:
        if self._flat is None:
            self._flat = FlatModel(self.module)
            self._grad = (
                self._flat.batched_grad(shared_params=True),
                self._flat.batched_grad(shared_params=False),
            )
        return self._grad

    def warmup(self) -> None:
        """Build the model functions and run one gradient (no state change)."""
        grad_shared, _ = self._fns()
        assert self._flat is not None
        theta = self._flat.flatten()
        self._params = theta
        attack, self.attack = self.attack, None
        try:
            grad_shared(theta, *self._batch(0, 0))
        finally:
            self.attack = attack

    def _batch(self, round_: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        worker = torch.tensor([self.worker], dtype=torch.int64)
        size = torch.tensor([self.x.shape[0]])
        local = local_positions(self.seed, worker, round_, step, self.batch_size, size)
        xs, ys = self.x[local], self.y[local]  # (1, B, ...)
        if self.attack is not None:
            s = poison_seed(self.seed, self.worker, round_, step)
            kwargs: dict[str, Any] = {"generator": torch.Generator().manual_seed(s)}
            if self.poison_takes_params:  # the model's parameter tensors, like the simulator
                assert self._flat is not None
                kwargs["model_params"] = tuple(self._flat.unflatten(self._params).values())
            px, py = self.attack.poison(xs[0], ys[0], self.num_classes, **kwargs)
            xs, ys = px[None], py[None]
        return xs, ys

    def compute(self, params: np.ndarray, round_: int) -> tuple[np.ndarray, float]:
        from byzance.sim.server import lr_at

        theta = torch.from_numpy(params)
        self._params = theta
        grad_shared, grad_local = self._fns()
        if self.local_steps == 1:
            g, loss = grad_shared(theta, *self._batch(round_, 0))
        else:
            lr = lr_at(*self.lr_schedule[:2], round_, self.lr_schedule[2])
            local = theta.expand(1, -1).clone()
            loss = torch.zeros(1)
            for step in range(self.local_steps):
                gl, step_loss = grad_local(local, *self._batch(round_, step))
                local.sub_(gl, alpha=lr)
                loss += step_loss
            g, loss = (theta - local).div_(lr), loss / self.local_steps
        if self.momentum is None:
            m = g * (1.0 - self.beta)
        else:
            m = torch.lerp(self.momentum, g, 1.0 - self.beta)
        self.momentum = m
        return m[0].detach().numpy(), float(loss[0])  # m is a new tensor each round

    def state_dict(self) -> dict[str, Any]:
        return {"momentum": None if self.momentum is None else self.momentum.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        m = state["momentum"]
        self.momentum = None if m is None else m.clone()


class SimForger:
    """A gradient-attack Byzantine worker: row ``index`` of ``attack.forge(honest, f)``.

    The f Byzantine actors hold copies of the same attack, and the global torch RNG of each is
    seeded with ``seed + 1`` like the simulator's, so they forge the same (f, d) matrix
    (collusion) as the simulator would from the same honest vectors.
    """

    def __init__(self, attack: Any, index: int, f: int, seed: int) -> None:
        self.attack = attack
        self.index = index
        self.f = f
        self.seed = seed
        self.rng: torch.Tensor | None = None

    def forge(self, honest: np.ndarray, round_: int) -> np.ndarray:
        x = torch.from_numpy(honest)
        with torch.random.fork_rng(devices=[]):
            if self.rng is None:
                torch.manual_seed(self.seed + 1)
            else:
                torch.set_rng_state(self.rng)
            forge = getattr(self.attack, "forge", None)
            byz = forge(x, self.f) if forge is not None else self.attack(x, self.f)
            self.rng = torch.get_rng_state()
        return byz[self.index].to(x.dtype).numpy().copy()

    def state_dict(self) -> dict[str, Any]:
        return {"attack": self.attack, "rng": self.rng}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.attack, self.rng = state["attack"], state["rng"]


class SimWorkload:
    """Driver side: the ``Simulation``'s server, evaluation and per-worker cores."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        cfg = sim.config
        self.n_honest = sim.h
        self.f = sim.f
        self.n_byzantine = sim.f if sim.attack is not None else 0
        self.data_attack = bool(sim.data_attack)
        self.dim = sim.dim
        self.rounds = cfg.rounds
        self.eval_every = cfg.eval_every
        self.aggregator = sim.aggregator
        self.num_classes = sim.num_classes

    @property
    def params(self) -> torch.Tensor:
        return self.sim.params

    def honest_core(self, worker: int) -> SimWorkerCore:
        return SimWorkerCore(self.sim, worker)

    def byzantine_core(self, index: int) -> SimWorkerCore | SimForger:
        if self.data_attack:
            return SimWorkerCore(self.sim, self.n_honest + index)
        return SimForger(self.sim.attack, index, self.n_byzantine, self.sim.config.seed)

    def server_step(self, vectors: torch.Tensor, round_: int) -> torch.Tensor:
        return self.sim.server_step(vectors.to(self.sim.device), round_)

    def lr_at(self, round_: int) -> float:
        return self.sim.server.lr_at(round_)

    def evaluate(self, params: torch.Tensor) -> dict[str, Any]:
        if not bool(torch.isfinite(params).all()):
            chance = 1.0 / self.num_classes
            return {"test_accuracy": chance, "val_accuracy": None, "diverged": True}
        return {
            "test_accuracy": self.sim.evaluate(params),
            "val_accuracy": self.sim.evaluate_validation(params),
        }

    def server_state(self) -> dict[str, Any]:
        return self.sim.server.state_dict()

    def load_server_state(self, state: dict[str, Any]) -> None:
        self.sim.server.load_state_dict(state)
