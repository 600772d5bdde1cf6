"""Reports from a synthetic results DB: tables, hyper-parameter selection, figures."""

from __future__ import annotations

import csv
import io
import itertools

import numpy as np
import pytest

from byzance.report import (
    analyse,
    build_report,
    heatmaps,
    heterogeneity_label,
    layout,
    plan_figures,
    plots,
)
from byzance.report.layout import wrap
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


def test_report_files_and_tables(tmp_path, drawn) -> None:
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
    assert {path.name for _, path in drawn} == {n for n in names if n.endswith(".png")}
    for fig, path in drawn:  # selected hyper-parameters in the legend: long labels
        _check_layout(fig, path)
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


# ------------------------------------------------------------------ figures per grid shape

#: long rule names: the legend of the first one-axis report was cut off at both sides
LONG_RULES = (
    "average",
    "median",
    "krum",
    "nnm+centered_clipping",
    "bucketing+geometric_median",
    "arc+multikrum",
    "nnm+metric_median",
    "centered_clipping",
)


def make_grid_db(
    path, rules, attacks=("none",), fs=(0,), hets=("iid",), seeds=(0,), datasets=("mnist",)
):
    """A results DB with one finished run per grid point: configs are
    ``ExperimentConfig().to_dict()`` changed per point; ``hets`` items are ``"iid"``,
    ``"extreme"``, ``("dirichlet", alpha)`` or ``("gamma", gamma)``."""
    from byzance.sim.config import ExperimentConfig

    base = ExperimentConfig().to_dict()
    grid = itertools.product(
        enumerate(rules), enumerate(attacks), fs, enumerate(hets), seeds, datasets
    )
    with open_db(path) as db:
        for (i, rule), (j, attack), f, (k, het), seed, dataset in grid:
            kind, value = (het, 1.0) if isinstance(het, str) else het
            cfg = dict(base, dataset=dataset, aggregator=rule, attack=attack, f=f, seed=seed)
            cfg.update(rounds=30, heterogeneity=kind, alpha=value if kind == "dirichlet" else 1.0)
            cfg["gamma"] = value if kind == "gamma" else 1.0
            hit = 0.05 * (i % 4) * (attack != "none") * (1 + j)
            acc = 0.97 - 0.012 * i - hit - 0.03 * f * (i % 3) - 0.08 * k + 0.01 * seed
            acc = min(max(acc, 0.05), 0.99)
            rid = db.start_run(cfg)
            for r in (10, 20, 30):
                db.record_metrics(rid, {"round": r, "test_accuracy": acc * (1 - 0.6 ** (r / 5))})
            db.finish_run(rid, acc, 1.0)


#: grid shape -> (make_grid_db arguments, figures drawn)
SHAPES = {
    "rules only (8 long names)": (
        {"rules": LONG_RULES, "hets": ("extreme",), "seeds": (0, 1)},
        {"rules.png", "curves.png"},
    ),
    "rule x attack": (
        {"rules": LONG_RULES[3:6], "attacks": ("none", "alie", "sign_flipping"), "seeds": (0, 1)},
        {"rules.png", "curves.png"},
    ),
    "rule x f": (
        {"rules": LONG_RULES[3:5], "attacks": ("alie",), "fs": (0, 1, 2)},
        {"sweep_f.png", "heatmap.png"} | {f"curves_f-{f}_heterogeneity-iid.png" for f in range(3)},
    ),
    "rule x heterogeneity": (
        {"rules": LONG_RULES[:2], "hets": ("iid", ("dirichlet", 0.1))},
        {
            "sweep_heterogeneity.png",
            "heatmap.png",
            "curves_f-0_heterogeneity-iid.png",
            "curves_f-0_heterogeneity-dirichlet_alpha=0.1.png",
        },
    ),
    "rule x f x heterogeneity": (
        {"rules": LONG_RULES[3:6], "attacks": ("alie",), "fs": (1, 2), "hets": ("iid", "extreme")},
        {"heatmap.png"}
        | {f"curves_f-{f}_heterogeneity-{h}.png" for f in (1, 2) for h in ("iid", "extreme")},
    ),
    "single run": ({"rules": ("nnm+centered_clipping",)}, {"curves.png"}),
    "rules x dataset": (
        {"rules": LONG_RULES[:2], "datasets": ("mnist", "fashion_mnist")},
        {
            "rules_dataset-mnist.png",
            "rules_dataset-fashion_mnist.png",
            "curves_dataset-mnist_f-0_heterogeneity-iid.png",
            "curves_dataset-fashion_mnist_f-0_heterogeneity-iid.png",
        },
    ),
}


