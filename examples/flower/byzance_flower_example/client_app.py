"""ClientApp: local training on the node's shard; labels go through ``poison_labels``, so
``label_flipping_mod`` can make chosen nodes Byzantine (``byzance-label-flip-nodes``)."""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from byzance.flower import label_flipping_mod, poison_labels
from byzance_flower_example.task import NUM_CLASSES, load_partition, make_model, train

app = ClientApp(mods=[label_flipping_mod()])


@app.train()
def train_step(msg: Message, context: Context) -> Message:
    model = make_model()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    x, y = load_partition(
        int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
    )
    y = poison_labels(y, NUM_CLASSES)  # flipped on the nodes the mod made Byzantine
    run = context.run_config
    loss = train(model, x, y, int(run["local-epochs"]), float(run["lr"]))
    content = RecordDict(
        {
            "arrays": ArrayRecord(model.state_dict()),
            "metrics": MetricRecord({"train-loss": loss, "num-examples": len(y)}),
        }
    )
    return Message(content, reply_to=msg)
