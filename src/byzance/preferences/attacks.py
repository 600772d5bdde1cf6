"""Attacks on the pipeline and how far they move a target item.

* ``sybil``: fake accounts that push ``target`` up (``direction`` +1) or down with the most
  extreme comparisons against random items, and vouch for each other; ``vouched`` of them
  also get one vouch from a pretrusted user (a compromised voucher); without it the group
  has trust 0 and shares only the overtrust budget of ``AffineOvertrust``.
* ``coordinated``: real, trusted accounts (each vouched by two pretrusted users) acting
  together in the same way.
* ``scaling``: trusted accounts that compare many item pairs honestly in order but always
  at the extreme score, so their scores spread far more than anyone's: they try to distort
  the common scale (Mehestan) rather than one item.

``displacement`` runs the pipeline with 0, k_1, k_2, ... attackers and reports the target's
move (in standardised units, before squashing) next to the aggregation step's Lipschitz
bound ``L W_attack (1 + q / (1 - q))`` (``W_attack``: the attackers' total voting right on
the target; q = 0.2 by default). The bound is the
aggregation step's guarantee with the honest users' scaled scores fixed; attackers also shift
the common scale and the zero point, which the bound does not cover.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from byzance.preferences.data import Comparisons, SyntheticData, Vouches
from byzance.preferences.gbt import UserScores
from byzance.validation import Integer, OneOf, check_param

ATTACKS = ("sybil", "coordinated", "scaling")


def _extend(data: SyntheticData, user, a, b, score, src, dst, n_new: int) -> SyntheticData:
    c, v = data.comparisons, data.vouches
    n0 = c.n_users
    comparisons = Comparisons(
        np.concatenate([c.user, user + n0]), np.concatenate([c.a, a]),
        np.concatenate([c.b, b]), np.concatenate([c.score, score]),
        c.users + [f"attacker{i}" for i in range(n_new)], c.items, c.score_max,
    )
    shift = lambda arr: np.where(arr < 0, -arr - 1, arr + n0)  # noqa: E731 (<0: an honest user)
    vouches = Vouches(
        np.concatenate([v.voucher, shift(src)]), np.concatenate([v.vouchee, shift(dst)]),
        np.concatenate([v.value, np.ones(len(src))]),
        np.concatenate([v.pretrusted, np.zeros(n_new, dtype=bool)]),
    )
    malicious = np.concatenate([np.zeros(n0, dtype=bool), np.ones(n_new, dtype=bool)])
    return SyntheticData(comparisons, vouches, data.true_scores, data.user_scale, malicious)


def attack(
    data: SyntheticData,
    kind: str,
    n_attackers: int,
    target: int,
    *,
    direction: int = 1,
    per_attacker: int = 20,
    vouched: int = 0,
    seed: int = 0,
) -> SyntheticData:
    """``data`` with ``n_attackers`` new accounts running attack ``kind`` (module docstring);
    honest users keep their indices, the attackers come after them."""
    kind = check_param("attack", "kind", kind, OneOf(*ATTACKS))
    n = check_param("attack", "n_attackers", n_attackers, Integer(low=0))
    n_items = data.comparisons.n_items
    check_param("attack", "target", target, Integer(0, n_items - 1))
    check_param("attack", "direction", direction, OneOf(1, -1))
    rng = np.random.default_rng(seed)
    smax = data.comparisons.score_max
    user = np.repeat(np.arange(n), per_attacker)
    if kind == "scaling":
        a = rng.integers(0, n_items, user.size)
        b = (a + rng.integers(1, n_items, user.size)) % n_items
        score = smax * np.sign(data.true_scores[b] - data.true_scores[a])
    else:
        other = (target + rng.integers(1, n_items, user.size)) % n_items
        flip = rng.random(user.size) < 0.5  # the target on either side
        a, b = np.where(flip, target, other), np.where(flip, other, target)
        score = np.where(flip, -1.0, 1.0) * smax * direction  # + : b preferred
    pre = np.flatnonzero(data.vouches.pretrusted)
    src, dst = [], []
    if kind == "sybil":
        ring = np.arange(n)
        src += list(ring)
        dst += list((ring + 1) % n) if n > 1 else []
        src = src[: len(dst)]
        for i in range(min(vouched, n)):
            src.append(-int(rng.choice(pre)) - 1)
            dst.append(i)
    else:
        for i in range(n):
            for voucher in rng.choice(pre, size=min(2, pre.size), replace=False):
                src.append(-int(voucher) - 1)
                dst.append(i)
    return _extend(
        data, user, a, b, score, np.array(src, dtype=np.int64), np.array(dst, dtype=np.int64), n
    )


def concat_scores(clean: UserScores, extra: UserScores, n_users: int) -> UserScores:
    """The honest users' fitted scores followed by the attackers' (fitted alone: GBT fits
    each user independently), as one ``UserScores`` over ``n_users``."""
    return UserScores(
        np.concatenate([clean.user, extra.user + clean.n_users]),
        np.concatenate([clean.item, extra.item]), np.concatenate([clean.score, extra.score]),
        np.concatenate([clean.left, extra.left]), np.concatenate([clean.right, extra.right]),
        n_users, clean.n_items,
    )


@dataclass
class Displacement:
    """One attack's measurements: per number of attackers, the target's raw score, its move
    from the attack-free run, the bound, and the attackers' voting right on the target."""

    kind: str
    counts: list[int]
    raw: list[float]
    moved: list[float]
    bound: list[float]
    attack_rights: list[float]
    squashed_moved: list[float]


def displacement(
    data: SyntheticData,
    kind: str,
    counts: list[int],
    target: int,
    pipeline=None,
    *,
    direction: int = 1,
    per_attacker: int = 20,
    vouched: int = 0,
    seed: int = 0,
) -> Displacement:
    """Run the pipeline for each number of attackers in ``counts`` (module docstring)."""
    from byzance.preferences.pipeline import Pipeline

    pipe = pipeline or Pipeline()
    clean_scores = pipe.preference_learning(data.comparisons)
    base = pipe.run(data.comparisons, data.vouches, user_scores=clean_scores)
    out = Displacement(kind, [], [], [], [], [], [])
    n0 = data.comparisons.n_users
    for k in counts:
        attacked = attack(
            data, kind, k, target, direction=direction, per_attacker=per_attacker,
            vouched=vouched, seed=seed,
        )
        c = attacked.comparisons
        if k:
            mine = c.user >= n0
            sub = Comparisons(
                c.user[mine] - n0, c.a[mine], c.b[mine], c.score[mine],
                c.users[n0:], c.items, c.score_max,
            )
            scores = concat_scores(clean_scores, pipe.preference_learning(sub), c.n_users)
        else:
            scores = clean_scores
        res = pipe.run(c, attacked.vouches, user_scores=scores)
        on_target = (res.scaled.item == target) & (res.scaled.user >= n0)
        rights = float(res.rights[on_target].sum())
        out.counts.append(int(k))
        out.raw.append(float(res.raw[target]))
        out.moved.append(float(abs(res.raw[target] - base.raw[target])))
        out.squashed_moved.append(float(abs(res.score[target] - base.score[target])))
        out.attack_rights.append(rights)
        out.bound.append(float(pipe.aggregation.bound(rights)))
    return out
