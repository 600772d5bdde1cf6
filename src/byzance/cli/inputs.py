"""What the user asked for (config overrides, engine options) and how results are shown."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from byzance import engines
from byzance.cli.parser import FIELD_FLAGS, QUICKSTART_TOML, UserError, _engine_flags
from byzance.grid import load_toml, tomllib


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


def _engine_options(args: argparse.Namespace) -> Any:
    """The chosen engine's validated options from the flags given (``UserError`` for a flag
    of another engine or a bad value)."""
    chosen = engines.get(args.engine)
    values: dict[str, Any] = {}
    for flag, (dest, users) in _engine_flags().items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        fields = [f.name for name, f in users if name == args.engine]
        if not fields:
            owners = ", ".join(sorted({n for n, _ in users}))
            raise UserError(f"{flag} only applies to --engine {owners}")
        values[fields[0]] = value
    try:
        return chosen.make_options(values)
    except ImportError as err:
        raise UserError(str(err)) from None
    except (ValueError, TypeError) as err:
        raise UserError(str(err)) from None


def _engine_label(engine: str, config: Any) -> str:
    if config.protocol == "decentralized":
        return f"engine {engine}, decentralized (model aggregator {config.model_aggregator})"
    if config.protocol != "server":
        return f"engine {engine}, protocol {config.protocol}"
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


def _any_flag(args: argparse.Namespace) -> bool:
    return bool(args.aggregator or args.set) or any(
        getattr(args, dest) is not None for _, dest, _, _ in FIELD_FLAGS
    )
