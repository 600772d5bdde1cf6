"""ByzSGD's figures (docs/benchmarks.md, "ByzSGD and the decentralised simulator").

Speed (default), measured side by side in one process (CPU seconds, best of ``--repeats``):

1. the correct servers' aggregation of one round, batched (``round.batched_rules``: one
   kernel call for a coordinate-wise rule, one Gram matrix + the subset searches for MDA, for
   all servers) against a Python loop over servers (the same rule called once per server), on
   random inputs of the MNIST CNN's size d shaped as ByzSGD's (10 honest rows shared, 2
   Byzantine rows per server);
2. one ByzSGD round (n_servers = 5, f_servers = 1, equivocation: the servers differ), and one
   round of the decentralised protocol (10 honest nodes), against one trusted-server round of
   the simulator, same model, data and workers.

    python benchmarks/byzsgd.py

Accuracy table: every point of a grid run in this process on the sim engine (final accuracy
of the correct servers, mean / min / max, and their spread against the models' norm):

    python benchmarks/byzsgd.py --grid benchmarks/grids/byzsgd_digits.toml
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import torch

from byzance import aggregators, models
from byzance.round.batched_rules import PerRecipient
from byzance.sim import ExperimentConfig
from byzance.sim.byzsgd import ByzSGD
from byzance.sim.decentralized import DecentralizedSimulation
from byzance.sim.simulation import Simulation


def _best(fn: Callable[[], Any], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


def aggregation_speed(s: int, h: int, f: int, repeats: int) -> None:
    """ByzSGD's server step inputs: h honest rows shared by the s servers, f Byzantine rows
    each (``ByzSGD.index``); batched against one rule call per server."""
    d = sum(p.numel() for p in models.create_model("cnn", (1, 28, 28), 10).parameters())
    rows = torch.randn(h + s * f, d, generator=torch.Generator().manual_seed(0))
    byz = h + torch.arange(s * f).reshape(s, f)
    index = torch.cat([torch.arange(h).expand(s, h), byz], 1)
    for name in ("median", "trimmed_mean", "mda"):
        rule = aggregators.create(name, f=f)
        batched = PerRecipient(rule, s)
        loop = PerRecipient(rule, s)
        loop.kind = None  # the same rule, one server at a time
        tb = _best(lambda b=batched: b.aggregate_indexed(rows, index), repeats)
        tl = _best(lambda lp=loop: lp.aggregate_indexed(rows, index), repeats)
        print(
            f"{name:13s} s={s} n={h + f} d={d}: batched {tb * 1e3:7.1f} ms, loop over servers "
            f"{tl * 1e3:7.1f} ms, loop/batched {tl / tb:.2f}"
        )


def round_speed(dataset: str, model: str, rounds: int, repeats: int) -> None:
    base = dict(
        dataset=dataset, model=model, n_honest=10, f=2, attack="alie", aggregator="mda",
        rounds=rounds, eval_every=10**6, batch_size=25, momentum=0.9, lr=0.1,
    )  # fmt: skip
    trusted = ExperimentConfig(**{**base, "eval_every": rounds})
    byz = trusted.replace(protocol="byzsgd", n_servers=5, f_servers=1, server_attack="alie")
    shared = byz.replace(equivocate=False)

    def rounds_of(sim: Any) -> Callable[[], None]:
        return lambda: [sim.round(r) for r in range(1, rounds + 1)]

    # fresh objects per repeat (momenta, rule state), set-up outside the timing
    t_server = min(_best(rounds_of(Simulation(trusted)), 1) for _ in range(repeats))
    t_byz = min(_best(rounds_of(ByzSGD(byz)), 1) for _ in range(repeats))
    t_shared = min(_best(rounds_of(ByzSGD(shared)), 1) for _ in range(repeats))
    dec = trusted.replace(protocol="decentralized", model_aggregator="trimmed_mean")
    t_dec = min(_best(rounds_of(DecentralizedSimulation(dec)), 1) for _ in range(repeats))
    ms = 1e3 / rounds
    print(
        f"{dataset}/{model} per round: trusted server {t_server * ms:.2f} ms; ByzSGD 5 servers "
        f"equivocating {t_byz * ms:.2f} ms ({t_byz / t_server:.2f}x); without equivocation "
        f"(one aggregation serves all) {t_shared * ms:.2f} ms ({t_shared / t_server:.2f}x); "
        f"decentralized, 10 nodes (MDA, then trimmed mean) {t_dec * ms:.2f} ms "
        f"({t_dec / t_server:.2f}x)"
    )


def grid_table(path: str) -> None:
    from byzance.grid.spec import load_grid
    from byzance.runner import build_config

    grid = load_grid(path)
    print(
        "| worker attack | protocol | n_s | server attack | T | equiv. | accuracy mean (min-max) "
        "| max spread / norm | final spread |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for point in grid.points:
        cfg = build_config(point.config)
        if cfg.protocol == "server":
            res = Simulation(cfg).run()
            print(
                f"| {cfg.attack} | trusted server | 1 | - | - | - | {res.final_accuracy:.3f} "
                "| 0 | 0 |"
            )
            continue
        sim = ByzSGD(cfg)
        res = sim.run()
        last = res.history[-1]
        norm = float(res.params.norm(dim=1).min())
        print(
            f"| {cfg.attack} | byzsgd | {cfg.n_servers} | {cfg.server_attack} | "
            f"{cfg.contraction_every} | {cfg.equivocate} | {last['test_accuracy']:.3f} "
            f"({last['test_accuracy_min']:.3f}-{last['test_accuracy_max']:.3f}) | "
            f"{max(sim.spreads) / norm:.4f} | {last['spread']:.4f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grid", help="run this grid's points and print the accuracy table")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.grid:
        grid_table(args.grid)
        return
    for s in (4, 5):  # n_servers = 5 and 6 with f_servers = 1
        aggregation_speed(s, 10, 2, args.repeats)
    round_speed("digits", "mlp", args.rounds, args.repeats)


if __name__ == "__main__":
    main()
