"""The ``Engine`` interface: what runs a config's rounds, and how it is told to.

An engine (one module each, registered by name in ``byzance.engines.registry``) owns:

* ``Options``: a dataclass of its settings, each field declared with ``option(...)`` (default,
  constraint, help): the CLI builds the engine's flags from it (``byzance run --help``) and
  ``make_options`` validates values given by a user, a grid or the CLI in one place;
* ``protocols``: the protocols it runs (``byzance.protocols``; the config's ``protocol``);
* ``id_fields(config, options)``: the options that change the result, keyed in the run id
  (``byzance.results.run_id``); the others (addresses, timeouts, CPUs) are not, so a run
  resumes under new ones;
* ``check(config, options)``: everything checkable before any work (conditions on the
  vectors a rule receives, resources, addresses), raising ``ValueError``;
* ``run(config, options, on_metrics, progress=...) -> RunResult``: the training; every
  metric record goes to ``on_metrics`` as it is made (the runner alone writes the results
  database from it); a resumed run first replays the records it recovered.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from byzance.round.record import Record, RunResult
from byzance.validation import Constraint, validate_dataclass


def option(
    default: Any,
    constraint: Constraint,
    help: str,
    *,
    flag: str | None = None,
    metavar: str | None = None,
    cli: bool = True,
) -> Any:
    """A dataclass field of engine options: its default, its constraint, and its CLI flag
    (``--field-name`` unless ``flag``; ``cli=False`` keeps it out of the CLI)."""
    meta = {"constraint": constraint, "help": help, "flag": flag, "metavar": metavar, "cli": cli}
    if isinstance(default, (dict, list)):
        factory = type(default)
        return dataclasses.field(default_factory=lambda: factory(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def constraints_of(options_class: type) -> dict[str, Constraint]:
    """Field -> constraint of an options dataclass declared with ``option``."""
    return {
        f.name: f.metadata["constraint"]
        for f in dataclasses.fields(options_class)
        if "constraint" in f.metadata
    }


@dataclasses.dataclass
class NoOptions:
    """An engine without settings."""


class Engine:
    """Base class of the engines (see the module docstring)."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    protocols: ClassVar[tuple[str, ...]] = ("server",)
    #: whether a grid may run several of its runs at once, in worker processes (False for an
    #: engine that starts processes of its own, e.g. Ray's actors)
    parallel_runs: ClassVar[bool] = True
    #: whether it runs a sampled client population (``ExperimentConfig.n_clients``,
    #: ``byzance.round.clients``); ``check`` refuses one otherwise
    runs_population: ClassVar[bool] = False

    # -- options ------------------------------------------------------------------------
    def make_options(self, values: Any = None) -> Any:
        """``Options`` from a mapping (``None`` values left at their default), an ``Options``
        instance, or None; every field checked against its declared constraint."""
        if isinstance(values, self.Options):
            options = dataclasses.replace(values)
        else:
            given = {k: v for k, v in dict(values or {}).items() if v is not None}
            names = {f.name for f in dataclasses.fields(self.Options)}
            unknown = sorted(set(given) - names)
            if unknown:
                raise ValueError(
                    f"{self.Options.__name__}: unknown option(s) {unknown} for engine "
                    f"{self.name!r}; allowed: {', '.join(sorted(names)) or 'none'}"
                )
            options = self.Options(**given)
        validate_dataclass(options, constraints_of(self.Options))
        self.finish_options(options)
        return options

    def finish_options(self, options: Any) -> None:
        """Checks across fields and derived defaults, after each field is checked."""

    # -- the run --------------------------------------------------------------------------
    def label(self, config: Any) -> str:
        """The engine column of the results database: the name, and the protocol if not the
        trusted server (e.g. ``ray-decentralized``)."""
        return self.name if config.protocol == "server" else f"{self.name}-{config.protocol}"

    def id_fields(self, config: Any, options: Any) -> dict[str, Any]:
        """The options that change the result of ``config`` (keyed in its run id)."""
        return {}

    def check(self, config: Any, options: Any) -> None:
        """Raise ``ValueError`` if ``config`` cannot run on this engine with ``options``."""
        config.validate()
        if config.protocol not in self.protocols:
            from byzance.engines.registry import engines_running

            raise ValueError(
                f"ExperimentConfig.protocol: engine {self.name!r} does not run protocol "
                f"{config.protocol!r} (it runs: {', '.join(self.protocols)}; engines that "
                f"run it: {', '.join(engines_running(config.protocol)) or 'none'})"
            )
        if getattr(config, "n_clients", None) is not None and not self.runs_population:
            from byzance.engines.registry import available, get

            able = [name for name in available() if get(name).runs_population]
            raise ValueError(
                f"ExperimentConfig.n_clients: engine {self.name!r} does not run a sampled "
                f"client population, got n_clients={config.n_clients} (engines that do: "
                f"{', '.join(able) or 'none'})"
            )

    def run(
        self,
        config: Any,
        options: Any,
        on_metrics: Callable[[Record], None] | None = None,
        *,
        progress: bool = False,
    ) -> RunResult:
        raise NotImplementedError

    def execute(
        self,
        config: Any,
        options: Any = None,
        *,
        db: Any = None,
        overwrite: bool = False,
        progress: bool = False,
        on_metrics: Callable[[Record], None] | None = None,
        **run_kwargs: Any,
    ) -> RunResult:
        """Validate and check, then ``run`` with the run recorded in ``db`` (a path or an
        open ``ResultsDB``; ``byzance.results.record_run``) under its id, the one
        definition (``byzance.results.run_id`` with ``id_fields``). ``config``: an
        ``ExperimentConfig`` or a mapping of its fields; ``overwrite``: run again a run the
        database has as finished; ``run_kwargs`` go to ``run`` (e.g. test hooks)."""
        from byzance.results import record_run, run_id
        from byzance.sim.config import ExperimentConfig

        cfg = (
            config
            if isinstance(config, ExperimentConfig)
            else ExperimentConfig.from_dict(dict(config))
        )
        cfg.validate()
        opts = self.make_options(options)
        self.check(cfg, opts)
        rid = run_id(cfg.to_dict(), self.name, self.id_fields(cfg, opts))

        def train(record: Callable[[Record], None]) -> RunResult:
            def both(rec: Record) -> None:
                record(rec)
                if on_metrics is not None:
                    on_metrics(rec)

            return self.run(cfg, opts, both, progress=progress, **run_kwargs)

        label = self.label(cfg)
        result = record_run(db, cfg.to_dict(), label, rid, train, overwrite=overwrite)
        result.run_id = rid
        return result

    def describe(self) -> str:
        return f"{self.name}: {self.summary} (protocols: {', '.join(self.protocols)})"


def options_dict(options: Any) -> dict[str, Any]:
    """An options dataclass as a plain dict (for logs and summaries)."""
    if options is None:
        return {}
    if isinstance(options, Mapping):
        return dict(options)
    return dataclasses.asdict(options)
