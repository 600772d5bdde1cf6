"""The Ray engine with real Ray processes on one machine (tiny models, few rounds).

One local Ray instance for the module (8 logical CPUs, no dashboard); every test starts its
own actors. Fault injection goes through ``RayEngine.inject_fault`` / ``kill_worker`` from a
``before_round`` hook, so what is missing in which round is deterministic.
"""

from __future__ import annotations

import os
import time

import pytest
import torch

ray = pytest.importorskip("ray")

from byzance import aggregators, attacks  # noqa: E402
from byzance.engines import QuorumError, RayEngine, RayOptions, run_experiment_ray  # noqa: E402
from byzance.engines.ray_engine import SharedRows  # noqa: E402
from byzance.engines.workload import SyntheticWorkload  # noqa: E402
from byzance.results import open_db  # noqa: E402
from byzance.sim import ExperimentConfig, run_experiment  # noqa: E402

FAST = {"worker_cpus": 1.0, "startup_timeout": 120.0}


def tiny(**changes) -> ExperimentConfig:
    base = {
        "dataset": "digits",
        "model": "logreg",
        "n_honest": 3,
        "f": 1,
        "attack": "alie",
        "aggregator": "trimmed_mean",
        "rounds": 6,
        "eval_every": 2,
        "batch_size": 16,
    }
    return ExperimentConfig.from_dict({**base, **changes})



# ------------------------------------------------------------------ errors before training
def test_unreachable_address_fails_fast():
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="unreachable"):
        run_experiment_ray(tiny(), address="127.0.0.1:9", options=RayOptions(connect_timeout=2))
    assert time.perf_counter() - t0 < 15


def test_rule_must_tolerate_f_among_q():
    # trimmed mean with f=1 needs q > 2: a quorum of 2 (of n=4) is refused before Ray starts
    with pytest.raises(ValueError, match=r"q=2.*TrimmedMean requires"):
        run_experiment_ray(tiny(), options=RayOptions(quorum=2))
    with pytest.raises(ValueError, match="quorum"):
        run_experiment_ray(tiny(), options=RayOptions(quorum=5))  # q > n
    with pytest.raises(ValueError, match="round_timeout"):
        RayOptions(round_timeout=0).validate()


def test_more_workers_than_cluster_resources(ray_local):
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"cluster too small: 9 worker actors x 2 CPU"):
        run_experiment_ray(tiny(n_honest=8), options=RayOptions(worker_cpus=2.0))
    with pytest.raises(ValueError, match="gpu_slot"):
        run_experiment_ray(tiny(), options=RayOptions(worker_resources={"gpu_slot": 1}))
    assert time.perf_counter() - t0 < 30
    assert ray.is_initialized()  # the caller's Ray instance is left alone


