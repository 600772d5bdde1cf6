"""Every constructor parameter of every registered rule, pre-aggregator and attack refuses
wrong values with one clear error (``ValueError`` / ``TypeError`` naming the class, the
parameter, the value and what is allowed), never another exception or a traceback from
inside (``OverflowError`` for ``inf``, ``'>' not supported between 'str' and 'int'``, ...).

The table is driven by the constructors' signatures (``inspect.signature``), so a parameter
added later is covered too; ``ACCEPTED`` lists the unusual values that are valid for a
parameter (``None`` for an optional one, ``1.5`` for a real, ...): every other value tried
must be refused.
"""

from __future__ import annotations

import inspect
import math

import pytest

import byzance as bz
from byzance import aggregators, attacks

HUGE = 10**30
#: the values tried on every parameter (label -> value)
VALUES = {
    "str": "x",
    "bool": True,
    "None": None,
    "inf": math.inf,
    "-inf": -math.inf,
    "nan": math.nan,
    "1.5": 1.5,
    "negative": -1,
    "huge": HUGE,
}
_REAL = {"1.5", "huge"}
_COUNT = {"huge"}
#: the labels of VALUES that a parameter accepts, by parameter name (then by class.name)
ACCEPTED: dict[str, set[str]] = {
    "f": _COUNT,
    "m": _COUNT | {"None"},
    "reference": _COUNT,
    "max_subsets": _COUNT,
    "iterations": _COUNT,
    "max_iter": _COUNT,
    "s": _COUNT,
    "coordinates": _COUNT,
    "steps": _COUNT,
    "points": _COUNT,
    "refine": _COUNT,
    "warmup": _COUNT,
    "budget": _COUNT,  # an int count (or a fraction in [0, 1])
    "sketch": _COUNT | {"None"},
    "tau": _REAL,
    "c": _REAL,
    "tol": _REAL,
    "eps": _REAL,
    "epsilon": _REAL,
    "sigma": _REAL,
    "low": {"1.5"},  # a huge low exceeds the default high: refused naming both
    "high": _REAL,
    "mu": _REAL | {"negative"},
    "z": _REAL | {"None"},
    "scale": _REAL,
    "HiddenVulnerability.scale": _REAL | {"None"},
    "HiddenVulnerability.aggregator": {"None"},
    "GradientInversion.aggregator": {"None"},
    "GradientInversion.input_range": {"None"},
    "GradientInversion.lr": _REAL,
    "warm_start": {"bool"},
    "center": {"None"},
    # refused whatever the value tried: seeds (a torch.Generator takes < 2^64), the required
    # aggregator of the Optimal attacks, names (base, mode), max_doublings (2^k a float)
}


def _classes(registry: dict[str, type]) -> list[tuple[str, type]]:
    return sorted({cls.name: cls for cls in registry.values()}.items())


RULES = _classes(aggregators.REGISTRY)
ATTACKS = _classes(attacks.REGISTRY)
CASES = [
    (kind, name, param)
    for kind, classes in (("rule", RULES), ("attack", ATTACKS))
    for name, cls in classes
    for param in inspect.signature(cls).parameters
]


def build(kind: str, name: str, param: str, value: object) -> object:
    """The registered class ``name`` built by name with ``param=value``."""
    if kind == "attack":
        agg = bz.aggregators.Krum(f=1)
        if param == "aggregator":
            return attacks.create(name, aggregator=value)
        return attacks.create(name, aggregator=agg, **{param: value})
    cls = aggregators.REGISTRY[name]
    if issubclass(cls, aggregators.PreAggregator):
        return aggregators.create(f"{name}+average", **{param: value})
    return aggregators.create(name, **{param: value})


def test_the_table_covers_parameters():
    assert len(CASES) >= 45
    names = {param for _, _, param in CASES}
    assert {"tau", "iterations", "max_iter", "seed", "s", "m", "reference", "mode"} <= names


