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
hyper, attack) cell) and ``selection.csv``. Matplotlib is imported only here, lazily.
"""

from __future__ import annotations

import csv
import json
import math
import re
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from byzance.results import open_db

HYPER_FIELDS = (
    "lr",
    "lr_schedule",
    "momentum",
    "server_momentum",
    "weight_decay",
    "batch_size",
    "local_steps",
    "aggregator_params",
)
IGNORED_FIELDS = ("data_dir", "device", "eval_every", "eval_batch_size")
SPECIAL_FIELDS = ("aggregator", "attack", "attack_params", "seed")
NO_ATTACK = "none"
FORMATS = ("png", "pdf")

Key = tuple[tuple[str, Any], ...]


def _hashable(value: Any) -> Any:
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return value


def _show(value: Any) -> str:
    if isinstance(value, str) and value.startswith("{"):
        try:
            inner = json.loads(value)
        except ValueError:
            return value
        return ", ".join(f"{k}={v}" for k, v in inner.items()) or "default"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _label(key: Key) -> str:
    return ", ".join(f"{k}={_show(v)}" for k, v in key) or "default"


def heterogeneity_label(config: dict[str, Any]) -> str:
    """``iid``, ``dirichlet(alpha=0.1)``, ``gamma=0.5`` or ``extreme``."""
    kind = config.get("heterogeneity", "iid")
    if kind == "dirichlet":
        return f"dirichlet(alpha={_show(float(config.get('alpha', 1.0)))})"
    if kind == "gamma":
        return f"gamma={_show(float(config.get('gamma', 1.0)))}"
    return str(kind)


def attack_label(config: dict[str, Any]) -> str:
    params = config.get("attack_params") or {}
    name = str(config.get("attack", NO_ATTACK))
    if not params:
        return name
    return f"{name}({', '.join(f'{k}={_show(v)}' for k, v in sorted(params.items()))})"


@dataclass
class Run:
    run_id: str
    setting: Key
    rule: str
    attack: str
    seed: int
    hyper: Key
    test: float
    val: float | None
    rounds: np.ndarray
    curve: np.ndarray


@dataclass
class Cell:
    """Mean/std over seeds of one (setting, rule, hyper, attack)."""

    test_mean: float
    test_std: float
    val_mean: float | None
    seeds: int


@dataclass
class Selection:
    setting: Key
    rule: str
    hyper: Key
    score: float  # worst case of the selection metric
    worst_test: float
    candidates: int


@dataclass
class Analysis:
    runs: list[Run]
    varying_setting: list[str]
    varying_hyper: list[str]
    cells: dict[tuple[Key, str, Key, str], Cell]
    selections: dict[tuple[Key, str], Selection]
    uses_validation: bool
    counts: dict[str, int] = field(default_factory=dict)

    def settings(self) -> list[Key]:
        return sorted({r.setting for r in self.runs}, key=_sort_key)

    def rules(self, setting: Key | None = None) -> list[str]:
        return sorted({r.rule for r in self.runs if setting is None or r.setting == setting})

    def attacks(self, setting: Key | None = None) -> list[str]:
        found = {r.attack for r in self.runs if setting is None or r.setting == setting}
        return sorted(found, key=lambda a: (a != NO_ATTACK, a))


def _sort_key(key: Key) -> tuple:
    return tuple((k, (0, v) if isinstance(v, (int, float)) else (1, str(v))) for k, v in key)


def _split(config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(setting fields, hyper fields) of a config, with irrelevant alpha/gamma dropped."""
    setting, hyper = {}, {}
    for key, value in config.items():
        if key in SPECIAL_FIELDS or key in IGNORED_FIELDS:
            continue
        (hyper if key in HYPER_FIELDS else setting)[key] = _hashable(value)
    # alpha / gamma only matter for their own scheme: folded into the heterogeneity label
    setting.pop("alpha", None)
    setting.pop("gamma", None)
    setting["heterogeneity"] = heterogeneity_label(config)
    return setting, hyper


def _worst(values: Iterable[tuple[str, float]]) -> float:
    """Minimum over attacks, ``none`` left out when other attacks are present."""
    values = list(values)
    real = [v for a, v in values if a != NO_ATTACK]
    pool = real or [v for _, v in values]
    return min(pool) if pool else math.nan


