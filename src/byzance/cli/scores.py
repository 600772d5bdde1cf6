"""``byzance scores``: Tournesol's pipeline on a CSV of comparisons, and
``byzance scores-attack``: how far Sybil, coordinated and scaling attacks move one item
(:mod:`byzance.preferences`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

SCORES_EPILOG = """\
examples:
  byzance scores comparisons.csv --vouches vouches.csv --pretrusted users.txt --out scores.csv
  byzance scores --synthetic 200,50,5000 --plot scores.png   # generated data, no file
  byzance scores-attack --out attack/                        # displacement plots
comparisons.csv: Tournesol's layout (public_username,video_a,video_b,criteria,score), score in
[-10, 10], positive when video_b should be recommended more. vouches.csv: voucher,vouchee,value
(or by_username,to_username,value). See docs/preferences.md.
"""


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The two subcommands, on the ``byzance`` parser's subparsers."""
    p = sub.add_parser(
        "scores",
        help="robust global scores from comparisons (Tournesol's pipeline)",
        description="Trust from vouches, generalized Bradley-Terry per user, Mehestan scaling, "
        "a quadratically regularised quantile per item, squashed into (-100, 100).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=SCORES_EPILOG,
    )
    p.add_argument("comparisons", nargs="?", metavar="COMPARISONS", help="comparisons CSV")
    p.add_argument("--vouches", metavar="CSV", help="vouches CSV (default: every user trusted)")
    p.add_argument(
        "--pretrusted", metavar="FILE", help="pretrusted usernames, one a line (with --vouches)"
    )
    p.add_argument(
        "--criteria", default="largely_recommended",
        help="keep the rows of this criteria (default largely_recommended; 'all': every row)",
    )
    p.add_argument("--score-max", type=float, default=10.0, metavar="X", help="default 10")
    p.add_argument(
        "--synthetic", metavar="USERS,ITEMS,COMPARISONS",
        help="generate the data instead of reading it (seeded by --seed)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of --synthetic (default 0)")
    p.add_argument("--out", metavar="CSV", help="write item,score,uncertainty rows, best first")
    p.add_argument("--plot", metavar="PNG", help="plot the distribution of the scores")
    p.add_argument("--top", type=int, default=5, metavar="N", help="items shown at each end")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    a = sub.add_parser(
        "scores-attack",
        help="score displacement of one item against the number of attackers",
        description="On generated data: Sybil, coordinated and scaling attacks with a growing "
        "number of attackers; plots the target's move and the aggregation's Lipschitz bound.",
    )
    a.add_argument("--users", type=int, default=200, metavar="N", help="honest users (200)")
    a.add_argument("--items", type=int, default=50, metavar="N", help="items (50)")
    a.add_argument("--comparisons", type=int, default=8000, metavar="N", help="(8000)")
    a.add_argument(
        "--attackers", default="0,1,2,5,10,20,50", metavar="K,K,...",
        help="numbers of attackers (default 0,1,2,5,10,20,50)",
    )
    a.add_argument(
        "--attack", action="append", choices=("sybil", "sybil-vouched", "coordinated", "scaling"),
        help="attacks to run (repeatable; default all)",
    )
    a.add_argument("--seed", type=int, default=0, help="default 0")
    a.add_argument("--out", default="scores-attack", metavar="DIR", help="(scores-attack)")


def _synthetic(spec: str, seed: int):
    from byzance.preferences.data import synthetic

    try:
        n_users, n_items, n_comp = (int(x) for x in spec.split(","))
    except ValueError:
        raise ValueError(
            f"--synthetic: expected USERS,ITEMS,COMPARISONS (three ints), got {spec!r}"
        ) from None
    return synthetic(n_users, n_items, n_comp, seed=seed)


