"""Benchmark grids: a TOML file = a base config + lists to sweep; expansion, validation, running.

A grid file::

    name = "robustness"            # optional
    [base]                         # ExperimentConfig fields shared by every run
    dataset = "digits"
    rounds = 100
    [sweep]                        # Cartesian product of these lists (last key varies fastest)
    aggregator = ["average", "nnm+trimmed_mean", "krum"]
    attack = ["none", "alie", "sign_flipping"]
    f = [1, 3]
    heterogeneity = ["iid", {heterogeneity = "dirichlet", alpha = 0.1}]
    seed = [0, 1, 2]

A list item that is a table sets several fields together (``{heterogeneity = "dirichlet",
alpha = 0.1}``), so dependent settings are swept without useless combinations; for such a key
the name is only a label. ``aggregator_params`` and ``attack_params`` items are values (tables).

Every expanded config is validated (``ExperimentConfig.from_dict(...).validate()``) before any
run starts (``byzance.grid.bench`` runs them).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from byzance.runner import build_config

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    try:
        import tomli as tomllib  # type: ignore[no-redef]
    except ModuleNotFoundError:
        tomllib = None  # type: ignore[assignment]

#: config fields whose values are tables (a sweep item for them is a value, not joint fields)
DICT_FIELDS = frozenset({"aggregator_params", "attack_params"})
GRID_KEYS = ("name", "description", "base", "sweep")


class GridError(ValueError):
    """A problem with a grid file or one of its expanded configs (a user error)."""


@dataclass
class GridPoint:
    """One expanded config: ``coords`` are the swept fields and values that produced it."""

    index: int
    coords: dict[str, Any]
    config: dict[str, Any]

    def describe(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.coords.items())
        return f"grid entry #{self.index} ({shown or 'base'})"


@dataclass
class Grid:
    name: str
    base: dict[str, Any]
    sweep: dict[str, list[Any]]
    points: list[GridPoint] = field(default_factory=list)


def parse_grid(data: Mapping[str, Any], source: str = "grid") -> Grid:
    """Check the layout of a parsed grid file and expand it."""
    unknown = sorted(set(data) - set(GRID_KEYS))
    if unknown:
        raise GridError(
            f"{source}: unknown top-level key(s) {unknown}; allowed: {list(GRID_KEYS)} "
            "(config fields go in [base], lists to sweep in [sweep])"
        )
    base = data.get("base", {})
    sweep = data.get("sweep", {})
    for key, value in (("base", base), ("sweep", sweep)):
        if not isinstance(value, dict):
            raise GridError(f"{source}: [{key}] must be a table, got {type(value).__name__}")
    for key, values in sweep.items():
        if not isinstance(values, list) or not values:
            raise GridError(f"{source}: sweep.{key} must be a non-empty list, got {values!r}")
        for item in values:
            if isinstance(item, dict) and key not in DICT_FIELDS and not item:
                raise GridError(f"{source}: sweep.{key} has an empty table")
    grid = Grid(name=str(data.get("name", Path(source).stem)), base=dict(base), sweep=dict(sweep))
    grid.points = expand(grid.base, grid.sweep)
    return grid


def load_grid(path: str | Path) -> Grid:
    """Read and expand a grid TOML file (``GridError`` if it is malformed)."""
    return parse_grid(load_toml(path, "grid file"), str(path))


def load_toml(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """Parse a TOML file; ``GridError`` (a ``ValueError``) if missing or malformed."""
    if tomllib is None:  # pragma: no cover
        raise GridError("reading TOML files on Python 3.10 needs tomli: pip install tomli")
    path = Path(path)
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise GridError(f"{what} {str(path)!r} not found") from None
    except IsADirectoryError:
        raise GridError(f"{what} {str(path)!r} is a folder, expected a .toml file") from None
    except tomllib.TOMLDecodeError as err:
        raise GridError(f"{what} {str(path)!r} is not valid TOML: {err}") from None


def expand(base: Mapping[str, Any], sweep: Mapping[str, Sequence[Any]]) -> list[GridPoint]:
    """Cartesian product of the sweep lists applied on top of ``base`` (file order kept)."""
    keys = list(sweep)
    points = []
    for index, combo in enumerate(itertools.product(*(sweep[k] for k in keys))):
        config = dict(base)
        coords: dict[str, Any] = {}
        for key, item in zip(keys, combo, strict=True):
            if isinstance(item, dict) and key not in DICT_FIELDS:
                config.update(item)
                coords.update(item)
            else:
                config[key] = item
                coords[key] = item
        points.append(GridPoint(index=index, coords=coords, config=config))
    return points


def validate_points(
    points: Sequence[GridPoint], engine: str = "sim", options: Any = None
) -> tuple[list[tuple[GridPoint, Any]], list[tuple[GridPoint, str]]]:
    """Split points into ``(point, ExperimentConfig)`` that validate and run on ``engine``
    with ``options`` (``Engine.check``), and ``(point, error)``."""
    from byzance import engines

    eng = engines.get(engine)
    opts = eng.make_options(options)
    valid, invalid = [], []
    for point in points:
        try:
            cfg = build_config(point.config)
            eng.check(cfg, opts)
            valid.append((point, cfg))
        except (ValueError, TypeError) as err:
            invalid.append((point, str(err)))
    return valid, invalid
