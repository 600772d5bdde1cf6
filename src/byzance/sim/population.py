"""The simulator for a client population: each round, the sampled clients only.

``PopulationSimulation(config)`` runs a config with ``n_clients`` set (``byzance.round.clients``):
the same round as ``Simulation`` (the workers' step, the adversary, the server's step of
``byzance.round``), on the clients of the round's sample:

1. ``ClientSampler.sample(t)``: the sampled honest clients and the K_t sampled Byzantine ones;
2. the sampled honest clients (and, under a data-poisoning attack, the sampled Byzantine
   ones) compute their gradients together (``Workers.gradients`` on their rows: a client's
   batch depends only on (seed, client, round), never on who else was sampled) and update
   their stored momenta (``ClientMomenta``; unsampled clients are not touched);
3. a gradient attack forges K_t vectors from the round's honest vectors
   (``Adversary.forge(honest, count=K_t)``); a round that sampled no honest client has none
   to forge from: its Byzantine clients send zero vectors (the step is then weight decay and
   server momentum only);
4. the server aggregates the S received vectors with f = ``aggregator_f`` and steps.

A round's work is that of S clients whatever the population. Every record adds
``sampled_byzantine`` (K_t of each round since the previous record), ``aggregator_f`` and
``rounds_over_f`` (how many of those rounds had K_t > aggregator_f); the whole series is
``sampled_byzantine`` on the simulation. With ``clients_per_round = "all"`` the run is the
full-participation simulator's (``n_honest`` = N - B honest and f = B Byzantine workers), bit
for bit.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from byzance.round.clients import ClientMomenta, ClientSampler
from byzance.round.record import Record
from byzance.sim.config import ExperimentConfig
from byzance.sim.simulation import Simulation


class PopulationSimulation(Simulation):
    """``Simulation`` over a sampled client population (see the module docstring)."""

    runs_population = True

    def __init__(
        self,
        config: ExperimentConfig | dict[str, Any],
        *,
        model: nn.Module | None = None,
        dataset: Any = None,
    ) -> None:
        super().__init__(config, model=model, dataset=dataset)
        cfg = self.config
        if cfg.n_clients is None:
            raise ValueError(
                "PopulationSimulation: the config has no client population (n_clients=None); "
                "use byzance.sim.Simulation"
            )
        self.population = pop = cfg.population
        self.sampler = ClientSampler(pop, cfg.seed)
        self.client_momenta = ClientMomenta(pop.n_clients, self.dim, cfg.momentum, self.device)
        #: K_t, the Byzantine clients sampled, of every round run
        self.sampled_byzantine: list[int] = []
        self._reported = 0  # rounds already reported in a record

    def round(self, round_: int) -> dict[str, Any]:
        """Run round ``round_`` on its sample (see ``Simulation.round`` for what it returns)."""
        t, pop = self.timings, self.population
        t0 = self.clock()
        honest_ids, byz_ids = self.sampler.sample(round_)
        h, k = honest_ids.size, byz_ids.size
        self.sampled_byzantine.append(int(k))
        if self._received is None:
            self._received = self.params.new_empty(pop.per_round, self.dim)
        vectors = self._received
        ids = np.concatenate([honest_ids, byz_ids]) if self.data_attack else honest_ids
        losses = self.params.new_full((1,), float("nan"))
        if ids.size:
            rows = torch.from_numpy(ids).to(self.device)
            g, losses = self.group.gradients(rows, self.params, round_)
            vectors[: ids.size] = self.client_momenta.update(rows, g)
        honest = vectors[:h]
        self._sync()
        t1 = self.clock()
        t["honest_gradients"] += t1 - t0
        if self.gradient_attack and k > 0:
            if h == 0:  # nothing to forge from (module docstring)
                vectors.zero_()
            else:
                try:
                    vectors[h:] = self.adversary.forge(honest, count=int(k))
                except ValueError as exc:  # e.g. ALIE's default z with a Byzantine majority
                    raise ValueError(
                        f"round {round_} sampled {k} Byzantine of {pop.per_round} clients, and "
                        f"attack {self.config.attack!r} cannot forge {k} vectors from {h} honest "
                        f"ones: {exc}"
                    ) from exc
        self._sync()
        t2 = self.clock()
        t["attack"] += t2 - t1
        agg = self.server.aggregate(vectors)
        self._sync()
        t3 = self.clock()
        t["aggregation"] += t3 - t2
        self.server.apply(agg, round_)
        finite = bool(torch.isfinite(self.params).all())
        t["update"] += self.clock() - t3
        self.rounds_run += 1
        loss = losses[:h].mean() if h else losses[0]
        return {"loss": loss, "agg": agg, "honest": honest, "finite": finite}

    def metrics(
        self,
        round_: int,
        loss: torch.Tensor | float,
        aggregate: torch.Tensor,
        honest: torch.Tensor,
        elapsed: float,
    ) -> Record:
        """``Simulation.metrics`` plus the sampled Byzantine counts since the last record."""
        record = super().metrics(round_, loss, aggregate, honest, elapsed)
        counts = self.sampled_byzantine[self._reported :]
        self._reported = len(self.sampled_byzantine)
        f = self.population.aggregator_f
        record["sampled_byzantine"] = counts
        record["aggregator_f"] = f
        record["rounds_over_f"] = sum(c > f for c in counts)
        return record


__all__ = ["PopulationSimulation"]
