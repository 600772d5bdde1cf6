"""Flower apps of the simulation tests (``test_flower_sim.py``).

Ray's actors import this module by name: the tests put ``tests/`` and ``examples/flower`` on
their ``PYTHONPATH``. The model and data are the example app's (softmax regression on digits).

Ten nodes; partition p behaves, when the round's config asks for it:

* ``attack`` = 1: p in {0, 1} send ``w - 10 (w_local - w)`` (a scaled sign flip of their
  update: breaks an average);
* ``faults`` = 1: p = 2 sends NaN, p = 3 an array of the wrong shape, p = 4 raises;
* every other node trains honestly.
"""

from __future__ import annotations

from typing import Any

import numpy as np

NODES = 10
BYZANTINE = (0, 1)
NAN, SHAPE, RAISES = 2, 3, 4


def local_arrays(arrays: list[np.ndarray], partition: int, epochs: int = 1) -> list[np.ndarray]:
    """One node's model after local training from ``arrays`` (honest)."""
    import torch
    from byzance_flower_example.task import load_partition, make_model, train

    model = make_model()
    keys = list(model.state_dict())
    state = {k: torch.from_numpy(a.copy()) for k, a in zip(keys, arrays, strict=True)}
    model.load_state_dict(state)
    x, y = load_partition(partition, NODES)
    train(model, x, y, epochs, lr=0.5)
    return [v.detach().numpy().copy() for v in model.state_dict().values()]


def behave(arrays: list[np.ndarray], partition: int, attack: bool, faults: bool) -> list:
    """What partition ``partition`` sends back (see the module docstring)."""
    if faults and partition == RAISES:
        raise RuntimeError(f"partition {partition} fails on purpose")
    local = local_arrays(arrays, partition)
    if attack and partition in BYZANTINE:
        return [w - 10.0 * (loc - w) for w, loc in zip(arrays, local, strict=True)]
    if faults and partition == NAN:
        local[0] = np.full_like(local[0], np.nan)
    if faults and partition == SHAPE:
        local[1] = np.zeros(local[1].shape[0] + 1, dtype=local[1].dtype)
    return local


def message_client() -> Any:
    """A Message-API ClientApp (config keys ``attack`` / ``faults`` of the train message)."""
    from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        record = msg.content["arrays"]
        keys = list(record)
        config = msg.content["config"]
        out = behave(
            [record[k].numpy() for k in keys],
            int(context.node_config["partition-id"]),
            bool(config.get("attack", 0)),
            bool(config.get("faults", 0)),
        )
        arrays = ArrayRecord(
            {k: Array(np.ascontiguousarray(a)) for k, a in zip(keys, out, strict=True)}
        )
        metrics = MetricRecord({"num-examples": 100})
        return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)

    return app


def legacy_client() -> Any:
    """A legacy ClientApp (``client_fn`` with a ``NumPyClient``), attack and faults on."""
    from flwr.client import NumPyClient
    from flwr.clientapp import ClientApp

    class Client(NumPyClient):
        def __init__(self, partition: int) -> None:
            self.partition = partition

        def fit(self, parameters, config):
            return behave(parameters, self.partition, True, True), 100, {}

    def client_fn(context: Any) -> Any:
        return Client(int(context.node_config["partition-id"])).to_client()

    return ClientApp(client_fn=client_fn)


def central_accuracy(arrays: list[np.ndarray]) -> float:
    """Test accuracy of a global model given as its list of arrays."""
    import torch
    from byzance_flower_example.task import accuracy, load_digits_split, make_model

    model = make_model()
    keys = list(model.state_dict())
    state = {k: torch.from_numpy(np.array(a)) for k, a in zip(keys, arrays, strict=True)}
    model.load_state_dict(state)
    _, _, x, y = load_digits_split()
    return accuracy(model, x, y)
