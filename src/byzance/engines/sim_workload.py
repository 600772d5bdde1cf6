"""Old import path of the Ray workload of a config's run (``byzance.engines.ray.workload``)."""

from byzance.engines.ray.workload import ExperimentWorkload, ForgerCore, WorkerCore

SimWorkload = ExperimentWorkload

__all__ = ["ExperimentWorkload", "ForgerCore", "SimWorkload", "WorkerCore"]
