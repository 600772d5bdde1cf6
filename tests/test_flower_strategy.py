"""The robust Flower strategies without a simulation: replies built by hand.

``RobustAggregation`` (no Flower needed) against hand-computed aggregates; ``RobustFedAvg``
and ``LegacyRobustFedAvg`` on reply objects with the attributes Flower's strategies read;
run-config parsing; the label-flipping mod; the ``flower`` engine's options and checks.
"""

from __future__ import annotations

import sys
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from byzance.flower.replies import check_reply, flatten_updates, short_reason, unflatten_into
from byzance.flower.robust import RobustAggregation

REF = {"w": np.zeros((2, 2), np.float32), "b": np.ones(3, np.float32), "n": np.array([7])}


def model(shift: float, **changes: Any) -> dict[str, np.ndarray]:
    out = {"w": REF["w"] + shift, "b": REF["b"] + shift, "n": np.array([99])}
    out.update(changes)
    return out


# ------------------------------------------------------------------ replies
def test_check_reply_names_the_first_problem():
    assert check_reply(model(1.0), REF) is None
    assert check_reply({"w": REF["w"], "n": REF["n"]}, REF) == "keys: missing ['b']"
    assert check_reply(model(0.0, extra=REF["b"]), REF) == "keys: extra ['extra']"
    bad = check_reply(model(0.0, b=np.ones(1, np.float32)), REF)
    assert bad == "shape: 'b' has shape (1,), expected (3,)"
    bad = check_reply(model(0.0, b=np.ones(3, np.float64)), REF)
    assert bad == "dtype: 'b' has dtype float64, expected float32"
    w = REF["w"].copy()
    w[1, 0] = np.inf
    assert check_reply(model(0.0, w=w), REF) == "nonfinite: 'w' has non-finite values"


def test_updates_flatten_and_unflatten_in_key_order():
    x = flatten_updates([model(1.0), model(-2.0)], REF)
    assert x.dtype == torch.float32 and x.shape == (2, 7)
    torch.testing.assert_close(x, torch.tensor([[1.0] * 7, [-2.0] * 7]))
    out = unflatten_into(torch.arange(7.0), REF)
    np.testing.assert_array_equal(out["w"], [[0, 1], [2, 3]])
    np.testing.assert_array_equal(out["b"], [5, 6, 7])
    np.testing.assert_array_equal(out["n"], [7])  # non-floating arrays keep the global value
    assert out["w"].dtype == np.float32


def test_short_reason_keeps_the_clients_message():
    ray = "\x1b[36mray::ClientAppActor.run()\x1b[39m ...\n Exception occurred. Message: boom'>"
    assert short_reason(ray) == "boom"
    assert short_reason("a\n  b") == "a b" and len(short_reason("x" * 500)) == 200


# ------------------------------------------------------------------ the core
def rows(*shifts: float) -> list:
    return [(i, model(s), None) for i, s in enumerate(shifts)]


def test_median_of_updates_is_added_to_the_global_model():
    agg = RobustAggregation("median", f=1)
    out = agg.aggregate(1, REF, rows(1.0, 2.0, 100.0))
    np.testing.assert_allclose(out.arrays["w"], REF["w"] + 2.0)  # median of (1, 2, 100)
    np.testing.assert_allclose(out.arrays["b"], REF["b"] + 2.0)
    assert out.metrics["byzance-accepted"] == 3 and out.metrics["byzance-rejected"] == 0
    assert out.metrics["byzance-update-norm"] == pytest.approx(2.0 * np.sqrt(7))


def test_bad_replies_are_rejected_counted_and_left_out():
    agg = RobustAggregation("trimmed_mean", f=1)
    bad = [
        (10, model(0.0, w=np.full((2, 2), np.nan, np.float32)), None),
        (11, model(0.0, b=np.zeros(4, np.float32)), None),
        (12, None, "error: client raised"),
        (13, {"w": REF["w"]}, None),
    ]
    out = agg.aggregate(3, REF, rows(1.0, 2.0, 3.0) + bad)
    np.testing.assert_allclose(out.arrays["w"], REF["w"] + 2.0)
    m = out.metrics
    assert (m["byzance-accepted"], m["byzance-rejected"]) == (3, 4)
    assert m["byzance-rejected-nonfinite"] == m["byzance-rejected-shape"] == 1
    assert m["byzance-rejected-error"] == m["byzance-rejected-keys"] == 1
    assert [(r["round"], r["node"]) for r in agg.rejections] == [(3, n) for n in (10, 11, 12, 13)]


def test_too_few_valid_replies_skip_or_raise():
    skip = RobustAggregation("krum", f=1)  # needs 5
    out = skip.aggregate(1, REF, rows(1.0, 2.0, 3.0, 4.0))
    assert out.arrays is None and out.metrics["byzance-skipped"] == 1
    strict = RobustAggregation("krum", f=1, on_too_few="raise")
    with pytest.raises(RuntimeError, match=r"round 2: too few valid replies \(4 of 4"):
        strict.aggregate(2, REF, rows(1.0, 2.0, 3.0, 4.0))


