"""The ``sim`` engine: the vectorised in-process simulator (``byzance.sim.Simulation``).

Every worker of a round in one computation on one device; seeded and bit-for-bit
reproducible on a CPU. Runs the ``server`` protocol.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from byzance.engines.base import Engine, NoOptions
from byzance.round.record import Record, RunResult


class SimulatorEngine(Engine):
    name = "sim"
    summary = "vectorised in-process simulator (default)"
    Options = NoOptions
    protocols = ("server",)

    def run(
        self,
        config: Any,
        options: Any,
        on_metrics: Callable[[Record], None] | None = None,
        *,
        progress: bool = False,
    ) -> RunResult:
        from byzance.sim.simulation import Simulation

        return Simulation(config).run(on_metrics=on_metrics, progress=progress)
