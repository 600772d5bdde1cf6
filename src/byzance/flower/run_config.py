"""Configuration the Flower way: kebab-case keys of ``[tool.flwr.app.config]``.

Flower apps read their settings from ``context.run_config`` (the app's
``[tool.flwr.app.config]`` table, overridden by ``flwr run --run-config "k=v ..."``). The
robust strategies read these keys (all optional; parameters of a rule or an attack go in its
name, e.g. ``"centered_clipping(tau=0.1)"``, ``"ipm(epsilon=0.5)"``):

===========================  ================================  ==========================
key                          strategy argument                 default
===========================  ================================  ==========================
``byzance-aggregator``       ``aggregator`` (rule or chain)    ``"trimmed_mean"``
``byzance-f``                ``f``                             0
``byzance-attack``           ``attack`` (gradient attack)      ``"none"``
``byzance-byzantine-nodes``  ``byzantine_nodes``               0
``byzance-on-too-few``       ``on_too_few``                    ``"skip"``
``byzance-seed``             ``seed``                          0
``fraction-train``           ``fraction_train`` (``FedAvg``)   Flower's
``fraction-evaluate``        ``fraction_evaluate``             Flower's
``min-train-nodes``          ``min_train_nodes``               Flower's
``min-evaluate-nodes``       ``min_evaluate_nodes``            Flower's
``min-available-nodes``      ``min_available_nodes``           Flower's
===========================  ================================  ==========================

``byzance-label-flip-nodes`` (k, default 0) is read by ``byzance.flower.mods``: the nodes of
partition id < k flip their labels. Any other ``byzance-*`` key is refused (a typo would
otherwise run the experiment without its setting).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from byzance.validation import Constraint, Integer, OneOf, Real, String, check_param

#: run-config key -> (strategy keyword, constraint)
KEYS: dict[str, tuple[str, Constraint]] = {
    "byzance-aggregator": ("aggregator", String()),
    "byzance-f": ("f", Integer(low=0)),
    "byzance-attack": ("attack", String()),
    "byzance-byzantine-nodes": ("byzantine_nodes", Integer(low=0)),
    "byzance-on-too-few": ("on_too_few", OneOf("skip", "raise")),
    "byzance-seed": ("seed", Integer()),
    "fraction-train": ("fraction_train", Real(low=0, high=1)),
    "fraction-evaluate": ("fraction_evaluate", Real(low=0, high=1)),
    "min-train-nodes": ("min_train_nodes", Integer(low=0)),
    "min-evaluate-nodes": ("min_evaluate_nodes", Integer(low=0)),
    "min-available-nodes": ("min_available_nodes", Integer(low=0)),
}
#: keys read by the ClientApp side (``byzance.flower.mods``)
CLIENT_KEYS: dict[str, Constraint] = {"byzance-label-flip-nodes": Integer(low=0)}


def check_byzance_keys(run_config: Mapping[str, Any]) -> None:
    """Refuse an unknown ``byzance-*`` key, naming the known ones."""
    known = {k for k in KEYS if k.startswith("byzance-")} | set(CLIENT_KEYS)
    unknown = sorted(k for k in run_config if k.startswith("byzance-") and k not in known)
    if unknown:
        raise ValueError(
            f"run_config: unknown key(s) {unknown}; byzance reads {sorted(known)}"
        )


def strategy_kwargs(run_config: Mapping[str, Any]) -> dict[str, Any]:
    """The strategy's keyword arguments from the keys of ``run_config`` that are present,
    each checked (``run_config.byzance-f: expected an int >= 0, got -1``)."""
    check_byzance_keys(run_config)
    out: dict[str, Any] = {}
    for key, (name, constraint) in KEYS.items():
        if key in run_config:
            out[name] = check_param("run_config", key, run_config[key], constraint)
    return out


def label_flip_nodes(run_config: Mapping[str, Any]) -> int:
    """``byzance-label-flip-nodes`` (0 when absent), checked."""
    check_byzance_keys(run_config)
    key = "byzance-label-flip-nodes"
    return check_param("run_config", key, run_config.get(key, 0), CLIENT_KEYS[key])
