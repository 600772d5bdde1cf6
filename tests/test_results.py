"""Results DB: ids, run life cycle, crash/resume semantics, concurrent writers."""

from __future__ import annotations

import multiprocessing
import sqlite3

import pytest

from byzance.results import SCHEMA_VERSION, open_db, run_id

CONFIG = {"dataset": "digits", "aggregator": "krum", "f": 2, "seed": 0, "lr": 0.1}


def test_run_id_is_stable_and_sensitive() -> None:
    assert run_id(CONFIG) == run_id(dict(reversed(list(CONFIG.items()))))
    assert run_id(CONFIG) != run_id({**CONFIG, "seed": 1})
    assert run_id(CONFIG) != run_id(CONFIG, engine="ray")
    # where the data lives does not change what a run computes
    assert run_id(CONFIG) == run_id({**CONFIG, "data_dir": "/elsewhere"})
    assert run_id(CONFIG) == run_id({**CONFIG, "device": "cuda:1"})
    assert len(run_id(CONFIG)) == 16


def test_life_cycle_and_schema(tmp_path) -> None:
    path = tmp_path / "r.db"
    with open_db(path) as db:
        rid = db.start_run(CONFIG, "sim")
        assert rid == run_id(CONFIG) and db.status(rid) == "running"
        assert db.finished_ids() == set()
        db.record_metrics(
            rid,
            {
                "round": 10,
                "train_loss": 1.5,
                "test_accuracy": 0.5,
                "agg_distance": 0.1,
                "lr": 0.1,
                "time": 1.0,
                "custom": 3,
            },
        )
        db.record_metrics(
            rid,
            {
                "round": 20,
                "train_loss": float("nan"),
                "test_accuracy": 0.7,
                "missing_workers": [3, 5],
                "val_accuracy": 0.6,
            },
        )
        db.finish_run(rid, 0.7, 2.5)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(
        SCHEMA_VERSION
    )
    conn.close()
    with open_db(path) as db:  # reopening keeps everything
        (run,) = db.load_runs()
        assert run["status"] == "finished" and run["final_accuracy"] == 0.7
        assert run["config"] == CONFIG and run["engine"] == "sim" and run["seconds"] == 2.5
        records = db.load_metrics()[rid]
        assert [r["round"] for r in records] == [10, 20]
        assert records[0]["custom"] == 3 and records[0]["agg_distance"] == 0.1
        assert "train_loss" not in records[1]  # NaN stored as NULL
        assert records[1]["missing_workers"] == [3, 5] and records[1]["val_accuracy"] == 0.6
        assert db.finished_ids() == {rid}
        with pytest.raises(ValueError, match="already finished"):
            db.start_run(CONFIG, "sim")


def test_crashed_run_restarts_from_scratch(tmp_path) -> None:
    path = tmp_path / "r.db"
    db = open_db(path)
    rid = db.start_run(CONFIG)
    db.record_metrics(rid, {"round": 10, "test_accuracy": 0.2})
    db.record_metrics(rid, {"round": 20, "test_accuracy": 0.3})
    del db  # "crash": no finish, connection dropped
    with open_db(path) as db:
        assert db.status(rid) == "running" and rid not in db.finished_ids()
        assert db.start_run(CONFIG) == rid
        assert db.load_metrics() == {}  # partial metrics replaced
        db.record_metrics(rid, {"round": 10, "test_accuracy": 0.25})
        db.fail_run(rid, "RuntimeError: diverged", 1.0)
        (run,) = db.load_runs()
        assert run["status"] == "failed" and run["error"] == "RuntimeError: diverged"
        assert db.load_runs("finished") == []
        with pytest.raises(ValueError, match="status must be one of"):
            db.load_runs("done")
        with pytest.raises(ValueError, match="call start_run first"):
            db.finish_run("nope", 0.1, 1.0)
        with pytest.raises(ValueError, match="needs a 'round'"):
            db.record_metrics(rid, {"test_accuracy": 0.1})


def _writer(path: str, k: int) -> None:
    with open_db(path) as db:
        rid = db.start_run({**CONFIG, "seed": k})
        for r in range(20):
            db.record_metrics(rid, {"round": r, "test_accuracy": r / 20})
        db.finish_run(rid, 0.95, 1.0)


def test_concurrent_writers(tmp_path) -> None:
    path = str(tmp_path / "r.db")
    open_db(path).close()
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(path, k)) for k in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    with open_db(path) as db:
        assert len(db.finished_ids()) == 3
        assert all(len(v) == 20 for v in db.load_metrics().values())
