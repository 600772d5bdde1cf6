"""What the Ray engines run: a *workload* split into a driver part and per-worker *cores*.

A ``Workload`` lives on the driver (the server): initial parameters, the optimizer step, the
evaluation, and it builds one picklable core per worker, shipped once to that worker's actor.

* ``WorkerCore.compute(params, round) -> (vector, loss)``: an honest worker (or a
  data-poisoning Byzantine worker) computes its vector (e.g. its momentum) at ``params``.
* ``ForgerCore.forge(honest, round) -> (k, d)``: a gradient-attack Byzantine worker forges its
  vectors from the honest vectors of the round (omniscient adversary).

``SyntheticWorkload`` is a quadratic problem with a tunable cost per gradient, used by the
benchmark and by tests that must not depend on datasets: worker ``i`` has the loss
``0.5 ||w - c_i||^2`` and sends ``(w - c_i) + sigma * xi`` (``xi`` drawn from a counter-based
generator of (seed, worker, round)), with worker momentum ``m <- beta m + (1 - beta) g``.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch

from byzance.round.workers import momentum_update


class WorkerCore(Protocol):
    """Per-worker computation, run inside the worker's actor (state: e.g. momentum)."""

    def compute(self, params: np.ndarray, round_: int) -> tuple[np.ndarray, float]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class ForgerCore(Protocol):
    """A gradient-attack Byzantine worker: forges vectors from the honest ones."""

    def forge(self, honest: np.ndarray, round_: int) -> np.ndarray: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Workload(Protocol):
    """Driver side of an experiment (see the module docstring)."""

    n_honest: int
    #: Byzantine actors (0 when there is no attack)
    n_byzantine: int
    #: True when Byzantine workers poison data (they compute like honest workers)
    data_attack: bool
    dim: int
    rounds: int
    eval_every: int
    aggregator: Any

    #: the current parameters (updated in place or replaced by ``server_step``)
    params: torch.Tensor

    def honest_core(self, worker: int) -> WorkerCore: ...

    def byzantine_core(self, index: int) -> WorkerCore | ForgerCore: ...

    def server_step(self, vectors: torch.Tensor, round_: int) -> torch.Tensor:
        """Aggregate ``vectors`` (n, d), update ``params``, return the aggregate."""
        ...

    def lr_at(self, round_: int) -> float: ...

    def evaluate(self, params: torch.Tensor) -> dict[str, float]: ...

    def server_state(self) -> dict[str, Any]: ...

    def load_server_state(self, state: dict[str, Any]) -> None: ...


