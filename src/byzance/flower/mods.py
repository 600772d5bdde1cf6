"""Data attacks on a Flower ClientApp: a mod that makes chosen nodes flip their labels.

Flower mods wrap the ClientApp call (``ClientApp(mods=[...])``). A data attack changes the
data the app trains on, which only the app's own code touches, so the hook has two halves:

* ``label_flipping_mod(k)`` (or ``label_flipping_mod()``, reading ``byzance-label-flip-nodes``
  from the run config): on the nodes whose ``partition-id`` is < k it marks the call as
  Byzantine for its duration (a context variable, so concurrent calls do not see it);
* ``poison_labels(labels, num_classes)``, called by the app where it reads its labels:
  inside a Byzantine call it returns them flipped with byzance's ``LabelFlipping``
  (``y -> C - 1 - y``; ``label_flipping_mod(k, mode="permutation")`` for a fixed cyclic
  permutation), elsewhere it returns them unchanged.

``byzantine_call()`` tells the app whether the current call is Byzantine (to log it, say).
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

_ACTIVE: contextvars.ContextVar[Any] = contextvars.ContextVar("byzance_data_attack", default=None)


def label_flipping_mod(nodes: int | None = None, *, mode: str = "reverse") -> Callable[..., Any]:
    """A Flower mod making the nodes of partition id < ``nodes`` flip their labels (None:
    ``byzance-label-flip-nodes`` of the run config)."""
    from byzance.attacks import LabelFlipping
    from byzance.validation import Integer, check_param

    if nodes is not None:
        check_param("label_flipping_mod", "nodes", nodes, Integer(low=0))
    attack = LabelFlipping(mode=mode)

    def mod(msg: Any, context: Any, call_next: Callable[[Any, Any], Any]) -> Any:
        from byzance.flower.run_config import label_flip_nodes

        k = label_flip_nodes(context.run_config) if nodes is None else nodes
        partition = context.node_config.get("partition-id")
        if partition is None or int(partition) >= k:
            return call_next(msg, context)
        token = _ACTIVE.set(attack)
        try:
            return call_next(msg, context)
        finally:
            _ACTIVE.reset(token)

    return mod


def byzantine_call() -> bool:
    """Whether the current ClientApp call runs on a node the mod made Byzantine."""
    return _ACTIVE.get() is not None


def poison_labels(labels: Any, num_classes: int) -> Any:
    """``labels`` flipped inside a Byzantine call, unchanged elsewhere (numpy or torch in,
    the same type out)."""
    attack = _ACTIVE.get()
    if attack is None:
        return labels
    y = torch.as_tensor(labels)
    flipped = attack.poison(torch.empty(y.shape[0], 0), y.to(torch.int64), num_classes)[1]
    if isinstance(labels, np.ndarray):
        return flipped.numpy().astype(labels.dtype)
    return flipped.to(y.dtype)
