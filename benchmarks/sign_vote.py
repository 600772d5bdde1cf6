"""signSGD with majority vote under the anti-majority attack: the fraction of coordinates
the vote gets wrong over training, against the exact binomial prediction and the bound.

    python benchmarks/sign_vote.py                       # Fashion-MNIST MLP, h=15, f=0..14
    python benchmarks/sign_vote.py --dataset digits --model logreg --f 0,3,6 --rounds 200

Every ``--every`` rounds (``byzance.analysis.sign_vote_training``): the honest workers'
per-coordinate agreement with the sign of the true gradient (on 2048 training examples), the
fraction of coordinates where the server's vote differs from it (``wrong``), and what the
model of independent honest votes predicts for it (``exact``) with its Hoeffding bound
(``bound``, 1 where its condition fails; ``cond``: fraction of coordinates where it holds).
"""

from __future__ import annotations

import argparse
import os
import time

from byzance.analysis.sign_vote_training import sign_vote_training

COLUMNS = ("round", "test_accuracy", "agreement", "wrong_honest", "wrong", "exact", "bound",
           "condition")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--model", default="mlp")
    ap.add_argument("--n-honest", type=int, default=15)
    ap.add_argument("--f", default="0,2,5,10,14")
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--every", type=int, default=25)
    ap.add_argument("--lr", type=float, default=0.001)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--figure", default=None, help="path of the figure (none: no figure)")
    args = ap.parse_args()
    runs = {}
    for f in [int(v) for v in args.f.split(",")]:
        cfg = {"dataset": args.dataset, "model": args.model, "n_honest": args.n_honest, "f": f,
               "aggregator": "sign_majority", "attack": "anti_majority" if f else "none",
               "rounds": args.rounds, "lr": args.lr, "momentum": args.momentum,
               "weight_decay": 0.0, "batch_size": 25, "seed": 0,
               "data_dir": os.environ.get("BYZANCE_DATA_DIR")}  # fmt: skip
        start = time.perf_counter()
        recs = sign_vote_training(cfg, every=args.every)
        runs[f] = recs
        print(f"\nf={f} (n_honest={args.n_honest}): {time.perf_counter() - start:.0f}s")
        print("  ".join(f"{c[:10]:>10}" for c in COLUMNS))
        for r in recs:
            print("  ".join(f"{r[c]:10.4f}" if c != "round" else f"{r[c]:10d}" for c in COLUMNS))
    if args.figure:
        _figure(runs, args)


def _figure(runs: dict, args: argparse.Namespace) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 4.4), layout="constrained")
    ax = fig.add_subplot()
    for i, (f, recs) in enumerate(sorted(runs.items())):
        rounds = [r["round"] for r in recs]
        ax.plot(rounds, [r["wrong"] for r in recs], "o-", color=f"C{i}", label=f"f={f}: measured")
        ax.plot(rounds, [r["exact"] for r in recs], "--", color=f"C{i}", label=f"f={f}: binomial")
        ax.plot(rounds, [r["bound"] for r in recs], ":", color=f"C{i}", label=f"f={f}: bound")
    ax.set_xlabel("round")
    ax.set_ylabel("fraction of coordinates voted wrong")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"signSGD majority vote vs anti-majority, {args.dataset} {args.model}, "
                 f"h={args.n_honest}")  # fmt: skip
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=3)
    fig.savefig(args.figure, dpi=120)
    print(f"figure: {args.figure}")


if __name__ == "__main__":
    main()
