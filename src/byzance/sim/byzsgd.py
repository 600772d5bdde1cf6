r"""ByzSGD in the simulator: replicated parameter servers, some Byzantine (``protocol = "byzsgd"``).

El Mhamdi, Guerraoui, Guirguis, Hoang, Rouault, "Genuinely Distributed Byzantine Machine
Learning", PODC 2020 (synchronous variant). ``n_servers`` = :math:`n_s` replicas of the
parameter server, ``f_servers`` = :math:`f_s` of them Byzantine, the :math:`s = n_s - f_s`
correct ones each holding a model :math:`\theta_j` (all from :math:`\theta_0`); ``n_honest +
f`` workers, f Byzantine. Round t:

1. **pull**: honest worker w takes the coordinate-wise median of :math:`q = n_s - f_s` replies:
   the :math:`f_s` Byzantine servers' (fastest) and :math:`n_s - 2 f_s` correct ones, the
   window ``w, w+1, ... (mod s)`` (``byzance.round.agreement``):
   :math:`x_w = \mathrm{med}(\theta_{w}, \dots, b_{1 \to w}, \dots)`;
2. **workers**: momentum :math:`m_w \leftarrow \beta m_w + (1 - \beta) g_w(x_w)` (the round's
   worker step, ``byzance.round.Workers``; one pass when every :math:`x_w` is the same);
   the f Byzantine workers forge :math:`a_k` from the honest momenta (``round.Adversary``);
   with ``equivocate`` they send correct server j the deviation with sign
   :math:`\sigma_j = (-1)^j`: :math:`\bar m + \sigma_j (a_k - \bar m)` (so servers receive
   mirrored attacks and drift apart; server 0 gets :math:`a_k`, as a trusted server would);
3. **servers**: correct server j aggregates its n received vectors with ``aggregator`` (its
   own rule state) and steps: :math:`\theta_j \leftarrow \theta_j - \gamma_t (F_j + \lambda
   \theta_j)` (the server step of ``byzance.round``, on the (s, d) matrix of models);
4. **Distributed Median Contraction**, every ``contraction_every`` = T rounds: correct server j
   replaces :math:`\theta_j` by the median of q replies (its own first, then its window, and
   the Byzantine ones).

Byzantine servers: ``server_attack`` is a catalog attack applied to the correct models (the
attack sees the s models as "honest vectors" and forges :math:`f_s` models); with
``equivocate`` recipient r (a worker, or a server at the contraction) gets it re-anchored at
its own view (a server: its own model; worker w: correct model ``w mod s``),
``Adversary.for_recipients``. ``"contraction"``: an attack aimed at the median contraction,
every Byzantine server sends recipient r its anchor pushed away from the correct models' centre,
:math:`a_r + z (a_r - \bar\theta)` (z = 2), pulling each server outward at every contraction.

Vectorised over servers: the honest momenta are the same for every server, so without
equivocation (or with one correct server, or no Byzantine worker) every correct server
aggregates the same matrix with the same state: one aggregation serves all. Otherwise the s
aggregations run batched on the h + s f distinct rows (``round.batched_rules.PerRecipient``:
coordinate-wise rules in one kernel call, MDA from one Gram matrix) or, for other rules, one
per server. Metrics: mean / min / max test accuracy of the correct
servers, ``spread`` (their diameter :math:`\max_{j,k} \|\theta_j - \theta_k\|` at the record),
``spread_max`` (the largest diameter since the last record, before contraction),
``server_accuracies`` (each correct server's). ``spreads``: every round's diameter.

With ``f_servers = 0`` and one server this is the trusted-server protocol (``Simulation``),
bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from byzance.round.adversary import Adversary
from byzance.round.agreement import diameter, median_of_replies
from byzance.round.batched_rules import PerRecipient
from byzance.round.record import Record, RunResult, agg_distance, metrics_record
from byzance.round.setup import Setup
from byzance.sim.loop import run_rounds

#: how far the ``"contraction"`` attack pushes a recipient's anchor from the correct centre
CONTRACTION_PUSH = 2.0


class ByzantineServers:
    """The f_s colluding Byzantine servers of a config: ``replies(theta, anchors)`` is what they
    send recipients whose views are the rows of ``anchors`` (see the module docstring); the
    catalog attack's randomness is carried in its ``Adversary`` (seeded ``seed + 7919``)."""

    def __init__(self, cfg: Any) -> None:
        self.fs, self.equivocate = cfg.f_servers, cfg.equivocate
        self.adversary: Adversary | None = None
        if self.fs > 0 and cfg.server_attack.split("(", 1)[0].strip() != "contraction":
            from byzance import aggregators, attacks

            attack = attacks.create(cfg.server_attack, aggregator=aggregators.create("median"))
            self.adversary = Adversary(attack, self.fs, cfg.seed + 7919, name=cfg.server_attack)

    def replies(self, theta: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor | None:
        """(r, f_s, d) for the correct models ``theta`` (s, d) and r recipients' ``anchors``."""
        if self.fs == 0:
            return None
        if not self.equivocate:
            anchors = theta[:1].expand(anchors.shape[0], -1)
        if self.adversary is None:  # "contraction": push each view outward
            pushed = anchors + CONTRACTION_PUSH * (anchors - theta.mean(dim=0))
            return pushed[:, None, :].expand(-1, self.fs, -1)
        forged = self.adversary.forge(theta)
        return Adversary.for_recipients(forged, theta, anchors, self.equivocate).transpose(0, 1)


def mirrored(honest: torch.Tensor, forged: torch.Tensor, s: int) -> torch.Tensor:
    """(s, f, d): the Byzantine workers' vectors to each of s correct servers when they
    equivocate: the attack's deviation from the honest mean with sign ``(-1)^j`` at server j."""
    sign = torch.ones(s, 1, 1, dtype=honest.dtype, device=honest.device)
    sign[1::2] = -1.0
    mean = honest.mean(dim=0)
    return mean + sign * (forged - mean)[None]


def momenta_at(
    group: Any, rows: torch.Tensor, x: torch.Tensor, round_: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The worker step of ``rows`` (every row of ``group``, in order) at ``x``: one model (d,)
    for all (one pass) or one per row (h, d) (per-model batched gradients); ``(momenta,
    losses)``, the momenta kept in ``group``."""
    if x.dim() == 1:
        return group.step(rows, x, round_)
    if group.local_steps == 1:
        g, losses = group.grad_fns()[1](x, *group.batch(rows, round_, 0))
    else:  # K local steps from each row's own model
        g, losses = group.gradients(rows, x, round_)
    group.momenta = group.momentum(g, group.momenta)
    return group.momenta, losses


class ByzSGD(Setup):
    """The ByzSGD protocol for all servers and workers at once (see the module docstring)."""

    def __init__(self, config: Any, *, model: Any = None, dataset: Any = None) -> None:
        super().__init__(config, model=model, dataset=dataset)
        cfg = self.config  # validated by Setup: gradient attacks only (round.agreement)
        self.s = cfg.n_servers - cfg.f_servers
        self.fs = cfg.f_servers
        self.take = cfg.n_servers - 2 * cfg.f_servers  # correct replies in a median of q
        self.servers = self.make_server(self.params0.expand(self.s, -1).clone())
        self.params = self.servers.params  # (s, d): correct server j's model is row j
        self.group = self.make_workers()
        self.adversary = self.make_adversary()
        self.computing = torch.arange(self.h, device=self.device)
        #: every correct server receives the same n vectors (one aggregation serves all)
        self.shared_inputs = not (cfg.equivocate and self.gradient_attack and self.s > 1)
        self.rules = PerRecipient(self.aggregator, 1 if self.shared_inputs else self.s)
        h, f, s = self.h, self.f, self.s  # server j: the honest rows, then its f Byzantine ones
        byz_rows = h + torch.arange(s * f, device=self.device).reshape(s, f)
        self.index = torch.cat([torch.arange(h, device=self.device).expand(s, h), byz_rows], 1)
        self.byzantine_servers = ByzantineServers(cfg)
        self.spreads: list[float] = []
        self.rounds_run = 0
        self.diverged = False

    # ------------------------------------------------------------------ Byzantine servers
    def server_replies(self, anchors: torch.Tensor) -> torch.Tensor | None:
        """(r, f_s, d): what the Byzantine servers send r recipients whose views are the rows
        of ``anchors`` (None without Byzantine servers)."""
        return self.byzantine_servers.replies(self.params, anchors)

    # ------------------------------------------------------------------ the steps
    def pull(self) -> torch.Tensor:
        """(h, d) models the honest workers compute at, or (d,) when they all pull the same."""
        theta = self.params
        if self.fs == 0:  # every worker hears every server: one median for all
            if self.s == 1 or bool((theta == theta[:1]).all()):
                return theta[0]
            return median_of_replies(theta, None, self.s)[0]
        anchors = theta[torch.arange(self.h, device=self.device) % self.s]
        x = median_of_replies(theta, self.server_replies(anchors), self.take)
        return x[0] if bool((x == x[:1]).all()) else x

    def worker_step(self, x: torch.Tensor, round_: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Honest momenta (h, d) and losses at the pulled models ``x`` ((d,) or (h, d))."""
        return momenta_at(self.group, self.computing, x, round_)

    def server_inputs(self, honest: torch.Tensor) -> torch.Tensor:
        """(n, d) vectors every correct server receives, or the distinct (h + s f, d) rows
        of which server j receives rows ``index[j]`` (its Byzantine rows differ)."""
        if not self.gradient_attack:
            return honest
        forged = self.adversary.forge(honest)
        if self.shared_inputs:
            return torch.cat([honest, forged])
        sent = mirrored(honest, forged, self.s)  # (s, f, d)
        return torch.cat([honest, sent.reshape(-1, self.dim)])

    def aggregate(self, vectors: torch.Tensor) -> torch.Tensor:
        """(d,) shared aggregate or (s, d) per-server aggregates."""
        if self.shared_inputs:
            return self.rules.states[0].aggregate(vectors)
        return self.rules.aggregate_indexed(vectors, self.index)

    def contract(self) -> None:
        """Distributed Median Contraction: each correct model <- median of its q replies."""
        theta = self.params
        theta.copy_(median_of_replies(theta, self.server_replies(theta), self.take))

    def round(self, round_: int) -> dict[str, Any]:
        """One round: pull, workers, Byzantine workers, servers' step, contraction."""
        x = self.pull()
        honest, losses = self.worker_step(x, round_)
        agg = self.aggregate(self.server_inputs(honest))
        self.servers.apply(agg, round_)
        self.spreads.append(diameter(self.params))
        if round_ % self.config.contraction_every == 0 and self.s > 1:
            self.contract()
        self.rounds_run += 1
        finite = bool(torch.isfinite(self.params).all())
        return {
            "loss": losses.mean(),
            "agg": agg if agg.dim() == 1 else agg[0],
            "honest": honest,
            "finite": finite,
        }

    # ------------------------------------------------------------------ metrics, loop
    def metrics(self, round_: int, out: dict[str, Any], elapsed: float, since: int) -> Record:
        accs = [self.evaluate(theta) for theta in self.params]
        vals = [self.evaluate_validation(theta) for theta in self.params]
        return metrics_record(
            round_,
            train_loss=out["loss"],
            test_accuracy=sum(accs) / len(accs),
            val_accuracy=None if vals[0] is None else sum(vals) / len(vals),
            agg_distance=agg_distance(out["agg"], out["honest"]),
            lr=self.servers.lr_at(round_),
            time=elapsed,
            test_accuracy_min=min(accs),
            test_accuracy_max=max(accs),
            spread=diameter(self.params),
            spread_max=max(self.spreads[since:]),
            server_accuracies=accs,
        )

    def run(
        self, *, on_metrics: Callable[[Record], None] | None = None, progress: bool = False
    ) -> RunResult:
        """Train for ``config.rounds`` rounds; records every ``eval_every`` and at the end."""
        cfg = self.config
        since = 0

        def record(r: int, out: dict[str, Any], seconds: float) -> Record:
            nonlocal since
            rec = self.metrics(r, out, seconds, since)
            since = len(self.spreads)
            return rec

        history, seconds, diverged = run_rounds(
            cfg, self.round, record, on_metrics=on_metrics, progress=progress
        )
        self.diverged = self.diverged or diverged
        timings = {"rounds": float(self.rounds_run), "server_loops": float(self.rules.loops)}
        return RunResult.from_history(
            cfg,
            history,
            seconds,
            timings,
            diverged=self.diverged,
            params=self.params.detach().cpu().clone(),
        )
