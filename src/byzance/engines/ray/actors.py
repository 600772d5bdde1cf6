"""Bodies of the Ray actors: ``WorkerActor`` (a worker of the server engine, with fault
injection) and ``NodeActor`` (a node of the decentralised mode). They are wrapped with
``ray.remote`` at run time (``byzance.engines.ray.cluster``), so importing them needs no Ray."""

from __future__ import annotations

import os
import time
import warnings
from typing import Any

import numpy as np
import torch

from byzance.engines.ray.transport import IN_SHARED_ROW, SharedRows

#: kinds of faults a test can inject into a worker actor (``RayEngine.inject_fault``)
FAULT_KINDS = ("delay", "raise", "nan", "shape", "exit")


class WorkerActor:
    """Body of every worker actor (wrapped with ``ray.remote`` at run time).

    ``compute`` runs an honest/data-poisoning core, ``forge`` a gradient-attack core. Injected
    faults (tests, chaos runs) apply before the computation of the chosen rounds. With a
    ``rows`` spec (``SharedRows``) and on the server's node, vectors are written into the
    worker's row of the server's matrix and ``IN_SHARED_ROW`` is returned in their place.
    """

    def __init__(
        self,
        core: Any,
        worker: int,
        torch_threads: int = 1,
        rows: tuple[str, int, int, str, str] | None = None,
    ) -> None:
        torch.set_num_threads(torch_threads)
        # parameters arrive as read-only zero-copy numpy views; cores never write into them
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        self.core = core
        self.worker = worker
        self.rows = SharedRows.attach(rows)
        self.faults: list[tuple[str, set[int] | None, float]] = []
        self.compute_cpu = 0.0
        self.calls = 0

    def info(self) -> dict[str, Any]:
        """Where this actor runs; also warms the core up (lazy set-up off the first round)."""
        import ray

        warmup = getattr(self.core, "warmup", None)
        if warmup is not None:
            warmup()
        return {
            "worker": self.worker,
            "node_id": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
            "shared_row": self.rows is not None,
        }

    def inject_fault(self, kind: str, rounds: list[int] | None, seconds: float) -> None:
        self.faults.append((kind, None if rounds is None else set(rounds), seconds))

    def clear_faults(self) -> None:
        self.faults.clear()

    def _apply_faults(self, round_: int) -> str | None:
        active = [(k, s) for k, r, s in self.faults if r is None or round_ in r]
        corrupt = None
        for kind, seconds in active:
            if kind == "delay":
                time.sleep(seconds)
            elif kind == "exit":
                os._exit(1)
            elif kind == "raise":
                raise RuntimeError(f"injected fault in worker {self.worker} at round {round_}")
            else:
                corrupt = kind
        return corrupt

    @staticmethod
    def _corrupt(vec: np.ndarray, kind: str | None) -> np.ndarray:
        if kind == "nan":
            vec = vec.copy()
            vec[0] = np.nan
        elif kind == "shape":
            vec = vec[:-1].copy()
        return vec

    def _send(self, vec: Any) -> Any:
        """Write a well-formed vector into this worker's shared row, if there is one."""
        rows = self.rows
        if (
            rows is not None
            and isinstance(vec, np.ndarray)
            and vec.dtype.kind == "f"
            and vec.shape == rows.array.shape[1:]
        ):
            np.copyto(rows.array[self.worker], vec)
            return IN_SHARED_ROW
        return vec  # returned through the object store (and checked there)

    def compute(self, params: np.ndarray, round_: int) -> tuple[Any, float]:
        kind = self._apply_faults(round_)
        c0 = time.thread_time()
        vec, loss = self.core.compute(params, round_)
        self.compute_cpu += time.thread_time() - c0
        self.calls += 1
        return self._send(self._corrupt(vec, kind)), loss

    def stats(self, reset: bool = False) -> dict[str, float]:
        """CPU seconds spent in the core's computation and number of calls (benchmarks)."""
        out = {"compute_cpu": self.compute_cpu, "calls": float(self.calls)}
        if reset:
            self.compute_cpu, self.calls = 0.0, 0
        return out

    def forge(self, round_: int, honest: list[int] | np.ndarray) -> Any:
        """This worker's row of the attack on the honest vectors: given as rows of the shared
        matrix (same node) or as an (h, d) array (through the object store)."""
        kind = self._apply_faults(round_)
        if isinstance(honest, list):
            if self.rows is None:
                raise RuntimeError("forge: honest rows given but no shared matrix is mapped")
            honest = self.rows.array[honest]  # fancy indexing: a private copy
        return self._send(self._corrupt(self.core.forge(honest, round_), kind))

    def get_state(self) -> dict[str, Any]:
        return self.core.state_dict()

    def set_state(self, state: dict[str, Any]) -> None:
        self.core.load_state_dict(state)


class NodeActor(WorkerActor):
    """Actor body of a decentralised node (adds the exchange phases to ``WorkerActor``)."""

    def gradient_step(self, round_: int, pos: int, k: int, *vectors: Any) -> np.ndarray:
        self._apply_faults(round_)
        return self.core.gradient_step(round_, pos, k, *self._unwrap(vectors))

    def model_step(self, round_: int, pos: int, k: int, *vectors: Any) -> np.ndarray:
        return self.core.model_step(round_, pos, k, *self._unwrap(vectors))

    def forge_for(self, round_: int, *honest: Any) -> np.ndarray:
        return self.core.forge(np.stack(self._unwrap(honest)), round_)

    def params(self) -> np.ndarray:
        return self.core.params()

    @staticmethod
    def _unwrap(vectors: tuple[Any, ...]) -> tuple[np.ndarray, ...]:
        return tuple(v[0] if isinstance(v, tuple) else v for v in vectors)
