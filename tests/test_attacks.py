"""Attacks: formulas on hand values, adaptive attacks vs their base, API contracts, data attacks."""

from __future__ import annotations

import itertools
import math
from statistics import NormalDist

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from byzance import aggregators as agg
from byzance import attacks as atk

HONEST = torch.tensor([[1.0, 2.0], [3.0, 4.0]])


def cloud(h: int = 23, d: int = 40, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    """Honest gradients: a common mean of norm 1 plus per-worker Gaussian noise."""
    gen = torch.Generator().manual_seed(seed)
    mu = torch.randn(d, generator=gen, dtype=dtype)
    mu = mu / mu.norm()
    return mu + 0.5 * torch.randn(h, d, generator=gen, dtype=dtype) / math.sqrt(d) * 3


def damage(rule, honest: torch.Tensor, byz: torch.Tensor) -> float:
    out = rule.aggregate(torch.cat([honest, byz]))
    return float((out - honest.mean(0)).norm())


def make_rule(spec: str, f: int):
    try:
        rule = agg.create(spec, f=f)
        rule.aggregate(cloud(10, 4))
    except NotImplementedError:
        pytest.skip(f"{spec} not implemented yet")
    return rule


# --- formulas on hand values -------------------------------------------------------------


def test_sign_flipping_is_minus_mean():
    out = atk.SignFlipping()(HONEST, 3)
    assert torch.equal(out, torch.tensor([[-2.0, -3.0]] * 3))


def test_ipm_is_minus_epsilon_mean():
    out = atk.InnerProductManipulation(epsilon=0.5)(HONEST, 2)
    assert torch.allclose(out, torch.tensor([[-1.0, -1.5]] * 2))
    assert torch.allclose(atk.create("ipm")(HONEST, 1), torch.tensor([[-0.2, -0.3]]))


def test_alie_is_mean_minus_z_std():
    honest = torch.tensor([[0.0, 0.0], [2.0, 4.0]])  # mean (1, 2), unbiased std (sqrt2, 2sqrt2)
    out = atk.ALittleIsEnough(z=1.0)(honest, 2)
    expected = torch.tensor([1 - math.sqrt(2), 2 - 2 * math.sqrt(2)])
    assert torch.allclose(out, expected.expand(2, 2))


@pytest.mark.parametrize(
    "h, d",
    [(1, 600_000), (2, 262_145), (10, 431_080), (33, 20_000), (3, 101), (5, 129), (4, 1_000)],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_alie_line_kernel_agrees_with_the_torch_path(monkeypatch, h, d, dtype):
    from byzance.attacks import alie
    from byzance.kernels import moments

    monkeypatch.setattr(moments, "_KERNEL_MIN_SIZE", 1)
    g = torch.Generator().manual_seed(h + d)
    x = (torch.randn(h, d, generator=g, dtype=torch.float64) * 1e-2 + 3.0).to(dtype)
    x[0, 7] = float("inf")
    x[-1, 11] = float("nan")
    assert moments.use_moments_kernel(x)
    mean, direction = alie.honest_line(x)
    monkeypatch.setattr(moments, "_kernel_enabled", False)
    ref_mean, ref_direction = alie.honest_line(x)
    assert mean.dtype == direction.dtype == dtype
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(mean, ref_mean, rtol=tol, atol=0, equal_nan=True)
    torch.testing.assert_close(direction, ref_direction, rtol=1e-4, atol=tol, equal_nan=True)
    if h == 1:  # one honest vector: no spread
        assert float(direction[100]) == 0.0
    # against float64 by hand on a finite coordinate
    col = x[:, 100].double()
    assert abs(float(mean[100]) - float(col.mean())) <= 1e-6 * 3
    if h > 1:
        assert abs(-float(direction[100]) - float(col.std())) <= 1e-4 * float(col.std()) + 1e-9


@pytest.mark.parametrize("h", [1, 2, 3, 4, 5, 8, 9])
@pytest.mark.parametrize("d", [1, 12, 127, 128, 129, 1_000])
def test_alie_line_kernel_blocks_tails_and_chunks(h, d):
    """The compiled kernel's full blocks (128 coordinates, rows 4 at a time), its tail block
    (d not a multiple of 128, or d < 128) and its spare rows (h not a multiple of 4) against
    float64 by hand; the result does not depend on the number of chunks (bit for bit)."""
    from byzance.kernels import moments

    g = torch.Generator().manual_seed(7 * h + d)
    x = (torch.randn(h, d, generator=g, dtype=torch.float64) * 1e-2 + 3.0).float().numpy()
    kernel = moments._compiled()
    outs = []
    for chunks in (1, 3, 8, 10_000):
        mean, direction = np.empty(d, np.float32), np.empty(d, np.float32)
        kernel(x, mean, direction, chunks)
        outs.append((mean, direction))
    for mean, direction in outs[1:]:
        assert np.array_equal(mean, outs[0][0]) and np.array_equal(direction, outs[0][1])
    mean, direction = outs[0]
    x64 = x.astype(np.float64)
    ref_mean = x64.mean(axis=0)
    ref_std = x64.std(axis=0, ddof=1) if h > 1 else np.zeros(d)
    np.testing.assert_allclose(mean, ref_mean.astype(np.float32), rtol=0, atol=0)
    np.testing.assert_allclose(-direction, ref_std, rtol=2e-6, atol=0)


@pytest.mark.parametrize(
    ("n", "f", "z"),
    [(50, 12, 0.5828), (30, 7, 0.5244), (25, 5, 0.4677), (50, 24, 1.7507), (11, 1, 0.1142)],
)
def test_alie_z_max_matches_paper_formula(n, f, z):
    # s = floor(n/2 + 1) - f; z = Phi^-1((n - s) / n); e.g. n=50, f=24 -> s=2, Phi^-1(0.96)
    s = math.floor(n / 2 + 1) - f
    assert atk.alie_z_max(n, f) == pytest.approx(NormalDist().inv_cdf((n - s) / n))
    assert atk.alie_z_max(n, f) == pytest.approx(z, abs=1e-4)


def test_alie_default_z_uses_total_n():
    honest = cloud(23, 5)
    out = atk.ALittleIsEnough()(honest, 7)
    z = atk.alie_z_max(30, 7)
    std, mean = torch.std_mean(honest, dim=0)
    assert torch.allclose(out, (mean - z * std).expand(7, -1))


def test_alie_z_max_rejects_byzantine_majority():
    with pytest.raises(ValueError, match="ALittleIsEnough.*f <= floor"):
        atk.alie_z_max(10, 6)
    with pytest.raises(ValueError, match="pass z explicitly"):
        atk.ALittleIsEnough()(cloud(3, 4), 5)


def test_gaussian_reproducible_and_distribution():
    a = atk.Gaussian(mu=1.0, sigma=2.0, seed=3)
    first = a(torch.zeros(4, 50), 200)
    second = a(torch.zeros(4, 50), 200)
    assert not torch.equal(first, second)  # the stream advances across rounds
    a.reset()
    assert torch.equal(a(torch.zeros(4, 50), 200), first)
    assert float(first.mean()) == pytest.approx(1.0, abs=0.05)
    assert float(first.std()) == pytest.approx(2.0, rel=0.03)
    assert a(torch.zeros(2, 3, dtype=torch.float64), 1).dtype == torch.float64


def test_inf_and_nan():
    assert torch.isposinf(atk.Inf()(HONEST, 2)).all()
    assert torch.isnan(atk.NaN()(HONEST, 2)).all()


def test_large_norm():
    out = atk.LargeNorm(scale=10.0)(HONEST, 2)
    mean = HONEST.mean(0)
    assert torch.allclose(out, (-10.0 * mean / mean.norm()).expand(2, -1))
    zero = atk.LargeNorm(scale=4.0)(
        torch.tensor([[1.0, -1.0, 2.0, 0.0], [-1.0, 1.0, -2.0, 0.0]]), 1
    )
    assert torch.allclose(zero, torch.full((1, 4), -2.0))


# --- Mimic ---------------------------------------------------------------------------------


def mimic_round(a: torch.Tensor, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    v = torch.zeros(30)
    v[0] = 1.0
    base = torch.randn(30, generator=gen)
    return base + a[:, None] * v + 0.01 * torch.randn(len(a), 30, generator=gen)


def test_mimic_copies_worker_most_deviating_along_top_direction():
    honest = mimic_round(torch.tensor([-1.0, 0.5, 3.0, -2.0, 0.0]), 0)
    mimic = atk.Mimic(warmup=1)
    out = mimic(honest, 3)
    assert torch.equal(out, honest[2].expand(3, -1))
    assert mimic.target == 2


def test_mimic_target_frozen_after_warmup_and_reset():
    mimic = atk.Mimic(warmup=2)
    a = torch.tensor([-1.0, 0.5, 3.0, -2.0, 0.0])
    r1, r2 = mimic_round(a, 1), mimic_round(a, 2)
    assert torch.equal(mimic(r1, 1)[0], r1[2])
    assert mimic.target is None
    assert torch.equal(mimic(r2, 1)[0], r2[2])
    assert mimic.target == 2
    r3 = mimic_round(torch.tensor([0.0, 4.0, 0.1, -0.2, 0.0]), 3)  # worker 1 now deviates most
    assert torch.equal(mimic(r3, 2), r3[2].expand(2, -1))  # but the target stays 2
    mimic.reset()
    assert mimic.target is None
    assert torch.equal(mimic(r3, 1)[0], r3[1])


# --- adaptive attacks ----------------------------------------------------------------------

RULES = ["average", "median", "trimmed_mean", "krum", "nnm+trimmed_mean", "geometric_median"]


@pytest.mark.parametrize("spec", RULES)
@pytest.mark.parametrize(
    ("adaptive", "base"),
    [("optimal_alie", atk.ALittleIsEnough()), ("optimal_ipm", atk.InnerProductManipulation())],
)
def test_optimal_does_at_least_as_much_damage_as_base(spec, adaptive, base):
    f = 3
    rule = make_rule(spec, f)
    honest = cloud(9, 30)
    attack = atk.create(adaptive, aggregator=rule)
    assert damage(rule, honest, attack(honest, f)) >= damage(rule, honest, base(honest, f)) - 1e-9
    assert attack.last_scale is not None and attack.last_scale >= 0


def test_optimal_reuses_the_alie_anchor_as_the_honest_mean(monkeypatch):
    from byzance.kernels import moments

    honest = cloud(9, 30, dtype=torch.float32)
    anchor, direction, mean = atk.ALittleIsEnough().line_with_mean(honest, 2)
    assert mean is anchor
    ref_anchor, ref_direction = atk.ALittleIsEnough().line(honest, 2)
    assert torch.equal(anchor, ref_anchor) and torch.equal(direction, ref_direction)
    anchor, direction, mean = atk.InnerProductManipulation().line_with_mean(honest, 2)
    assert torch.equal(mean, honest.mean(dim=0)) and torch.equal(direction, -mean)
    # the compiled line's mean (float64 sums): float32 round-off of honest.mean
    monkeypatch.setattr(moments, "_KERNEL_MIN_SIZE", 1)
    big = cloud(10, 5_000, dtype=torch.float32)
    _, _, mean = atk.ALittleIsEnough().line_with_mean(big, 2)
    ulp = float(big.abs().max()) * 2.0**-23
    torch.testing.assert_close(mean, big.mean(dim=0), rtol=0, atol=4 * ulp)
    torch.testing.assert_close(mean, big.double().mean(dim=0).float(), rtol=0, atol=ulp)


@pytest.mark.parametrize("sketch", [None, 64])
def test_optimal_alie_with_the_reused_mean_matches_a_recomputed_mean(monkeypatch, sketch):
    from byzance.kernels import moments

    monkeypatch.setattr(moments, "_KERNEL_MIN_SIZE", 1)
    rule = make_rule("nnm+trimmed_mean", 3)
    honest = cloud(10, 400, dtype=torch.float32)
    reused = atk.create("optimal_alie", aggregator=rule, sketch=sketch)
    recomputed = atk.create("optimal_alie", aggregator=rule, sketch=sketch)
    base = recomputed.base  # the base class's line_with_mean: honest.mean computed again
    base.line_with_mean = atk.LinearAttack.line_with_mean.__get__(base)
    for _ in range(3):  # a cold round, then warm ones
        a, b = reused(honest, 3), recomputed(honest, 3)
        assert reused.last_scale == pytest.approx(recomputed.last_scale, rel=1e-6)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_optimal_finds_a_larger_alie_scale_against_median():
    f, rule = 3, agg.create("median", f=3)
    honest = cloud(9, 30)
    attack = atk.Optimal(base="alie", aggregator=rule)
    gain = damage(rule, honest, attack(honest, f))
    assert gain > 1.3 * damage(rule, honest, atk.ALittleIsEnough()(honest, f))
    assert attack.last_scale > atk.alie_z_max(12, 3)


def test_optimal_against_average_grows_to_the_largest_scale():
    honest = cloud(9, 8)
    attack = atk.Optimal(base=atk.InnerProductManipulation(), aggregator=agg.Average())
    attack(honest, 2)
    assert attack.last_scale == pytest.approx(0.1 * 1024)


def test_golden_section_finds_interior_maximum():
    from byzance.attacks.search import Memo, golden_section

    calls = []

    def fn(t: float) -> float:  # t = log(scale); maximum at scale 3.3
        calls.append(t)
        return -((t - math.log(3.3)) ** 2)

    value = Memo(fn)
    grid = [k * math.log(2.0) for k in range(-3, 6)]
    for t in grid:
        value(t)
    below, above = value.neighbours(value.best())
    golden_section(value, below, above, 12)
    assert math.exp(value.best()) == pytest.approx(3.3, rel=0.02)
    assert len(calls) <= len(grid) + 12


def test_hidden_vulnerability_default_shifts_one_coordinate_by_the_spread():
    honest = cloud(9, 40)
    out = atk.HiddenVulnerability()(honest, 2)
    mean = honest.mean(0)
    diff = out[0] - mean
    j = int(mean.abs().argmax())
    spread = float((honest - mean).square().sum(1).mean().sqrt())
    assert torch.count_nonzero(diff) == 1
    assert float(diff[j]) == pytest.approx(-math.copysign(spread, float(mean[j])))
    assert torch.equal(out[0], out[1])


def test_hidden_vulnerability_selected_by_krum_with_a_large_coordinate_shift():
    f, honest = 2, cloud(9, 200)
    krum = agg.create("krum", f=f)
    attack = atk.HiddenVulnerability(aggregator=krum)
    byz = attack(honest, f)
    out = krum.aggregate(torch.cat([honest, byz]))
    assert torch.allclose(out, byz[0])  # still selected
    assert attack.last_scale >= 1.0
    j = int(honest.mean(0).abs().argmax())
    honest_std = float(honest[:, j].std())
    assert abs(float(out[j] - honest.mean(0)[j])) > 5 * honest_std
    default = atk.HiddenVulnerability()(honest, f)
    assert damage(krum, honest, byz) >= damage(krum, honest, default) - 1e-9


def test_hidden_vulnerability_three_coordinates():
    honest = cloud(6, 20)
    out = atk.HiddenVulnerability(coordinates=3, scale=2.0)(honest, 1)
    diff = out[0] - honest.mean(0)
    spread = float((honest - honest.mean(0)).square().sum(1).mean().sqrt())
    assert torch.count_nonzero(diff) == 3
    assert float(diff.norm()) == pytest.approx(2.0 * spread)


# --- API contracts -------------------------------------------------------------------------


def all_gradient_attacks() -> list[atk.Attack]:
    rule = agg.create("median", f=2)
    return [
        atk.create(name, aggregator=rule)
        for name, cls in atk.REGISTRY.items()
        if issubclass(cls, atk.Attack)
    ]


@pytest.mark.parametrize("attack", all_gradient_attacks(), ids=repr)
def test_never_modifies_honest_and_keeps_dtype(attack):
    for dtype in (torch.float32, torch.float64):
        honest = cloud(7, 12, dtype=dtype)
        keep = honest.clone()
        out = attack(honest, 2)
        assert torch.equal(honest, keep)
        assert out.shape == (2, 12) and out.dtype == dtype and out.device == honest.device


@pytest.mark.parametrize("attack", all_gradient_attacks(), ids=repr)
def test_numpy_in_numpy_out(attack):
    honest = cloud(7, 5).numpy()
    keep = honest.copy()
    out = attack(honest, 3)
    assert isinstance(out, np.ndarray) and out.shape == (3, 5) and out.dtype == np.float64
    assert np.array_equal(honest, keep)
    out_list = attack(list(torch.from_numpy(honest)), 1)
    assert isinstance(out_list, torch.Tensor) and out_list.shape == (1, 5)


@given(
    h=st.integers(2, 8),
    d=st.integers(1, 6),
    f=st.integers(1, 4),
    seed=st.integers(0, 10_000),
    z=st.floats(0.0, 5.0),
)
def test_alie_coordinates_within_z_std_of_mean(h, d, f, seed, z):
    honest = torch.randn(h, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    out = atk.ALittleIsEnough(z=z)(honest, f)
    std, mean = torch.std_mean(honest, dim=0)
    assert out.shape == (f, d)
    assert torch.all((out - mean).abs() <= z * std + 1e-12)


@pytest.mark.parametrize("f", [0, -1])
def test_rejects_bad_f(f):
    with pytest.raises(ValueError, match=rf"SignFlipping\.f: expected an int >= 1, got {f}$"):
        atk.SignFlipping()(HONEST, f)
    with pytest.raises(TypeError, match=r"SignFlipping\.f: expected an int >= 1, got 1\.5"):
        atk.SignFlipping()(HONEST, 1.5)


def test_rejects_empty_input():
    with pytest.raises(ValueError, match="ALittleIsEnough: got empty input"):
        atk.ALittleIsEnough()(torch.zeros(0, 3), 1)


@pytest.mark.parametrize(
    ("build", "pattern"),
    [
        (lambda: atk.InnerProductManipulation(epsilon=-0.1), r"epsilon: expected .* > 0, got -0.1"),
        (lambda: atk.InnerProductManipulation(epsilon=0), r"epsilon: expected .* > 0, got 0"),
        (lambda: atk.ALittleIsEnough(z=-1), r"Enough\.z: expected a finite float >= 0, got -1"),
        (lambda: atk.Gaussian(sigma=-1), r"Gaussian\.sigma: expected a finite float >= 0, got -1"),
        (lambda: atk.LargeNorm(scale=-5), r"LargeNorm\.scale: expected .* >= 0, got -5"),
        (lambda: atk.LargeNorm(scale=math.inf), r"\.scale: expected a finite float >= 0, got inf"),
        (lambda: atk.HiddenVulnerability(scale=-1.0), r"HiddenVulnerability\.scale: .* >= 0"),
        (lambda: atk.HiddenVulnerability(coordinates=0), r"\.coordinates: expected an int >= 1"),
        (lambda: atk.Mimic(warmup=0), r"Mimic\.warmup: expected an int >= 1, got 0"),
        (lambda: atk.Optimal(base="alie"), r"Optimal\.aggregator: .*Optimal is adaptive"),
        (lambda: atk.OptimalALIE(), r"OptimalALIE\.aggregator: .*OptimalALIE is adaptive"),
        (lambda: atk.Optimal("gaussian", aggregator=agg.Average()), r"Optimal\.base: .*alie"),
        (lambda: atk.Optimal("alie", aggregator=agg.Average(), low=0), r"Optimal\.low: .* > 0"),
        (lambda: atk.LabelFlipping(mode="random"), r"\.mode: expected one of reverse, permu"),
        (lambda: atk.BudgetedLabelFlipping(budget=1.5), r"float in \[0, 1\], got 1\.5"),
        (lambda: atk.BudgetedLabelFlipping(budget=-2), r"\.budget: expected an int >= 0 or a "),
    ],
)
def test_rejects_bad_parameters(build, pattern):
    with pytest.raises(ValueError, match=pattern):
        build()


def test_hidden_vulnerability_rejects_too_many_coordinates():
    with pytest.raises(ValueError, match="coordinates <= d.*coordinates=5, d=2"):
        atk.HiddenVulnerability(coordinates=5)(HONEST, 1)


def test_registry_round_trips_every_name():
    rule = agg.create("median", f=1)
    for name, cls in atk.REGISTRY.items():
        built = atk.create(name, aggregator=rule)
        assert type(built) is cls
        assert atk.REGISTRY[cls.name] is cls
        assert atk.create(name.upper().replace("_", "-"), aggregator=rule).name == cls.name


def test_create_parameters_aliases_and_errors():
    rule = agg.create("krum", f=1)
    ipm = atk.create("ipm(epsilon=0.5)")
    assert isinstance(ipm, atk.InnerProductManipulation) and ipm.epsilon == 0.5
    assert atk.create("alie", z=2.0).z == 2.0
    opt = atk.create("optimal(base='ipm')", aggregator=rule)
    assert isinstance(opt.base, atk.InnerProductManipulation) and opt.aggregator is rule
    alias = atk.create("optimal_alie", aggregator=rule)
    assert isinstance(alias, atk.Optimal) and isinstance(alias.base, atk.ALittleIsEnough)
    assert isinstance(atk.create("optimal_ipm", aggregator=rule).base, atk.InnerProductManipulation)
    assert atk.create("hidden_vulnerability", aggregator=rule).aggregator is rule
    assert atk.create("sign_flipping", aggregator=rule).name == "sign_flipping"
    with pytest.raises(ValueError, match="unknown attack 'foo'; known: .*alie"):
        atk.create("foo")
    with pytest.raises(ValueError, match="handled by the simulator"):
        atk.create("none")
    with pytest.raises(ValueError, match=r"has no parameter \['sigma'\]"):
        atk.create("alie", sigma=1.0)
    with pytest.raises(ValueError, match=r"has no parameter \['bogus'\]"):
        atk.create("ipm(bogus=1)")


# --- data attacks --------------------------------------------------------------------------


def test_label_flipping_reverse():
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 2, 9, 4])
    keep = y.clone()
    x2, y2 = atk.LabelFlipping().poison(x, y, 10)
    assert x2 is x and torch.equal(y, keep)
    assert torch.equal(y2, torch.tensor([9, 8, 7, 0, 5]))


def test_label_flipping_permutation_is_a_fixed_derangement():
    flip = atk.LabelFlipping(mode="permutation", seed=1)
    table = flip.mapping(10)
    assert sorted(table.tolist()) == list(range(10))
    assert torch.all(table != torch.arange(10))
    # a single 10-cycle
    seen, k = set(), 0
    for _ in range(10):
        seen.add(k)
        k = int(table[k])
    assert len(seen) == 10 and k == 0
    y = torch.arange(10).repeat(3)
    _, y2 = flip.poison(torch.zeros(30, 2), y, 10)
    assert torch.equal(y2, table[y])
    assert torch.equal(flip.poison(torch.zeros(30, 2), y, 10)[1], y2)
    other = atk.LabelFlipping(mode="permutation", seed=2).mapping(10)
    assert not torch.equal(other, table)


def test_data_attack_checks_labels():
    with pytest.raises(ValueError, match=r"labels in \[0, num_classes\).*num_classes=3"):
        atk.LabelFlipping().poison(torch.zeros(2, 1), torch.tensor([0, 3]), 3)
    with pytest.raises(ValueError, match="num_classes >= 2"):
        atk.LabelFlipping().poison(torch.zeros(2, 1), torch.tensor([0, 0]), 1)


def softmax_problem(n=40, p=5, c=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, p, generator=gen, dtype=torch.float64)
    y = torch.randint(0, c, (n,), generator=gen)
    w = torch.randn(c, p, generator=gen, dtype=torch.float64)
    b = torch.randn(c, generator=gen, dtype=torch.float64)
    return x, y, w, b


def grad(x, y, w, b):
    """Gradient of the mean cross-entropy of softmax regression, flattened (W then b)."""
    w = w.clone().requires_grad_(True)
    b = b.clone().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(x.reshape(len(x), -1) @ w.T + b, y)
    gw, gb = torch.autograd.grad(loss, (w, b))
    return torch.cat([gw.flatten(), gb])


def test_budgeted_label_flipping_respects_budget_and_beats_random_flips():
    x, y, w, b = softmax_problem()
    keep = y.clone()
    attack = atk.BudgetedLabelFlipping(budget=6)
    x2, y2 = attack.poison(x, y, 4, model_params=(w, b))
    assert x2 is x and torch.equal(y, keep)
    flipped = int((y2 != y).sum())
    assert 1 <= flipped <= 6
    honest = grad(x, y, w, b)
    attacked = float(honest @ grad(x, y2, w, b))
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        rand = y.clone()
        idx = torch.randperm(len(y), generator=gen)[:flipped]
        rand[idx] = (y[idx] + torch.randint(1, 4, (flipped,), generator=gen)) % 4
        assert attacked < float(honest @ grad(x, rand, w, b))
    assert attacked < float(honest @ honest)


def test_budgeted_label_flipping_is_optimal_by_brute_force():
    x, y, w, b = softmax_problem(n=5, p=3, c=3, seed=4)
    honest = grad(x, y, w, b)
    _, y2 = atk.BudgetedLabelFlipping(budget=2).poison(x, y, 3, model_params=(w, b))
    got = float(honest @ grad(x, y2, w, b))
    best = math.inf
    for labels in itertools.product(range(3), repeat=5):
        cand = torch.tensor(labels)
        if int((cand != y).sum()) <= 2:
            best = min(best, float(honest @ grad(x, cand, w, b)))
    assert got == pytest.approx(best, abs=1e-10)


def test_budgeted_label_flipping_fraction_module_and_errors():
    x, y, w, b = softmax_problem(n=40, p=6)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 4)).double()
    x_img = x.reshape(40, 1, 2, 3)
    attack = atk.create("budgeted_label_flipping", budget=0.1)
    _, y2 = attack.poison(x_img, y, 4, model_params=model)
    assert 0 < int((y2 != y).sum()) <= 4
    _, y3 = attack.poison(x_img, y, 4, model_params=(model[1].weight, model[1].bias))
    assert torch.equal(y2, y3)
    assert torch.equal(
        atk.BudgetedLabelFlipping(budget=0).poison(x, y, 4, model_params=(w, b))[1], y
    )
    with pytest.raises(ValueError, match="requires model_params"):
        attack.poison(x, y, 4)
    with pytest.raises(ValueError, match=r"W of shape \(num_classes, p\)=\(4, 6\)"):
        attack.poison(x, y, 4, model_params=(w[:, :5], b))


