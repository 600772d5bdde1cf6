"""Real Flower simulations (few nodes, few rounds, digits): the robust strategies in Flower.

Two simulations, to keep the module short (Flower starts Ray and one actor per CPU each time):

1. Message API, one ServerApp running three phases on the same ten nodes: Flower's ``FedAvg``
   under two sign-flipping clients (broken), ``RobustFedAvg`` under the same attack with a
   NaN client, a wrong-shape client and a client that raises (accuracy kept, each bad reply
   rejected and counted every round), and a rule that cannot run on the ten sampled nodes
   (refused before any message of its round 1 is sent);
2. the legacy API: ``LegacyRobustFedAvg`` under the same attack and faults.

The apps are in ``tests/flower_apps.py``. Skipped without Flower.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("flwr")
pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[1]
ROUNDS = 3


@pytest.fixture(scope="module", autouse=True)
def importable_apps():
    """Ray's actors (started by Flower) import the test apps and the example by name."""
    paths = [str(ROOT / "tests"), str(ROOT / "examples" / "flower")]
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(paths + ([old] if old else []))
    sys.path[:0] = paths
    import ray

    if ray.is_initialized():  # left by another module: actors must see the new path
        ray.shutdown()
    yield
    for p in paths:
        sys.path.remove(p)
    if old is None:
        del os.environ["PYTHONPATH"]
    else:
        os.environ["PYTHONPATH"] = old


BACKEND = {
    "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
    "init_args": {"num_cpus": 2, "include_dashboard": False, "log_to_driver": False},
}


class CountingGrid:
    """A grid that counts the messages sent through it."""

    def __init__(self, grid: Any) -> None:
        self.grid, self.sent = grid, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.grid, name)

    def send_and_receive(self, messages, timeout=None):
        messages = list(messages)
        self.sent += len(messages)
        return self.grid.send_and_receive(messages, timeout=timeout)


def accuracy_fn(results: dict[int, float]):
    import flower_apps
    from flwr.app import MetricRecord

    def evaluate(server_round: int, arrays: Any) -> Any:
        results[server_round] = flower_apps.central_accuracy(arrays.to_numpy_ndarrays())
        return MetricRecord({"accuracy": results[server_round]})

    return evaluate


@pytest.fixture(scope="module")
def message_api_run():
    """The three phases of simulation 1 (see the module docstring)."""
    import flower_apps
    from byzance_flower_example.task import make_model
    from flwr.app import ArrayRecord, ConfigRecord
    from flwr.serverapp import ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    from byzance.flower import RobustFedAvg

    out: dict[str, Any] = {"fedavg": {}, "robust": {}}
    app = ServerApp()

    @app.main()
    def main(grid: Any, context: Any) -> None:
        try:
            initial = ArrayRecord(make_model().state_dict())
            common = {"fraction_evaluate": 0.0, "min_available_nodes": flower_apps.NODES}
            FedAvg(**common).start(
                grid, initial, num_rounds=ROUNDS,
                train_config=ConfigRecord({"attack": 1, "faults": 0}),
                evaluate_fn=accuracy_fn(out["fedavg"]),
            )  # fmt: skip
            robust = RobustFedAvg("trimmed_mean", f=2, **common)
            res = robust.start(
                grid, initial, num_rounds=ROUNDS,
                train_config=ConfigRecord({"attack": 1, "faults": 1}),
                evaluate_fn=accuracy_fn(out["robust"]),
            )  # fmt: skip
            out["strategy"], out["result"] = robust, res
            counting = CountingGrid(grid)
            try:  # krum with f=4 needs 11 replies; 10 nodes are sampled
                RobustFedAvg("krum", f=4, **common).start(counting, initial, num_rounds=1)
            except ValueError as exc:
                out["refused"] = str(exc)
            out["sent_after_refusal"] = counting.sent
        except BaseException as exc:  # noqa: BLE001 - shown by the test
            out["error"] = exc

    run_simulation(app, flower_apps.message_client(), flower_apps.NODES, backend_config=BACKEND)
    assert "error" not in out, out.get("error")
    return out


def test_flowers_fedavg_is_broken_by_the_attack(message_api_run):
    acc = message_api_run["fedavg"]
    assert acc[ROUNDS] < 0.3, acc


def test_robust_strategy_keeps_accuracy_and_counts_bad_replies(message_api_run):
    acc = message_api_run["robust"]
    assert acc[ROUNDS] > 0.85 and acc[ROUNDS] > acc[0] + 0.5, acc
    strategy, result = message_api_run["strategy"], message_api_run["result"]
    for r in range(1, ROUNDS + 1):
        m = result.train_metrics_clientapp[r]
        assert m["byzance-accepted"] == 7 and m["byzance-rejected"] == 3, dict(m)
        assert m["byzance-rejected-nonfinite"] == 1 and m["byzance-rejected-shape"] == 1
        assert m["byzance-rejected-error"] == 1 and m["byzance-skipped"] == 0
        assert m["byzance-update-norm"] > 0
    kinds = sorted(r["reason"].split(":")[0] for r in strategy.rejections)
    assert kinds == sorted(["error", "nonfinite", "shape"] * ROUNDS)
    assert any("partition 4 fails on purpose" in r["reason"] for r in strategy.rejections)


def test_a_rule_that_cannot_run_is_refused_before_round_1(message_api_run):
    assert "krum" in message_api_run["refused"]
    assert "Krum requires n >= 2f + 3, got n=10, f=4" in message_api_run["refused"]
    assert message_api_run["sent_after_refusal"] == 0


def test_legacy_strategy_in_a_simulation():
    import flower_apps
    from flwr.server import ServerApp, ServerConfig
    from flwr.simulation import run_simulation

    from byzance.flower import LegacyRobustFedAvg

    accuracy: dict[int, float] = {}

    def evaluate(server_round, ndarrays, config):
        accuracy[server_round] = flower_apps.central_accuracy(ndarrays)
        return 0.0, {"accuracy": accuracy[server_round]}

    from byzance_flower_example.task import make_model
    from flwr.common import ndarrays_to_parameters

    initial = [v.detach().numpy() for v in make_model().state_dict().values()]
    strategy = LegacyRobustFedAvg(
        "median", f=2, fraction_evaluate=0.0, min_available_clients=flower_apps.NODES,
        min_fit_clients=flower_apps.NODES, evaluate_fn=evaluate,
        initial_parameters=ndarrays_to_parameters(initial),
    )  # fmt: skip
    app = ServerApp(config=ServerConfig(num_rounds=ROUNDS), strategy=strategy)
    run_simulation(app, flower_apps.legacy_client(), flower_apps.NODES, backend_config=BACKEND)
    assert accuracy[ROUNDS] > 0.85 and accuracy[ROUNDS] > accuracy[0] + 0.5, accuracy
    kinds = sorted(r["reason"].split(":")[0] for r in strategy.rejections)
    assert kinds == sorted(["error", "nonfinite", "shape"] * ROUNDS), strategy.rejections
