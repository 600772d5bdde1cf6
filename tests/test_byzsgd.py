"""ByzSGD in the simulator (``byzance.sim.byzsgd``): against the trusted-server protocol,
against its definition on hand-made models, bounded spread under equivocating Byzantine
servers, conditions refused before any work, and the batched (vectorised) server step."""

from __future__ import annotations

import pytest
import torch

import byzance.datasets as D
from byzance import engines
from byzance.round.agreement import diameter, median_of_replies
from byzance.round.record import RECORD_KEYS
from byzance.sim import ExperimentConfig
from byzance.sim.byzsgd import CONTRACTION_PUSH, ByzSGD

BASE = dict(
    dataset="digits",
    model="logreg",
    n_honest=6,
    f=1,
    attack="alie",
    aggregator="mda",
    batch_size=16,
    rounds=6,
    eval_every=3,
)


def byz(**kw) -> ExperimentConfig:
    return ExperimentConfig(**{**BASE, "protocol": "byzsgd", **kw})


@pytest.mark.parametrize("aggregator", ["mda", "centered_clipping"])
def test_one_server_without_byzantine_servers_is_the_trusted_server(aggregator):
    trusted = engines.get("sim").execute(ExperimentConfig(**{**BASE, "aggregator": aggregator}))
    one = engines.get("sim").execute(byz(n_servers=1, f_servers=0, aggregator=aggregator))
    assert one.params.shape == (1, trusted.params.numel())
    assert torch.equal(one.params[0], trusted.params)  # bit for bit
    assert [r["test_accuracy"] for r in one.history] == [
        r["test_accuracy"] for r in trusted.history
    ]
    for rec in one.history:
        assert set(RECORD_KEYS) <= set(rec)
        assert rec["spread"] == 0.0 and len(rec["server_accuracies"]) == 1


def test_correct_replicas_without_equivocation_all_follow_the_trusted_server():
    trusted = engines.get("sim").execute(ExperimentConfig(**BASE))
    three = ByzSGD(byz(n_servers=3, f_servers=0, equivocate=False))
    res = three.run()
    assert three.shared_inputs and res.timings["server_loops"] == 0
    for theta in res.params:
        assert torch.equal(theta, trusted.params)
    assert three.spreads == [0.0] * BASE["rounds"]


def test_correct_servers_only_pull_and_contract_to_the_median_of_all():
    sim = ByzSGD(byz(n_servers=3, f_servers=0, contraction_every=2, rounds=2, eval_every=2))
    assert not sim.shared_inputs  # mirrored Byzantine workers: the servers differ
    sim.round(1)
    theta = sim.params.clone()
    assert diameter(theta) > 0
    torch.testing.assert_close(sim.pull(), theta.median(dim=0).values)  # odd s: the middle
    sim.round(2)  # contraction: every server takes the median of the three
    assert diameter(sim.params) == 0.0


def test_pull_and_contraction_follow_the_definition():
    """Hand-made correct models: what each worker pulls and what each server contracts to
    under the ``contraction`` attack (median of the window and the pushed anchor)."""
    sim = ByzSGD(byz(n_servers=5, f_servers=1, server_attack="contraction"))
    s, d = sim.s, sim.dim
    theta = torch.randn(s, d, generator=torch.Generator().manual_seed(3))
    sim.params.copy_(theta)
    centre = theta.mean(dim=0)
    take = 5 - 2 * 1  # correct replies in a median of q = n_s - f_s = 4
    # worker w: correct models w, w+1, w+2 (mod 4) and the push of its anchor (model w mod 4)
    x = sim.pull()
    for w in range(sim.h):
        rows = [theta[(w + j) % s] for j in range(take)]
        a = theta[w % s]
        rows.append(a + CONTRACTION_PUSH * (a - centre))
        want = torch.stack(rows).sort(dim=0).values
        torch.testing.assert_close(x[w], (want[1] + want[2]) / 2)
    sim.contract()
    for j in range(s):
        rows = [theta[(j + k) % s] for k in range(take)]
        rows.append(theta[j] + CONTRACTION_PUSH * (theta[j] - centre))
        want = torch.stack(rows).sort(dim=0).values
        torch.testing.assert_close(sim.params[j], (want[1] + want[2]) / 2)


