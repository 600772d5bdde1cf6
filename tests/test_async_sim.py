"""The ``async`` protocol in the simulator (``byzance.sim.asynchronous``): its timing model,
reference loops written from the definitions, the attacks, the conditions refused before any
work, and the engine, runner and CLI paths."""

from __future__ import annotations

import math

import pytest
import torch

import byzance.datasets as D
from byzance import runner
from byzance.cli import main
from byzance.round.kardam import KardamServer
from byzance.round.setup import Setup
from byzance.sim import ExperimentConfig
from byzance.sim.async_timing import schedule, worker_means
from byzance.sim.asynchronous import AsyncSimulation


def cfg(**kw) -> ExperimentConfig:
    base = dict(
        dataset="digits", model="logreg", n_honest=3, f=0, attack="none", protocol="async",
        aggregator="average", rounds=3, eval_every=1, momentum=0.0, weight_decay=0.0,
        batch_size=8, lr=0.2, async_filter="none", dampening="none", compute_time="fixed",
    )  # fmt: skip
    base.update(kw)
    return ExperimentConfig(**base)


# ----------------------------------------------------------------------------- timing model
def test_timing_is_reproducible_and_prefix_consistent() -> None:
    means = worker_means(4, 2, straggler_fraction=0.5, straggler_slowdown=5.0, byzantine_speed=3)
    assert means.tolist() == [1.0, 1.0, 5.0, 5.0, 1 / 3, 1 / 3]
    a, b = schedule(300, means, seed=7), schedule(300, means, seed=7)
    assert torch.equal(a.worker, b.worker) and torch.equal(a.time, b.time)
    c = schedule(1000, means, seed=7)  # more deliveries: the first 300 are the same
    assert torch.equal(c.worker[:300], a.worker) and torch.equal(c.time[:300], a.time)
    assert not torch.equal(schedule(300, means, seed=8).worker, a.worker)
    assert bool((a.time[1:] >= a.time[:-1]).all())
    # a fast Byzantine worker delivers about 3x as often as an honest one, a straggler 1/5
    share = torch.bincount(c.worker, minlength=6).double() / 1000
    rates = 1 / means
    assert torch.allclose(share, rates / rates.sum(), atol=0.04)


def test_timing_counts_and_reads_follow_their_definition() -> None:
    arr = schedule(200, worker_means(5, 1, byzantine_speed=2.0), seed=3)
    last_position: dict[int, int] = {}
    seen: dict[int, int] = {}
    for j, w in enumerate(arr.worker.tolist()):
        seen[w] = seen.get(w, 0) + 1
        assert int(arr.count[j]) == seen[w]
        assert int(arr.read[j]) == (last_position[w] + 1 if w in last_position else 0)
        last_position[w] = j


def test_fixed_delays_go_round_robin() -> None:
    arr = schedule(9, worker_means(3, 0), kind="fixed")
    assert arr.worker.tolist() == [0, 1, 2] * 3
    assert arr.read.tolist() == [0, 0, 0, 1, 2, 3, 4, 5, 6]


# ----------------------------------------------------------------------------- references
def _gradient(setup: Setup, workers, w: int, k: int, x: torch.Tensor) -> torch.Tensor:
    """Worker w's k-th gradient at x, by plain autograd on its batch of round k."""
    xs, ys = workers.batch(torch.tensor([w]), k, 0)
    x = x.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(setup.flat.loss(x, xs[0], ys[0]), x)
    return g


