"""Build rules and chains from names and parameters (for config files and the CLI).

``create("nnm+trimmed_mean", f=2)`` is ``Chain(NNM(f=2), TrimmedMean(f=2))``: components are
separated by ``+``; each keyword goes to every component whose constructor accepts it.
A component can also carry its own parameters: ``create("bucketing(s=2)+krum", f=1)``.
"""

from __future__ import annotations

import ast
import inspect
import re
from typing import Any

from byzance.aggregators.base import Aggregator, PreAggregator
from byzance.aggregators.chain import Chain

_COMPONENT = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_\-]*)\s*(?:\((.*)\))?\s*$")


def build_component(
    registry: dict[str, type], kind: str, text: str, params: dict[str, Any]
) -> Any:
    """Instantiate one ``name`` or ``name(k=v, ...)`` from ``registry`` (shared with attacks)."""
    match = _COMPONENT.match(text)
    if not match:
        raise ValueError(f"cannot parse {kind} {text!r}; expected 'name' or 'name(k=v, ...)'")
    key = match.group(1).lower().replace("-", "_")
    if key not in registry:
        raise ValueError(f"unknown {kind} {key!r}; known: {', '.join(sorted(registry))}")
    cls = registry[key]
    own: dict[str, Any] = {}
    if match.group(2):
        call = ast.parse(f"f({match.group(2)})", mode="eval").body
        assert isinstance(call, ast.Call)
        if call.args:
            raise ValueError(f"{kind} {text!r}: give parameters by name, e.g. name(f=2)")
        own = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords if kw.arg}
    signature = inspect.signature(cls)
    accepted = set(signature.parameters)
    unknown = set(own) - accepted
    if unknown:
        raise ValueError(
            f"{kind} {key!r} has no parameter {sorted(unknown)}; "
            f"its parameters are {sorted(accepted) or 'none'}"
        )
    kwargs = {k: v for k, v in params.items() if k in accepted}
    kwargs.update(own)
    return cls(**kwargs)


def create_aggregator(
    spec: str, registry: dict[str, type], **params: Any
) -> Aggregator:
    parts = spec.split("+")
    if not spec.strip() or any(not p.strip() for p in parts):
        raise ValueError(f"cannot parse aggregator {spec!r}; expected e.g. 'nnm+trimmed_mean'")
    steps = [build_component(registry, "aggregator", p, params) for p in parts]
    unused = set(params) - {
        name for s in steps for name in inspect.signature(type(s)).parameters
    }
    unused.discard("f")  # the threat model's f goes to every step that uses it
    if unused:
        raise ValueError(f"aggregator {spec!r}: no step takes parameter(s) {sorted(unused)}")
    if len(steps) == 1:
        if isinstance(steps[0], PreAggregator):
            raise ValueError(f"{spec!r} is a pre-aggregator; follow it with a rule, e.g. '+mean'")
        return steps[0]
    return Chain(*steps)
