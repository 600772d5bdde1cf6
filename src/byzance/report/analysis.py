"""Grouping finished runs: per-run records, seed statistics per cell, the ``Analysis``.

``analyse`` turns ``ResultsDB.load_runs`` / ``load_metrics`` rows into ``Run`` records, averages
them over seeds into ``Cell`` objects per (setting, rule, hyper, attack), and selects the
hyper-parameters (``byzance.report.selection``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from byzance.report.labels import NO_ATTACK, Key, _sort_key, _split, attack_label
from byzance.report.selection import Cell, Selection, select_hyperparameters


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