def test_adaptive_attacks_replay_the_randomness_of_bucketing():
    f, honest = 2, cloud(10, 20)
    rule = agg.create("bucketing(s=2)+median", f=f)
    gen = rule.pre[0]._generator
    state = gen.get_state()
    byz = atk.OptimalALIE(aggregator=rule)(honest, f)
    atk.HiddenVulnerability(aggregator=rule)(honest, f)
    assert torch.equal(gen.get_state(), state)  # the run's random stream is untouched
    opt = damage(rule, honest, byz)
    gen.set_state(state)
    assert opt >= damage(rule, honest, atk.ALittleIsEnough()(honest, f)) - 1e-9


def test_adaptive_attacks_check_the_aggregator_condition():
    krum = agg.create("krum", f=3)  # needs n >= 2f + 3 = 9
    with pytest.raises(ValueError, match="Krum requires"):
        atk.OptimalIPM(aggregator=krum)(cloud(4, 5), 3)
    with pytest.raises(ValueError, match="Krum requires"):
        atk.HiddenVulnerability(aggregator=krum)(cloud(4, 5), 3)


@pytest.mark.parametrize("spec", ["median", "nnm+trimmed_mean", "krum"])
def test_optimal_warm_sketched_search_close_to_exhaustive_search(spec):
    f, rule = 2, agg.create(spec, f=2)
    base = cloud(9, 3000, seed=1)
    fast = atk.OptimalALIE(aggregator=rule, sketch=1024)  # warm start + sketch (defaults)
    ratios = []
    for r in range(6):  # slowly drifting rounds, as in training
        honest = base + 0.05 * cloud(9, 3000, seed=10 + r)
        exhaustive = atk.OptimalALIE(
            aggregator=rule, sketch=None, warm_start=False, points=61, refine=16
        )
        best = damage(rule, honest, exhaustive(honest, f))
        got = damage(rule, honest, fast(honest, f))
        assert got >= damage(rule, honest, atk.ALittleIsEnough()(honest, f)) - 1e-9
        ratios.append(got / best)
    assert min(ratios) > 0.9 and sum(ratios) / len(ratios) > 0.96, ratios


