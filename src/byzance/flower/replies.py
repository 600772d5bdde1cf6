"""Checking one client's reply against the global model, on its own (no Flower import).

A reply is a mapping ``name -> numpy array`` (a Flower ``ArrayRecord`` converted, or the
legacy API's list of arrays keyed ``"0", "1", ...``). It is accepted only if it has exactly the
global model's keys, and every array has the global array's shape and dtype and only finite
values. ``check_reply`` returns the reason of the first failed check (None: accepted); the
reason's first word is its kind, one of ``REASONS``:

``error``      the client raised or its message carries an error (``Message.has_error()``);
``structure``  the content is not one model (e.g. no ``ArrayRecord`` under the strategy's key);
``keys``       missing or extra arrays;
``shape``      an array of another shape (Flower's ``FedAvg`` broadcasts a (1,) array silently);
``dtype``      an array of another dtype;
``nonfinite``  a NaN or an infinity (Flower's legacy Krum returns such a client, its median
               returns NaN).

``flatten_updates`` turns the accepted replies into the (m, d) matrix of updates (client model
minus global model) over the floating arrays, in one preallocated tensor.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np
import torch

#: the kinds of rejection, in the order they are checked
REASONS = ("error", "structure", "keys", "shape", "dtype", "nonfinite")

Arrays = Mapping[str, np.ndarray]


def check_reply(arrays: Arrays, reference: Arrays) -> str | None:
    """The reason ``arrays`` cannot be aggregated against ``reference`` (None: it can)."""
    got, want = set(arrays), set(reference)
    if got != want:
        missing, extra = sorted(want - got), sorted(got - want)
        parts = [f"missing {missing}" if missing else "", f"extra {extra}" if extra else ""]
        return "keys: " + ", ".join(p for p in parts if p)
    for key, ref in reference.items():
        a = arrays[key]
        if not isinstance(a, np.ndarray):
            return f"structure: {key!r} is a {type(a).__name__}, not an array"
        if a.shape != ref.shape:
            return f"shape: {key!r} has shape {a.shape}, expected {ref.shape}"
        if a.dtype != ref.dtype:
            return f"dtype: {key!r} has dtype {a.dtype}, expected {ref.dtype}"
    for key in floating_keys(reference):
        if not np.isfinite(arrays[key]).all():
            return f"nonfinite: {key!r} has non-finite values"
    return None


def short_reason(text: str, limit: int = 200) -> str:
    """``text`` on one line, cut to ``limit`` characters: a client's traceback as Flower
    passes it through Ray is reduced to the exception's message (after its last
    ``Message:``), colour codes removed."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(text))
    if "Message:" in text:
        text = text.rsplit("Message:", 1)[1].strip().rstrip("'>").strip()
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def reason_kind(reason: str) -> str:
    """The kind of a rejection reason (its first word), e.g. ``"shape"``."""
    return reason.split(":", 1)[0]


def floating_keys(reference: Arrays) -> list[str]:
    """The keys of the floating-point arrays (the ones aggregated; others are kept)."""
    return [k for k, a in reference.items() if np.issubdtype(a.dtype, np.floating)]


def flat_dtype(reference: Arrays) -> torch.dtype:
    """The dtype updates are aggregated in: the widest floating dtype of the model (at least
    float32)."""
    keys = floating_keys(reference)
    if not keys:
        raise ValueError("the global model has no floating-point arrays to aggregate")
    widest = np.result_type(np.float32, *(reference[k].dtype for k in keys))
    return torch.from_numpy(np.empty(0, dtype=widest)).dtype


def flatten(arrays: Arrays, keys: Sequence[str], dtype: torch.dtype) -> torch.Tensor:
    """The arrays of ``keys`` concatenated into one flat vector of ``dtype``."""
    parts = [torch.from_numpy(np.ascontiguousarray(arrays[k])).reshape(-1) for k in keys]
    return torch.cat(parts).to(dtype) if parts else torch.empty(0, dtype=dtype)


def flatten_updates(
    replies: Sequence[Arrays], reference: Arrays, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """(m, d): row i is ``replies[i] - reference`` over the floating arrays, flattened in the
    reference's key order (replies must have passed ``check_reply``)."""
    keys = floating_keys(reference)
    dtype = dtype or flat_dtype(reference)
    ref = flatten(reference, keys, dtype)
    np_dtype = torch.empty(0, dtype=dtype).numpy().dtype
    out = np.empty((len(replies), ref.numel()), dtype=np_dtype)
    for i, arrays in enumerate(replies):  # one copy per array of each reply (numpy: faster
        start = 0  # than torch's per-slice copies)
        for k in keys:
            a = arrays[k].reshape(-1)
            out[i, start : start + a.size] = a
            start += a.size
    return torch.from_numpy(out).sub_(ref)


def unflatten_into(
    vector: torch.Tensor, reference: Arrays
) -> dict[str, np.ndarray]:
    """``reference + vector`` as arrays (floating arrays shifted, cast back to their dtype;
    the others, e.g. integer counters, kept as in ``reference``)."""
    out: dict[str, np.ndarray] = {}
    start = 0
    floating = set(floating_keys(reference))
    v = vector.detach().cpu()
    for key, ref in reference.items():
        if key not in floating:
            out[key] = ref.copy()
            continue
        size = ref.size
        delta = v[start : start + size].numpy().astype(np.float64, copy=False)
        out[key] = (ref.astype(np.float64) + delta.reshape(ref.shape)).astype(ref.dtype)
        start += size
    return out
