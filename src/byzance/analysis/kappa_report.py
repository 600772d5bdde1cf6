"""Tables and plots of searched robustness coefficients beside the proven bounds.

``kappa_grid`` runs ``kappa`` for every rule, n and f (f defaults to every value the rule
accepts with n > 2f), ``format_table`` prints the results as a markdown table (value found,
f / (n - 2f), the proven upper bound and its source) and ``plot_kappa`` draws kappa against
f / n, one panel per n, with the universal lower bound and the proven upper bounds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from byzance.analysis.kappa import KappaResult, kappa, max_f


def grid_points(rules: Sequence[str], ns: Sequence[int], fs: Sequence[int] | None) -> list:
    """(rule, n, f) for every rule, n and f the rule accepts (all f >= 1 when ``fs`` is None);
    a point the rule refuses (e.g. Krum with n < 2f + 3) is left out."""
    points = []
    for rule in rules:
        for n in ns:
            top = max_f(rule, n)
            for f in range(1, top + 1) if fs is None else fs:
                if 1 <= f <= top:
                    points.append((rule, n, f))
    return points


def kappa_grid(
    rules: Sequence[str],
    ns: Sequence[int],
    fs: Sequence[int] | None = None,
    *,
    on_result: Callable[[KappaResult], None] | None = None,
    **search: Any,
) -> list[KappaResult]:
    """``kappa(rule, n, f, **search)`` over ``grid_points(rules, ns, fs)``; ``on_result`` is
    called after each search (progress)."""
    out = []
    for rule, n, f in grid_points(rules, ns, fs):
        result = kappa(rule, n, f, **search)
        out.append(result)
        if on_result is not None:
            on_result(result)
    return out


def _num(v: float) -> str:
    return "unbounded" if math.isinf(v) else f"{v:.4g}"


def format_table(results: Sequence[KappaResult], *, timing: bool = True) -> str:
    """A markdown table: rule, n, f, f/n, the universal lower bound, the value found, the
    proven upper bound and its source (and the search's evaluations and seconds)."""
    head = ["rule", "n", "f", "f/n", "f/(n-2f)", "found", "proven upper bound", "source"]
    if timing:
        head += ["evaluations", "seconds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        ub = r.upper_bound
        row = [
            f"`{r.rule}`", str(r.n), str(r.f), f"{r.f / r.n:.2f}", f"{r.lower_bound:.4g}",
            _num(r.value) + (" (!)" if r.above_upper_bound else ""),
            "" if ub is None else f"{ub.value:.4g}", "" if ub is None else ub.source,
        ]
        if timing:
            row += [str(r.evaluations), f"{r.seconds:.1f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def plot_kappa(results: Sequence[KappaResult], path: str | Path) -> Path:
    """Plot kappa against f / n (log scale), one panel per n: the value found per rule
    (solid, markers), its proven upper bound (dotted, same colour) and f / (n - 2f) (black,
    dashed). Rules found unbounded are listed in the panel's title. Writes ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = sorted({r.n for r in results})
    rules = list(dict.fromkeys(r.rule for r in results))
    colours = {rule: f"C{i % 10}" for i, rule in enumerate(rules)}
    fig, axes = plt.subplots(1, max(1, len(ns)), figsize=(5.2 * max(1, len(ns)), 4.2),
                             squeeze=False)
    for ax, n in zip(axes[0], ns, strict=True):
        here = [r for r in results if r.n == n]
        unbounded = sorted({r.rule for r in here if r.unbounded})
        for rule in rules:
            pts = sorted((r.f, r) for r in here if r.rule == rule and not r.unbounded)
            if not pts:
                continue
            xs = [f / n for f, _ in pts]
            ax.plot(xs, [r.value for _, r in pts], "o-", color=colours[rule], label=rule, ms=4)
            ub = [(f / n, r.upper_bound.value) for f, r in pts if r.upper_bound is not None]
            if ub:
                ax.plot(*zip(*ub, strict=True), ":", color=colours[rule], lw=1.2)
        fs = sorted({r.f for r in here})
        if fs:
            ax.plot([f / n for f in fs], [f / (n - 2 * f) for f in fs], "k--", lw=1,
                    label="f/(n-2f) (every rule)")
        ax.set_yscale("log")
        ax.set_xlabel("f / n")
        ax.set_ylabel("kappa (largest ratio found)")
        title = f"n = {n}"
        if unbounded:
            title += "\nunbounded: " + ", ".join(unbounded)
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("robustness coefficient found (solid) and proven upper bounds (dotted)",
                 fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


#: short tags of the sources, for ``compact_table``
TAGS = {"Table 1": "T1", "Lemma 1": "L1"}


def _tag(source: str) -> str:
    return "+".join(tag for key, tag in TAGS.items() if key in source) or source


def compact_table(results: Sequence[KappaResult]) -> str:
    """One markdown table, a row per (n, f) and a column per rule: the value found, then the
    proven upper bound with the tag of its source (T1: Allouah et al. 2023, Table 1; L1: its
    Lemma 1 on NNM), e.g. ``1.93 / 8 T1``; "-" where the rule refuses (n, f)."""
    rules = list(dict.fromkeys(r.rule for r in results))
    cells = {(r.rule, r.n, r.f): r for r in results}
    keys = sorted({(r.n, r.f) for r in results})
    head = ["n", "f", "f/(n-2f)"] + [f"`{rule}`" for rule in rules]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for n, f in keys:
        row = [str(n), str(f), f"{f / (n - 2 * f):.3g}"]
        for rule in rules:
            r = cells.get((rule, n, f))
            if r is None:
                row.append("-")
                continue
            text = "unbounded" if r.unbounded else f"{r.value:.3g}"
            if r.upper_bound is not None:
                text += f" / {r.upper_bound.value:.3g} {_tag(r.upper_bound.source)}"
            row.append(text + (" (!)" if r.above_upper_bound else ""))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def to_records(results: Sequence[KappaResult]) -> list[dict[str, Any]]:
    """The results as JSON-ready dicts (without the inputs ``x``)."""
    keys = ("rule", "n", "f", "dim", "value", "unbounded", "evaluations", "seconds", "restarts")
    return [{k: getattr(r, k) for k in keys} | {"restarts": list(r.restarts)} for r in results]


def from_records(rows: Sequence[dict[str, Any]]) -> list[KappaResult]:
    """``KappaResult``s back from ``to_records`` (the bounds recomputed, ``x`` empty)."""
    import torch

    from byzance.analysis.kappa_bounds import proven_upper_bound, universal_lower_bound

    return [
        KappaResult(
            rule=row["rule"], n=row["n"], f=row["f"], dim=row["dim"], value=row["value"],
            x=torch.empty(0), unbounded=row["unbounded"], growth=(),
            lower_bound=universal_lower_bound(row["n"], row["f"]),
            upper_bound=proven_upper_bound(row["rule"], row["n"], row["f"]),
            evaluations=row["evaluations"], seconds=row["seconds"], equivariant=True,
            randomised=False, restarts=tuple(row.get("restarts", ())),
        )
        for row in rows
    ]