def test_optimal_warm_start_uses_fewer_evaluations_and_reset_restarts_cold():
    calls = []

    class Counting(agg.Median):
        def aggregate(self, x):
            calls.append(x.shape[1])
            return super().aggregate(x)

    rule = Counting()
    honest = cloud(9, 300)
    attack = atk.OptimalALIE(aggregator=rule, sketch=64, points=15, refine=8)
    attack(honest, 2)
    cold = len(calls)
    calls.clear()
    attack(honest, 2)
    warm = len(calls)
    assert sum(1 for k in calls if k == 300) <= 3  # best, its lower neighbour, base: full
    assert all(k in (64, 300) for k in calls)
    assert warm < cold <= 15 + 1 + 8 + 3
    calls.clear()
    attack.reset()
    attack(honest, 2)
    assert len(calls) == cold
    with pytest.raises(ValueError, match=r"OptimalALIE\.sketch: expected an int >= 0, got -1"):
        atk.OptimalALIE(aggregator=rule, sketch=-1)


# --- Optimal with a sketch: exact geometry of the full vectors ------------------------------


def test_line_gram_gives_the_gram_of_the_materialised_candidates():
    from byzance.aggregators._distances import sq_distances, sq_distances_from_gram
    from byzance.attacks.search import CandidateRows, Probe
    from byzance.geometry import ExactGram, line_gram

    f, honest = 3, cloud(9, 500, dtype=torch.float32)
    anchor, direction = atk.ALittleIsEnough().line(honest, f)
    mean = honest.mean(0)
    rows = CandidateRows(
        Probe(agg.Average()),
        honest,
        mean,
        anchor,
        direction,
        f,
        line_gram(honest, mean, anchor, direction),
    )
    for s in (0.0, 0.7, 3.0, 50.0):
        x = torch.cat([honest, (anchor + s * direction).expand(f, -1)]).double()
        g = rows.gram(s)
        want = ExactGram.of(x)
        assert torch.allclose(g.sq_norms(), want.sq_norms(), rtol=1e-5)
        d2 = sq_distances_from_gram(*g.centred())
        assert torch.allclose(d2, sq_distances(x)[0], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("spec", ["nnm+trimmed_mean", "krum", "clipping(c=1.0)+nnm+median"])
def test_optimal_sketch_uses_exact_geometry_and_no_full_aggregation_on_a_clear_gain(spec):
    calls = []
    rule = agg.create(spec, f=2)
    inner = rule.rule if isinstance(rule, agg.Chain) else rule
    original = type(inner).aggregate

    def spy(self, x, *args, **kwargs):
        calls.append((x.shape[1], "gram" in kwargs))
        return original(self, x, *args, **kwargs)

    inner.aggregate = spy.__get__(inner)
    honest = cloud(9, 20000, seed=3)
    attack = atk.OptimalALIE(aggregator=rule, sketch=2048)
    byz = attack(honest, 2)
    inner.aggregate = original.__get__(inner)
    sketched = [g for k, g in calls if k == 2048]
    assert sketched and (all(sketched) or isinstance(rule, agg.Chain))
    full = sum(1 for k, _ in calls if k == 20000)
    assert full in (0, 2)
    assert damage(rule, honest, byz) >= damage(rule, honest, atk.ALittleIsEnough()(honest, 2))


def test_optimal_sketch_works_with_a_pipeline_without_gram_support():
    class MyKrum(agg.Aggregator):  # a user rule: its own distances, no gram keyword
        def aggregate(self, x):
            d2 = torch.cdist(x, x).square()
            return x[int(torch.argmin(torch.sort(d2, dim=1).values[:, 1:8].sum(1)))].clone()

    class MyPre(agg.PreAggregator):
        def transform(self, x):
            return x * 1.0

    honest = cloud(9, 5000, seed=4)
    nnm = agg.NNM(2)
    pipelines = (MyKrum(), agg.Chain(MyPre(), nnm, MyKrum()), agg.Chain(nnm, MyKrum()))
    for rule in pipelines:
        attack = atk.OptimalALIE(aggregator=rule, sketch=512)
        byz = attack(honest, 2)
        assert byz.shape == (2, 5000) and bool(torch.isfinite(byz).all())


def test_optimal_sketch_falls_back_on_non_finite_honest_vectors():
    honest = cloud(9, 3000, seed=5)
    honest[4, 7] = float("nan")
    rule = agg.create("nnm+trimmed_mean", f=2)
    attack = atk.OptimalALIE(aggregator=rule, sketch=256)
    byz = attack(honest, 2)
    assert byz.shape == (2, 3000) and attack.last_scale is not None
