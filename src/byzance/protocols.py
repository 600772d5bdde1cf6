"""Protocols: who aggregates what in a round, a second axis beside the engine that runs it.

A protocol is selected with the config field ``protocol``; its own settings are config fields
too (declared here, with their defaults), and an engine declares which protocols it runs
(``Engine.protocols``).

``server`` (default)
    a trusted server aggregates the n workers' vectors with ``aggregator`` and takes the
    optimizer step; the workers compute at the server's parameters (Blanchard et al. 2017).
``decentralized``
    no trusted server: every honest node keeps its own model, aggregates its peers' vectors
    with ``aggregator``, steps, then aggregates their models with ``model_aggregator``;
    Byzantine nodes may send each peer a different vector (``equivocate``). El-Mhamdi et al.,
    "Collaborative learning in the jungle", NeurIPS 2021; ByzSGD, PODC 2020. With
    ``agreement`` (``"mda"`` or ``"trimmed_mean"``, not protocol fields: ``LATER_FIELDS``) the
    model exchange is the jungle paper's averaging agreement (``agreement_rounds`` rounds).
``byzsgd``
    ByzSGD: ``n_servers`` replicas of the server, ``f_servers`` Byzantine; workers take the
    coordinate-wise median of the servers' models, each correct server aggregates the workers'
    vectors with ``aggregator`` and steps, and every ``contraction_every`` steps the servers
    contract their models (median); Byzantine servers send models forged by ``server_attack``
    (a catalog attack applied to models, or ``"contraction"``), per recipient if
    ``equivocate``. El Mhamdi et al., PODC 2020; ``docs/byzsgd.md``.
``async``
    asynchronous SGD: the server applies each vector as it arrives, at the model version the
    worker read, through Kardam's Lipschitz and frequency filters (``async_filter``) and
    staleness dampening (``dampening``, ``dampening_alpha``); the simulator's timing model
    (``compute_time``, ``straggler_fraction``, ``straggler_slowdown``, ``byzantine_speed``)
    and the attack aimed at the Lipschitz filter (``filter_attack``). Damaskinos et al.,
    "Asynchronous Byzantine Machine Learning (the case of SGD)", ICML 2018; ``docs/async.md``.

The run id keys a protocol's settings only when that protocol is used, so a setting that does
not apply never splits otherwise identical runs (``id_config``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from byzance.validation import Boolean, Constraint, Integer, OneOf, Real, String


@dataclass(frozen=True)
class Protocol:
    """A protocol's declaration: its config fields with their defaults and constraints
    (``ExperimentConfig`` declares the same fields with these defaults; ``CONSTRAINTS`` there
    takes these constraints)."""

    name: str
    summary: str
    #: its config fields and their defaults
    fields: dict[str, Any] = field(default_factory=dict)
    #: field -> constraint (``byzance.validation``), checked on every config
    constraints: dict[str, Constraint] = field(default_factory=dict)


PROTOCOLS: dict[str, Protocol] = {
    "server": Protocol("server", "a trusted server aggregates and steps (default)"),
    "decentralized": Protocol(
        "decentralized",
        "no trusted server: every honest node aggregates its peers' vectors, then models",
        {"model_aggregator": "trimmed_mean", "equivocate": True},
        {"model_aggregator": String(), "equivocate": Boolean()},
    ),
    "async": Protocol(
        "async",
        "asynchronous SGD: the server applies each vector as it arrives, through Kardam's "
        "filters and staleness dampening (byzance.round.kardam, byzance.sim.asynchronous)",
        {
            "async_filter": "kardam",
            "dampening": "exponential",
            "dampening_alpha": 0.2,
            "compute_time": "exponential",
            "straggler_fraction": 0.0,
            "straggler_slowdown": 10.0,
            "byzantine_speed": 1.0,
            "filter_attack": "none",
        },
        {
            "async_filter": OneOf("kardam", "lipschitz", "frequency", "none"),
            "dampening": OneOf("exponential", "inverse", "none"),
            "dampening_alpha": Real(low=0),
            "compute_time": OneOf("exponential", "fixed"),
            "straggler_fraction": Real(low=0, high=1),
            "straggler_slowdown": Real(low=1),
            "byzantine_speed": Real(low=0, closed="neither"),
            "filter_attack": OneOf("none", "lipschitz_edge"),
        },
    ),
    "byzsgd": Protocol(
        "byzsgd",
        "ByzSGD: n_servers replicated servers, f_servers Byzantine, median pulls and median "
        "contraction every contraction_every steps (byzance.sim.byzsgd)",
        {
            "n_servers": 5,
            "f_servers": 1,
            "contraction_every": 10,
            "server_attack": "contraction",
            "equivocate": True,
        },
        {
            "n_servers": Integer(low=1),
            "f_servers": Integer(low=0),
            "contraction_every": Integer(low=1),
            "server_attack": String(),
            "equivocate": Boolean(),
        },
    ),
}
DEFAULT = "server"
#: every protocol-specific config field
PROTOCOL_FIELDS = frozenset(k for p in PROTOCOLS.values() for k in p.fields)

#: config fields added after run ids were fixed, with their defaults: left out of a run's id
#: while at the default, so that every run made before a field existed keeps its id (a grid
#: resumes instead of running everything again). A new config field that is not a protocol's
#: goes here.
LATER_FIELDS: dict[str, Any] = {
    # a client population sampled per round (byzance.round.clients)
    "n_clients": None,
    "byzantine_clients": 0,
    "clients_per_round": "all",
    "f_exceed_probability": None,
    "min_client_examples": 3,
    # the gradient estimator (byzance.round.zero_order: FedZero)
    "gradient_estimator": "backprop",
    "estimator_params": {},
    # averaging agreement of protocol decentralized (byzance.round.agreement)
    "agreement": "none",
    "agreement_rounds": 0,
    # the fault-tolerance regulariser (byzance.round.crash_training)
    "crash_regularizer": {},
}


def constraints() -> dict[str, Constraint]:
    """Every protocol's field constraints, for ``ExperimentConfig``."""
    return {k: c for p in PROTOCOLS.values() for k, c in p.constraints.items()}


def names() -> tuple[str, ...]:
    return tuple(PROTOCOLS)


def id_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config as the run id sees it: the protocol and its settings only where a protocol
    other than ``server`` is used, and the ``LATER_FIELDS`` only away from their defaults (so
    ids of runs made before a field existed are kept).

    The decentralised protocol keeps the form its ids had before it was a config field:
    ``{"decentralized": {"model_aggregator": ..., "equivocate": ...}}``.
    """
    out = {
        k: v
        for k, v in config.items()
        if k not in PROTOCOL_FIELDS
        and k != "protocol"
        and not (k in LATER_FIELDS and v == LATER_FIELDS[k])
    }
    name = config.get("protocol", DEFAULT)
    if name == DEFAULT:
        return out
    proto = PROTOCOLS.get(name)
    settings = {k: config.get(k, d) for k, d in (proto.fields if proto else {}).items()}
    if name == "decentralized":
        out["decentralized"] = settings
    else:
        out["protocol"] = {"name": name, **settings}
    return out
