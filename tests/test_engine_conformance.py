"""Conformance suite: what every registered engine (``byzance.engines.available()``) must do.

Every test is parametrised over the registered engines (today ``sim`` and ``ray``); an engine
registered later runs the same suite with no edit here. Engine settings are given by name and
kept only where the engine's ``Options`` declares them (``options_for``), so e.g. the Ray
quorum q is asked of every engine and dropped for the simulator, which has no options.

* same config, same final parameters: the trusted-server protocol in synchronous mode (every
  vector aggregated each round: q = n on Ray) gives the simulator's parameters, history
  rounds, losses and accuracies within float round-off, with a stateful rule (centered
  clipping, whose centre is the previous aggregate) under a gradient attack (ALIE) and a data
  attack (label flipping);
* checkpoint then resume equals an uninterrupted run (engines with a ``checkpoint_dir``
  option; the others are documented as not checkpointing);
* a rule that cannot run on what the server receives is refused before any work (no DB
  file, no run row, ``Engine.run`` never called);
* missing or malformed vectors are recorded the same way (``missing_workers`` entries
  ``{"round", "worker", "reason"}``), and every record has the common keys;
* options: defaults, unknown names refused, stable run keys, distinct between engines.

One local Ray instance (8 logical CPUs, no dashboard) serves the module; the Ray engine uses
an initialised Ray instead of starting its own. ``ray`` is skipped if Ray is not installed.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import re
from typing import Any

import pytest
import torch

from byzance import engines
from byzance.results import open_db
from byzance.round.record import RECORD_KEYS
from byzance.runner import run_key
from byzance.sim import ExperimentConfig

#: the registered engines (``flower`` where Flower is installed: it is an optional extra)
ENGINES = [e for e in engines.available() if e != "flower" or importlib.util.find_spec("flwr")]

BASE: dict[str, Any] = {
    "dataset": "digits",
    "model": "logreg",
    "n_honest": 4,
    "f": 1,
    "batch_size": 8,
    "rounds": 4,
    "eval_every": 1,
    "val_fraction": 0.2,
}
#: centered clipping with a tau small enough that clipping is active from the first round
CC = {"aggregator": "centered_clipping", "aggregator_params": {"tau": 0.1}}
CONFIGS: dict[str, dict[str, Any]] = {
    "cc+alie": {**BASE, **CC, "attack": "alie"},
    "cc+label_flipping": {**BASE, **CC, "attack": "label_flipping"},
}
#: settings given to every engine that declares them (generous timeouts: a loaded machine)
SETTINGS: dict[str, Any] = {
    "round_timeout": 120.0,
    "startup_timeout": 120.0,
    "worker_cpus": 1.0,
    "client_cpus": 4.0,  # flower: 2 ClientApp actors on the 8-CPU Ray of ``ray_local``
}
#: engine -> the fixture that brings up what it runs on
NEEDS = {"ray": "ray_local", "flower": "ray_local"}


def config(name: str, **changes: Any) -> ExperimentConfig:
    return ExperimentConfig.from_dict({**CONFIGS[name], **changes})


def option_names(engine: str) -> set[str]:
    return {f.name for f in dataclasses.fields(engines.get(engine).Options)}


def options_for(engine: str, **wanted: Any) -> dict[str, Any]:
    """``SETTINGS`` and ``wanted``, kept where ``engine``'s Options declare them."""
    names = option_names(engine)
    return {k: v for k, v in {**SETTINGS, **wanted}.items() if k in names}


def synchronous(engine: str, cfg: ExperimentConfig, **wanted: Any) -> dict[str, Any]:
    """Options aggregating every vector each round (a quorum of all n, where there is one)."""
    return options_for(engine, quorum=cfg.n_received, **wanted)


def run_hooks(engine: str) -> set[str]:
    """The keyword arguments of ``engine``'s ``run`` beyond the interface's (test hooks)."""
    params = inspect.signature(engines.get(engine).run).parameters
    return set(params) - {"self", "config", "options", "on_metrics", "progress"}


class DriverDied(Exception):
    """Raised from a hook to simulate the driver dying mid-run."""



@pytest.fixture(params=ENGINES)
def engine_name(request) -> str:
    """A registered engine, with what it runs on started (skipped where it cannot run)."""
    name = request.param
    if name in NEEDS:
        request.getfixturevalue(NEEDS[name])
    return name


@pytest.fixture(scope="module")
def uninterrupted():
    """``get(engine, case)``: the synchronous run of ``CONFIGS[case]`` on ``engine``, once per
    module (the engine's fixture must be active)."""
    done: dict[tuple[str, str], Any] = {}

    def get(engine: str, case: str) -> Any:
        if (engine, case) not in done:
            cfg = config(case)
            done[engine, case] = engines.get(engine).execute(cfg, synchronous(engine, cfg))
        return done[engine, case]

    return get


