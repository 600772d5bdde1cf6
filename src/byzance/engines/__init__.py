"""Execution engines beyond the in-process simulator: real distributed runs on Ray.

Ray is imported lazily (``pip install byzance[ray]``); importing this package does not need it.
``run_experiment_ray(config, address=..., options=RayOptions(...), db=...)`` runs an
``ExperimentConfig`` with one actor per worker (see ``byzance.engines.ray_engine``);
``run_decentralized_ray`` runs it without a trusted server (see ``decentralized``).
"""

from byzance.engines.decentralized import DecentralizedOptions, run_decentralized_ray
from byzance.engines.ray_engine import (
    FAULT_KINDS,
    QuorumError,
    RayEngine,
    RayOptions,
    check_experiment,
    run_experiment_ray,
)

__all__ = [
    "FAULT_KINDS",
    "DecentralizedOptions",
    "QuorumError",
    "RayEngine",
    "RayOptions",
    "check_experiment",
    "run_decentralized_ray",
    "run_experiment_ray",
]