def _reference(config: ExperimentConfig) -> torch.Tensor:
    """Deliveries processed one at a time in the schedule's order, each gradient computed at
    the model its worker read, through the pure ``KardamServer`` (filters, dampening)."""
    setup = Setup(config)
    workers = setup.make_workers()
    n = config.n_honest
    arr = schedule(config.rounds * n, worker_means(n, 0), config.compute_time, config.seed)
    server = KardamServer(
        setup.make_server(), n, config.f, filter=config.async_filter,
        dampening=config.dampening, alpha=config.dampening_alpha,
    )  # fmt: skip
    models, versions = [server.params.clone()], [0]
    momenta = [None] * n
    beta = config.momentum
    for j in range(arr.worker.numel()):
        w, k, read = int(arr.worker[j]), int(arr.count[j]), int(arr.read[j])
        g = _gradient(setup, workers, w, k, models[read])
        m = (1 - beta) * g if momenta[w] is None else beta * momenta[w] + (1 - beta) * g
        momenta[w] = m
        server.receive(w, m, server.version - versions[read], j // n + 1)
        models.append(server.params.clone())
        versions.append(server.version)
    return server.params


def test_equal_fixed_delays_equal_sequential_sgd_with_delay() -> None:
    """No attack, filter or dampening, equal fixed delays: worker j mod n's gradient is
    applied at step j, computed at the model of step j - n + 1 (0 in the first round)."""
    config = cfg(n_honest=3, rounds=4)
    setup = Setup(config)
    workers = setup.make_workers()
    n, lr = 3, config.lr
    xs = [setup.params0.clone()]
    for j in range(config.rounds * n):
        read = 0 if j < n else j - n + 1
        g = _gradient(setup, workers, j % n, j // n + 1, xs[read])
        xs.append(xs[-1] - lr * g)
    got = AsyncSimulation(config).run().params
    assert torch.allclose(got, xs[-1], atol=1e-5, rtol=1e-4)


def test_one_worker_is_plain_sgd() -> None:
    config = cfg(n_honest=1, rounds=6)
    setup = Setup(config)
    workers = setup.make_workers()
    x = setup.params0.clone()
    for k in range(1, 7):
        x = x - config.lr * _gradient(setup, workers, 0, k, x)
    assert torch.allclose(AsyncSimulation(config).run().params, x, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "kw",
    [
        dict(compute_time="exponential", dampening="exponential", dampening_alpha=0.3),
        dict(compute_time="exponential", momentum=0.9, dampening="inverse"),
        dict(compute_time="exponential", n_honest=4, f=1, async_filter="kardam", lr=0.5),
        dict(compute_time="exponential", n_honest=5, f=1, async_filter="lipschitz", seed=3),
        dict(compute_time="fixed", n_honest=4, f=1, async_filter="frequency"),
    ],
)
def test_batched_simulation_equals_one_delivery_at_a_time(kw) -> None:
    """Exponential compute times: the simulator computes several workers' gradients in one
    pass, each at the model it read; the reference computes them one by one."""
    config = cfg(rounds=5, **kw)
    sim = AsyncSimulation(config)
    got = sim.run()
    assert torch.allclose(got.params, _reference(config), atol=1e-5, rtol=1e-4)
    if config.async_filter != "none":
        rejected = got.history[-1]["rejected_lipschitz"] + got.history[-1]["rejected_frequency"]
        assert got.history[-1]["applied"] + rejected == config.rounds * config.n_honest


# ----------------------------------------------------------------------------- runs, attacks
def test_records_and_reproducibility() -> None:
    config = cfg(n_honest=4, f=1, attack="sign_flipping", rounds=4, eval_every=2,
                 async_filter="kardam", compute_time="exponential")  # fmt: skip
    a, b = AsyncSimulation(config).run(), AsyncSimulation(config).run()
    assert [r["round"] for r in a.history] == [2, 4]
    assert torch.equal(a.params, b.params)
    rec = a.history[-1]
    for key in ("round", "train_loss", "test_accuracy", "agg_distance", "lr", "time",
                "sim_time", "applied", "rejected_lipschitz", "rejected_frequency",
                "byzantine_applied", "staleness"):  # fmt: skip
        assert key in rec
    assert rec["applied"] + rec["rejected_lipschitz"] + rec["rejected_frequency"] == 4 * 5
    assert rec["sim_time"] > 0 and rec["staleness"] >= 0
    assert a.timings["applied"] == rec["applied"]


def test_frequency_filter_stops_flooding() -> None:
    """Byzantine workers 20x faster: without a filter they fill most of the applied updates;
    the frequency filter caps them at f of every 2f + 1 applied."""
    base = dict(n_honest=5, f=1, attack="sign_flipping", rounds=8, compute_time="exponential",
                byzantine_speed=20.0, eval_every=8)  # fmt: skip
    plain = AsyncSimulation(cfg(**base)).run().history[-1]
    assert plain["byzantine_applied"] > 0.6 * plain["applied"]
    freq = AsyncSimulation(cfg(async_filter="frequency", **base)).run().history[-1]
    assert freq["byzantine_applied"] <= freq["applied"] / 3 + 1
    assert freq["rejected_frequency"] > 0


def test_lipschitz_edge_attack_passes_the_lipschitz_filter() -> None:
    """Every vector of the attack aimed at the threshold is applied (bar the first ones, sent
    before the filter has a threshold); the catalog attack's own vectors mostly are not."""
    base = dict(
        n_honest=5,
        f=1,
        attack="large_norm",
        attack_params={"scale": 100.0},
        rounds=12,
        compute_time="exponential",
        async_filter="lipschitz",
        eval_every=12,
    )
    sim = AsyncSimulation(cfg(filter_attack="lipschitz_edge", **base))
    edge = sim.run().history[-1]
    sent = int((sim.arrivals.worker == 5).sum())
    raw = AsyncSimulation(cfg(**base)).run().history[-1]
    assert sent >= 8
    assert edge["byzantine_applied"] >= sent - 2
    assert raw["byzantine_applied"] <= 1


def test_data_poisoning_workers_compute_like_honest_ones() -> None:
    config = cfg(n_honest=4, f=1, attack="label_flipping", rounds=3, compute_time="exponential")
    result = AsyncSimulation(config).run()
    assert math.isfinite(result.final_accuracy) and result.history[-1]["applied"] == 15


def test_local_steps() -> None:
    config = cfg(local_steps=2, compute_time="exponential", rounds=2)
    assert math.isfinite(AsyncSimulation(config).run().history[-1]["train_loss"])


# ----------------------------------------------------------------------------- conditions
@pytest.fixture
def no_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args, **kwargs):
        raise AssertionError("a dataset was loaded")

    monkeypatch.setattr(D, "load_dataset", boom)


def test_conditions_refused_before_any_work(no_loading) -> None:
    with pytest.raises(ValueError, match=r"async_filter: 'kardam' needs n >= 3f \+ 1.*n=6.*f=2"):
        cfg(n_honest=4, f=2, attack="alie", async_filter="kardam").validate()
    cfg(n_honest=4, f=2, attack="alie", async_filter="none").validate()  # no filter: no bound
    with pytest.raises(ValueError, match=r"filter_attack: 'lipschitz_edge'.*async_filter"):
        cfg(n_honest=4, f=1, attack="alie", filter_attack="lipschitz_edge").validate()
    with pytest.raises(ValueError, match=r"filter_attack: .*gradient attack.*label_flipping"):
        cfg(n_honest=4, f=1, attack="label_flipping", async_filter="kardam",
            filter_attack="lipschitz_edge").validate()  # fmt: skip
    with pytest.raises(ValueError, match=r"ExperimentConfig.dampening: expected one of"):
        cfg(dampening="linear")
    with pytest.raises(ValueError, match=r"ExperimentConfig.byzantine_speed: expected"):
        cfg(byzantine_speed=0)
    with pytest.raises(ValueError, match=r"async_filter: 'kardam' needs n >= 3f \+ 1"):
        runner.run(cfg(n_honest=4, f=2, attack="alie", async_filter="kardam"), "sim")


def test_run_id_keys_the_async_settings_only_when_used() -> None:
    server = ExperimentConfig(dampening="inverse")
    assert server.key() == ExperimentConfig().key()
    assert cfg().key() != cfg(dampening="inverse").key()


# ----------------------------------------------------------------------------- engine, CLI
def test_sim_engine_runner_and_cli(tmp_path) -> None:
    config = cfg(rounds=2)
    result = runner.run(config, "sim", db=tmp_path / "r.db")
    assert result.history[-1]["round"] == 2
    code = main([
        "run", "--protocol", "async", "--async-filter", "none", "--dampening", "inverse",
        "--byzantine-speed", "2", "--rounds", "2", "--n-honest", "4", "--f", "1",
        "--attack", "sign_flipping", "--quiet", "--no-reference", "--db", str(tmp_path / "c.db"),
    ])  # fmt: skip
    assert code == 0
