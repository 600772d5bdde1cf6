"""byzance inside Flower (``pip install "byzance[flower]"``).

* ``RobustFedAvg``: a strategy of Flower's Message API (``flwr.serverapp.strategy``) that
  aggregates the clients' updates with any byzance rule or chain (``byzance.flower.strategy``);
* ``LegacyRobustFedAvg``: the same for the legacy API (``flwr.server.strategy``;
  ``byzance.flower.legacy``);
* ``RobustFedAvg.from_run_config(context.run_config)``: the ``byzance-*`` keys of
  ``[tool.flwr.app.config]`` (``byzance.flower.run_config``);
* the Byzantine switch (``attack=``, ``byzantine_nodes=``: chosen nodes send what a byzance
  gradient attack forges) and ``label_flipping_mod`` / ``poison_labels`` for data attacks
  (``byzance.flower.mods``);
* ``run_flower(config)``: an ``ExperimentConfig`` as a Flower simulation, what
  ``byzance run --engine flower`` runs (``byzance.flower.simulation``).

The checks and the aggregation (``replies``, ``robust``, ``run_config``, ``mods``) import
no Flower; the names that need Flower import it when first used.
"""

from __future__ import annotations

from typing import Any

from byzance.flower.mods import byzantine_call, label_flipping_mod, poison_labels
from byzance.flower.robust import RobustAggregation

_LAZY = {
    "RobustFedAvg": "byzance.flower.strategy",
    "LegacyRobustFedAvg": "byzance.flower.legacy",
    "run_flower": "byzance.flower.simulation",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'byzance.flower' has no attribute {name!r}")


__all__ = [
    "LegacyRobustFedAvg",
    "RobustAggregation",
    "RobustFedAvg",
    "byzantine_call",
    "label_flipping_mod",
    "poison_labels",
    "run_flower",
]
