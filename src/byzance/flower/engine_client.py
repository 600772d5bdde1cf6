"""The ClientApp of ``--engine flower``: byzance's worker step on a Flower node.

Node ``partition-id`` p is byzance worker p (honest if p < ``n_honest``; a data-poisoning
Byzantine worker otherwise). Each node builds the worker step of its own worker once per
process (``byzance.round.Setup(config).make_workers([p])``: its shard, the model, the
poisoner), so its batches and gradients are those of the simulator.

Messages (``arrays`` / ``config`` records):

* query: replies ``{"worker": p}`` (the server maps node ids to workers once);
* train: ``params`` (the flat global parameters), ``momentum`` (the worker's momentum of the
  previous round, absent in round 1) and ``round``; replies the vector ``vector`` (the new
  momentum, ``byzance.round.Workers.step``) and the metrics ``loss``, ``worker`` and
  ``num-examples``.

Flower's simulation clients are stateless between calls (a node's state may be rebuilt), so
the server keeps each worker's momentum and sends it back with the parameters; the vector is
still computed on the node.
"""

from __future__ import annotations

import json
from typing import Any

import torch

#: (config as JSON, worker) -> its worker step, per process (a Ray actor runs many nodes)
_WORKERS: dict[tuple[str, int], Any] = {}


def worker_step(config: dict[str, Any], worker: int) -> Any:
    """The ``Workers`` step of ``worker`` under ``config`` (built once per process)."""
    key = (json.dumps(config, sort_keys=True, default=str), worker)
    if key not in _WORKERS:
        from byzance.round.setup import Setup

        _WORKERS[key] = Setup(config).make_workers([worker])
    return _WORKERS[key]


def make_client_app(config: dict[str, Any]) -> Any:
    """The ClientApp of the run of ``config`` (an ``ExperimentConfig.to_dict()``)."""
    from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    app = ClientApp()

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        worker = int(context.node_config["partition-id"])
        return Message(RecordDict({"metrics": MetricRecord({"worker": worker})}), reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        worker = int(context.node_config["partition-id"])
        step = worker_step(config, worker)
        arrays = msg.content["arrays"]
        params = torch.from_numpy(arrays["params"].numpy().copy())
        step.momenta = (
            torch.from_numpy(arrays["momentum"].numpy().copy())[None]
            if "momentum" in arrays
            else None
        )
        round_ = int(msg.content["config"]["round"])
        vector, losses = step.step(torch.tensor([0]), params, round_)
        reply = RecordDict(
            {
                "arrays": ArrayRecord({"vector": Array(vector[0].detach().numpy())}),
                "metrics": MetricRecord(
                    {"loss": float(losses[0]), "worker": worker, "num-examples": 1}
                ),
            }
        )
        return Message(reply, reply_to=msg)

    return app