def test_rule_is_checked_on_the_sample_size():
    agg = RobustAggregation("nnm+krum", f=2)
    agg.check_sample(7)
    with pytest.raises(ValueError, match=r"'nnm\+krum' with f=2 cannot run on the 6 nodes"):
        agg.check_sample(6)


def test_byzantine_switch_forges_from_the_honest_updates():
    # sign flipping: each Byzantine node sends -mean(honest updates)
    agg = RobustAggregation("average", attack="sign_flipping", byzantine_nodes=2)
    assert agg.choose_byzantine([30, 10, 20, 40]) == {10, 20}
    shifts = {10: 1.0, 20: 3.0, 30: 50.0, 40: 70.0}
    replies = [(node, model(s), None) for node, s in shifts.items()]
    got = agg.aggregate(1, REF, replies)  # 10 and 20 forged
    # honest updates 50, 70 (mean 60), forged -60, -60: average 0
    np.testing.assert_allclose(got.arrays["w"], REF["w"], atol=1e-5)
    assert got.metrics["byzance-byzantine"] == 2 and got.metrics["byzance-accepted"] == 4


def test_switch_arguments_are_checked():
    with pytest.raises(ValueError, match="attack and byzantine_nodes go together"):
        RobustAggregation("median", attack="alie")
    with pytest.raises(ValueError, match="label_flipping_mod"):
        RobustAggregation("median", attack="label_flipping", byzantine_nodes=1)
    with pytest.raises(ValueError, match=r"RobustAggregation.on_too_few: expected one of"):
        RobustAggregation("median", on_too_few="wait")
    with pytest.raises(ValueError, match="unknown aggregator 'nope'"):
        RobustAggregation("nope")


# ------------------------------------------------------------------ run config, mods
def test_run_config_keys():
    from byzance.flower.run_config import label_flip_nodes, strategy_kwargs

    cfg = {"byzance-aggregator": "nnm+trimmed_mean", "byzance-f": 2, "fraction-train": 1,
           "num-server-rounds": 3, "byzance-label-flip-nodes": 1}  # fmt: skip
    assert strategy_kwargs(cfg) == {"aggregator": "nnm+trimmed_mean", "f": 2,
                                    "fraction_train": 1.0}  # fmt: skip
    assert label_flip_nodes(cfg) == 1
    with pytest.raises(ValueError, match=r"run_config.byzance-f: expected an int >= 0, got -1"):
        strategy_kwargs({"byzance-f": -1})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['byzance-aggregater'\]"):
        strategy_kwargs({"byzance-aggregater": "krum"})


def test_label_flipping_mod_flips_only_chosen_nodes():
    from byzance.flower import byzantine_call, label_flipping_mod, poison_labels

    mod = label_flipping_mod(2)
    y = np.array([0, 1, 9])

    def app(msg: Any, context: Any) -> Any:
        return poison_labels(y, 10), byzantine_call()

    def ctx(p: int) -> Any:
        return SimpleNamespace(node_config={"partition-id": p}, run_config={})

    flipped, byz = mod(None, ctx(1), app)
    np.testing.assert_array_equal(flipped, [9, 8, 0])
    assert byz and flipped.dtype == y.dtype
    same, byz = mod(None, ctx(2), app)
    assert same is y and not byz
    assert poison_labels(y, 10) is y  # outside any call
    reads = label_flipping_mod()  # from byzance-label-flip-nodes
    run = SimpleNamespace(
        node_config={"partition-id": 0}, run_config={"byzance-label-flip-nodes": 1}
    )
    np.testing.assert_array_equal(reads(None, run, app)[0], [9, 8, 0])


def test_import_byzance_does_not_import_flower():
    import subprocess

    code = "import byzance, byzance.engines, byzance.flower, sys; print('flwr' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------ with Flower
class Reply:
    """What Flower's Message-API strategies read of a reply message."""

    def __init__(self, node: int, arrays: dict | None = None, error: str | None = None):
        from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

        self.metadata = SimpleNamespace(src_node_id=node)
        self.error = SimpleNamespace(reason=error)
        if arrays is not None:
            record = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})
            self.content = RecordDict(
                {"arrays": record, "metrics": MetricRecord({"num-examples": 10, "loss": 1.0})}
            )

    def has_error(self) -> bool:
        return self.error.reason is not None


class Grid:
    def __init__(self, nodes: int) -> None:
        self.nodes = list(range(1, nodes + 1))

    def get_node_ids(self) -> list[int]:
        return self.nodes


