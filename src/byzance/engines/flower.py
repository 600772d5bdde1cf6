"""The ``flower`` engine: a config run as a Flower simulation (``byzance.flower.simulation``).

Flower's simulation engine (local, offline; ClientApps in Ray actors) with byzance's round
steps: the same config gives the simulator's trajectory up to float round-off (gradients are
computed per node instead of in one batched pass). Flower is imported only when a run
starts (``pip install "byzance[flower]"``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from byzance.engines.base import Engine, option
from byzance.round.record import Record, RunResult
from byzance.validation import Integer, OptionalOf, Real


@dataclass
class FlowerOptions:
    """``client_cpus``: Ray CPUs each ClientApp reserves; ``ray_cpus``: logical CPUs of the
    Ray instance Flower starts (None: all; an initialised Ray is reused as it is)."""

    client_cpus: float = option(
        1.0, Real(low=0, closed="neither"), "Ray CPUs per Flower ClientApp (default 1)",
        metavar="CPUS",
    )  # fmt: skip
    ray_cpus: int | None = option(
        None, OptionalOf(Integer(low=1)), "CPUs of the Ray instance Flower starts (default all)",
        metavar="N",
    )  # fmt: skip


class FlowerEngine(Engine):
    name = "flower"
    summary = "a Flower simulation (pip install byzance[flower])"
    Options = FlowerOptions
    protocols = ("server",)

    def check(self, config: Any, options: Any) -> None:
        super().check(config, options)
        if getattr(config, "n_clients", None) is not None:
            raise ValueError(
                "ExperimentConfig.n_clients: engine 'flower' does not run a sampled client "
                "population (one node per worker, every round); run it with --engine sim"
            )
        config.build_aggregator().check(config.n_received)
        import importlib.util

        if importlib.util.find_spec("flwr") is None:
            raise ValueError('engine \'flower\' needs Flower: pip install "byzance[flower]"')

    def run(
        self,
        config: Any,
        options: Any,
        on_metrics: Callable[[Record], None] | None = None,
        *,
        progress: bool = False,
    ) -> RunResult:
        from byzance.flower.simulation import run_flower

        return run_flower(
            config,
            client_cpus=options.client_cpus,
            ray_cpus=options.ray_cpus,
            on_metrics=on_metrics,
            progress=progress,
        )
