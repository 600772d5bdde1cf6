"""A two-node Ray cluster started in the test (``ray.cluster_utils.Cluster``).

Each node offers 2 units of a custom ``slot`` resource and every worker actor needs one, so
the 4 workers of the run must be placed on both nodes; the engine joins the cluster by its
address (like ``byzance run --engine ray --address HOST:PORT``).
"""

from __future__ import annotations

import logging

import pytest

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

from byzance.engines import RayEngine, RayOptions, run_experiment_ray  # noqa: E402
from byzance.sim import ExperimentConfig  # noqa: E402


@pytest.fixture(scope="module")
def two_nodes():
    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 2,
            "resources": {"slot": 2},
            "include_dashboard": False,
            "object_store_memory": 100 * 1024**2,
        },
    )
    cluster.add_node(num_cpus=2, resources={"slot": 2}, object_store_memory=100 * 1024**2)
    cluster.wait_for_nodes()
    yield cluster
    if ray.is_initialized():
        ray.shutdown()
    cluster.shutdown()


def test_workers_are_placed_on_both_nodes(two_nodes):
    cfg = ExperimentConfig(
        dataset="digits",
        model="logreg",
        n_honest=3,
        f=1,
        attack="alie",
        aggregator="trimmed_mean",
        rounds=4,
        eval_every=2,
        batch_size=16,
    )
    opts = RayOptions(worker_cpus=0.5, worker_resources={"slot": 1}, startup_timeout=180.0)
    seen: dict[str, object] = {}

    def hook(engine: RayEngine) -> None:
        seen["placement"] = dict(engine.placement)

    res = run_experiment_ray(
        cfg,
        address=two_nodes.address,
        options=opts,
        engine_hook=hook,
    )
    assert [r["round"] for r in res.history] == [2, 4]
    placement = seen["placement"]
    assert sorted(placement) == [0, 1, 2, 3]
    node_ids = {n.node_id for n in two_nodes.list_all_nodes()}
    assert len(node_ids) == 2
    assert set(placement.values()) == node_ids  # both nodes host workers
    assert not ray.is_initialized()  # the engine disconnected from the cluster it joined


def test_more_workers_than_slots_is_refused(two_nodes, caplog):
    cfg = ExperimentConfig(n_honest=4, f=1, aggregator="trimmed_mean", rounds=2)
    opts = RayOptions(worker_cpus=0.1, worker_resources={"slot": 1})
    with (
        caplog.at_level(logging.WARNING),
        pytest.raises(
            ValueError, match=r"5 worker actors x 1 slot = 5 slot needed, the cluster has 4 slot"
        ),
    ):
        run_experiment_ray(cfg, address=two_nodes.address, options=opts)
