"""The robustness-coefficient search: its time per rule, and the docs' table and plot.

    python benchmarks/kappa.py timing --restarts 4 --iterations 200   # n=20, f=4, per rule
    python benchmarks/kappa.py timing --rules geometric_median --restarts 1 --iterations 20
    python benchmarks/kappa.py table --plot docs/img/kappa.png > table.md
    python benchmarks/kappa.py table --n 10 --rules krum,median --restarts 2
    python benchmarks/kappa.py merge a.json b.json --plot docs/img/kappa.png  # docs' table
    python benchmarks/kappa.py table --rules geometric_median --n 10,20 --fs 1,2,3,4,5,7,9 \
        --restarts 1 --iterations 20 --gm-dim 2

``timing`` runs ``kappa(rule, 20, 4)`` with the budget given (``kappa``'s default: 4 restarts
x 200 batches of 16) for each rule and prints the seconds, the evaluations and the
milliseconds per evaluation (torch on one thread, as the search runs). ``table`` runs the
search for n in {10, 20, 50} and every f each rule accepts (n = 50: a subset of f), with the
default dimension except for the geometric median (``--gm-dim``, 4), prints the markdown
table of ``byzance.analysis.kappa_report.format_table`` and writes the plot; ``--json``
keeps the results for ``merge``, which prints the docs' compact table and draws the plot.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from byzance.analysis.kappa import kappa
from byzance.analysis.kappa_report import (
    compact_table,
    format_table,
    from_records,
    grid_points,
    plot_kappa,
    to_records,
)

TIMED = ["average", "median", "trimmed_mean", "meamed", "krum", "multikrum", "mda", "monna",
         "caf", "centered_clipping", "nnm+trimmed_mean", "nnm+krum", "bucketing+median"]
TABLE = ["average", "median", "trimmed_mean", "krum", "multikrum", "nnm+trimmed_mean",
         "nnm+krum"]
F50 = (1, 3, 5, 10, 15, 20, 24)
TABLE_ORDER = ["average", "median", "trimmed_mean", "geometric_median", "krum", "multikrum",
               "nnm+trimmed_mean", "nnm+krum"]


def timing(rules: list[str], n: int, f: int, restarts: int, iterations: int) -> None:
    print(f"kappa search, n={n}, f={f}, {restarts} restarts x {iterations} batches of 16")
    print("| rule | dim | evaluations | seconds | ms per evaluation | value |")
    print("|---|---|---|---|---|---|")
    for rule in rules:
        r = kappa(rule, n, f, restarts=restarts, iterations=iterations)
        value = "unbounded" if r.unbounded else f"{r.value:.4g}"
        print(f"| `{rule}` | {r.dim} | {r.evaluations} | {r.seconds:.1f} | "
              f"{1e3 * r.seconds / r.evaluations:.3f} | {value} |", flush=True)


def table(args: argparse.Namespace) -> None:
    rules = args.rules.split(",")
    points = []
    fs = [int(v) for v in args.fs.split(",")] if args.fs else None
    for n in [int(v) for v in args.n.split(",")]:
        points += grid_points(rules, [n], fs or (F50 if n >= 50 else None))
    results = []
    start = time.perf_counter()
    for rule, n, f in points:
        dim = args.gm_dim if "geometric_median" in rule else None
        r = kappa(rule, n, f, dim=dim, restarts=args.restarts, iterations=args.iterations,
                  seed=args.seed)
        results.append(r)
        value = "unbounded" if r.unbounded else f"{r.value:.4g}"
        print(f"{rule} n={n} f={f}: {value} ({r.seconds:.1f} s)", file=sys.stderr, flush=True)
        if args.json:  # after each search: an interrupted run keeps what it found
            Path(args.json).write_text(json.dumps(to_records(results), indent=1))
    print(format_table(results))
    print(f"\n{len(results)} searches in {time.perf_counter() - start:.0f} s")


def merge(args: argparse.Namespace) -> None:
    """The docs' table and plot from the JSON files of several ``table`` runs."""
    rows = [row for path in args.inputs for row in json.loads(Path(path).read_text())]
    results = from_records(rows)
    order = {rule: i for i, rule in enumerate(TABLE_ORDER)}
    results.sort(key=lambda r: (order.get(r.rule, 99), r.n, r.f))
    print(compact_table(results))
    if args.plot:
        print(f"wrote {plot_kappa(results, args.plot)}")
    if args.plot:
        print(f"wrote {plot_kappa(results, args.plot)}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("timing", "table", "merge"))
    p.add_argument("inputs", nargs="*", help="merge: JSON files written by table --json")
    p.add_argument("--rules", default=None)
    p.add_argument("--n", default="10,20,50")
    p.add_argument("--f", type=int, default=4, help="timing: f")
    p.add_argument("--fs", default=None, help="table: these f only (default: all; n=50: some)")
    p.add_argument("--restarts", type=int, default=2)
    p.add_argument("--iterations", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", default=None)
    p.add_argument("--json", default=None, help="table: also write the results as JSON")
    p.add_argument("--gm-dim", type=int, default=4,
                   help="table: dimension for rules with the geometric median (Weiszfeld's "
                   "iterations are slow on clustered inputs; default 4)")
    args = p.parse_args()
    if args.what == "timing":
        timing((args.rules or ",".join(TIMED)).split(","), 20, args.f, args.restarts,
               args.iterations)
    elif args.what == "merge":
        merge(args)
    else:
        args.rules = args.rules or ",".join(TABLE)
        table(args)


if __name__ == "__main__":
    main()
