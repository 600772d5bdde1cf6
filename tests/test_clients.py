"""Client population and per-round sampling (``byzance.round.clients``, ``sim.population``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from byzance.datasets import partition
from byzance.datasets.partition import label_skew
from byzance.round.clients import (
    ClientMomenta,
    ClientSampler,
    Population,
    exceed_probability,
    f_for_probability,
    hypergeom_pmf,
)
from byzance.sim import ExperimentConfig, run_experiment
from byzance.sim.population import PopulationSimulation

BASE = {"dataset": "digits", "model": "logreg", "rounds": 4, "eval_every": 2, "batch_size": 8}


def _pop(**kw):
    return ExperimentConfig(**{**BASE, "n_clients": 40, "clients_per_round": 8, **kw})


# ---------------------------------------------------------------- the hypergeometric law
@pytest.mark.parametrize("n,b,s", [(10, 3, 4), (40, 10, 8), (1000, 100, 20), (7, 7, 3), (9, 2, 9)])
def test_pmf_is_the_hypergeometric_law(n, b, s):
    pmf = hypergeom_pmf(n, b, s)
    ks = np.arange(pmf.size)
    np.testing.assert_allclose(pmf, stats.hypergeom.pmf(ks, n, b, s), atol=1e-12)
    assert pmf.size == min(s, b) + 1


def test_f_for_probability_is_the_smallest_f_within_the_bound():
    for n, b, s, p in [(1000, 100, 20, 0.01), (10000, 2000, 20, 1e-4), (50, 5, 10, 0.2)]:
        f = f_for_probability(n, b, s, p)
        assert stats.hypergeom.sf(f, n, b, s) <= p + 1e-12
        if f > 0:
            assert stats.hypergeom.sf(f - 1, n, b, s) > p
        assert math.isclose(exceed_probability(n, b, s, f), stats.hypergeom.sf(f, n, b, s),
                            abs_tol=1e-12)  # fmt: skip
    # hand-computed: N=10, B=3, S=4: P(K=3) = C(3,3) C(7,1) / C(10,4) = 7/210 = 1/30
    assert f_for_probability(10, 3, 4, 0.04) == 2  # P(K > 2) = 1/30 <= 0.04
    assert f_for_probability(10, 3, 4, 0.03) == 3  # 1/30 > 0.03
    assert f_for_probability(10, 3, 4, 0.5, floor=3) == 3  # f is a floor


def test_config_sets_the_aggregator_f_from_the_bound():
    cfg = _pop(n_clients=1000, byzantine_clients=0.1, clients_per_round=20, f=0,
               f_exceed_probability=0.01, aggregator="trimmed_mean")  # fmt: skip
    want = f_for_probability(1000, 100, 20, 0.01)
    assert cfg.population == Population(1000, 100, 20, want, False)
    assert cfg.aggregator_f == want and cfg.build_aggregator().f == want
    assert cfg.replace(f_exceed_probability=None).aggregator_f == 0


# ---------------------------------------------------------------- the sample
def test_sampling_is_reproducible_and_uniform_without_replacement():
    pop = Population(40, 10, 8, 2, False)
    a, b = ClientSampler(pop, seed=3), ClientSampler(pop, seed=3)
    rounds = [a.sample(t) for t in range(1, 30)]
    again = [b.sample(t) for t in reversed(range(1, 30))][::-1]  # any order of rounds
    for (h1, z1), (h2, z2) in zip(rounds, again, strict=True):
        np.testing.assert_array_equal(h1, h2)
        np.testing.assert_array_equal(z1, z2)
        ids = np.concatenate([h1, z1])
        assert ids.size == 8 and np.unique(ids).size == 8
        assert (h1 < 30).all() and (z1 >= 30).all() and (ids < 40).all()
    other = ClientSampler(pop, seed=4).sample(1)
    assert not np.array_equal(np.concatenate(other), np.concatenate(rounds[0]))


def test_sampled_byzantine_counts_follow_the_hypergeometric_law():
    n, b, s, rounds = 40, 10, 8, 4000
    sampler = ClientSampler(Population(n, b, s, 2, False), seed=0)
    counts = np.zeros(b + 1)
    seen = np.zeros(n)
    for t in range(1, rounds + 1):
        h, z = sampler.sample(t)
        counts[z.size] += 1
        seen[h] += 1
        seen[z] += 1
    pmf = hypergeom_pmf(n, b, s)
    expected = pmf * rounds
    keep = expected >= 5  # pool the sparse tail into one cell (chi-square validity)
    obs = np.append(counts[: pmf.size][keep], counts[: pmf.size][~keep].sum())
    exp = np.append(expected[keep], expected[~keep].sum())
    assert stats.chisquare(obs, exp).pvalue > 1e-3
    # every client equally likely: included s / n of the rounds
    assert stats.chisquare(seen, np.full(n, rounds * s / n)).pvalue > 1e-3


def test_no_attack_samples_only_the_honest_clients():
    cfg = _pop(byzantine_clients=10, attack="none")
    pop = cfg.population
    assert pop.honest_only and not cfg.has_attack
    sampler = ClientSampler(pop, seed=0)
    for t in range(1, 50):
        h, z = sampler.sample(t)
        assert z.size == 0 and h.size == 8 and (h < 30).all()


# ---------------------------------------------------------------- client state
def test_momentum_is_frozen_while_a_client_is_not_sampled():
    beta = 0.9
    cm = ClientMomenta(100, 3, beta, torch.device("cpu"))
    g1 = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    m1 = cm.update(torch.tensor([5, 70]), g1)
    torch.testing.assert_close(m1, (1 - beta) * g1)
    assert cm.clients_stored == 2  # only the sampled clients hold a row
    cm.update(torch.tensor([1]), torch.ones(1, 3))  # client 5 is not sampled: untouched
    g3 = torch.tensor([[-1.0, 0.0, 1.0]])
    m3 = cm.update(torch.tensor([5]), g3)
    torch.testing.assert_close(m3, beta * (1 - beta) * g1[:1] + (1 - beta) * g3)
    assert cm.clients_stored == 3
    assert torch.equal(cm.update(torch.tensor([2]), g3), (1 - beta) * g3)  # new: m_0 = 0


def test_no_momentum_stores_nothing():
    cm = ClientMomenta(10_000, 5, 0.0, torch.device("cpu"))
    g = torch.randn(4, 5)
    assert cm.update(torch.tensor([1, 2, 3, 9999]), g) is g
    assert cm.clients_stored == 0 and cm.table.numel() == 0


def test_a_rounds_work_does_not_grow_with_the_population():
    rows_seen = {}
    for n in (40, 1000):
        cfg = _pop(n_clients=n, byzantine_clients=0.1, min_client_examples=1, rounds=3)
        sim = PopulationSimulation(cfg)
        sizes = []
        gradients = sim.group.gradients

        def spy(rows, params, round_, _g=gradients, _s=sizes):
            _s.append(rows.numel())
            return _g(rows, params, round_)

        sim.group.gradients = spy
        sim.run()
        k = sim.sampled_byzantine
        assert sizes == [8 - x for x in k]  # the sampled honest clients only
        assert sim.client_momenta.clients_stored <= 3 * 8
        rows_seen[n] = sizes
    assert max(rows_seen[1000]) <= 8


# ---------------------------------------------------------------- runs
@pytest.mark.parametrize("attack", ["alie", "label_flipping"])
def test_all_clients_is_the_full_participation_simulator_bit_for_bit(attack):
    full = run_experiment({**BASE, "n_honest": 10, "f": 2, "attack": attack})
    pop = run_experiment({**BASE, "n_clients": 12, "byzantine_clients": 2, "f": 2,
                          "attack": attack, "clients_per_round": "all"})  # fmt: skip
    assert torch.equal(full.params, pop.params)
    for a, b in zip(full.history, pop.history, strict=True):
        assert {k: a[k] for k in ("train_loss", "test_accuracy", "agg_distance")} == {
            k: b[k] for k in ("train_loss", "test_accuracy", "agg_distance")
        }
        assert b["sampled_byzantine"] == [2, 2] and b["rounds_over_f"] == 0


def test_runs_are_reproducible_and_record_every_round():
    cfg = _pop(byzantine_clients=0.25, f=1, rounds=6, eval_every=4)
    a, b = run_experiment(cfg), run_experiment(cfg)
    assert torch.equal(a.params, b.params)
    got = [rec["sampled_byzantine"] for rec in a.history]
    assert [len(c) for c in got] == [4, 2]
    sampler = ClientSampler(cfg.population, cfg.seed)
    assert sum(got, []) == [sampler.sample(t)[1].size for t in range(1, 7)]
    for rec in a.history:
        assert rec["aggregator_f"] == 1
        assert rec["rounds_over_f"] == sum(c > 1 for c in rec["sampled_byzantine"])


def test_data_poisoning_byzantine_clients_compute_on_their_data():
    res = run_experiment(_pop(byzantine_clients=0.25, attack="label_flipping", rounds=2))
    assert math.isfinite(res.history[-1]["train_loss"])


def test_run_ids_of_configs_without_a_population_are_unchanged():
    plain = ExperimentConfig(**BASE)
    assert "n_clients" not in plain.key() and plain.key() == ExperimentConfig(**BASE).key()
    from byzance.protocols import id_config

    assert not {"n_clients", "clients_per_round", "byzantine_clients"} & set(
        id_config(plain.to_dict())
    )
    assert _pop().key() != plain.key()


# ---------------------------------------------------------------- errors before work
@pytest.mark.parametrize(
    "fields, match",
    [
        ({"byzantine_clients": 2}, r"byzantine_clients: only used with a client population"),
        ({"clients_per_round": 5}, r"clients_per_round: only used"),
        ({"f_exceed_probability": 0.1}, r"f_exceed_probability: only used"),
        ({"n_clients": 10, "byzantine_clients": 10}, r"fewer than n_clients=10"),
        ({"n_clients": 10, "clients_per_round": 11}, r"clients_per_round: expected at most 10"),
        ({"n_clients": 10, "byzantine_clients": 4, "attack": "none", "clients_per_round": 7},
         r"at most the 6 honest clients"),
        ({"n_clients": 10, "n_honest": 5}, r"n_honest: not used with a client population"),
        ({"n_clients": 10, "protocol": "decentralized"}, r"protocol 'server' only"),
        ({"n_clients": 1000}, r"1438 training examples .* n_clients=1000 .* at most 479"),
        ({"n_clients": 10, "byzantine_clients": 1.5}, r"byzantine_clients: expected"),
        ({"n_clients": 10, "clients_per_round": "some"}, r"clients_per_round: expected"),
    ],
)  # fmt: skip
def test_bad_populations_are_refused_before_any_work(fields, match):
    with pytest.raises(ValueError, match=match):
        ExperimentConfig(**{**BASE, **fields}).validate()


def test_the_rule_is_checked_on_the_sample_and_its_f():
    with pytest.raises(ValueError, match=r"f=5 cannot run on the n=8 vectors"):
        _pop(byzantine_clients=4, f=5, aggregator="krum").validate()


@pytest.mark.parametrize("name", ["ray", "flower"])
def test_engines_that_do_not_sample_clients_refuse_a_population(name):
    from byzance import engines

    if name not in engines.available():
        pytest.skip(f"no engine {name!r}")
    engine = engines.get(name)
    with pytest.raises(ValueError, match=rf"engine '{name}' does not run a sampled client .*sim"):
        engine.check(_pop(), engine.make_options({}))
    engines.get("sim").check(_pop(), engines.get("sim").make_options({}))


def test_simulation_refuses_a_population_config():
    from byzance.sim import Simulation

    with pytest.raises(ValueError, match="PopulationSimulation"):
        Simulation(_pop())


# ---------------------------------------------------------------- heterogeneity for many clients
def test_dirichlet_for_many_clients_gives_each_at_least_min_size():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, size=6000)
    parts = partition(labels, 1000, "dirichlet", alpha=0.5, seed=1, min_size=3)
    sizes = np.array([p.numel() for p in parts])
    assert sizes.min() >= 3 and sizes.sum() == 6000
    everything = torch.cat(parts).sort().values
    assert torch.equal(everything, torch.arange(6000))  # disjoint, covering
    # the label skew is kept: with 50 examples per client, alpha = 0.1 is far from iid
    many = rng.integers(0, 10, size=10_000)
    skewed = partition(many, 200, "dirichlet", alpha=0.1, seed=1, min_size=3)
    assert min(p.numel() for p in skewed) >= 3
    iid = partition(many, 200, "iid", seed=1, min_size=3)
    assert label_skew(many, skewed) > 2 * label_skew(many, iid)
    again = partition(labels, 1000, "dirichlet", alpha=0.5, seed=1, min_size=3)
    assert all(torch.equal(a, b) for a, b in zip(parts, again, strict=True))


def test_partition_refuses_a_split_finer_than_min_size():
    with pytest.raises(ValueError, match=r"num_workers=1000 workers min_size=7 .* 6000 samples"):
        partition(np.zeros(6000, dtype=np.int64), 1000, "dirichlet", min_size=7)
    with pytest.raises(ValueError, match="min_size"):
        partition(np.zeros(60, dtype=np.int64), 10, "iid", min_size=0)


def test_the_counts_are_stored_with_the_run(tmp_path):
    from byzance import runner
    from byzance.results import open_db

    cfg = _pop(byzantine_clients=0.25, rounds=3, eval_every=2)
    result = runner.run(cfg, engine="sim", db=tmp_path / "r.db")
    db = open_db(tmp_path / "r.db")
    try:
        stored = db.load_metrics([result.run_id])[result.run_id]
    finally:
        db.close()
    assert [r["sampled_byzantine"] for r in stored] == [
        r["sampled_byzantine"] for r in result.history
    ]
    assert all(r["aggregator_f"] == 2 for r in stored)


def test_a_sample_without_honest_clients_sends_zero_vectors():
    # N=8, B=5, S=3: P(K=3) = C(5,3)/C(8,3) = 10/56 per round
    cfg = _pop(n_clients=8, byzantine_clients=5, clients_per_round=3, f=1,
               aggregator="average", attack="alie(z=1.0)", rounds=12, eval_every=1,
               min_client_examples=1)  # fmt: skip
    sim = PopulationSimulation(cfg)
    aggregates = [sim.round(t)["agg"].clone() for t in range(1, 13)]
    k = sim.sampled_byzantine
    assert 3 in k  # some round sampled only Byzantine clients
    for count, agg in zip(k, aggregates, strict=True):
        assert bool((agg == 0).all()) == (count == 3)
    assert torch.isfinite(sim.params).all()


def test_an_attack_that_cannot_forge_for_a_sample_names_the_round():
    cfg = _pop(n_clients=8, byzantine_clients=5, clients_per_round=3, f=1,
               aggregator="average", attack="alie", rounds=10, min_client_examples=1)  # fmt: skip
    with pytest.raises(ValueError, match=r"round \d+ sampled 2 Byzantine of 3 clients.*z_max"):
        run_experiment(cfg)
