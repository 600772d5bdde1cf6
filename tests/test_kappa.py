"""The robustness-coefficient search (byzance.analysis.kappa) against brute force and theory."""

from __future__ import annotations

import math

import pytest
import torch

from byzance.aggregators import REGISTRY, RULES, create
from byzance.analysis.kappa import kappa, max_f
from byzance.analysis.kappa_bounds import proven_upper_bound, universal_lower_bound
from byzance.analysis.kappa_eval import RatioEvaluator, robustness_ratio
from byzance.cli import main

T = torch.float64
FAST = {"restarts": 2, "iterations": 40}


def _grid_1d(rule: str, n: int, f: int, step: float) -> float:
    """Brute force in one dimension: by translation and scaling, the honest points span
    [0, 1] (two of them at 0 and 1, the others on a grid of [0, 1]); the Byzantine points
    lie on a grid of [-1, 2] (outside, the order of the values, all these rules see, is the
    same as at the ends). Returns the largest ratio over the grid (the rule's own calls)."""
    m = n - f
    g = torch.arange(0.0, 1.0 + 1e-9, step, dtype=T)
    p = torch.arange(-1.0, 2.0 + 1e-9, step, dtype=T)
    inner = torch.cartesian_prod(*([g] * (m - 2))).reshape(-1, m - 2)
    inner = inner[(inner.diff(dim=1) >= 0).all(dim=1)] if m > 3 else inner
    byz = torch.cartesian_prod(*([p] * f)).reshape(-1, f)
    byz = byz[(byz.diff(dim=1) >= 0).all(dim=1)] if f > 1 else byz
    ev = RatioEvaluator(create(rule, f=f), n, f, 1)
    best = 0.0
    for h in inner:
        x = torch.zeros(len(byz), n, 1, dtype=T)
        x[:, 1, 0] = 1.0
        x[:, 2:m, 0] = h
        x[:, m:, 0] = byz
        best = max(best, float(ev(x).max()))
    return best


@pytest.mark.parametrize(
    "rule,n,f,step",
    [
        ("median", 5, 1, 0.02),
        ("trimmed_mean", 5, 1, 0.02),
        ("meamed", 5, 1, 0.02),
        ("median", 6, 2, 0.05),
        ("trimmed_mean", 6, 2, 0.05),
        ("meamed", 6, 2, 0.05),
    ],
)
def test_one_dimensional_worst_case_found(rule: str, n: int, f: int, step: float) -> None:
    grid = _grid_1d(rule, n, f, step)
    found = kappa(rule, n, f, dim=1, **FAST)
    assert found.dim == 1  # coordinate-wise: one dimension is exact
    assert found.value >= grid * (1 - 1e-3), (found.value, grid)


def test_one_dimensional_worst_case_found_krum() -> None:
    grid = _grid_1d("krum", 5, 1, 0.1)
    assert grid == pytest.approx(25 / 11)  # honest {0, 0.5, 1, 1}, Byzantine at 0: Krum -> 0
    found = kappa("krum", 5, 1, dim=1, restarts=3, iterations=60)
    assert found.value >= grid * 0.99, (found.value, grid)


def _every_rule() -> list[str]:
    names = [cls.name for cls in RULES] + ["nnm+trimmed_mean", "nnm+krum", "bucketing+median",
                                           "clipping+average", "arc+median"]
    return [name for name in names if name not in ("smea",)]  # smea: exhaustive, slow


@pytest.mark.parametrize("rule", _every_rule())
def test_every_rule_reaches_the_universal_lower_bound(rule: str) -> None:
    n, f = (11 if "bulyan" in rule else 7), 2  # Bulyan: n >= 4f + 3
    found = kappa(rule, n, f, dim=1, restarts=0, iterations=0)
    assert found.value >= universal_lower_bound(n, f) * (1 - 1e-9), found
    assert found.value <= found.upper_bound.value if found.upper_bound else True


def test_smea_reaches_the_universal_lower_bound() -> None:
    found = kappa("smea", 5, 1, dim=2, restarts=0, iterations=0)
    assert found.value >= universal_lower_bound(5, 1) * (1 - 1e-9)


@pytest.mark.parametrize("n,f", [(7, 1), (10, 3)])
def test_the_mean_grows_without_bound(n: int, f: int) -> None:
    found = kappa("average", n, f, **FAST)
    assert found.unbounded and math.isinf(found.value)
    ratios = [r for _, r in found.growth]
    assert len(ratios) >= 4 and all(b > 50 * a for a, b in zip(ratios, ratios[1:], strict=False))
    # the last input of the ray: Byzantine points far away, a finite huge ratio
    assert robustness_ratio("average", found.x, f) == pytest.approx(ratios[-1], rel=1e-6)


BOUNDED = ["trimmed_mean", "median", "geometric_median", "krum", "nnm+trimmed_mean",
           "nnm+median", "nnm+krum", "nnm+geometric_median"]


@pytest.mark.parametrize("rule", BOUNDED)
@pytest.mark.parametrize("n,f", [(7, 2), (10, 3)])
def test_never_above_a_proven_upper_bound(rule: str, n: int, f: int) -> None:
    if f > max_f(rule, n):
        pytest.skip(f"{rule} refuses f={f} of n={n}")
    if "geometric" in rule and n > 7:
        pytest.skip("Weiszfeld's iterations on clustered inputs: slow; n = 7 only")
    slow = "geometric" in rule  # Weiszfeld's iterations on clustered inputs
    found = kappa(rule, n, f, dim=2 if slow else None, restarts=1, iterations=10 if slow else 30)
    bound = proven_upper_bound(rule, n, f)
    assert bound is not None and found.upper_bound == bound
    assert not found.above_upper_bound
    assert universal_lower_bound(n, f) * (1 - 1e-9) <= found.value <= bound.value


