"""The two kinds of attacks: on gradients (``Attack``) and on a worker's data (``DataAttack``).

A gradient attack is omniscient: it sees the honest vectors of the round, an (h, d) matrix, and
returns the f Byzantine vectors, an (f, d) matrix in the same dtype and on the same device.
A data attack poisons the batch of a Byzantine worker, which then sends an honestly computed
gradient on the poisoned batch.

Finite in, finite out: for finite honest vectors every gradient attack but ``inf`` / ``nan``
returns finite vectors, in the honest dtype: what overflows it (huge honest values, a huge
scale) is computed again in float64 (``honest_mean``, ``alie.honest_line``) and clamped to the
dtype's finite range (``clamp_finite``, ``line_point``). The sizes of what an attack
allocates are checked against the available memory before allocating (``check_memory``).
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch

from byzance._tensor import as_matrix
from byzance.validation import Integer, Real, check_param

_NUM_BYZANTINE = Integer(low=1)
#: the seeds a ``torch.Generator`` accepts
SEED = Integer(low=0, high=2**64 - 1)
#: below this estimate no memory check is made (reading the free memory costs a system call)
_CHECK_ABOVE = 1 << 28


def check_num_byzantine(who: str, f: Any) -> int:
    """Validate the number of Byzantine vectors to produce (an int >= 1)."""
    return check_param(who, "f", f, _NUM_BYZANTINE)


def check_real(
    who: str, name: str, value: Any, *, low: float | None = None, strict: bool = False
) -> float:
    """Validate a finite real hyper-parameter, optionally ``> low`` (strict) or ``>= low``."""
    return check_param(who, name, value, Real(low=low, closed="neither" if strict else "both"))


def check_int(who: str, name: str, value: Any, *, low: int, high: int | None = None) -> int:
    """Validate an integer hyper-parameter ``>= low`` (and ``<= high``)."""
    return check_param(who, name, value, Integer(low=low, high=high))


def all_finite(t: torch.Tensor) -> bool:
    """Whether every entry of ``t`` is finite: one sum in ``t``'s dtype, no temporary (a
    non-finite entry makes it non-finite); only if the sum is not finite (or merely
    overflows) are the entries checked one by one."""
    return math.isfinite(float(t.sum())) or bool(torch.isfinite(t).all())


def wide(honest: torch.Tensor) -> tuple[torch.Tensor, float]:
    """``(honest / u, u)`` in float64 with ``u`` the power of two >= the largest entry of the
    finite ``honest``: an exact scaling, so that means, squares and sums of it do not overflow
    (multiply back by ``u``, clamping)."""
    peak = float(honest.detach().abs().max())
    unit = 2.0 ** math.frexp(peak)[1] if peak > 0 else 1.0
    return honest.double() / unit, unit


def clamp_finite(t: torch.Tensor) -> torch.Tensor:
    """``t`` with ``+-inf`` (an overflow) replaced by the dtype's largest finite values, in
    place; NaN is left as it is."""
    if not all_finite(t):
        info = torch.finfo(t.dtype)
        t.clamp_(info.min, info.max)
    return t


def line_point(
    anchor: torch.Tensor, direction: torch.Tensor, scale: float, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``anchor + scale * direction`` (written into ``out`` if given), clamped to the dtype's
    finite range. A ``scale`` beyond that range is applied in float64 (cast to the dtype it
    would be infinite, and ``inf * 0`` NaN)."""
    if abs(scale) <= torch.finfo(direction.dtype).max:
        if out is None:
            return clamp_finite(anchor + scale * direction)
        torch.mul(direction, scale, out=out)
        return clamp_finite(out.add_(anchor))
    info = torch.finfo(direction.dtype)
    point64 = anchor.double() + scale * direction.double()
    point = point64.clamp_(info.min, info.max).to(direction.dtype)
    if out is None:
        return point
    return out.copy_(point)


def honest_mean(honest: torch.Tensor) -> torch.Tensor:
    """``honest.mean(dim=0)``; if that overflows for finite inputs, computed in float64 on
    the exactly scaled inputs (``wide``; the mean of finite values is within the dtype's
    range)."""
    mean = honest.mean(dim=0)
    if not all_finite(mean) and bool(torch.isfinite(honest).all()):
        scaled, unit = wide(honest)
        mean = (scaled.mean(dim=0) * unit).to(honest.dtype)
    return mean


