"""The results DB is never corrupted nor lost: one writer per run (whatever path it is opened
by), dead writers taken over, finished runs complete, old schemas read and resumed, files that
are not byzance databases never written, bad paths reported on one line."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import signal
import sqlite3
import threading

import pytest
from tiny import TINY_CONFIG

from byzance.cli import main
from byzance.grid import GridError, exclusive_bench, run_grid, tomllib
from byzance.results import (
    SCHEMA_VERSION,
    IncompleteRunError,
    NotAResultsDB,
    RunClaimedError,
    open_db,
    record_run,
    run_id,
)
from byzance.runner import build_config

CONFIG = {"dataset": "digits", "aggregator": "krum", "f": 2, "seed": 0, "lr": 0.1, "rounds": 3}
TINY_CFG = dict(TINY_CONFIG)
TINY = ["--rounds", "2", "--eval-every", "1", "--batch-size", "8", "--quiet"]
GRID = '[base]\ndataset = "digits"\nmodel = "logreg"\nrounds = 2\n[sweep]\nseed = [0]\n'


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _rounds(db, rid):
    return [r["round"] for r in db.load_metrics().get(rid, [])]


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- one writer per run ------------------------------------------------------------------------


def test_a_second_writer_through_a_symlink_is_refused(tmp_path) -> None:
    db_path, link = tmp_path / "r.db", tmp_path / "link.db"
    link.symlink_to(db_path)
    first = open_db(db_path)
    rid = first.start_run(CONFIG)
    first.record_metrics(rid, {"round": 1, "test_accuracy": 0.1})
    first.record_metrics(rid, {"round": 2, "test_accuracy": 0.2})
    with open_db(link) as second:
        for overwrite in (False, True):
            with pytest.raises(RunClaimedError, match=r"being run by another writer \(pid \d+"):
                second.start_run(CONFIG, overwrite=overwrite)
        with pytest.raises(RunClaimedError, match="cannot record metrics of run"):
            second.record_metrics(rid, {"round": 3, "test_accuracy": 0.9})
        with pytest.raises(RunClaimedError, match="cannot finish run"):
            second.finish_run(rid, 0.9, 1.0)
        with pytest.raises(RunClaimedError, match="cannot fail run"):
            second.fail_run(rid, "boom")
        assert not second.abandon_run(rid, "boom") and not second.owns(rid)
        assert _rounds(second, rid) == [1, 2]  # the first writer's records are intact
    first.record_metrics(rid, {"round": 3, "test_accuracy": 0.3})
    first.finish_run(rid, 0.3, 1.0, expected_rounds=[1, 2, 3])
    first.close()
    with open_db(tmp_path / "." / "link.db") as db:
        assert db.status(rid) == "finished" and _rounds(db, rid) == [1, 2, 3]


def test_a_second_bench_through_another_path_is_refused(tmp_path) -> None:
    db_path = tmp_path / "r.db"
    (tmp_path / "sub").mkdir()
    (tmp_path / "linkdir").symlink_to(tmp_path)
    (tmp_path / "link.db").symlink_to(db_path)
    configs = [build_config(TINY_CFG)]
    with exclusive_bench(str(db_path)):
        for other in ("link.db", "linkdir/r.db", "sub/../r.db", "linkdir/link.db"):
            with pytest.raises(GridError, match=r"another byzance bench \(pid \d+\) is running"):
                run_grid(configs, tmp_path / other, progress=False)
    with open_db(db_path) as db:
        assert db.load_runs() == []
    assert run_grid(configs, tmp_path / "linkdir" / "link.db", progress=False).finished == 1


def _hold_run(path: str, ready, go) -> None:
    db = open_db(path)
    rid = db.start_run(CONFIG)
    db.record_metrics(rid, {"round": 1, "test_accuracy": 0.5})
    ready.set()
    go.wait(30)
    os.kill(os.getpid(), signal.SIGKILL)  # dies holding the run, as a killed worker would


def test_a_live_writer_in_another_process_keeps_its_run_until_it_dies(tmp_path) -> None:
    db_path, link = tmp_path / "r.db", tmp_path / "link.db"
    link.symlink_to(db_path)
    open_db(db_path).close()
    ctx = multiprocessing.get_context("fork")
    ready, go = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_hold_run, args=(str(link), ready, go))
    proc.start()
    try:
        assert ready.wait(30)
        with open_db(db_path) as db:
            with pytest.raises(RunClaimedError, match=f"pid {proc.pid}"):
                db.start_run(CONFIG, overwrite=True)
            assert not db.abandon_run(run_id(CONFIG), "dead?")
            assert _rounds(db, run_id(CONFIG)) == [1]
    finally:
        go.set()
        proc.join(30)
    assert proc.exitcode == -signal.SIGKILL
    with open_db(db_path) as db:  # its writer died: the run is taken over, from scratch
        assert db.status(run_id(CONFIG)) == "running"
        rid = db.start_run(CONFIG)
        assert _rounds(db, rid) == [] and db.owns(rid)


def test_a_claim_of_a_dead_writer_is_taken_over_on_resume(tmp_path) -> None:
    """A run left ``running`` by a process that died (its claim names a pid and a lock file
    nobody holds) is re-run by the next grid; a live one is not touched."""
    db_path = tmp_path / "r.db"
    cfgs = [build_config({**TINY_CFG, "seed": s}) for s in (0, 1)]
    ids = [run_id(c.to_dict()) for c in cfgs]
    with open_db(db_path) as db:
        db.start_run(cfgs[0].to_dict())
        db.record_metrics(ids[0], {"round": 1, "test_accuracy": -1.0})
    conn = sqlite3.connect(db_path)
    with conn:
        conn.execute(
            "UPDATE runs SET writer='0123456789abcdef', writer_pid=999999999, "
            "writer_host='elsewhere', writer_lock=? WHERE run_id=?",
            (str(tmp_path / "r.db.writers" / "0123456789abcdef.lock"), ids[0]),
        )
    conn.close()
    summary = run_grid(cfgs, db_path, progress=False)
    assert (summary.finished, summary.failed) == (2, [])
    with open_db(db_path) as db:
        assert db.finished_ids() == set(ids)
        assert _rounds(db, ids[0]) == [1, 2, 3]
        assert all(m["test_accuracy"] >= 0 for m in db.load_metrics()[ids[0]])


def test_run_db_while_a_bench_runs_the_same_config(capsys, tmp_path, monkeypatch) -> None:
    """``byzance run --db`` (through a symlink) on the run a bench is running is refused; the
    bench's run finishes with all its records."""
    from byzance.engines.sim import SimulatorEngine

    db_path, link = tmp_path / "r.db", tmp_path / "link.db"
    link.symlink_to(db_path)
    code, out, _ = run_cli(capsys, "run", *TINY, "--aggregator", "average", "--show-config")
    cfg = build_config(tomllib.loads(out))
    started, release = threading.Event(), threading.Event()
    real = SimulatorEngine.run

    def paused(self, config, options, on_metrics=None, **kwargs):
        def record(rec):
            on_metrics(rec)
            if threading.current_thread() is bench:
                started.set()
                release.wait(60)

        return real(self, config, options, record, **kwargs)

    monkeypatch.setattr(SimulatorEngine, "run", paused)
    outcome = {}
    bench = threading.Thread(
        target=lambda: outcome.update(summary=run_grid([cfg], db_path, progress=False))
    )
    bench.start()
    try:
        assert started.wait(60)
        argv = ["run", *TINY, "--aggregator", "average", "--no-reference", "--db", link]
        code, out, err = run_cli(capsys, *argv)
    finally:
        release.set()
        bench.join(60)
    assert code == 1 and "being run by another writer" in err, err
    assert outcome["summary"].finished == 1
    with open_db(db_path) as db:
        (run,) = db.load_runs()
        assert run["status"] == "finished" and _rounds(db, run["run_id"]) == [1, 2]