# ------------------------------------------------------------------ reproduction
def test_synchronous_run_reproduces_the_simulator(ray_local, tmp_path):
    cfg = tiny(n_honest=2)
    ref = run_experiment(cfg)
    db = tmp_path / "results.db"
    res = run_experiment_ray(cfg, options=RayOptions(quorum=3, **FAST), db=db)
    assert [r["round"] for r in res.history] == [2, 4, 6]
    for a, b in zip(ref.history, res.history, strict=True):
        assert b["missing_workers"] == []
        for key in ("train_loss", "test_accuracy", "agg_distance", "lr"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key
    assert torch.allclose(res.params, ref.params, atol=1e-5)
    with open_db(db) as conn:
        (run,) = conn.load_runs()
        assert run["engine"] == "ray" and run["status"] == "finished"
        assert run["final_accuracy"] == pytest.approx(ref.final_accuracy)
        records = conn.load_metrics()[run["run_id"]]
    assert [r["round"] for r in records] == [2, 4, 6]


def test_shared_rows_and_object_store_give_the_same_run(ray_local):
    # same node: workers write into the server's matrix in /dev/shm; off: the object store
    cfg = tiny(n_honest=2)
    engines: list[RayEngine] = []
    runs = [
        run_experiment_ray(
            cfg,
            options=RayOptions(quorum=3, shared_memory=shared, **FAST),
            engine_hook=engines.append,
        )
        for shared in (True, False)
    ]
    shared, plain = engines
    if SharedRows.ROOT.is_dir():
        assert shared.shared_workers == {0, 1, 2}  # the ALIE forger too
    assert plain.shared_workers == set()
    assert shared._rows is None and not list(SharedRows.ROOT.glob(f"byzance-{os.getpid()}-*"))
    a, b = runs
    assert [r["train_loss"] for r in a.history] == [r["train_loss"] for r in b.history]
    assert torch.equal(a.params, b.params)


# ------------------------------------------------------------------ faults
def test_killed_and_delayed_workers_are_recorded_and_the_run_completes(ray_local, tmp_path):
    # n = 4 honest + 1 Byzantine, q = 4: one worker may be missing per round
    cfg = tiny(n_honest=4, rounds=6)
    seen: dict[str, float] = {}

    def before_round(engine: RayEngine, t: int) -> None:
        if t == 3:
            for w in (0, 2, 3):  # the death is detected before the quorum is in, even on
                engine.inject_fault(w, "delay", rounds=[3], seconds=2.0)  # a loaded machine
            engine.kill_worker(1)  # process killed: detected, re-created
        if t == 5:
            seen["rejoin_wait"] = time.perf_counter()
            ray.get(engine.actors[1].info.remote())  # the re-created worker is up
            engine.inject_fault(2, "delay", seconds=6.0)  # beyond round_timeout from now on

    db = tmp_path / "results.db"
    opts = RayOptions(quorum=4, round_timeout=4.0, **FAST)
    res = run_experiment_ray(cfg, options=opts, db=db, before_round=before_round)
    assert [r["round"] for r in res.history] == [2, 4, 6]
    assert res.timings["recreated_workers"] == 1
    with open_db(db) as conn:
        (run,) = conn.load_runs()
        assert run["status"] == "finished" and run["engine"] == "ray"
        records = conn.load_metrics()[run["run_id"]]
    missing = [m for r in records for m in r["missing_workers"]]
    by_round: dict[int, dict[int, str]] = {}
    for m in missing:
        by_round.setdefault(m["round"], {})[m["worker"]] = m["reason"]
    assert by_round[3] == {1: "dead"}
    assert set(by_round.get(4, {})) <= {1}  # the new actor may still be starting
    # worker 1 rejoined with the current model; worker 2 is too slow from round 5 on
    assert set(by_round[5]) == {2} and set(by_round[6]) == {2}
    assert by_round[5][2] in ("late", "timeout")
    assert all(len(v) == 1 for v in by_round.values())  # q = n - 1: one missing at most
    assert res.final_accuracy > 0.1


def test_malformed_vectors_exceptions_and_crashes_never_stop_the_server(ray_local):
    agg = aggregators.create("average")
    wl = SyntheticWorkload(50, 4, 0, agg, rounds=7, eval_every=7)
    engine = RayEngine(wl, RayOptions(quorum=3, round_timeout=60.0, **FAST))
    # faults from round 3: in rounds 1-2 a worker may still be slow from its start (it was
    # once late by more than the margin below in round 2, in a full CI run)
    faults = {3: (1, "nan"), 4: (2, "raise"), 5: (3, "shape"), 6: (0, "exit")}
    try:
        engine.start()
        for t, (w, kind) in faults.items():
            engine.inject_fault(w, kind, rounds=[t])
            for other in set(range(4)) - {w}:  # the faulty vector arrives first (with a
                engine.inject_fault(other, "delay", rounds=[t], seconds=8.0)  # margin for load)
        history = engine.run()
        by_round: dict[int, dict[int, str]] = {}
        for m in history[-1]["missing_workers"]:
            by_round.setdefault(m["round"], {})[m["worker"]] = m["reason"]
        assert by_round[3] == {1: "malformed: non-finite"}
        assert by_round[4] == {2: "error: RuntimeError"}
        assert by_round[5] == {3: "malformed: shape (49,) != (50,)"}
        assert by_round[6] == {0: "dead"}
        assert engine.recreated == {0: 1}
        # outside the fault rounds a worker can only be slow (or worker 0, being re-created)
        for t in (1, 2, 7):
            for w, reason in by_round.get(t, {}).items():
                assert reason in ("late", "busy") or (w == 0 and t == 7), (t, w, reason)
        assert torch.isfinite(wl.params).all()
        # with q = n a single faulty worker makes the round fail, clearly
        engine.q = 4
        engine.inject_fault(1, "nan", rounds=[8])
        with pytest.raises(QuorumError, match=r"round 8: 3 valid vectors.*q=4.*1: 'malformed"):
            engine.run_round(8)
    finally:
        engine.shutdown()


# ------------------------------------------------------------------ checkpoints
class DriverDied(Exception):
    pass


def test_driver_death_then_resume_from_the_last_checkpoint(ray_local, tmp_path):
    cfg = tiny(n_honest=2, rounds=6)
    ref = run_experiment(cfg)
    db, ckpt = tmp_path / "results.db", tmp_path / "ckpt"
    opts = RayOptions(quorum=3, checkpoint_dir=str(ckpt), checkpoint_every=2, **FAST)

    def die(record: dict) -> None:
        if record["round"] == 4:  # after round 4 is in the DB, before its checkpoint
            raise DriverDied

    with pytest.raises(DriverDied):
        run_experiment_ray(cfg, options=opts, db=db, on_metrics=die)
    with open_db(db) as conn:
        (run,) = conn.load_runs()
        assert [r["round"] for r in conn.load_metrics()[run["run_id"]]] == [2, 4]
    (saved,) = ckpt.iterdir()  # one checkpoint, no temp file left behind
    assert saved.name == f"{run['run_id']}.ckpt"
    assert torch.load(saved, weights_only=False)["round"] == 2

    res = run_experiment_ray(cfg, options=opts, db=db)  # resumes at round 3
    assert [r["round"] for r in res.history] == [2, 4, 6]
    # worker momenta, the forgers' attack state and the server were restored exactly
    assert torch.allclose(res.params, ref.params, atol=1e-5)
    assert res.history[-1]["train_loss"] == pytest.approx(ref.history[-1]["train_loss"], rel=1e-5)
    with open_db(db) as conn:
        (run,) = conn.load_runs()
        assert run["status"] == "finished"
        assert [r["round"] for r in conn.load_metrics()[run["run_id"]]] == [2, 4, 6]


# ------------------------------------------------------------------ decentralised mode
def test_equivocating_byzantine_node_tailors_vectors_to_each_recipient():
    import numpy as np

    from byzance.engines.decentralized import EquivocatingForger
    from byzance.engines.workload import AttackForger

    honest = np.arange(12, dtype=np.float32).reshape(3, 4)
    forger = AttackForger(attacks.create("sign_flipping"), 0, 1)
    a = forger.forge(honest, 1)
    sent = EquivocatingForger(forger, equivocate=True).forge(honest, 1)
    assert sent.shape == (3, 4)
    np.testing.assert_allclose(sent - honest, np.broadcast_to(a - honest.mean(0), (3, 4)))
    same = EquivocatingForger(forger, equivocate=False).forge(honest, 1)
    np.testing.assert_allclose(same, np.broadcast_to(a, (3, 4)))


def test_decentralized_rules_are_checked_on_q():
    from byzance.engines.decentralized import DecentralizedOptions, run_decentralized_ray

    with pytest.raises(ValueError, match=r"model_aggregator cannot run on the q=3.*Krum"):
        run_decentralized_ray(tiny(), decentralized=DecentralizedOptions(model_aggregator="krum"))


def test_decentralized_without_attack_is_the_simulators_sgd(ray_local):
    from byzance.engines.decentralized import DecentralizedOptions, run_decentralized_ray

    cfg = tiny(n_honest=2, f=0, attack="none", aggregator="average", rounds=4)
    ref = run_experiment(cfg)
    out = run_decentralized_ray(
        cfg,
        options=RayOptions(**FAST),
        decentralized=DecentralizedOptions(model_aggregator="average"),
    )
    for a, b in zip(ref.history, out["history"], strict=True):
        assert b["test_accuracy"] == pytest.approx(a["test_accuracy"], abs=1e-9)
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
        assert b["spread"] < 1e-5
    assert torch.allclose(out["params"], ref.params.expand(2, -1), atol=1e-5)


def test_decentralized_under_attack_reports_spread(ray_local, tmp_path):
    from byzance.engines.decentralized import run_decentralized_ray

    cfg = tiny(n_honest=3, f=1, attack="alie", aggregator="monna", rounds=4)
    db = tmp_path / "results.db"
    out = run_decentralized_ray(cfg, options=RayOptions(**FAST), db=db)
    last = out["history"][-1]
    assert out["params"].shape[0] == 3 and torch.isfinite(out["params"]).all()
    diameter = float(torch.cdist(out["params"][None], out["params"][None]).max())
    assert last["spread"] == pytest.approx(diameter, rel=1e-5) and last["spread"] > 0
    assert last["test_accuracy_min"] <= last["test_accuracy"] <= last["test_accuracy_max"]
    with open_db(db) as conn:
        (run,) = conn.load_runs()
        assert run["engine"] == "ray-decentralized" and run["status"] == "finished"
        records = conn.load_metrics()[run["run_id"]]
    assert [r["round"] for r in records] == [2, 4] and records[-1]["spread"] == last["spread"]


DEC = {"n_honest": 3, "f": 1, "attack": "alie", "aggregator": "monna", "rounds": 6}


@pytest.fixture(scope="module")
def dec_reference(ray_local):
    """An uninterrupted decentralised run of ``tiny(**DEC)``, no checkpoints."""
    from byzance.engines.decentralized import run_decentralized_ray

    return run_decentralized_ray(tiny(**DEC), options=RayOptions(**FAST))


def assert_same_decentralized_run(out: dict, ref: dict) -> None:
    """Same node models and records, bit for bit (``time`` aside; ``agg_distance`` is NaN)."""
    assert torch.equal(out["params"], ref["params"])

    def strip(history: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if k not in ("time", "agg_distance")} for r in history]

    assert strip(out["history"]) == strip(ref["history"])


