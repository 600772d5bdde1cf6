"""byzance.preferences.primitives: against solidago 0.4.1's numbers (recorded by
benchmarks/preferences_reference.py), brute-force minimisation of the objectives, and the
Lipschitz bounds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.optimize import minimize_scalar

from byzance.preferences.primitives import (
    br_mean,
    br_mean_bound,
    clip_mean,
    qr_median,
    qr_quantile,
    qr_quantile_bound,
    qr_uncertainty,
)

REFERENCE = json.loads(
    (Path(__file__).parent / "data" / "preferences_reference.json").read_text()
)["cases"]


def _kw(case):
    return dict(
        lipschitz=case["lipschitz"],
        voting_rights=case["voting_rights"],
        uncertainties=case["uncertainties"],
    )


@pytest.mark.parametrize("case", REFERENCE, ids=lambda c: f"n{len(c['values'])}")
def test_primitives_equal_solidago(case):
    x, d = case["values"], case["default"]
    assert qr_quantile(x, case["quantile"], default=d, **_kw(case)) == pytest.approx(
        case["qr_quantile"], abs=1e-4
    )
    assert qr_median(x, default=d, **_kw(case)) == pytest.approx(case["qr_median"], abs=1e-4)
    assert br_mean(x, default=d, **_kw(case)) == pytest.approx(
        case["lipschitz_resilient_mean"], abs=1e-4
    )


def test_uncertainty_equals_solidago_where_no_value_is_within_its_uncertainty_of_the_median():
    """solidago 0.4.1's qr_uncertainty differs when some |x_i - QrMed| < Δ_i (docs:
    preferences.md); elsewhere both are QrMed of the deviations."""
    checked = 0
    for case in REFERENCE:
        med = qr_median(case["values"], **_kw(case))
        unc = np.zeros(len(case["values"])) if case["uncertainties"] is None else np.array(
            case["uncertainties"]
        )
        if np.any(np.abs(np.array(case["values"]) - med) < unc):
            continue
        got = qr_uncertainty(case["values"], default_dev=case["default_dev"], **_kw(case))
        assert got == pytest.approx(case["qr_uncertainty"], abs=1e-4)
        checked += 1
    assert checked >= 15


def _objective(m, x, w, unc, q, lipschitz, default):
    """The convex objective whose minimiser QrQtl is (module docstring of primitives)."""
    top = max(q, 1 - q)
    a = np.where(m < x, q / top, (1 - q) / top)
    loss = np.sqrt(unc**2 + (m - x) ** 2) - unc
    return (m - default) ** 2 / (2 * lipschitz) + np.sum(w * a * loss)


@pytest.mark.parametrize("seed", range(12))
def test_qr_quantile_minimises_its_objective(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 9))
    x, w = rng.normal(size=n) * 3, rng.uniform(0, 2, n)
    unc = rng.uniform(0, 1, n) if seed % 3 else np.zeros(n)
    q, lipschitz, default = rng.uniform(0.05, 0.95), rng.choice([0.3, 1.0, 10.0]), rng.normal()
    got = qr_quantile(x, q, lipschitz=lipschitz, voting_rights=w, uncertainties=unc,
                      default=default)
    lo, hi = min(x.min(), default) - 50, max(x.max(), default) + 50
    grid = np.linspace(lo, hi, 20001)
    start = grid[np.argmin([_objective(m, x, w, unc, q, lipschitz, default) for m in grid])]
    best = minimize_scalar(
        _objective, bounds=(start - 0.02, start + 0.02), method="bounded",
        args=(x, w, unc, q, lipschitz, default), options={"xatol": 1e-10},
    ).x
    f = lambda m: _objective(m, x, w, unc, q, lipschitz, default)  # noqa: E731
    assert f(got) <= f(best) + 1e-9
    assert got == pytest.approx(best, abs=1e-4)


def test_hand_computed_cases():
    # no uncertainty, large L: the median of 1, 2, 10 is 2 (the pull 1/L is tiny)
    assert qr_median([1.0, 2.0, 10.0], lipschitz=1e6) == pytest.approx(2.0, abs=1e-5)
    # one voter at 3 with weight 1, L = 1, no uncertainty: m + sign(m - 3) = 0 -> m = 1
    assert qr_median([3.0], lipschitz=1.0) == pytest.approx(1.0, abs=1e-9)
    # ... with L = 10: m / 10 = 1 would need m = 10 > 3, so m sits at the kink 3
    assert qr_median([3.0], lipschitz=10.0) == pytest.approx(3.0, abs=1e-9)
    # no voting right: the default
    no_right = qr_quantile([5.0], 0.3, lipschitz=1.0, voting_rights=0.0, default=-2)
    assert no_right == pytest.approx(-2)
    # quantile 0.9 of 0..9 with a weak pull: between 8 and 9
    assert 8 - 1e-6 <= qr_quantile(np.arange(10.0), 0.9, lipschitz=1e6) <= 9 + 1e-6
    # clip mean: weights 1, 2, 0.5 of 0, 1, 5 clipped to [0.5, 1.5]
    assert clip_mean([0.0, 1.0, 5.0], 1.0, 0.5, voting_rights=[1, 2, 0.5]) == pytest.approx(
        (0.5 + 2 + 0.75) / 3.5
    )
    # BrMean with a large L is the plain weighted mean (the radius L W / 4 covers everything)
    assert br_mean([0.0, 1.0, 5.0], lipschitz=1e4, voting_rights=[1, 2, 1]) == pytest.approx(1.75)


def test_groups_equal_one_call_per_group():
    rng = np.random.default_rng(3)
    groups = rng.integers(0, 7, 200)
    x, w, unc = rng.normal(size=200), rng.uniform(0, 1, 200), rng.uniform(0, 0.5, 200)
    default = rng.normal(size=8)
    kw = dict(lipschitz=2.0, voting_rights=w, uncertainties=unc, groups=groups, n_groups=8)
    for fn, extra in ((qr_quantile, (0.3,)), (qr_median, ()), (br_mean, ())):
        got = fn(x, *extra, default=default, **kw)
        assert got.shape == (8,)
        for g in range(8):
            m = groups == g
            one = fn(x[m], *extra, lipschitz=2.0, voting_rights=w[m], uncertainties=unc[m],
                     default=default[g])
            assert got[g] == pytest.approx(one, abs=1e-9)
    assert got[7] == pytest.approx(default[7])  # an empty group gives its default
    dev = qr_uncertainty(x, **kw)
    for g in range(7):
        m = groups == g
        one = qr_uncertainty(x[m], lipschitz=2.0, voting_rights=w[m], uncertainties=unc[m])
        assert dev[g] == pytest.approx(one, abs=1e-9)


@pytest.mark.parametrize("seed", range(20))
def test_one_voter_moves_the_result_by_at_most_the_bound(seed):
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(1, 10))
    x, w = rng.normal(size=n) * 2, rng.uniform(0, 2, n)
    unc = rng.uniform(0, 1, n) if seed % 2 else None
    lipschitz, q = float(rng.choice([0.1, 1.0, 5.0])), float(rng.uniform(0.05, 0.95))
    j = int(rng.integers(n))
    for extreme in (-1e6, 1e6, float(rng.normal() * 10)):
        y = x.copy()
        y[j] = extreme
        kw = dict(lipschitz=lipschitz, voting_rights=w, uncertainties=unc)
        moved = abs(qr_quantile(y, q, **kw) - qr_quantile(x, q, **kw))
        assert moved <= qr_quantile_bound(lipschitz, q, w[j]) + 1e-8
        moved = abs(br_mean(y, **kw) - br_mean(x, **kw))
        assert moved <= br_mean_bound(lipschitz, w[j]) + 1e-8
    # the median bound 2 L w is reached: a lone voter far on either side
    one = dict(lipschitz=lipschitz, voting_rights=[0.01])
    assert abs(qr_median([1e6], **one) - qr_median([-1e6], **one)) == pytest.approx(
        qr_quantile_bound(lipschitz, 0.5, 0.01), rel=1e-6
    )


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: qr_quantile([1.0], 1.5, lipschitz=1.0), "qr_quantile.quantile"),
        (lambda: qr_quantile([1.0], 0.5, lipschitz=0.0), "qr_quantile.lipschitz"),
        (lambda: qr_median([1.0, 2.0], lipschitz=1.0, voting_rights=[1, -1]), "voting_rights"),
        (lambda: qr_median([1.0, np.nan], lipschitz=1.0), "values"),
        (lambda: qr_median([1.0], lipschitz=1.0, uncertainties=[-1.0]), "uncertainties"),
        (lambda: qr_median([1.0, 2.0], lipschitz=1.0, groups=[0]), "groups"),
        (lambda: qr_median([[1.0]], lipschitz=1.0), "values"),
        (lambda: br_mean([1.0], lipschitz=-1.0), "br_mean.lipschitz"),
    ],
)
def test_bad_input_names_the_parameter(call, message):
    with pytest.raises(ValueError, match=message):
        call()


_values = st.lists(st.floats(-100, 100), min_size=1, max_size=8)


@given(_values, st.floats(0.05, 0.95), st.floats(0.05, 20), st.floats(-50, 50), st.data())
def test_translation_equivariance_and_monotonicity(values, q, lipschitz, shift, data):
    """Shifting the values and the default shifts QrQtl and BrMean; raising one value never
    lowers them."""
    x = np.array(values)
    w = np.array(data.draw(st.lists(st.floats(0, 3), min_size=x.size, max_size=x.size)))
    kw = dict(lipschitz=lipschitz, voting_rights=w)
    base = qr_quantile(x, q, default=1.0, **kw)
    assert qr_quantile(x + shift, q, default=1.0 + shift, **kw) == pytest.approx(
        base + shift, abs=1e-7
    )
    assert br_mean(x + shift, default=1.0 + shift, **kw) == pytest.approx(
        br_mean(x, default=1.0, **kw) + shift, abs=1e-7
    )
    j = data.draw(st.integers(0, x.size - 1))
    y = x.copy()
    y[j] += data.draw(st.floats(0, 100))
    assert qr_quantile(y, q, default=1.0, **kw) >= base - 1e-7
