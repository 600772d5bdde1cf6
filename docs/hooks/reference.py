"""MkDocs hook: the reference pages are generated from the code, so they cannot drift.

A page writes a marker on a line of its own, ``<!-- byzance:NAME ARG -->``, and the marker is
replaced at build time by markdown built from the registries:

``rules`` / ``pre-aggregators``
    a table of every registered rule (name, aliases, the smallest n each f accepts, found by
    asking the rule's own ``check``), then each class's docstring (mkdocstrings);
``attacks``
    the same for the gradient and data attacks;
``engines`` / ``protocols``
    every registered engine (its options, their constraints and help) / every protocol (its
    fields and defaults);
``config``
    every ``ExperimentConfig`` field: type, default, constraint;
``cli COMMAND``
    ``byzance COMMAND --help`` as the parser prints it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import io
import re
from typing import Any

#: mkdocstrings options: the class docstring only
NO_MEMBERS = ("    options:", "      members: []")
MARKER = re.compile(r"^<!-- byzance:([a-z-]+)(?: ([a-z-]+))? -->$", re.MULTILINE)


def _aliases(registry: dict[str, type], cls: type) -> str:
    names = sorted(n for n, c in registry.items() if c is cls and n != cls.name)
    return ", ".join(f"`{n}`" for n in names) or "–"


def _smallest_n(cls: type) -> str:
    """The smallest n the rule accepts for f = 1, 2, 3 (from its own ``check``)."""
    takes_f = "f" in inspect.signature(cls).parameters
    out = []
    for f in (1, 2, 3) if takes_f else (0,):
        rule = cls(f=f) if takes_f else cls()
        smallest = next((n for n in range(1, 40) if _accepts(rule, n)), None)
        out.append(str(smallest) if smallest is not None else "–")
    return " / ".join(out) if takes_f else f"{out[0]} (no f)"


def _accepts(rule: Any, n: int) -> bool:
    try:
        rule.check(n)
    except ValueError:
        return False
    return True


def _summary(cls: type) -> str:
    doc = (cls.__doc__ or "").strip().split("\n\n")[0]
    doc = re.sub(r":math:`([^`]+)`", r"\1", " ".join(doc.split()))
    return doc.replace("|", "\\|")


def _rules(kind: str) -> str:
    from byzance import aggregators

    classes = aggregators.RULES if kind == "rules" else aggregators.PRE_AGGREGATORS
    lines = [
        "| name | aliases | smallest n for f = 1 / 2 / 3 | definition |",
        "|---|---|---|---|",
    ]
    for cls in classes:
        lines.append(
            f"| `{cls.name}` | {_aliases(aggregators.REGISTRY, cls)} | {_smallest_n(cls)} "
            f"| {_summary(cls)} |"
        )
    lines.append("")
    for cls in classes:
        lines += [f"::: {cls.__module__}.{cls.__qualname__}", *NO_MEMBERS, ""]
    return "\n".join(lines)


def _attacks() -> str:
    from byzance import attacks

    lines = []
    for title, classes in (
        ("Gradient attacks", attacks.GRADIENT_ATTACKS),
        ("Data attacks", attacks.DATA_ATTACKS),
    ):
        lines += [f"## {title}", "", "| name | aliases | what it sends |", "|---|---|---|"]
        for cls in classes:
            lines.append(
                f"| `{cls.name}` | {_aliases(attacks.REGISTRY, cls)} | {_summary(cls)} |"
            )
        lines.append("")
        for cls in classes:
            lines += [f"::: {cls.__module__}.{cls.__qualname__}", *NO_MEMBERS, ""]
    return "\n".join(lines)


def _engines() -> str:
    from byzance import engines
    from byzance.engines.base import constraints_of

    lines = []
    for name in engines.available():
        eng = engines.get(name)
        cls = type(eng)
        lines += [
            f"## `{name}`",
            "",
            f"{eng.summary}. Protocols: {', '.join(f'`{p}`' for p in eng.protocols)}.",
            "",
        ]
        fields = dataclasses.fields(eng.Options)
        if fields:
            cons = constraints_of(eng.Options)
            lines += ["| option | default | constraint | meaning |", "|---|---|---|---|"]
            for f in fields:
                meta = f.metadata
                default = f.default if f.default is not dataclasses.MISSING else "–"
                con = cons.get(f.name)
                lines.append(
                    f"| `{f.name}` | `{default!r}` | {con.describe() if con else '–'} "
                    f"| {meta.get('help', '')} |"
                )
            lines.append("")
        lines += [f"::: {cls.__module__}.{cls.__qualname__}", *NO_MEMBERS, ""]
    return "\n".join(lines)


def _protocols() -> str:
    from byzance import engines, protocols

    lines = ["| protocol | what it is | fields (default) | engines |", "|---|---|---|---|"]
    for p in protocols.PROTOCOLS.values():
        fields = ", ".join(f"`{k}` (`{v!r}`)" for k, v in p.fields.items()) or "–"
        runs = ", ".join(f"`{e}`" for e in engines.engines_running(p.name))
        lines.append(f"| `{p.name}` | {p.summary} | {fields} | {runs} |")
    return "\n".join(lines)


def _config() -> str:
    from byzance.sim.config import CONSTRAINTS, ExperimentConfig

    lines = ["| field | default | constraint |", "|---|---|---|"]
    cfg = ExperimentConfig()
    for f in dataclasses.fields(ExperimentConfig):
        con = CONSTRAINTS.get(f.name)
        lines.append(
            f"| `{f.name}` | `{getattr(cfg, f.name)!r}` | {con.describe() if con else '–'} |"
        )
    lines += ["", "::: byzance.sim.config.ExperimentConfig", *NO_MEMBERS]
    return "\n".join(lines)


def _cli(command: str | None) -> str:
    from byzance.cli.parser import build_parser

    parser = build_parser()
    argv = [command, "--help"] if command else ["--help"]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.suppress(SystemExit):
        parser.parse_args(argv)
    return "```text\n" + buf.getvalue().rstrip() + "\n```"


def generate(name: str, arg: str | None) -> str:
    """The markdown that replaces ``<!-- byzance:name arg -->``."""
    if name in ("rules", "pre-aggregators"):
        return _rules(name)
    makers: dict[str, Any] = {
        "attacks": _attacks,
        "engines": _engines,
        "protocols": _protocols,
        "config": _config,
    }
    if name == "cli":
        return _cli(arg)
    if name not in makers:
        raise ValueError(f"docs: unknown marker byzance:{name}")
    return makers[name]()


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    return MARKER.sub(lambda m: generate(m.group(1), m.group(2)), markdown)
