"""Comparisons and vouches: arrays, CSV readers (Tournesol's public dataset layout) and a
seeded synthetic generator.

A comparison ``(user, a, b, score)`` with ``score`` in ``[-score_max, score_max]`` says how
much ``b`` should be recommended more than ``a`` (negative: ``a`` more). The generator draws
the normalised comparison ``r = score / score_max`` from the generalized Bradley-Terry model
with the uniform root law (Fageot et al. 2023), the model :mod:`byzance.preferences.gbt`
fits: given ``θ = s_b - s_a`` (the user's own scale times the true score difference),
``r`` on ``[-1, 1]`` has density ``θ exp(θ r) / (2 sinh θ)``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from byzance.validation import Integer, Real, check_param

COMPARISON_COLUMNS = ("public_username", "video_a", "video_b", "criteria", "score")
VOUCH_COLUMNS = (("voucher", "vouchee", "value"), ("by_username", "to_username", "value"))


@dataclass
class Comparisons:
    """Comparisons as parallel arrays; ``users`` / ``items``: the names of the indices."""

    user: np.ndarray
    a: np.ndarray
    b: np.ndarray
    score: np.ndarray
    users: list[str]
    items: list[str]
    score_max: float = 10.0

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.items)

    def __len__(self) -> int:
        return int(self.user.size)


@dataclass
class Vouches:
    """Vouches ``voucher -> vouchee`` (user indices) with their values, and the pretrusted
    users (a bool per user)."""

    voucher: np.ndarray
    vouchee: np.ndarray
    value: np.ndarray
    pretrusted: np.ndarray


@dataclass
class SyntheticData:
    """A generated population: its comparisons, vouches, and the truth behind them."""

    comparisons: Comparisons
    vouches: Vouches
    true_scores: np.ndarray  # per item
    user_scale: np.ndarray  # per user: θ = scale * (true_b - true_a)
    malicious: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))


def sample_gbt(theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One draw of ``r`` per θ from the uniform-root-law GBT: density ∝ exp(θ r) on [-1, 1]
    (inverse CDF; the uniform law at θ = 0)."""
    u = rng.random(theta.shape)
    t = np.where(np.abs(theta) < 1e-8, 1e-8, theta)
    # r = log(e^{-t} + u (e^{t} - e^{-t})) / t, written without overflow for large |t|
    big = np.abs(t)
    r_pos = 1.0 + (np.log(u + (1 - u) * np.exp(-2 * big))) / big
    r_neg = -1.0 - (np.log((1 - u) + u * np.exp(-2 * big))) / big
    return np.clip(np.where(t > 0, r_pos, r_neg), -1.0, 1.0)


def synthetic(
    n_users: int = 100,
    n_items: int = 50,
    n_comparisons: int = 2000,
    *,
    seed: int = 0,
    scale_spread: float = 0.3,
    mean_scale: float = 2.0,
    pretrusted_fraction: float = 0.2,
    vouches_per_user: int = 3,
    score_max: float = 10.0,
    integer_scores: bool = False,
) -> SyntheticData:
    """Items with true scores ~ N(0, 1); user u with scale ``mean_scale * exp(N(0,
    scale_spread²))`` compares uniformly random pairs of distinct items (``n_comparisons``
    in all, users drawn uniformly); a ``pretrusted_fraction`` of users is pretrusted and
    every user receives ``vouches_per_user`` vouches from random other users."""
    n_users = check_param("synthetic", "n_users", n_users, Integer(low=1))
    n_items = check_param("synthetic", "n_items", n_items, Integer(low=2))
    n_comparisons = check_param("synthetic", "n_comparisons", n_comparisons, Integer(low=1))
    check_param("synthetic", "pretrusted_fraction", pretrusted_fraction, Real(0, 1))
    rng = np.random.default_rng(seed)
    true = rng.normal(size=n_items)
    scale = mean_scale * np.exp(scale_spread * rng.normal(size=n_users))
    user = rng.integers(0, n_users, n_comparisons)
    a = rng.integers(0, n_items, n_comparisons)
    b = (a + rng.integers(1, n_items, n_comparisons)) % n_items  # b != a
    r = sample_gbt(scale[user] * (true[b] - true[a]), rng)
    score = r * score_max
    if integer_scores:
        score = np.round(score)
    pre = np.zeros(n_users, dtype=bool)
    pre[rng.permutation(n_users)[: max(1, round(pretrusted_fraction * n_users))]] = True
    vouchee = np.repeat(np.arange(n_users), vouches_per_user)
    voucher = (vouchee + rng.integers(1, max(n_users, 2), vouchee.size)) % n_users
    keep = voucher != vouchee
    comparisons = Comparisons(
        user, a, b, score, [f"user{u}" for u in range(n_users)],
        [f"item{e}" for e in range(n_items)], score_max,
    )
    vouches = Vouches(voucher[keep], vouchee[keep], np.ones(int(keep.sum())), pre)
    return SyntheticData(comparisons, vouches, true, scale, np.zeros(n_users, dtype=bool))


