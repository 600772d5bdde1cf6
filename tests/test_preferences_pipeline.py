"""byzance.preferences: GBT, trust, voting rights, scaling, the pipeline, attacks, CSV
readers and the ``byzance scores`` commands."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from byzance.cli import main
from byzance.preferences.attacks import attack, displacement
from byzance.preferences.data import (
    Vouches,
    read_comparisons,
    read_vouches,
    sample_gbt,
    synthetic,
)
from byzance.preferences.gbt import UniformGBT, cgf, cgf_prime, cgf_second
from byzance.preferences.pipeline import Pipeline
from byzance.preferences.trust import AffineOvertrust, LipschiTrust


def test_cgf_and_its_derivatives():
    t = np.array([-400.0, -5, -0.5, -2e-3, -1e-4, 0.0, 1e-4, 2e-3, 0.011, 0.5, 5, 400])
    h = 1e-5
    assert np.allclose((cgf(t + h) - cgf(t - h)) / (2 * h), cgf_prime(t), atol=1e-7)
    assert np.allclose((cgf_prime(t + h) - cgf_prime(t - h)) / (2 * h), cgf_second(t), atol=1e-6)
    assert cgf(np.array([2.0]))[0] == pytest.approx(np.log(np.sinh(2.0) / 2.0))
    # the sampler's mean is Φ'(θ) (the GBT model's expected comparison)
    rng = np.random.default_rng(0)
    for theta in (-3.0, 0.0, 0.7):
        r = sample_gbt(np.full(100_000, theta), rng)
        assert r.mean() == pytest.approx(cgf_prime(np.array([theta]))[0], abs=0.01)


def test_gbt_recovers_true_scores_from_many_comparisons():
    data = synthetic(3, 12, 9000, seed=1, scale_spread=0.0, mean_scale=1.0)
    us = UniformGBT()(data.comparisons)
    for u in range(3):
        m = us.user == u
        s, true = us.score[m], data.true_scores[us.item[m]]
        slope, _ = np.polyfit(true, s, 1)
        assert np.corrcoef(s, true)[0, 1] > 0.98
        assert slope == pytest.approx(1.0, abs=0.1)  # the prior (std 7) barely shrinks
        assert np.all(us.left[m] > 0) and np.all(us.left[m] < 1)


def test_gbt_solution_is_a_stationary_point_and_uncertainty_raises_the_loss_by_one():
    data = synthetic(2, 5, 60, seed=2)
    gbt = UniformGBT()
    us = gbt(data.comparisons)
    c = data.comparisons
    index = {(u, e): i for i, (u, e) in enumerate(zip(us.user, us.item, strict=True))}

    def loss(scores):
        pa = np.array([index[u, a] for u, a in zip(c.user, c.a, strict=True)])
        pb = np.array([index[u, b] for u, b in zip(c.user, c.b, strict=True)])
        return gbt._objective(scores, pa, pb, c.score / c.score_max)

    base = loss(us.score)
    for i in range(us.score.size):
        e = np.zeros(us.score.size)
        e[i] = 1e-5
        assert (loss(us.score + e) - loss(us.score - e)) / 2e-5 == pytest.approx(0, abs=1e-5)
        e[i] = us.right[i]
        assert loss(us.score + e) - base == pytest.approx(1.0, abs=1e-6)
        e[i] = -us.left[i]
        assert loss(us.score + e) - base == pytest.approx(1.0, abs=1e-6)


def test_lipschitrust_hand_case_and_sybils_without_vouches_get_no_trust():
    # 0 pretrusted vouches for 1; 2 and 3 (a Sybil pair) vouch for each other
    v = Vouches(np.array([0, 2, 3]), np.array([1, 3, 2]), np.ones(3),
                np.array([True, False, False, False]))
    trust = LipschiTrust()(v, 4)
    assert trust[0] == pytest.approx(0.8)
    assert trust[1] == pytest.approx(0.8 * 0.8 / (5 + 1))
    assert trust[2] == trust[3] == 0.0


def test_affine_overtrust_hand_case_and_sybil_budget():
    rights = AffineOvertrust(min_overtrust=0.5, overtrust_ratio=0.0)
    # item 0 scored by users of trust 1, 0.5, 0: c solves (c - 0.5) + c = 0.5 -> c = 0.5
    got = rights(np.array([1.0, 0.5, 0.0]), np.array([0, 1, 2]), np.array([0, 0, 0]), 1)
    assert got == pytest.approx([1.0, 0.5, 0.5], abs=1e-9)
    # however many untrusted accounts score an item, their total stays within the budget
    step = AffineOvertrust()
    for n in (1, 10, 1000):
        trust = np.concatenate([np.full(20, 0.8), np.zeros(n)])
        users = np.arange(20 + n)
        w = step(trust, users, np.zeros(20 + n, dtype=np.int64), 1)
        assert w[20:].sum() <= 2.0 + 0.1 * 16 + 1e-6
    no_overtrust = AffineOvertrust(min_overtrust=0.0, overtrust_ratio=0.0)
    w = no_overtrust(trust, users, np.zeros(20 + n, dtype=np.int64), 1)
    assert w[20:].sum() == pytest.approx(0.0, abs=1e-9) and w[:20].sum() == pytest.approx(16)


def test_sybil_group_without_vouches_gets_no_voting_right_without_overtrust():
    data = attack(synthetic(40, 10, 800, seed=0), "sybil", 15, target=0, per_attacker=5)
    pipe = Pipeline(voting_rights=AffineOvertrust(min_overtrust=0.0, overtrust_ratio=0.0))
    res = pipe.run(data.comparisons, data.vouches)
    sybil = res.scaled.user >= 40
    assert np.all(res.trust[40:] == 0) and sybil.any()
    assert np.all(res.rights[sybil] == 0)


def test_pipeline_ranks_items_like_the_truth():
    data = synthetic(150, 40, 6000, seed=3)
    res = Pipeline().run(data.comparisons, data.vouches)
    assert spearmanr(res.score, data.true_scores)[0] > 0.9
    assert np.all(np.abs(res.score) < 100) and np.all(res.uncertainty >= 0)
    assert set(res.seconds) == {
        "trust", "preference_learning", "scaling", "voting_rights", "aggregation",
        "post_process",
    }


@pytest.mark.parametrize(("kind", "vouched"), [("sybil", 0), ("coordinated", 0)])
def test_attack_moves_the_target_within_the_aggregation_bound(kind, vouched):
    data = synthetic(80, 20, 2500, seed=4)
    target = int(np.argmin(data.true_scores))
    r = displacement(data, kind, [0, 3, 12], target, vouched=vouched, per_attacker=8)
    assert r.moved[0] == 0.0
    assert all(m <= b + 1e-9 for m, b in zip(r.moved, r.bound, strict=True))
    assert r.moved[2] > 0 and r.attack_rights[2] > r.attack_rights[1] > 0


def _write(path, text):
    path.write_text(text)
    return path


def test_read_comparisons_and_vouches(tmp_path):
    f = _write(
        tmp_path / "c.csv",
        "public_username,video_a,video_b,criteria,score\n"
        "alice,v1,v2,largely_recommended,3\n"
        "alice,v1,v2,reliability,-10\n"
        "bob,v2,v3,largely_recommended,-4.5\n",
    )
    c = read_comparisons(f)
    assert c.users == ["alice", "bob"] and c.items == ["v1", "v2", "v3"]
    assert c.score.tolist() == [3.0, -4.5] and c.b.tolist() == [1, 2]
    assert len(read_comparisons(f, criteria=None)) == 3
    v = read_vouches(
        _write(tmp_path / "v.csv", "by_username,to_username,value\nalice,bob,1\nzed,bob,1\n"),
        c.users, ["alice"],
    )
    assert v.voucher.tolist() == [0] and v.vouchee.tolist() == [1]
    assert v.pretrusted.tolist() == [True, False]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ("alice,v1,v2,largely_recommended,abc\n", r"c.csv:2: score: expected a number"),
        ("alice,v1,v2,largely_recommended,11\n", r"c.csv:2: score: expected a number in"),
        ("alice,v1,v1,largely_recommended,1\n", r"c.csv:2: a video compared with itself"),
        ("alice,v1,v2\n", r"c.csv:2: expected 5 fields, got 3"),
        (",v1,v2,largely_recommended,1\n", r"c.csv:2: empty user or video"),
    ],
)
def test_malformed_rows_give_one_line_errors_naming_the_row(tmp_path, rows, message):
    f = _write(tmp_path / "c.csv", "public_username,video_a,video_b,criteria,score\n" + rows)
    with pytest.raises(ValueError, match=message) as err:
        read_comparisons(f)
    assert "\n" not in str(err.value)


def test_missing_column_is_named(tmp_path):
    f = _write(tmp_path / "c.csv", "public_username,video_a,criteria,score\nalice,v1,x,1\n")
    with pytest.raises(ValueError, match="lacks column.*video_b"):
        read_comparisons(f)


def test_cli_scores_and_its_errors(tmp_path, capsys):
    rows = ["public_username,video_a,video_b,criteria,score"]
    rng = np.random.default_rng(0)
    true = {f"v{i}": i / 3 for i in range(6)}
    for u in range(8):
        for _ in range(15):
            a, b = rng.choice(6, 2, replace=False)
            s = float(np.clip(3 * (true[f"v{b}"] - true[f"v{a}"]), -10, 10))
            rows.append(f"user{u},v{a},v{b},largely_recommended,{s:.2f}")
    f = _write(tmp_path / "c.csv", "\n".join(rows) + "\n")
    out = tmp_path / "s.csv"
    assert main(["scores", str(f), "--out", str(out), "--quiet", "--top", "2"]) == 0
    text = capsys.readouterr().out
    assert "top 2:" in text and "bottom 2:" in text
    lines = out.read_text().splitlines()
    assert lines[0] == "item,score,uncertainty" and lines[1].startswith("v5,")
    bad = _write(tmp_path / "bad.csv", rows[0] + "\nuser0,v1,v2,largely_recommended,x\n")
    assert main(["scores", str(bad)]) == 2
    assert "bad.csv:2: score: expected a number, got 'x'" in capsys.readouterr().err
    assert main(["scores"]) == 2


def test_cli_scores_attack_writes_plots_and_measurements(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "attack"
    argv = ["scores-attack", "--users", "40", "--items", "12", "--comparisons", "900",
            "--attackers", "0,4", "--attack", "sybil", "--out", str(out)]
    assert main(argv) == 0
    assert {p.name for p in out.iterdir()} == {"sybil.png", "attacks.png", "displacement.json"}
    assert "sybil: attackers [0, 4]" in capsys.readouterr().out
    assert main([*argv[:-2], "--attackers", "x", "--out", str(out)]) == 2


def test_private_judgements_get_the_privacy_penalty():
    data = synthetic(30, 8, 600, seed=5)
    private = data.comparisons.user == 0
    pipe = Pipeline(voting_rights=AffineOvertrust(min_overtrust=0.0, overtrust_ratio=0.0))
    shown = pipe.run(data.comparisons, data.vouches)
    hidden = pipe.run(data.comparisons, data.vouches, private=private)
    mine = shown.scaled.user == 0
    assert np.allclose(hidden.rights[mine], 0.5 * shown.rights[mine])
    assert np.allclose(hidden.rights[~mine], shown.rights[~mine])
    with pytest.raises(ValueError, match="private: expected one bool per comparison"):
        pipe.run(data.comparisons, data.vouches, private=private[:3])