# -- finished means complete -------------------------------------------------------------------


class _Result:
    def __init__(self, diverged=False):
        self.final_accuracy, self.seconds, self.diverged = 0.5, 1.0, diverged


def test_a_run_with_missing_rounds_is_failed_not_finished(tmp_path) -> None:
    path = tmp_path / "r.db"
    rid = run_id(CONFIG)

    def lossy(record):  # another hand deletes a stored record while the run goes on
        for r in (1, 2, 3):
            record({"round": r, "test_accuracy": 0.1 * r})
            if r == 2:
                conn = sqlite3.connect(path)
                with conn:
                    conn.execute("DELETE FROM metrics WHERE round=2")
                conn.close()
        return _Result()

    with pytest.raises(IncompleteRunError, match=r"records of 1 round\(s\) \(2\) are missing"):
        record_run(str(path), CONFIG, "sim", rid, lossy)
    with open_db(path) as db:
        (run,) = db.load_runs()
        assert run["status"] == "failed" and run["error"].startswith("incomplete:")
        assert db.finished_ids() == set()

    def short(record):  # returns without its last round (3) and without diverging
        record({"round": 1, "test_accuracy": 0.1})
        return _Result()

    with pytest.raises(IncompleteRunError, match=r"\(3\)"):
        record_run(str(path), CONFIG, "sim", rid, short)

    def diverged(record):  # a diverged run stops early: its last round is not expected
        record({"round": 1, "test_accuracy": 0.1})
        return _Result(diverged=True)

    record_run(str(path), CONFIG, "sim", rid, diverged)
    with open_db(path) as db:
        assert db.status(rid) == "finished" and _rounds(db, rid) == [1]


