"""What every compiled kernel shares: numba's threading layer, the launch lock, and which
tensors a kernel accepts (``compiled_input``).

Threading: numba's default threading layer (OpenMP when available) keeps its worker threads
spinning after each kernel, which competes with torch's own OpenMP threads and was measured
to slow the torch operations that follow (a CNN's gradients up to 3x on 2 cores). Unless the
user set ``NUMBA_THREADING_LAYER`` (or numba's parallel backend is already running), the
``workqueue`` layer, whose idle threads sleep, is selected before the first launch
(``select_threading_layer``, called by every parallel kernel before it is compiled). It does
not support concurrent launches, so launches are serialised by ``launch_lock`` (the kernels
release the GIL, so other Python threads still run meanwhile).
"""

from __future__ import annotations

import os
import threading

import numba
import torch

#: serialises kernel launches (the workqueue layer aborts on concurrent launches)
launch_lock = threading.Lock()


def select_threading_layer() -> None:
    """Prefer numba's non-spinning ``workqueue`` layer (see the module docstring).

    Left alone when the user chose a layer (``NUMBA_THREADING_LAYER``) or when numba's
    parallel backend is already initialised (the layer can no longer change).
    """
    if "NUMBA_THREADING_LAYER" in os.environ:
        return
    try:
        from numba.np.ufunc import parallel
    except ImportError:  # pragma: no cover - very old or unusual numba
        return
    if not getattr(parallel, "_is_initialized", False):
        numba.config.THREADING_LAYER = "workqueue"


def compiled_input(x: torch.Tensor, *others: torch.Tensor) -> bool:
    """Whether a compiled (numba) kernel can take ``x``: a CPU float32/float64 tensor without
    autograd; ``others`` (e.g. an origin) on the CPU with the same dtype, without autograd.
    Each kernel adds its own conditions (sizes, a switch)."""
    return (
        x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.float64)
        and not x.requires_grad
        and all(t.device == x.device and t.dtype == x.dtype and not t.requires_grad for t in others)
    )
