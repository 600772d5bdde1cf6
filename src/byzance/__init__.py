"""byzance: Byzantine-resilient distributed and federated machine learning."""

from byzance import aggregators

__version__ = "0.1.0"

__all__ = ["aggregators", "__version__"]
