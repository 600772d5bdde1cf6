"""``byzance.validation``: declared parameter constraints and their one message format."""

from __future__ import annotations

import dataclasses
import math
import re
import types
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import byzance as bz
from byzance.aggregators.base import check_f
from byzance.attacks.base import check_int, check_num_byzantine, check_real
from byzance.sim.config import CONSTRAINTS, ExperimentConfig
from byzance.validation import (
    Boolean,
    Integer,
    Mapping,
    OneOf,
    OptionalOf,
    ParameterError,
    ParameterTypeError,
    Real,
    String,
    check_param,
    check_params,
    validate_dataclass,
)


def rejects(constraint, value, *, wrong_type=False):
    """``constraint.check(value)`` raises; a wrong type raises the TypeError subclass."""
    with pytest.raises(ParameterError) as info:
        constraint.check(value)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, TypeError) is wrong_type
    return str(info.value)


# ---------------------------------------------------------------------- Integer
def test_integer_types_and_coercion():
    c = Integer(low=1)
    assert c.check(3) == 3
    out = c.check(3.0)
    assert out == 3 and type(out) is int
    out = c.check(np.int64(4))
    assert out == 4 and type(out) is int
    for bad in (True, False, 2.5, "3", None, math.nan, math.inf, np.float64("nan")):
        rejects(c, bad, wrong_type=True)


def test_integer_bounds_are_inclusive():
    c = Integer(low=-2, high=5)
    assert [c.check(v) for v in (-2, 0, 5)] == [-2, 0, 5]
    rejects(c, -3)
    rejects(c, 6)
    assert Integer(high=5).check(-(10**30)) == -(10**30)
    assert c.describe() == "an int in [-2, 5]"
    assert Integer(low=1).describe() == "an int >= 1"
    assert Integer(high=3).describe() == "an int <= 3"
    assert Integer().describe() == "an int"


# ---------------------------------------------------------------------- Real
def test_real_open_lower_bound():
    c = Real(low=0, closed="neither")
    assert rejects(c, 0.0) == "expected a finite float > 0, got 0.0"
    rejects(c, 0)
    rejects(c, -1e-300)
    assert c.check(1e-300) == 1e-300
    out = c.check(2)
    assert out == 2.0 and type(out) is float


@pytest.mark.parametrize(
    ("closed", "text", "zero", "one"),
    [
        ("both", "a float in [0, 1]", True, True),
        ("left", "a float in [0, 1)", True, False),
        ("right", "a float in (0, 1]", False, True),
        ("neither", "a float in (0, 1)", False, False),
    ],
)
def test_real_closed_ends(closed, text, zero, one):
    c = Real(low=0, high=1, closed=closed)
    assert c.describe() == text
    for value, ok in ((0.0, zero), (1.0, one)):
        if ok:
            assert c.check(value) == value
        else:
            rejects(c, value)
    assert c.check(0.5) == 0.5
    rejects(c, -0.1)
    rejects(c, 1.1)
    rejects(c, math.nan)


def test_real_finiteness_and_types():
    c = Real()
    assert c.describe() == "a finite float"
    for bad in (math.nan, math.inf, -math.inf, 10**400):
        rejects(c, bad)
    for bad in (True, "1.0", None, [1.0]):
        rejects(c, bad, wrong_type=True)
    assert math.isinf(Real(finite=False).check(math.inf))
    assert Real(finite=False).describe() == "a float"
    assert Real(low=0.5).describe() == "a finite float >= 0.5"
    assert Real(high=0, closed="left").describe() == "a finite float < 0"
    assert Real(low=0.0, high=1e-3).describe() == "a float in [0, 0.001]"
    assert type(Real().check(np.float32(0.5))) is float
    with pytest.raises(ValueError, match="closed must be"):
        Real(low=0, closed="open")


# ---------------------------------------------------------------------- the others
def test_boolean():
    c = Boolean()
    assert c.check(True) is True and c.check(False) is False
    for bad in (0, 1, "true", None):
        rejects(c, bad, wrong_type=True)
    assert c.describe() == "a bool"


