"""The honest worker step, once for every engine: batch, poisoning, gradient or local steps,
momentum.

``Workers`` computes the vectors of any set of workers together (all of them in the
simulator, one in a Ray actor or a decentralised node). Round t (1-based), worker w:

1. batch: ``batch_size`` examples of w's shard drawn by the counter hash of
   (seed, w, t, local step) (``sampling``), the same whoever is computed alongside;
2. a data-poisoning Byzantine worker (w >= ``n_honest``) poisons its batch with its own
   generator, seeded by ``poison_seed(seed, w, t, step)``;
3. K = ``local_steps`` = 1: the stochastic gradient at ``params``; K > 1: K SGD steps with the
   round's learning rate from ``params``, and the pseudo-gradient ``(params - w_K) / lr``;
4. worker momentum (El Mhamdi, Guerraoui, Rouault, ICLR 2021, "Distributed momentum for
   Byzantine-resilient SGD"): ``m_t = beta m_{t-1} + (1 - beta) g_t`` with ``m_0 = 0``;
   the worker sends ``m_t``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch

from byzance.round.flat_model import FlatModel
from byzance.round.sampling import Shards, local_positions, poison_seed


def momentum_update(m: torch.Tensor, g: torch.Tensor, beta: float) -> torch.Tensor:
    """Worker momentum in place: ``m <- beta m + (1 - beta) g`` (returns ``m``)."""
    if beta == 0.0:
        return m.copy_(g)
    return m.mul_(beta).add_(g, alpha=1.0 - beta)


class Workers:
    """The worker step of the rows of ``shards`` (row r is worker ``ids[r]``).

    ``x``, ``y``: the examples the shards index into; ``lr_at(t)``: the learning rate of
    round t (local steps); ``poisoner``: a ``DataAttack`` applied to the batches of workers
    ``>= n_honest`` (None: nobody poisons). The momenta of the last ``step`` are kept in
    ``momenta`` (the worker state a checkpoint saves).
    """

    def __init__(
        self,
        flat: FlatModel,
        x: torch.Tensor,
        y: torch.Tensor,
        shards: Shards,
        ids: torch.Tensor,
        *,
        seed: int,
        batch_size: int,
        local_steps: int,
        beta: float,
        lr_at: Callable[[int], float],
        num_classes: int,
        n_honest: int,
        poisoner: Any = None,
        estimator: Any = None,
        crash: Any = None,
    ) -> None:
        self.flat = flat
        self.x, self.y, self.shards = x, y, shards
        self.ids = ids.to(torch.int64)
        self.seed, self.batch_size, self.local_steps = seed, batch_size, local_steps
        self.beta, self.lr_at = beta, lr_at
        self.num_classes, self.n_honest = num_classes, n_honest
        self.poisoner = poisoner
        self.estimator = estimator  # zero-order (byzance.round.zero_order), None: backprop
        #: the fault-tolerance regulariser (byzance.round.crash_training), None: off
        self.crash = crash
        #: gradient inversion (byzance.attacks.gradient_inversion): the honest gradients of the
        #: round first, then the Byzantine rows' poisoned batches from them (``_inverted``)
        self.inverts = bool(getattr(poisoner, "needs_honest_gradients", False))
        self._input_range: tuple[float, float] | None = None
        self.takes_params = poisoner is not None and (
            "model_params" in inspect.signature(poisoner.poison).parameters
        )
        self.momenta: torch.Tensor | None = None  # None = zeros (round 1)
        self._params: torch.Tensor | None = None
        self._fns: tuple[Callable, Callable] | None = None

    def __getstate__(self) -> dict[str, Any]:  # shipped to actors: closures are rebuilt there
        state = dict(self.__dict__)
        state["_fns"] = None
        return state

    def grad_fns(self) -> tuple[Callable, Callable]:
        """(shared-parameter gradients, per-worker-parameter gradients), built once."""
        if self._fns is None:
            self._fns = (
                self.flat.batched_grad(shared_params=True),
                self.flat.batched_grad(shared_params=False),
            )
        return self._fns

    # ------------------------------------------------------------------ the steps
    def batch(self, rows: torch.Tensor, round_: int, step: int) -> tuple[torch.Tensor, ...]:
        """The (k, B, ...) examples and (k, B) labels of ``rows`` at (round, local step)."""
        rows = rows.to(self.shards.index.device)
        workers = self.ids.to(rows.device)[rows]
        local = local_positions(
            self.seed, workers, round_, step, self.batch_size, self.shards.sizes[rows]
        )
        idx = self.shards.index[rows[:, None], local]
        xs, ys = self.x[idx], self.y[idx]
        poisons = self.poisoner is not None and not self.inverts
        if poisons and bool((workers >= self.n_honest).any()):
            xs, ys = self._poison(workers, xs, ys, round_, step)
        return xs, ys

    def _poison(self, workers, xs, ys, round_, step):
        xs, ys = xs.clone(), ys.clone()
        for r in (workers >= self.n_honest).nonzero().flatten().tolist():
            w = int(workers[r])  # the Byzantine workers only; each with its own generator
            gen = torch.Generator(device=xs.device).manual_seed(
                poison_seed(self.seed, w, round_, step)
            )
            kwargs: dict[str, Any] = {"generator": gen}
            if self.takes_params:  # e.g. budgeted label flipping: (W, b) of logreg
                assert self._params is not None
                kwargs["model_params"] = tuple(self.flat.unflatten(self._params).values())
            xs[r], ys[r] = self.poisoner.poison(xs[r], ys[r], self.num_classes, **kwargs)
        return xs, ys

    def gradients(
        self, rows: torch.Tensor, params: torch.Tensor, round_: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw vectors (k, d) and mean batch losses (k,) of ``rows`` at ``params``: the
        gradient (K = 1) or the pseudo-gradient of K local steps (loss: mean over steps).
        With ``crash`` (the fault-tolerance regulariser, ``byzance.round.crash_training``) the
        honest rows add ``lam grad R`` in a loop over them; off, nothing changes."""
        self._params = params
        if self.estimator is not None:  # FedZero: two loss values per direction, no backprop
            workers = self.ids.to(rows.device)[rows]
            xs, ys = self.batch(rows, round_, 0)
            est = self.estimator
            return est.estimate(self.flat.loss, params, workers, round_, self.seed, xs, ys)
        grad_shared, grad_local = self.grad_fns()
        if self.crash is not None:  # + lam grad R on the honest rows: a loop over them
            grad_shared, grad_local = self.crash.wrap(self, rows, grad_shared, grad_local)
        if self.inverts:
            return self._inverted(rows, params, round_)
        if self.local_steps == 1:
            return grad_shared(params, *self.batch(rows, round_, 0))
        lr = self.lr_at(round_)
        local = params.expand(rows.numel(), -1).clone()
        loss_sum = torch.zeros(rows.numel(), device=params.device)
        for step in range(self.local_steps):
            g, loss = grad_local(local, *self.batch(rows, round_, step))
            local.sub_(g, alpha=lr)
            loss_sum += loss
        return (params - local).div_(lr), loss_sum / self.local_steps

    def _inverted(
        self, rows: torch.Tensor, params: torch.Tensor, round_: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradient inversion: the honest rows' gradients, from which the poisoner optimises
        the Byzantine rows' poisoned examples (soft labels), then their gradients on them.
        ``rows`` must hold every honest worker (the simulator's group does)."""
        grad_shared = self.grad_fns()[0]
        byz = self.ids.to(rows.device)[rows] >= self.n_honest
        if not bool(byz.any()):
            return grad_shared(params, *self.batch(rows, round_, 0))
        g = params.new_empty(rows.numel(), params.numel())
        losses = params.new_empty(rows.numel())
        honest, honest_losses = grad_shared(params, *self.batch(rows[~byz], round_, 0))
        g[~byz], losses[~byz] = honest, honest_losses
        if self._input_range is None:  # the valid inputs: the range of the training inputs
            self._input_range = (float(self.x.min()), float(self.x.max()))
        xs, ys = self.batch(rows[byz], round_, 0)
        xs, soft = self.poisoner.invert(
            self.flat.loss, params, honest, xs, ys, self.num_classes,
            bounds=self._input_range, seed=poison_seed(self.seed, self.n_honest, round_, 0),
        )  # fmt: skip
        g[byz], losses[byz] = grad_shared(params, xs, soft)
        return g, losses

    def momentum(
        self, g: torch.Tensor, m: torch.Tensor | None, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``beta m + (1 - beta) g`` (``m=None``: m_0 = 0), new or written into ``out``."""
        beta = self.beta
        if m is None:
            return torch.mul(g, 1.0 - beta, out=out)
        if out is None:
            return torch.lerp(m, g, 1.0 - beta)
        if m.data_ptr() != out.data_ptr():  # e.g. momenta restored from a checkpoint
            out.copy_(m)
        return out.lerp_(g, 1.0 - beta)

    def step(
        self,
        rows: torch.Tensor,
        params: torch.Tensor,
        round_: int,
        out: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole worker step of all the rows (``rows`` must be every row of this group,
        in order, each round: the momenta are kept per row): ``(momenta (k, d), losses)``;
        the momenta are written into ``out`` when given."""
        g, losses = self.gradients(rows, params, round_)
        self.momenta = self.momentum(g, self.momenta, out=out)
        return self.momenta, losses

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {"momentum": None if self.momenta is None else self.momenta.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        m = state["momentum"]
        self.momenta = None if m is None else m.clone()