def assert_same_history(got: list[dict], want: list[dict]) -> None:
    assert [r["round"] for r in got] == [r["round"] for r in want]
    for a, b in zip(got, want, strict=True):
        r = a["round"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5, abs=1e-6), r
        assert a["lr"] == pytest.approx(b["lr"], rel=1e-12), r
        assert a["agg_distance"] == pytest.approx(b["agg_distance"], rel=1e-4, abs=1e-6), r
        # accuracies: equal up to one flipped example (of the 288 validation / 359 test ones)
        for key in ("test_accuracy", "val_accuracy"):
            assert a[key] == pytest.approx(b[key], abs=0.004), (r, key)


# ------------------------------------------------------------------ a. same config, same result
@pytest.mark.parametrize("case", sorted(CONFIGS))
def test_same_config_gives_the_simulators_final_parameters(engine_name, case, uninterrupted):
    cfg = config(case)
    ref = uninterrupted("sim", case)
    res = uninterrupted(engine_name, case)
    assert res.params is not None and res.params.shape == ref.params.shape
    torch.testing.assert_close(res.params, ref.params, rtol=1e-5, atol=1e-6)
    assert [r["round"] for r in res.history] == list(range(1, cfg.rounds + 1))
    assert_same_history(res.history, ref.history)
    assert res.final_accuracy == res.history[-1]["test_accuracy"]
    assert not res.diverged
    # the id the run was executed under is the one ``run_key`` gives
    assert res.run_id == run_key(cfg, engine_name, synchronous(engine_name, cfg))


# ------------------------------------------------------------------ b. checkpoint and resume
def test_checkpoint_then_resume_equals_an_uninterrupted_run(engine_name, tmp_path, uninterrupted):
    engine = engines.get(engine_name)
    if "checkpoint_dir" not in option_names(engine_name):
        # documents the engines that do not checkpoint: the option is refused by name
        with pytest.raises(ValueError, match="checkpoint_dir"):
            engine.make_options({"checkpoint_dir": str(tmp_path)})
        assert engine_name != "ray"  # the Ray engine checkpoints
        return
    assert "before_round" in run_hooks(engine_name), "a checkpointing engine's test hook"
    case = "cc+alie"  # centered clipping's centre, worker momenta and the attack's state
    cfg = config(case)
    db, ckpt = tmp_path / "r.db", tmp_path / "ckpt"
    opts = synchronous(engine_name, cfg, checkpoint_dir=str(ckpt), checkpoint_every=1)

    def die(_engine: Any, t: int) -> None:
        if t == 3:  # rounds 1-2 recorded and checkpointed
            raise DriverDied

    with pytest.raises(DriverDied):
        engine.execute(cfg, opts, db=db, before_round=die)
    with open_db(db) as conn:
        (run,) = conn.load_runs()
        assert run["status"] == "failed"
        assert [r["round"] for r in conn.load_metrics()[run["run_id"]]] == [1, 2]
    assert [p.name for p in ckpt.iterdir()] == [f"{run['run_id']}.ckpt"]

    rounds: list[int] = []
    res = engine.execute(cfg, opts, db=db, before_round=lambda _e, t: rounds.append(t))
    assert rounds == [3, 4]  # resumed after the checkpointed round
    assert res.run_id == run["run_id"]
    ref = uninterrupted(engine_name, case)
    # the restored state (server, centre, momenta, attack) continues the same trajectory
    torch.testing.assert_close(res.params, ref.params, rtol=1e-6, atol=1e-7)
    assert_same_history(res.history, ref.history)
    with open_db(db) as conn:
        (run,) = conn.load_runs()
        assert run["status"] == "finished"
        assert run["final_accuracy"] == pytest.approx(res.final_accuracy)
        records = conn.load_metrics()[run["run_id"]]
    assert [r["round"] for r in records] == [1, 2, 3, 4]  # each exactly once
    for got, want in zip(records, res.history, strict=True):
        assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-6)
        assert got["test_accuracy"] == want["test_accuracy"]