def test_string():
    c = String()
    assert c.check("digits") == "digits"
    rejects(c, "")
    rejects(c, "   ")
    rejects(c, 3, wrong_type=True)
    rejects(c, Path("x"), wrong_type=True)
    assert String(nonempty=False).check("") == ""
    p = String(path=True)
    assert p.check(Path("/tmp/data")) == "/tmp/data"
    assert p.describe() == "a path string"
    assert c.describe() == "a non-empty string"


def test_one_of():
    c = OneOf("iid", "dirichlet", "gamma")
    assert c.describe() == "one of iid, dirichlet, gamma"
    assert c.check("gamma") == "gamma"
    assert rejects(c, "foo") == "expected one of iid, dirichlet, gamma, got 'foo'"
    rejects(c, ["iid"])
    rejects(c, np.array(["iid", "gamma"]))
    nums = OneOf(1, 2)
    assert nums.check(2) == 2
    rejects(nums, True)
    rejects(nums, 2.0)
    with pytest.raises(ValueError):
        OneOf()


def test_optional_of():
    c = OptionalOf(Integer(low=1))
    assert c.check(None) is None
    assert c.check(2.0) == 2
    assert c.describe() == "an int >= 1 or None"
    assert rejects(c, 0) == "expected an int >= 1 or None, got 0"
    rejects(c, "x", wrong_type=True)


def test_mapping():
    c = Mapping()
    d = {"f": 1}
    assert c.check(d) is d
    assert c.check(types.MappingProxyType({"a": 1})) == {"a": 1}
    assert c.describe() == "a dict of keyword parameters"
    rejects(c, {1: 2})
    rejects(c, [("a", 1)], wrong_type=True)
    vals = Mapping(Real(low=0))
    assert vals.check({"GPU": 1}) == {"GPU": 1.0}
    assert vals.describe() == "a dict of str keys to a finite float >= 0"
    rejects(vals, {"GPU": -1})


# ---------------------------------------------------------------------- messages
def test_one_message_format():
    with pytest.raises(ParameterError) as info:
        check_param("RayOptions", "quorum", 0, OptionalOf(Integer(low=1)))
    assert str(info.value) == "RayOptions.quorum: expected an int >= 1 or None, got 0"

    class Rule:
        pass

    with pytest.raises(ParameterTypeError) as info:
        check_param(Rule(), "tau", "big", Real(low=0, closed="neither"))
    assert str(info.value) == "Rule.tau: expected a finite float > 0, got 'big'"
    long = "x" * 500
    message = rejects(OneOf("a"), long)
    assert len(message) < 120 and message.endswith("...")


def test_check_params():
    constraints = {"m": Integer(low=1), "tau": Real(low=0)}
    assert check_params("MultiKrum", {"m": 2.0}, constraints) == {"m": 2}
    out = check_params("MultiKrum", {"m": 3, "tau": 1}, constraints)
    assert out == {"m": 3, "tau": 1.0} and type(out["tau"]) is float
    with pytest.raises(ValueError, match=r"MultiKrum: unknown parameter\(s\) \['q'\]; allowed: m"):
        check_params("MultiKrum", {"q": 1}, constraints)
    with pytest.raises(ValueError, match=r"^MultiKrum\.m: expected an int >= 1, got 0$"):
        check_params("MultiKrum", {"m": 0}, constraints)


@dataclasses.dataclass
class Options:
    timeout: float = 60.0
    retries: int = 3
    name: str | None = None


OPTIONS = {
    "timeout": Real(low=0, closed="neither"),
    "retries": Integer(low=0),
    "name": OptionalOf(String()),
}


