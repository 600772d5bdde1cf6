"""The ``byzance`` command line: ``run`` one experiment, ``bench`` a grid, ``report`` a results DB.

User errors (bad config field, impossible combination, missing file) print one line
``byzance: error: ...`` and exit with status 2; a failed run exits with 1; Ctrl-C with 130.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from collections.abc import Sequence
from typing import Any

from byzance import __version__
from byzance.grid import (
    DEFAULT_MODEL_AGGREGATOR,
    ENGINES,
    GridError,
    execute_run,
    load_grid,
    load_toml,
    tomllib,
    validate_points,
)

#: ``byzance run`` with no config: each rule under attack and without (the reference)
QUICKSTART_TOML = """\
# byzance quickstart: logistic regression on the sklearn digits (embedded, no download),
# 10 honest workers + 3 Byzantine ones running the inner-product-manipulation attack with a
# large epsilon (Xie et al., UAI 2019): they send -4 x the honest mean, which turns the plain
# mean into gradient *ascent*. NNM + coordinate-wise trimmed mean (Allouah et al., AISTATS
# 2023) is robust to it. Each rule is also run without the Byzantine workers (reference).
dataset = "digits"
model = "logreg"
n_honest = 10
f = 3
aggregator = ["average", "nnm+trimmed_mean"]   # a list: compared side by side
attack = "ipm"
attack_params = { epsilon = 4.0 }
heterogeneity = "iid"
batch_size = 25
lr = 0.1
momentum = 0.9
rounds = 50
eval_every = 25
seed = 0
"""

DESCRIPTION = """\
byzance: Byzantine-resilient distributed and federated learning.
Robust aggregation rules, attacks, a vectorised training simulator and real
distributed runs on Ray.
"""

EPILOG = """\
examples:
  byzance run                                    # quickstart: mean vs NNM + trimmed mean
  byzance run --aggregator krum --attack alie --f 2 --rounds 100
  byzance run my_experiment.toml --seed 1 --db results.db
  byzance run --show-config > my_experiment.toml # start a config file from the quickstart
  byzance bench examples/grid.toml --db results.db --jobs 2
  byzance run --engine ray --num-cpus 16         # real workers on a local Ray instance
  byzance run --engine ray --decentralized       # Ray, no trusted server (docs/ray.md)
  byzance report results.db --out report/

