"""How often a majority vote of signs goes wrong under omniscient, colluding Byzantine workers.

Setting (Bernstein, Zhao, Azizzadenesheli & Anandkumar, "signSGD with majority vote is
communication efficient and fault tolerant", ICLR 2019; Mengoli, Moll, Strozzi & El-Mhamdi,
"On the Byzantine Fault Tolerance of signSGD with Majority Vote", 2025): for one coordinate,
each of the h honest workers votes the right sign (that of the true gradient) independently
with probability p; the f Byzantine workers know every vote and the true sign and collude.
The server outputs ``sign(sum of the n = h + f votes)``. Each vote moves the tally by at most
1, so the strongest attack is every Byzantine worker voting against the true sign (any other
vote moves the tally less far from the wrong side), and with X ~ Binomial(h, p) right honest
votes the tally in the right direction is ``X - (h - X) - f``. The vote is *not right* (wrong,
or a tie, which moves nothing) iff that tally is <= 0::

    P_err(p, h, f) = P[X <= (h + f) / 2] = sum_{k <= floor((h + f) / 2)} C(h, k) p^k (1-p)^(h-k)

(``sign_vote_error_exact``). The bound (``sign_vote_error_bound``) holds under the condition
``p > 1/2 + f / (2h)``, i.e. the honest margin ``E[X] - (h - E[X]) = h (2p - 1)`` exceeds f
(it needs f < h: fewer Byzantine than honest workers, the limit of a majority vote). With
``t = h p - (h + f)/2 > 0`` the deviation of X below its mean that makes the vote wrong:

* ``method="hoeffding"`` (default): ``P[X - hp <= -t] <= exp(-2 t^2 / h)
  = exp(-(h (2p - 1) - f)^2 / (2h))``, exponentially small in h at a fixed margin;
* ``method="cantelli"`` (one-sided Chebyshev, the inequality Bernstein et al. use for the
  vote): ``P[X - hp <= -t] <= h p (1-p) / (h p (1-p) + t^2)``.

We could not read the 2025 paper's own statement of its bound (only its abstract was
available): both bounds above are derived here, in its setting and with its attack, and
never below the exact value (checked by the tests). Where the condition fails the bound is 1
(no guarantee); ``sign_vote_condition`` says where it holds.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from byzance.validation import Integer, OneOf, check_param

METHODS = ("hoeffding", "cantelli")


def _checked(p: Any, n_honest: Any, f: Any, who: str) -> tuple[np.ndarray, int, int]:
    h = check_param(who, "n_honest", n_honest, Integer(low=1))
    f = check_param(who, "f", f, Integer(low=0))
    arr = np.asarray(p, dtype=np.float64)
    if not np.all(np.isfinite(arr)) or np.any(arr < 0) or np.any(arr > 1):
        bad = arr[~(np.isfinite(arr) & (arr >= 0) & (arr <= 1))].ravel()[0]
        raise ValueError(f"{who}.p: expected probabilities in [0, 1], got {float(bad)!r}")
    return arr, h, f


def _out(value: np.ndarray, p: Any) -> Any:
    return float(value) if np.ndim(p) == 0 else value


def sign_vote_condition(p: Any, n_honest: int, f: int) -> Any:
    """Where the bound applies: ``p > 1/2 + f / (2 n_honest)`` (bool, or an array of them)."""
    arr, h, f = _checked(p, n_honest, f, "sign_vote_condition")
    ok = arr * h - (h + f) / 2 > 0
    return bool(ok) if np.ndim(p) == 0 else ok


def sign_vote_error_exact(p: Any, n_honest: int, f: int) -> Any:
    """``P[X <= (h + f) / 2]`` for X ~ Binomial(h, p): the probability that the vote is not
    the right sign when the f Byzantine workers all vote against it (float, or an array
    shaped like ``p``). Summed in log space, exact to float64 rounding."""
    arr, h, f = _checked(p, n_honest, f, "sign_vote_error_exact")
    top = min(h, (h + f) // 2)
    k = np.arange(top + 1, dtype=np.float64)
    log_comb = np.array(
        [math.lgamma(h + 1) - math.lgamma(i + 1) - math.lgamma(h - i + 1) for i in range(top + 1)]
    )
    flat = arr.reshape(-1, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_p = np.where(k > 0, k * np.log(flat), 0.0)
        log_q = np.where(h - k > 0, (h - k) * np.log1p(-flat), 0.0)
    terms = np.exp(log_comb + log_p + log_q)  # exp(-inf) = 0 at p in {0, 1}
    value = np.clip(terms.sum(1), 0.0, 1.0).reshape(arr.shape)
    return _out(value, p)


def sign_vote_error_bound(p: Any, n_honest: int, f: int, method: str = "hoeffding") -> Any:
    """Upper bound on ``sign_vote_error_exact`` (see the module docstring for both methods and
    their condition ``p > 1/2 + f / (2 n_honest)``; 1 where it fails)."""
    arr, h, f = _checked(p, n_honest, f, "sign_vote_error_bound")
    check_param("sign_vote_error_bound", "method", method, OneOf(*METHODS))
    t = arr * h - (h + f) / 2
    if method == "hoeffding":
        bound = np.exp(-2.0 * np.square(t) / h)
    else:
        var = h * arr * (1 - arr)
        with np.errstate(divide="ignore", invalid="ignore"):
            bound = np.where(var > 0, var / (var + np.square(t)), 0.0)
    value = np.where(t > 0, np.minimum(bound, 1.0), 1.0)
    return _out(value, p)


def max_byzantine(p: float, n_honest: int) -> int:
    """The largest f for which the bound's condition holds at ``p`` (-1: none, p <= 1/2)."""
    arr, h, _ = _checked(p, n_honest, 0, "max_byzantine")
    margin = h * (2 * float(arr) - 1)  # the condition is f < margin
    return int(math.ceil(margin - 1e-9) - 1) if margin > 1e-9 else -1  # rounding of h(2p-1)