def _noise(seed: int, worker: int, round_: int, dim: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed((seed * 1_000_003 + worker) * 1_000_033 + round_)
    return torch.randn(dim, generator=gen)


class SyntheticCore:
    """Worker ``i`` of ``SyntheticWorkload``; ``work`` extra O(d) passes emulate compute."""

    def __init__(
        self, target: torch.Tensor, worker: int, seed: int, sigma: float, beta: float, work: int
    ) -> None:
        self.target = target
        self.worker = worker
        self.seed = seed
        self.sigma = sigma
        self.beta = beta
        self.work = work
        self.momentum = torch.zeros_like(target)
        self._diff: torch.Tensor | None = None

    def gradient(self, params: torch.Tensor, round_: int) -> tuple[torch.Tensor, float]:
        if self._diff is None:
            self._diff = torch.empty_like(self.target)
        diff = torch.sub(params, self.target, out=self._diff)  # no allocation per round
        for _ in range(self.work):  # emulated compute cost, result unchanged
            diff = diff * 1.0
        loss = 0.5 * float(diff.dot(diff)) / diff.numel()
        if self.sigma:
            diff = diff + self.sigma * _noise(self.seed, self.worker, round_, diff.numel())
        return diff, loss

    def compute(self, params: np.ndarray, round_: int) -> tuple[np.ndarray, float]:
        g, loss = self.gradient(torch.from_numpy(params), round_)
        momentum_update(self.momentum, g, self.beta)  # the worker step's momentum
        return self.momentum.numpy(), loss  # Ray copies the result out when it returns

    def state_dict(self) -> dict[str, Any]:
        return {"momentum": self.momentum.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.momentum = state["momentum"].clone()


class AttackForger:
    """A Byzantine actor driven by a gradient ``Attack``: sends row ``index`` of ``attack(h, f)``.

    All Byzantine actors hold a copy of the same attack and see the same honest vectors, so
    they compute the same (f, d) matrix (the colluding adversary) and each sends its own row.
    """

    def __init__(self, attack: Any, index: int, f: int) -> None:
        self.attack = attack
        self.index = index
        self.f = f

    def forge(self, honest: np.ndarray, round_: int) -> np.ndarray:
        x = torch.from_numpy(honest)
        return self.attack.forge(x, self.f)[self.index].numpy().copy()

    def state_dict(self) -> dict[str, Any]:
        """The attack's state (tensors and plain data: a checkpoint holds no objects)."""
        return {"attack": self.attack.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.attack.load_state_dict(state["attack"])


class SyntheticWorkload:
    """Quadratic workload: ``n_honest`` honest workers, ``f`` forging Byzantine workers.

    The server does plain SGD ``w <- w - lr * F(x)``; ``evaluate`` reports the honest loss
    ``mean_i 0.5 ||w - c_i||^2 / d`` as ``train_loss`` and ``test_accuracy = nan``.
    """

    data_attack = False

    def __init__(
        self,
        dim: int,
        n_honest: int,
        f: int,
        aggregator: Any,
        attack: Any = None,
        *,
        rounds: int = 10,
        eval_every: int = 5,
        lr: float = 0.1,
        beta: float = 0.9,
        sigma: float = 0.1,
        work: int = 0,
        seed: int = 0,
    ) -> None:
        self.dim = dim
        self.n_honest = n_honest
        self.f = f
        self.n_byzantine = f if attack is not None else 0
        self.aggregator = aggregator
        self.attack = attack
        self.rounds = rounds
        self.eval_every = eval_every
        self.lr = lr
        self.beta = beta
        self.sigma = sigma
        self.work = work
        self.seed = seed
        gen = torch.Generator().manual_seed(seed)
        center = torch.randn(dim, generator=gen)
        self.targets = center + 0.1 * torch.randn(n_honest, dim, generator=gen)
        self.params = torch.zeros(dim)

    def honest_core(self, worker: int) -> SyntheticCore:
        return SyntheticCore(
            self.targets[worker].clone(), worker, self.seed, self.sigma, self.beta, self.work
        )

    def byzantine_core(self, index: int) -> AttackForger:
        return AttackForger(self.attack, index, self.n_byzantine)

    def lr_at(self, round_: int) -> float:
        return self.lr

    def server_step(self, vectors: torch.Tensor, round_: int) -> torch.Tensor:
        a = self.aggregator.aggregate(vectors)
        self.params = self.params - self.lr * a
        return a

    def evaluate(self, params: torch.Tensor) -> dict[str, float]:
        diff = params[None, :] - self.targets
        return {
            "train_loss": float(0.5 * (diff * diff).sum(dim=1).mean() / self.dim),
            "test_accuracy": float("nan"),
        }

    def server_state(self) -> dict[str, Any]:
        return {"params": self.params.clone()}

    def load_server_state(self, state: dict[str, Any]) -> None:
        self.params = state["params"].clone()


def run_in_process(workload: Workload, rounds: int | None = None) -> list[torch.Tensor]:
    """Reference synchronous loop in one process (no Ray): the parameters after each round.

    Round t: every honest core computes at the current parameters, the forgers forge from all
    honest vectors, the server steps on the vectors ordered by worker id (honest first).
    """
    honest = [workload.honest_core(w) for w in range(workload.n_honest)]
    byz = [workload.byzantine_core(j) for j in range(workload.n_byzantine)]
    trajectory = []
    for t in range(1, (rounds or workload.rounds) + 1):
        params = workload.params.detach().cpu().contiguous().numpy()
        vecs = [c.compute(params, t)[0] for c in honest]
        if workload.data_attack:
            vecs += [c.compute(params, t)[0] for c in byz]  # type: ignore[union-attr]
        else:
            stacked = np.stack(vecs)
            vecs += [c.forge(stacked, t) for c in byz]  # type: ignore[union-attr]
        workload.server_step(torch.from_numpy(np.stack(vecs)), t)
        trajectory.append(workload.params.detach().clone())
    return trajectory
