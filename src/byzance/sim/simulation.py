"""The in-process simulator: every worker of a round in one vectorised computation.

``Simulation(config)`` is a ``byzance.round.Setup`` (data and validation split, worker
shards, model and its flat parameters, the server's pipeline and the attack) with the round's
steps for all workers at once (``byzance.round``: the same steps every engine runs); ``run()``
(or ``run_experiment(config)``) trains and returns a ``RunResult``. The parts:

``worker_gradients(worker_ids, params, round_)``
    (k, d) raw vectors (gradients, or pseudo-gradients with local steps) and (k,) losses of any
    subset of workers, computed together (one pass over the concatenated batch, see
    ``summed_grad``; vmap for local steps and models it cannot handle). Ids
    ``0..n_honest-1`` are honest; ids ``n_honest..n_honest+f-1`` are Byzantine and, under a
    data-poisoning attack, compute honest gradients on poisoned batches. Each worker's batch
    depends only on (seed, id, round, step) (see ``workers.Shards.sample_indices``), so any
    subset gives the same rows as the full set.
``momentum(g, m, out=None)``
    worker momentum ``beta m + (1 - beta) g`` (``m=None`` means ``m_0 = 0``; into ``out``).
``byzantine_vectors(honest)``
    the f vectors of a gradient attack given the honest vectors (h, d) actually sent
    (``round.Adversary``).
``server_step(vectors, round_)``
    aggregate the (n, d) received vectors (the rule's state carried to the next round), apply
    weight decay, server momentum and the lr schedule to ``params``; returns the aggregate.
``evaluate(params=None)``
    test accuracy (and ``evaluate_validation`` on the held-out split).
``metrics(round_, loss, aggregate, honest, elapsed)``
    the metric record passed to ``on_metrics`` (same keys for every engine).
``round(round_)``
    one whole vectorised round from the parts above (what ``run`` calls).

Gradient attacks and ``attack="none"`` leave the f Byzantine shards unused.

One round t (1-based): honest workers (and data-poisoning Byzantine workers) compute their
vectors and momenta; a gradient attack crafts f vectors from the honest momenta; the server
aggregates the n received vectors (only the honest ones with ``attack="none"``) and steps.
If the parameters become non-finite the run stops and is marked ``diverged`` (its accuracy is
chance, 1 / num_classes). Same config and seed give bit-identical histories on CPU.

On a CPU under Linux with glibc, a ``Simulation`` makes malloc keep blocks of up to 32 MiB in
its heap instead of mapping and faulting them in afresh every round (process-wide, see
``byzance._allocator``; ``BYZANCE_MALLOC=default`` declines).
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from byzance._allocator import keep_large_blocks
from byzance.progress import RoundProgress
from byzance.round.record import Record, RunResult, agg_distance, metrics_record
from byzance.round.setup import Setup
from byzance.sim.config import ExperimentConfig

_PHASES = ("honest_gradients", "attack", "aggregation", "update", "evaluation")


class Simulation(Setup):
    """Set-up state and the round's steps for all workers at once (see the module docstring)."""

    #: whether this class runs a client population (``byzance.sim.population``)
    runs_population = False

    def __init__(
        self,
        config: ExperimentConfig | dict[str, Any],
        *,
        model: nn.Module | None = None,
        dataset: Any = None,
    ) -> None:
        super().__init__(config, model=model, dataset=dataset)
        if self.config.n_clients is not None and not self.runs_population:
            raise ValueError(
                f"Simulation: the config has a client population (n_clients="
                f"{self.config.n_clients}); use byzance.sim.population.PopulationSimulation "
                "(run_experiment and the sim engine pick it)"
            )
        self.params = self.params0
        self.group = self.make_workers()
        self.adversary = self.make_adversary()
        self.server = self.make_server(self.params)
        #: FedZero's round (workers send scalars; byzance.sim.zero_order), None: backprop
        self._zero_order: Any = None
        if self.estimator is not None:
            from byzance.sim.zero_order import ZeroOrderRound

            self._zero_order = ZeroOrderRound(self)
        # workers that compute gradients each round: honest, then data-poisoning Byzantine
        n_compute = self.h + (self.f if self.data_attack else 0)
        self.computing = torch.arange(n_compute, device=self.device)
        # the server's (n, d) matrix of received vectors, written in place every round: the
        # honest (and poisoning) workers' momenta first, then the forged vectors (made by the
        # first round: engines that only use the parts never need it)
        self._received: torch.Tensor | None = None
        if self.device.type == "cpu":
            keep_large_blocks()
        self.timings: dict[str, float] = dict.fromkeys(_PHASES, 0.0)
        #: clock of the phase timings (a benchmark may use ``time.process_time``)
        self.clock: Callable[[], float] = time.perf_counter
        self.rounds_run = 0
        self.diverged = False

    # ------------------------------------------------------------------ building blocks
    @property
    def momenta(self) -> torch.Tensor | None:
        """(n_compute, d) momenta of the last round (None before the first)."""
        return self.group.momenta

    @momenta.setter
    def momenta(self, value: torch.Tensor | None) -> None:
        self.group.momenta = value

    @property
    def _grad_shared(self) -> Any:
        return self.group.grad_fns()[0]

    def _batch(self, workers: torch.Tensor, round_: int, step: int):
        return self.group.batch(workers, round_, step)

    def worker_gradients(
        self, worker_ids: torch.Tensor | list[int], params: torch.Tensor, round_: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw vectors (k, d) and mean batch losses (k,) of ``worker_ids`` at ``round_``.

        With ``local_steps`` K = 1: the stochastic gradient at ``params``. With K > 1: each
        worker runs K SGD steps (lr of this round) from ``params`` and returns the
        pseudo-gradient ``(params - w_local) / lr``; the loss is the mean over the K steps.
        """
        workers = torch.as_tensor(worker_ids, dtype=torch.int64, device=self.device)
        if workers.dim() != 1 or workers.numel() == 0:
            raise ValueError("worker_gradients: expected a non-empty 1-D list of worker ids")
        return self.group.gradients(workers, params, round_)

    def momentum(
        self, g: torch.Tensor, m: torch.Tensor | None, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Worker momentum ``beta m + (1 - beta) g`` (``m=None``: m_0 = 0), as a new tensor or
        written into ``out`` (``round`` writes it into the rows of the received matrix)."""
        return self.group.momentum(g, m, out=out)

    def byzantine_vectors(self, honest: torch.Tensor) -> torch.Tensor:
        """The f vectors sent by a gradient attack that sees the honest vectors (h, d)."""
        return self.adversary.forge(honest)

    def server_step(self, vectors: torch.Tensor, round_: int) -> torch.Tensor:
        """Aggregate the received vectors and update ``params`` in place; return the aggregate."""
        return self.server.step(vectors, round_)

    def evaluate(self, params: torch.Tensor | None = None) -> float:
        """Accuracy on the full test set."""
        return super().evaluate(self.params if params is None else params)

    def evaluate_validation(self, params: torch.Tensor | None = None) -> float | None:
        """Accuracy on the held-out validation split (``None`` if ``val_fraction`` = 0)."""
        return super().evaluate_validation(self.params if params is None else params)

    def metrics(
        self,
        round_: int,
        loss: torch.Tensor | float,
        aggregate: torch.Tensor,
        honest: torch.Tensor,
        elapsed: float,
    ) -> Record:
        """The metric record of ``round_`` (evaluates the current parameters; see
        ``byzance.round.record``)."""
        return metrics_record(
            round_,
            train_loss=loss,
            test_accuracy=self.evaluate(),
            val_accuracy=self.evaluate_validation(),
            agg_distance=agg_distance(aggregate, honest),
            lr=self.server.lr_at(round_),
            time=elapsed,
        )

    # ------------------------------------------------------------------ the loop
    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def round(self, round_: int) -> dict[str, Any]:
        """Run round ``round_`` (1-based): workers, attack, server step; phase times in ``timings``.

        Returns the round's mean honest loss and aggregate as tensors (no host sync for them),
        the honest vectors, and whether the new parameters are all finite. The honest vectors
        (and ``momenta``) are rows of the received matrix, overwritten by the next round.
        """
        if self._zero_order is not None:  # FedZero: scalars sent, estimates rebuilt
            return self._zero_order.round(round_)
        t = self.timings
        h = self.h
        t0 = self.clock()
        if self._received is None:
            n_rows = self.computing.numel() + (self.f if self.gradient_attack else 0)
            self._received = self.params.new_empty(n_rows, self.dim)
        vectors = self._received
        m, losses = self.group.step(
            self.computing, self.params, round_, out=vectors[: self.computing.numel()]
        )
        honest = m[:h]
        self._sync()
        t1 = self.clock()
        t["honest_gradients"] += t1 - t0
        if self.gradient_attack:
            vectors[h:] = self.byzantine_vectors(honest)
        # else: data attack: the poisoned workers' momenta; no attack: honest only
        self._sync()
        t2 = self.clock()
        t["attack"] += t2 - t1
        agg = self.server.aggregate(vectors)
        self._sync()
        t3 = self.clock()
        t["aggregation"] += t3 - t2
        self.server.apply(agg, round_)
        finite = bool(torch.isfinite(self.params).all())
        t4 = self.clock()
        t["update"] += t4 - t3
        self.rounds_run += 1
        return {"loss": losses[:h].mean(), "agg": agg, "honest": honest, "finite": finite}

    def run(
        self,
        *,
        on_metrics: Callable[[Record], None] | None = None,
        progress: bool = False,
    ) -> RunResult:
        """Train for ``config.rounds`` rounds; evaluate every ``eval_every`` and at the end.

        The records are described in ``byzance.round.record``; ``on_metrics(record)`` is
        called as each one is made.
        """
        cfg = self.config
        history: list[Record] = []
        bar = RoundProgress(cfg.rounds, enabled=progress)
        start = time.perf_counter()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed + 1)  # anything else drawing from the global RNG
            for r in range(1, cfg.rounds + 1):
                out = self.round(r)
                last = r == cfg.rounds
                if not out["finite"]:
                    self.diverged = True
                if self.diverged or last or r % cfg.eval_every == 0:
                    te = time.perf_counter()
                    record = self.metrics(
                        r, out["loss"], out["agg"], out["honest"], time.perf_counter() - start
                    )
                    self.timings["evaluation"] += time.perf_counter() - te
                    history.append(record)
                    if on_metrics is not None:
                        on_metrics(record)
                    bar.update(r, record)
                if self.diverged:
                    break
        seconds = time.perf_counter() - start
        bar.close()
        timings = dict(self.timings)
        timings["rounds"] = float(self.rounds_run)
        return RunResult.from_history(
            cfg,
            history,
            seconds,
            timings,
            diverged=self.diverged,
            params=self.params.detach().cpu().clone(),
        )


def run_experiment(
    config: ExperimentConfig | dict[str, Any],
    *,
    model: nn.Module | None = None,
    dataset: Any = None,
    on_metrics: Callable[[Record], None] | None = None,
    progress: bool = False,
) -> RunResult:
    """Validate ``config``, set up and run one simulated experiment (see ``Simulation``).

    ``model``: a custom ``nn.Module`` instead of ``config.model`` (copied, not modified);
    ``dataset``: an already loaded ``byzance.datasets.Dataset`` instead of ``config.dataset``.
    Never raises on divergence: the result is marked ``diverged`` with chance accuracy.
    """
    cls = Simulation
    cfg = config if isinstance(config, ExperimentConfig) else ExperimentConfig.from_dict(config)
    if cfg.n_clients is not None:  # a sampled client population (by name: it subclasses us)
        cls = importlib.import_module("byzance.sim.population").PopulationSimulation
    return cls(cfg, model=model, dataset=dataset).run(on_metrics=on_metrics, progress=progress)


__all__ = ["RunResult", "Simulation", "run_experiment"]
