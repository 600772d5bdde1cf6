"""Declared parameter constraints, checked in one place with one message format.

A constraint describes the values a parameter accepts (``describe()``) and checks one value
(``check(value)``), returning it coerced (``3.0`` -> ``3`` for an ``Integer``, ``1`` -> ``1.0``
for a ``Real``). Every violation raises ``ParameterError`` (a ``ValueError``), or
``ParameterTypeError`` (both a ``ParameterError`` and a ``TypeError``) for a value of the wrong
type, with the message ``"{owner}.{name}: expected {describe}, got {value!r}"``:

>>> from byzance.validation import Integer, OneOf, Real, check_param, validate_dataclass
>>> check_param("Krum", "f", 2.0, Integer(low=0))
2
>>> check_param("Config", "momentum", 1.0, Real(low=0, high=1, closed="left"))
Traceback (most recent call last):
...
byzance.validation.ParameterError: Config.momentum: expected a float in [0, 1), got 1.0
>>> OneOf("iid", "dirichlet").describe()
'one of iid, dirichlet'

A dataclass declares a module-level table ``field -> constraint`` and checks it in
``__post_init__`` (fields are coerced in place, frozen dataclasses included):

>>> from dataclasses import dataclass
>>> @dataclass
... class Options:
...     timeout: float = 60.0
...     retries: int = 3
>>> CONSTRAINTS = {"timeout": Real(low=0, closed="neither"), "retries": Integer(low=0)}
>>> opts = Options(timeout=5, retries=2.0)
>>> validate_dataclass(opts, CONSTRAINTS)
>>> opts
Options(timeout=5.0, retries=2)

Conditions between several values (e.g. ``Krum requires n >= 2f + 3``) are not parameter
constraints and keep their own messages (``byzance.aggregators.base.require``).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from collections.abc import Mapping as _AbcMapping
from typing import Any

__all__ = [
    "ParameterError", "ParameterTypeError", "Constraint", "Integer", "Real", "Boolean",
    "String", "OneOf", "OptionalOf", "AnyOf", "Mapping", "Vector", "check_param",
    "check_params", "param_error", "validate_dataclass",
]  # fmt: skip


class ParameterError(ValueError):
    """A parameter has a value its constraint does not accept."""


class ParameterTypeError(ParameterError, TypeError):
    """A parameter has a value of the wrong type (also a ``TypeError``)."""


class _Invalid(Exception):
    """Raised by ``Constraint._check``; ``check`` turns it into the public error."""

    def __init__(self, wrong_type: bool = False) -> None:
        self.wrong_type = wrong_type


def _show(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _num(x: float) -> str:
    """``0.0`` -> ``'0'``, ``0.5`` -> ``'0.5'`` (bounds as a reader writes them)."""
    if isinstance(x, float) and x.is_integer():
        return str(int(x))
    return repr(x)


class Constraint:
    """Base class: subclasses implement ``describe`` and ``_check`` (raise ``_Invalid``)."""

    def describe(self) -> str:
        raise NotImplementedError

    def _check(self, value: Any) -> Any:
        raise NotImplementedError

    def check(self, value: Any, where: str = "") -> Any:
        """Return ``value`` coerced, or raise naming ``where`` (e.g. ``"Krum.f"``)."""
        try:
            return self._check(value)
        except _Invalid as bad:
            raise param_error(where, self.describe(), value, wrong_type=bad.wrong_type) from None

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.describe()}>"


class _Range(Constraint):
    """Bounds ``low`` / ``high`` (None: unbounded), ``closed``: which of them are included."""

    kind = ""

    def __init__(self, low: Any = None, high: Any = None, closed: str = "both") -> None:
        if closed not in ("both", "left", "right", "neither"):
            raise ValueError(f"closed must be both, left, right or neither, got {closed!r}")
        self.low, self.high, self.closed = low, high, closed

    def describe(self) -> str:
        lo, hi = self.low, self.high
        left, right = self.closed in ("both", "left"), self.closed in ("both", "right")
        if lo is not None and hi is not None:
            return f"{self.kind} in {'(['[left]}{_num(lo)}, {_num(hi)}{')]'[right]}"
        if lo is not None:
            return f"{self.kind} {'>=' if left else '>'} {_num(lo)}"
        if hi is not None:
            return f"{self.kind} {'<=' if right else '<'} {_num(hi)}"
        return self.kind

    def _in_range(self, v: Any) -> Any:
        left, right = self.closed in ("both", "left"), self.closed in ("both", "right")
        if self.low is not None and not (v >= self.low if left else v > self.low):
            raise _Invalid
        if self.high is not None and not (v <= self.high if right else v < self.high):
            raise _Invalid
        return v


class Integer(_Range):
    """An int (bools rejected; integral floats such as ``3.0`` coerced to ``3``, unless
    ``floats=False``) in ``[low, high]`` (either bound None: unbounded)."""

    kind = "an int"

    def __init__(
        self, low: int | None = None, high: int | None = None, *, floats: bool = True
    ) -> None:
        super().__init__(low, high)
        self.floats = floats

    def _check(self, value: Any) -> int:
        if type(value) is not int:
            if isinstance(value, bool) or not isinstance(value, (numbers.Integral, float)):
                raise _Invalid(wrong_type=True)
            if isinstance(value, float) and (not self.floats or not value.is_integer()):
                raise _Invalid(wrong_type=True)
            value = int(value)
        return self._in_range(value)


class Real(_Range):
    """A real number as a float (bools rejected; NaN/inf rejected when ``finite``) within
    ``low`` / ``high`` (None: unbounded); ``closed``: ``"both"``, ``"left"``, ``"right"`` or
    ``"neither"`` of the two bounds are included."""

    def __init__(
        self,
        low: float | None = None,
        high: float | None = None,
        *,
        closed: str = "both",
        finite: bool = True,
    ) -> None:
        super().__init__(low, high, closed)
        self.finite = finite
        bounded = low is not None and high is not None
        self.kind = "a finite float" if finite and not bounded else "a float"

    def _check(self, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise _Invalid(wrong_type=True)
        try:
            value = float(value)
        except (OverflowError, TypeError, ValueError):
            raise _Invalid from None
        if self.finite and not math.isfinite(value):
            raise _Invalid
        return self._in_range(value)


class Boolean(Constraint):
    """``True`` or ``False`` (ints such as 0 / 1 rejected)."""

    def describe(self) -> str:
        return "a bool"

    def _check(self, value: Any) -> bool:
        if not isinstance(value, bool):
            raise _Invalid(wrong_type=True)
        return value


class String(Constraint):
    """A str; ``nonempty``: not blank; ``path``: ``os.PathLike`` accepted too, as a str."""

    def __init__(self, *, nonempty: bool = True, path: bool = False) -> None:
        self.nonempty, self.path = nonempty, path

    def describe(self) -> str:
        if self.path:
            return "a path string"
        return "a non-empty string" if self.nonempty else "a string"

    def _check(self, value: Any) -> str:
        if self.path and isinstance(value, os.PathLike):
            value = os.fspath(value)
        if not isinstance(value, str):
            raise _Invalid(wrong_type=True)
        if self.nonempty and not value.strip():
            raise _Invalid
        return value


class OneOf(Constraint):
    """One of the given choices (compared with ``==`` between values of the same type)."""

    def __init__(self, *choices: Any) -> None:
        if not choices:
            raise ValueError("OneOf: give at least one choice")
        self.choices = choices

    def describe(self) -> str:
        return "one of " + ", ".join(str(c) for c in self.choices)

    def _check(self, value: Any) -> Any:
        for choice in self.choices:
            if isinstance(value, bool) != isinstance(choice, bool):
                continue
            try:
                if isinstance(value, type(choice)) and value == choice:
                    return choice
            except Exception:  # noqa: BLE001 - e.g. an array's ambiguous truth value
                continue
        raise _Invalid


class OptionalOf(Constraint):
    """``None``, or a value accepted by ``constraint``."""

    def __init__(self, constraint: Constraint) -> None:
        self.constraint = constraint

    def describe(self) -> str:
        return f"{self.constraint.describe()} or None"

    def _check(self, value: Any) -> Any:
        return None if value is None else self.constraint._check(value)


class AnyOf(Constraint):
    """A value accepted by one of ``constraints``, tried in order (the first that accepts it
    coerces it); e.g. ``AnyOf(Integer(low=0, floats=False), Real(0, 1))``: a count or a
    fraction."""

    def __init__(self, *constraints: Constraint) -> None:
        if not constraints:
            raise ValueError("AnyOf: give at least one constraint")
        self.constraints = constraints

    def describe(self) -> str:
        return " or ".join(c.describe() for c in self.constraints)

    def _check(self, value: Any) -> Any:
        wrong_type = True
        for constraint in self.constraints:
            try:
                return constraint._check(value)
            except _Invalid as bad:
                wrong_type = wrong_type and bad.wrong_type
        raise _Invalid(wrong_type=wrong_type)


class Vector(Constraint):
    """A 1-D vector of finite real numbers (a torch tensor, numpy array or sequence of
    numbers; bool and complex values rejected), returned unchanged."""

    def describe(self) -> str:
        return "a 1-D vector of finite floats"

    def _check(self, value: Any) -> Any:
        import torch  # here: the module itself needs no torch

        if isinstance(value, (str, bytes, bool, numbers.Number)) or value is None:
            raise _Invalid(wrong_type=True)
        try:
            t = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError):
            raise _Invalid(wrong_type=True) from None
        if t.dtype == torch.bool or t.is_complex():
            raise _Invalid(wrong_type=True)
        if t.dim() != 1 or t.numel() == 0 or not bool(torch.isfinite(t).all()):
            raise _Invalid
        return value


class Mapping(Constraint):
    """A dict with str keys (any ``Mapping`` is copied into one); ``values``: the constraint
    on each value (None: any value, i.e. a dict of keyword parameters)."""

    def __init__(self, values: Constraint | None = None) -> None:
        self.values = values

    def describe(self) -> str:
        if self.values is None:
            return "a dict of keyword parameters"
        return f"a dict of str keys to {self.values.describe()}"

    def _check(self, value: Any) -> dict[str, Any]:
        if not isinstance(value, _AbcMapping):
            raise _Invalid(wrong_type=True)
        if not all(isinstance(k, str) for k in value):
            raise _Invalid
        if self.values is None:
            return value if isinstance(value, dict) else dict(value)
        return {k: self.values._check(v) for k, v in value.items()}


def param_error(
    where: str, expected: str, value: Any, *, wrong_type: bool = False
) -> ParameterError:
    """The error for a value no ``Constraint`` describes (e.g. "a linear attack or its
    name"), in the same format: ``"{where}: expected {expected}, got {value!r}"``; ``where``
    is ``"Owner.name"``. A ``ParameterTypeError`` if ``wrong_type``."""
    cls = ParameterTypeError if wrong_type else ParameterError
    prefix = f"{where}: " if where else ""
    return cls(f"{prefix}expected {expected}, got {_show(value)}")


def _owner_name(owner: Any) -> str:
    return owner if isinstance(owner, str) else type(owner).__name__


def check_param(owner: Any, name: str, value: Any, constraint: Constraint) -> Any:
    """``value`` checked against ``constraint`` and coerced; ``owner`` is a name (e.g. the
    rule's class name) or an object whose class names it.

    Raises ``ParameterError`` / ``ParameterTypeError``: ``"{owner}.{name}: expected ..., got ..."``.
    """
    return constraint.check(value, f"{_owner_name(owner)}.{name}")


def check_params(
    owner: Any, values: _AbcMapping[str, Any], constraints: _AbcMapping[str, Constraint]
) -> dict[str, Any]:
    """Every entry of ``values`` checked by its constraint; returns the coerced dict.

    Names without a constraint raise ``ParameterError`` listing the allowed names; names of
    ``constraints`` missing from ``values`` are not checked (their defaults apply elsewhere).
    """
    who = _owner_name(owner)
    unknown = sorted(set(values) - set(constraints))
    if unknown:
        raise ParameterError(
            f"{who}: unknown parameter(s) {unknown}; allowed: {', '.join(constraints)}"
        )
    return {k: check_param(who, k, v, constraints[k]) for k, v in values.items()}


def validate_dataclass(
    obj: Any, constraints: _AbcMapping[str, Constraint], *, owner: str | None = None
) -> None:
    """Check the fields of the dataclass instance ``obj`` named in ``constraints`` (in that
    order) and store the coerced values in place (frozen dataclasses too); the messages name
    ``owner`` (default: the class name) and the field."""
    who = owner or type(obj).__name__
    fields = {f.name for f in dataclasses.fields(obj)}
    for name, constraint in constraints.items():
        if name not in fields:
            raise TypeError(f"{who} has no field {name!r} (named in its constraints)")
        value = check_param(who, name, getattr(obj, name), constraint)
        object.__setattr__(obj, name, value)
