"""The round loop of a simulated run, built from parts a distributed engine can reuse.

``Simulation(config)`` sets everything up (data and validation split, worker shards, model and
its flat parameters, the server's pipeline and the attack); ``run()`` (or
``run_experiment(config)``) trains and returns a ``RunResult``. The parts, usable on their own
(e.g. by the Ray engine, one worker per actor):

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
    the f vectors of a gradient attack given the honest vectors (h, d) actually sent.
``server_step(vectors, round_)``
    aggregate the (n, d) received vectors, apply weight decay, server momentum and the lr
    schedule to ``params``; returns the aggregate.
``evaluate(params=None)``
    test accuracy (and ``evaluate_validation`` on the held-out split).
``metrics(round_, loss, aggregate, honest, elapsed)``
    the metric record passed to ``on_metrics`` (same keys for every engine).
``round(round_)``
    one whole vectorised round from the parts above (what ``run`` calls).

Workers' batches are sampled with replacement from their shards (so a shard smaller than
``batch_size`` is fine; an empty shard is an error at set-up). The shards split the training
set among all ``n_honest + f`` workers, whatever the attack, so honest data are the same
under every attack (fair comparisons); gradient attacks and ``attack="none"`` leave the f
Byzantine shards unused.

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

import copy
import inspect
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from byzance._allocator import keep_large_blocks
from byzance.sim.config import ExperimentConfig
from byzance.sim.server import Server
from byzance.sim.workers import FlatModel, Shards, poison_seed

Record = dict[str, Any]

_PHASES = ("honest_gradients", "attack", "aggregation", "update", "evaluation")


@dataclass
class RunResult:
    """Outcome of ``run_experiment``.

    ``history``: the metric records (see ``Simulation.run``); ``final_accuracy``: test accuracy
    at the end (chance if diverged); ``seconds``: wall time of the training loop;
    ``timings``: seconds spent per phase (``honest_gradients``, ``attack``, ``aggregation``,
    ``update``, ``evaluation``) and ``rounds`` run; ``params``: final flat parameters (CPU).
    """

    config: ExperimentConfig
    history: list[Record]
    final_accuracy: float
    seconds: float
    timings: dict[str, float]
    diverged: bool = False
    final_val_accuracy: float | None = None
    params: torch.Tensor | None = field(default=None, repr=False)


def _is_data_attack(attack: Any) -> bool:
    try:
        from byzance.attacks import DataAttack
    except ImportError:  # pragma: no cover - attacks package not installed yet
        return hasattr(attack, "poison")
    return isinstance(attack, DataAttack)


class Simulation:
    """Set-up state and the building blocks of one run (see the module docstring)."""

    def __init__(
        self,
        config: ExperimentConfig | dict[str, Any],
        *,
        model: nn.Module | None = None,
        dataset: Any = None,
    ) -> None:
        if isinstance(config, dict):
            config = ExperimentConfig.from_dict(config)
        config.validate(custom_model=model is not None)
        self.config = cfg = config
        self.device = torch.device(cfg.device)
        self.aggregator = cfg.build_aggregator()
        attack = cfg.build_attack(self.aggregator) if cfg.has_attack else None
        self.attack = attack
        self.data_attack = attack is not None and _is_data_attack(attack)
        self.gradient_attack = attack is not None and not self.data_attack
        self.h, self.f = cfg.n_honest, cfg.f

        # ---------------------------------------------------------------- data
        if dataset is None:
            from byzance.datasets import load_dataset

            dataset = load_dataset(cfg.dataset, data_dir=cfg.data_dir)
        self.dataset = dataset
        self.num_classes = int(dataset.num_classes)
        x, y = dataset.x_train, dataset.y_train
        self.x_val: torch.Tensor | None = None
        self.y_val: torch.Tensor | None = None
        if cfg.val_fraction > 0:
            gen = torch.Generator().manual_seed(cfg.seed)
            perm = torch.randperm(x.shape[0], generator=gen)
            n_val = max(1, int(round(cfg.val_fraction * x.shape[0])))
            if n_val >= x.shape[0]:
                raise ValueError(
                    f"ExperimentConfig.val_fraction: {cfg.val_fraction} leaves no training data"
                )
            self.x_val, self.y_val = x[perm[:n_val]], y[perm[:n_val]]
            x, y = x[perm[n_val:]], y[perm[n_val:]]
        from byzance.datasets import partition

        n_shards = self.h + self.f
        shards = partition(
            y, n_shards, cfg.heterogeneity, alpha=cfg.alpha, gamma=cfg.gamma, seed=cfg.seed
        )
        self.shards = Shards(shards, device=self.device)
        self.x_train = x.to(self.device)
        self.y_train = y.to(self.device)
        self.x_test = dataset.x_test.to(self.device)
        self.y_test = dataset.y_test.to(self.device)
        if self.x_val is not None and self.y_val is not None:
            self.x_val, self.y_val = self.x_val.to(self.device), self.y_val.to(self.device)

        # ---------------------------------------------------------------- model
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            if model is None:
                from byzance.models import create_model

                model = create_model(cfg.model, tuple(dataset.input_shape), self.num_classes)
            else:
                model = copy.deepcopy(model)
        model = model.to(self.device)
        model.train()
        self.flat = FlatModel(model)
        self.dim = self.flat.dim
        self.params = self.flat.flatten().to(self.device)
        self._grad_shared = self.flat.batched_grad(shared_params=True)
        self._grad_local = self.flat.batched_grad(shared_params=False)
        self.server = Server(
            self.params,
            self.aggregator,
            lr=cfg.lr,
            schedule=cfg.lr_schedule,
            rounds=cfg.rounds,
            weight_decay=cfg.weight_decay,
            momentum=cfg.server_momentum,
        )
        # workers that compute gradients each round: honest, then data-poisoning Byzantine
        n_compute = self.h + (self.f if self.data_attack else 0)
        self.computing = torch.arange(n_compute, device=self.device)
        self.momenta: torch.Tensor | None = None  # (n_compute, d); None = zeros (round 1)
        # the server's (n, d) matrix of received vectors, written in place every round: the
        # honest (and poisoning) workers' momenta first, then the forged vectors (made by the
        # first round: engines that only use the parts never need it)
        self._received: torch.Tensor | None = None
        if self.device.type == "cpu":
            keep_large_blocks()
        if self.data_attack:
            sig = inspect.signature(attack.poison)  # type: ignore[union-attr]
            self._poison_takes_params = "model_params" in sig.parameters
        self._current_params = self.params
        if self.data_attack:  # surface e.g. a model the poisoning cannot handle, before running
            try:
                self._batch(torch.tensor([self.h], device=self.device), 1, 0)
            except (ValueError, TypeError) as exc:
                raise ValueError(
                    f"ExperimentConfig.attack: {cfg.attack!r} cannot poison the data of model "
                    f"{cfg.model!r}: {exc}"
                ) from exc
            attack.reset()  # type: ignore[union-attr]
        self.timings: dict[str, float] = dict.fromkeys(_PHASES, 0.0)
        #: clock of the phase timings (a benchmark may use ``time.process_time``)
        self.clock: Callable[[], float] = time.perf_counter
        self.rounds_run = 0
        self.diverged = False

    # ------------------------------------------------------------------ building blocks
    def _batch(self, workers: torch.Tensor, round_: int, step: int):
        idx = self.shards.sample_indices(
            self.config.seed, workers, round_, step, self.config.batch_size
        )
        xs, ys = self.x_train[idx], self.y_train[idx]
        if self.data_attack and bool((workers >= self.h).any()):
            xs, ys = self._poison(workers, xs, ys, round_, step)
        return xs, ys

    def _poison(self, workers, xs, ys, round_, step):
        xs, ys = xs.clone(), ys.clone()
        rows = (workers >= self.h).nonzero().flatten().tolist()
        for r in rows:  # the f Byzantine workers only; each with its own generator
            w = int(workers[r])
            s = poison_seed(self.config.seed, w, round_, step)
            gen = torch.Generator(device=xs.device).manual_seed(s)
            kwargs: dict[str, Any] = {"generator": gen}
            if self._poison_takes_params:  # e.g. budgeted label flipping: (W, b) of logreg
                kwargs["model_params"] = tuple(self.flat.unflatten(self._current_params).values())
            px, py = self.attack.poison(xs[r], ys[r], self.num_classes, **kwargs)  # type: ignore
            xs[r], ys[r] = px, py
        return xs, ys

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
        self._current_params = params
        k_steps = self.config.local_steps
        if k_steps == 1:
            xs, ys = self._batch(workers, round_, 0)
            return self._grad_shared(params, xs, ys)
        lr = self.server.lr_at(round_)
        local = params.expand(workers.numel(), -1).clone()
        loss_sum = torch.zeros(workers.numel(), device=self.device)
        for step in range(k_steps):
            xs, ys = self._batch(workers, round_, step)
            g, loss = self._grad_local(local, xs, ys)
            local.sub_(g, alpha=lr)
            loss_sum += loss
        return (params - local).div_(lr), loss_sum / k_steps

    def momentum(
        self, g: torch.Tensor, m: torch.Tensor | None, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Worker momentum ``beta m + (1 - beta) g`` (``m=None``: m_0 = 0), as a new tensor or
        written into ``out`` (``round`` writes it into the rows of the received matrix)."""
        beta = self.config.momentum
        if m is None:
            return torch.mul(g, 1.0 - beta, out=out)
        if out is None:
            return torch.lerp(m, g, 1.0 - beta)
        if m.data_ptr() != out.data_ptr():  # e.g. momenta restored from a checkpoint
            out.copy_(m)
        return out.lerp_(g, 1.0 - beta)

    def byzantine_vectors(self, honest: torch.Tensor) -> torch.Tensor:
        """The f vectors sent by a gradient attack that sees the honest vectors (h, d)."""
        attack = self.attack
        forge = getattr(attack, "forge", None)  # the unchecked hot path of byzance attacks
        byz = forge(honest, self.f) if forge is not None else attack(honest, self.f)  # type: ignore
        if byz.shape != (self.f, honest.shape[1]):
            raise ValueError(
                f"attack {self.config.attack!r} returned shape {tuple(byz.shape)}, "
                f"expected ({self.f}, {honest.shape[1]})"
            )
        return byz.to(honest.dtype)

    def server_step(self, vectors: torch.Tensor, round_: int) -> torch.Tensor:
        """Aggregate the received vectors and update ``params`` in place; return the aggregate."""
        return self.server.step(vectors, round_)

    def evaluate(self, params: torch.Tensor | None = None) -> float:
        """Accuracy on the full test set."""
        p = self.params if params is None else params
        return self.flat.accuracy(p, self.x_test, self.y_test, self.config.eval_batch_size)

    def evaluate_validation(self, params: torch.Tensor | None = None) -> float | None:
        """Accuracy on the held-out validation split (``None`` if ``val_fraction`` = 0)."""
        if self.x_val is None or self.y_val is None:
            return None
        p = self.params if params is None else params
        return self.flat.accuracy(p, self.x_val, self.y_val, self.config.eval_batch_size)

    def metrics(
        self,
        round_: int,
        loss: torch.Tensor | float,
        aggregate: torch.Tensor,
        honest: torch.Tensor,
        elapsed: float,
    ) -> Record:
        """The metric record of ``round_`` (evaluates the current parameters).

        ``agg_distance = ||aggregate - mean(honest)||``; a diverged run reports chance accuracy
        (1 / num_classes) instead of evaluating.
        """
        with torch.no_grad():
            dist = float(torch.linalg.vector_norm(aggregate - honest.mean(0)))
        if self.diverged:
            chance = 1.0 / self.num_classes
            acc, val = chance, (chance if self.x_val is not None else None)
        else:
            acc, val = self.evaluate(), self.evaluate_validation()
        return {
            "round": round_,
            "train_loss": float(loss),
            "test_accuracy": acc,
            "val_accuracy": val,
            "agg_distance": dist,
            "lr": self.server.lr_at(round_),
            "time": elapsed,
        }

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
        t = self.timings
        h = self.h
        t0 = self.clock()
        g, losses = self.worker_gradients(self.computing, self.params, round_)
        if self._received is None:
            n_rows = g.shape[0] + (self.f if self.gradient_attack else 0)
            self._received = g.new_empty(n_rows, self.dim)
        vectors = self._received
        m = self.momentum(g, self.momenta, out=vectors[: g.shape[0]])
        self.momenta = m
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

        Each record: ``round``, ``train_loss`` (mean honest batch loss of that round),
        ``test_accuracy``, ``val_accuracy`` (``None`` without a validation split),
        ``agg_distance`` (``||aggregate - mean of honest vectors||``), ``lr``, ``time``
        (seconds since the start). ``on_metrics(record)`` is called as each one is made.
        """
        cfg = self.config
        history: list[Record] = []
        bar = _progress_bar(cfg.rounds) if progress else None
        start = time.perf_counter()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed + 1)  # attacks drawing from the global RNG
            if self.device.type == "cuda":
                torch.cuda.manual_seed(cfg.seed + 1)
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
                    if bar is not None:
                        bar.update(r, record)
                if self.diverged:
                    break
        seconds = time.perf_counter() - start
        if bar is not None:
            bar.close()
        final = history[-1]
        timings = dict(self.timings)
        timings["rounds"] = float(self.rounds_run)
        return RunResult(
            config=cfg,
            history=history,
            final_accuracy=final["test_accuracy"],
            seconds=seconds,
            timings=timings,
            diverged=self.diverged,
            final_val_accuracy=final["val_accuracy"],
            params=self.params.detach().cpu().clone(),
        )


class _progress_bar:
    """tqdm if installed, else one line per evaluation on stderr."""

    def __init__(self, total: int) -> None:
        self.total, self.done = total, 0
        try:
            from tqdm.auto import tqdm
        except ImportError:
            self.bar = None
        else:
            self.bar = tqdm(total=total, unit="round")

    def update(self, round_: int, record: Record) -> None:
        acc = record["test_accuracy"]
        if self.bar is not None:
            self.bar.update(round_ - self.done)
            self.bar.set_postfix(acc=f"{acc:.3f}", loss=f"{record['train_loss']:.3f}")
        else:
            print(
                f"round {round_}/{self.total}  loss {record['train_loss']:.4f}  "
                f"test acc {acc:.4f}  ({record['time']:.1f}s)",
                file=sys.stderr,
                flush=True,
            )
        self.done = round_

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


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
    return Simulation(config, model=model, dataset=dataset).run(
        on_metrics=on_metrics, progress=progress
    )


__all__ = ["RunResult", "Simulation", "run_experiment"]
