"""Grid files: expansion, validation with coordinates, resumable (parallel) execution."""

from __future__ import annotations

import os

import pytest
from tiny import TINY_CONFIG

import byzance.grid as grid_mod
from byzance.grid import GridError, expand, load_grid, parse_grid, run_grid, validate_points
from byzance.results import open_db, run_id
from byzance.sim import ExperimentConfig

TINY = dict(TINY_CONFIG)


def test_expand_product_and_joint_tables() -> None:
    points = expand(
        {"rounds": 5},
        {
            "aggregator": ["average", "krum"],
            "heterogeneity": ["iid", {"heterogeneity": "dirichlet", "alpha": 0.1}],
            "aggregator_params": [{}, {"tau": 1.0}],
            "seed": [0, 1, 2],
        },
    )
    assert len(points) == 2 * 2 * 2 * 3
    assert [p.index for p in points] == list(range(24))
    assert points[0].config == {
        "rounds": 5,
        "aggregator": "average",
        "heterogeneity": "iid",
        "aggregator_params": {},
        "seed": 0,
    }
    assert points[1].config["seed"] == 1  # last key varies fastest
    joint = [p for p in points if p.config["heterogeneity"] == "dirichlet"]
    assert len(joint) == 12 and all(p.config["alpha"] == 0.1 for p in joint)
    assert all("alpha" not in p.config for p in points if p.config["heterogeneity"] == "iid")
    # a dict-valued field's table is a value, not joint fields
    assert {str(p.config["aggregator_params"]) for p in points} == {"{}", "{'tau': 1.0}"}
    assert "tau" not in points[-1].config
    assert points[-1].describe().startswith("grid entry #23 (aggregator='krum'")
    assert len(expand({"lr": 0.1}, {})) == 1  # no sweep: the base alone


