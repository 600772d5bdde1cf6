"""The ``byzance`` command line's parser: commands, config flags, and each registered
engine's option flags, built from its ``Options`` (a new engine needs no edit here)."""

from __future__ import annotations

import argparse
import dataclasses
import textwrap
from typing import Any

from byzance import __version__, engines

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
  byzance run --engine ray --protocol decentralized  # Ray, no trusted server (docs/ray.md)
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
    (
        "--n-clients",
        "n_clients",
        int,
        "a population of N clients sampled per round (--set clients_per_round=20 "
        "--set byzantine_clients=0.1; docs/federated.md)",
    ),
    (
        "--gradient-estimator",
        "gradient_estimator",
        str,
        "backprop (default) or zero_order (FedZero; --set 'estimator_params={queries=20}'; "
        "docs/federated.md)",
    ),
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
    (
        "--protocol",
        "protocol",
        str,
        "server (trusted server, default), decentralized, async, byzsgd",
    ),
    (
        "--model-aggregator",
        "model_aggregator",
        str,
        "protocol decentralized: rule of the model exchange (default trimmed_mean)",
    ),
    (
        "--async-filter",
        "async_filter",
        str,
        "protocol async: kardam (default), lipschitz, frequency or none",
    ),
    (
        "--dampening",
        "dampening",
        str,
        "protocol async: staleness dampening, exponential (default), inverse or none",
    ),
    (
        "--byzantine-speed",
        "byzantine_speed",
        float,
        "protocol async: Byzantine workers compute this many times faster (default 1)",
    ),
    ("--n-servers", "n_servers", int, "protocol byzsgd: server replicas (default 5)"),
    ("--f-servers", "f_servers", int, "protocol byzsgd: Byzantine servers among them (default 1)"),
    (
        "--contraction-every",
        "contraction_every",
        int,
        "protocol byzsgd: median contraction of the servers' models every T steps (default 10)",
    ),
    (
        "--server-attack",
        "server_attack",
        str,
        "protocol byzsgd: the Byzantine servers' models, contraction (default) or an attack",
    ),
    (
        "--agreement",
        "agreement",
        str,
        "protocol decentralized (sim): averaging agreement none (default), mda, trimmed_mean",
    ),
)


class UserError(Exception):
    """An error in what the user asked for: one line, exit status 2."""


# -- parser ----------------------------------------------------------------------------------


def _engine_flags() -> dict[str, tuple[str, list[tuple[str, Any]]]]:
    """flag -> (dest, [(engine name, options field)]) over every registered engine's options."""
    flags: dict[str, tuple[str, list[tuple[str, Any]]]] = {}
    for name in engines.available():
        for f in dataclasses.fields(engines.get(name).Options):
            if not f.metadata.get("cli", False):
                continue
            flag = f.metadata.get("flag") or _flag(f.name)
            dest, users = flags.setdefault(flag, (f"engine_option_{f.name}", []))
            users.append((name, f))
    return flags


def _arg_type(f: Any) -> Any:
    text = str(f.type)
    for kind in (bool, int, float):
        if kind.__name__ in text.replace("None", ""):
            return kind
    return str


def _add_engine_flags(p: argparse.ArgumentParser) -> None:
    listing = "; ".join(engines.get(n).describe() for n in engines.available())
    g = p.add_argument_group(
        "engine",
        "where the rounds run; each option below applies to the engine in brackets "
        "(see docs/ray.md)",
    )
    g.add_argument("--engine", choices=engines.available(), default="sim", help=f"{listing}")
    g.add_argument(
        "--decentralized",
        dest="protocol",
        action="store_const",
        const="decentralized",
        help="same as --protocol decentralized",
    )
    for flag, (dest, users) in _engine_flags().items():
        f = users[0][1]
        names = ", ".join(sorted({u for u, _ in users}))
        kind = _arg_type(f)
        kwargs: dict[str, Any] = {"dest": dest, "help": f"[{names}] {f.metadata['help']}"}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
            kwargs["default"] = None
        else:
            kwargs["type"] = kind
            kwargs["metavar"] = f.metadata.get("metavar") or {int: "N", float: "X"}.get(
                kind, "VALUE"
            )
        g.add_argument(flag, **kwargs)


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
    run.add_argument(
        "--save-model", metavar="PATH", help="save the trained model (one rule) for byzance crash"
    )
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
    bench.add_argument("--protocol", metavar="NAME", help="set every config's protocol")
    bench.add_argument(
        "--model-aggregator", metavar="SPEC", help="set every config's model_aggregator"
    )
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
    from byzance.cli.crash import add_parser as add_crash_parser

    add_crash_parser(sub)
    from byzance.cli.scores import add_parsers as add_scores_parsers

    add_scores_parsers(sub)
    from byzance.cli.kappa import add_parser as add_kappa_parser

    add_kappa_parser(sub)
    return parser


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")
