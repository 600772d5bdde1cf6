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
from byzance.sim import config_checks
from byzance.validation import (
    AnyOf,
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
    # a client population sampled per round (byzance.round.clients)
    "n_clients": OptionalOf(Integer(low=1)),
    "byzantine_clients": AnyOf(Integer(low=0, floats=False), Real(low=0, high=1, closed="left")),
    "clients_per_round": AnyOf(Integer(low=1), OneOf("all")),
    "f_exceed_probability": OptionalOf(Real(low=0, high=1, closed="neither")),
    "min_client_examples": Integer(low=1),
    # the gradient estimator (byzance.round.zero_order: FedZero)
    "gradient_estimator": OneOf("backprop", "zero_order"),
    "estimator_params": Mapping(),
    # averaging agreement of protocol decentralized (byzance.round.agreement)
    "agreement": OneOf("none", "mda", "trimmed_mean"),
    "agreement_rounds": Integer(low=0),
    "crash_regularizer": Mapping(),  # byzance.round.crash_training
    **protocols.constraints(),  # each protocol's own fields (byzance.protocols)
}


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

    Client population (``byzance.round.clients``, cross-device federated learning): with
    ``n_clients`` = N set, the workers are N clients of which ``byzantine_clients`` (a count,
    or a fraction of N) are Byzantine; each round samples ``clients_per_round`` of them
    (``"all"``: every client), so the Byzantine count of a round is hypergeometric; ``f`` is
    the aggregator's f, raised to the smallest value exceeded with probability at most
    ``f_exceed_probability`` when that is set; every client gets at least
    ``min_client_examples`` examples; ``n_honest`` is not used.

    Gradient estimator: ``gradient_estimator = "backprop"`` (default) or ``"zero_order"``
    (FedZero, ``byzance.round.zero_order``: workers send two-point finite differences along
    shared-seed random directions, with ``estimator_params`` directions, radius, queries,
    robust).

    Protocol (``byzance.protocols``): ``protocol = "server"`` (a trusted server, the default)
    or ``"decentralized"`` (no server: each honest node aggregates its peers' vectors with
    ``aggregator``, then their models with ``model_aggregator``; Byzantine nodes tailor their
    vectors to each recipient if ``equivocate``). Which engines run which protocol:
    ``byzance.engines``. ``"async"``: the server applies each vector as it arrives, through
    Kardam's filters (``async_filter``) and staleness dampening (``dampening``,
    ``dampening_alpha``), with the simulator's timing model (``compute_time``,
    ``straggler_fraction``, ``straggler_slowdown``, ``byzantine_speed``) and the attack aimed
    at the Lipschitz filter (``filter_attack``); see ``byzance.sim.asynchronous``.
    ``"byzsgd"``: ``n_servers`` server replicas, ``f_servers`` of them Byzantine (models
    forged by ``server_attack``), contracted every ``contraction_every`` steps; see
    ``byzance.sim.byzsgd``. ``agreement`` (``"none"``, ``"mda"``, ``"trimmed_mean"``) makes the
    decentralised model exchange an averaging agreement of ``agreement_rounds`` rounds (0: the
    logarithmic schedule; ``byzance.round.agreement``). ``crash_regularizer``: ``{}`` (off) or
    ``{weight, layer, p}``: honest workers add the fault-tolerance regulariser's gradient
    (``byzance.round.crash_training``).
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
    async_filter: str = PROTOCOLS["async"].fields["async_filter"]
    dampening: str = PROTOCOLS["async"].fields["dampening"]
    dampening_alpha: float = PROTOCOLS["async"].fields["dampening_alpha"]
    compute_time: str = PROTOCOLS["async"].fields["compute_time"]
    straggler_fraction: float = PROTOCOLS["async"].fields["straggler_fraction"]
    straggler_slowdown: float = PROTOCOLS["async"].fields["straggler_slowdown"]
    byzantine_speed: float = PROTOCOLS["async"].fields["byzantine_speed"]
    filter_attack: str = PROTOCOLS["async"].fields["filter_attack"]
    n_servers: int = PROTOCOLS["byzsgd"].fields["n_servers"]
    f_servers: int = PROTOCOLS["byzsgd"].fields["f_servers"]
    contraction_every: int = PROTOCOLS["byzsgd"].fields["contraction_every"]
    server_attack: str = PROTOCOLS["byzsgd"].fields["server_attack"]
    n_clients: int | None = None
    byzantine_clients: int | float = 0
    clients_per_round: int | str = "all"
    f_exceed_probability: float | None = None
    min_client_examples: int = 3
    gradient_estimator: str = "backprop"
    estimator_params: dict[str, Any] = field(default_factory=dict)
    agreement: str = "none"
    agreement_rounds: int = 0
    crash_regularizer: dict[str, Any] = field(default_factory=dict)

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
        if self.n_clients is not None:  # a population: its Byzantine clients attack
            return _attack_name(self.attack) != NO_ATTACK and self.population.byzantine > 0
        return _attack_name(self.attack) != NO_ATTACK and self.f > 0

    @property
    def n_received(self) -> int:
        """Number of vectors the server aggregates each round."""
        if self.n_clients is not None:  # the sampled clients
            return self.population.per_round
        return self.n_honest + (self.f if self.has_attack else 0)

    @property
    def population(self) -> Any:
        """The resolved client population (``byzance.round.clients.Population``; requires
        ``n_clients``)."""
        from byzance.round.clients import Population

        return Population.of(self)

    @property
    def aggregator_f(self) -> int:
        """The f the aggregator is built with: ``f``, or with a client population and
        ``f_exceed_probability`` the hypergeometric bound (``byzance.round.clients``)."""
        return self.f if self.n_clients is None else self.population.aggregator_f

    def _check_fields(self) -> None:
        validate_dataclass(self, CONSTRAINTS)

    def validate(self, *, custom_model: bool = False, custom_dataset: bool = False) -> None:
        """Check everything checkable before running; raise ``ValueError`` naming the field.

        Covers field types and ranges, the dataset/model names (the model is not checked if
        ``custom_model``), the device, the data (unless ``custom_dataset``: see
        ``config_checks.check_data``), the aggregation pipeline (built and checked with
        ``check(n)`` on the number of vectors the server receives: ``n_honest + f``, or
        ``n_honest`` with ``attack="none"``), the attack (built with its parameters) and the
        conditions of the protocol and of every setting beyond the base round
        (``config_checks.check_settings``).
        """
        self._check_fields()
        config_checks.check_population_fields(self)
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
        config_checks.check_device(self)
        if not custom_dataset:
            config_checks.check_data(self, check_model=not custom_model)
        agg = self.build_aggregator()
        self.build_attack(agg)
        self.build_model_aggregator()  # a bad name is an error even where it is unused
        config_checks.check_settings(self, custom_model=custom_model)

    def build_aggregator(self) -> Any:
        """The server's pipeline, checked on the number of vectors it receives."""
        from byzance import aggregators

        try:
            agg = aggregators.create(self.aggregator, f=self.aggregator_f, **self.aggregator_params)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"ExperimentConfig.aggregator: {exc}") from exc
        try:
            agg.check(self.n_received)
        except ValueError as exc:
            senders = (
                f"n_honest={self.n_honest}, f={self.f}"
                if self.n_clients is None
                else f"clients_per_round={self.clients_per_round}, n_clients={self.n_clients}"
            )
            raise ValueError(
                f"ExperimentConfig.aggregator: {self.aggregator!r} with f={self.aggregator_f} "
                f"cannot run on the n={self.n_received} vectors the server receives "
                f"({senders}, attack={self.attack!r}): {exc}"
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
