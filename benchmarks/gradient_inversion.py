"""Data poisoning by gradient inversion on Fashion-MNIST with the MNIST CNN.

``python benchmarks/gradient_inversion.py [--rounds R] [--data-dir DIR]``: 18 honest workers
and 2 Byzantine ones (batches of ``--batch`` examples), for each rule the accuracy reached
with no attack, under the gradient attack itself, and under its imitation by gradient
inversion with 1%, 5% and 10% of all the round's points poisoned (the Byzantine workers
replace 10%, 50% or 100% of their batch: 2 of 20 workers, so 1 / 5 / 10% of the points);
and the CPU seconds per round (single thread, measured in the same process, side by side).
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from byzance.sim.config import ExperimentConfig
from byzance.sim.simulation import Simulation

#: (rule, the imitated gradient attack)
CASES = (("average", "sign_flipping"), ("nnm+trimmed_mean", "alie"), ("median", "alie"))
FRACTIONS = (0.1, 0.5, 1.0)  # of a Byzantine batch: 1%, 5%, 10% of all points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--data-dir", default=os.environ.get("BYZANCE_DATA_DIR"))
    parser.add_argument(
        "--cases",
        default=";".join(f"{r}:{t}" for r, t in CASES),
        help="rule:attack pairs separated by ';' (default: %(default)s)",
    )
    parser.add_argument("--objective", default="cosine", help="cosine or distance")
    args = parser.parse_args()
    torch.set_num_threads(1)
    base = ExperimentConfig(
        dataset="fashion-mnist",
        data_dir=args.data_dir,
        model="cnn",
        n_honest=18,
        f=2,
        batch_size=args.batch,
        rounds=args.rounds,
        eval_every=args.rounds,
        lr=0.1,
        momentum=0.9,
    )
    print(
        f"Fashion-MNIST, MNIST CNN, 18 honest + 2 Byzantine workers, batch {args.batch}, "
        f"{args.rounds} rounds, inversion: {args.steps} Adam steps, "
        f"{args.objective} objective"
    )
    print(f"{'rule':18s} {'attack':44s} {'poisoned':>8s} {'acc':>6s} {'cos':>5s} {'s/round':>8s}")
    for case in args.cases.split(";"):
        rule, target = case.split(":", 1)
        runs = [("none", "none", "0%"), (target, target, "-")]
        for frac in FRACTIONS:
            spec = (
                f'gradient_inversion(target="{target}", points={frac}, steps={args.steps}, '
                f'objective="{args.objective}")'
            )
            runs.append((spec, f"inversion of {target}, {frac:.0%} of a batch", f"{frac / 10:.0%}"))
        for attack, label, share in runs:
            sim = Simulation(base.replace(aggregator=rule, attack=attack))
            start = time.process_time()
            result = sim.run()
            per_round = (time.process_time() - start) / max(1, sim.rounds_run)
            cos = getattr(sim.attack, "last_cosine", None)
            cos_text = "-" if cos is None else f"{float(cos.mean()):.2f}"
            acc = result.history[-1]["test_accuracy"]
            print(
                f"{rule:18s} {label:44s} {share:>8s} {acc:6.3f} {cos_text:>5s} {per_round:8.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
