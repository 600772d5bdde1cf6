"""The Ray engines, one job per module: ``options`` (``RayOptions``, the quorum), ``transport``
(vectors through ``/dev/shm``), ``actors`` (actor bodies, fault injection), ``cluster``
(connection, resources, starting actors), ``checkpoints``, ``collect`` (the server's checks of
replies), ``server`` (``RayEngine``, the partially synchronous server), ``experiment``
(``run_experiment_ray``), and the decentralised mode: ``nodes``, ``exchange``,
``decentralized`` (``run_decentralized_ray``).

Ray itself is imported lazily, inside the functions that need it.
"""

from byzance.engines.ray.actors import FAULT_KINDS, NodeActor, WorkerActor
from byzance.engines.ray.experiment import (
    DecentralizedOptions,
    check_experiment,
    run_decentralized_ray,
    run_experiment_ray,
)
from byzance.engines.ray.nodes import EquivocatingForger, NodeCore
from byzance.engines.ray.options import QuorumError, RayOptions, quorum_for
from byzance.engines.ray.server import RayEngine
from byzance.engines.ray.transport import IN_SHARED_ROW, SharedRows

__all__ = [
    "FAULT_KINDS",
    "IN_SHARED_ROW",
    "DecentralizedOptions",
    "EquivocatingForger",
    "NodeActor",
    "NodeCore",
    "QuorumError",
    "RayEngine",
    "RayOptions",
    "SharedRows",
    "WorkerActor",
    "check_experiment",
    "quorum_for",
    "run_decentralized_ray",
    "run_experiment_ray",
]
