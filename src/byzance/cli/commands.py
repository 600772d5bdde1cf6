"""The commands: ``run`` one experiment (or several rules side by side), ``bench`` a grid,
``report`` a results database."""

from __future__ import annotations

import argparse
import sys

from byzance import engines
from byzance.cli.inputs import (
    _any_flag,
    _dump_toml,
    _engine_label,
    _engine_options,
    _fmt_acc,
    _run_configs,
    _set_overrides,
    _table,
)
from byzance.cli.parser import UserError
from byzance.grid import load_grid
from byzance.grid.bench import check_grid
from byzance.runner import execute_run

# -- run -------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from byzance.report import attack_label, heterogeneity_label
    from byzance.runner import build_config

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
            engines.get(args.engine).check(cfg, options)
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
    if args.save_model:  # one model, into a folder that exists: checked before any run
        from byzance.cli.crash import check_save_model

        check_save_model(args.save_model, len(plans))
    if args.db:  # a bad --db is one error line, before anything runs
        from byzance.results import open_db

        open_db(args.db).close()

    first = plans[0][1]
    who = (
        f"{first.n_honest} honest + {first.f} Byzantine workers"
        if first.has_attack
        else f"{first.n_honest} honest workers, no attack"
    )
    if first.n_clients is not None:  # a sampled client population
        pop = first.population
        who = (
            f"{pop.n_clients} clients ({pop.byzantine} Byzantine), {pop.per_round} per round, "
            f"aggregator f={pop.aggregator_f}"
        )
    het = heterogeneity_label(first.to_dict())
    title = "quickstart" if not args.config and not _any_flag(args) else "experiment"
    print(
        f"byzance {title}: {first.dataset} / {first.model}, {who}, {het}, "
        f"{first.rounds} rounds, {_engine_label(args.engine, first)}",
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
        if args.save_model and attacked["status"] == "finished":
            from byzance.cli.crash import save_run_model

            print(f"  model saved: {save_run_model(args.save_model, attacked['result'])}")
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


# -- bench -----------------------------------------------------------------------------------


def cmd_bench(args: argparse.Namespace) -> int:
    from byzance.grid import run_grid

    if args.jobs < 1:
        raise UserError(f"--jobs must be >= 1, got {args.jobs}")
    options = _engine_options(args)
    grid = load_grid(args.grid)
    overrides = _set_overrides(args.set)
    if args.protocol is not None:
        overrides["protocol"] = args.protocol
    if args.model_aggregator is not None:
        overrides["model_aggregator"] = args.model_aggregator
    for point in grid.points:
        point.config.update(overrides)
    from byzance.results import check_db

    has_db = check_db(args.db)  # a bad --db is one error line, before the configs are checked
    valid, invalid = check_grid(grid.points, args.engine, options, progress=not args.quiet)
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
    configs = [cfg for _, cfg, _ in valid]
    if args.dry_run:  # writes nothing: the DB is only read, if there is one
        from byzance.results import open_db

        done: set[str] = set()
        if has_db:
            with open_db(args.db, readonly=True) as db:
                done = db.finished_ids()
        ids = {rid for _, _, rid in valid}
        print(
            f"{grid.name}: {total} configs, {len(invalid)} invalid, {len(ids)} distinct runs, "
            f"{len(ids & done)} already finished in {args.db}, {len(ids - done)} to run"
        )
        for point, _, rid in valid:
            state = "done" if rid in done else "todo"
            shown = ", ".join(f"{k}={v!r}" for k, v in point.coords.items())
            print(f"  {rid}  {state}  #{point.index} {shown}")
        return 0
    if not configs:
        raise UserError(f"no valid config to run in {args.grid}")
    print(
        f"{grid.name}: {len(configs)} runs ({args.jobs} job(s), "
        f"{_engine_label(args.engine, configs[0])}) -> {args.db}",
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
