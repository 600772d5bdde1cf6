"""Vectorised simulation of Byzantine-resilient distributed SGD (see ``simulation``)."""

from byzance.sim.config import ExperimentConfig
from byzance.sim.server import Server, lr_at
from byzance.sim.simulation import RunResult, Simulation, run_experiment
from byzance.sim.workers import FlatModel, Shards, momentum_update

__all__ = [
    "ExperimentConfig",
    "FlatModel",
    "RunResult",
    "Server",
    "Shards",
    "Simulation",
    "lr_at",
    "momentum_update",
    "run_experiment",
]
