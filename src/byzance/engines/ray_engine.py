"""Old import path of the Ray engine, kept working: the code lives in ``byzance.engines.ray``
(``server``: ``RayEngine``; ``experiment``: ``run_experiment_ray``; and the modules they use)."""

from byzance.engines.ray.actors import FAULT_KINDS, WorkerActor
from byzance.engines.ray.checkpoints import (
    checkpoint_path,
    load_checkpoint_file,
    save_checkpoint_file,
)
from byzance.engines.ray.cluster import _check_reachable, check_resources, connect
from byzance.engines.ray.experiment import check_experiment, run_experiment_ray
from byzance.engines.ray.options import QuorumError, RayOptions, quorum_for
from byzance.engines.ray.server import RayEngine, log
from byzance.engines.ray.transport import IN_SHARED_ROW, SharedRows

__all__ = [
    "FAULT_KINDS",
    "IN_SHARED_ROW",
    "QuorumError",
    "RayEngine",
    "RayOptions",
    "SharedRows",
    "WorkerActor",
    "_check_reachable",
    "check_experiment",
    "check_resources",
    "checkpoint_path",
    "connect",
    "load_checkpoint_file",
    "log",
    "quorum_for",
    "run_experiment_ray",
    "save_checkpoint_file",
]
