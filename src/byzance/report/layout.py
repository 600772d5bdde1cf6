"""Shared pieces of the report figures: lazy matplotlib, style, colours, labels, fitting.

Matplotlib is an optional extra (``byzance[plot]``): it is imported here, only when a figure is
drawn. ``save`` grows a figure until every drawn artist (legends, titles, tick labels) lies
inside it, then writes it with ``bbox_inches="tight"``: nothing is clipped, whatever the
number and length of the names.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from byzance.report.labels import NO_ATTACK

DPI = 130
#: matplotlib rc settings of every report figure
STYLE = {
    "font.size": 10,
    "axes.titlesize": 10.5,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 9,
    "legend.title_fontsize": 9.5,
    "figure.titlesize": 11.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
}


def _figure_class() -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("byzance report needs matplotlib: pip install 'byzance[plot]'") from None
    return Figure


def style() -> Any:
    """A context manager applying ``STYLE`` (create and save figures inside it)."""
    _figure_class()
    import matplotlib

    return matplotlib.rc_context(STYLE)


def new_figure(width: float, height: float) -> Any:
    """A constrained-layout figure with an Agg canvas (no pyplot, no global state)."""
    Figure = _figure_class()
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save(fig: Any, path: Path) -> Any:
    """Grow ``fig`` until its drawn artists fit inside it, then save it (tight, at the figure's
    dpi: the layout measured is the layout saved); returns it."""
    for _ in range(4):
        fig.canvas.draw()
        tight = fig.get_tightbbox(fig.canvas.get_renderer())  # inches
        width, height = fig.get_size_inches()
        grow_w = max(0.0, -tight.x0) + max(0.0, tight.x1 - width)
        grow_h = max(0.0, -tight.y0) + max(0.0, tight.y1 - height)
        if grow_w < 0.01 and grow_h < 0.01:
            break
        fig.set_size_inches(
            width + grow_w + 0.15 * (grow_w > 0), height + grow_h + 0.15 * (grow_h > 0)
        )
    fig.savefig(path, dpi="figure", bbox_inches="tight", pad_inches=0.1)
    return fig


def wrap(text: str, width: int) -> str:
    """Break ``text`` into lines of at most ``width`` characters where possible: after a ``+``,
    ``,`` or space first, then after a ``_`` or before a ``(``. No character is lost (but
    spaces at line ends), so the meaning stays."""
    if len(text) <= width:
        return text
    return "\n".join(line.rstrip() for line in _wrap_lines(text, width, _BREAKS))


_BREAKS = (r"(?<=[+, ])", r"(?<=_)|(?=\()")


def _wrap_lines(text: str, width: int, breaks: tuple[str, ...]) -> list[str]:
    if len(text) <= width or not breaks:
        return [text]
    lines = [""]
    for piece in re.split(breaks[0], text):
        if lines[-1] and len(lines[-1]) + len(piece.rstrip()) > width:
            lines.append("")
        lines[-1] += piece
    return [part for line in lines for part in _wrap_lines(line, width, breaks[1:])]


def fig_title(fig: Any, lines: Sequence[str], width_in: float) -> None:
    """The figure title: non-empty ``lines``, each wrapped to about the figure's width."""
    chars = max(40, int(width_in * 10))
    fig.suptitle("\n".join(wrap(line, chars) for line in lines if line))


def legend_width(labels: Iterable[str], fontsize: float = 9.0) -> float:
    """Rough width in inches of a one-column legend with these labels."""
    longest = max((max(len(x) for x in lab.split("\n")) for lab in labels), default=0)
    return 0.6 + longest * fontsize * 0.0085


def colours(rules: Sequence[str]) -> dict[str, tuple[Any, str]]:
    """A fixed (colour, line style) per rule, the same in every figure of a report: the ten
    ``tab10`` colours, solid, then dashed, dotted, dash-dotted."""
    styles = ("-", "--", ":", "-.")
    return {rule: (f"C{i % 10}", styles[(i // 10) % 4]) for i, rule in enumerate(rules)}


def het_order(label: str) -> tuple:
    """Sort heterogeneity labels from iid to extreme; dirichlet / gamma by decreasing value."""
    kind = label.split("(")[0].split("=")[0]
    number = re.findall(r"[-+]?\d*\.?\d+(?:e[-+]?\d+)?", label)
    value = -float(number[-1]) if number else 0.0
    return (label != "iid", label == "extreme", kind, value, label)


def axis_order(axis: str, values: Iterable[Any]) -> list[Any]:
    values = set(values)
    if axis == "heterogeneity":
        return sorted(values, key=lambda v: het_order(str(v)))
    return sorted(
        values,
        key=lambda v: (
            not isinstance(v, (int, float)),
            v if isinstance(v, (int, float)) else str(v),
        ),
    )


AXIS_LABEL = {"f": "f (Byzantine workers)", "heterogeneity": "heterogeneity (data split)"}


def tick_label(axis: str, value: Any) -> str:
    text = str(value)
    return text.replace("(", "\n(") if axis == "heterogeneity" else text


def real_attacks(attacks: Sequence[str]) -> list[str]:
    return [a for a in attacks if a != NO_ATTACK]


def worst_phrase(attacks: Sequence[str]) -> str:
    """What a worst-case value of these attacks is: 'no attack', 'attack: alie' or
    'worst case over 3 attacks (alie, ipm, sign_flipping)'."""
    real = real_attacks(attacks)
    if not real:
        return "no attack"
    if len(real) == 1:
        return f"attack: {real[0]}"
    return f"worst case over {len(real)} attacks ({', '.join(real)})"


def attack_title(attack: str) -> str:
    return "no attack" if attack == NO_ATTACK else f"attack: {attack}"


def mean_curve(members: Sequence[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(rounds, mean, min, max) over seeds of runs' test accuracy, on their common rounds."""
    common = members[0].rounds
    for m in members[1:]:
        common = np.intersect1d(common, m.rounds)
    stack = np.stack([m.curve[np.isin(m.rounds, common)] for m in members])
    return common, stack.mean(0), stack.min(0), stack.max(0)