def test_decentralized_driver_death_then_resume_from_the_last_checkpoint(
    ray_local, tmp_path, dec_reference
):
    from byzance.engines.decentralized import run_decentralized_ray

    cfg = tiny(**DEC)
    db, ckpt = tmp_path / "results.db", tmp_path / "ckpt"
    opts = RayOptions(checkpoint_dir=str(ckpt), checkpoint_every=3, **FAST)

    def die(actors: list, t: int) -> None:
        if t == 5:  # rounds 1-4 done: records 2 and 4 in the DB, the checkpoint at round 3
            raise DriverDied

    with pytest.raises(DriverDied):
        run_decentralized_ray(cfg, options=opts, db=db, before_round=die)
    with open_db(db) as conn:
        (run,) = conn.load_runs()
        assert [r["round"] for r in conn.load_metrics()[run["run_id"]]] == [2, 4]
    (saved,) = ckpt.iterdir()  # one checkpoint, no temp file left behind
    assert saved.name == f"{run['run_id']}.ckpt"
    state = torch.load(saved, weights_only=False)
    assert state["round"] == 3 and [r["round"] for r in state["history"]] == [2]
    assert sorted(state["nodes"]) == [0, 1, 2, 3]  # 3 honest nodes and the forger

    rounds: list[int] = []
    out = run_decentralized_ray(
        cfg, options=opts, db=db, before_round=lambda actors, t: rounds.append(t)
    )
    assert rounds == [4, 5, 6]  # resumed after the checkpointed round
    # models, momenta, the rules' and the forger's state were restored exactly
    assert_same_decentralized_run(out, dec_reference)
    assert out["run_id"] == run["run_id"]
    with open_db(db) as conn:
        (run,) = conn.load_runs()
        assert run["status"] == "finished" and run["engine"] == "ray-decentralized"
        assert [r["round"] for r in conn.load_metrics()[run["run_id"]]] == [2, 4, 6]
    assert torch.load(saved, weights_only=False)["round"] == 6  # and at the last round


def test_decentralized_checkpoint_of_another_config_is_not_used(ray_local, tmp_path, dec_reference):
    from byzance.engines.decentralized import run_decentralized_ray

    ckpt = tmp_path / "ckpt"
    opts = RayOptions(checkpoint_dir=str(ckpt), checkpoint_every=2, **FAST)
    other = run_decentralized_ray(tiny(**DEC, seed=1), options=opts)  # checkpointed at round 6
    rounds: list[int] = []
    out = run_decentralized_ray(
        tiny(**DEC), options=opts, before_round=lambda actors, t: rounds.append(t)
    )
    assert rounds == [1, 2, 3, 4, 5, 6]  # from scratch
    assert out["run_id"] != other["run_id"]
    assert sorted(p.name for p in ckpt.iterdir()) == sorted(
        f"{r['run_id']}.ckpt" for r in (out, other)
    )
    assert not torch.equal(out["params"], other["params"])
    assert_same_decentralized_run(out, dec_reference)
