"""Old import path of the decentralised mode, kept working: the code lives in
``byzance.engines.ray.decentralized`` (and ``nodes``, ``exchange``, ``actors``)."""

from byzance.engines.ray.actors import NodeActor
from byzance.engines.ray.decentralized import _save_checkpoint
from byzance.engines.ray.experiment import DecentralizedOptions, run_decentralized_ray
from byzance.engines.ray.nodes import EquivocatingForger, NodeCore

__all__ = [
    "DecentralizedOptions",
    "EquivocatingForger",
    "NodeActor",
    "NodeCore",
    "_save_checkpoint",
    "run_decentralized_ray",
]
