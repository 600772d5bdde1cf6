"""ByzSGD on the Ray engine (``byzance.engines.ray.byzsgd``) against the simulator on the same
tiny config: the same protocol, up to float rounding."""

from __future__ import annotations

import pytest
import torch

from byzance import engines
from byzance.sim import ExperimentConfig

pytest.importorskip("ray")

OPTIONS = {"round_timeout": 300.0, "startup_timeout": 300.0, "worker_cpus": 0.5}


@pytest.mark.parametrize("server_attack", ["alie", "contraction"])
def test_ray_runs_the_simulators_protocol(ray_local, server_attack):
    cfg = ExperimentConfig(
        dataset="digits",
        model="logreg",
        n_honest=4,
        f=1,
        attack="alie",
        aggregator="mda",
        batch_size=8,
        rounds=4,
        eval_every=2,
        protocol="byzsgd",
        n_servers=5,
        f_servers=1,
        server_attack=server_attack,
        contraction_every=2,
    )
    sim = engines.get("sim").execute(cfg)
    ray_res = engines.get("ray").execute(cfg, OPTIONS)
    assert ray_res.params.shape == sim.params.shape == (4, sim.params.shape[1])
    torch.testing.assert_close(ray_res.params, sim.params, rtol=1e-5, atol=1e-6)
    for a, b in zip(sim.history, ray_res.history, strict=True):
        assert a["round"] == b["round"]
        assert a["server_accuracies"] == pytest.approx(b["server_accuracies"], abs=3e-3)
        assert a["spread"] == pytest.approx(b["spread"], rel=1e-3)
        assert a["spread_max"] == pytest.approx(b["spread_max"], rel=1e-3)
    assert sim.history[-1]["spread_max"] > 0  # the servers do differ


def test_ray_refuses_a_quorum_before_starting():
    cfg = ExperimentConfig(
        dataset="digits", model="logreg", n_honest=4, f=1, aggregator="mda", protocol="byzsgd"
    )
    engine = engines.get("ray")
    with pytest.raises(ValueError, match=r"RayOptions\.quorum: protocol byzsgd is synchronous"):
        engine.check(cfg, engine.make_options({"quorum": 4}))