def test_grid_file_errors(tmp_path) -> None:
    with pytest.raises(GridError, match="unknown top-level key"):
        parse_grid({"base": {}, "aggregators": ["krum"]})
    with pytest.raises(GridError, match="sweep.f must be a non-empty list"):
        parse_grid({"sweep": {"f": 3}})
    with pytest.raises(GridError, match="sweep.seed must be a non-empty list"):
        parse_grid({"sweep": {"seed": []}})
    with pytest.raises(GridError, match="not found"):
        load_grid(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[sweep\nf = 1")
    with pytest.raises(GridError, match="not valid TOML"):
        load_grid(bad)
    good = tmp_path / "g.toml"
    good.write_text("[base]\nrounds = 2\n[sweep]\nf = [1, 2]\n")
    grid = load_grid(good)
    assert grid.name == "g" and [p.config for p in grid.points] == [
        {"rounds": 2, "f": 1},
        {"rounds": 2, "f": 2},
    ]


def test_validation_names_the_grid_entry() -> None:
    points = expand({**TINY, "n_honest": 6}, {"aggregator": ["average", "krum"], "f": [1, 4]})
    valid, invalid = validate_points(points)
    assert len(valid) == 3 and len(invalid) == 1
    point, error = invalid[0]
    assert point.coords == {"aggregator": "krum", "f": 4}
    assert "Krum requires n >= 2f + 3" in error
    assert "grid entry #3 (aggregator='krum', f=4)" == point.describe()
    assert all(isinstance(cfg, ExperimentConfig) for _, cfg in valid)
    _, invalid = validate_points(expand(TINY, {"lrr": [0.1]}))
    assert "lrr" in invalid[0][1] and "allowed fields" in invalid[0][1]


def _configs(**sweep):
    valid, invalid = validate_points(expand(TINY, sweep))
    assert not invalid
    return [cfg for _, cfg in valid]


def test_resume_after_crash_and_failures(tmp_path, monkeypatch) -> None:
    db_path = tmp_path / "r.db"
    configs = _configs(seed=[0, 1, 2])
    ids = [run_id(c.to_dict()) for c in configs]
    # a previous process died while running seed 1: partial metrics, status "running"
    with open_db(db_path) as db:
        db.start_run(configs[1].to_dict())
        db.record_metrics(ids[1], {"round": 1, "test_accuracy": -1.0})
        db.record_metrics(ids[1], {"round": 99, "test_accuracy": -1.0})
    summary = run_grid(configs + configs[:1], db_path, progress=False)
    assert (summary.total, summary.skipped, summary.finished, summary.duplicates) == (3, 0, 3, 1)
    with open_db(db_path) as db:
        assert db.finished_ids() == set(ids)
        metrics = db.load_metrics()
        assert [m["round"] for m in metrics[ids[1]]] == [1, 2, 3]  # partial records replaced
        assert all(m["test_accuracy"] >= 0 for m in metrics[ids[1]])
        started = {r["run_id"]: r["started"] for r in db.load_runs()}

    # resume: nothing finished is repeated; a new config runs; a failing run is recorded
    from byzance.engines.sim import SimulatorEngine

    calls = []
    real = SimulatorEngine.run

    def engine(self, config, *args, **kwargs):
        calls.append(config.seed)
        if config.seed == 4:
            raise RuntimeError("boom\nsecond line")
        return real(self, config, *args, **kwargs)

    monkeypatch.setattr(SimulatorEngine, "run", engine)
    more = _configs(seed=[0, 1, 2, 3, 4])
    summary = run_grid(more, db_path, progress=False)
    assert calls == [3, 4]
    assert (summary.skipped, summary.finished) == (3, 1)
    assert summary.failed == [(run_id(more[4].to_dict()), "RuntimeError: boom\nsecond line")]
    with open_db(db_path) as db:
        assert {
            r["run_id"]: r["started"] for r in db.load_runs() if r["run_id"] in started
        } == started
        assert db.status(run_id(more[4].to_dict())) == "failed"
    # a failed run is retried next time
    calls.clear()
    monkeypatch.setattr(SimulatorEngine, "run", real)
    summary = run_grid(more, db_path, progress=False)
    assert (summary.skipped, summary.finished, summary.failed) == (4, 1, [])


def test_a_second_grid_on_the_same_db_is_refused(tmp_path) -> None:
    db_path = tmp_path / "r.db"
    configs = _configs(seed=[0])
    with grid_mod.exclusive_bench(str(db_path)):  # another bench holds the DB
        assert (tmp_path / "r.db.lock").read_text() == str(os.getpid())
        with pytest.raises(GridError, match=r"another byzance bench \(pid \d+\) is running"):
            run_grid(configs, db_path, progress=False)
        with open_db(db_path) as db:
            assert db.load_runs() == []  # refused before anything ran
        run_grid(configs, tmp_path / "other.db", progress=False)  # another DB is free
    assert not (tmp_path / "r.db.lock").exists()
    assert run_grid(configs, db_path, progress=False).finished == 1  # released


def test_parallel_jobs_match_sequential(tmp_path) -> None:
    configs = _configs(aggregator=["average", "nnm+trimmed_mean"], seed=[3])
    seq = run_grid(configs, tmp_path / "seq.db", jobs=1, progress=False)
    par = run_grid(configs, tmp_path / "par.db", jobs=2, progress=False)
    assert seq.finished == par.finished == 2 and not par.failed
    with open_db(tmp_path / "seq.db") as a, open_db(tmp_path / "par.db") as b:
        ra = {r["run_id"]: r["final_accuracy"] for r in a.load_runs()}
        rb = {r["run_id"]: r["final_accuracy"] for r in b.load_runs()}
        assert ra.keys() == rb.keys()
        for rid in ra:  # separate processes reproduce the same runs
            assert rb[rid] == pytest.approx(ra[rid], abs=1e-6)
        ma, mb = a.load_metrics(), b.load_metrics()
        assert {k: len(v) for k, v in ma.items()} == {k: len(v) for k, v in mb.items()}


def test_progress_line() -> None:
    import io

    out = io.StringIO()
    bar = grid_mod.Progress(total=4, done=1, stream=out)
    bar.add_accuracy(0.5)
    bar.update("finished", 0.9)
    bar.update("failed", None)
    line = out.getvalue().splitlines()[-1]
    assert "3/4 runs" in line and "best 0.900" in line and "worst 0.500" in line
    assert "failed 1" in line and "ETA" in line
    with pytest.raises(ValueError, match="jobs must be >= 1"):
        run_grid([], "x.db", jobs=0)
