"""``byzance bench`` under faults: a worker process killed, Ctrl-C, huge grids in a dry run."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from tiny import TINY_CONFIG

from byzance.cli import main
from byzance.grid import expand, run_grid, validate_points
from byzance.grid.bench import check_grid
from byzance.grid.workers import INTERRUPTED, TEST_KILL_ENV
from byzance.results import open_db, run_id

TINY = dict(TINY_CONFIG)


def _configs(base=TINY, **sweep):
    valid, invalid = validate_points(expand(base, sweep))
    assert not invalid
    return [cfg for _, cfg in valid]


def _statuses(db_path):
    if not os.path.exists(db_path):
        return {}
    with open_db(db_path, readonly=True) as db:
        return {r["run_id"]: r for r in db.load_runs()}


def test_a_killed_worker_fails_its_run_only(tmp_path, monkeypatch) -> None:
    db_path = tmp_path / "r.db"
    configs = _configs(seed=[0, 1, 2, 3])
    ids = [run_id(c.to_dict()) for c in configs]
    monkeypatch.setenv(TEST_KILL_ENV, ids[1])  # the worker running seed 1 kills itself (SIGKILL)
    summary = run_grid(configs, db_path, jobs=2, progress=False)
    assert summary.finished == 3
    assert summary.failed == [(ids[1], "worker process died (signal 9, SIGKILL)")]
    with open_db(db_path) as db:
        runs = {r["run_id"]: r for r in db.load_runs()}
        assert runs[ids[1]]["status"] == "failed"
        assert runs[ids[1]]["error"] == "worker process died (signal 9, SIGKILL)"
        assert {rid for rid, r in runs.items() if r["status"] == "finished"} == {
            ids[0],
            ids[2],
            ids[3],
        }
        metrics = db.load_metrics()
        assert all([m["round"] for m in metrics[rid]] == [1, 2, 3] for rid in ids if rid != ids[1])
    # resumed without the fault: only the failed run runs again
    monkeypatch.delenv(TEST_KILL_ENV)
    summary = run_grid(configs, db_path, jobs=2, progress=False)
    assert (summary.skipped, summary.finished, summary.failed) == (3, 1, [])
    with open_db(db_path) as db:
        assert db.finished_ids() == set(ids)
        assert [m["round"] for m in db.load_metrics()[ids[1]]] == [1, 2, 3]


SLOW_GRID = """
[base]
dataset = "digits"
model = "logreg"
n_honest = 4
f = 1
attack = "sign_flipping"
batch_size = 8
rounds = 1000000
eval_every = 1
[sweep]
seed = [0, 1, 2, 3, 4, 5]
"""


def _wait_for_running(db_path, count, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            runs = _statuses(db_path)
        except ValueError:  # the file is being created
            runs = {}
        if sum(r["status"] == "running" for r in runs.values()) >= count:
            return runs
        time.sleep(0.2)
    raise AssertionError(f"fewer than {count} runs started in {timeout} s")


def test_ctrl_c_stops_the_grid_at_once(tmp_path) -> None:
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) on ``bench --jobs 2``:
    no queued run starts afterwards, the two in flight are marked failed, every worker ends."""
    grid = tmp_path / "g.toml"
    grid.write_text(SLOW_GRID)
    db_path = tmp_path / "r.db"
    cmd = [sys.executable, "-m", "byzance.cli", "bench", str(grid), "--db", str(db_path)]
    proc = subprocess.Popen(
        [*cmd, "--jobs", "2", "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _wait_for_running(db_path, 2)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err, err
    _wait_for_group_end(proc.pid)  # every worker of the bench has ended
    runs = _statuses(db_path)
    assert len(runs) == 2, runs  # nothing started after the interrupt
    assert [r["error"] for r in runs.values()] == [INTERRUPTED] * 2, runs


def _wait_for_group_end(pgid, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    raise AssertionError(f"processes of group {pgid} still alive after {timeout} s")


def test_an_interrupt_of_the_bench_process_alone_stops_its_workers(tmp_path) -> None:
    """KeyboardInterrupt in the bench process only (the workers get no signal): it stops
    dispatching, stops the workers and marks their runs failed."""
    db_path = tmp_path / "r.db"
    configs = _configs({**TINY, "rounds": 1_000_000}, seed=[0, 1, 2, 3, 4])

    def interrupt_when_two_run() -> None:
        _wait_for_running(db_path, 2)
        os.kill(os.getpid(), signal.SIGINT)  # to this process only, not its workers

    watcher = threading.Thread(target=interrupt_when_two_run, daemon=True)
    watcher.start()
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_grid(configs, db_path, jobs=2, progress=False)
    watcher.join(5)
    assert time.monotonic() - start < 150
    time.sleep(1.0)  # a worker left alive would start another run meanwhile
    runs = _statuses(db_path)
    assert len(runs) == 2, runs
    assert [r["error"] for r in runs.values()] == [INTERRUPTED] * 2, runs
    assert not (tmp_path / "r.db.lock").exists()  # the next bench may resume
    assert not [p for p in multiprocessing.active_children() if p.name.startswith("byzance")]


def test_check_grid_validates_each_distinct_config_once(monkeypatch, capsys) -> None:
    from byzance.engines.sim import SimulatorEngine

    calls = []
    real = SimulatorEngine.check

    def counting(self, config, options):
        calls.append(config.seed)
        time.sleep(0.3)  # a slow check: the progress bar shows after a second
        return real(self, config, options)

    monkeypatch.setattr(SimulatorEngine, "check", counting)
    # 6 distinct configs, each 5000 times (a joint table with a label field repeated)
    points = expand({**TINY}, {"seed": list(range(6)), "repeat": [{"rounds": 3}] * 5000})
    assert len(points) == 30_000
    valid, invalid = check_grid(points, progress=True)
    assert sorted(calls) == list(range(6)) and not invalid and len(valid) == 30_000
    assert len({rid for _, _, rid in valid}) == 6
    assert valid[0][2] == run_id(valid[0][1].to_dict())
    assert "checking configs" in capsys.readouterr().err


def test_dry_run_of_a_large_grid_is_quick(capsys, tmp_path) -> None:
    """A dry run of 200 000 grid points (20 distinct configs) takes seconds, not minutes."""
    grid = tmp_path / "g.toml"
    grid.write_text(
        '[base]\ndataset = "digits"\nrounds = 2\n[sweep]\nseed = [0, 1, 2, 3]\n'
        "lr = [0.01, 0.02, 0.05, 0.1, 0.2]\n"
        f"copy = [{', '.join(['{rounds = 2}'] * 10_000)}]\n"
    )
    start = time.perf_counter()
    code = main(["bench", str(grid), "--dry-run", "--quiet", "--db", str(tmp_path / "r.db")])
    seconds = time.perf_counter() - start
    out = capsys.readouterr().out
    assert code == 0
    assert out.startswith("g: 200000 configs, 0 invalid, 20 distinct runs, 0 already finished")
    assert out.count("  todo  #") == 200_000
    assert not (tmp_path / "r.db").exists()  # a dry run writes nothing
    assert seconds < 60, seconds