@pytest.mark.parametrize(("kind", "name", "param"), CASES)
@pytest.mark.parametrize("label", list(VALUES))
def test_wrong_values_give_one_clear_error(kind, name, param, label):
    cls = (aggregators.REGISTRY if kind == "rule" else attacks.REGISTRY)[name]
    who = cls.__name__
    accepted = ACCEPTED.get(f"{who}.{param}", ACCEPTED.get(param, set()))
    value = VALUES[label]
    if label in accepted:
        build(kind, name, param, value)  # valid: no error
        return
    with pytest.raises((ValueError, TypeError)) as info:
        build(kind, name, param, value)
    message = str(info.value)  # (any other exception type fails the test)
    assert who in message and param in message, f"{who}({param}={value!r}): {message}"
    assert len(message) < 400


def test_reported_cases():
    # inf for integer parameters: an OverflowError traceback before
    for build_bad, pattern in [
        (lambda: bz.aggregators.GeometricMedian(max_iter=math.inf), r"GeometricMedian\.max_iter"),
        (lambda: bz.aggregators.CenteredClipping(iterations=math.inf), r"\.iterations: "),
        (lambda: bz.aggregators.Bucketing(seed=math.inf), r"Bucketing\.seed: expected an int"),
        (lambda: bz.aggregators.Bucketing(seed=2**64), r"\.seed: expected an int in \[0, 1844"),
        (lambda: bz.attacks.Gaussian(seed=2**70), r"Gaussian\.seed: expected an int in \[0, "),
        (lambda: bz.aggregators.CenteredClipping(iterations=1.5), r"got 1\.5$"),
        (lambda: bz.aggregators.GeometricMedian(max_iter=1.5), r"max_iter: .*got 1\.5$"),
        (lambda: bz.aggregators.CenteredClipping(tau=True), r"\.tau: expected a finite float"),
        (lambda: bz.aggregators.Bucketing(s=True), r"Bucketing\.s: expected an int >= 1"),
        (lambda: bz.aggregators.create("cc", tau="big"), r"CenteredClipping\.tau: .* 'big'"),
        (lambda: bz.attacks.HiddenVulnerability(max_doublings=2000), r"in \[1, 1023\]"),
        (lambda: bz.attacks.create("optimal(base='nope')", aggregator=bz.aggregators.Krum(1)),
         r"Optimal\.base: expected a linear attack .* or its name, got 'nope'"),
    ]:  # fmt: skip
        with pytest.raises((ValueError, TypeError), match=pattern):
            build_bad()
    # the same message through the simulator's config
    from byzance.sim import ExperimentConfig

    cfg = ExperimentConfig(aggregator="centered_clipping", aggregator_params={"tau": "big"})
    with pytest.raises(ValueError, match=r"CenteredClipping\.tau: expected a finite float > 0"):
        cfg.validate()


def test_constraint_kinds_added_for_the_rules_and_attacks():
    from byzance.validation import (
        AnyOf,
        Integer,
        ParameterTypeError,
        Real,
        Vector,
        check_param,
        param_error,
    )

    budget = AnyOf(Integer(low=0, floats=False), Real(low=0, high=1))
    assert check_param("B", "budget", 3, budget) == 3
    assert check_param("B", "budget", 1.0, budget) == 1.0  # a fraction, not the count 1
    with pytest.raises(ParameterTypeError, match=r"^B\.budget: expected an int >= 0 or a float"):
        check_param("B", "budget", "x", budget)
    with pytest.raises(ValueError, match=r"float in \[0, 1\], got 1\.5$"):
        check_param("B", "budget", 1.5, budget)
    assert check_param("C", "center", [1.0, 2.0], Vector()) == [1.0, 2.0]
    for bad in (1.5, "x", True, [[1.0]], [], [1.0, math.nan]):
        with pytest.raises(ValueError, match=r"^C\.center: expected a 1-D vector of finite"):
            check_param("C", "center", bad, Vector())
    error = param_error("O.base", "a linear attack", "nope", wrong_type=True)
    assert isinstance(error, TypeError)
    assert str(error) == "O.base: expected a linear attack, got 'nope'"
