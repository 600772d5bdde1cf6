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
    "Collaborative learning in the jungle", NeurIPS 2021; ByzSGD, PODC 2020.

The run id keys a protocol's settings only when that protocol is used, so a setting that does
not apply never splits otherwise identical runs (``id_config``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from byzance.validation import Boolean, Constraint, String


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
}
DEFAULT = "server"
#: every protocol-specific config field
PROTOCOL_FIELDS = frozenset(k for p in PROTOCOLS.values() for k in p.fields)

#: config fields added after run ids were fixed, with their defaults: left out of a run's id
#: while at the default, so that every run made before a field existed keeps its id (a grid
#: resumes instead of running everything again). A new config field that is not a protocol's
#: goes here.
LATER_FIELDS: dict[str, Any] = {}


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
