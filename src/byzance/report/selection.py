"""Hyper-parameter selection: per (setting, rule), the best worst case over attacks.

Scores are means over seeds of the final accuracy (``Cell``). The worst case of a (setting,
rule, hyper) is the minimum over attacks (``none`` left out when there are real attacks).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from byzance.report.labels import NO_ATTACK, Key, _sort_key


@dataclass
class Cell:
    """Mean/std over seeds of one (setting, rule, hyper, attack)."""

    test_mean: float
    test_std: float
    val_mean: float | None
    seeds: int


@dataclass
class Selection:
    setting: Key
    rule: str
    hyper: Key
    score: float  # worst case of the selection metric
    worst_test: float
    candidates: int


def _worst(values: Iterable[tuple[str, float]]) -> float:
    """Minimum over attacks, ``none`` left out when other attacks are present."""
    values = list(values)
    real = [v for a, v in values if a != NO_ATTACK]
    pool = real or [v for _, v in values]
    return min(pool) if pool else math.nan


def select_hyperparameters(
    cells: dict[tuple[Key, str, Key, str], Cell], use_validation: bool
) -> dict[tuple[Key, str], Selection]:
    """For each (setting, rule): the hyper maximising the worst case over attacks.

    The score is the validation accuracy if ``use_validation`` else the test accuracy. Only
    hypers evaluated under the most attacks compete (an incomplete column would look better);
    ties go to the first hyper in sorted order.
    """
    by_group: dict[tuple[Key, str], dict[Key, list[tuple[str, Cell]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for (setting, rule, hyper, attack), cell in cells.items():
        by_group[(setting, rule)][hyper].append((attack, cell))
    selections = {}
    for group, hypers in by_group.items():
        most = max(len(v) for v in hypers.values())
        best: Selection | None = None
        for hyper in sorted(hypers, key=_sort_key):
            entries = hypers[hyper]
            if len(entries) < most:
                continue
            metric = [(a, c.val_mean if use_validation else c.test_mean) for a, c in entries]
            score = _worst(metric)
            if best is None or score > best.score:
                worst_test = _worst((a, c.test_mean) for a, c in entries)
                best = Selection(group[0], group[1], hyper, score, worst_test, len(hypers))
        assert best is not None
        selections[group] = best
    return selections
