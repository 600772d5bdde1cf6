"""The engines, by name: ``available()``, ``get(name)``, ``register(cls)``.

The built-in engines register on import of ``byzance.engines``: ``sim`` (the vectorised
in-process simulator) and ``ray`` (real workers on Ray; Ray itself is imported only when a run
starts). A new engine is a module with an ``Engine`` subclass passed to ``register``: the CLI
(``--engine NAME`` and its option flags), the grid runner and the results database pick it up
with no other edit.
"""

from __future__ import annotations

from typing import Any

#: name -> engine instance (a ``byzance.engines.base.Engine``; not imported here, since
#: ``Engine.check`` looks engines up here to say which run a protocol)
_ENGINES: dict[str, Any] = {}


def register(cls: type) -> type:
    """Register an engine class under its ``name`` (usable as a class decorator)."""
    if not cls.name or not cls.name.isidentifier():
        raise ValueError(f"register: engine name must be an identifier, got {cls.name!r}")
    _ENGINES[cls.name] = cls()
    return cls


def available() -> list[str]:
    """The registered engine names (``sim`` first)."""
    return list(_ENGINES)


def get(name: str) -> Any:
    """The engine registered as ``name`` (``ValueError`` listing the others if none)."""
    try:
        return _ENGINES[name]
    except KeyError:
        raise ValueError(
            f"engine must be one of {', '.join(_ENGINES)}, got {name!r}"
        ) from None


def engines_running(protocol: str) -> list[str]:
    """The engines that run ``protocol``."""
    return [name for name, e in _ENGINES.items() if protocol in e.protocols]
