"""Behaviour shared by every rule and pre-aggregator: input kinds, dtypes, errors, composition."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import byzance as bz
from byzance.aggregators import REGISTRY, Chain, create

N, F, D = 11, 2, 6

#: every rule and pre-aggregator, built for f = F (those without f ignore it)
NAMES = sorted({cls.name for cls in REGISTRY.values()})


def build(name: str, f: int = F, rule: str = "average"):
    """The rule ``name``, or the pre-aggregator ``name`` followed by ``rule``."""
    if issubclass(REGISTRY[name], bz.aggregators.PreAggregator):
        return create(f"{name}+{rule}", f=f)
    return create(name, f=f)


def honest(n: int = N, d: int = D, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=dtype)


@pytest.mark.parametrize("name", NAMES)
def test_numpy_in_numpy_out_equal_to_torch(name):
    x = honest(dtype=torch.float64)
    out_t = build(name)(x)
    out_np = build(name)(x.numpy())
    assert isinstance(out_np, np.ndarray) and out_np.dtype == np.float64
    np.testing.assert_allclose(out_np, out_t.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_list_input_and_dtype_preserved(name):
    x = honest(dtype=torch.float64)
    out = build(name)(list(x))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64 and out.shape == (D,)
    out32 = build(name)(x.float())
    assert out32.dtype == torch.float32


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_and_input_untouched(name):
    x = honest()
    before = x.clone()
    a, b = build(name)(x), build(name)(x)
    assert torch.equal(x, before), "the rule modified its input in place"
    assert torch.equal(a, b), "same input, same output, bit for bit"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), 1e30])
def test_f_non_finite_inputs_keep_output_finite(name, bad):
    if name == "average":
        pytest.skip("the mean tolerates no Byzantine input")
    x = honest()
    x[:F] = bad
    out = build(name, rule="median")(x)
    assert torch.isfinite(out).all(), f"{name} output not finite with {F} inputs set to {bad}"


@pytest.mark.parametrize(
    "bad, error",
    [
        (torch.zeros(0, 3), ValueError),
        (torch.zeros(3), ValueError),
        (torch.zeros(3, 2, 2), ValueError),
        (torch.zeros(4, 3, dtype=torch.int64), TypeError),
        (np.zeros((4, 3), dtype=np.int32), TypeError),
        ([torch.zeros(3), torch.zeros(4)], ValueError),
        ([], ValueError),
        ("abc", TypeError),
    ],
)
def test_bad_input_clear_error(bad, error):
    with pytest.raises(error, match="Median"):
        bz.aggregators.Median()(bad)


def test_condition_error_names_rule_condition_values():
    with pytest.raises(ValueError, match=r"Krum requires n >= 2f \+ 3.*n=6.*f=2"):
        bz.aggregators.Krum(f=2)(honest(n=6))
    with pytest.raises(ValueError, match=r"TrimmedMean.*n > 2f.*n=4.*f=2"):
        bz.aggregators.TrimmedMean(f=2)(honest(n=4))


def test_negative_or_non_int_f_rejected():
    with pytest.raises(ValueError, match=r"Krum\.f: expected an int >= 0, got -1"):
        bz.aggregators.Krum(f=-1)
    with pytest.raises(TypeError, match=r"Krum\.f: expected an int >= 0, got 1\.5"):
        bz.aggregators.Krum(f=1.5)


def test_chain_equals_manual_composition_and_checks_received_count():
    x = honest(n=13)
    chain = Chain(bz.aggregators.NNM(f=2), bz.aggregators.TrimmedMean(f=2))
    manual = bz.aggregators.TrimmedMean(f=2)(bz.aggregators.NNM(f=2)(x))
    # the chain fuses NNM's mixing into the trimmed mean's kernel: same sums, another order
    torch.testing.assert_close(chain(x), manual, rtol=1e-6, atol=1e-6)
    # Krum on 10 inputs bucketed by 2 receives 5 vectors: 5 < 2*1+3 is false, fine; f=2 is not
    Chain(bz.aggregators.Bucketing(s=2, seed=0), bz.aggregators.Krum(f=1)).check(10)
    with pytest.raises(ValueError, match="Krum requires"):
        Chain(bz.aggregators.Bucketing(s=2, seed=0), bz.aggregators.Krum(f=2)).check(10)


def test_create_builds_chains_and_reports_bad_names():
    agg = create("nnm+trimmed_mean", f=2)
    assert isinstance(agg, Chain) and agg.rule.f == 2 and agg.pre[0].f == 2
    bucket = create("bucketing(s=3)+krum", f=1)
    assert bucket.pre[0].s == 3
    assert create("median", f=3).__class__ is bz.aggregators.Median
    with pytest.raises(ValueError, match="unknown aggregator 'krumm'"):
        create("krumm", f=1)
    with pytest.raises(ValueError, match="pre-aggregator"):
        create("nnm", f=1)
    with pytest.raises(ValueError, match="no parameter"):
        create("krum(q=2)", f=1)
    with pytest.raises(TypeError, match="pre-aggregator"):
        Chain(bz.aggregators.Median(), bz.aggregators.Median())
