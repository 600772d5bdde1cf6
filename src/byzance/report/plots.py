"""Line and bar figures of an ``Analysis``: accuracy curves, rule comparison, sweeps over f or
heterogeneity. Each function draws one file and returns the (saved) matplotlib figure."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from byzance.report.analysis import Analysis
from byzance.report.labels import Key, _label
from byzance.report.layout import (
    AXIS_LABEL,
    attack_title,
    axis_order,
    colours,
    fig_title,
    legend_width,
    mean_curve,
    new_figure,
    real_attacks,
    save,
    style,
    tick_label,
    worst_phrase,
    wrap,
)

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")
GREYS = ("black", "0.25", "0.5", "0.75")


def _grid_shape(panels: int) -> tuple[int, int]:
    """(rows, columns) of a panel grid: at most 3 columns, 4 panels as 2 x 2."""
    cols = 2 if panels == 4 else min(panels, 3)
    return math.ceil(panels / cols), cols


def rule_label(analysis: Analysis, setting: Key, rule: str) -> str:
    """The rule, with its selected hyper-parameters when they were chosen among several."""
    if not analysis.varying_hyper:
        return rule
    return f"{rule} ({_label(analysis.selections[(setting, rule)].hyper)})"


def _seeds(analysis: Analysis, settings: Sequence[Key]) -> int:
    return max((c.seeds for k, c in analysis.cells.items() if k[0] in settings), default=1)


def _outside_legend(ax: Any, handles: Sequence[Any], labels: Sequence[str], title: str) -> None:
    """A legend to the right of ``ax`` (the top-right panel), its top at the panel's top: the
    constrained layout makes room for it, and it never runs into the figure title."""
    ax.legend(
        handles,
        labels,
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        borderaxespad=0.0,
        ncols=1 if len(labels) <= 16 else 2,
        title=title,
        frameon=False,
        alignment="left",
    )


def _rule_legend(axes: Sequence[Any], cols: int, title: str = "rule") -> None:
    """One legend of the rules of all panels, right of the top-right panel."""
    entries: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, handle)
    if entries:
        anchor = axes[min(cols, len(axes)) - 1]
        _outside_legend(anchor, list(entries.values()), list(entries), title)


def plot_curves(analysis: Analysis, setting: Key, path: Path) -> Any:
    """Test accuracy per round: one panel per attack, one line per rule (selected hyper),
    band = min..max over seeds."""
    attacks = analysis.attacks(setting)
    rules = analysis.rules(setting)
    palette = colours(analysis.rules())
    labels = {rule: wrap(rule_label(analysis, setting, rule), 36) for rule in rules}
    rows, cols = _grid_shape(len(attacks))
    lines = sum(lab.count("\n") + 1 for lab in labels.values())
    width = 4.3 * cols + legend_width(labels.values())
    height = max(3.1 * rows + 1.0, 0.24 * lines + 1.6)
    seeds = _seeds(analysis, [setting])
    with style():
        fig = new_figure(width, height)
        axes = fig.subplots(rows, cols, squeeze=False, sharey=True)
        used = list(axes.flat)[: len(attacks)]
        for ax, attack in zip(used, attacks, strict=True):
            for rule in rules:
                hyper = analysis.selections[(setting, rule)].hyper
                key = (setting, rule, hyper, attack)
                members = [
                    r
                    for r in analysis.runs
                    if (r.setting, r.rule, r.hyper, r.attack) == key and len(r.curve)
                ]
                if not members:
                    continue
                rounds, mean, low, high = mean_curve(members)
                colour, dash = palette[rule]
                ax.plot(rounds, mean, color=colour, ls=dash, label=labels[rule], lw=1.8)
                if len(members) > 1:
                    ax.fill_between(rounds, low, high, color=colour, alpha=0.18, lw=0)
            ax.set_title(wrap(attack_title(attack), 36))
            ax.set_xlabel("round")
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.grid(alpha=0.3)
        for ax in axes[:, 0]:
            ax.set_ylabel("test accuracy")
        for ax in list(axes.flat)[len(attacks) :]:
            ax.remove()
        if len(rules) > 1 or analysis.varying_hyper:
            chosen = " (selected hyper-parameters)" if analysis.varying_hyper else ""
            _rule_legend(used, cols, "rule" + chosen)
        spread = f"mean over {seeds} seeds, band: min to max" if seeds > 1 else ""
        fig_title(
            fig,
            [
                "Test accuracy per round, "
                + ("one line per rule" if len(rules) > 1 else labels[rules[0]])
                + (f" ({spread})" if spread else ""),
                _label(setting),
            ],
            width,
        )
        return save(fig, path)


def plot_rules(analysis: Analysis, setting: Key, path: Path) -> Any:
    """Horizontal bars: final test accuracy per rule (the worst case over attacks, best rule on
    top), a marker per attack when there are several, error bars (std over seeds) otherwise."""
    attacks = analysis.attacks(setting)
    palette = colours(analysis.rules())
    sels = {rule: analysis.selections[(setting, rule)] for rule in analysis.rules(setting)}
    order = sorted(
        sels,
        key=lambda r: (-sels[r].worst_test if math.isfinite(sels[r].worst_test) else math.inf, r),
    )
    labels = [wrap(rule_label(analysis, setting, rule), 30) for rule in order]
    values = np.array([sels[rule].worst_test for rule in order])
    several = len(attacks) > 1
    seeds = _seeds(analysis, [setting])
    lines = sum(lab.count("\n") + 1 for lab in labels)
    attack_labels = [wrap(a, 30) for a in attacks]
    width = 6.8 + (legend_width(attack_labels) if several else 0.0)
    height = max(0.36 * len(order) + 0.16 * (lines - len(order)) + 1.6, 0.26 * len(attacks) + 1.8)
    with style():
        fig = new_figure(width, height)
        ax = fig.subplots()
        y = np.arange(len(order))
        std = None
        if not several and seeds > 1:
            std = [
                analysis.cells[(setting, rule, sels[rule].hyper, attacks[0])].test_std
                for rule in order
            ]
        ax.barh(
            y,
            np.nan_to_num(values),
            height=0.64,
            xerr=std,
            capsize=3,
            color=[palette[rule][0] for rule in order],
            alpha=0.85,
        )
        for i, value in enumerate(values):
            ax.text(
                0.008,
                i,
                "-" if math.isnan(value) else f"{value:.3f}",
                va="center",
                ha="left",
                fontsize=8.5,
                bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8},
            )
        if several:
            for k, attack in enumerate(attacks):
                xs = [
                    getattr(
                        analysis.cells.get((setting, rule, sels[rule].hyper, attack)),
                        "test_mean",
                        np.nan,
                    )
                    for rule in order
                ]
                ax.scatter(
                    xs,
                    y,
                    marker=MARKERS[k % len(MARKERS)],
                    s=38,
                    zorder=3,
                    facecolors="white" if attack == "none" else GREYS[k % len(GREYS)],
                    edgecolors="black",
                    linewidths=0.8,
                    label=attack_labels[k],
                )
            _outside_legend(ax, *ax.get_legend_handles_labels(), "attack")
        ax.set_yticks(y, labels)
        ax.set_ylim(len(order) - 0.5, -0.5)  # best rule on top
        finite = values[np.isfinite(values)]
        ax.set_xlim(0, max(1.0, float(finite.max()) + 0.02) if finite.size else 1.0)
        worst_bar = len(real_attacks(attacks)) > 1
        ax.set_xlabel(
            "final test accuracy" + (" (bar: worst case, markers: attacks)" if worst_bar else "")
        )
        ax.grid(axis="x", alpha=0.3)
        stat = f"mean over {seeds} seeds" + (", error bar: std" if std is not None else "")
        fig_title(
            fig,
            [
                f"Final test accuracy per rule, {worst_phrase(attacks)}",
                ", ".join(x for x in (_label(setting), stat if seeds > 1 else "") if x),
            ],
            width,
        )
        return save(fig, path)


def plot_sweep(analysis: Analysis, outer: Key, axis: str, settings: list[Key], path: Path) -> Any:
    """Final test accuracy vs ``axis`` (f or heterogeneity), one line per rule: a panel for the
    worst case over attacks (with several attacks) and one per attack."""
    by_value = {dict(s)[axis]: s for s in settings}
    values = axis_order(axis, by_value)
    rules = sorted({r.rule for r in analysis.runs if r.setting in settings})
    palette = colours(analysis.rules())
    attacks = axis_order("attack", {a for s in settings for a in analysis.attacks(s)})
    attacks.sort(key=lambda a: a != "none")
    panels: list[str | None] = list(attacks)
    if len(real_attacks(attacks)) > 1:
        panels.insert(0, None)  # None: worst case
    numeric = all(isinstance(v, (int, float)) for v in values)
    xs = np.array(values, dtype=float) if numeric else np.arange(len(values), dtype=float)
    rows, cols = _grid_shape(len(panels))
    labels = {rule: wrap(rule, 36) for rule in rules}
    lines = sum(lab.count("\n") + 1 for lab in labels.values())
    width = max(3.4, 0.55 * len(values) + 1.6) * cols + legend_width(labels.values())
    height = max(3.2 * rows + 1.0, 0.24 * lines + 1.6)
    with style():
        fig = new_figure(width, height)
        axes = fig.subplots(rows, cols, squeeze=False, sharey=True)
        used = list(axes.flat)[: len(panels)]
        for ax, attack in zip(used, panels, strict=True):
            for rule in rules:
                ys = []
                for v in values:
                    sel = analysis.selections.get((by_value[v], rule))
                    if sel is None:
                        ys.append(np.nan)
                    elif attack is None:
                        ys.append(sel.worst_test)
                    else:
                        cell = analysis.cells.get((by_value[v], rule, sel.hyper, attack))
                        ys.append(cell.test_mean if cell else np.nan)
                colour, dash = palette[rule]
                ax.plot(xs, ys, color=colour, ls=dash, marker="o", ms=4, lw=1.8, label=labels[rule])
            title = worst_phrase(attacks) if attack is None else attack_title(attack)
            if len(panels) > 1:  # a single panel: its attack is in the figure title
                ax.set_title(wrap(title, 34))
            ax.set_xticks(xs, [tick_label(axis, v) for v in values])
            ax.margins(x=0.12)
            ax.set_xlabel(AXIS_LABEL.get(axis, axis))
            ax.grid(alpha=0.3)
        for ax in axes[:, 0]:
            ax.set_ylabel("final test accuracy")
        for ax in list(axes.flat)[len(panels) :]:
            ax.remove()
        _rule_legend(used, cols)
        seeds = _seeds(analysis, settings)
        notes = (
            _label(outer) if outer else "",
            f"mean over {seeds} seeds" if seeds > 1 else "",
            "hyper-parameters selected per rule and " + axis if analysis.varying_hyper else "",
        )
        what = f" ({worst_phrase(attacks)})" if len(panels) == 1 else ""
        fig_title(
            fig,
            [
                f"Final test accuracy vs {axis}, one line per rule{what}",
                "; ".join(filter(None, notes)),
            ],
            width,
        )
        return save(fig, path)
