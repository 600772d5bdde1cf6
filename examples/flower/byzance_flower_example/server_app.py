"""ServerApp: ``RobustFedAvg`` configured from ``[tool.flwr.app.config]`` (``byzance-*`` keys),
with the global model evaluated centrally on the digits test split after every round."""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from byzance.flower import RobustFedAvg
from byzance_flower_example.task import accuracy, load_digits_split, make_model

app = ServerApp()


def central_evaluation(server_round: int, arrays: ArrayRecord) -> MetricRecord:
    model = make_model()
    model.load_state_dict(arrays.to_torch_state_dict())
    _, _, x_test, y_test = load_digits_split()
    return MetricRecord({"accuracy": accuracy(model, x_test, y_test)})


@app.main()
def main(grid: Grid, context: Context) -> None:
    strategy = RobustFedAvg.from_run_config(context.run_config)
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(make_model().state_dict()),
        num_rounds=int(context.run_config["num-server-rounds"]),
        evaluate_fn=central_evaluation,
    )
    print("central accuracy per round:", {
        r: m["accuracy"] for r, m in result.evaluate_metrics_serverapp.items()
    })  # fmt: skip
    print("rejected replies:", len(strategy.rejections))