def _drawn_texts(fig):
    """The non-empty texts drawn in ``fig``: titles, axis and tick labels (ticks inside the
    view only), annotations, legends."""
    texts = [fig._suptitle, *fig.texts]
    for legend in fig.legends:
        texts += [legend.get_title(), *legend.get_texts()]
    for ax in fig.axes:
        texts += [ax.title, ax._left_title, ax._right_title, *ax.texts]
        for axis in (ax.xaxis, ax.yaxis):
            texts.append(axis.label)
            low, high = sorted(axis.get_view_interval())
            for tick in axis.get_major_ticks():
                if low - 1e-9 <= tick.get_loc() <= high + 1e-9:
                    texts += [tick.label1, tick.label2]
        if ax.get_legend() is not None:
            texts += [ax.get_legend().get_title(), *ax.get_legend().get_texts()]
    unique = {id(t): t for t in texts if t is not None}.values()  # the suptitle is in fig.texts
    return [t for t in unique if t.get_visible() and t.get_text().strip()]


def _check_layout(fig, path) -> None:
    """Nothing clipped or overlapping: every drawn text (and legend) inside the figure, no two
    texts overlapping, legends off the axes; the saved PNG has a blank margin all round."""
    from matplotlib.image import imread

    renderer = fig.canvas.get_renderer()
    inside = fig.bbox.padded(1)
    boxes = []
    for text in _drawn_texts(fig):
        box = text.get_window_extent(renderer)
        assert inside.contains(box.x0, box.y0) and inside.contains(box.x1, box.y1), (
            f"{path.name}: {text.get_text()!r} at {box} outside the figure {fig.bbox}"
        )
        boxes.append((text.get_text(), box))
    for a, (text_a, box_a) in enumerate(boxes):
        for text_b, box_b in boxes[a + 1 :]:
            overlap = box_a.padded(-1).overlaps(box_b.padded(-1))
            assert not overlap, f"{path.name}: {text_a!r} overlaps {text_b!r}"
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
    for legend in legends:
        box = legend.get_window_extent(renderer)
        assert inside.contains(box.x0, box.y0) and inside.contains(box.x1, box.y1), path.name
        for ax in fig.axes:
            assert not box.padded(-1).overlaps(ax.bbox), f"{path.name}: legend on the axes"
    pixels = imread(path)[..., :3]
    frame = np.concatenate([pixels[:3].ravel(), pixels[-3:].ravel()])
    frame = np.concatenate([frame, pixels[:, :3].ravel(), pixels[:, -3:].ravel()])
    assert frame.min() > 0.98, f"{path.name}: something drawn on the edge (clipped?)"


@pytest.fixture
def drawn(monkeypatch):
    """The (figure, path) of every figure saved during the test."""
    saved = []

    def save(fig, path):
        saved.append((layout.save(fig, path), path))
        return fig

    monkeypatch.setattr(plots, "save", save)
    monkeypatch.setattr(heatmaps, "save", save)
    return saved


@pytest.mark.parametrize("shape", SHAPES)
def test_figures_follow_the_grid_shape(tmp_path, drawn, shape) -> None:
    """The figures drawn per grid shape, listed in summary.md; none clips or overlaps text."""
    kwargs, expected = SHAPES[shape]
    make_grid_db(tmp_path / "r.db", **kwargs)
    files = build_report(tmp_path / "r.db", tmp_path / "rep", stream=io.StringIO())
    pngs = {p.name for p in files if p.suffix == ".png"}
    assert pngs == expected
    assert pngs == {p.name for p in (tmp_path / "rep").glob("*.png")}
    md = (tmp_path / "rep" / "summary.md").read_text()
    assert "## Figures" in md
    for name in pngs:  # summary.md links every figure, and nothing else
        assert f"- [{name}]({name}): " in md
    assert md.count("](") == len(pngs)
    assert {path.name for _, path in drawn} == pngs
    for fig, path in drawn:
        _check_layout(fig, path)


def test_long_legend_is_not_clipped(tmp_path) -> None:
    """Many rules with long names, hyper-parameters in the labels: the legend grows the
    figure (the first one-axis report cut 'metric_median' and 'centered_' off its legend)."""
    rules = [f"{name}+{other}" for name in LONG_RULES[3:6] for other in LONG_RULES[4:8]]
    make_grid_db(tmp_path / "r.db", rules=rules, attacks=("alie", "ipm"))
    with open_db(tmp_path / "r.db") as db:
        analysis = analyse(db.load_runs("finished"), db.load_metrics())
    (curves,) = [spec for spec in plan_figures(analysis) if spec.name == "curves"]
    fig = curves.draw(tmp_path / "curves.png")
    _check_layout(fig, tmp_path / "curves.png")
    (legend,) = [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    assert len(legend.get_texts()) == len(rules)
    assert "bucketing+geometric_median+arc+multikrum" in " ".join(
        t.get_text().replace("\n", "") for t in legend.get_texts()
    )


def test_wrap_keeps_every_character() -> None:
    for text in ("bucketing+geometric_median", "worst case over 3 attacks (alie, ipm, x)"):
        for width in (8, 12, 20):
            lines = wrap(text, width).split("\n")
            assert "".join(lines).replace(" ", "") == text.replace(" ", "")
    assert wrap("nnm+centered_clipping", 17) == "nnm+\ncentered_clipping"
    assert wrap("nnm+centered_clipping", 12) == "nnm+\ncentered_\nclipping"
    assert wrap("krum", 3) == "krum"
