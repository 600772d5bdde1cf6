"""The figure of ``byzance crash``: output error against the crash probability, with the
bounds and the first-order estimate (needs matplotlib: ``pip install 'byzance[plot]'``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from byzance.analysis.crash import CrashResult


def plot_crash(results: Sequence[CrashResult], path: str | Path, title: str = "") -> Path:
    """Log-log plot of the Monte-Carlo mean error, its 90% quantile and rms,
    the first-order rms estimate and both bounds, against p (p > 0 only); writes ``path``."""
    try:
        from matplotlib.figure import Figure
    except ImportError:  # pragma: no cover - matplotlib is an optional extra
        raise ImportError("byzance crash needs matplotlib: pip install 'byzance[plot]'") from None
    rows = sorted((r for r in results if r.p > 0), key=lambda r: r.p)
    if not rows:
        raise ValueError("plot_crash: no result with p > 0 to plot on a log scale")
    ps = [r.p for r in rows]
    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(ps, [r.quantiles[0.9] for r in rows], "o:", color="C0", alpha=0.5,
            label="Monte Carlo 90% quantile")  # fmt: skip
    ax.plot(ps, [r.mean for r in rows], "o-", color="C0", label="Monte Carlo mean")
    ax.plot(ps, [r.rms for r in rows], "s:", color="C2", label="Monte Carlo rms")
    ax.plot(ps, [r.taylor_rms for r in rows], "--", color="C2", label="first-order rms estimate")
    for key, style, color, label in (
        ("product_of_norms", "^-", "C3", "bound: product of norms"),
        ("fep", "v-", "C1", "bound: forward error propagation"),
    ):
        values = [getattr(r, key) for r in rows]
        if all(v is not None for v in values):
            ax.plot(ps, values, style, color=color, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("crash probability p")
    ax.set_ylabel("output error ||F_crashed(x) - F(x)||_2")
    what = "neurons of activation" if rows[0].mode == "neurons" else "weights of affine layer"
    ax.set_title(title or f"crashed {what} {rows[0].layer}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path
