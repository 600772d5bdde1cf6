"""Tests of the vectorised simulator (byzance.sim): small, seeded, fast."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from byzance.round.record import RECORD_KEYS
from byzance.sim import ExperimentConfig, Simulation, lr_at, run_experiment
from byzance.sim.workers import Shards, counter_random, hash32


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny models: intra-op threads only add synchronisation (badly so on a shared CPU)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def cfg(**kw) -> ExperimentConfig:
    base = dict(
        dataset="digits",
        model="logreg",
        n_honest=5,
        f=1,
        aggregator="trimmed_mean",
        attack="none",
        rounds=20,
        eval_every=10,
        batch_size=8,
        lr=0.1,
        seed=0,
    )
    base.update(kw)
    return ExperimentConfig(**base)


def strip_time(history):
    return [{k: v for k, v in r.items() if k != "time"} for r in history]


# ---------------------------------------------------------------------- reproducibility
def test_same_seed_identical_history_and_params():
    c = cfg(attack="alie", rounds=12, eval_every=4, model="mlp")
    a, b = run_experiment(c), run_experiment(c)
    assert strip_time(a.history) == strip_time(b.history)
    assert torch.equal(a.params, b.params)
    d = run_experiment(c.replace(seed=1))
    assert not torch.equal(a.params, d.params)


def test_global_rng_untouched():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    run_experiment(cfg(rounds=2))
    assert torch.equal(torch.rand(3), expected)


# ---------------------------------------------------------------------- workers
def _conv_net() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Unflatten(1, (1, 8, 8)),
        torch.nn.Conv2d(1, 4, 3),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(36, 10),
    )


@pytest.mark.parametrize("model", ["mlp", "conv"])
def test_vectorised_gradients_match_per_worker_autograd(model):
    custom = _conv_net() if model == "conv" else None
    sim = Simulation(cfg(model=model, n_honest=4), model=custom)
    params = sim.params + 0.01 * torch.randn(sim.dim, generator=torch.Generator().manual_seed(1))
    ids = torch.arange(4)
    g, losses = sim.worker_gradients(ids, params, round_=3)
    assert g.shape == (4, sim.dim) and losses.shape == (4,)
    model = sim.flat.module
    sim.flat.load_into_module(params)
    for w in range(4):
        idx = sim.shards.sample_indices(0, torch.tensor([w]), 3, 0, sim.config.batch_size)[0]
        # the batch comes from the worker's own shard
        assert set(idx.tolist()) <= set(sim.shards.index[w, : sim.shards.sizes[w]].tolist())
        model.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(sim.x_train[idx]), sim.y_train[idx])
        loss.backward()
        expected = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        torch.testing.assert_close(g[w], expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(losses[w], loss.detach())


@pytest.mark.parametrize("local_steps", [1, 3])
def test_any_worker_subset_reproduces_the_full_computation(local_steps):
    sim = Simulation(cfg(local_steps=local_steps, attack="label_flipping", f=2))
    ids = sim.computing
    assert ids.tolist() == list(range(7))  # data attack: Byzantine workers compute too
    g, losses = sim.worker_gradients(ids, sim.params, 5)
    sub = [6, 2]
    g_sub, l_sub = sim.worker_gradients(sub, sim.params, 5)
    torch.testing.assert_close(g_sub, g[sub], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(l_sub, losses[sub])


def test_data_attack_poisons_only_byzantine_workers():
    sim = Simulation(cfg(attack="label_flipping", f=2))
    clean = Simulation(cfg(attack="none", f=2))
    ids = torch.arange(7)
    g, _ = sim.worker_gradients(ids, sim.params, 1)
    g0, _ = clean.worker_gradients(ids, clean.params, 1)  # same shards and batches
    torch.testing.assert_close(g[:5], g0[:5])
    assert not torch.allclose(g[5:], g0[5:])
    res = sim.run()
    assert len(res.history) == 2 and not res.diverged


def test_model_dependent_data_attack():
    res = run_experiment(cfg(attack="budgeted_label_flipping", f=2, rounds=3, eval_every=3))
    assert not res.diverged and len(res.history) == 1
    with pytest.raises(ValueError, match="ExperimentConfig.attack.*cannot poison"):
        Simulation(cfg(attack="budgeted_label_flipping", f=2, model="mlp"))


def test_local_steps_pseudo_gradient():
    c = cfg(local_steps=3, momentum=0.0, n_honest=3, f=0, lr=0.05)
    sim = Simulation(c)
    w0 = sim.params.clone()
    pseudo, _ = sim.worker_gradients([1], w0, 2)
    local = w0.clone()
    for step in range(3):
        idx = sim.shards.sample_indices(0, torch.tensor([1]), 2, step, c.batch_size)
        g, _ = sim._grad_shared(local, sim.x_train[idx], sim.y_train[idx])
        local = local - 0.05 * g[0]
    torch.testing.assert_close(pseudo[0], (w0 - local) / 0.05, rtol=1e-4, atol=1e-5)


def test_local_steps_training_improves():
    res = run_experiment(cfg(local_steps=3, rounds=20, eval_every=20, lr=0.2, f=0))
    assert res.final_accuracy > 0.8


@pytest.mark.parametrize("scheme", ["extreme", "dirichlet", "gamma"])
def test_heterogeneity_reaches_the_workers(scheme):
    sim = Simulation(cfg(heterogeneity=scheme, alpha=0.1, gamma=0.0, n_honest=9, f=1))
    labels = [
        sim.y_train[sim.shards.index[w, : sim.shards.sizes[w]]].unique().numel() for w in range(10)
    ]
    assert min(labels) <= 3  # iid shards of ~140 digits hold all 10 classes
    assert int(sim.shards.sizes.sum()) == sim.x_train.shape[0]


def test_worker_momentum_and_server_step():
    beta, lr = 0.8, 0.2
    c = cfg(aggregator="average", f=0, momentum=beta, lr=lr, weight_decay=0.0, n_honest=3)
    sim = Simulation(c)
    ids = sim.computing
    w0 = sim.params.clone()
    g1, _ = sim.worker_gradients(ids, w0, 1)
    m1 = (1 - beta) * g1
    w1 = w0 - lr * m1.mean(0)
    g2, _ = sim.worker_gradients(ids, w1, 2)
    m2 = beta * m1 + (1 - beta) * g2
    w2 = w1 - lr * m2.mean(0)
    sim.round(1)
    sim.round(2)
    torch.testing.assert_close(sim.momenta, m2, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(sim.params, w2, rtol=1e-5, atol=1e-7)


def test_round_writes_momenta_and_forged_vectors_into_one_matrix():
    # the round updates momenta in place in the received matrix; momenta restored from
    # elsewhere (a checkpoint) are copied in, and the round is the out-of-place computation
    c = cfg(n_honest=5, f=2, attack="alie", momentum=0.9, aggregator="nnm+trimmed_mean")
    a, b = Simulation(c), Simulation(c)
    a.round(1)
    b.round(1)
    restored = Simulation(c)
    restored.momenta = a.momenta.clone()
    restored.server.load_state_dict(a.server.state_dict())
    params = a.params.clone()
    g, _ = a.worker_gradients(a.computing, params, 2)
    m = torch.lerp(a.momenta.clone(), g, 0.1)
    expected = torch.cat([m, a.byzantine_vectors(m)])
    agg = a.aggregator.aggregate(expected)
    out = a.round(2)
    assert torch.equal(a.momenta, m)
    assert torch.equal(a._received, expected)
    assert torch.equal(out["agg"], agg)
    restored.round(2)
    b.round(2)
    assert torch.equal(restored.params, a.params) and torch.equal(b.params, a.params)
    assert torch.equal(restored.momenta, a.momenta)


def test_keep_large_blocks_is_idempotent_and_can_be_declined(monkeypatch):
    import platform

    from byzance import _allocator

    _allocator.keep_large_blocks.cache_clear()
    monkeypatch.setenv("BYZANCE_MALLOC", "default")
    assert _allocator.keep_large_blocks() is False
    _allocator.keep_large_blocks.cache_clear()
    monkeypatch.delenv("BYZANCE_MALLOC")
    tuned = _allocator.keep_large_blocks()
    assert tuned is (platform.libc_ver()[0] == "glibc")
    assert _allocator.keep_large_blocks() is tuned
    x = torch.ones(3_000_000)  # a block above the default mmap threshold still works
    assert float(x.sum()) == 3_000_000.0


def test_weight_decay_and_server_momentum():
    from byzance.sim.server import Server

    class First:
        def aggregate(self, x):
            return x[0]

    w = torch.tensor([1.0, -2.0])
    s = Server(w, First(), lr=0.5, weight_decay=0.1, momentum=0.9)
    s.step(torch.tensor([[1.0, 1.0]]), 1)
    u1 = torch.tensor([1.0, 1.0]) + 0.1 * torch.tensor([1.0, -2.0])
    torch.testing.assert_close(w, torch.tensor([1.0, -2.0]) - 0.5 * u1)
    w_prev = w.clone()
    s.step(torch.tensor([[0.0, 0.0]]), 2)
    torch.testing.assert_close(w, w_prev - 0.5 * (0.9 * u1 + 0.1 * w_prev))


# ---------------------------------------------------------------------- sampling
def test_hash_matches_reference_and_is_uniform():
    def ref(x):  # lowbias32 with Python's arbitrary-precision ints
        x ^= x >> 16
        x = (x * 0x7FEB352D) & 0xFFFFFFFF
        x ^= x >> 15
        x = (x * 0x846CA68B) & 0xFFFFFFFF
        return x ^ (x >> 16)

    xs = [0, 1, 2, 12345, 2**31 - 1, 2**32 - 1]
    assert hash32(torch.tensor(xs)).tolist() == [ref(x) for x in xs]
    r = counter_random(0, torch.arange(20000), 1, 0) % 10
    counts = torch.bincount(r, minlength=10).float()
    assert (counts / 20000 - 0.1).abs().max() < 0.01


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 9), min_size=1, max_size=5), st.integers(0, 50))
def test_samples_stay_in_shard(sizes, round_):
    shards, start = [], 0
    for s in sizes:
        shards.append(torch.arange(start, start + s))
        start += s
    sh = Shards(shards)
    idx = sh.sample_indices(3, torch.arange(len(sizes)), round_, 0, 6)
    for w, s in enumerate(shards):
        assert set(idx[w].tolist()) <= set(s.tolist())


def test_empty_shard_is_reported():
    with pytest.raises(ValueError, match=r"worker\(s\) \[1\]"):
        Shards([torch.arange(3), torch.arange(0)])


# ---------------------------------------------------------------------- training
def test_training_improves_accuracy_without_attack():
    res = run_experiment(cfg(rounds=60, eval_every=30, batch_size=16, lr=0.5))
    assert res.final_accuracy > 0.8
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    rec = res.history[0]
    assert set(rec) >= RECORD_KEYS
    assert [r["round"] for r in res.history] == [30, 60]


def test_gradient_attack_breaks_average_not_robust_rule():
    common = dict(dataset="synthetic", n_honest=6, f=2, attack="large_norm", rounds=30, lr=0.5)
    clean = run_experiment(cfg(aggregator="average", **{**common, "attack": "none"}))
    broken = run_experiment(cfg(aggregator="average", **common))
    robust = run_experiment(cfg(aggregator="median", **common))
    assert clean.final_accuracy > 0.9
    assert robust.final_accuracy > 0.9
    assert broken.final_accuracy < 0.3
    assert broken.history[-1]["agg_distance"] > 1e3 * robust.history[-1]["agg_distance"]


def test_nonfinite_attack_diverges_average_only():
    common = dict(dataset="synthetic", n_honest=6, f=2, attack="inf", rounds=5, eval_every=5)
    broken = run_experiment(cfg(aggregator="average", **common))
    assert broken.diverged and broken.final_accuracy == pytest.approx(0.1)
    assert [r["round"] for r in broken.history] == [1]
    assert not run_experiment(cfg(aggregator="median", **common)).diverged


def test_metrics_callback_eval_schedule_and_validation_split():
    seen = []
    res = run_experiment(cfg(rounds=7, eval_every=3, val_fraction=0.2), on_metrics=seen.append)
    assert [r["round"] for r in seen] == [3, 6, 7]
    assert seen == res.history
    assert all(0.0 <= r["val_accuracy"] <= 1.0 for r in seen)
    assert res.final_val_accuracy == seen[-1]["val_accuracy"]
    assert run_experiment(cfg(rounds=1)).history[0]["val_accuracy"] is None


def test_evaluate_matches_manual_accuracy():
    sim = Simulation(cfg(eval_batch_size=7))
    sim.flat.load_into_module(sim.params)
    with torch.no_grad():
        pred = sim.flat.module(sim.x_test).argmax(1)
    assert sim.evaluate() == pytest.approx((pred == sim.y_test).float().mean().item())


def test_divergence_is_handled():
    res = run_experiment(cfg(lr=1e37, rounds=30, eval_every=10, aggregator="average", f=0))
    assert res.diverged
    assert res.final_accuracy == pytest.approx(0.1)
    assert res.history[-1]["round"] < 30


def test_custom_model():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    before = model[1].weight.detach().clone()
    res = run_experiment(cfg(rounds=3, eval_every=3, model="my-own"), model=model)
    assert torch.equal(model[1].weight, before)  # the user's module is not modified
    assert res.params.shape == (650,)


# ---------------------------------------------------------------------- schedules
def test_lr_schedules():
    assert lr_at("constant", 0.1, 77, 100) == 0.1
    assert [lr_at("step", 1.0, t, 100) for t in (1, 50, 51, 75, 76, 100)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01]
    )
    assert lr_at("cosine", 2.0, 1, 10) == pytest.approx(2.0)
    assert lr_at("cosine", 2.0, 6, 10) == pytest.approx(1.0)
    assert lr_at("inverse_sqrt", 1.0, 4, 10) == pytest.approx(0.5)
    res = run_experiment(cfg(rounds=4, eval_every=1, lr_schedule="step", lr=1.0))
    assert [r["lr"] for r in res.history] == pytest.approx([1, 1, 0.1, 0.01])


# ---------------------------------------------------------------------- config
def test_config_roundtrip_and_key(tmp_path):
    c = cfg(aggregator_params={"f": 1}, attack="alie")
    d = c.to_dict()
    assert ExperimentConfig.from_dict(d) == c
    assert ExperimentConfig.from_dict(d).key() == c.key()
    assert c.replace(seed=5).key() != c.key()
    assert c.replace(data_dir="/elsewhere").key() == c.key()
    assert len(c.key()) == 16
    p = tmp_path / "exp.toml"
    p.write_text('dataset = "digits"\nrounds = 5\nlr = 1\n[attack_params]\n')
    t = ExperimentConfig.from_toml(p)
    assert t.rounds == 5 and t.lr == 1.0 and isinstance(t.lr, float)


@pytest.mark.parametrize(
    ("changes", "pattern"),
    [
        ({"heterogeneity": "foo"}, r"heterogeneity: expected one of iid, dirichlet, gamma, ext"),
        ({"lr_schedule": "linear"}, r"lr_schedule: expected one of constant, step"),
        ({"bogus": 1}, r"unknown field\(s\) \['bogus'\].*allowed fields"),
        ({"lr": -1}, r"ExperimentConfig\.lr: expected a finite float > 0, got -1$"),
        ({"rounds": 2.5}, r"rounds: expected an int >= 1, got 2\.5"),
        ({"n_honest": True}, r"n_honest: expected an int >= 1, got True"),
        ({"momentum": 1.0}, r"momentum: expected a float in \[0, 1\), got 1\.0"),
        ({"f": "2"}, r"\.f: expected an int >= 0, got '2'"),
        ({"aggregator_params": [1]}, r"aggregator_params: expected a dict"),
    ],
)
def test_config_errors_name_the_field(changes, pattern):
    with pytest.raises(ValueError, match=pattern):
        ExperimentConfig.from_dict({**cfg().to_dict(), **changes})


def test_validate_catches_names_before_running():
    with pytest.raises(ValueError, match="dataset: expected one of"):
        cfg(dataset="imagenet").validate()
    with pytest.raises(ValueError, match="model: expected one of"):
        cfg(model="vit").validate()
    with pytest.raises(ValueError, match="ExperimentConfig.attack"):
        cfg(attack="no_such_attack").validate()
    with pytest.raises(ValueError, match="ExperimentConfig.aggregator"):
        cfg(aggregator="no_such_rule").validate()
    with pytest.raises(ValueError, match="device"):
        cfg(device="nonsense").validate()


def test_impossible_rule_reported_before_running(monkeypatch):
    import byzance.datasets

    def boom(*a, **k):
        raise AssertionError("data loaded before the config was validated")

    monkeypatch.setattr(byzance.datasets, "load_dataset", boom)
    with pytest.raises(ValueError, match=r"aggregator.*n=5"):
        run_experiment(cfg(aggregator="krum", n_honest=3, f=2, attack="alie"))
    # without an attack the rule receives only the n_honest vectors
    c = cfg(aggregator="trimmed_mean", n_honest=4, f=2, attack="none")
    assert c.n_received == 4
    with pytest.raises(ValueError, match=r"n=4"):
        c.validate()


def test_progress_and_dict_config(capsys):
    # tqdm is a requirement: the bar shows the rounds done and the last accuracy
    res = run_experiment(cfg(rounds=2, eval_every=1).to_dict(), progress=True)
    assert len(res.history) == 2
    err = capsys.readouterr().err
    assert "2/2" in err and f"acc={res.history[-1]['test_accuracy']:.3f}" in err


def test_centered_clipping_starts_from_the_previous_aggregate():
    c = cfg(aggregator="nnm+centered_clipping", aggregator_params={"tau": 0.5}, attack="alie")
    sim = Simulation(c)
    # the rule's state is explicit: (NNM's, centered clipping's) held by the server
    assert sim.server.rule.state == (None, {"center": None})
    out = sim.round(1)
    first = sim.server.rule.state[1]["center"].clone()
    assert torch.equal(first, out["agg"])
    assert sim.aggregator.rule.center is None  # never poked from outside
    # the next round's aggregate is computed from that centre: v0 + mean_i clip(x_i - v0)
    vectors_seen = []
    original = sim.aggregator.step

    def spy(x, state):
        vectors_seen.append(x.clone())
        return original(x, state)

    sim.server.rule.rule.step = spy
    out = sim.round(2)
    x = sim.aggregator.pre[0].transform(vectors_seen[0])
    u = x - first
    clip = torch.clamp(0.5 / torch.linalg.vector_norm(u, dim=1), max=1.0)
    expected = first + (u * clip[:, None]).mean(0)
    torch.testing.assert_close(out["agg"], expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(sim.server.rule.state[1]["center"], expected, rtol=1e-4, atol=1e-6)


def test_server_state_dict_resumes_momentum_and_centered_clipping_centre():
    from byzance.aggregators import create
    from byzance.sim.server import Server

    def server() -> Server:
        agg = create("centered_clipping", f=1)
        return Server(torch.zeros(4), agg, lr=0.1, weight_decay=0.01, momentum=0.9)

    g = torch.Generator().manual_seed(0)
    rounds = [torch.randn(5, 4, generator=g) for _ in range(4)]
    a = server()
    for t, x in enumerate(rounds[:2], start=1):
        a.step(x, t)
    state = a.state_dict()
    assert state["rule"]["center"] is not None and state["velocity"] is not None
    b = server()
    b.load_state_dict(state)
    for t, x in enumerate(rounds[2:], start=3):
        assert torch.equal(a.step(x, t), b.step(x, t))
    assert torch.equal(a.params, b.params)
    before = a.params.clone()
    state["params"].add_(1.0)  # the state is a copy, not a view of the live parameters
    assert torch.equal(a.params, before)
