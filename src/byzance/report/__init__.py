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

Outputs in ``out_dir``: ``curves*.{png,pdf}`` (test accuracy per round, one panel per attack,
one line per rule, band = min..max over seeds), ``heatmap*.{png,pdf}`` (worst-case accuracy, x:
f, y: heterogeneity, one panel per rule), ``summary.md``, ``summary.csv`` (every (setting, rule,
hyper, attack) cell) and ``selection.csv``. Matplotlib is imported only in ``figures``, lazily.

Modules: ``labels`` (config split, attack / heterogeneity labels), ``selection`` (hyper-parameter
selection), ``analysis`` (grouping runs over seeds), ``tables`` (CSV / markdown), ``figures``
(curves, heatmaps); ``build_report`` here ties them together.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path
from typing import TextIO

from byzance.report.analysis import Analysis, Run, analyse
from byzance.report.figures import (
    FORMATS,
    _figure_class,
    _slug,
    plot_curves,
    plot_heatmap,
)
from byzance.report.labels import (
    HYPER_FIELDS,
    IGNORED_FIELDS,
    NO_ATTACK,
    SPECIAL_FIELDS,
    Key,
    _sort_key,
    attack_label,
    heterogeneity_label,
)
from byzance.report.labels import _hashable as _hashable
from byzance.report.labels import _label as _label
from byzance.report.labels import _show as _show
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
    if not db_path.is_file():
        raise ValueError(f"report: results DB {str(db_path)!r} not found")
    if figures:
        _figure_class()  # fail before writing anything
    with open_db(db_path) as db:
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
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for name, writer in (("summary.csv", write_csv), ("selection.csv", write_selection_csv)):
        writer(analysis, out / name)
        files.append(out / name)
    (out / "summary.md").write_text(markdown_summary(analysis))
    files.append(out / "summary.md")
    if figures:
        settings = analysis.settings()
        for setting in settings:
            name = "curves" if len(settings) == 1 else f"curves_{_slug(setting)}"
            path = out / f"{name}.{fmt}"
            plot_curves(analysis, setting, path)
            files.append(path)
        outer_groups: dict[Key, list[Key]] = defaultdict(list)
        for s in settings:
            outer_groups[tuple((k, v) for k, v in s if k not in ("f", "heterogeneity"))].append(s)
        for outer, members in sorted(outer_groups.items(), key=lambda kv: _sort_key(kv[0])):
            name = "heatmap" if len(outer_groups) == 1 else f"heatmap_{_slug(outer)}"
            path = out / f"{name}.{fmt}"
            plot_heatmap(analysis, outer, members, path)
            files.append(path)
    return files