def test_message_api_strategy(monkeypatch):
    pytest.importorskip("flwr")
    from flwr.app import Array, ArrayRecord, ConfigRecord
    from flwr.supercore.task_identity import TaskIdentity

    for attr in ("_run_id", "_node_id", "_task_id"):  # what a ServerApp process sets
        monkeypatch.setattr(TaskIdentity, attr, 1)

    from byzance.flower import RobustFedAvg

    s = RobustFedAvg("median", f=1, fraction_evaluate=0.0, min_available_nodes=4)
    assert s.aggregate_train(1, []) == (None, None)  # nothing configured, nothing received
    with pytest.raises(RuntimeError, match="before configure_train"):
        s.aggregate_train(1, [Reply(1, model(1.0))])
    ref = ArrayRecord({k: Array(v) for k, v in REF.items()})
    messages = list(s.configure_train(1, ref, ConfigRecord(), Grid(4)))
    assert len(messages) == 4
    replies = [Reply(1, model(1.0)), Reply(2, model(2.0)), Reply(3, model(5.0)),
               Reply(4, error="boom")]  # fmt: skip
    arrays, metrics = s.aggregate_train(1, replies)
    np.testing.assert_allclose(arrays["w"].numpy(), REF["w"] + 2.0)
    assert metrics["byzance-rejected-error"] == 1 and metrics["loss"] == pytest.approx(1.0)
    assert s.rejections == [{"round": 1, "node": 4, "reason": "error: boom"}]
    with pytest.raises(ValueError, match=r"'krum' with f=1 cannot run on the 4 nodes"):
        RobustFedAvg("krum", f=1).configure_train(1, ref, ConfigRecord(), Grid(4))
    built = RobustFedAvg.from_run_config(
        {"byzance-aggregator": "centered_clipping(tau=0.5)", "byzance-f": 1}, fraction_train=0.5
    )
    assert built.robust.rule.tau == 0.5 and built.fraction_train == 0.5


def test_legacy_strategy():
    pytest.importorskip("flwr")
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays

    from byzance.flower import LegacyRobustFedAvg

    s = LegacyRobustFedAvg("trimmed_mean", f=1, fraction_evaluate=0.0)
    order = list(REF)
    s._reference = {str(i): REF[k] for i, k in enumerate(order)}  # as configure_fit sets it

    def res(m: dict) -> FitRes:
        p = ndarrays_to_parameters([m[k] for k in order])
        return FitRes(Status(Code.OK, ""), p, 10, {})

    proxies = [SimpleNamespace(cid=str(i)) for i in range(4)]
    results = [(proxies[i], res(model(s_))) for i, s_ in enumerate((1.0, 2.0, 3.0))]
    results.append((proxies[3], res(model(0.0, w=np.full((2, 2), np.nan, np.float32)))))
    params, metrics = s.aggregate_fit(1, results, [RuntimeError("lost")])
    out = parameters_to_ndarrays(params)
    np.testing.assert_allclose(out[0], REF["w"] + 2.0)
    assert metrics["byzance-rejected-nonfinite"] == 1 and metrics["byzance-rejected-error"] == 1

    class Manager:
        def num_available(self) -> int:
            return 4

        def all(self) -> dict:
            return {str(i): p for i, p in enumerate(proxies)}

    with pytest.raises(ValueError, match=r"LegacyRobustFedAvg: aggregator 'krum'"):
        LegacyRobustFedAvg("krum", f=1).configure_fit(1, res(model(0.0)).parameters, Manager())


# ------------------------------------------------------------------ the engine
def test_engine_options_and_check():
    from byzance import engines
    from byzance.sim import ExperimentConfig

    eng = engines.get("flower")
    assert eng.make_options({}) == eng.Options(client_cpus=1.0, ray_cpus=None)
    bad = r"FlowerOptions.client_cpus: expected a finite float > 0, got 0"
    with pytest.raises(ValueError, match=bad):
        eng.make_options({"client_cpus": 0})
    cfg = ExperimentConfig.from_dict({"dataset": "digits", "n_honest": 3, "f": 1,
                                      "aggregator": "krum", "attack": "alie"})  # fmt: skip
    with pytest.raises(ValueError, match=r"Krum requires n >= 2f \+ 3"):
        eng.check(cfg, eng.make_options({}))


def test_the_example_apps_run_config_builds_the_strategy():
    pytest.importorskip("flwr")
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    from pathlib import Path

    from byzance.flower import RobustFedAvg
    from byzance.flower.run_config import label_flip_nodes

    path = Path(__file__).resolve().parents[1] / "examples" / "flower" / "pyproject.toml"
    app = tomllib.loads(path.read_text())["tool"]["flwr"]["app"]
    config = app["config"]
    s = RobustFedAvg.from_run_config(config)
    assert repr(s.robust.rule) == "Chain(NNM(f=2), TrimmedMean(f=2))"
    assert (s.robust.attack, s.robust.byzantine_nodes) == ("alie", 2)
    assert s.fraction_evaluate == 0.0 and label_flip_nodes(config) == 0
    s.robust.check_sample(10)  # the 10 nodes of the local simulation
    assert app["components"]["serverapp"] == "byzance_flower_example.server_app:app"
