"""Old import path of ``byzance.round.summed_grad`` (kept as an alias)."""

from byzance.round.summed_grad import SummedGradients

__all__ = ["SummedGradients"]
