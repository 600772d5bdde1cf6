"""Which figures a report draws, from the shape of its grid (``plan_figures``), and drawing them.

Settings are grouped by every varying field but f and heterogeneity (an *outer* group: e.g. one
per dataset); in each group the figure follows what varies:

* f **and** heterogeneity: ``heatmap`` (worst-case accuracy over attacks, x: f, y:
  heterogeneity, one panel per rule);
* only one of them: ``sweep_f`` / ``sweep_heterogeneity`` (accuracy vs that axis, one line per
  rule; a panel for the worst case over attacks and one per attack) and ``heatmap`` (a single
  panel: a row per rule, a column per value);
* neither, with several rules: ``rules`` (horizontal bars of the final accuracy per rule, the
  worst case over attacks, a marker per attack).

Names get a ``_<outer group>`` suffix when there are several groups. Every setting also gets
``curves`` (``curves_<setting>`` when there are several): test accuracy per round, one panel per
attack, one line per rule. A single run therefore gives ``curves`` only. Matplotlib is an
optional extra (``byzance[plot]``), imported lazily (``layout``).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from byzance.report.analysis import Analysis
from byzance.report.heatmaps import plot_heatmap, plot_rule_heatmap
from byzance.report.labels import Key, _label, _show, _sort_key
from byzance.report.layout import _figure_class, worst_phrase
from byzance.report.plots import plot_curves, plot_rules, plot_sweep

FORMATS = ("png", "pdf")
AXES = ("f", "heterogeneity")

__all__ = [
    "AXES",
    "FORMATS",
    "FigureSpec",
    "_figure_class",
    "_slug",
    "draw_figures",
    "plan_figures",
    "plot_curves",
    "plot_heatmap",
    "plot_rule_heatmap",
    "plot_rules",
    "plot_sweep",
]


def _slug(key: Key) -> str:
    text = "_".join(f"{k}-{_show(v)}" for k, v in key)
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", text).strip("_")


@dataclass
class FigureSpec:
    name: str  # file name without the extension
    description: str  # one line, for the markdown summary
    draw: Callable[[Path], Any]


def _outer_groups(settings: list[Key]) -> list[tuple[Key, list[Key]]]:
    groups: dict[Key, list[Key]] = defaultdict(list)
    for s in settings:
        groups[tuple((k, v) for k, v in s if k not in AXES)].append(s)
    return sorted(groups.items(), key=lambda kv: _sort_key(kv[0]))


def plan_figures(analysis: Analysis) -> list[FigureSpec]:
    """The figures for this grid's shape (see the module doc); drawing needs matplotlib."""
    specs = []
    groups = _outer_groups(analysis.settings())
    for outer, members in groups:
        suffix = "" if len(groups) == 1 else f"_{_slug(outer)}"
        where = f"; {_label(outer)}" if len(groups) > 1 else ""
        attacks = sorted({a for s in members for a in analysis.attacks(s)})
        worst = worst_phrase(sorted(attacks, key=lambda a: (a != "none", a)))
        varying = [a for a in AXES if len({dict(s).get(a) for s in members}) > 1]
        rules = {r.rule for r in analysis.runs if r.setting in members}
        group: list[tuple[str, str, Callable[[Path], Any]]] = []  # (name, description, draw)
        add = group.append
        if len(varying) == 2:
            add(
                (
                    "heatmap",
                    f"final test accuracy, {worst}; x: f, y: heterogeneity, one panel per rule",
                    partial(plot_heatmap, analysis, outer, members),
                )
            )
        elif len(varying) == 1:
            axis = varying[0]
            add(
                (
                    f"sweep_{axis}",
                    f"final test accuracy vs {axis}, one line per rule; {worst}"
                    + ("; and one panel per attack" if len(attacks) > 1 else ""),
                    partial(plot_sweep, analysis, outer, axis, members),
                )
            )
            add(
                (
                    "heatmap",
                    f"final test accuracy, {worst}; a row per rule, a column per {axis}",
                    partial(plot_rule_heatmap, analysis, outer, axis, members),
                )
            )
        elif len(rules) > 1:
            add(
                (
                    "rules",
                    f"final test accuracy per rule, {worst}"
                    + ("; a marker per attack" if len(attacks) > 1 else ""),
                    partial(plot_rules, analysis, members[0]),
                )
            )
        specs += [FigureSpec(name + suffix, text + where, draw) for name, text, draw in group]
    settings = analysis.settings()
    for setting in settings:
        specs.append(
            FigureSpec(
                "curves" if len(settings) == 1 else f"curves_{_slug(setting)}",
                "test accuracy per round, one panel per attack, one line per rule; "
                + _label(setting),
                partial(plot_curves, analysis, setting),
            )
        )
    return specs


def draw_figures(specs: list[FigureSpec], out: Path, fmt: str) -> list[Path]:
    """Draw every planned figure as ``out/<name>.<fmt>``; returns the paths."""
    paths = []
    for spec in specs:
        path = out / f"{spec.name}.{fmt}"
        spec.draw(path)
        paths.append(path)
    return paths