# ------------------------------------------------------------------ c. refused before any work
@pytest.mark.parametrize("engine", ENGINES)
def test_a_rule_that_cannot_run_is_refused_before_any_work(engine, tmp_path, monkeypatch):
    eng = engines.get(engine)

    def no_work(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"{engine}: run started for a config its check refuses")

    # patch the class: an instance attribute would outlive the test (monkeypatch restores it
    # as a bound method that shadows later patches of the class)
    monkeypatch.setattr(type(eng), "run", no_work)
    condition = r"Krum requires n >= 2f \+ 3"
    # Krum with f=2 needs 7 vectors; the server receives n_honest + f = 6
    cfg = ExperimentConfig.from_dict({**BASE, "n_honest": 4, "f": 2, "aggregator": "krum"})
    opts = eng.make_options(options_for(engine))
    with pytest.raises(ValueError, match=condition):
        eng.check(cfg, opts)
    db = tmp_path / "r.db"
    with pytest.raises(ValueError, match=condition):
        eng.execute(cfg, opts, db=db)
    assert not db.exists()
    open_db(db).close()  # an existing database gets no run row either
    with pytest.raises(ValueError, match=condition):
        eng.execute(cfg, opts, db=db)
    with open_db(db) as conn:
        assert conn.load_runs() == []

    # 7 vectors received: the rule runs on them all, but not on a quorum of n - f = 5
    cfg = cfg.replace(n_honest=5)
    if "quorum" in option_names(engine):
        for check in (lambda: eng.check(cfg, opts), lambda: eng.execute(cfg, opts, db=db)):
            with pytest.raises(ValueError, match=rf"'krum' with f=2 .*q=5.*{condition}"):
                check()
        with open_db(db) as conn:
            assert conn.load_runs() == []
    else:
        eng.check(cfg, opts)  # aggregates every vector it receives


# ------------------------------------------------------------------ d. missing vectors
def test_missing_and_malformed_vectors_are_recorded_the_same_way(engine_name, tmp_path):
    engine = engines.get(engine_name)
    cfg = config("cc+alie")
    db = tmp_path / "r.db"
    hooks: dict[str, Any] = {}
    if "engine_hook" in run_hooks(engine_name):

        def faults(x: Any) -> None:  # ray: the server loop (``RayEngine``)
            x.inject_fault(1, "nan", rounds=[2])
            for w in (0, 2, 3):  # the malformed vector arrives before the quorum is in
                x.inject_fault(w, "delay", rounds=[2], seconds=5.0)

        hooks["engine_hook"] = faults
    res = engine.execute(cfg, options_for(engine_name), db=db, **hooks)  # default quorum
    assert [r["round"] for r in res.history] == list(range(1, cfg.rounds + 1))
    for rec in res.history:
        assert RECORD_KEYS <= set(rec), sorted(RECORD_KEYS - set(rec))
    with open_db(db) as conn:
        (run,) = conn.load_runs()
        assert run["status"] == "finished"
        stored = conn.load_metrics()[run["run_id"]]
    for records in (res.history, stored):
        missing = [m for rec in records for m in rec.get("missing_workers") or []]
        for m in missing:
            assert set(m) == {"round", "worker", "reason"}, m
            assert isinstance(m["worker"], int) and isinstance(m["reason"], str)
        if not hooks:  # no fault possible: nothing is ever missing
            assert missing == []
            continue
        by_round: dict[int, dict[int, str]] = {}
        for m in missing:
            by_round.setdefault(m["round"], {})[m["worker"]] = m["reason"]
        assert by_round[2] == {1: "malformed: non-finite"}
        assert by_round[2][1].startswith("malformed")
        # recorded in the record of its round (eval_every=1)
        (rec2,) = [r for r in records if r["round"] == 2]
        assert {"round": 2, "worker": 1, "reason": "malformed: non-finite"} in rec2[
            "missing_workers"
        ]
    assert torch.isfinite(res.params).all()


# ------------------------------------------------------------------ e. options and run keys
@pytest.mark.parametrize("engine", ENGINES)
def test_options_defaults_unknown_names_and_stable_run_keys(engine):
    eng = engines.get(engine)
    opts = eng.make_options({})
    assert isinstance(opts, eng.Options)
    assert eng.make_options(None) == opts
    assert eng.make_options(opts) == opts and eng.make_options(opts) is not opts
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['no_such_option'\]"):
        eng.make_options({"no_such_option": 1})
    with pytest.raises(ValueError, match=engine):
        eng.make_options({"no_such_option": 1})

    cfg = config("cc+alie")
    key = run_key(cfg, engine, {})
    assert re.fullmatch(r"[0-9a-f]{16}", key)
    assert run_key(cfg.to_dict(), engine, opts) == key  # a mapping or a config, options or {}
    assert run_key(config("cc+alie"), engine) == key  # the same in a new object
    assert run_key(cfg.replace(seed=1), engine) != key
    # settings that do not change the result are not keyed (a run resumes under new ones)
    assert run_key(cfg, engine, options_for(engine)) == key
    assert cfg.key(engine, eng.id_fields(cfg, opts)) == key


def test_engines_give_different_run_keys():
    cfg = config("cc+alie")
    keys = {name: run_key(cfg, name) for name in ENGINES}
    assert len(set(keys.values())) == len(keys), keys
    assert {"sim", "ray"} <= set(ENGINES)
