"""Composition: pre-aggregators in front of a rule, e.g. ``Chain(NNM(2), TrimmedMean(2))``."""

from __future__ import annotations

import torch

from byzance.aggregators._distances import ExactGram
from byzance.aggregators.base import Aggregator, PreAggregator, apply_pre, apply_rule


class Chain(Aggregator):
    """Apply pre-aggregators in order, then a rule: ``rule(pre_k(...pre_1(x)))``.

    The condition of each step is checked on the number of vectors it actually receives,
    e.g. ``Chain(Bucketing(s=2), Krum(f=1))`` on n=10 checks Krum on 5 buckets.

    ``aggregate(x, gram=...)`` propagates an exact geometry of the rows (``ExactGram``)
    through the pre-aggregators that transform it (``transform_with_gram``) to the rule; after
    a step that cannot, the following steps compute theirs from their input.
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
        for step in self.pre:
            if gram is None:
                x = step.transform(x)
            else:
                x, gram = apply_pre(step, x, gram)
        return x, gram

    def aggregate(self, x: torch.Tensor, gram: ExactGram | None = None) -> torch.Tensor:
        if gram is None:
            return self.rule.aggregate(self.transform(x))
        y, gram = self.transform_with_gram(x, gram)
        return apply_rule(self.rule, y, gram)

    def __repr__(self) -> str:
        return f"Chain({', '.join(map(repr, self.steps))})"
