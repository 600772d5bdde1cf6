r"""The decentralised protocol in the simulator, every honest node at once
(``protocol = "decentralized"`` on the ``sim`` engine).

The protocol is the one the Ray engine runs (``byzance.engines.ray.decentralized``, whose
docstring has the algorithm): ``h`` honest nodes with their own models :math:`\theta_i` (rows
of an (h, d) matrix) and momenta; round t: (1) momenta at each node's own model (one pass
while all models are equal, else the per-model batched gradients); (2) node i aggregates
:math:`[m_i, m_{j \ne i} \text{ by id}, b_{1 \to i}, \dots, b_{f \to i}]` with ``aggregator``
(its own rule state), Byzantine rows re-anchored at :math:`m_i` if ``equivocate``
(``Adversary.for_recipients``); (3) the server step of ``byzance.round`` on the (h, d) matrix
(lr schedule, weight decay; no server momentum); (4) the model exchange, the same with
``model_aggregator``.

Vectorised over nodes: the nodes' inputs are the h honest rows and the h f Byzantine rows sent
(``rows``, with each node's ``index``), and the h aggregations one computation where the rule
allows (``round.batched_rules``: coordinate-wise rules in one kernel call, MDA from one Gram
matrix); other rules (chains, stateful rules) loop over the nodes' rule states.

**Averaging agreement** (El Mhamdi, Farhadkhani, Guerraoui, Guirguis, Hoang, Rouault,
"Collaborative Learning in the Jungle", NeurIPS 2021): with ``agreement = "mda"`` or
``"trimmed_mean"`` step (4) is replaced by ``agreement_rounds(t)`` rounds of averaging
agreement (``byzance.round.agreement.averaging_agreement``): each node takes n - f vectors (the
f Byzantine ones and its window of h - f honest ones) and averages them robustly. The
trimmed-mean variant assumes reliable broadcast: every honest node receives the same vector
from a given Byzantine node (no equivocation in that step, whatever ``equivocate`` says).

Metrics as on Ray: mean / min / max test accuracy of the honest nodes, ``spread`` (their
diameter), ``agg_distance`` NaN, ``missing_workers`` empty (nobody is late in a simulation).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from byzance.round.adversary import Adversary
from byzance.round.agreement import agreement_rounds, averaging_agreement, diameter
from byzance.round.batched_rules import PerRecipient
from byzance.round.record import Record, RunResult, metrics_record
from byzance.round.setup import Setup
from byzance.sim.byzsgd import momenta_at
from byzance.sim.loop import run_rounds


class DecentralizedSimulation(Setup):
    """Every honest node of the decentralised protocol at once (see the module docstring)."""

    def __init__(self, config: Any, *, model: Any = None, dataset: Any = None) -> None:
        super().__init__(config, model=model, dataset=dataset)
        # validated by Setup: no server momentum, gradient attacks only (sim.config_checks)
        cfg, h = self.config, self.h
        self.nodes = self.make_server(self.params0.expand(h, -1).clone())
        self.params = self.nodes.params  # (h, d): node i's model is row i
        self.group = self.make_workers()
        self.adversary = self.make_adversary()
        self.computing = torch.arange(h, device=self.device)
        # node i's honest inputs: itself first, then the others by id
        self.order = torch.tensor(
            [[i, *(j for j in range(h) if j != i)] for i in range(h)], device=self.device
        )
        self.grad_rules = PerRecipient(self.aggregator, h)
        self.model_rules = PerRecipient(cfg.build_model_aggregator(), h)
        self.rounds_run = 0
        self.diverged = False

    def sent_to_nodes(self, honest: torch.Tensor, equivocate: bool) -> torch.Tensor | None:
        """(h, f, d): the Byzantine rows each node receives for these honest vectors (one
        forge of the colluding attack; None without a gradient attack)."""
        if not self.gradient_attack:
            return None
        forged = self.adversary.forge(honest)
        return Adversary.for_recipients(forged, honest, honest, equivocate).transpose(0, 1)

    def inputs(self, honest: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(rows, index)``: the distinct rows (honest, then every Byzantine row sent) and
        node i's inputs ``rows[index[i]]``: its own vector, the others by id, its Byzantine
        rows."""
        byz = self.sent_to_nodes(honest, self.config.equivocate)
        if byz is None:
            return honest, self.order
        h, f = byz.shape[0], byz.shape[1]
        own = h + torch.arange(h * f, device=self.device).reshape(h, f)
        return torch.cat([honest, byz.reshape(h * f, -1)]), torch.cat([self.order, own], 1)

    def exchange_models(self, round_: int) -> None:
        """Step (4): the model exchange, or the averaging agreement."""
        cfg = self.config
        theta = self.params
        if cfg.agreement == "none":
            theta.copy_(self.model_rules.aggregate_indexed(*self.inputs(theta)))
            return
        equivocate = cfg.equivocate and cfg.agreement == "mda"  # trimmed mean: reliable bcast

        def forge(cur: torch.Tensor) -> torch.Tensor | None:
            return self.sent_to_nodes(cur, equivocate)

        rounds = agreement_rounds(round_, cfg.agreement_rounds)
        f = self.f if self.gradient_attack else 0
        theta.copy_(averaging_agreement(theta, forge, cfg.agreement, f, rounds))

    def round(self, round_: int) -> dict[str, Any]:
        theta = self.params
        same = self.h == 1 or bool((theta == theta[:1]).all())
        honest, losses = momenta_at(self.group, self.computing, theta[0] if same else theta, round_)
        self.nodes.apply(self.grad_rules.aggregate_indexed(*self.inputs(honest)), round_)
        self.exchange_models(round_)
        self.rounds_run += 1
        return {"loss": losses.mean(), "finite": bool(torch.isfinite(theta).all())}

    def metrics(self, round_: int, loss: Any, elapsed: float) -> Record:
        accs = [self.evaluate(theta) for theta in self.params]
        vals = [self.evaluate_validation(theta) for theta in self.params]
        return metrics_record(
            round_,
            train_loss=loss,
            test_accuracy=sum(accs) / len(accs),
            val_accuracy=None if vals[0] is None else sum(vals) / len(vals),
            agg_distance=math.nan,
            lr=self.nodes.lr_at(round_),
            time=elapsed,
            test_accuracy_min=min(accs),
            test_accuracy_max=max(accs),
            spread=diameter(self.params),
            missing_workers=[],
        )

    def run(
        self, *, on_metrics: Callable[[Record], None] | None = None, progress: bool = False
    ) -> RunResult:
        """Train for ``config.rounds`` rounds; records every ``eval_every`` and at the end."""
        cfg = self.config
        history, seconds, diverged = run_rounds(
            cfg,
            self.round,
            lambda r, out, seconds: self.metrics(r, out["loss"], seconds),
            on_metrics=on_metrics,
            progress=progress,
        )
        self.diverged = self.diverged or diverged
        loops = self.grad_rules.loops + self.model_rules.loops
        timings = {"rounds": float(self.rounds_run), "node_loops": float(loops)}
        return RunResult.from_history(
            cfg,
            history,
            seconds,
            timings,
            diverged=self.diverged,
            params=self.params.detach().cpu().clone(),
        )
