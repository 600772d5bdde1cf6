"""signSGD majority vote under the anti-majority attack: exact probability, bounds, the
attack's optimality (brute force), and the measurement in training."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from byzance import aggregators, attacks
from byzance.analysis.sign_vote import (
    max_byzantine,
    sign_vote_condition,
    sign_vote_error_bound,
    sign_vote_error_exact,
)
from byzance.analysis.sign_vote_training import sign_vote_training, vote_record


def brute_force_error(p: float, h: int, f: int) -> float:
    """Sum over the 2^h honest vote patterns; the f Byzantine workers vote -1 (against +1)."""
    total = 0.0
    for votes in itertools.product((1, -1), repeat=h):
        right = votes.count(1)
        prob = p**right * (1 - p) ** (h - right)
        total += prob * (sum(votes) - f <= 0)
    return total


@pytest.mark.parametrize("h", [1, 2, 5, 8])
@pytest.mark.parametrize("f", [0, 1, 3])
def test_exact_matches_brute_force(h, f):
    for p in (0.0, 0.3, 0.5, 0.77, 1.0):
        want = brute_force_error(p, h, f)
        assert sign_vote_error_exact(p, h, f) == pytest.approx(want, abs=1e-12)


def test_exact_matches_binomial_cdf_and_arrays():
    from scipy.stats import binom

    ps = np.linspace(0, 1, 41)
    for h, f in [(10, 0), (10, 3), (31, 7), (200, 20)]:
        got = sign_vote_error_exact(ps, h, f)
        assert got.shape == ps.shape
        np.testing.assert_allclose(got, binom.cdf((h + f) // 2, h, ps), atol=1e-12)
    assert isinstance(sign_vote_error_exact(0.7, 10, 2), float)
    assert sign_vote_error_exact(0.9, 5, 5) == 1.0  # f >= h: the Byzantine workers always win


@pytest.mark.parametrize("method", ["hoeffding", "cantelli"])
def test_bound_above_exact_where_condition_holds(method):
    ps = np.linspace(0, 1, 201)
    checked = 0
    for h in (1, 2, 5, 10, 25, 100):
        for f in range(0, h + 2):
            exact = sign_vote_error_exact(ps, h, f)
            bound = sign_vote_error_bound(ps, h, f, method)
            cond = sign_vote_condition(ps, h, f)
            assert np.all(bound >= exact - 1e-12)
            assert np.all(bound[~cond] == 1.0)
            away = np.abs(2 * h * ps - h - f) > 1e-9  # off the boundary, where rounding decides
            np.testing.assert_array_equal(cond[away], (ps > 0.5 + f / (2 * h))[away])
            checked += int(cond.sum())
    assert checked > 1000


def test_bound_formulas_by_hand():
    h, f, p = 10, 2, 0.8
    t = h * p - (h + f) / 2  # = 2
    assert sign_vote_error_bound(p, h, f) == pytest.approx(math.exp(-2 * t * t / h))
    var = h * p * (1 - p)
    assert sign_vote_error_bound(p, h, f, "cantelli") == pytest.approx(var / (var + t * t))
    assert sign_vote_error_bound(0.6, 10, 2) == 1.0  # 0.6 <= 1/2 + 2/20: no guarantee
    assert max_byzantine(0.8, 10) == 5  # f < h (2p - 1) = 6
    assert max_byzantine(0.5, 10) == -1
    assert sign_vote_condition(0.8, 10, 5) and not sign_vote_condition(0.8, 10, 6)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: sign_vote_error_exact(1.2, 10, 1), r"sign_vote_error_exact\.p: expected"),
        (lambda: sign_vote_error_bound(0.7, 0, 1), r"sign_vote_error_bound\.n_honest"),
        (lambda: sign_vote_error_bound(0.7, 5, -1), r"sign_vote_error_bound\.f"),
        (lambda: sign_vote_error_bound(0.7, 5, 1, "chernof"), r"\.method: expected one of"),
        (lambda: sign_vote_condition([0.5, math.nan], 5, 1), r"sign_vote_condition\.p"),
        (lambda: attacks.create("anti_majority(target='median')"), r"AntiMajority\.target"),
    ],
)
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("target", ["majority", "mean"])
def test_attack_is_the_worst_vote_pattern(target):
    """Over every choice of the f Byzantine votes in {-1, 0, 1}^(f x d), none disagrees with
    the honest workers' vote on more coordinates than the attack, and per coordinate the
    attack pushes the tally furthest from the honest vote (target = majority)."""
    rule = aggregators.SignMajority()
    attack = attacks.create("anti_majority", target=target)
    gen = torch.Generator().manual_seed(0)
    for h, f, d in [(3, 1, 3), (4, 2, 3), (5, 2, 2), (2, 1, 4)]:
        for _ in range(4):
            honest = torch.randn(h, d, generator=gen)
            honest[:, 0] = torch.tensor([1.0, -1.0] * (h // 2) + [0.0] * (h % 2))  # a tie
            honest_vote = rule(honest)
            byz = attack(honest, f)
            assert byz.shape == (f, d) and bool((byz != 0).all())
            mine = rule(torch.cat([honest, byz])) != honest_vote
            best = 0
            for flat in itertools.product((-1.0, 0.0, 1.0), repeat=f * d):
                other = torch.tensor(flat).view(f, d)
                best = max(best, int((rule(torch.cat([honest, other])) != honest_vote).sum()))
            if target == "majority":
                assert int(mine.sum()) == best
                tally = honest.sign().sum(0) + byz.sign().sum(0)
                ref = torch.where(honest_vote == 0, honest.mean(0).sign(), honest_vote)
                ref = torch.where(ref == 0, torch.ones_like(ref), ref)  # the last tie-break
                assert torch.equal(tally, honest.sign().sum(0) - f * ref)
            else:
                assert int(mine.sum()) <= best


def test_attack_finite_magnitudes_and_dtype():
    honest = torch.tensor([[0.0, 3e38, -2.0], [0.0, 3e38, 1.0]], dtype=torch.float32)
    byz = attacks.create("sign_vote")(honest, 3)
    assert byz.dtype == torch.float32 and torch.isfinite(byz).all()
    assert (byz[:, 0] != 0).all() and (byz[:, 1] < 0).all()


def test_vote_record_by_hand():
    honest = torch.tensor([[1.0, 1.0, -1.0, 2.0], [1.0, -1.0, -1.0, 0.5], [1.0, -1.0, 1.0, 0.0]])
    truth = torch.tensor([1.0, 1.0, -1.0, 0.0])  # the last coordinate is left out
    agg = torch.tensor([1.0, -1.0, 0.0, 1.0])
    rec = vote_record(honest, agg, truth, f=1, method="hoeffding")
    assert rec["agreement"] == pytest.approx((3 + 1 + 2) / 9)
    assert rec["wrong"] == pytest.approx(2 / 3)  # coordinates 1 (-1 vs +1) and 2 (0 vs -1)
    assert rec["wrong_honest"] == pytest.approx(1 / 3)  # coordinate 1: majority -1
    levels = np.array([1.0, 1 / 3, 2 / 3])
    assert rec["exact"] == pytest.approx(float(sign_vote_error_exact(levels, 3, 1).mean()))
    assert rec["bound"] == pytest.approx(float(sign_vote_error_bound(levels, 3, 1).mean()))
    assert rec["condition"] == pytest.approx(1 / 3)  # only p = 1 > 1/2 + 1/6


def test_training_measurement_on_digits():
    cfg = {"dataset": "digits", "model": "logreg", "n_honest": 7, "f": 2,
           "aggregator": "sign_majority", "attack": "anti_majority", "rounds": 6,
           "lr": 0.01, "momentum": 0.9, "batch_size": 16}  # fmt: skip
    recs = sign_vote_training(cfg, every=3, reference_examples=300)
    assert [r["round"] for r in recs] == [3, 6]
    for r in recs:
        for key in ("agreement", "wrong", "wrong_honest", "exact", "bound", "condition"):
            assert 0.0 <= r[key] <= 1.0, (key, r)
        assert r["bound"] >= r["exact"] - 1e-12
    clean = sign_vote_training({**cfg, "attack": "none"}, every=6, reference="honest_mean")
    assert clean[0]["wrong"] == clean[0]["wrong_honest"]  # no attack: the honest vote
    assert clean[0]["exact"] <= recs[-1]["exact"]  # f = 0 against f = 2
    with pytest.raises(ValueError, match=r"sign_vote_training\.every"):
        sign_vote_training(cfg, every=0)
