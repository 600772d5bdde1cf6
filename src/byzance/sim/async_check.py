"""The conditions of the ``async`` protocol, checked by ``ExperimentConfig.validate()`` before
any work (no data loaded): see ``byzance.round.kardam`` and ``byzance.sim.asynchronous``."""

from __future__ import annotations

from typing import Any


def async_workers(config: Any) -> int:
    """Workers that deliver vectors: the honest ones, and the f Byzantine ones under attack."""
    return config.n_received


def check_async(config: Any) -> None:
    """Refuse an ``async`` config that cannot run, with the field, condition and values:
    Kardam's filters need n >= 3f + 1 workers (n = the workers that deliver); no client
    sampling; ``filter_attack`` needs a gradient attack and the Lipschitz filter."""
    if config.protocol != "async":
        return
    n, f = async_workers(config), config.f
    if getattr(config, "n_clients", None) is not None:
        raise ValueError(
            f"ExperimentConfig.n_clients: the async protocol has a fixed set of workers; "
            f"expected None, got {config.n_clients!r}"
        )
    if config.async_filter != "none" and f > 0 and n < 3 * f + 1:
        raise ValueError(
            f"ExperimentConfig.async_filter: {config.async_filter!r} needs n >= 3f + 1 workers "
            f"(Kardam's bound), got n={n} (n_honest={config.n_honest}"
            f"{' + f' if config.has_attack else ''}), f={f}"
        )
    if config.filter_attack != "none":
        if config.async_filter not in ("kardam", "lipschitz"):
            raise ValueError(
                f"ExperimentConfig.filter_attack: {config.filter_attack!r} aims at the Lipschitz "
                f"filter; expected async_filter 'kardam' or 'lipschitz', got "
                f"{config.async_filter!r}"
            )
        from byzance.attacks import DataAttack

        attack = config.build_attack(config.build_aggregator()) if config.has_attack else None
        if attack is None or isinstance(attack, DataAttack):
            raise ValueError(
                f"ExperimentConfig.filter_attack: {config.filter_attack!r} shapes the vectors of "
                f"a gradient attack; expected attack to be one with f > 0, got "
                f"attack={config.attack!r}, f={f}"
            )
