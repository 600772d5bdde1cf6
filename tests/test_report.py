"""Reports from a synthetic results DB: tables, hyper-parameter selection, figures."""

from __future__ import annotations

import csv
import io

import pytest

from byzance.report import analyse, build_report, heterogeneity_label
from byzance.results import open_db

pytest.importorskip("matplotlib")

# final (test, val) accuracy of krum per (lr, attack): by worst-case val lr=0.01 wins (0.7 vs
# 0.5); by worst-case test lr=0.1 wins (0.75 vs 0.7); counting "none" would pick lr=0.1
KRUM = {
    (0.01, "none"): (0.10, 0.10),
    (0.1, "none"): (0.95, 0.95),
    (0.01, "alie"): (0.80, 0.80),
    (0.1, "alie"): (0.90, 0.90),
    (0.01, "sign_flipping"): (0.70, 0.70),
    (0.1, "sign_flipping"): (0.75, 0.50),
}


def _config(**kw):
    base = {
        "dataset": "digits",
        "model": "logreg",
        "n_honest": 10,
        "f": 2,
        "aggregator": "krum",
        "aggregator_params": {},
        "attack": "alie",
        "attack_params": {},
        "heterogeneity": "iid",
        "alpha": 1.0,
        "gamma": 1.0,
        "lr": 0.1,
        "rounds": 30,
        "seed": 0,
        "data_dir": None,
        "device": "cpu",
        "eval_every": 10,
    }
    base.update(kw)
    return base


def make_db(path, with_val=True, fs=(2,), hets=("iid",)):
    with open_db(path) as db:
        for f in fs:
            for het in hets:
                for rule in ("average", "krum"):
                    for (lr, attack), (test, val) in KRUM.items():
                        for seed in (0, 1):
                            cfg = _config(
                                aggregator=rule,
                                attack=attack,
                                lr=lr,
                                seed=seed,
                                f=f,
                                heterogeneity=het,
                                alpha=0.1,
                            )
                            t = test if rule == "krum" else test / 2
                            t += 0.01 * seed - 0.02 * f
                            rid = db.start_run(cfg)
                            for r in (10, 20, 30):
                                rec = {
                                    "round": r,
                                    "test_accuracy": t * r / 30,
                                    "train_loss": 1.0 / r,
                                }
                                if with_val:
                                    rec["val_accuracy"] = (
                                        (val if rule == "krum" else val / 2) * r / 30
                                    )
                                db.record_metrics(rid, rec)
                            db.finish_run(rid, t, 1.0)
        # an unfinished run and a failed run are counted but not reported
        db.start_run(_config(seed=99))
        db.fail_run(db.start_run(_config(seed=98)), "boom")


def _selected_lr(analysis, rule):
    (sel,) = [s for (setting, r), s in analysis.selections.items() if r == rule]
    return dict(sel.hyper)["lr"]


def test_hyperparameter_selection_on_validation(tmp_path) -> None:
    make_db(tmp_path / "r.db")
    with open_db(tmp_path / "r.db") as db:
        runs = db.load_runs("finished")
        analysis = analyse(runs, db.load_metrics())
    assert analysis.uses_validation and analysis.varying_hyper == ["lr"]
    assert _selected_lr(analysis, "krum") == 0.01
    (sel,) = [s for (_, r), s in analysis.selections.items() if r == "krum"]
    assert sel.score == pytest.approx(0.70)  # worst case of the validation accuracy
    assert sel.worst_test == pytest.approx(0.70 + 0.005 - 0.04)  # mean over seeds of test


def test_selection_falls_back_to_test_with_warning(tmp_path) -> None:
    make_db(tmp_path / "r.db", with_val=False)
    with open_db(tmp_path / "r.db") as db:
        analysis = analyse(db.load_runs("finished"), db.load_metrics())
    assert not analysis.uses_validation
    assert _selected_lr(analysis, "krum") == 0.1
    out = io.StringIO()
    build_report(tmp_path / "r.db", tmp_path / "rep", stream=out, figures=False)
    assert "warning: no validation accuracy" in out.getvalue()


def test_report_files_and_tables(tmp_path) -> None:
    make_db(tmp_path / "r.db", fs=(2,), hets=("iid", "dirichlet"))
    out = io.StringIO()
    files = build_report(tmp_path / "r.db", tmp_path / "rep", fmt="png", stream=out)
    names = sorted(p.name for p in files)
    assert "summary.md" in names and "summary.csv" in names and "heatmap.png" in names
    curves = [n for n in names if n.startswith("curves_")]
    assert len(curves) == 2  # one figure per (f, heterogeneity) setting
    for p in files:
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
    assert "warning" not in out.getvalue()
    md = (tmp_path / "rep" / "summary.md").read_text()
    assert "Runs: " in md and "1 running" in md and "1 failed" in md
    assert "## f=2, heterogeneity=dirichlet(alpha=0.1)" in md
    assert "| aggregator | selected | none | alie | sign_flipping | worst case |" in md
    # krum at f=2, iid: lr=0.01 selected; alie mean over seeds 0.8 + 0.005 - 0.04
    section = md.split("## f=2, heterogeneity=iid")[1].split("##")[0]
    krum_row = [line for line in section.splitlines() if line.startswith("| krum")][0]
    assert "lr=0.01" in krum_row and "0.765 ± 0.005" in krum_row and "**0.665**" in krum_row
    rows = list(csv.DictReader((tmp_path / "rep" / "summary.csv").open()))
    assert len(rows) == 2 * 2 * 2 * 3  # settings x rules x lrs x attacks
    chosen = [r for r in rows if r["aggregator"] == "krum" and r["selected"] == "1"]
    assert {r["lr"] for r in chosen} == {"0.01"}
    assert all(r["seeds"] == "2" for r in rows)


def test_report_errors(tmp_path) -> None:
    with pytest.raises(ValueError, match="not found"):
        build_report(tmp_path / "missing.db", tmp_path / "rep")
    open_db(tmp_path / "empty.db").close()
    with pytest.raises(ValueError, match="no finished run"):
        build_report(tmp_path / "empty.db", tmp_path / "rep")
    with pytest.raises(ValueError, match="format must be one of"):
        build_report(tmp_path / "empty.db", tmp_path / "rep", fmt="gif")


def test_heterogeneity_label() -> None:
    assert (
        heterogeneity_label({"heterogeneity": "dirichlet", "alpha": 0.1}) == "dirichlet(alpha=0.1)"
    )
    assert heterogeneity_label({"heterogeneity": "gamma", "gamma": 0.5}) == "gamma=0.5"
    assert heterogeneity_label({"heterogeneity": "iid", "alpha": 0.1}) == "iid"


def test_engines_are_not_mixed(tmp_path) -> None:
    with open_db(tmp_path / "r.db") as db:
        for engine, acc in (("sim", 0.9), ("ray", 0.5)):
            rid = db.start_run(_config(), engine)
            db.record_metrics(rid, {"round": 10, "test_accuracy": acc})
            db.finish_run(rid, acc, 1.0)
        analysis = analyse(db.load_runs("finished"), db.load_metrics())
    assert {dict(s)["engine"] for s in analysis.settings()} == {"sim", "ray"}
    assert sorted(c.test_mean for c in analysis.cells.values()) == [0.5, 0.9]
    assert all(c.seeds == 1 for c in analysis.cells.values())
