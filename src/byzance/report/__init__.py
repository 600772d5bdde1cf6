"""Reports from a results database: figures, summary tables and hyper-parameter selection.

Each finished run's config is split into

* the **rule** (``aggregator``), the **attack** (``attack`` + ``attack_params``), the **seed**;
* **hyper-parameters** (``HYPER_FIELDS``: lr, its schedule, momentum, ...), chosen per rule;
* the **setting** (every other field: dataset, model, n_honest, f, heterogeneity, rounds, ...;
  ``alpha`` / ``gamma`` only as part of the heterogeneity, e.g. ``dirichlet(alpha=0.1)``).

Scores are means over seeds of the final accuracy. The worst case of a (setting, rule, hyper)
is the minimum over attacks (``none`` left out when there are real attacks). Hyper-parameter
selection: for each setting and rule, the hyper-parameters maximising the worst-case
*validation* accuracy (the last record's ``val_accuracy``, from ``val_fraction > 0``); without a
validation split the test accuracy is used, with a printed warning. Figures and tables then use
the selected hyper-parameters.

Outputs in ``out_dir``: figures chosen by the grid's shape (``figures.plan_figures``):
``curves*.{png,pdf}`` per setting (test accuracy per round, one panel per attack, one line per
rule, band = min..max over seeds); ``heatmap*`` when f and heterogeneity both vary (worst-case
accuracy, x: f, y: heterogeneity, one panel per rule); ``sweep_f*`` / ``sweep_heterogeneity*``
and a one-panel ``heatmap*`` (rule x that axis) when only one of them varies; ``rules*`` (bars
per rule) when neither does. Then ``summary.md`` (listing the figures), ``summary.csv`` (every
(setting, rule, hyper, attack) cell) and ``selection.csv``. Matplotlib is imported lazily, only
to draw (``layout``).

Modules: ``labels`` (config split, attack / heterogeneity labels), ``selection`` (hyper-parameter
selection), ``analysis`` (grouping runs over seeds), ``tables`` (CSV / markdown), ``figures``
(which figures), ``plots`` / ``heatmaps`` (drawing them), ``layout`` (style, fitting);
``build_report`` here ties them together.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path
from typing import TextIO

from byzance.report.analysis import Analysis, Run, analyse
from byzance.report.figures import (
    FORMATS,
    FigureSpec,
    _figure_class,
    draw_figures,
    plan_figures,
    plot_curves,
    plot_heatmap,
    plot_rule_heatmap,
    plot_rules,
    plot_sweep,
)
from byzance.report.figures import _slug as _slug
from byzance.report.labels import (
    HYPER_FIELDS,
    IGNORED_FIELDS,
    NO_ATTACK,
    SPECIAL_FIELDS,
    Key,
    attack_label,
    heterogeneity_label,
)
from byzance.report.labels import _hashable as _hashable
from byzance.report.labels import _label as _label
from byzance.report.labels import _show as _show
from byzance.report.labels import _sort_key as _sort_key
from byzance.report.labels import _split as _split
from byzance.report.selection import Cell, Selection, select_hyperparameters
from byzance.report.selection import _worst as _worst
from byzance.report.tables import _fmt as _fmt
from byzance.report.tables import markdown_summary, write_csv, write_selection_csv
from byzance.results import open_db

__all__ = [
    "FORMATS",
    "HYPER_FIELDS",
    "IGNORED_FIELDS",
    "NO_ATTACK",
    "SPECIAL_FIELDS",
    "Analysis",
    "Cell",
    "FigureSpec",
    "Key",
    "Run",
    "Selection",
    "analyse",
    "attack_label",
    "build_report",
    "heterogeneity_label",
    "markdown_summary",
    "open_db",
    "plot_curves",
    "plot_heatmap",
    "plot_rule_heatmap",
    "plot_rules",
    "plot_sweep",
    "plan_figures",
    "select_hyperparameters",
    "write_csv",
    "write_selection_csv",
]


def build_report(
    db_path: str | Path,
    out_dir: str | Path = "report",
    fmt: str = "png",
    stream: TextIO | None = None,
    figures: bool = True,
) -> list[Path]:
    """Write figures and tables for the finished runs in ``db_path``; returns the files."""
    stream = stream if stream is not None else sys.stdout
    if fmt not in FORMATS:
        raise ValueError(f"report: format must be one of {list(FORMATS)}, got {fmt!r}")
    db_path = Path(db_path)
    out = _out_dir(out_dir)
    if figures:
        _figure_class()  # fail before writing anything
    with open_db(db_path, readonly=True) as db:  # never written (nor created) by a report
        all_runs = db.load_runs()
        finished = [r for r in all_runs if r["status"] == "finished"]
        metrics = db.load_metrics({r["run_id"] for r in finished})
    if not finished:
        raise ValueError(f"report: no finished run in {str(db_path)!r}")
    analysis = analyse(finished, metrics)
    counts: dict[str, int] = defaultdict(int)
    for r in all_runs:
        counts[r["status"]] += 1
    analysis.counts = dict(counts)
    if analysis.varying_hyper and not analysis.uses_validation:
        print(
            "warning: no validation accuracy in the DB (val_fraction = 0): hyper-parameters "
            "are selected on test accuracy, which overestimates it",
            file=stream,
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(
            f"report: cannot create --out folder {str(out)!r}: {err.strerror}"
        ) from None
    files = []
    for name, writer in (("summary.csv", write_csv), ("selection.csv", write_selection_csv)):
        writer(analysis, out / name)
        files.append(out / name)
    # the figures follow the grid's shape (byzance.report.figures); summary.md lists them
    plan = plan_figures(analysis) if figures else []
    listed = [(f"{spec.name}.{fmt}", spec.description) for spec in plan]
    (out / "summary.md").write_text(markdown_summary(analysis, listed))
    files.append(out / "summary.md")
    files.extend(draw_figures(plan, out, fmt))
    return files


def _out_dir(out_dir: str | Path) -> Path:
    """The report's folder (made later): ``ValueError`` if it is a file or lies below one."""
    out = Path(out_dir)
    for above in (out, *out.parents):
        if not above.exists():
            continue
        if above == out and not above.is_dir():
            raise ValueError(f"report: --out {str(out)!r} is a file, expected a folder")
        if not above.is_dir():
            raise ValueError(f"report: cannot create --out {str(out)!r}: {str(above)!r} is a file")
        break
    return out
