"""The ``async`` protocol in the simulator: asynchronous Byzantine SGD (Kardam, ICML 2018).

``AsyncSimulation(config)`` is a ``byzance.round.Setup`` whose server applies each vector as
it arrives (``byzance.round.kardam.KardamServer``: Kardam's filters, staleness dampening,
then the ``Server`` step), at the model the worker read. Who delivers when comes from the
timing model (``byzance.sim.async_timing``), drawn before training, so a run is reproducible
and the same seed gives the same arrival order.

One run makes ``rounds * n`` deliveries (n = the workers that deliver: the honest ones, and
the f Byzantine ones under attack), as many vectors as a synchronous run of the same config
computes; round r ends after delivery ``r n``, and takes the learning rate of round r.

Workers (the round's ``Workers``): worker w's k-th vector is computed at the model it read
when its (k-1)-th vector was processed, on the batch of (seed, w, round k), so it is the
same batch as in round k of a synchronous run; it sends its momentum
``m <- beta m + (1 - beta) g``. Vectorised: the vectors are computed lazily, when the next
delivery needs one that is not computed yet; then every worker whose vector is not computed
computes it together, each at the model it read (one batched pass with per-worker
parameters; the shared-parameter pass when they all read the same model, as in the first
step and with equal fixed delays). A worker's vector cannot be computed before the model it
reads exists, so a pass holds about as many workers as deliver before one delivers twice.

Byzantine workers deliver as often as their compute times let them (``byzantine_speed``).
A gradient attack forges its f vectors (``round.Adversary``) from the honest workers' latest
momenta at each batched pass (what an omniscient adversary sees); Byzantine worker
``n_honest + i`` sends row i; the server computes every worker's staleness from the version
it sent it (a Byzantine worker cannot claim a fresher one). ``filter_attack =
"lipschitz_edge"``: the forged vector is moved along its deviation from the last applied
vector to the largest one the Lipschitz filter accepts (``round.kardam.lipschitz_edge``),
the attack aimed at the filter. A data-poisoning attack's workers compute like honest ones,
on poisoned batches.

Records: the common keys (``train_loss``: mean loss of the honest vectors delivered in the
round; ``agg_distance``: distance between the mean applied vector and the mean honest vector
delivered in the round) plus ``sim_time`` (simulated time of the round's last delivery),
``applied`` (updates applied so far), ``rejected_lipschitz``, ``rejected_frequency``,
``byzantine_applied`` (so far) and ``staleness`` (mean staleness of the round's deliveries).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from byzance.progress import RoundProgress
from byzance.round.kardam import KardamServer, lipschitz_edge
from byzance.round.record import Record, RunResult, metrics_record
from byzance.round.sampling import local_positions
from byzance.round.setup import Setup
from byzance.sim.async_timing import Arrivals, schedule, worker_means

_PHASES = ("gradients", "attack", "server", "evaluation")


class AsyncSimulation(Setup):
    """Set-up state, the timing model's schedule and the asynchronous loop."""

    def __init__(self, config: Any, *, model: nn.Module | None = None, dataset: Any = None) -> None:
        super().__init__(config, model=model, dataset=dataset)
        cfg = self.config
        if cfg.protocol != "async":
            raise ValueError(f"AsyncSimulation: expected protocol 'async', got {cfg.protocol!r}")
        self.n = self.h + (self.f if self.attack is not None else 0)
        self.n_compute = self.h + (self.f if self.data_attack else 0)
        self.group = self.make_workers()
        self.adversary = self.make_adversary()
        self.kardam = KardamServer(
            self.make_server(self.params0.clone()),
            self.n,
            self.f,
            filter=cfg.async_filter,
            dampening=cfg.dampening,
            alpha=cfg.dampening_alpha,
        )
        means = worker_means(
            self.h,
            self.n - self.h,
            cfg.straggler_fraction,
            cfg.straggler_slowdown,
            cfg.byzantine_speed,
        )
        self.arrivals: Arrivals = schedule(cfg.rounds * self.n, means, cfg.compute_time, cfg.seed)
        d, k = self.dim, self.n_compute
        # per computing worker: the model it read, its version, its momentum, its next vector
        self.read_params = self.params0.expand(k, d).clone()
        self.read_version = [0] * self.n  # every worker's: the server knows what it sent
        self.same_read = True  # every computing worker read the same model
        self.momenta = self.params0.new_zeros(k, d)
        self.vectors = self.params0.new_zeros(k, d)
        self.losses = torch.zeros(k)
        self.ready = torch.zeros(k, dtype=torch.bool)
        self.counts = torch.zeros(k, dtype=torch.int64)  # vectors computed so far
        self.forged: torch.Tensor | None = None
        self.timings: dict[str, float] = dict.fromkeys(_PHASES, 0.0)
        self.diverged = False

    @property
    def params(self) -> torch.Tensor:
        return self.kardam.params

    # ------------------------------------------------------------------ workers
    def _batches(self, rows: torch.Tensor, counts: torch.Tensor, step: int):
        """(k, B, ...) examples of computing workers ``rows`` at their own rounds ``counts``."""
        g = self.group
        sizes = g.shards.sizes[rows]
        local = local_positions(g.seed, g.ids[rows], counts[:, None], step, g.batch_size, sizes)
        idx = g.shards.index[rows[:, None], local]
        xs, ys = g.x[idx], g.y[idx]
        if g.poisoner is not None:
            poisoned = (rows >= self.h).nonzero().flatten().tolist()
            if poisoned:
                xs, ys = xs.clone(), ys.clone()
                for i in poisoned:  # the poisoning workers only, each with its generator
                    g._params = self.read_params[int(rows[i])]
                    bx, by = g.batch(rows[i : i + 1], int(counts[i]), step)
                    xs[i], ys[i] = bx[0], by[0]
        return xs, ys

    def _compute(self) -> None:
        """Every computing worker without a vector computes it, each at the model it read."""
        t0 = time.perf_counter()
        rows = (~self.ready).nonzero().flatten()
        counts = self.counts[rows] + 1
        params = self.read_params[rows]
        versions = {self.read_version[i] for i in rows.tolist()}
        shared = self.same_read or len(versions) == 1
        grad_shared, grad_rows = self.group.grad_fns()
        if self.config.local_steps == 1:
            xs, ys = self._batches(rows, counts, 0)
            g, loss = grad_shared(params[0], xs, ys) if shared else grad_rows(params, xs, ys)
        else:
            lr = torch.tensor([self.lr_at(int(c)) for c in counts], dtype=params.dtype)
            local, loss = params.clone(), torch.zeros(rows.numel())
            for step in range(self.config.local_steps):
                gs, ls = grad_rows(local, *self._batches(rows, counts, step))
                local.sub_(gs * lr[:, None])
                loss += ls
            g, loss = (params - local).div_(lr[:, None]), loss / self.config.local_steps
        beta = self.config.momentum
        m = self.momenta[rows].lerp_(g, 1.0 - beta) if beta else g
        self.momenta[rows] = m
        self.vectors[rows] = m
        self.losses[rows] = loss.detach().to(self.losses.dtype)
        self.counts[rows] = counts
        self.ready[rows] = True
        self.same_read = False
        t1 = time.perf_counter()
        self.timings["gradients"] += t1 - t0
        if self.adversary is not None:
            self.forged = self.adversary.forge(self.momenta[: self.h])
            self.timings["attack"] += time.perf_counter() - t1

    def _byzantine_vector(self, worker: int) -> torch.Tensor:
        assert self.forged is not None
        v = self.forged[worker - self.h]
        if self.config.filter_attack == "lipschitz_edge":
            return lipschitz_edge(v, self.kardam)
        return v

    # ------------------------------------------------------------------ the loop
    def run(
        self, *, on_metrics: Callable[[Record], None] | None = None, progress: bool = False
    ) -> RunResult:
        """Process the ``rounds * n`` deliveries; evaluate every ``eval_every`` rounds."""
        cfg, arr, k = self.config, self.arrivals, self.kardam
        workers, times = arr.worker.tolist(), arr.time.tolist()
        history: list[Record] = []
        bar = RoundProgress(cfg.rounds, enabled=progress)
        start = time.perf_counter()
        applied_sum = self.params0.new_zeros(self.dim)
        honest_sum = self.params0.new_zeros(self.dim)
        sums = {"applied": 0, "honest": 0, "loss": 0.0, "tau": 0, "byz": 0}
        byz_applied = 0
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed + 1)
            self._compute()
            for j, w in enumerate(workers):
                r = j // self.n + 1
                t0 = time.perf_counter()
                if w < self.n_compute:
                    if not self.ready[w]:
                        self._compute()
                        t0 = time.perf_counter()
                    v = self.vectors[w]
                else:
                    v = self._byzantine_vector(w)
                tau = k.version - self.read_version[w]
                outcome = k.receive(w, v, tau, r)
                if w < self.h:
                    honest_sum += v
                    sums["honest"] += 1
                    sums["loss"] += float(self.losses[w])
                sums["tau"] += tau
                if outcome == "applied":
                    applied_sum += v
                    sums["applied"] += 1
                    byz_applied += w >= self.h
                self.read_version[w] = k.version  # it reads the newest model
                if w < self.n_compute:  # and computes again
                    self.ready[w] = False
                    self.read_params[w] = k.params
                self.timings["server"] += time.perf_counter() - t0
                if (j + 1) % self.n:
                    continue
                last = r == cfg.rounds
                if not bool(torch.isfinite(k.params).all()):
                    self.diverged = True
                if self.diverged or last or r % cfg.eval_every == 0:
                    te = time.perf_counter()
                    record = self._record(r, times[j], applied_sum, honest_sum, sums)
                    record["byzantine_applied"] = byz_applied
                    record["time"] = time.perf_counter() - start
                    self.timings["evaluation"] += time.perf_counter() - te
                    history.append(record)
                    if on_metrics is not None:
                        on_metrics(record)
                    bar.update(r, record)
                applied_sum.zero_()
                honest_sum.zero_()
                sums = dict.fromkeys(sums, 0)
                if self.diverged:
                    break
        seconds = time.perf_counter() - start
        bar.close()
        timings = dict(self.timings)
        timings["rounds"] = float(history[-1]["round"])
        timings["applied"] = float(k.version)
        return RunResult.from_history(
            cfg, history, seconds, timings, diverged=self.diverged,
            params=k.params.detach().cpu().clone(),
        )  # fmt: skip

    def _record(
        self, r: int, sim_time: float, applied_sum, honest_sum, sums: dict[str, Any]
    ) -> Record:
        if sums["applied"] and sums["honest"]:
            mean_applied = applied_sum / sums["applied"]
            distance = float(torch.dist(mean_applied, honest_sum / sums["honest"]))
        else:
            distance = math.nan
        stats = self.kardam.stats
        return metrics_record(
            r,
            train_loss=sums["loss"] / sums["honest"] if sums["honest"] else math.nan,
            test_accuracy=self.evaluate(self.params),
            val_accuracy=self.evaluate_validation(self.params),
            agg_distance=distance,
            lr=self.lr_at(r),
            time=0.0,
            sim_time=sim_time,
            applied=stats["applied"],
            rejected_lipschitz=stats["rejected_lipschitz"],
            rejected_frequency=stats["rejected_frequency"],
            staleness=sums["tau"] / self.n,
        )


__all__ = ["AsyncSimulation"]