def cmd_scores(args: argparse.Namespace) -> int:
    from byzance.preferences.data import read_comparisons, read_vouches, write_scores
    from byzance.preferences.pipeline import Pipeline
    from byzance.progress import tqdm

    if (args.comparisons is None) == (args.synthetic is None):
        raise ValueError("scores: give a comparisons CSV or --synthetic (one of the two)")
    if args.synthetic:
        data = _synthetic(args.synthetic, args.seed)
        comparisons, vouches = data.comparisons, data.vouches
    else:
        criteria = None if args.criteria == "all" else args.criteria
        comparisons = read_comparisons(
            args.comparisons, criteria=criteria, score_max=args.score_max
        )
        vouches = None
        if args.vouches:
            pre = None
            if args.pretrusted:
                pre = [ln.strip() for ln in Path(args.pretrusted).read_text().splitlines()]
            vouches = read_vouches(args.vouches, comparisons.users, [p for p in pre or [] if p])
            if not vouches.pretrusted.any():
                raise ValueError("--vouches: no pretrusted user (give --pretrusted FILE): "
                                "every trust would be 0")
        elif args.pretrusted:
            raise ValueError("--pretrusted needs --vouches")
    print(
        f"{len(comparisons)} comparisons by {comparisons.n_users} users "
        f"on {comparisons.n_items} items"
    )
    steps = ("trust", "preference_learning", "scaling", "voting_rights", "aggregation",
             "post_process")
    show = not args.quiet and len(comparisons) >= 10_000
    bar = tqdm(total=len(steps), unit="step", disable=not show, file=sys.stderr)
    result = Pipeline().run(comparisons, vouches, on_step=lambda name: bar.update(1))
    bar.close()
    order = np.argsort(-result.score, kind="stable")
    n = min(args.top, comparisons.n_items)
    print(f"top {n}:")
    for i in order[:n]:
        print(f"  {result.score[i]:7.2f} ± {result.uncertainty[i]:5.2f}  {comparisons.items[i]}")
    print(f"bottom {n}:")
    for i in order[::-1][:n][::-1]:
        print(f"  {result.score[i]:7.2f} ± {result.uncertainty[i]:5.2f}  {comparisons.items[i]}")
    timing = ", ".join(f"{k} {v:.2f}s" for k, v in result.seconds.items())
    print(f"time: {timing}")
    if args.out:
        write_scores(args.out, comparisons.items, result.score, result.uncertainty)
        print(f"wrote {args.out}")
    if args.plot:
        _plot_distribution(result.score, args.plot)
        print(f"wrote {args.plot}")
    return 0


def _figure():
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ValueError("plots need matplotlib: pip install 'byzance[plot]'") from None
    return Figure(figsize=(6, 4))


def _plot_distribution(scores: np.ndarray, path: str) -> None:
    fig = _figure()
    ax = fig.add_subplot()
    ax.hist(scores, bins=40, range=(-100, 100), color="#3a7ca5")
    ax.set_xlabel("global score (squashed)")
    ax.set_ylabel("items")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def cmd_scores_attack(args: argparse.Namespace) -> int:
    from byzance.preferences.attacks import displacement
    from byzance.preferences.data import synthetic

    try:
        counts = sorted({int(x) for x in args.attackers.split(",")})
    except ValueError:
        raise ValueError(f"--attackers: expected ints, got {args.attackers!r}") from None
    if counts[0] < 0:
        raise ValueError(f"--attackers: expected ints >= 0, got {counts[0]}")
    data = synthetic(args.users, args.items, args.comparisons, seed=args.seed)
    target = int(np.argmin(data.true_scores))  # the worst item, pushed up
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    kinds = args.attack or ["sybil", "sybil-vouched", "coordinated", "scaling"]
    results = {}
    grid = _figure()
    grid.set_size_inches(4 * len(kinds), 3.4)
    for col, name in enumerate(kinds):
        kind, vouched = ("sybil", 1) if name == "sybil-vouched" else (name, 0)
        r = displacement(data, kind, [0, *counts] if counts[0] else counts, target,
                         vouched=vouched, seed=args.seed)
        results[name] = r.__dict__
        print(f"{name}: attackers {r.counts}")
        print("  moved  " + " ".join(f"{m:.3f}" for m in r.moved))
        print("  bound  " + " ".join(f"{b:.3f}" for b in r.bound))
        for fig, ax in ((_figure(), None), (grid, grid.add_subplot(1, len(kinds), col + 1))):
            ax = ax or fig.add_subplot()
            ax.plot(r.counts, r.moved, "o-", label="target's move")
            ax.plot(r.counts, r.bound, "k--", label="bound L W (1 + q/(1-q))")
            ax.set_xlabel("attackers")
            ax.set_ylabel("move of the standardised score")
            ax.set_title(f"{name} attack")
            ax.legend(fontsize=8)
            if fig is not grid:
                fig.tight_layout()
                fig.savefig(out / f"{name}.png", dpi=120)
    grid.tight_layout()
    grid.savefig(out / "attacks.png", dpi=110)
    (out / "displacement.json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {out}/displacement.json, attacks.png and one PNG per attack")
    return 0


#: subcommand -> handler (dispatched by ``byzance.cli.main``)
COMMANDS = {"scores": cmd_scores, "scores-attack": cmd_scores_attack}
