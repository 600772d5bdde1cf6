"""Vectors from workers to the server without the object store: the server's (n, d) matrix of
received vectors as a file in ``/dev/shm`` that the workers on its node write into."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

#: what a worker returns instead of its vector once it has written it into its shared row
IN_SHARED_ROW = "in-shared-row"


class SharedRows:
    """The server's (n, d) matrix of received vectors as a file in ``/dev/shm``, mapped by
    the server and by the worker actors on its node: worker w writes row w (one copy, no
    serialisation, no object-store round trip), the server reads and aggregates in place.

    Row w is written only by worker w's single outstanding task and read by the server only
    after that task has returned, so there are no concurrent accesses to a row.
    """

    ROOT = Path("/dev/shm")

    def __init__(self, path: str, n: int, d: int, dtype: str, node_id: str, create: bool) -> None:
        self.path, self.node_id = path, node_id
        self.spec = (path, n, d, dtype, node_id)
        mode = "w+" if create else "r+"
        self.array = np.memmap(path, dtype=np.dtype(dtype), mode=mode, shape=(n, d))

    @classmethod
    def create(cls, n: int, d: int, dtype: torch.dtype) -> SharedRows | None:
        """A new zeroed matrix on this node, or ``None`` where there is no ``/dev/shm``."""
        import uuid

        import ray

        if not cls.ROOT.is_dir():
            return None
        np_dtype = torch.empty(0, dtype=dtype).numpy().dtype.str
        path = str(cls.ROOT / f"byzance-{os.getpid()}-{uuid.uuid4().hex[:12]}")
        node = ray.get_runtime_context().get_node_id()
        return cls(path, n, d, np_dtype, node, create=True)

    @classmethod
    def attach(cls, spec: tuple[str, int, int, str, str] | None) -> SharedRows | None:
        """Map the server's matrix from a worker, if it runs on the same node (else ``None``)."""
        import ray

        if spec is None:
            return None
        path, n, d, dtype, node_id = spec
        if node_id != ray.get_runtime_context().get_node_id() or not os.path.exists(path):
            return None
        return cls(path, n, d, dtype, node_id, create=False)

    def remove(self) -> None:
        self.array = None  # type: ignore[assignment]  # unmaps once no view is left
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