Run 'byzance COMMAND --help' for the options of a command.
"""

#: flag -> (config field, type, help)
FIELD_FLAGS: tuple[tuple[str, str, type, str], ...] = (
    ("--dataset", "dataset", str, "digits, synthetic, mnist, fashion-mnist, cifar10"),
    ("--model", "model", str, "logreg, mlp, cnn, cifar_cnn, resnet18"),
    (
        "--attack",
        "attack",
        str,
        "e.g. alie, sign_flipping, ipm, optimal_alie, label_flipping, none",
    ),
    ("--f", "f", int, "number of Byzantine workers"),
    ("--n-honest", "n_honest", int, "number of honest workers"),
    ("--heterogeneity", "heterogeneity", str, "iid, dirichlet, gamma, extreme"),
    ("--alpha", "alpha", float, "Dirichlet concentration (heterogeneity=dirichlet)"),
    ("--gamma", "gamma", float, "iid fraction (heterogeneity=gamma)"),
    ("--rounds", "rounds", int, "training rounds"),
    ("--lr", "lr", float, "learning rate"),
    ("--batch-size", "batch_size", int, "batch size per worker"),
    ("--momentum", "momentum", float, "worker-side momentum"),
    ("--eval-every", "eval_every", int, "evaluate every this many rounds"),
    ("--seed", "seed", int, "random seed"),
    (
        "--data-dir",
        "data_dir",
        str,
        "dataset folder (default: $BYZANCE_DATA_DIR, ~/.cache/byzance)",
    ),
    ("--device", "device", str, "cpu, cuda, cuda:1, ..."),
)


class UserError(Exception):
    """An error in what the user asked for: one line, exit status 2."""


# -- parser ----------------------------------------------------------------------------------


def _add_engine_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "engine", "every option but --engine needs --engine ray (see docs/ray.md)"
    )
    g.add_argument(
        "--engine",
        choices=ENGINES,
        default="sim",
        help="sim: vectorised simulator (default); ray: real workers on Ray",
    )
    g.add_argument("--address", help="Ray cluster address (auto, host:port); default: local Ray")
    g.add_argument(
        "--q", type=int, metavar="Q", help="vectors aggregated per round (default n - f)"
    )
    g.add_argument(
        "--round-timeout",
        type=float,
        metavar="SECONDS",
        help="how long the server waits for q vectors (default 60)",
    )
    g.add_argument(
        "--checkpoint-dir",
        metavar="DIR",
        help="save checkpoints in DIR: the server's and every worker's state (with "
        "--decentralized: every node's model, momentum and attack state) and the history; "
        "the same run started again resumes from its last one",
    )
    g.add_argument(
        "--checkpoint-every",
        type=int,
        metavar="N",
        help="checkpoint every N rounds (needs --checkpoint-dir; default with it: 10)",
    )
    g.add_argument(
        "--num-cpus",
        type=int,
        metavar="N",
        help="logical CPUs of the local Ray instance started here (default: the machine's); "
        "each worker reserves --worker-cpus",
    )
    g.add_argument(
        "--worker-cpus",
        type=float,
        metavar="X",
        help="CPUs each worker actor reserves (default 1; e.g. 0.5)",
    )
    g.add_argument(
        "--decentralized",
        action="store_true",
        default=None,
        help="no trusted server: every honest node keeps its own model, aggregates its peers' "
        "vectors with the rule, then their models with --model-aggregator",
    )
    g.add_argument(
        "--model-aggregator",
        metavar="SPEC",
        help="--decentralized: rule of the model exchange (default trimmed_mean)",
    )


def _add_set_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="set any config field, VALUE in TOML syntax, e.g. --set "
        "'aggregator_params={tau=1.0}' (repeatable)",
    )


def _wrap(text: str) -> str:
    return textwrap.fill(text, 79)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="byzance",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"byzance {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show full tracebacks instead of one-line errors"
    )
    sub = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run one experiment (no arguments: the quickstart, about half a minute)",
        description=_wrap(
            "Run one experiment and print a summary table. Fields come from CONFIG "
            "(a TOML file of ExperimentConfig fields; default: the embedded quickstart), "
            "overridden by flags. If 'aggregator' is a list (or --aggregator is repeated) "
            "the rules are compared side by side; each is also run without the "
            "Byzantine workers as a reference unless --no-reference."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  byzance run\n  byzance run --rounds 20 --attack sign_flipping\n"
        "  byzance run --aggregator krum --aggregator median --f 2 --db results.db\n",
    )
    run.add_argument("config", nargs="?", metavar="CONFIG", help="TOML config file")
    fields = run.add_argument_group("experiment (override CONFIG)")
    fields.add_argument(
        "--aggregator",
        action="append",
        metavar="SPEC",
        help="e.g. average, krum, nnm+trimmed_mean (repeat to compare)",
    )
    for flag, dest, kind, text in FIELD_FLAGS:
        metavar = {str: "NAME", int: "N", float: "X"}[kind]
        fields.add_argument(flag, dest=dest, type=kind, metavar=metavar, help=text)
    _add_set_flag(fields)
    run.add_argument("--db", metavar="PATH", help="store the runs in this results DB")
    run.add_argument(
        "--no-reference", action="store_true", help="skip the attack-free reference runs"
    )
    run.add_argument(
        "--show-config", action="store_true", help="print the config that would run (TOML) and exit"
    )
    run.add_argument("--quiet", action="store_true", help="no per-round progress")
    _add_engine_flags(run)

    bench = sub.add_parser(
        "bench",
        help="run a grid of experiments into a results DB (parallel, resumable)",
        description=_wrap(
            "Expand GRID (a TOML file: [base] config + [sweep] lists), validate every "
            "config, then run those not finished in the DB, JOBS at a time. Interrupted "
            "grids resume where they stopped; a second bench on a DB in use is refused."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog='example grid:\n  [base]\n  dataset = "digits"\n  rounds = 100\n  [sweep]\n'
        '  aggregator = ["average", "krum", "nnm+trimmed_mean"]\n'
        '  attack = ["none", "alie", "sign_flipping"]\n  f = [1, 3]\n'
        '  heterogeneity = ["iid", {heterogeneity = "dirichlet", alpha = 0.1}]\n'
        "  seed = [0, 1, 2]\n",
    )
    bench.add_argument("grid", metavar="GRID", help="grid TOML file")
    bench.add_argument(
        "--db", default="results.db", metavar="PATH", help="results DB (default: results.db)"
    )
    bench.add_argument(
        "--jobs", type=int, default=1, metavar="N", help="parallel worker processes (default 1)"
    )
    bench.add_argument(
        "--skip-invalid",
        action="store_true",
        help="list and skip impossible configs instead of stopping",
    )
    bench.add_argument(
        "--dry-run", action="store_true", help="validate and list what would run, run nothing"
    )
    bench.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_set_flag(bench)
    _add_engine_flags(bench)

    report = sub.add_parser(
        "report",
        help="figures and tables from a results DB",
        description="Accuracy curves per attack, heatmaps of worst-case accuracy over attacks "
        "(x: f, y: heterogeneity), markdown/CSV summaries, and per-rule "
        "hyper-parameter selection on validation accuracy.",
    )
    report.add_argument("db", metavar="DB", help="results DB written by run --db or bench")
    report.add_argument(
        "--out", default="report", metavar="DIR", help="output folder (default: report)"
    )
    report.add_argument(
        "--format", choices=("png", "pdf"), default="png", help="figure format (default png)"
    )
    return parser


# -- helpers ---------------------------------------------------------------------------------


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare string


def _set_overrides(items: Sequence[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set expects FIELD=VALUE, got {item!r}")
        out[key.strip()] = _parse_value(value.strip())
    return out


#: engine options set by flags of the same name (``q`` -> ``--q``)
ENGINE_OPTIONS = (
    "address",
    "q",
    "round_timeout",
    "checkpoint_dir",
    "checkpoint_every",
    "num_cpus",
    "worker_cpus",
    "decentralized",
    "model_aggregator",
)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _engine_options(args: argparse.Namespace) -> dict[str, Any]:
    options = {name: getattr(args, name) for name in ENGINE_OPTIONS}
    given = [_flag(k) for k, v in options.items() if v is not None]
    if args.engine != "ray" and given:
        raise UserError(f"{', '.join(given)} only apply to --engine ray")
    if args.engine != "ray":
        return options
    if options["model_aggregator"] is not None and not options["decentralized"]:
        raise UserError("--model-aggregator only applies to --decentralized")
    if options["decentralized"]:
        if options["model_aggregator"] is None:
            options["model_aggregator"] = DEFAULT_MODEL_AGGREGATOR
        from byzance import aggregators

        try:
            aggregators.create(options["model_aggregator"], f=1)
        except (ValueError, TypeError) as err:
            raise UserError(f"--model-aggregator: {err}") from None
    if options["checkpoint_dir"] is not None and options["checkpoint_every"] is None:
        options["checkpoint_every"] = 10
    if options["num_cpus"] is not None and options["num_cpus"] < 1:
        raise UserError(f"--num-cpus must be >= 1, got {options['num_cpus']}")
    from byzance.grid import load_ray_engine, ray_options

    try:
        module = load_ray_engine()
    except ImportError as err:
        raise UserError(str(err)) from None
    try:
        ray_options(module, options).validate()
    except ValueError as err:  # e.g. RayOptions.checkpoint_every=5 needs a checkpoint_dir
        raise UserError(str(err)) from None
    return options


def _engine_label(engine: str, options: dict[str, Any]) -> str:
    if engine == "ray" and options.get("decentralized"):
        return f"engine ray, decentralized (model aggregator {options['model_aggregator']})"
    return f"engine {engine}"


def _dump_toml(config: dict[str, Any]) -> str:
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return repr(v)

    return "".join(f"{k} = {value(v)}\n" for k, v in config.items() if v is not None)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=True)).rstrip(),
        "  ".join("-" * w for w in widths),
    ]
    lines += [
        "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    ]
    return "\n".join(lines)


def _fmt_acc(out: dict[str, Any] | None) -> str:
    if out is None:
        return "-"
    if out["status"] != "finished":
        return "failed"
    text = f"{out['final_accuracy']:.3f}"
    history = getattr(out.get("result"), "history", None) or [{}]
    if "spread" in history[-1]:  # decentralized: the honest models' diameter max ||x_i - x_j||
        text += f" (spread {history[-1]['spread']:.3g})"
    return text


# -- run -------------------------------------------------------------------------------------


def _run_configs(args: argparse.Namespace) -> tuple[dict[str, Any], list[str]]:
    """The base config dict and the list of aggregators to compare."""
    if args.config:
        data = load_toml(args.config)
        if "sweep" in data or "base" in data:
            raise UserError(
                f"{args.config} is a grid file ([base]/[sweep]); use: byzance bench {args.config}"
            )
        if set(data) == {"experiment"} and isinstance(data["experiment"], dict):
            data = data["experiment"]
    else:
        data = tomllib.loads(QUICKSTART_TOML)
    overrides = _set_overrides(args.set)
    for _, dest, _, _ in FIELD_FLAGS:
        value = getattr(args, dest)
        if value is not None:
            data[dest] = value
    if args.aggregator:
        data["aggregator"] = args.aggregator
    # parameters of the file's attack / rule do not carry over to another one given by flag
    for name in ("attack", "aggregator"):
        flag = args.aggregator if name == "aggregator" else args.attack
        if flag is not None and f"{name}_params" not in overrides:
            data.pop(f"{name}_params", None)
    data.update(overrides)
    aggregators = data.pop("aggregator", None)
    if aggregators is None:
        aggregators = ["nnm+trimmed_mean"]
    elif isinstance(aggregators, str):
        aggregators = [aggregators]
    elif (
        not isinstance(aggregators, list)
        or not aggregators
        or not all(isinstance(a, str) for a in aggregators)
    ):
        raise UserError(
            f"ExperimentConfig.aggregator: expected a name or a list of names, got {aggregators!r}"
        )
    return data, aggregators


def cmd_run(args: argparse.Namespace) -> int:
    from byzance.grid import build_config
    from byzance.report import attack_label, heterogeneity_label

    base, aggregators = _run_configs(args)
    options = _engine_options(args)
    if args.show_config:
        shown = dict(base)
        shown["aggregator"] = aggregators if len(aggregators) > 1 else aggregators[0]
        sys.stdout.write(_dump_toml(shown))
        return 0
    plans = []  # (aggregator, config, reference config or None, reason)
    for agg in aggregators:
        cfg_dict = {**base, "aggregator": agg}
        try:
            cfg = build_config(cfg_dict)
        except (ValueError, TypeError) as err:
            where = f" (aggregator {agg!r})" if len(aggregators) > 1 else ""
            raise UserError(f"{err}{where}") from None
        ref, why = None, ""
        if not args.no_reference and cfg.has_attack:
            try:
                ref = build_config({**cfg.to_dict(), "attack": "none", "attack_params": {}})
            except (ValueError, TypeError) as err:
                why = str(err)
        plans.append((agg, cfg, ref, why))

    first = plans[0][1]
    who = (
        f"{first.n_honest} honest + {first.f} Byzantine workers"
        if first.has_attack
        else f"{first.n_honest} honest workers, no attack"
    )
    het = heterogeneity_label(first.to_dict())
    title = "quickstart" if not args.config and not _any_flag(args) else "experiment"
    print(
        f"byzance {title}: {first.dataset} / {first.model}, {who}, {het}, "
        f"{first.rounds} rounds, {_engine_label(args.engine, options)}",
        flush=True,
    )
    progress = not args.quiet and sys.stderr.isatty()
    rows, failed = [], []
    for agg, cfg, ref, why in plans:
        outs = []
        attack = attack_label(cfg.to_dict()) if cfg.has_attack else "none"
        for label, c in ((f"under attack {attack}", cfg), ("without Byzantine workers", ref)):
            if c is None:
                outs.append(None)
                continue
            print(f"  running {agg} {label} ...", flush=True)
            out = execute_run(
                c.to_dict(), args.db, args.engine, options, overwrite=True, progress=progress
            )
            if out["status"] != "finished":
                failed.append(f"{agg} {label}: {out['error']}")
            outs.append(out)
        attacked, reference = outs
        rows.append(
            [
                agg,
                attack,
                _fmt_acc(attacked),
                _fmt_acc(reference) if ref is not None else ("n/a" if why else "-"),
                f"{attacked['seconds']:.1f}s",
            ]
        )
        if why:
            print(f"  note: no reference for {agg}: {why}")
    print()
    print(_table(["rule", "attack", "test accuracy", "no-attack reference", "time"], rows))
    if args.db:
        print(f"\nstored in {args.db} (byzance report {args.db})")
    for line in failed:
        print(f"failed: {line}", file=sys.stderr)
    return 1 if failed else 0


def _any_flag(args: argparse.Namespace) -> bool:
    return bool(args.aggregator or args.set) or any(
        getattr(args, dest) is not None for _, dest, _, _ in FIELD_FLAGS
    )


# -- bench -----------------------------------------------------------------------------------


def cmd_bench(args: argparse.Namespace) -> int:
    from byzance.grid import run_grid, run_key

    if args.jobs < 1:
        raise UserError(f"--jobs must be >= 1, got {args.jobs}")
    options = _engine_options(args)
    grid = load_grid(args.grid)
    overrides = _set_overrides(args.set)
    for point in grid.points:
        point.config.update(overrides)
    valid, invalid = validate_points(grid.points)
    total = len(grid.points)
    if invalid:
        lines = [f"  {p.describe()}: {err}" for p, err in invalid]
        if not args.skip_invalid:
            shown = lines[:20] + ([f"  ... and {len(lines) - 20} more"] if len(lines) > 20 else [])
            raise UserError(
                f"{len(invalid)} of {total} configs in {args.grid} are invalid "
                "(fix them, or pass --skip-invalid to skip them):\n" + "\n".join(shown)
            )
        print(f"skipping {len(invalid)} invalid config(s) of {total}:")
        print("\n".join(lines))
    configs = [cfg for _, cfg in valid]
    if args.dry_run:
        from byzance.results import open_db

        done: set[str] = set()
        if os.path.exists(args.db):
            with open_db(args.db) as db:
                done = db.finished_ids()
        ids = {run_key(c.to_dict(), args.engine, options) for c in configs}
        print(
            f"{grid.name}: {total} configs, {len(invalid)} invalid, {len(ids)} distinct runs, "
            f"{len(ids & done)} already finished in {args.db}, {len(ids - done)} to run"
        )
        for point, cfg in valid:
            rid = run_key(cfg.to_dict(), args.engine, options)
            state = "done" if rid in done else "todo"
            shown = ", ".join(f"{k}={v!r}" for k, v in point.coords.items())
            print(f"  {rid}  {state}  #{point.index} {shown}")
        return 0
    if not configs:
        raise UserError(f"no valid config to run in {args.grid}")
    print(
        f"{grid.name}: {len(configs)} runs ({args.jobs} job(s), "
        f"{_engine_label(args.engine, options)}) -> {args.db}",
        flush=True,
    )
    summary = run_grid(
        configs,
        args.db,
        jobs=args.jobs,
        engine=args.engine,
        engine_options=options,
        progress=not args.quiet,
    )
    parts = [f"{summary.total} runs"]
    if summary.skipped:
        parts.append(f"{summary.skipped} already finished")
    parts.append(f"{summary.finished} finished now")
    if summary.failed:
        parts.append(f"{len(summary.failed)} failed")
    if summary.duplicates:
        parts.append(f"{summary.duplicates} duplicate configs merged")
    print(", ".join(parts) + f" in {summary.seconds:.1f}s; see: byzance report {args.db}")
    for rid, err in summary.failed:
        print(f"failed: {rid}: {err}", file=sys.stderr)
    return 1 if summary.failed else 0


# -- report ----------------------------------------------------------------------------------


def cmd_report(args: argparse.Namespace) -> int:
    from byzance.report import build_report

    try:
        files = build_report(args.db, args.out, fmt=args.format, stream=sys.stdout)
    except ImportError as err:
        raise UserError(str(err)) from None
    print(f"wrote {len(files)} files to {args.out}:")
    for path in files:
        print(f"  {path}")
    return 0


# -- entry point -----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    handler = {"run": cmd_run, "bench": cmd_bench, "report": cmd_report}[args.command]
    try:
        return handler(args)
    except BrokenPipeError:  # output piped into head & co.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print(
            "\nbyzance: interrupted; finished runs are kept in the DB and a bench resumes "
            "where it stopped",
            file=sys.stderr,
        )
        return 130
    except (UserError, GridError, ValueError, FileNotFoundError) as err:
        if args.debug:
            raise
        message = str(err) or type(err).__name__
        print(f"byzance: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