def _rows(path: str | Path, required: tuple[str, ...]) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path}: empty file, expected a header with {', '.join(required)}")
        header = [h.strip() for h in header]
        missing = [c for c in required if c not in header]
        if missing:
            raise ValueError(
                f"{path}: header lacks column(s) {', '.join(missing)} (has {', '.join(header)})"
            )
        return header, list(reader)


def read_comparisons(
    path: str | Path, *, criteria: str | None = "largely_recommended", score_max: float = 10.0
) -> Comparisons:
    """Comparisons from a CSV in the layout of Tournesol's public dataset (columns
    ``public_username, video_a, video_b, criteria, score``; others ignored), keeping the rows
    of ``criteria`` (None: all). A malformed row raises one ``ValueError`` naming its line."""
    header, rows = _rows(path, COMPARISON_COLUMNS)
    col = {c: header.index(c) for c in COMPARISON_COLUMNS}
    users: dict[str, int] = {}
    items: dict[str, int] = {}
    out: list[tuple[int, int, int, float]] = []
    for line, row in enumerate(rows, start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) < len(header):
            raise ValueError(f"{path}:{line}: expected {len(header)} fields, got {len(row)}")
        if criteria is not None and row[col["criteria"]].strip() != criteria:
            continue
        name, a, b = (row[col[c]].strip() for c in ("public_username", "video_a", "video_b"))
        if not name or not a or not b:
            raise ValueError(f"{path}:{line}: empty user or video in {row!r}")
        if a == b:
            raise ValueError(f"{path}:{line}: a video compared with itself ({a!r})")
        try:
            score = float(row[col["score"]])
        except ValueError:
            raise ValueError(
                f"{path}:{line}: score: expected a number, got {row[col['score']]!r}"
            ) from None
        if not np.isfinite(score) or abs(score) > score_max:
            raise ValueError(
                f"{path}:{line}: score: expected a number in [-{score_max:g}, {score_max:g}], "
                f"got {row[col['score']]!r}"
            )
        u = users.setdefault(name, len(users))
        ia, ib = items.setdefault(a, len(items)), items.setdefault(b, len(items))
        out.append((u, ia, ib, score))
    if not out:
        which = f" of criteria {criteria!r}" if criteria else ""
        raise ValueError(f"{path}: no comparison{which}")
    arr = np.array(out, dtype=np.float64)
    return Comparisons(
        arr[:, 0].astype(np.int64), arr[:, 1].astype(np.int64), arr[:, 2].astype(np.int64),
        arr[:, 3], list(users), list(items), score_max,
    )


def read_vouches(
    path: str | Path, users: list[str], pretrusted: list[str] | None = None
) -> Vouches:
    """Vouches from a CSV with columns ``voucher, vouchee, value`` (or Tournesol's
    ``by_username, to_username, value``), indexed by ``users`` (vouches naming unknown users
    are kept out: they compared nothing); ``pretrusted``: names of pretrusted users."""
    with open(path, newline="", encoding="utf-8") as fh:
        header = [h.strip() for h in next(csv.reader(fh), [])]
    names = next((c for c in VOUCH_COLUMNS if all(x in header for x in c)), VOUCH_COLUMNS[0])
    header, rows = _rows(path, names)
    col = [header.index(c) for c in names]
    index = {u: i for i, u in enumerate(users)}
    src, dst, val = [], [], []
    for line, row in enumerate(rows, start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) < len(header):
            raise ValueError(f"{path}:{line}: expected {len(header)} fields, got {len(row)}")
        by, to, value = (row[c].strip() for c in col)
        try:
            v = float(value)
        except ValueError:
            raise ValueError(f"{path}:{line}: value: expected a number, got {value!r}") from None
        if not np.isfinite(v) or v < 0:
            raise ValueError(f"{path}:{line}: value: expected a number >= 0, got {value!r}")
        if by in index and to in index and by != to:
            src.append(index[by])
            dst.append(index[to])
            val.append(v)
    pre = np.zeros(len(users), dtype=bool)
    for name in pretrusted or []:
        if name in index:
            pre[index[name]] = True
    return Vouches(
        np.array(src, dtype=np.int64), np.array(dst, dtype=np.int64), np.array(val), pre
    )


def write_scores(path: str | Path, items: list[str], scores: np.ndarray, unc: np.ndarray) -> None:
    """``item, score, uncertainty`` rows, best first."""
    order = np.argsort(-scores, kind="stable")
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["item", "score", "uncertainty"])
        for i in order:
            w.writerow([items[i], f"{scores[i]:.6g}", f"{unc[i]:.6g}"])
