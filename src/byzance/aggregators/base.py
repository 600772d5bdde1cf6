"""The two kinds of building blocks: rules (n vectors -> 1) and pre-aggregators (n -> m)."""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch

from byzance._tensor import as_matrix
from byzance.aggregators._distances import ExactGram
from byzance.validation import Integer, check_param

_F = Integer(low=0)


def check_f(who: str, f: int) -> int:
    """Validate the number of Byzantine inputs a rule is built to tolerate (an int >= 0)."""
    return check_param(who, "f", f, _F)


def require(who: str, ok: bool, condition: str, **values: int) -> None:
    """Raise ``ValueError`` naming the rule, the violated condition and the values."""
    if not ok:
        shown = ", ".join(f"{k}={v}" for k, v in values.items())
        raise ValueError(f"{who} requires {condition}, got {shown}")


class Aggregator:
    """A robust aggregation rule: maps n vectors (an (n, d) input) to one d-vector.

    Subclasses set hyper-parameters in ``__init__``, implement ``aggregate`` on an (n, d)
    floating tensor (never writing into it) and ``check`` for the condition on n.

    Exact geometry: a rule whose ``aggregate`` takes a keyword ``gram`` (an ``ExactGram`` of
    the rows, or None) takes its pairwise distances / norms from it instead of from ``x``,
    e.g. when ``x`` is a sketch of the real vectors on a few coordinates (see ``apply_rule``).
    Rules without that keyword (coordinate-wise rules, user subclasses) simply work on ``x``.
    """

    #: registry name, e.g. ``"krum"``
    name: str = ""

    def __call__(self, vectors: Any) -> Any:
        x, restore = as_matrix(vectors, type(self).__name__)
        self.check(x.shape[0])
        return restore(self.aggregate(x))

    def check(self, n: int) -> None:
        """Raise ``ValueError`` if the rule cannot run on ``n`` inputs (default: n >= 1)."""
        require(type(self).__name__, n >= 1, "n >= 1", n=n)

    def aggregate(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # -- state across rounds (explicit: created, passed, returned, checkpointed) --------------
    def init_state(self) -> Any:
        """The state this rule carries from one round to the next (None: stateless)."""
        return None

    def step(self, x: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """One round's aggregation with the state of the previous ones: ``(aggregate, new
        state)``. Stateless rules return ``(aggregate(x), state)``; a rule whose output
        depends on earlier rounds (e.g. ``CenteredClipping``) overrides it."""
        return self.aggregate(x), state

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"


class PreAggregator:
    """A pre-aggregation step: maps n vectors to m vectors, fed to a rule (see ``Chain``)."""

    name: str = ""

    def __call__(self, vectors: Any) -> Any:
        x, restore = as_matrix(vectors, type(self).__name__)
        self.check(x.shape[0])
        return restore(self.transform(x))

    def check(self, n: int) -> None:
        """Raise ``ValueError`` if the step cannot run on ``n`` inputs."""
        require(type(self).__name__, n >= 1, "n >= 1", n=n)

    def output_size(self, n: int) -> int:
        """Number of vectors produced from ``n`` inputs (default: n)."""
        return n

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def transform_with_gram(
        self, x: torch.Tensor, gram: ExactGram | None
    ) -> tuple[torch.Tensor, ExactGram | None]:
        """``transform(x)`` using, and passing on, the exact geometry ``gram`` of the rows.

        Returns the m output vectors and the ``ExactGram`` of them, or None where the step
        cannot transform it (the following steps then compute their geometry from their
        input). The default ignores ``gram`` and returns None. Steps that are row maps
        ``y = L x`` (NNM, Bucketing, Clipping, ARC) override it (``gram.linear(L)``).
        """
        return self.transform(x), None

    def init_state(self) -> Any:
        """The state this step carries from one round to the next (None: stateless)."""
        return None

    def transform_step(self, x: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """``(transform(x), new state)`` with an explicit state (see ``Aggregator.step``);
        e.g. ``Bucketing``'s random generator."""
        return self.transform(x), state

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"


def _defines(cls: type, name: str) -> type | None:
    """The class of ``cls``'s MRO that defines ``name`` (None if none)."""
    return next((k for k in cls.__mro__ if name in vars(k)), None)


@functools.lru_cache(maxsize=256)
def _rule_takes_gram(cls: type) -> bool:
    fn = getattr(cls, "aggregate", None)
    try:
        return fn is not None and "gram" in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return False


@functools.lru_cache(maxsize=256)
def _pre_takes_gram(cls: type) -> bool:
    # the most derived definition of transform / transform_with_gram must be the latter (a
    # subclass overriding only transform has its own transform used, without the geometry)
    owner = _defines(cls, "transform_with_gram")
    plain = _defines(cls, "transform")
    return owner is not None and (plain is None or issubclass(owner, plain))


def apply_rule(rule: Any, x: torch.Tensor, gram: ExactGram | None = None) -> torch.Tensor:
    """``rule.aggregate(x)``, passing ``gram=`` when given and the rule's ``aggregate`` takes
    it (any object with an ``aggregate(x)`` method is accepted)."""
    if gram is not None and _rule_takes_gram(type(rule)):
        return rule.aggregate(x, gram=gram)
    return rule.aggregate(x)


def apply_pre(
    step: Any, x: torch.Tensor, gram: ExactGram | None = None
) -> tuple[torch.Tensor, ExactGram | None]:
    """``(step.transform(x), geometry of the output or None)`` (see ``transform_with_gram``)."""
    if gram is not None and _pre_takes_gram(type(step)):
        return step.transform_with_gram(x, gram)
    return step.transform(x), None
