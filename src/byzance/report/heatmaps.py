"""Heatmaps of the worst-case final test accuracy over attacks (value written in each cell):
f x heterogeneity with one panel per rule, or rule x one swept axis in a single panel."""

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
    axis_order,
    fig_title,
    new_figure,
    save,
    style,
    tick_label,
    worst_phrase,
    wrap,
)


def _limits(grids: Sequence[np.ndarray]) -> tuple[float, float]:
    finite = np.concatenate([g[np.isfinite(g)] for g in grids])
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if vmax - vmin < 1e-6:
        vmin, vmax = vmin - 0.05, vmax + 0.05
    return vmin, vmax


def _draw_grid(ax: Any, grid: np.ndarray, vmin: float, vmax: float, fontsize: float) -> Any:
    image = ax.imshow(grid, cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
    for (i, j), value in np.ndenumerate(grid):
        if math.isfinite(value):
            shade = (value - vmin) / (vmax - vmin)
            ax.text(
                j,
                i,
                f"{value:.2f}",
                ha="center",
                va="center",
                fontsize=fontsize,
                color="black" if shade > 0.6 else "white",
            )
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    return image


def _attacks(analysis: Analysis, settings: Sequence[Key]) -> list[str]:
    return sorted(
        {a for s in settings for a in analysis.attacks(s)}, key=lambda a: (a != "none", a)
    )


def _titles(
    fig: Any,
    what: str,
    outer: Key,
    analysis: Analysis,
    settings: Sequence[Key],
    width: float,
    note: str = "",
) -> None:
    """Two title lines: ``what``, then ``note``, the outer group and the number of seeds."""
    seeds = max((c.seeds for k, c in analysis.cells.items() if k[0] in settings), default=1)
    chosen = "hyper-parameters selected per rule and cell" if analysis.varying_hyper else ""
    parts = (
        note,
        _label(outer) if outer else "",
        f"mean over {seeds} seeds" if seeds > 1 else "",
        chosen,
    )
    fig_title(fig, [what, "; ".join(x for x in parts if x)], width)


def plot_heatmap(analysis: Analysis, outer: Key, settings: list[Key], path: Path) -> Any:
    """Worst-case accuracy over attacks: one panel per rule, x = f, y = heterogeneity."""
    fs = axis_order("f", {dict(s)["f"] for s in settings})
    hets = axis_order("heterogeneity", {dict(s)["heterogeneity"] for s in settings})
    rules = sorted({r.rule for r in analysis.runs if r.setting in settings})
    grids = {}
    for rule in rules:
        grid = np.full((len(hets), len(fs)), np.nan)
        for s in settings:
            sel = analysis.selections.get((s, rule))
            if sel is not None:
                d = dict(s)
                grid[hets.index(d["heterogeneity"]), fs.index(d["f"])] = sel.worst_test
        grids[rule] = grid
    vmin, vmax = _limits(list(grids.values()))
    cols = min(len(rules), 4)
    rows = math.ceil(len(rules) / cols)
    panel_w = max(2.3, 0.62 * len(fs) + 0.8)
    width = panel_w * cols + 2.4
    height = (0.42 * len(hets) + 1.1) * rows + 1.0
    attacks = _attacks(analysis, settings)
    with style():
        fig = new_figure(width, height)
        axes = fig.subplots(rows, cols, squeeze=False)
        used = list(axes.flat)[: len(rules)]
        image = None
        for k, (ax, rule) in enumerate(zip(used, rules, strict=True)):
            image = _draw_grid(ax, grids[rule], vmin, vmax, 8.5)
            ax.set_xticks(range(len(fs)), [str(f) for f in fs])
            ax.set_yticks(
                range(len(hets)),
                [tick_label("heterogeneity", h) for h in hets] if k % cols == 0 else [],
            )
            if k % cols:
                ax.tick_params(left=False)
            if k >= len(rules) - cols:
                ax.set_xlabel(AXIS_LABEL["f"])
            ax.set_title(wrap(rule, max(16, int(panel_w * 9))))
        for ax in list(axes.flat)[len(rules) :]:
            ax.remove()
        if image is not None:
            fig.colorbar(image, ax=used, shrink=0.85, label="final test accuracy")
        _titles(
            fig,
            f"Final test accuracy, {worst_phrase(attacks)}",
            outer,
            analysis,
            settings,
            width,
            note="one panel per rule",
        )
        return save(fig, path)


def plot_rule_heatmap(
    analysis: Analysis, outer: Key, axis: str, settings: list[Key], path: Path
) -> Any:
    """Worst-case accuracy over attacks in one panel: a row per rule (best on top), a column
    per value of ``axis`` (f or heterogeneity)."""
    by_value = {dict(s)[axis]: s for s in settings}
    values = axis_order(axis, by_value)
    rules = sorted({r.rule for r in analysis.runs if r.setting in settings})
    grid = np.full((len(rules), len(values)), np.nan)
    for i, rule in enumerate(rules):
        for j, v in enumerate(values):
            sel = analysis.selections.get((by_value[v], rule))
            if sel is not None:
                grid[i, j] = sel.worst_test
    means = [np.nanmean(row) if np.isfinite(row).any() else -np.inf for row in grid]
    order = sorted(range(len(rules)), key=lambda i: (-means[i], rules[i]))
    grid = grid[order]
    labels = [wrap(rules[i], 30) for i in order]
    vmin, vmax = _limits([grid])
    attacks = _attacks(analysis, settings)
    longest = max(len(x) for label in labels for x in label.split("\n"))
    width = max(0.8 * len(values) + 0.075 * longest + 3.2, 6.4)
    height = 0.36 * len(rules) + 2.3
    with style():
        fig = new_figure(width, height)
        ax = fig.subplots()
        image = _draw_grid(ax, grid, vmin, vmax, 8.5)
        ax.set_xticks(range(len(values)), [tick_label(axis, v) for v in values])
        ax.set_yticks(range(len(rules)), labels)
        ax.set_xlabel(AXIS_LABEL.get(axis, axis))
        fig.colorbar(image, ax=ax, shrink=0.9, label="final test accuracy")
        _titles(
            fig,
            f"Final test accuracy per rule and {axis}",
            outer,
            analysis,
            settings,
            width,
            note=worst_phrase(attacks),
        )
        return save(fig, path)