def test_median_of_replies_by_hand():
    correct = torch.tensor([[0.0], [1.0], [2.0]])
    byz_rows = torch.tensor([[[10.0]], [[-10.0]], [[0.5]]])  # one per recipient
    # recipient 0 hears 0, 1 and 10 -> 1; recipient 1 hears 1, 2, -10 -> 1; 2: 2, 0, 0.5 -> 0.5
    out = median_of_replies(correct, byz_rows, 2)
    assert out.flatten().tolist() == [1.0, 1.0, 0.5]


@pytest.mark.parametrize("server_attack", ["contraction", "alie", "sign_flipping"])
def test_equivocating_servers_do_not_make_correct_servers_diverge(server_attack):
    cfg = byz(
        n_servers=5,
        f_servers=1,
        server_attack=server_attack,
        rounds=20,
        eval_every=10,
        contraction_every=5,
    )
    sim = ByzSGD(cfg)
    res = sim.run()
    trusted = engines.get("sim").execute(ExperimentConfig(**{**BASE, "rounds": 20}))
    norm = float(res.params.norm(dim=1).min())
    assert len(sim.spreads) == 20 and max(sim.spreads) > 0  # the servers do differ
    assert max(sim.spreads) < 0.05 * norm
    last = res.history[-1]
    assert len(last["server_accuracies"]) == 4
    for acc in last["server_accuracies"]:
        assert abs(acc - trusted.final_accuracy) < 0.03


def test_contraction_shrinks_the_spread():
    """Under an attack the median can discard (sign flipping), one contraction shrinks the
    servers' diameter, and contracting every 5 rounds keeps them closer than never."""
    kw = dict(n_servers=5, f_servers=1, server_attack="sign_flipping", rounds=15, eval_every=15)
    sim = ByzSGD(byz(contraction_every=1000, **kw))
    for r in range(1, 6):
        sim.round(r)
    before = sim.spreads[-1]
    sim.contract()
    after = diameter(sim.params)
    assert 0 < after < 0.5 * before
    every5 = ByzSGD(byz(contraction_every=5, **kw))
    contracted = every5.run().history[-1]["spread"]  # after the contraction of round 15
    never = ByzSGD(byz(contraction_every=1000, **kw))
    assert contracted < 0.5 * never.run().history[-1]["spread"]
    assert max(every5.spreads) < max(never.spreads)


@pytest.fixture
def no_loading(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("a dataset was loaded before the conditions were checked")

    monkeypatch.setattr(D, "load_dataset", boom)
    monkeypatch.setattr(D.base, "load_digits_tensors", boom)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        (
            {"n_servers": 4, "f_servers": 1},
            r"n_servers > 3 f_servers \+ 1.*n_servers=4, f_servers=1",
        ),
        ({"n_servers": 7, "f_servers": 2}, r"n_servers=7, f_servers=2; use n_servers >= 8"),
        ({"n_honest": 2, "f": 1, "aggregator": "median"}, r"ExperimentConfig\.f: .*n > 3f"),
        ({"server_attack": "no_such_attack"}, r"ExperimentConfig\.server_attack"),
        ({"attack": "label_flipping"}, r"supports gradient attacks"),
        ({"n_servers": 0}, r"ExperimentConfig\.n_servers"),
    ],
)
def test_conditions_are_refused_before_any_work(no_loading, changes, match):
    with pytest.raises(ValueError, match=match):
        engines.get("sim").execute(byz(**changes))


def test_conditions_are_checked_on_every_engine(no_loading):
    cfg = byz(n_servers=4, f_servers=1)
    for name in engines.engines_running("byzsgd"):
        with pytest.raises(ValueError, match=r"n_servers > 3 f_servers \+ 1"):
            engines.get(name).check(cfg, engines.get(name).make_options(None))


@pytest.mark.parametrize(
    ("aggregator", "batched"),
    [("mda", True), ("median", True), ("trimmed_mean", True), ("centered_clipping", False)],
)
def test_servers_aggregate_in_one_batched_computation(aggregator, batched):
    cfg = byz(n_servers=5, f_servers=1, aggregator=aggregator, rounds=3, eval_every=3)
    sim = ByzSGD(cfg)
    assert not sim.shared_inputs  # equivocating Byzantine workers: every server differs
    res = sim.run()
    loops = res.timings["server_loops"]
    assert loops == (0 if batched else 3 * sim.s)
    assert max(sim.spreads) > 0
