"""``ExperimentConfig``: every setting of one simulated run, checkable before anything runs.

A config is a flat dataclass whose defaults are the quickstart (logistic regression on the
sklearn digits, 10 honest workers, f=2, NNM + trimmed mean under ALIE). ``from_dict`` and
``from_toml`` reject unknown fields and bad values with a ``ValueError`` naming the field and
what is allowed; ``validate()`` additionally builds the aggregation pipeline and the attack and
checks the rule's condition on the number of vectors the server receives.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from byzance import protocols
from byzance.protocols import DEFAULT as DEFAULT_PROTOCOL
from byzance.protocols import PROTOCOLS
from byzance.validation import (
    Constraint,
    Integer,
    Mapping,
    OneOf,
    OptionalOf,
    Real,
    String,
    validate_dataclass,
)

HETEROGENEITY = ("iid", "dirichlet", "gamma", "extreme")
LR_SCHEDULES = ("constant", "step", "cosine", "inverse_sqrt")
NO_ATTACK = "none"
PROTOCOL_NAMES = tuple(PROTOCOLS)

#: field -> constraint, checked (and coerced, e.g. 3.0 -> 3) by ``validate_dataclass`` on every
#: construction; a new field is declared by adding one line here.
CONSTRAINTS: dict[str, Constraint] = {
    "dataset": String(),
    "data_dir": OptionalOf(String(nonempty=False, path=True)),
    "model": String(),
    "n_honest": Integer(low=1),
    "f": Integer(low=0),
    "aggregator": String(),
    "aggregator_params": Mapping(),
    "attack": String(),
    "attack_params": Mapping(),
    "heterogeneity": OneOf(*HETEROGENEITY),
    "alpha": Real(low=0, closed="neither"),
    "gamma": Real(low=0, high=1),
    "batch_size": Integer(low=1),
    "momentum": Real(low=0, high=1, closed="left"),
    "lr": Real(low=0, closed="neither"),
    "lr_schedule": OneOf(*LR_SCHEDULES),
    "weight_decay": Real(low=0),
    "rounds": Integer(low=1),
    "local_steps": Integer(low=1),
    "eval_every": Integer(low=1),
    "seed": Integer(low=0),
    "device": String(),
    "val_fraction": Real(low=0, high=1, closed="left"),
    "server_momentum": Real(low=0, high=1, closed="left"),
    "eval_batch_size": Integer(low=1),
    "protocol": OneOf(*PROTOCOL_NAMES),
    **protocols.constraints(),  # each protocol's own fields (byzance.protocols)
}


def validation_size(val_fraction: float, num_train: int) -> int:
    """Examples held out for validation from ``num_train``: ``round(val_fraction * num_train)``,
    at least 1 when ``val_fraction > 0``, 0 otherwise."""
    return max(1, int(round(val_fraction * num_train))) if val_fraction > 0 else 0


def _attack_name(spec: str) -> str:
    return spec.split("(", 1)[0].strip().lower().replace("-", "_")


@dataclass
class ExperimentConfig:
    """One simulated run of robust distributed SGD (see ``byzance.sim.run_experiment``).

    Data: ``dataset`` (``digits``, ``synthetic``, ``mnist``, ``fashion-mnist``, ``cifar10``) from
    ``data_dir``, split over ``n_honest + f`` workers by ``heterogeneity`` (``iid``;
    ``dirichlet`` with concentration ``alpha``; ``gamma``: a ``gamma`` fraction iid, the rest
    sorted by label; ``extreme``: sorted by label). Workers ``0..n_honest-1`` are honest, the
    last ``f`` Byzantine (their shards are used only by data-poisoning attacks; with
    ``attack="none"`` they are absent). ``val_fraction`` of the training set is held out first
    as a validation set.

    Training: ``rounds`` rounds; each worker samples ``batch_size`` examples with replacement
    from its shard, computes a gradient (or, if ``local_steps`` = K > 1, runs K local SGD steps
    and sends the pseudo-gradient ``(w - w_local) / lr``) and sends its worker-side momentum
    ``m <- momentum * m + (1 - momentum) * g``. The server aggregates with ``aggregator``
    (``aggregators.create(aggregator, f=f, **aggregator_params)``), adds ``weight_decay * w``,
    applies ``server_momentum`` (heavy ball, 0 = none) and steps with ``lr`` scaled by
    ``lr_schedule`` (``constant``; ``step``: x0.1 at 50% and 75% of the rounds; ``cosine``;
    ``inverse_sqrt``: 1/sqrt(t)). Metrics every ``eval_every`` rounds and at the last round;
    the test set is evaluated in batches of ``eval_batch_size``.

    Protocol (``byzance.protocols``): ``protocol = "server"`` (a trusted server, the default)
    or ``"decentralized"`` (no server: each honest node aggregates its peers' vectors with
    ``aggregator``, then their models with ``model_aggregator``; Byzantine nodes tailor their
    vectors to each recipient if ``equivocate``). Which engines run which protocol:
    ``byzance.engines``.
    """

    dataset: str = "digits"
    data_dir: str | None = None
    model: str = "logreg"
    n_honest: int = 10
    f: int = 2
    aggregator: str = "nnm+trimmed_mean"
    aggregator_params: dict[str, Any] = field(default_factory=dict)
    attack: str = "alie"
    attack_params: dict[str, Any] = field(default_factory=dict)
    heterogeneity: str = "iid"
    alpha: float = 1.0
    gamma: float = 1.0
    batch_size: int = 25
    momentum: float = 0.9
    lr: float = 0.1
    lr_schedule: str = "constant"
    weight_decay: float = 1e-4
    rounds: int = 200
    local_steps: int = 1
    eval_every: int = 10
    seed: int = 0
    device: str = "cpu"
    val_fraction: float = 0.0
    server_momentum: float = 0.0
    eval_batch_size: int = 1000
    protocol: str = DEFAULT_PROTOCOL
    model_aggregator: str = PROTOCOLS["decentralized"].fields["model_aggregator"]
    equivocate: bool = PROTOCOLS["decentralized"].fields["equivocate"]

    # ------------------------------------------------------------------ construction
    def __post_init__(self) -> None:
        self._check_fields()

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExperimentConfig:
        """Build from a mapping; unknown fields or bad values raise ``ValueError``."""
        if not isinstance(d, dict):
            raise ValueError(f"ExperimentConfig: expected a dict, got {type(d).__name__}")
        names = cls.field_names()
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ValueError(
                f"ExperimentConfig: unknown field(s) {unknown}; allowed fields: {', '.join(names)}"
            )
        values = dict(d)
        for key in ("aggregator_params", "attack_params"):
            if key in values:
                values[key] = dict(values[key]) if isinstance(values[key], dict) else values[key]
        return cls(**values)

    @classmethod
    def from_toml(cls, path: str | Path) -> ExperimentConfig:
        """Read a TOML file of top-level ``field = value`` lines (or an ``[experiment]`` table)."""
        try:
            import tomllib  # type: ignore[import-not-found]
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib  # type: ignore[no-redef]
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
        if set(data) == {"experiment"} and isinstance(data["experiment"], dict):
            data = data["experiment"]
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict of every field (``from_dict(to_dict())`` round-trips)."""
        return dataclasses.asdict(self)

    def key(self, engine: str = "sim", id_fields: dict[str, Any] | None = None) -> str:
        """Stable 16-hex-digit id of this config run on ``engine``: its run id in the results
        database (``byzance.results.run_id``, the one definition). ``id_fields``: the engine's
        options that change the result, as ``Engine.id_fields`` gives them; to start from an
        engine's options, use ``byzance.runner.run_key(config, engine, options)``."""
        from byzance.results import run_id

        return run_id(self.to_dict(), engine, id_fields)

    def replace(self, **changes: Any) -> ExperimentConfig:
        """Copy with some fields changed (checked like ``from_dict``)."""
        return ExperimentConfig.from_dict({**self.to_dict(), **changes})

    # ------------------------------------------------------------------ checks
    @property
    def has_attack(self) -> bool:
        return _attack_name(self.attack) != NO_ATTACK and self.f > 0

    @property
    def n_received(self) -> int:
        """Number of vectors the server aggregates each round."""
        return self.n_honest + (self.f if self.has_attack else 0)

    def _check_fields(self) -> None:
        validate_dataclass(self, CONSTRAINTS)

    def validate(self, *, custom_model: bool = False, custom_dataset: bool = False) -> None:
        """Check everything checkable before running; raise ``ValueError`` naming the field.

        Covers field types and ranges, the dataset/model names (the model is not checked if
        ``custom_model``), the device, the data (unless ``custom_dataset``: see
        ``_check_data``), the aggregation pipeline (built and checked with ``check(n)`` on the
        number of vectors the server receives: ``n_honest + f``, or ``n_honest`` with
        ``attack="none"``) and the attack (built with its parameters).
        """
        self._check_fields()
        from byzance import datasets, models

        try:
            datasets.canonical_name(self.dataset)
        except ValueError as exc:
            raise ValueError(
                f"ExperimentConfig.dataset: expected one of {', '.join(datasets.NAMES)}, "
                f"got {self.dataset!r}"
            ) from exc
        if not custom_model and self.model not in models.MODELS:
            raise ValueError(
                f"ExperimentConfig.model: expected one of {', '.join(models.MODELS)}, "
                f"got {self.model!r}"
            )
        self._check_device()
        if not custom_dataset:
            self._check_data(check_model=not custom_model)
        agg = self.build_aggregator()
        self.build_attack(agg)
        self.build_model_aggregator()  # a bad name is an error even where it is unused

    def _check_data(self, check_model: bool = True) -> None:
        """What the dataset declares (``datasets.dataset_info``, no data loaded) against the
        config: the data dir exists and the files found look right (``datasets.check_files``,
        cheap and cached), the model fits the inputs (``models.check_fits``: one forward pass
        on a batch of one, cached), and after the validation split (``validation_size``)
        every one of the ``n_honest + f`` workers can get at least one training example.
        (``heterogeneity="dirichlet"`` may still leave a worker empty with few examples per
        worker: the partition says so at set-up.)"""
        from byzance import datasets, models

        info = datasets.dataset_info(self.dataset)
        if info.reads_files:
            try:
                datasets.check_data_dir(self.data_dir)
            except ValueError as exc:
                raise ValueError(f"ExperimentConfig.data_dir: {exc}") from exc
            try:
                datasets.check_files(info.name, self.data_dir)
            except ValueError as exc:
                raise ValueError(f"ExperimentConfig.dataset: {info.name}: {exc}") from exc
        if check_model and self.model in models.MODELS:
            try:
                models.check_fits(self.model, info.input_shape, info.num_classes)
            except ValueError as exc:
                raise ValueError(
                    f"ExperimentConfig.model: {self.model!r} cannot run on dataset {info.name!r} "
                    f"(inputs of shape {info.input_shape}): {exc}"
                ) from exc
        workers, n = self.n_honest + self.f, info.num_train
        n_val = validation_size(self.val_fraction, n)
        need = f"the {workers} workers (n_honest={self.n_honest} + f={self.f}) need one each"
        if n < workers:
            raise ValueError(
                f"ExperimentConfig.n_honest: dataset {info.name!r} has {n} training examples "
                f"and {need}; use at most {n} workers"
            )
        if n - n_val < workers:
            raise ValueError(
                f"ExperimentConfig.val_fraction: {self.val_fraction} holds out {n_val} of the "
                f"{n} training examples of {info.name!r} for validation, leaving {n - n_val}, "
                f"and {need}; use val_fraction <= {(n - workers) / n:.6g}"
            )

    def _check_device(self) -> None:
        import torch

        try:
            dev = torch.device(self.device)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(
                f"ExperimentConfig.device: expected e.g. 'cpu' or 'cuda:0', got {self.device!r}"
            ) from exc
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(
                f"ExperimentConfig.device: {self.device!r} requested but CUDA is not available"
            )

    def build_aggregator(self) -> Any:
        """The server's pipeline, checked on the number of vectors it receives."""
        from byzance import aggregators

        try:
            agg = aggregators.create(self.aggregator, f=self.f, **self.aggregator_params)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"ExperimentConfig.aggregator: {exc}") from exc
        try:
            agg.check(self.n_received)
        except ValueError as exc:
            raise ValueError(
                f"ExperimentConfig.aggregator: {self.aggregator!r} with f={self.f} cannot run on "
                f"the n={self.n_received} vectors the server receives "
                f"(n_honest={self.n_honest}, f={self.f}, attack={self.attack!r}): {exc}"
            ) from exc
        return agg

    def build_model_aggregator(self) -> Any:
        """The decentralised protocol's rule for the model exchange (built with ``f``)."""
        from byzance import aggregators

        try:
            return aggregators.create(self.model_aggregator, f=self.f)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"ExperimentConfig.model_aggregator: {exc}") from exc

    def build_attack(self, aggregator: Any) -> Any:
        """The Byzantine workers' attack, or ``None`` for ``attack="none"``."""
        if _attack_name(self.attack) == NO_ATTACK:
            if self.attack_params:
                raise ValueError(
                    "ExperimentConfig.attack_params: must be empty with attack='none', "
                    f"got {self.attack_params!r}"
                )
            return None
        from byzance import attacks

        try:
            return attacks.create(self.attack, aggregator=aggregator, **self.attack_params)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"ExperimentConfig.attack: {exc}") from exc
