"""Damage of every attack against every rule, as a markdown table.

Honest gradients: ``x_i = mu + noise_i`` with ``||mu|| = 1`` and i.i.d. Gaussian noise of
per-coordinate std ``noise / sqrt(d)`` (so ``||x_i - mu|| ~ noise``: workers disagree as much
as stochastic gradients do). n workers in total, f of them Byzantine. Cell: the relative error
``||A(honest + byzantine) - mean(honest)|| / ||mean(honest)||`` (>= 1: the aggregate is no
better than sending nothing). Column "none": the rule on the h honest vectors alone (its own
error from discarding information, the baseline of its row).

    python benchmarks/attacks.py                 # n=30, f=7, d=100000
    python benchmarks/attacks.py --d 1000 --mda  # smaller, with MDA
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from byzance import aggregators, attacks

RULES = [
    ("Average", "average"),
    ("Median", "median"),
    ("TrimmedMean", "trimmed_mean"),
    ("Meamed", "meamed"),
    ("GeometricMedian", "geometric_median"),
    ("Krum", "krum"),
    ("MultiKrum", "multikrum"),
    ("Bulyan", "bulyan"),
    ("MDA", "mda"),
    ("CenteredClipping", "centered_clipping"),
    ("NNM+Median", "nnm+median"),
    ("NNM+TrimmedMean", "nnm+trimmed_mean"),
    ("NNM+GeometricMedian", "nnm+geometric_median"),
    ("NNM+Krum", "nnm+krum"),
    ("NNM+CenteredClipping", "nnm+centered_clipping"),
]

ATTACKS = [
    ("SF", "sign_flipping"),
    ("IPM", "ipm"),
    ("ALIE", "alie"),
    ("Gauss", "gaussian"),
    ("LargeNorm", "large_norm"),
    ("Mimic", "mimic"),
    ("HV", "hidden_vulnerability"),
    ("Opt-IPM", "optimal_ipm"),
    ("Opt-ALIE", "optimal_alie"),
]


def honest_gradients(h: int, d: int, noise: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    mu = torch.randn(d, generator=gen)
    mu = mu / mu.norm()
    return mu + (noise / math.sqrt(d)) * torch.randn(h, d, generator=gen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=30, help="workers in total")
    parser.add_argument("--f", type=int, default=7, help="Byzantine workers among them")
    parser.add_argument("--d", type=int, default=100_000, help="dimension")
    parser.add_argument("--noise", type=float, default=2.0, help="||x_i - mu|| / ||mu||")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mda", action="store_true", help="include MDA (combinatorial)")
    args = parser.parse_args()
    h, f = args.n - args.f, args.f
    honest = honest_gradients(h, args.d, args.noise, args.seed)
    mean = honest.mean(dim=0)
    print(
        f"n={args.n} (h={h} honest, f={f} Byzantine), d={args.d}, noise={args.noise}, "
        f"seed={args.seed}, float32; cell = ||A - mean|| / ||mean||\n"
    )
    print("| rule | none | " + " | ".join(name for name, _ in ATTACKS) + " | s/row |")
    print("|---" * (len(ATTACKS) + 3) + "|")
    for label, spec in RULES:
        if spec == "mda" and not args.mda:
            continue
        rule = aggregators.create(spec, f=f)
        try:
            rule.check(args.n)
        except ValueError as err:
            print(f"| {label} | skipped: {err} |")
            continue
        start = time.perf_counter()
        try:  # the rule's own error without Byzantine inputs (n = h)
            rule.check(h)
            cells = [float((rule.aggregate(honest) - mean).norm() / mean.norm())]
        except ValueError:
            cells = [math.nan]
        for _, name in ATTACKS:
            attack = attacks.create(name, aggregator=rule)
            byz = attack(honest, f)
            out = rule.aggregate(torch.cat([honest, byz]))
            cells.append(float((out - mean).norm() / mean.norm()))
        seconds = time.perf_counter() - start
        shown = " | ".join(f"{c:.3g}" if c < 1e4 else f"{c:.1e}" for c in cells)
        print(f"| {label} | {shown} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
