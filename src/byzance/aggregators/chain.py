"""Composition: pre-aggregators in front of a rule, e.g. ``Chain(NNM(2), TrimmedMean(2))``."""

from __future__ import annotations

from typing import Any

import torch

from byzance.aggregators._distances import ExactGram
from byzance.aggregators.base import (
    Aggregator,
    PreAggregator,
    _defines,
    _rule_takes_gram,
    apply_pre,
    apply_rule,
)


def _provides(obj: object, method: str, *over: str) -> bool:
    """Whether ``obj`` has ``method`` from a class at least as derived as the ones defining the
    methods ``over``, none of them set on the instance itself (a subclass or an instance that
    overrides only those has them used, not ``method``)."""
    owner = _defines(type(obj), method)
    own = getattr(obj, "__dict__", {})
    return (
        owner is not None
        and not any(name in own for name in over)
        and all(issubclass(owner, _defines(type(obj), name) or object) for name in over)
    )


def _fusable(step: PreAggregator, rule: Aggregator, gram: ExactGram | None) -> bool:
    """Whether ``rule(step(x))`` can run as ``rule.aggregate_mixed(x, W)``: ``step`` is a
    mixing ``y = W x`` exposing ``mixing(x, gram, geometry=...) -> (W, gram_y)`` (NNM) and
    ``rule`` reduces ``W @ x`` itself (Median, TrimmedMean, Meamed), needing no geometry."""
    return (
        _provides(step, "mixing", "transform", "transform_with_gram")
        and _provides(rule, "aggregate_mixed", "aggregate")
        and (gram is None or not _rule_takes_gram(type(rule)))
    )


class Chain(Aggregator):
    """Apply pre-aggregators in order, then a rule: ``rule(pre_k(...pre_1(x)))``.

    The condition of each step is checked on the number of vectors it actually receives,
    e.g. ``Chain(Bucketing(s=2), Krum(f=1))`` on n=10 checks Krum on 5 buckets.

    ``aggregate(x, gram=...)`` propagates an exact geometry of the rows (``ExactGram``)
    through the pre-aggregators that transform it (``transform_with_gram``) to the rule; after
    a step that cannot, the following steps compute theirs from their input.

    A mixing last (NNM) in front of a coordinate-wise rule (Median, TrimmedMean, Meamed) is
    fused into the rule: the mixed vectors are never formed (see ``aggregate``).
    """

    name = "chain"

    def __init__(self, *steps: PreAggregator | Aggregator) -> None:
        if not steps:
            raise ValueError("Chain needs at least one step (a rule)")
        *pre, rule = steps
        for step in pre:
            if not isinstance(step, PreAggregator):
                raise TypeError(
                    f"Chain: every step but the last must be a pre-aggregator, got {step!r}"
                )
        if not isinstance(rule, Aggregator):
            raise TypeError(f"Chain: the last step must be an aggregation rule, got {rule!r}")
        self.pre: tuple[PreAggregator, ...] = tuple(pre)
        self.rule: Aggregator = rule

    @property
    def steps(self) -> tuple[PreAggregator | Aggregator, ...]:
        return (*self.pre, self.rule)

    def check(self, n: int) -> None:
        for step in self.pre:
            step.check(n)
            n = step.output_size(n)
        self.rule.check(n)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """The pre-aggregated vectors, before the rule."""
        for step in self.pre:
            x = step.transform(x)
        return x

    def transform_with_gram(
        self, x: torch.Tensor, gram: ExactGram | None
    ) -> tuple[torch.Tensor, ExactGram | None]:
        """The pre-aggregated vectors and their exact geometry (None once it is lost)."""
        return self._run(self.pre, x, gram)

    @staticmethod
    def _run(
        steps: tuple[PreAggregator, ...], x: torch.Tensor, gram: ExactGram | None
    ) -> tuple[torch.Tensor, ExactGram | None]:
        for step in steps:
            if gram is None:
                x = step.transform(x)
            else:
                x, gram = apply_pre(step, x, gram)
        return x, gram

    def aggregate(self, x: torch.Tensor, gram: ExactGram | None = None) -> torch.Tensor:
        """``rule(pre_k(...pre_1(x)))``. When the last pre-aggregator is a mixing ``W x``
        (``NNM.mixing``) and the rule reduces ``W @ x`` itself (``aggregate_mixed``: Median,
        TrimmedMean, Meamed), the (m, d) mixed vectors are never formed: the rule gets the
        input of the mixing and W (same result up to the rounding of the sums)."""
        if self.pre and _fusable(self.pre[-1], self.rule, gram):
            x, gram = self._run(self.pre[:-1], x, gram)
            w, _ = self.pre[-1].mixing(x, gram, geometry=False)  # the rule takes no gram
            return self.rule.aggregate_mixed(x, w)
        y, gram = self._run(self.pre, x, gram)
        return apply_rule(self.rule, y, gram)

    def init_state(self) -> tuple[Any, ...] | None:
        """The steps' states in order, or None when no step keeps one."""
        states = tuple(step.init_state() for step in self.steps)
        return None if all(s is None for s in states) else states

    def step(self, x: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """``aggregate(x)`` with each step's state passed to it and returned (same fusion)."""
        if state is None:
            return self.aggregate(x), None
        states = list(state)
        last = len(self.pre) - 1
        fuse = bool(self.pre) and states[last] is None and _fusable(self.pre[-1], self.rule, None)
        for i, pre in enumerate(self.pre[:-1] if fuse else self.pre):
            x, states[i] = pre.transform_step(x, states[i])
        if fuse:
            w, _ = self.pre[-1].mixing(x, None, geometry=False)
            return self.rule.aggregate_mixed(x, w), tuple(states)
        out, states[-1] = self.rule.step(x, states[-1])
        return out, tuple(states)

    def __repr__(self) -> str:
        return f"Chain({', '.join(map(repr, self.steps))})"
