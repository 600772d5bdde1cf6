"""``byzance kappa``: search the robustness coefficient of rules; print the table, plot it.

For every rule, n and f, ``byzance.analysis.kappa.kappa`` searches inputs that maximise
``||F(x) - mean_S||^2 / ((1/|S|) sum_S ||x_i - mean_S||^2)``; the table shows the value
found (a lower bound on kappa*) beside f / (n - 2f) and the proven upper bound with its
source; the plot shows kappa against f / n (docs/analysis-kappa.md).
"""

from __future__ import annotations

import argparse
import sys
import textwrap

HELP = "robustness coefficient of rules: searched lower bounds beside the proven bounds"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``kappa`` sub-command's parser."""
    p = sub.add_parser(
        "kappa",
        help=HELP,
        description=textwrap.fill(
            "For each rule, n and f, search inputs maximising the ratio "
            "||F(x) - mean_S||^2 / (mean over S of ||x_i - mean_S||^2), S the n - f honest "
            "inputs (Allouah et al., AISTATS 2023). Print the largest ratio found (a certified "
            "lower bound on the rule's kappa*; 'unbounded' when it grows without limit) beside "
            "f/(n-2f) (no rule does better) and the proven upper bound with its source, and "
            "plot kappa against f/n (docs/analysis-kappa.md).",
            79,
        ),
        epilog="example:\n  byzance kappa --rules krum,multikrum,nnm+trimmed_mean --n 20 "
        "--f 1,2,3,4\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--rules", default="krum,multikrum,nnm+trimmed_mean", metavar="SPEC[,SPEC...]",
        help="rules and chains (default krum,multikrum,nnm+trimmed_mean)",
    )  # fmt: skip
    p.add_argument("--n", default="20", metavar="N[,N...]", help="numbers of inputs (default 20)")
    p.add_argument(
        "--f", default=None, metavar="F[,F...]",
        help="numbers of Byzantine inputs (default: every f >= 1 each rule accepts, n > 2f)",
    )  # fmt: skip
    p.add_argument(
        "--dim", type=int, default=None, metavar="D",
        help="dimension of the inputs (default: 1 for coordinate-wise rules, else n - 1)",
    )  # fmt: skip
    p.add_argument("--restarts", type=int, default=4, metavar="R",
                   help="local searches per point (default 4)")
    p.add_argument("--iterations", type=int, default=200, metavar="I",
                   help="batches per local search (default 200)")
    p.add_argument("--batch", type=int, default=16, metavar="B",
                   help="candidates per batch (default 16)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default 0)")
    p.add_argument("--plot", default="kappa.png", metavar="PATH",
                   help="where to write the plot (default kappa.png)")
    p.add_argument("--no-plot", action="store_true", help="print the table only")
    return p


def _ints(flag: str, text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{flag}: expected integers separated by commas, got {text!r}") from None
    if not values:
        raise ValueError(f"{flag}: expected at least one integer, got {text!r}")
    return values


def cmd_kappa(args: argparse.Namespace) -> int:
    from byzance.analysis.kappa import max_f
    from byzance.analysis.kappa_report import format_table, grid_points, kappa_grid, plot_kappa
    rules = [r.strip() for r in args.rules.split(",") if r.strip()]
    if not rules:
        raise ValueError(f"--rules: expected rule specs separated by commas, got {args.rules!r}")
    ns = _ints("--n", args.n)
    fs = None if args.f is None else _ints("--f", args.f)
    for n in ns:
        if n < 3:
            raise ValueError(f"--n: expected integers >= 3, got {n}")
    points = grid_points(rules, ns, fs)  # builds every rule: unknown names fail here
    if not points:
        limits = ", ".join(f"{r} (n={n}: f <= {max_f(r, n)})" for r in rules for n in ns)
        raise ValueError(f"no (rule, n, f) to search: the rules accept {limits}")
    skipped = len(rules) * len(ns) * len(fs) - len(points) if fs is not None else 0
    if skipped:
        print(f"skipped {skipped} (rule, n, f) the rules refuse", file=sys.stderr)

    def progress(r) -> None:
        value = "unbounded" if r.unbounded else f"{r.value:.4g}"
        print(f"  {r.rule} n={r.n} f={r.f}: {value} ({r.seconds:.1f} s)", file=sys.stderr)

    results = kappa_grid(
        rules, ns, fs, on_result=progress, dim=args.dim, restarts=args.restarts,
        iterations=args.iterations, batch=args.batch, seed=args.seed,
    )  # fmt: skip
    print(format_table(results))
    bad = [r for r in results if r.above_upper_bound]
    if not args.no_plot:
        path = plot_kappa(results, args.plot)
        print(f"wrote {path}")
    if bad:
        print("ABOVE A PROVEN UPPER BOUND (a bug in the rule, the search or the bound): "
              + ", ".join(f"{r.rule} n={r.n} f={r.f}" for r in bad), file=sys.stderr)
        return 1
    return 0
