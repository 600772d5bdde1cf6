"""The ``async`` protocol's figures (docs/benchmarks.md, "Asynchronous Byzantine SGD").

Speed (default): the asynchronous simulator's cost per applied gradient (and per delivery)
against the synchronous simulator's cost per worker gradient, same model, data and workers,
measured side by side in one process (CPU seconds of the process, without the final
evaluation and the gradients' one-time self-check, best of ``--repeats``,
sync and async runs interleaved so that a change in the machine's load hits both; one torch
thread by default: on a busy machine the threads of a tiny model's many small operations
mostly wait for each other).

    python benchmarks/async_protocol.py                    # digits/logreg, digits/mlp
    python benchmarks/async_protocol.py --fmnist           # + Fashion-MNIST/cnn (data dir)

Accuracy table from a results DB made by the grid ``benchmarks/grids/async_kardam.toml``:

    python benchmarks/async_protocol.py --grid-db async.db
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from byzance.sim import ExperimentConfig
from byzance.sim.asynchronous import AsyncSimulation
from byzance.sim.simulation import Simulation


def _cpu_seconds(sim: Any) -> tuple[float, Any]:
    """CPU seconds of ``sim.run()`` without the one-time check of the shared-parameter
    gradients (done before) and without the final evaluation (timed apart, subtracted)."""
    group = sim.group
    rows = torch.arange(sim.h)
    group.grad_fns()[0](sim.params0, *group.batch(rows, 1, 0))
    t0 = time.process_time()
    result = sim.run()
    total = time.process_time() - t0
    t1 = time.process_time()
    sim.evaluate(result.params)
    return total - (time.process_time() - t1), result


def speed(dataset: str, model: str, rounds: int, repeats: int, async_filter: str) -> None:
    base = dict(
        dataset=dataset, model=model, n_honest=10, f=2, attack="none", rounds=rounds,
        eval_every=rounds, batch_size=25, momentum=0.9, lr=0.05,
    )  # fmt: skip
    sync_cfg = ExperimentConfig(**base)
    async_cfg = ExperimentConfig(**base, protocol="async", async_filter=async_filter)
    sync_best = async_best = float("inf")
    result: Any = None
    for _ in range(repeats):
        s, _ = _cpu_seconds(Simulation(sync_cfg))
        a, result = _cpu_seconds(AsyncSimulation(async_cfg))
        sync_best, async_best = min(sync_best, s), min(async_best, a)
    gradients = rounds * sync_cfg.n_received
    applied = result.history[-1]["applied"]
    per_sync = sync_best / gradients * 1e3
    per_applied = async_best / applied * 1e3
    per_delivery = async_best / gradients * 1e3
    split = {k: round(v, 2) for k, v in result.timings.items() if k in ("gradients", "server")}
    print(
        f"{dataset}/{model} filter={async_filter}: sync {per_sync:.3f} ms/worker gradient; "
        f"async {per_applied:.3f} ms/applied gradient ({applied}/{gradients} applied), "
        f"{per_delivery:.3f} ms/delivery; ratio applied/sync {per_applied / per_sync:.2f}, "
        f"delivery/sync {per_delivery / per_sync:.2f}; async wall split {split}"
    )


SETTINGS = ("plain async", "dampening only", "Kardam", "sync robust server")


def _setting(c: dict[str, Any]) -> str:
    if c.get("protocol", "server") == "server":
        return SETTINGS[3]
    if c["async_filter"] == "kardam":
        return SETTINGS[2]
    return SETTINGS[1] if c["dampening"] != "none" else SETTINGS[0]


def _attack(c: dict[str, Any]) -> str:
    attack = c["attack"]
    if c.get("byzantine_speed", 1.0) != 1.0:
        attack += f", flooding x{c['byzantine_speed']:g}"
    if c.get("filter_attack", "none") != "none":
        attack += ", at the Lipschitz edge"
    return attack


def grid_table(path: str, rounds: tuple[int, ...] = (10, 50, 100)) -> None:
    """Accuracy at ``rounds`` of each setting (columns) per split and attack (rows); then the
    Kardam runs' applied / rejected counts."""
    from byzance.results import open_db

    db = open_db(path)
    runs = db.load_runs("finished")
    metrics = db.load_metrics([r["run_id"] for r in runs])
    cells: dict[tuple[str, str], dict[str, str]] = {}
    kardam = []
    for run in runs:
        c = run["config"]
        hist = {rec["round"]: rec for rec in metrics[run["run_id"]]}
        accs = " / ".join(f"{hist[r]['test_accuracy']:.2f}" for r in rounds if r in hist)
        key = (c["heterogeneity"], _attack(c))
        cells.setdefault(key, {})[_setting(c)] = accs
        if _setting(c) == "Kardam":
            last = hist[max(hist)]
            sent = c["rounds"] * (c["n_honest"] + (c["f"] if c["attack"] != "none" else 0))
            kardam.append((key, last, sent))
    shown = " / ".join(str(r) for r in rounds)
    print(f"test accuracy at rounds {shown}")
    print("| split | attack | " + " | ".join(SETTINGS) + " |")
    print("|---|---|" + "---|" * len(SETTINGS))
    for key in sorted(cells):
        row = [cells[key].get(s, "-") for s in SETTINGS]
        print(f"| {key[0]} | {key[1]} | " + " | ".join(row) + " |")
    print()
    print(
        "| split | attack | sent | applied | Byzantine applied | rejected: Lipschitz | frequency |"
    )
    print("|---|---|---|---|---|---|---|")
    for key, last, sent in sorted(kardam, key=lambda x: x[0]):
        print(
            f"| {key[0]} | {key[1]} | {sent} | {last['applied']} | {last['byzantine_applied']} "
            f"| {last['rejected_lipschitz']} | {last['rejected_frequency']} |"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--grid-db", help="print the accuracy table of this results DB and exit")
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--fmnist", action="store_true", help="also Fashion-MNIST with the CNN")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.grid_db:
        grid_table(args.grid_db)
        return
    for dataset, model in [("digits", "logreg"), ("digits", "mlp")]:
        for filt in ("none", "kardam"):
            speed(dataset, model, args.rounds, args.repeats, filt)
    if args.fmnist:
        for filt in ("none", "kardam"):
            speed("fashion-mnist", "cnn", max(5, args.rounds // 6), 1, filt)


if __name__ == "__main__":
    main()
