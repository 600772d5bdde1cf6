"""byzance: Byzantine-resilient distributed and federated machine learning."""

from byzance import aggregators, attacks, datasets, models, sim

__version__ = "0.1.0"

__all__ = ["aggregators", "attacks", "datasets", "models", "sim", "__version__"]
