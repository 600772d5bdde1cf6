"""Tables of an ``Analysis``: ``summary.csv``, ``selection.csv`` and the markdown summary."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

from byzance.report.analysis import Analysis
from byzance.report.labels import _label, _sort_key


def _fmt(value: float | None, std: float | None = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    text = f"{value:.3f}"
    if std:
        text += f" ± {std:.3f}"
    return text


def write_csv(analysis: Analysis, path: Path) -> None:
    """One row per (setting, rule, hyper, attack) with seed statistics."""
    setting_fields = [k for k, _ in analysis.runs[0].setting] if analysis.runs else []
    hyper_fields = analysis.varying_hyper
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(
            [
                *setting_fields,
                "aggregator",
                *hyper_fields,
                "attack",
                "seeds",
                "test_accuracy_mean",
                "test_accuracy_std",
                "val_accuracy_mean",
                "selected",
            ]
        )
        for (setting, rule, hyper, attack), cell in sorted(
            analysis.cells.items(),
            key=lambda kv: (_sort_key(kv[0][0]), kv[0][1], _sort_key(kv[0][2]), kv[0][3]),
        ):
            selected = analysis.selections[(setting, rule)].hyper == hyper
            writer.writerow(
                [
                    *(v for _, v in setting),
                    rule,
                    *(v for _, v in hyper),
                    attack,
                    cell.seeds,
                    f"{cell.test_mean:.6g}",
                    f"{cell.test_std:.6g}",
                    "" if cell.val_mean is None else f"{cell.val_mean:.6g}",
                    int(selected),
                ]
            )


def write_selection_csv(analysis: Analysis, path: Path) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        metric = "val" if analysis.uses_validation else "test"
        writer.writerow(
            [
                "setting",
                "aggregator",
                "selected",
                f"worst_case_{metric}_accuracy",
                "worst_case_test_accuracy",
                "candidates",
            ]
        )
        for (setting, rule), sel in sorted(
            analysis.selections.items(), key=lambda kv: (_sort_key(kv[0][0]), kv[0][1])
        ):
            writer.writerow(
                [
                    _label(setting),
                    rule,
                    _label(sel.hyper),
                    f"{sel.score:.6g}",
                    f"{sel.worst_test:.6g}",
                    sel.candidates,
                ]
            )


def markdown_summary(analysis: Analysis, figures: Sequence[tuple[str, str]] = ()) -> str:
    """Per setting: rules (selected hypers) x attacks, final test accuracy mean ± std; first a
    list of the ``figures`` drawn, ``(file name, description)``, linked."""
    lines = ["# byzance report", ""]
    counts = analysis.counts
    if counts:
        lines.append("Runs: " + ", ".join(f"{v} {k}" for k, v in counts.items()) + ".")
        lines.append("")
    lines.append(
        "Final test accuracy, mean ± std over seeds. *Worst case*: minimum over attacks"
        " (no attack left out)."
    )
    if analysis.varying_hyper:
        source = "validation" if analysis.uses_validation else "test (no validation split!)"
        lines.append(
            f"Hyper-parameters ({', '.join(analysis.varying_hyper)}) selected per "
            f"rule and setting by the best worst-case {source} accuracy."
        )
    lines.append("")
    if figures:
        lines += ["## Figures", ""]
        lines += [f"- [{name}]({name}): {description}" for name, description in figures]
        lines.append("")
    for setting in analysis.settings():
        attacks = analysis.attacks(setting)
        lines.append(f"## {_label(setting)}")
        lines.append("")
        header = [
            "aggregator",
            *(["selected"] if analysis.varying_hyper else []),
            *attacks,
            "worst case",
        ]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
        rows = []
        for rule in analysis.rules(setting):
            sel = analysis.selections[(setting, rule)]
            row = [rule] + ([_label(sel.hyper)] if analysis.varying_hyper else [])
            for attack in attacks:
                cell = analysis.cells.get((setting, rule, sel.hyper, attack))
                row.append(_fmt(cell.test_mean, cell.test_std) if cell else "-")
            rows.append((sel.worst_test, row))
        best = max((w for w, _ in rows if not math.isnan(w)), default=None)
        for worst, row in rows:
            text = _fmt(worst)
            lines.append("| " + " | ".join([*row, f"**{text}**" if worst == best else text]) + " |")
        lines.append("")
    return "\n".join(lines)
