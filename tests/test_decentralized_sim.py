"""The decentralised protocol in the simulator (``byzance.sim.decentralized``): against the
reference loop written from its definition (``tests/test_decentralized_reference.py``),
against the Ray engine on the same tiny config, the batched per-node rules against the rules
one matrix at a time, and the averaging agreement (``byzance.round.agreement``)."""

from __future__ import annotations

import pytest
import torch
from test_decentralized_reference import (  # the reference loop, reused (needs Ray installed)
    ATOL,
    BASE,
    CASES,
    RTOL,
    max_rel_diff,
    reference,
    rule_factory,
)

from byzance import aggregators, engines
from byzance.round.agreement import (
    agreement_rounds,
    averaging_agreement,
    diameter,
    gather_replies,
    window,
)
from byzance.round.batched_rules import PerRecipient
from byzance.round.record import RECORD_KEYS
from byzance.sim import ExperimentConfig
from byzance.sim.decentralized import DecentralizedSimulation


# ------------------------------------------------------------------ the protocol
@pytest.mark.parametrize("case", sorted(CASES))
def test_sim_nodes_follow_the_reference(case):
    cfg = ExperimentConfig.from_dict({**BASE, **CASES[case]})
    res = engines.get("sim").execute(cfg)
    ref = reference(cfg, rule_factory(case, restart=False))
    torch.testing.assert_close(res.params, ref["params"], rtol=RTOL, atol=ATOL)
    last = res.history[-1]
    assert set(RECORD_KEYS) <= set(last) and last["missing_workers"] == []
    assert last["spread"] == pytest.approx(diameter(ref["params"]), rel=1e-3)
    accs = [ref["setup"].evaluate(theta) for theta in ref["params"]]
    assert last["test_accuracy"] == pytest.approx(sum(accs) / len(accs), abs=3e-3)
    restarted = reference(cfg, rule_factory(case, restart=True))["params"]
    assert max_rel_diff(restarted, ref["params"]) > 100  # the comparison sees rule state


def test_sim_and_ray_run_the_same_protocol(ray_local):
    """Same tiny config on both engines: the same models, up to float rounding (the sim
    computes all nodes' gradients in one pass, Ray one node per actor)."""
    cfg = ExperimentConfig.from_dict(
        {**BASE, "aggregator": "mda", "rounds": 3, "eval_every": 3, "n_honest": 5}
    )
    sim = engines.get("sim").execute(cfg)
    options = {"round_timeout": 300.0, "startup_timeout": 300.0, "worker_cpus": 1.0}
    ray_res = engines.get("ray").execute(cfg, options)
    torch.testing.assert_close(sim.params, ray_res.params, rtol=RTOL, atol=ATOL)
    assert sim.history[-1]["test_accuracy"] == pytest.approx(
        ray_res.history[-1]["test_accuracy"], abs=1e-9
    )
    assert sim.history[-1]["spread"] > 0  # equivocation: the nodes do differ


@pytest.mark.parametrize(
    ("aggregator", "model_aggregator", "loops"),
    [("mda", "trimmed_mean", 0), ("median", "median", 0), ("centered_clipping", "mda", 12)],
)
def test_nodes_aggregate_in_one_batched_computation(aggregator, model_aggregator, loops):
    cfg = ExperimentConfig.from_dict(
        {
            **BASE,
            "aggregator": aggregator,
            "model_aggregator": model_aggregator,
            "rounds": 3,
            "eval_every": 3,
            "aggregator_params": {},
        }
    )
    res = DecentralizedSimulation(cfg).run()
    assert res.timings["node_loops"] == loops  # centered clipping: 4 nodes x 3 rounds


# ------------------------------------------------------------------ batched rules
@pytest.mark.parametrize("name", ["median", "trimmed_mean", "mda"])
@pytest.mark.parametrize("n", [5, 6])
def test_batched_rules_equal_the_rules_one_matrix_at_a_time(name, n):
    gen = torch.Generator().manual_seed(n)
    x = torch.randn(4, n, 7, generator=gen)
    x[1, 2] = x[1, 0]  # ties
    x[2, :, 3] = 1.5
    x[3, -1] += 50.0  # an outlier
    rule = aggregators.create(name, f=1)
    batched = PerRecipient(rule, 4)
    out = batched.aggregate(x)
    assert batched.loops == 0
    for k in range(4):
        torch.testing.assert_close(out[k], rule.aggregate(x[k]), rtol=1e-6, atol=1e-6)


