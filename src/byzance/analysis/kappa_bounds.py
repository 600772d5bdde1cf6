r"""Proven bounds on the robustness coefficient :math:`\kappa^\star` of aggregation rules.

A rule F is :math:`(f, \kappa)`-robust (Allouah, Farhadkhani, Guerraoui, Gupta, Pinot,
Stephan, "Fixing by Mixing: A Recipe for Optimal Byzantine ML under Heterogeneity", AISTATS
2023, Definition 2) when for every input :math:`x_1..x_n` and every set S of n - f indices

.. math:: \|F(x) - \bar x_S\|^2 \le \frac{\kappa}{|S|} \sum_{i \in S} \|x_i - \bar x_S\|^2 ;

the smallest such :math:`\kappa` is the rule's :math:`\kappa^\star` (Bareilles, Bouaziz,
Fageot, El-Mhamdi, "Byzantine Machine Learning: MultiKrum and an optimal notion of
robustness", 2026). This module holds the bounds that papers prove:

* every rule: :math:`\kappa^\star \ge f / (n - 2f)` for :math:`n > 2f` (AISTATS 2023,
  Proposition 1: n - 2f points at 0 and f at 1, the f others at 0, cannot be told from
  n - f points at 0 and f Byzantine ones at 1);
* upper bounds (AISTATS 2023, Table 1 and Lemma 1, for n > 2f), with
  :math:`\rho = f / (n - 2f)`: coordinate-wise trimmed mean :math:`6 \rho (1 + \rho)`;
  coordinate-wise median and geometric median :math:`4 (1 + \rho)^2`; Krum
  :math:`6 (1 + \rho)`; NNM in front of an :math:`(f, \kappa)`-robust rule
  :math:`8 f / (n - f) \cdot (\kappa + 1)`.

The search (``byzance.analysis.kappa``) finds lower bounds; a value found above one of these
upper bounds means a bug in the rule, the search or the bound as transcribed here, and the
test suite fails on it. Bounds are exact formulas; a rule they do not cover gets None.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from byzance.aggregators import NNM, Chain, GeometricMedian, Krum, Median, TrimmedMean
from byzance.aggregators import create as create_rule

FIXING_BY_MIXING = "Allouah et al., AISTATS 2023 (Fixing by Mixing)"
LOWER_SOURCE = f"{FIXING_BY_MIXING}, Prop. 1"


@dataclass(frozen=True)
class ProvenBound:
    """An upper bound on a rule's kappa* proven in a paper: ``value`` and where (``source``),
    ``formula`` in words (rho = f / (n - 2f))."""

    value: float
    formula: str
    source: str


def universal_lower_bound(n: int, f: int) -> float:
    """``f / (n - 2f)``: no rule has a smaller kappa* (Allouah et al. 2023, Prop. 1).

    Raises ``ValueError`` unless ``0 <= f`` and ``n > 2f``.
    """
    _check_nf(n, f)
    return f / (n - 2 * f)


def _check_nf(n: int, f: int) -> None:
    if not (isinstance(n, int) and isinstance(f, int)) or f < 0 or n <= 2 * f:
        raise ValueError(f"kappa bounds: expected integers f >= 0 and n > 2f, got n={n!r}, f={f!r}")


def _base_bound(rule: Any, n: int, f: int) -> ProvenBound | None:
    rho = f / (n - 2 * f)
    kind = type(rule)
    if kind is TrimmedMean and rule.f == f:
        return ProvenBound(6 * rho * (1 + rho), "6 rho (1 + rho)", f"{FIXING_BY_MIXING}, Table 1")
    if kind is Median:
        return ProvenBound(4 * (1 + rho) ** 2, "4 (1 + rho)^2", f"{FIXING_BY_MIXING}, Table 1")
    if kind is GeometricMedian:
        return ProvenBound(4 * (1 + rho) ** 2, "4 (1 + rho)^2", f"{FIXING_BY_MIXING}, Table 1")
    if kind is Krum and rule.f == f:
        return ProvenBound(6 * (1 + rho), "6 (1 + rho)", f"{FIXING_BY_MIXING}, Table 1")
    return None


def proven_upper_bound(rule: Any, n: int, f: int) -> ProvenBound | None:
    """The proven upper bound on kappa* of ``rule`` (a spec such as ``"nnm+trimmed_mean"`` or
    an ``Aggregator``) against f of n inputs, or None where no covered result applies.

    Covered: ``trimmed_mean`` and ``krum`` built with the same f, ``median``,
    ``geometric_median``, and ``nnm`` (built with that f) in front of any of them.
    """
    _check_nf(n, f)
    if isinstance(rule, str):
        rule = create_rule(rule, f=f)
    if isinstance(rule, Chain):
        if len(rule.pre) != 1 or type(rule.pre[0]) is not NNM or rule.pre[0].f != f:
            return None
        inner = _base_bound(rule.rule, n, f)
        if inner is None:
            return None
        value = 8 * f / (n - f) * (inner.value + 1)
        return ProvenBound(
            value,
            f"8f/(n-f) (kappa + 1), kappa = {inner.formula}",
            f"{FIXING_BY_MIXING}, Lemma 1 with {inner.source.rsplit(', ', 1)[-1]}",
        )
    return _base_bound(rule, n, f)
