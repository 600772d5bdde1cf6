"""Figures of an ``Analysis``: accuracy curves per attack and worst-case heatmaps.

Matplotlib is an optional extra (``byzance[plot]``), imported lazily by ``_figure_class``.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from byzance.report.analysis import Analysis
from byzance.report.labels import Key, _label, _show

FORMATS = ("png", "pdf")


def _figure_class() -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("byzance report needs matplotlib: pip install 'byzance[plot]'") from None
    return Figure


def _slug(key: Key) -> str:
    text = "_".join(f"{k}-{_show(v)}" for k, v in key)
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", text).strip("_")


def plot_curves(analysis: Analysis, setting: Key, path: Path) -> None:
    """One panel per attack, one line per rule (selected hyper), band over seeds."""
    Figure = _figure_class()
    attacks = analysis.attacks(setting)
    rules = analysis.rules(setting)
    cols = min(len(attacks), 3)
    rows = math.ceil(len(attacks) / cols)
    fig = Figure(figsize=(4.2 * cols, 3.2 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False, sharey=True)
    colours = {rule: f"C{i % 10}" for i, rule in enumerate(rules)}
    for ax, attack in zip(axes.flat, attacks, strict=False):
        for rule in rules:
            hyper = analysis.selections[(setting, rule)].hyper
            members = [
                r
                for r in analysis.runs
                if (r.setting, r.rule, r.hyper, r.attack) == (setting, rule, hyper, attack)
                and len(r.curve)
            ]
            if not members:
                continue
            common = members[0].rounds
            for m in members[1:]:
                common = np.intersect1d(common, m.rounds)
            stack = np.stack([m.curve[np.isin(m.rounds, common)] for m in members])
            ax.plot(common, stack.mean(0), color=colours[rule], label=rule, lw=1.6)
            if len(members) > 1:
                ax.fill_between(
                    common, stack.min(0), stack.max(0), color=colours[rule], alpha=0.2, lw=0
                )
        ax.set_title(f"attack: {attack}", fontsize=10)
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("test accuracy")
    for ax in list(axes.flat)[len(attacks) :]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(
            handles,
            labels,
            loc="outside lower center",
            ncols=min(len(rules), 4),
            fontsize=9,
            frameon=False,
        )
    title = _label(setting)
    seeds = max((c.seeds for c in analysis.cells.values()), default=1)
    fig.suptitle(
        f"{title}" + (f"  (mean, band = min..max over {seeds} seeds)" if seeds > 1 else ""),
        fontsize=10,
    )
    fig.savefig(path, dpi=130)


def plot_heatmap(analysis: Analysis, outer: Key, settings: list[Key], path: Path) -> None:
    """Worst-case accuracy over attacks: one panel per rule, x = f, y = heterogeneity."""
    Figure = _figure_class()
    fs = sorted({dict(s)["f"] for s in settings})
    hets = sorted(
        {dict(s)["heterogeneity"] for s in settings}, key=lambda h: (h != "iid", h == "extreme", h)
    )
    rules = sorted({r.rule for r in analysis.runs if r.setting in settings})
    cols = min(len(rules), 4)
    rows = math.ceil(len(rules) / cols)
    fig = Figure(
        figsize=(0.9 * len(fs) * cols + 2.2 * cols + 1, 0.55 * len(hets) * rows + 1.4 * rows),
        layout="constrained",
    )
    axes = fig.subplots(rows, cols, squeeze=False)
    grids = {}
    for rule in rules:
        grid = np.full((len(hets), len(fs)), np.nan)
        for s in settings:
            sel = analysis.selections.get((s, rule))
            if sel is not None:
                d = dict(s)
                grid[hets.index(d["heterogeneity"]), fs.index(d["f"])] = sel.worst_test
        grids[rule] = grid
    finite = np.concatenate([g[np.isfinite(g)] for g in grids.values()])
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if vmax - vmin < 1e-6:
        vmin, vmax = vmin - 0.05, vmax + 0.05
    image = None
    for ax, rule in zip(axes.flat, rules, strict=False):
        grid = grids[rule]
        image = ax.imshow(grid, cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
        for i in range(len(hets)):
            for j in range(len(fs)):
                value = grid[i, j]
                if math.isfinite(value):
                    shade = (value - vmin) / (vmax - vmin)
                    ax.text(
                        j,
                        i,
                        f"{value:.2f}",
                        ha="center",
                        va="center",
                        fontsize=8,
                        color="black" if shade > 0.6 else "white",
                    )
        ax.set_xticks(range(len(fs)), [str(f) for f in fs])
        ax.set_yticks(range(len(hets)), hets, fontsize=8)
        ax.set_xlabel("f (Byzantine workers)")
        ax.set_title(rule, fontsize=10)
    for ax in list(axes.flat)[len(rules) :]:
        ax.set_visible(False)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8, label="worst-case test accuracy")
    fig.suptitle("worst case over attacks" + (f": {_label(outer)}" if outer else ""), fontsize=10)
    fig.savefig(path, dpi=130)
