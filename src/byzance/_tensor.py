"""Conversion of user inputs to one (n, d) floating tensor, and back.

Every public rule and attack accepts an (n, d) ``torch.Tensor`` of any floating dtype on any
device, an (n, d) numpy array, or a list of 1-D tensors/arrays. Internally everything is a
``torch.Tensor``; the result is converted back to the kind of the input (numpy in, numpy out),
on the input's device and in its dtype.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

Restore = Callable[[torch.Tensor], Any]


def _restore_tensor(t: torch.Tensor) -> torch.Tensor:
    return t


def _restore_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _check_dtype(dtype: torch.dtype, who: str) -> None:
    if not dtype.is_floating_point:
        raise TypeError(
            f"{who}: expected floating-point vectors, got dtype {dtype}; "
            "convert with .float() or .astype(np.float32) first"
        )


def as_matrix(vectors: Any, who: str) -> tuple[torch.Tensor, Restore]:
    """Return ``(x, restore)``: ``x`` is an (n, d) floating tensor sharing no state with callers.

    ``restore(t)`` converts a tensor computed from ``x`` back to the kind of ``vectors``.
    ``who`` names the caller in error messages. The input is never modified: rules must not
    write into ``x`` in place (it may alias the caller's memory).
    """
    restore: Restore = _restore_tensor
    if isinstance(vectors, torch.Tensor):
        x = vectors
    elif isinstance(vectors, np.ndarray):
        if vectors.dtype.kind != "f":
            raise TypeError(
                f"{who}: expected floating-point vectors, got numpy dtype {vectors.dtype}; "
                "convert with .astype(np.float32) first"
            )
        x = torch.from_numpy(np.ascontiguousarray(vectors))
        restore = _restore_numpy
    elif isinstance(vectors, Sequence) and not isinstance(vectors, (str, bytes)):
        if len(vectors) == 0:
            raise ValueError(f"{who}: got an empty list of vectors; need at least one")
        if all(isinstance(v, np.ndarray) for v in vectors):
            restore = _restore_numpy
            items = [torch.from_numpy(np.ascontiguousarray(v)) for v in vectors]
        elif all(isinstance(v, torch.Tensor) for v in vectors):
            items = list(vectors)
        else:
            raise TypeError(
                f"{who}: a list of vectors must hold only torch tensors or only numpy arrays"
            )
        for i, v in enumerate(items):
            if v.dim() != 1:
                raise ValueError(
                    f"{who}: vector {i} has shape {tuple(v.shape)}; each vector must be 1-D"
                )
            if v.shape[0] != items[0].shape[0]:
                raise ValueError(
                    f"{who}: vector {i} has dimension {v.shape[0]} but vector 0 has "
                    f"{items[0].shape[0]}; all vectors must have the same dimension"
                )
            if v.device != items[0].device:
                raise ValueError(f"{who}: vectors are on different devices")
            _check_dtype(v.dtype, who)
        dtypes = {v.dtype for v in items}
        if len(dtypes) > 1:
            raise TypeError(f"{who}: vectors have mixed dtypes {sorted(map(str, dtypes))}")
        x = torch.stack(items)
    else:
        raise TypeError(
            f"{who}: expected an (n, d) torch.Tensor, numpy array or list of 1-D vectors, "
            f"got {type(vectors).__name__}"
        )
    _check_dtype(x.dtype, who)
    if x.dim() != 2:
        raise ValueError(
            f"{who}: expected an (n, d) matrix of n vectors, got shape {tuple(x.shape)}"
        )
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{who}: got empty input of shape {tuple(x.shape)}")
    return x, restore


def nan_to_inf(t: torch.Tensor) -> torch.Tensor:
    """Replace NaN by +inf (out of place): a non-finite distance or score ranks last."""
    return torch.where(torch.isnan(t), torch.full_like(t, float("inf")), t)
