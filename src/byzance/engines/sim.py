"""The ``sim`` engine: the vectorised in-process simulator (``byzance.sim.Simulation``).

Every worker of a round in one computation on one device; seeded and bit-for-bit
reproducible on a CPU. Each protocol it runs has its own runner (``RUNNERS``): a class built
from the config whose ``run(on_metrics=, progress=)`` returns a ``RunResult``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from byzance.engines.base import Engine, NoOptions
from byzance.round.record import Record, RunResult

#: protocol -> "module:Class" of its simulator (imported when a run starts)
RUNNERS: dict[str, str] = {
    "server": "byzance.sim.simulation:Simulation",
    "async": "byzance.sim.asynchronous:AsyncSimulation",
    "byzsgd": "byzance.sim.byzsgd:ByzSGD",
    "decentralized": "byzance.sim.decentralized:DecentralizedSimulation",
}


class SimulatorEngine(Engine):
    name = "sim"
    summary = "vectorised in-process simulator (default)"
    Options = NoOptions
    protocols = tuple(RUNNERS)
    runs_population = True  # byzance.sim.population

    def run(
        self,
        config: Any,
        options: Any,
        on_metrics: Callable[[Record], None] | None = None,
        *,
        progress: bool = False,
    ) -> RunResult:
        module, cls = RUNNERS[config.protocol].split(":")
        if getattr(config, "n_clients", None) is not None:  # a sampled client population
            module, cls = "byzance.sim.population", "PopulationSimulation"
        runner = getattr(importlib.import_module(module), cls)
        return runner(config).run(on_metrics=on_metrics, progress=progress)
