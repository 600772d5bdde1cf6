"""Old import path of the worker building blocks, now in ``byzance.round`` (kept as an alias)."""

from byzance.round.flat_model import FlatModel
from byzance.round.sampling import (
    Shards,
    counter_random,
    hash32,
    local_positions,
    poison_seed,
)
from byzance.round.workers import momentum_update

__all__ = [
    "FlatModel",
    "Shards",
    "counter_random",
    "hash32",
    "local_positions",
    "momentum_update",
    "poison_seed",
]
