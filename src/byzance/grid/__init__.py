"""Benchmark grids: a TOML file = a base config + lists to sweep (``spec``), run into a results
database, in parallel and resumable (``bench``)."""

from byzance.grid.bench import BenchSummary, exclusive_bench, run_grid
from byzance.grid.spec import (
    DICT_FIELDS,
    GRID_KEYS,
    Grid,
    GridError,
    GridPoint,
    expand,
    load_grid,
    load_toml,
    parse_grid,
    tomllib,
    validate_points,
)
from byzance.progress import RunsProgress as Progress
from byzance.runner import build_config, execute_run, run_key

__all__ = [
    "DICT_FIELDS",
    "GRID_KEYS",
    "BenchSummary",
    "Grid",
    "GridError",
    "GridPoint",
    "Progress",
    "build_config",
    "execute_run",
    "exclusive_bench",
    "expand",
    "load_grid",
    "load_toml",
    "parse_grid",
    "run_grid",
    "run_key",
    "tomllib",
    "validate_points",
]
