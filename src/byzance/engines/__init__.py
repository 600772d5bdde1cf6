"""Engines run a config's rounds: ``available()``, ``get(name)``, ``register(cls)``.

``sim``: the vectorised in-process simulator (``byzance.engines.sim``); ``ray``: real workers
on Ray, one actor each, with the trusted-server or the decentralised protocol
(``byzance.engines.ray``; Ray is imported only when a run starts, ``pip install
byzance[ray]``). The interface is ``byzance.engines.base.Engine``; ``byzance.runner`` runs one
config on an engine into the results database.

The Ray building blocks stay importable from here: ``run_experiment_ray(config, options=...,
db=...)``, ``run_decentralized_ray``, ``RayEngine`` (the server loop over a workload),
``RayOptions``.
"""

from byzance.engines.base import Engine, option
from byzance.engines.flower import FlowerEngine
from byzance.engines.ray import (
    FAULT_KINDS,
    DecentralizedOptions,
    QuorumError,
    RayEngine,
    RayOptions,
    check_experiment,
    run_decentralized_ray,
    run_experiment_ray,
)
from byzance.engines.ray.engine import RayClusterEngine
from byzance.engines.registry import available, engines_running, get, register
from byzance.engines.sim import SimulatorEngine

register(SimulatorEngine)
register(RayClusterEngine)
register(FlowerEngine)

__all__ = [
    "FAULT_KINDS",
    "DecentralizedOptions",
    "Engine",
    "QuorumError",
    "RayClusterEngine",
    "RayEngine",
    "RayOptions",
    "SimulatorEngine",
    "available",
    "check_experiment",
    "engines_running",
    "get",
    "option",
    "register",
    "run_decentralized_ray",
    "run_experiment_ray",
]
