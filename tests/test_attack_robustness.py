"""Gradient attacks on extreme but valid inputs: finite in, finite out (except ``inf``/``nan``),
and an absurd f refused before anything is allocated."""

from __future__ import annotations

import pytest
import torch

import byzance as bz
from byzance.attacks import GRADIENT_ATTACKS, create

#: every gradient attack but the two whose point is to send non-finite vectors
FINITE = sorted({cls.name for cls in GRADIENT_ATTACKS} - {"inf", "nan"})
H, F, D = 10, 3, 64


def honest(dtype: torch.dtype, value: float, seed: int = 0) -> torch.Tensor:
    """(H, D) values around ``value`` (positive and negative ones), finite in ``dtype``."""
    g = torch.Generator().manual_seed(seed)
    x = (0.5 + 0.4 * torch.randn(H, D, generator=g, dtype=torch.float64)) * value
    x[:, ::3] *= -1
    big = torch.finfo(dtype).max
    x = x.clamp(-big, big).to(dtype)
    assert torch.isfinite(x).all()
    return x


@pytest.mark.parametrize("name", FINITE)
@pytest.mark.parametrize(
    ("dtype", "value"),
    [
        (torch.float16, 1.0),  # large_norm's default scale 1e6 is beyond float16's 65504
        (torch.float16, 3e4),
        (torch.float16, 6e4),
        (torch.float32, 1e37),  # alie, optimal*: -inf; hidden_vulnerability: NaN (before)
        (torch.float32, 3e38),
        (torch.float64, 1e300),
    ],
)
@pytest.mark.parametrize("rule", ["median", "krum"])
def test_finite_honest_inputs_give_finite_byzantine_vectors(name, dtype, value, rule):
    attack = create(name, aggregator=bz.aggregators.create(rule, f=F))
    x = honest(dtype, value)
    out = attack(x, F)
    assert out.shape == (F, D) and out.dtype == dtype
    assert torch.isfinite(out).all(), f"{name} on {dtype} values ~{value:g}"


@pytest.mark.parametrize(
    "build",
    [
        lambda: create("large_norm(scale=1e300)"),
        lambda: create("ipm(epsilon=1e300)"),
        lambda: create("alie(z=1e300)"),
        lambda: create("gaussian(mu=1e300, sigma=1e300)"),
        lambda: create("hidden_vulnerability(scale=1e300)"),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_huge_scales_are_clamped_to_the_dtype(build, dtype):
    out = build()(honest(dtype, 1.0), F)
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert float(out.abs().max()) == torch.finfo(dtype).max  # pushed to the limit, not inf


def test_ordinary_inputs_unchanged_by_the_overflow_guards():
    x = honest(torch.float32, 1.0)
    mean = x.mean(0)
    torch.testing.assert_close(create("sign_flipping")(x, 2), -mean.expand(2, -1), rtol=0, atol=0)
    std, mu = torch.std_mean(x, dim=0)
    torch.testing.assert_close(create("alie(z=1.5)")(x, 1)[0], mu - 1.5 * std)


@pytest.mark.parametrize("name", ["hidden_vulnerability", "optimal_ipm", "optimal_alie"])
def test_absurd_f_is_refused_before_allocating(name):
    # f = 10^6 Byzantine rows: the aggregator's (h + f)^2 distance matrices alone are ~30 TB
    attack = create(name, aggregator=bz.aggregators.create("krum", f=1))
    x = honest(torch.float32, 1.0)
    with pytest.raises(ValueError, match=rf"{type(attack).__name__}: f=1000000 needs about .* GiB"):
        attack(x, 10**6)
    with pytest.raises(ValueError, match=r"f=1000000 needs about"):
        attack.forge(x, 10**6)  # the unchecked hot path too (the simulator calls it)
    assert attack(x, 2).shape == (2, D)


def test_absurd_f_for_a_plain_attack():
    x = torch.zeros(4, 1_000_000)
    with pytest.raises(ValueError, match=r"ALittleIsEnough: f=1000000000 needs about .* GiB"):
        create("alie(z=1.0)")(x, 10**9)  # a 4 PB output
