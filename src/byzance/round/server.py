"""The server step, once for every engine: robust aggregation, then the optimizer step.

Round t (1-based) of T, with received vectors ``x`` (n, d) and parameters ``w``::

    a   = F(x)                      # the configured robust pipeline
    u   = a + wd * w                # weight decay added at the server
    v   = mu * v + u                # optional server (heavy-ball) momentum, mu = 0: v = u
    w  <- w - lr(t) * v

Schedules ``lr(t) = lr * s(t)``: ``constant`` s = 1; ``step`` s = 0.1 from 50% of the rounds
and 0.01 from 75%; ``cosine`` s = (1 + cos(pi (t - 1) / T)) / 2; ``inverse_sqrt`` s = 1/sqrt(t).

A rule that keeps state across rounds (centered clipping's centre, the previous aggregate as in
Karimireddy et al. 2021; bucketing's generator) gets it explicitly: ``rule_state`` is created by
``aggregator.init_state()``, passed to ``aggregator.step(x, state)``, replaced by what it
returns, and saved in ``state_dict``. A decentralised node holds one ``RuleState`` per rule.
"""

from __future__ import annotations

import math
from typing import Any

import torch


def lr_at(schedule: str, lr: float, round_: int, rounds: int) -> float:
    """Learning rate at 1-based round ``round_`` of ``rounds``."""
    if schedule == "constant":
        return lr
    if schedule == "step":
        if round_ > 0.75 * rounds:
            return lr * 0.01
        if round_ > 0.5 * rounds:
            return lr * 0.1
        return lr
    if schedule == "cosine":
        return lr * 0.5 * (1.0 + math.cos(math.pi * (round_ - 1) / rounds))
    if schedule == "inverse_sqrt":
        return lr / math.sqrt(round_)
    raise ValueError(
        f"lr_schedule: expected one of constant, step, cosine, inverse_sqrt, got {schedule!r}"
    )


class Server:
    """Holds the flat parameters; ``step(vectors, round)`` aggregates and updates them."""

    def __init__(
        self,
        params: torch.Tensor,
        aggregator: Any,
        *,
        lr: float,
        schedule: str = "constant",
        rounds: int = 1,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
    ) -> None:
        self.params = params
        self.aggregator = aggregator
        self.lr = lr
        self.schedule = schedule
        self.rounds = rounds
        self.weight_decay = weight_decay
        self.momentum = momentum
        self._velocity: torch.Tensor | None = None
        self.rule = RuleState(aggregator)
        lr_at(schedule, lr, 1, rounds)  # validates the schedule name

    def lr_at(self, round_: int) -> float:
        return lr_at(self.schedule, self.lr, round_, self.rounds)

    def aggregate(self, vectors: torch.Tensor) -> torch.Tensor:
        """The robust aggregate of this round (the rule's state goes on to the next)."""
        return self.rule.aggregate(vectors)

    def apply(self, aggregate: torch.Tensor, round_: int) -> None:
        """The optimizer step on an already aggregated vector (in place on ``params``)."""
        update = aggregate
        if self.weight_decay:
            update = update.add(self.params, alpha=self.weight_decay)
        if self.momentum:
            if self._velocity is None:
                self._velocity = update.clone()
            else:
                self._velocity.mul_(self.momentum).add_(update)
            update = self._velocity
        self.params.add_(update, alpha=-self.lr_at(round_))

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint needs to resume: parameters, server momentum and the rule's
        state (copies)."""
        return {
            "params": _copy(self.params),
            "velocity": _copy(self._velocity),
            "rule": self.rule.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict`` (``params`` in place)."""
        self.params.copy_(state["params"])
        self._velocity = _copy(state.get("velocity"))
        if "rule" in state:
            self.rule.load_state_dict(state["rule"])

    def step(self, vectors: torch.Tensor, round_: int) -> torch.Tensor:
        """Aggregate ``vectors`` (n, d), update the parameters, return the aggregate."""
        a = self.aggregate(vectors)
        self.apply(a, round_)
        return a


def _copy(t: Any) -> Any:
    if isinstance(t, torch.Tensor):
        return t.detach().clone()
    if isinstance(t, (tuple, list)):
        return type(t)(_copy(v) for v in t)
    if isinstance(t, dict):
        return {k: _copy(v) for k, v in t.items()}
    return t


class RuleState:
    """An aggregation pipeline with its state across rounds: ``aggregate(x)`` runs
    ``rule.step(x, state)`` and keeps the state it returns (stateless rules: None)."""

    def __init__(self, rule: Any) -> None:
        self.rule = rule
        init = getattr(rule, "init_state", None)
        self.state = init() if init is not None else None
        self._stateful = hasattr(rule, "step")

    def aggregate(self, x: torch.Tensor) -> torch.Tensor:
        if not self._stateful:  # any object with ``aggregate(x)``
            return self.rule.aggregate(x)
        out, self.state = self.rule.step(x, self.state)
        return out

    def state_dict(self) -> Any:
        return _copy(self.state)

    def load_state_dict(self, state: Any) -> None:
        self.state = _copy(state)
