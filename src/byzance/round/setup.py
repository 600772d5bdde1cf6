"""What a run is built from, once for every engine: data, shards, model, rules, attack.

``Setup(config)`` validates the config, loads the dataset (or takes one), holds out
``val_fraction`` of the training set as a validation split (seeded), partitions the rest among
all ``n_honest + f`` workers (whatever the attack, so honest data are the same under every
attack; with a client population, ``byzance.round.clients``, among its ``n_clients`` clients,
``h`` and ``f`` then being its honest and Byzantine counts), builds the model (seeded) and its
flat initial parameters, the aggregation pipeline and the attack. From it each engine takes
the round's parts:

``make_workers(ids)``
    a ``Workers`` step for those workers (all of them: the simulator; one: a Ray actor or a
    node), holding only their shards' examples when asked for a subset;
``make_adversary()``
    the gradient attack's ``Adversary``;
``make_server(params)``
    the trusted server's step (``Server``) on ``params``;
``evaluate(params)`` / ``evaluate_validation(params)``
    accuracy on the test set / the validation split (chance when ``params`` is not finite).

Workers' batches are sampled with replacement from their shards (a shard smaller than
``batch_size`` is fine; an empty shard is an error at set-up).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from byzance.round.flat_model import FlatModel
from byzance.round.sampling import Shards
from byzance.round.server import Server, lr_at
from byzance.round.workers import Workers


def is_data_attack(attack: Any) -> bool:
    from byzance.attacks import DataAttack

    return isinstance(attack, DataAttack)


class Setup:
    """The parts of one run built from an ``ExperimentConfig`` (see the module docstring)."""

    def __init__(self, config: Any, *, model: nn.Module | None = None, dataset: Any = None):
        from byzance.sim.config import ExperimentConfig

        if isinstance(config, dict):
            config = ExperimentConfig.from_dict(config)
        config.validate(custom_model=model is not None, custom_dataset=dataset is not None)
        self.config = cfg = config
        self.device = torch.device(cfg.device)
        self.h, self.f = cfg.n_honest, cfg.f
        if cfg.n_clients is not None:  # a client population: its honest and Byzantine clients
            self.h, self.f = cfg.population.honest, cfg.population.byzantine
        self.aggregator = cfg.build_aggregator()
        from byzance.round.zero_order import build_estimator

        #: FedZero's two-point estimator (``byzance.round.zero_order``), None: backprop
        self.estimator = build_estimator(cfg.gradient_estimator, dict(cfg.estimator_params))
        self.attack = cfg.build_attack(self.aggregator) if cfg.has_attack else None
        self.data_attack = self.attack is not None and is_data_attack(self.attack)
        self.gradient_attack = self.attack is not None and not self.data_attack
        self._load_data(dataset)
        self._build_model(model)
        from byzance.round.crash_training import build as build_crash

        #: the fault-tolerance regulariser (``byzance.round.crash_training``), None: off
        self.crash = build_crash(cfg, self.flat.module)
        if self.data_attack:  # surface e.g. a model the poisoning cannot handle, before running
            probe = self.make_workers()
            probe._params = self.params0
            try:
                probe.batch(torch.tensor([self.h], device=self.device), 1, 0)
            except (ValueError, TypeError) as exc:
                raise ValueError(
                    f"ExperimentConfig.attack: {cfg.attack!r} cannot poison the data of model "
                    f"{cfg.model!r}: {exc}"
                ) from exc
            self.attack.reset()  # type: ignore[union-attr]

    # ------------------------------------------------------------------ set-up
    def _load_data(self, dataset: Any) -> None:
        from byzance.sim.config_checks import validation_size

        cfg = self.config
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
            n_val = validation_size(cfg.val_fraction, x.shape[0])
            if n_val >= x.shape[0]:
                raise ValueError(
                    f"ExperimentConfig.val_fraction: {cfg.val_fraction} leaves no training data"
                )
            self.x_val, self.y_val = x[perm[:n_val]].to(self.device), y[perm[:n_val]]
            self.y_val = self.y_val.to(self.device)
            x, y = x[perm[n_val:]], y[perm[n_val:]]
        from byzance.datasets import partition

        shards = partition(
            y,
            self.h + self.f,
            cfg.heterogeneity,
            alpha=cfg.alpha,
            gamma=cfg.gamma,
            seed=cfg.seed,
            min_size=None if cfg.n_clients is None else cfg.min_client_examples,
        )
        self.shards = Shards(shards, device=self.device)
        self.x_train = x.to(self.device)
        self.y_train = y.to(self.device)
        self.x_test = dataset.x_test.to(self.device)
        self.y_test = dataset.y_test.to(self.device)

    def _build_model(self, model: nn.Module | None) -> None:
        cfg = self.config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            if model is None:
                from byzance.models import create_model

                model = create_model(cfg.model, tuple(self.dataset.input_shape), self.num_classes)
            else:
                model = copy.deepcopy(model)
        model = model.to(self.device)
        model.train()
        self.flat = FlatModel(model)
        self.dim = self.flat.dim
        self.params0 = self.flat.flatten().to(self.device)

    # ------------------------------------------------------------------ the round's parts
    def lr_at(self, round_: int) -> float:
        cfg = self.config
        return lr_at(cfg.lr_schedule, cfg.lr, round_, cfg.rounds)

    def make_workers(self, ids: Sequence[int] | None = None) -> Workers:
        """The worker step of ``ids`` (default: every worker, sharing the training tensors);
        for a subset, a copy of the model and of only those workers' examples, on the CPU."""
        cfg = self.config
        common = {
            "seed": cfg.seed,
            "batch_size": cfg.batch_size,
            "local_steps": cfg.local_steps,
            "beta": cfg.momentum,
            "lr_at": _LrAt(cfg.lr_schedule, cfg.lr, cfg.rounds),
            "num_classes": self.num_classes,
            "n_honest": self.h,
            "poisoner": self.attack if self.data_attack else None,
            "estimator": self.estimator,
            "crash": self.crash,
        }
        if ids is None:
            all_ids = torch.arange(self.h + self.f, device=self.device)
            return Workers(
                self.flat, self.x_train, self.y_train, self.shards, all_ids, **common
            )
        sizes = self.shards.sizes.cpu()
        index = self.shards.index.cpu()
        parts = [index[w, : int(sizes[w])] for w in ids]
        rows = torch.cat(parts)
        x, y = self.x_train.cpu()[rows].contiguous(), self.y_train.cpu()[rows].contiguous()
        starts = torch.tensor([0, *[p.numel() for p in parts]]).cumsum(0)
        local = Shards([torch.arange(int(starts[i]), int(starts[i + 1])) for i in range(len(ids))])
        module = copy.deepcopy(self.flat.module).cpu()
        poisoner = common["poisoner"]
        common["poisoner"] = copy.deepcopy(poisoner) if poisoner is not None else None
        return Workers(FlatModel(module), x, y, local, torch.tensor(list(ids)), **common)

    def make_adversary(self) -> Any:
        """The gradient attack's ``Adversary`` (None without one)."""
        from byzance.round.adversary import Adversary

        if not self.gradient_attack:
            return None
        return Adversary(self.attack, self.f, self.config.seed, name=self.config.attack)

    def make_server(self, params: torch.Tensor | None = None) -> Server:
        """The server step on ``params`` (default: a copy of the initial parameters)."""
        cfg = self.config
        return Server(
            self.params0.clone() if params is None else params,
            self.aggregator,
            lr=cfg.lr,
            schedule=cfg.lr_schedule,
            rounds=cfg.rounds,
            weight_decay=cfg.weight_decay,
            momentum=cfg.server_momentum,
        )

    def evaluate(self, params: torch.Tensor) -> float:
        """Accuracy on the full test set (chance if ``params`` is not finite)."""
        if not bool(torch.isfinite(params).all()):
            return 1.0 / self.num_classes
        bs = self.config.eval_batch_size
        return self.flat.accuracy(params, self.x_test, self.y_test, bs)

    def evaluate_validation(self, params: torch.Tensor) -> float | None:
        """Accuracy on the validation split (None if ``val_fraction`` = 0)."""
        if self.x_val is None or self.y_val is None:
            return None
        if not bool(torch.isfinite(params).all()):
            return 1.0 / self.num_classes
        bs = self.config.eval_batch_size
        return self.flat.accuracy(params, self.x_val, self.y_val, bs)


class _LrAt:
    """``lr_at`` of a schedule as a picklable callable (shipped to actors)."""

    def __init__(self, schedule: str, lr: float, rounds: int) -> None:
        self.schedule, self.lr, self.rounds = schedule, lr, rounds

    def __call__(self, round_: int) -> float:
        return lr_at(self.schedule, self.lr, round_, self.rounds)