def available_memory(device: torch.device) -> int:
    """Free bytes on ``device`` (CUDA: ``mem_get_info``; CPU: ``MemAvailable`` of
    /proc/meminfo, else the free physical pages)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):  # pragma: no cover - no such sysconf
        return 1 << 62


def check_memory(who: str, f: int, nbytes: int, device: torch.device, what: str) -> None:
    """Raise ``ValueError`` before allocating ``nbytes`` (an estimate, for ``f`` Byzantine
    vectors: ``what``) when it exceeds the memory available on ``device``."""
    if nbytes <= _CHECK_ABOVE:
        return
    free = available_memory(device)
    if nbytes > free:
        raise ValueError(
            f"{who}: f={f} needs about {nbytes / 2**30:.1f} GiB ({what}), more than the "
            f"{free / 2**30:.1f} GiB available on {device}; use a smaller f"
        )


class Attack:
    """A Byzantine gradient attack: ``attack(honest, f)`` -> the f Byzantine vectors.

    ``honest`` is an (h, d) torch tensor (any floating dtype, any device), an (h, d) numpy
    array or a list of 1-D vectors; the result is (f, d), of the same kind, dtype and device.
    The input is never modified. Subclasses implement ``forge`` on a tensor (the hot path,
    also callable directly) and may keep state across rounds, cleared by ``reset``.
    """

    #: registry name, e.g. ``"alie"``
    name: str = ""

    def __call__(self, honest: Any, f: int) -> Any:
        who = type(self).__name__
        x, restore = as_matrix(honest, who)
        check_num_byzantine(who, f)
        out_bytes = f * x.shape[1] * x.element_size()
        check_memory(who, f, out_bytes, x.device, f"the {f} x {x.shape[1]} output")
        return restore(self.forge(x, f))

    def forge(self, honest: torch.Tensor, f: int) -> torch.Tensor:
        """Return the (f, d) Byzantine vectors for an (h, d) honest tensor (not validated)."""
        raise NotImplementedError

    def reset(self) -> None:
        """Forget any state kept across rounds (no-op for stateless attacks)."""

    def state_dict(self) -> dict[str, Any]:
        """The state kept across rounds as tensors and plain data (``{}`` for stateless
        attacks), what a checkpoint stores; the attack itself is rebuilt from the config."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict`` into an attack built with the same parameters."""
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state, got keys {sorted(state)}")

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"


class LinearAttack(Attack):
    """An attack of the form ``byzantine = anchor + scale * direction`` (one vector, f copies).

    ``anchor`` and ``direction`` depend on the honest vectors only; ``scale`` is the attack's
    hyper-parameter (``default_scale``). ``Optimal`` searches the scale against a given
    aggregator along the same line.
    """

    def line(self, honest: torch.Tensor, f: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(anchor, direction)``, two d-vectors in honest's dtype and device."""
        raise NotImplementedError

    def line_with_mean(
        self, honest: torch.Tensor, f: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(anchor, direction, mean)``: ``line`` and the honest mean (which ``Optimal``
        needs too); an attack whose line already computes the mean returns it here."""
        anchor, direction = self.line(honest, f)
        return anchor, direction, honest.mean(dim=0)

    def default_scale(self, n: int, f: int) -> float:
        """The scale used by the attack itself, for n = h + f workers in total."""
        raise NotImplementedError

    def forge(self, honest: torch.Tensor, f: int) -> torch.Tensor:
        anchor, direction = self.line(honest, f)
        scale = self.default_scale(honest.shape[0] + f, f)
        return line_point(anchor, direction, scale).expand(f, -1).clone()


class DataAttack:
    """A data-poisoning attack applied to a Byzantine worker's batch.

    ``poison(x, y, num_classes, generator=None) -> (x', y')`` never modifies its inputs; the
    worker then computes its gradient honestly on ``(x', y')``. Extra keywords (``context``,
    e.g. ``model_params`` for ``BudgetedLabelFlipping``) are accepted and ignored by the
    attacks that do not use them, so a simulator can pass the same ones to every attack.
    """

    name: str = ""

    def poison(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        num_classes: int,
        generator: torch.Generator | None = None,
        **context: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def reset(self) -> None:
        """Forget any state kept across calls (no-op by default)."""

    def _check(self, x: torch.Tensor, y: torch.Tensor, num_classes: int) -> None:
        who = type(self).__name__
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise TypeError(f"{who}: x and y must be torch tensors")
        if y.dim() != 1 or x.shape[0] != y.shape[0]:
            raise ValueError(
                f"{who} requires y of shape (N,) and x of shape (N, ...), got "
                f"x.shape={tuple(x.shape)}, y.shape={tuple(y.shape)}"
            )
        if y.dtype.is_floating_point or y.dtype == torch.bool:
            raise TypeError(f"{who}: labels must be an integer tensor, got {y.dtype}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"{who} requires num_classes >= 2, got num_classes={num_classes}")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise ValueError(
                f"{who} requires labels in [0, num_classes), got labels in "
                f"[{int(y.min())}, {int(y.max())}], num_classes={num_classes}"
            )

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"
