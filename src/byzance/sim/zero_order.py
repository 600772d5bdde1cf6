"""FedZero's round in the simulator: workers send scalars, the server rebuilds and aggregates.

Round t with the two-point estimator of ``byzance.round.zero_order`` (``Simulation.round``
runs this when ``gradient_estimator = "zero_order"``):

1. every computing worker (the honest ones, and data-poisoning Byzantine ones on their
   poisoned batches) evaluates its batch loss at ``theta +- h zeta_k`` and sends the K scalars
   ``s_k``; the server rebuilds its estimate from the same seeded directions (``Workers``);
2. a gradient attack's Byzantine workers send scalars too:

   * ``robust="estimates"``: the attack forges f vectors from the honest rebuilt estimates,
     and each Byzantine worker sends the scalars whose rebuilt estimate (along its own
     directions) is closest to its forged vector (``ZeroOrder.realize``, least squares);
   * ``robust="scalars"``: the attack forges the (f, K) scalars from the honest (h, K) ones;

3. ``"estimates"``: the server keeps every worker's momentum of its rebuilt estimates
   (``m <- beta m + (1 - beta) g``, as a worker would; the server can, since it rebuilds
   them) and aggregates the n momenta with the rule; ``"scalars"``: the rule aggregates the
   (n, K) scalars (per direction for coordinate-wise rules) and the server rebuilds one step
   along the round's shared directions. Then weight decay, server momentum, learning rate.
"""

from __future__ import annotations

from typing import Any

import torch


class ZeroOrderRound:
    """One FedZero round of a ``Simulation`` (see the module docstring)."""

    def __init__(self, sim: Any) -> None:
        self.sim = sim
        self.est = sim.estimator
        #: (n, d) momenta of the rebuilt estimates (``robust="estimates"``); None: m_0 = 0
        self.momenta: torch.Tensor | None = None

    def round(self, round_: int) -> dict[str, Any]:
        sim, est = self.sim, self.est
        t, h, f = sim.timings, sim.h, sim.f
        t0 = sim.clock()
        g, losses = sim.group.gradients(sim.computing, sim.params, round_)
        s = est.last_scalars  # (k, K): what the computing workers sent
        sim._sync()
        t1 = sim.clock()
        t["honest_gradients"] += t1 - t0
        if sim.gradient_attack:
            byz = torch.arange(h, h + f, device=sim.device)
            dirs = est.draw(sim.config.seed, byz, round_, sim.dim, dtype=g.dtype, device=g.device)
            if est.shared:
                s_byz = sim.adversary.forge(s[:h])
            else:
                s_byz = est.realize(sim.adversary.forge(g[:h]), dirs)
            s = torch.cat([s, s_byz])
            if not est.shared:
                g = torch.cat([g, est.rebuild(s_byz, dirs)])
        sim._sync()
        t2 = sim.clock()
        t["attack"] += t2 - t1
        if est.shared:
            agg_s = sim.server.aggregate(s)
            dirs = est.draw(sim.config.seed, [0], round_, sim.dim, dtype=g.dtype, device=g.device)
            agg = est.rebuild(agg_s[None].to(g.dtype), dirs)[0]
            honest = g[:h]
        else:
            self.momenta = sim.group.momentum(g, self.momenta)
            agg = sim.server.aggregate(self.momenta)
            honest = self.momenta[:h]
        sim._sync()
        t3 = sim.clock()
        t["aggregation"] += t3 - t2
        sim.server.apply(agg, round_)
        finite = bool(torch.isfinite(sim.params).all())
        t["update"] += sim.clock() - t3
        sim.rounds_run += 1
        return {"loss": losses[:h].mean(), "agg": agg, "honest": honest, "finite": finite}
