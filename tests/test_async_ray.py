"""The ``async`` protocol on the ``ray`` engine (``byzance.engines.ray.asynchronous``): real
asynchrony, small configs."""

from __future__ import annotations

import pytest
import torch

from byzance import engines
from byzance.sim import ExperimentConfig
from byzance.sim.asynchronous import AsyncSimulation

OPTIONS = {"num_cpus": 8, "round_timeout": 60.0}


def cfg(**kw) -> ExperimentConfig:
    base = dict(
        dataset="digits", model="logreg", n_honest=3, f=0, attack="none", protocol="async",
        aggregator="average", rounds=3, eval_every=1, batch_size=8, lr=0.2, momentum=0.5,
        async_filter="none", dampening="none",
    )  # fmt: skip
    base.update(kw)
    return ExperimentConfig(**base)


def test_one_worker_on_ray_is_the_simulators_sgd(ray_local) -> None:
    """A single worker: each vector is computed at the newest model, as in the simulator."""
    config = cfg(n_honest=1, rounds=5, dampening="exponential")
    got = engines.get("ray").execute(config, OPTIONS)
    want = AsyncSimulation(config).run()
    torch.testing.assert_close(got.params, want.params, rtol=1e-4, atol=1e-5)
    assert [r["round"] for r in got.history] == [1, 2, 3, 4, 5]
    assert got.history[-1]["applied"] == 5 and got.history[-1]["staleness"] == 0


def test_kardam_under_attack_on_ray(ray_local) -> None:
    config = cfg(
        n_honest=4, f=1, attack="sign_flipping", async_filter="kardam", rounds=4, eval_every=2,
        filter_attack="lipschitz_edge",
    )  # fmt: skip
    result = engines.get("ray").execute(config, OPTIONS)
    last = result.history[-1]
    assert [r["round"] for r in result.history] == [2, 4]
    assert last["applied"] + last["rejected_lipschitz"] + last["rejected_frequency"] == 4 * 5
    assert last["missing_workers"] == [] and last["staleness"] >= 0
    assert 0 <= last["byzantine_applied"] <= last["applied"]
    assert torch.isfinite(result.params).all()


def test_async_on_ray_refuses_what_does_not_apply() -> None:
    ray = engines.get("ray")
    with pytest.raises(ValueError, match=r"RayOptions.quorum: does not apply to protocol async"):
        ray.check(cfg(), ray.make_options({"quorum": 2}))
    with pytest.raises(ValueError, match=r"RayOptions.checkpoint_dir: protocol async"):
        ray.check(cfg(), ray.make_options({"checkpoint_dir": "/tmp/x"}))
    with pytest.raises(ValueError, match=r"needs n >= 3f \+ 1"):
        ray.check(cfg(n_honest=3, f=2, attack="alie", async_filter="kardam"), ray.make_options({}))


def test_a_crashed_worker_stops_contributing(ray_local) -> None:
    """Worker 1's actor exits before computing its 2nd vector: the others (slowed down, so
    that Ray reports the death before they finish) go on, the run makes its deliveries, and
    the record lists worker 1 as missing."""
    import ray

    def crash(actors) -> None:
        ray.get(actors[1].inject_fault.remote("exit", [2], 0.0))
        ray.get([actors[w].inject_fault.remote("delay", None, 0.4) for w in (0, 2)])

    config = cfg(n_honest=3, rounds=4, eval_every=4)
    result = engines.get("ray").execute(config, OPTIONS, engine_hook=crash)
    last = result.history[-1]
    assert last["applied"] == 12
    assert [m["worker"] for m in last["missing_workers"]] == [1]
    assert last["missing_workers"][0]["reason"].startswith("failed")