def test_batched_rules_loop_over_stateful_rules_with_their_own_state():
    rule = aggregators.create("centered_clipping", f=1, tau=0.1)
    batched = PerRecipient(rule, 3)
    x = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(0))
    first = batched.aggregate(x)
    second = batched.aggregate(x)  # each recipient starts from its own previous aggregate
    assert batched.loops == 6
    for k in range(3):
        out, state = rule.step(x[k], rule.init_state())
        torch.testing.assert_close(first[k], out)
        torch.testing.assert_close(second[k], rule.step(x[k], state)[0])


# ------------------------------------------------------------------ averaging agreement
def test_windows_and_replies_by_hand():
    assert window(3, 4, 2).tolist() == [[0, 1], [1, 2], [2, 3]]
    correct = torch.arange(4.0)[:, None]
    byz = torch.full((3, 1, 1), 9.0)
    assert gather_replies(correct, byz, 2)[:, :, 0].tolist() == [[0, 1, 9], [1, 2, 9], [2, 3, 9]]


def test_one_round_of_trimmed_mean_agreement_by_hand():
    x = torch.tensor([[0.0], [1.0], [2.0], [3.0]])  # h = 4 honest, f = 1 (n = 5 >= 3f + 1)

    def forge(cur):
        return torch.full((4, 1, 1), 100.0)  # the same for everyone: reliable broadcast

    out = averaging_agreement(x, forge, "trimmed_mean", 1, 1)
    # node i hears i, i+1, i+2 (mod 4) and 100; trimmed mean (1 each side) of 4 values
    assert out.flatten().tolist() == [1.5, 2.5, 2.5, 2.0]  # node 3: 0, 1, 3 (100 trimmed)


@pytest.mark.parametrize(("variant", "h", "f"), [("mda", 6, 1), ("trimmed_mean", 5, 2)])
def test_averaging_agreement_contracts_despite_byzantine_vectors(variant, h, f):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(h, 20, generator=gen)

    def forge(cur):  # far from everyone; per node (MDA) or one for all (reliable broadcast)
        if variant == "mda":
            return cur[:, None, :] + 5.0 * torch.randn(h, f, 20, generator=gen)
        return (cur.mean(0) + 5.0 * torch.randn(f, 20, generator=gen))[None].expand(h, -1, -1)

    before = diameter(x)
    out = averaging_agreement(x, forge, variant, f, 6)
    assert diameter(out) < 0.2 * before
    lo, hi = x.min(dim=0).values, x.max(dim=0).values  # validity: inside the honest box
    if variant == "trimmed_mean":
        assert bool(((out >= lo - 1e-6) & (out <= hi + 1e-6)).all())


def test_the_number_of_agreement_rounds():
    assert [agreement_rounds(t, 0) for t in (1, 2, 3, 4, 5, 8, 9)] == [1, 2, 3, 3, 4, 4, 5]
    assert agreement_rounds(7, 3) == 3


def test_agreement_in_a_run_uses_reliable_broadcast_for_the_trimmed_mean():
    cfg = ExperimentConfig.from_dict(
        {
            **BASE,
            "n_honest": 6,
            "f": 1,
            "aggregator": "mda",
            "agreement": "trimmed_mean",
            "rounds": 3,
            "eval_every": 3,
            "aggregator_params": {},
        }
    )
    sim = DecentralizedSimulation(cfg)
    seen = []
    inner = sim.sent_to_nodes

    def spy(honest, equivocate):
        seen.append(equivocate)
        return inner(honest, equivocate)

    sim.sent_to_nodes = spy
    res = sim.run()
    # per round: the gradient exchange equivocates, the agreement rounds (1, 2, 3) do not
    assert seen == [True, False, True, False, False, True, False, False, False]
    none = DecentralizedSimulation(cfg.replace(agreement="none")).run()
    assert res.history[-1]["spread"] < none.history[-1]["spread"]


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"agreement": "mda", "n_honest": 5, "f": 1}, r"n >= 6f \+ 1.*n=6"),
        (
            {"agreement": "trimmed_mean", "n_honest": 2, "f": 1, "aggregator": "median"},
            r"n >= 3f \+ 1.*n=3",
        ),
        ({"agreement": "mda", "protocol": "server"}, r"protocol decentralized only"),
    ],
)
def test_agreement_conditions_are_refused_before_any_work(changes, match):
    cfg = {**BASE, "aggregator_params": {}, "aggregator": "mda", **changes}
    with pytest.raises(ValueError, match=match):
        engines.get("sim").execute(ExperimentConfig.from_dict(cfg))