# -- old databases -----------------------------------------------------------------------------

V1_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE runs (
    run_id TEXT PRIMARY KEY, config_json TEXT NOT NULL, engine TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'finished', 'failed')),
    started TEXT, finished TEXT, final_accuracy REAL, seconds REAL, error TEXT
);
CREATE TABLE metrics (
    run_id TEXT NOT NULL, round INTEGER NOT NULL, train_loss REAL, test_accuracy REAL,
    agg_distance REAL, lr REAL, time REAL, missing_workers TEXT, val_accuracy REAL, extra TEXT,
    PRIMARY KEY (run_id, round)
);
INSERT INTO meta(key, value) VALUES ('schema_version', '1');
"""


def _v1_database(path, cfgs) -> list[str]:
    """A database as byzance 0.x (schema 1) left it: run 0 finished, run 1 died mid-way."""
    import json

    ids = [run_id(c.to_dict()) for c in cfgs]
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.executescript(V1_SCHEMA)
    with conn:
        for rid, cfg, status in zip(ids, cfgs, ("finished", "running"), strict=True):
            conn.execute(
                "INSERT INTO runs VALUES (?, ?, 'sim', ?, '2024-01-01T00:00:00+00:00', NULL, "
                "?, 1.0, NULL)",
                (rid, json.dumps(cfg.to_dict(), sort_keys=True), status, 0.75),
            )
            conn.execute(
                "INSERT INTO metrics(run_id, round, test_accuracy) VALUES (?, 1, 0.75)", (rid,)
            )
    conn.close()
    return ids


def test_a_database_of_the_previous_schema_is_read_and_resumed(tmp_path) -> None:
    path = tmp_path / "old.db"
    cfgs = [build_config({**TINY_CFG, "seed": s}) for s in (0, 1)]
    ids = _v1_database(path, cfgs)
    before = _digest(path)
    with open_db(path, readonly=True) as db:  # a report reads it as it is
        assert db.schema_version == 1
        assert {r["run_id"]: r["status"] for r in db.load_runs()} == {
            ids[0]: "finished",
            ids[1]: "running",
        }
        assert db.load_metrics()[ids[0]] == [{"round": 1, "test_accuracy": 0.75}]
        with pytest.raises(ValueError, match="read-only"):
            db.start_run(cfgs[1].to_dict())
    assert _digest(path) == before
    summary = run_grid(cfgs, path, progress=False)  # migrated; the dead run is re-run
    assert (summary.skipped, summary.finished, summary.failed) == (1, 1, [])
    with open_db(path) as db:
        assert db.schema_version == SCHEMA_VERSION
        assert db.finished_ids() == set(ids)
        assert _rounds(db, ids[0]) == [1] and _rounds(db, ids[1]) == [1, 2, 3]
    conn = sqlite3.connect(path)
    version = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0]
    columns = {r[1] for r in conn.execute("PRAGMA table_info(runs)")}
    conn.close()
    assert version == str(SCHEMA_VERSION)
    assert {"writer", "writer_pid", "writer_host", "writer_lock"} <= columns


def test_a_newer_schema_is_refused(tmp_path) -> None:
    path = tmp_path / "new.db"
    open_db(path).close()
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    conn.close()
    for readonly in (False, True):
        with pytest.raises(ValueError, match="schema version 99.*upgrade byzance"):
            open_db(path, readonly=readonly)


# -- files that are not byzance databases -----------------------------------------------------


def _foreign_sqlite(path):
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO users(name) VALUES ('ada')")
    conn.close()


def test_report_never_writes_a_file_that_is_not_a_results_db(tmp_path) -> None:
    from byzance.report import build_report

    empty, foreign = tmp_path / "empty.db", tmp_path / "app.sqlite"
    empty.touch()
    _foreign_sqlite(foreign)
    before = _digest(foreign)
    with pytest.raises(NotAResultsDB, match="not a byzance results database .an empty file"):
        build_report(empty, tmp_path / "rep")
    assert empty.stat().st_size == 0
    with pytest.raises(NotAResultsDB, match="not a byzance results database .*other tables"):
        build_report(foreign, tmp_path / "rep")
    with pytest.raises(NotAResultsDB):
        open_db(foreign)  # nor does a writer
    assert _digest(foreign) == before
    assert not (tmp_path / "rep").exists()
    with open_db(empty) as db:  # run --db / bench may make an empty file a results DB
        assert db.load_runs() == []


@pytest.mark.parametrize("command", ["run", "bench", "dry-run", "report"])
def test_commands_refuse_a_foreign_sqlite_file(capsys, tmp_path, command) -> None:
    foreign = tmp_path / "app.sqlite"
    _foreign_sqlite(foreign)
    before = _digest(foreign)
    code, _, err = run_cli(capsys, *_argv(command, foreign, tmp_path))
    assert code == 2 and "is not a byzance results database" in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert _digest(foreign) == before
    assert not list(tmp_path.glob("app.sqlite.*"))  # no lock file, no journal


def _argv(command, db, tmp_path, *more):
    grid = tmp_path / "g.toml"
    grid.write_text(GRID)
    return {
        "run": ["run", *TINY, "--aggregator", "average", "--no-reference", "--db", db],
        "bench": ["bench", grid, "--quiet", "--db", db],
        "dry-run": ["bench", grid, "--dry-run", "--db", db],
        "report": ["report", db, "--out", tmp_path / "rep"],
    }[command] + list(more)


# -- bad paths: one line, exit 2 ---------------------------------------------------------------


def _bad_db(kind, tmp_path):
    if kind == "text file":
        path = tmp_path / "notes.txt"
        path.write_text("hello\n")
        return path, "not a byzance results database (not an SQLite file)"
    if kind == "folder":
        return tmp_path, "is a folder"
    if kind == "below a file":
        (tmp_path / "file").write_text("x")
        return tmp_path / "file" / "r.db", "is a file, not a folder"
    if kind == "missing folder":
        return tmp_path / "nope" / "r.db", "does not exist"
    return "/proc/byzance-test.db", "cannot"


@pytest.mark.parametrize("command", ["run", "bench", "dry-run", "report"])
@pytest.mark.parametrize("kind", ["text file", "folder", "below a file", "missing folder", "proc"])
def test_a_bad_db_path_is_one_error_line(capsys, tmp_path, command, kind) -> None:
    path, needle = _bad_db(kind, tmp_path)
    if command == "report" and kind in ("below a file", "missing folder", "proc"):
        needle = "not found"
    code, out, err = run_cli(capsys, *_argv(command, path, tmp_path))
    assert code == 2, (out, err)
    assert err.startswith("byzance: error: ") and needle in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "running" not in out  # refused before anything ran


def test_report_out_must_be_a_folder(capsys, tmp_path) -> None:
    db_path = tmp_path / "r.db"
    with open_db(db_path) as db:
        rid = db.start_run(CONFIG)
        db.record_metrics(rid, {"round": 3, "test_accuracy": 0.5})
        db.finish_run(rid, 0.5, 1.0)
    (tmp_path / "file").write_text("x")
    for out, needle in (
        (tmp_path / "file", "is a file, expected a folder"),
        (tmp_path / "file" / "rep", "'" + str(tmp_path / "file") + "' is a file"),
    ):
        code, _, err = run_cli(capsys, "report", db_path, "--out", out)
        assert code == 2 and needle in err, err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "file").read_text() == "x"
