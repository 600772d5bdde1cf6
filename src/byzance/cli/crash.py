"""``byzance crash MODEL``: crash tolerance of a model saved by ``byzance run --save-model``.

Loads the model and the first ``--inputs`` test examples of its dataset, runs
``byzance.analysis.crash.crash`` at each ``--p``, prints the Monte-Carlo error beside the
first-order estimate and the bounds, and writes the plot of error against p.
"""

from __future__ import annotations

import argparse
import json
import sys

HELP = "crash tolerance of a saved model: random neuron/weight crashes against the bounds"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``crash`` sub-command's parser."""
    p = sub.add_parser(
        "crash",
        help=HELP,
        description="Crash each neuron of one layer (or each weight) of a model saved by "
        "'byzance run --save-model' independently with probability p (a crashed unit "
        "outputs 0), on the first test examples of its dataset; print the Monte-Carlo "
        "output error (l2 norm of the logits' change), the first-order estimate and the "
        "worst-case bounds (docs/analysis-crash.md), and plot them against p.",
        epilog="example:\n  byzance run --model mlp --rounds 100 --save-model model.pt\n"
        "  byzance crash model.pt --layer 1 --p 0.01,0.05,0.1\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL", help="file written by byzance run --save-model")
    p.add_argument(
        "--layer", type=int, default=1, metavar="K",
        help="the K-th activation module (neurons) or affine layer (weights), 1-based",
    )  # fmt: skip
    p.add_argument(
        "--p", default="0.01,0.05,0.1", metavar="P[,P...]",
        help="crash probabilities (default 0.01,0.05,0.1)",
    )  # fmt: skip
    p.add_argument(
        "--mode", choices=("neurons", "weights"), default="neurons",
        help="what crashes (default neurons)",
    )  # fmt: skip
    p.add_argument("--trials", type=int, default=50, metavar="N", help="draws per input")
    p.add_argument("--inputs", type=int, default=500, metavar="N", help="test examples used")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="random seed (default 0)")
    p.add_argument("--data-dir", metavar="DIR", help="dataset folder (default: the model's)")
    p.add_argument(
        "--plot", default="crash.png", metavar="PATH", help="figure path (default crash.png)"
    )
    p.add_argument("--no-plot", action="store_true", help="write no figure")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    return p


def _probabilities(text: str) -> list[float]:
    try:
        ps = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"--p: expected numbers separated by commas, got {text!r}") from None
    if not ps or any(not 0 <= p <= 1 for p in ps):
        raise ValueError(f"--p: expected probabilities in [0, 1], got {text!r}")
    return ps


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


def cmd_crash(args: argparse.Namespace) -> int:
    from byzance.analysis.crash import crash
    from byzance.analysis.crash_io import load_model
    from byzance.datasets import load_dataset

    ps = _probabilities(args.p)
    if args.inputs < 1:
        raise ValueError(f"--inputs: expected an int >= 1, got {args.inputs}")
    model, cfg = load_model(args.model)
    data = load_dataset(cfg["dataset"], data_dir=args.data_dir or cfg.get("data_dir"))
    x, y = data.x_test[: args.inputs], data.y_test[: args.inputs]
    results = [
        crash(model, x, layer=args.layer, p=p, trials=args.trials, seed=args.seed, labels=y,
              mode=args.mode)
        for p in ps
    ]  # fmt: skip
    if args.json:
        json.dump([r.as_dict() for r in results], sys.stdout, indent=1)
        print()
    else:
        first = results[0]
        print(
            f"byzance crash: {cfg['model']} on {cfg['dataset']} ({x.shape[0]} test inputs, "
            f"{args.trials} draws each), {args.mode} of layer {args.layer} "
            f"({first.units} units), clean accuracy {first.accuracy:.3f}"
        )
        head = ["p", "mean", "std", "q90", "rms", "1st-order rms", "FEP bound", "norms bound",
                "acc. drop"]  # fmt: skip
        rows = [
            [f"{r.p:g}", _fmt(r.mean), _fmt(r.std), _fmt(r.quantiles[0.9]), _fmt(r.rms),
             _fmt(r.taylor_rms), _fmt(r.fep), _fmt(r.product_of_norms), _fmt(r.accuracy_drop)]
            for r in results
        ]  # fmt: skip
        widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
        for row in [head, ["-" * w for w in widths], *rows]:
            print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
        if first.bounds_note:
            print(f"bounds not computed: {first.bounds_note}")
    if not args.no_plot:
        from byzance.analysis.crash_plot import plot_crash

        if any(r.p > 0 for r in results):
            path = plot_crash(results, args.plot)
            print(f"plot: {path}", file=sys.stderr if args.json else sys.stdout)
    return 0


def check_save_model(path: str, n_rules: int) -> None:
    """``byzance run --save-model``: one rule, and a folder that exists (before any run)."""
    from pathlib import Path

    if n_rules != 1:
        raise ValueError(f"--save-model saves one model: give one rule, got {n_rules}")
    folder = Path(path).parent
    if not folder.is_dir():
        raise ValueError(f"--save-model: folder {str(folder)!r} does not exist")


def save_run_model(path: str, result: object) -> str:
    """Write the final model of a finished run (its ``RunResult``) to ``path``."""
    from byzance.analysis.crash_io import save_model

    params = getattr(result, "params", None)
    if params is None:
        raise ValueError("--save-model: this engine returned no final parameters")
    return str(save_model(path, result.config, params))  # type: ignore[attr-defined]