def analyse(runs: Sequence[dict[str, Any]], metrics: dict[str, list[dict[str, Any]]]) -> Analysis:
    """Group finished runs (``ResultsDB.load_runs``/``load_metrics`` rows) and select hypers."""
    parts = [(r, *_split(r["config"])) for r in runs if r["final_accuracy"] is not None]
    for r, setting, _ in parts:  # runs of different engines are never averaged together
        setting["engine"] = r.get("engine", "sim")
    fields_setting = sorted({k for _, s, _ in parts for k in s})
    fields_hyper = sorted({k for _, _, h in parts for k in h})
    varying_setting = [k for k in fields_setting if len({s.get(k) for _, s, _ in parts}) > 1]
    varying_hyper = [k for k in fields_hyper if len({h.get(k) for _, _, h in parts}) > 1]
    # f and heterogeneity always label a setting (heatmap axes)
    shown_setting = [
        k for k in fields_setting if k in varying_setting or k in ("f", "heterogeneity")
    ]
    out: list[Run] = []
    for r, setting, hyper in parts:
        records = metrics.get(r["run_id"], [])
        rounds = np.array([m["round"] for m in records if "test_accuracy" in m], dtype=float)
        curve = np.array([m["test_accuracy"] for m in records if "test_accuracy" in m])
        vals = [m["val_accuracy"] for m in records if m.get("val_accuracy") is not None]
        out.append(
            Run(
                run_id=r["run_id"],
                setting=tuple((k, setting.get(k)) for k in shown_setting),
                rule=str(r["config"].get("aggregator")),
                attack=attack_label(r["config"]),
                seed=int(r["config"].get("seed", 0)),
                hyper=tuple((k, hyper.get(k)) for k in varying_hyper),
                test=float(r["final_accuracy"]),
                val=float(vals[-1]) if vals else None,
                rounds=rounds,
                curve=curve,
            )
        )
    groups: dict[tuple[Key, str, Key, str], list[Run]] = defaultdict(list)
    for run in out:
        groups[(run.setting, run.rule, run.hyper, run.attack)].append(run)
    cells = {}
    for key, members in groups.items():
        tests = np.array([m.test for m in members])
        vals = [m.val for m in members if m.val is not None]
        cells[key] = Cell(
            test_mean=float(tests.mean()),
            test_std=float(tests.std()),
            val_mean=float(np.mean(vals)) if len(vals) == len(members) else None,
            seeds=len(members),
        )
    uses_validation = bool(cells) and all(c.val_mean is not None for c in cells.values())
    selections = select_hyperparameters(cells, uses_validation)
    return Analysis(out, varying_setting, varying_hyper, cells, selections, uses_validation)


def select_hyperparameters(
    cells: dict[tuple[Key, str, Key, str], Cell], use_validation: bool
) -> dict[tuple[Key, str], Selection]:
    """For each (setting, rule): the hyper maximising the worst case over attacks.

    The score is the validation accuracy if ``use_validation`` else the test accuracy. Only
    hypers evaluated under the most attacks compete (an incomplete column would look better);
    ties go to the first hyper in sorted order.
    """
    by_group: dict[tuple[Key, str], dict[Key, list[tuple[str, Cell]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for (setting, rule, hyper, attack), cell in cells.items():
        by_group[(setting, rule)][hyper].append((attack, cell))
    selections = {}
    for group, hypers in by_group.items():
        most = max(len(v) for v in hypers.values())
        best: Selection | None = None
        for hyper in sorted(hypers, key=_sort_key):
            entries = hypers[hyper]
            if len(entries) < most:
                continue
            metric = [(a, c.val_mean if use_validation else c.test_mean) for a, c in entries]
            score = _worst(metric)
            if best is None or score > best.score:
                worst_test = _worst((a, c.test_mean) for a, c in entries)
                best = Selection(group[0], group[1], hyper, score, worst_test, len(hypers))
        assert best is not None
        selections[group] = best
    return selections


# -- tables ----------------------------------------------------------------------------------


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


def markdown_summary(analysis: Analysis) -> str:
    """Per setting: rules (selected hypers) x attacks, final test accuracy mean ± std."""
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


# -- figures ---------------------------------------------------------------------------------


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


# -- entry point -----------------------------------------------------------------------------


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