def test_validate_dataclass_coerces_in_place_and_names_the_field():
    opts = Options(timeout=5, retries=2.0)
    assert validate_dataclass(opts, OPTIONS) is None
    assert opts == Options(timeout=5.0, retries=2)
    assert type(opts.timeout) is float and type(opts.retries) is int
    with pytest.raises(ValueError, match=r"^Options\.retries: expected an int >= 0, got -1$"):
        validate_dataclass(Options(retries=-1), OPTIONS)
    with pytest.raises(ValueError, match=r"^Engine\.timeout: "):
        validate_dataclass(Options(timeout=0), OPTIONS, owner="Engine")
    # the first violation in the table's order is reported
    with pytest.raises(ValueError, match=r"Options\.timeout"):
        validate_dataclass(Options(timeout=-1, retries=-1), OPTIONS)
    with pytest.raises(TypeError, match="no field 'missing'"):
        validate_dataclass(Options(), {"missing": Integer()})


def test_validate_dataclass_frozen():
    @dataclasses.dataclass(frozen=True)
    class Frozen:
        k: int = 1

    obj = Frozen(k=4.0)
    validate_dataclass(obj, {"k": Integer(low=1)})
    assert obj.k == 4 and type(obj.k) is int


# ---------------------------------------------------------------------- users
def test_every_experiment_config_field_is_declared():
    missing = sorted(set(ExperimentConfig.field_names()) - set(CONSTRAINTS))
    assert not missing, f"add these ExperimentConfig fields to sim.config.CONSTRAINTS: {missing}"


def test_experiment_config_uses_the_declared_constraints():
    c = ExperimentConfig(rounds=3.0, lr=1, data_dir=Path("/data"))
    assert c.rounds == 3 and type(c.rounds) is int
    assert c.lr == 1.0 and type(c.lr) is float
    assert c.data_dir == "/data"
    for field, bad in [("lr", math.nan), ("alpha", math.inf), ("lr", True), ("seed", -1)]:
        with pytest.raises(ValueError, match=rf"^ExperimentConfig\.{field}: expected "):
            ExperimentConfig(**{field: bad})
    with pytest.raises(ValueError, match="expected one of iid, dirichlet, gamma, extreme"):
        ExperimentConfig(heterogeneity="sorted")
    with pytest.raises(ValueError, match=r"ExperimentConfig\.device: expected a non-empty string"):
        ExperimentConfig(device="")


def test_rule_and_attack_checks_use_the_same_format():
    assert check_f("Krum", 2.0) == 2
    assert bz.aggregators.Krum(f=np.int64(1)).f == 1
    with pytest.raises(ValueError, match=re.escape("Krum.f: expected an int >= 0, got -1")):
        check_f("Krum", -1)
    with pytest.raises(TypeError, match=re.escape("NNM.f: expected an int >= 0, got '1'")):
        bz.aggregators.NNM(f="1")
    assert check_num_byzantine("ALIE", 2) == 2
    with pytest.raises(ValueError, match=re.escape("ALIE.f: expected an int >= 1, got 0")):
        check_num_byzantine("ALIE", 0)
    assert check_real("IPM", "epsilon", 1) == 1.0
    with pytest.raises(ValueError, match=re.escape("IPM.epsilon: expected a finite float > 0")):
        check_real("IPM", "epsilon", 0.0, low=0.0, strict=True)
    assert check_real("IPM", "epsilon", 0.0, low=0.0) == 0.0
    with pytest.raises(ValueError, match=re.escape("Mimic.warmup: expected an int >= 1, got 0")):
        check_int("Mimic", "warmup", 0, low=1)


# ---------------------------------------------------------------------- properties
@given(st.integers(-1000, 1000), st.integers(-(10**6), 10**6))
def test_integer_low_accepts_exactly_the_ints_above(low, value):
    c = Integer(low=low)
    if value >= low:
        assert c.check(value) == value
        assert c.check(float(value)) == value
    else:
        with pytest.raises(ParameterError, match=rf"expected an int >= {low}, got {value}$"):
            c.check(value)


@given(
    st.floats(-10, 10),
    st.floats(-10, 10),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["both", "left", "right", "neither"]),
)
def test_real_interval_matches_its_definition(a, b, value, closed):
    low, high = min(a, b), max(a, b)
    c = Real(low=low, high=high, closed=closed)
    above = value >= low if closed in ("both", "left") else value > low
    below = value <= high if closed in ("both", "right") else value < high
    if above and below:
        assert c.check(value) == value
    else:
        rejects(c, value)