def test_value_is_recomputed_from_the_input_returned() -> None:
    found = kappa("krum", 9, 2, **FAST)
    assert robustness_ratio(create("krum", f=2), found.x, 2) == found.value
    assert found.x.shape == (9, 8) and found.evaluations > 100 and found.starts
    assert len(found.restarts) == 2 and max(found.restarts) <= found.value


def test_robustness_ratio_by_hand() -> None:
    x = torch.tensor([[0.0], [2.0], [10.0]], dtype=T)  # honest {0, 2}: mean 1, spread 1
    assert robustness_ratio("average", x, 1) == pytest.approx(9.0)  # output 4
    assert robustness_ratio("median", x, 1) == pytest.approx(1.0)  # output 2
    y = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [3.0, 3.0]], dtype=T)
    # honest mean (2/3, 2/3), spread (8/9 + 8/9 + 20/9 ... ) / 3 = 16/9; mean of all (5/4, 5/4)
    spread = ((y[:3] - y[:3].mean(0)) ** 2).sum(1).mean()
    assert spread == pytest.approx(16 / 9)
    want = float(((y.mean(0) - y[:3].mean(0)) ** 2).sum() / spread)
    assert robustness_ratio("average", y, 1) == pytest.approx(want)


@pytest.mark.parametrize("rule", ["median", "trimmed_mean", "meamed", "average", "sign_majority"])
def test_batched_evaluation_is_the_rule_on_each_input(rule: str) -> None:
    gen = torch.Generator().manual_seed(0)
    xb = torch.randn(7, 9, 3, generator=gen, dtype=T)
    r = create(rule, f=2)
    ev = RatioEvaluator(r, 9, 2, 3)
    assert ev.coordinate_wise
    want = torch.stack([r(x) for x in xb])
    assert torch.allclose(ev.outputs(xb), want, rtol=1e-13, atol=1e-15)  # sums' order aside
    assert ev(xb).tolist() == pytest.approx([robustness_ratio(r, x, 2) for x in xb])


def test_equivariance_probe() -> None:
    assert RatioEvaluator(create("krum", f=1), 7, 1, 3).equivariant
    assert not RatioEvaluator(create("centered_clipping"), 7, 1, 3).equivariant
    assert not RatioEvaluator(create("sign_majority"), 7, 1, 3).equivariant
    assert RatioEvaluator(create("bucketing+median", f=1), 7, 1, 3).randomised


def test_proven_bounds_by_hand() -> None:
    # n = 10, f = 2: rho = 2 / 6 = 1/3
    assert universal_lower_bound(10, 2) == pytest.approx(1 / 3)
    assert proven_upper_bound("trimmed_mean", 10, 2).value == pytest.approx(6 / 3 * 4 / 3)
    assert proven_upper_bound("median", 10, 2).value == pytest.approx(4 * 16 / 9)
    assert proven_upper_bound("geometric_median", 10, 2).value == pytest.approx(4 * 16 / 9)
    assert proven_upper_bound("krum", 10, 2).value == pytest.approx(8.0)
    nnm = proven_upper_bound("nnm+trimmed_mean", 10, 2)
    assert nnm.value == pytest.approx(8 * 2 / 8 * (8 / 3 + 1)) and "Lemma 1" in nnm.source
    assert proven_upper_bound("multikrum", 10, 2) is None  # not transcribed (docs)
    assert proven_upper_bound("bucketing+krum", 10, 1) is None
    assert proven_upper_bound(create("trimmed_mean", f=1), 10, 2) is None  # built for f=1


def test_max_f() -> None:
    assert max_f("krum", 20) == 8  # n >= 2f + 3
    assert max_f("trimmed_mean", 20) == 9  # n > 2f
    assert max_f("bulyan", 20) == 4  # n >= 4f + 3
    assert max_f("average", 20) == 9


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"n": 10, "f": 5}, "kappa requires n > 2f, got n=10, f=5"),
        ({"n": 6, "f": 2}, "Krum requires n >= 2f + 3, got n=6, f=2"),
        ({"n": 10, "f": 1, "dim": 0}, "kappa.dim: expected"),
        ({"n": 10, "f": -1}, "kappa.f: expected"),
        ({"n": 10, "f": 1, "batch": 0}, "kappa.batch: expected"),
    ],
)
def test_bad_input(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("+", r"\+")):
        kappa("krum", **kwargs)


def test_unknown_rule() -> None:
    with pytest.raises(ValueError, match="unknown aggregator 'nope'"):
        kappa("nope", 10, 1)
    assert "nope" not in REGISTRY


def test_cli(tmp_path, capsys) -> None:
    plot = tmp_path / "img" / "k.png"
    argv = ["kappa", "--rules", "trimmed_mean,average", "--n", "7", "--f", "1,2,3",
            "--restarts", "0", "--iterations", "0", "--plot", str(plot)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| `trimmed_mean` | 7 | 2 |" in out and "unbounded" in out
    assert plot.stat().st_size > 1000
    assert main(["kappa", "--n", "x"]) == 2
    assert "--n: expected integers separated by commas, got 'x'" in capsys.readouterr().err
    assert main(["kappa", "--rules", "krum", "--n", "6", "--f", "2"]) == 2
    assert "no (rule, n, f) to search" in capsys.readouterr().err
