"""Labels and keys of a run's config: the rule / attack / seed, hyper-parameters and setting.

A finished run's config is split into

* the **rule** (``aggregator``), the **attack** (``attack`` + ``attack_params``), the **seed**;
* **hyper-parameters** (``HYPER_FIELDS``: lr, its schedule, momentum, ...), chosen per rule;
* the **setting** (every other field: dataset, model, n_honest, f, heterogeneity, rounds, ...;
  ``alpha`` / ``gamma`` only as part of the heterogeneity, e.g. ``dirichlet(alpha=0.1)``).

Settings and hyper-parameters are ``Key`` tuples of ``(field, value)`` pairs.
"""

from __future__ import annotations

import json
from typing import Any

HYPER_FIELDS = (
    "lr",
    "lr_schedule",
    "momentum",
    "server_momentum",
    "weight_decay",
    "batch_size",
    "local_steps",
    "aggregator_params",
)
IGNORED_FIELDS = ("data_dir", "device", "eval_every", "eval_batch_size")
SPECIAL_FIELDS = ("aggregator", "attack", "attack_params", "seed")
NO_ATTACK = "none"


Key = tuple[tuple[str, Any], ...]


def _hashable(value: Any) -> Any:
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return value


def _show(value: Any) -> str:
    if isinstance(value, str) and value.startswith("{"):
        try:
            inner = json.loads(value)
        except ValueError:
            return value
        return ", ".join(f"{k}={v}" for k, v in inner.items()) or "default"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _label(key: Key) -> str:
    return ", ".join(f"{k}={_show(v)}" for k, v in key) or "default"


def heterogeneity_label(config: dict[str, Any]) -> str:
    """``iid``, ``dirichlet(alpha=0.1)``, ``gamma=0.5`` or ``extreme``."""
    kind = config.get("heterogeneity", "iid")
    if kind == "dirichlet":
        return f"dirichlet(alpha={_show(float(config.get('alpha', 1.0)))})"
    if kind == "gamma":
        return f"gamma={_show(float(config.get('gamma', 1.0)))}"
    return str(kind)


def attack_label(config: dict[str, Any]) -> str:
    params = config.get("attack_params") or {}
    name = str(config.get("attack", NO_ATTACK))
    if not params:
        return name
    return f"{name}({', '.join(f'{k}={_show(v)}' for k, v in sorted(params.items()))})"


def _sort_key(key: Key) -> tuple:
    return tuple((k, (0, v) if isinstance(v, (int, float)) else (1, str(v))) for k, v in key)


def _split(config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(setting fields, hyper fields) of a config, with irrelevant alpha/gamma dropped."""
    setting, hyper = {}, {}
    for key, value in config.items():
        if key in SPECIAL_FIELDS or key in IGNORED_FIELDS:
            continue
        (hyper if key in HYPER_FIELDS else setting)[key] = _hashable(value)
    # alpha / gamma only matter for their own scheme: folded into the heterogeneity label
    setting.pop("alpha", None)
    setting.pop("gamma", None)
    setting["heterogeneity"] = heterogeneity_label(config)
    return setting, hyper
