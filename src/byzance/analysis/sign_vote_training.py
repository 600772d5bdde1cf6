"""signSGD with majority vote in training, measured against the bound every k rounds.

The run is the simulator's (``byzance.sim.Simulation``) with ``aggregator="sign_majority"``:
each honest worker sends its momentum, whose sign is its vote (``SignMajority`` takes the
sign of every input, so sending ``m`` or ``sign(m)`` is the same), and the server steps along
the majority sign (Signum with majority vote, Bernstein et al., ICLR 2019). With
``attack="anti_majority"`` the f Byzantine workers vote against the honest majority.

Every ``every`` rounds, before the round's step, the true sign ``s_j`` of each coordinate is
taken from the gradient of the loss on a fixed sample of ``reference_examples`` training
examples at the current parameters (``reference="gradient"``), or from the honest workers'
mean vector (``reference="honest_mean"``, what plain averaging would step along). Then:

* ``agreement``: the mean over coordinates of ``p_j``, the fraction of honest votes equal to
  ``s_j`` (coordinates with ``s_j = 0`` left out);
* ``wrong``: the fraction of coordinates where the server's vote is not ``s_j``
  (``wrong_honest``: the same for the vote of the honest workers alone);
* ``exact`` / ``bound``: ``mean_j P_err(p_j, h, f)`` and ``mean_j bound(p_j, h, f)``
  (``byzance.analysis.sign_vote``): what the model of independent honest votes, each right
  with probability ``p_j``, predicts for ``wrong`` under the worst attack, and its bound;
  ``condition``: the fraction of coordinates where the bound's condition holds.

``p_j`` takes only the h + 1 values k / h, so both are sums over a histogram of them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from byzance.analysis.sign_vote import (
    sign_vote_condition,
    sign_vote_error_bound,
    sign_vote_error_exact,
)
from byzance.validation import Integer, OneOf, check_param


def vote_record(
    honest: torch.Tensor, aggregate: torch.Tensor, truth: torch.Tensor, f: int, method: str
) -> dict[str, float]:
    """The measurements above for one round: honest (h, d) vectors, the server's aggregate
    (d,) in {-1, 0, 1} and the true direction (d,) (its sign is used)."""
    h = honest.shape[0]
    s = truth.sign()
    keep = s != 0
    s, votes, agg = s[keep], honest.sign()[:, keep], aggregate[keep]
    if s.numel() == 0:
        nan = float("nan")
        return dict.fromkeys(
            ("agreement", "wrong", "wrong_honest", "exact", "bound", "condition"), nan
        )
    right = (votes == s).sum(0)  # (d',) in 0..h
    hist = torch.bincount(right, minlength=h + 1).double().cpu().numpy() / s.numel()
    levels = np.arange(h + 1) / h
    honest_vote = votes.sum(0).sign()
    return {
        "agreement": float((right.double() / h).mean()),
        "wrong": float((agg.sign() != s).double().mean()),
        "wrong_honest": float((honest_vote != s).double().mean()),
        "exact": float(hist @ sign_vote_error_exact(levels, h, f)),
        "bound": float(hist @ sign_vote_error_bound(levels, h, f, method)),
        "condition": float(hist @ sign_vote_condition(levels, h, f)),
    }


def sign_vote_training(
    config: Any,
    *,
    every: int = 10,
    reference: str = "gradient",
    reference_examples: int = 2048,
    method: str = "hoeffding",
) -> list[dict[str, float]]:
    """Train ``config`` (an ``ExperimentConfig`` or dict; its aggregator should be
    ``sign_majority``) in the simulator and return one record per ``every`` rounds (and the
    last): ``round``, ``test_accuracy`` and ``vote_record``'s fields."""
    from byzance.sim.simulation import Simulation

    check_param("sign_vote_training", "every", every, Integer(low=1))
    check_param("sign_vote_training", "reference", reference, OneOf("gradient", "honest_mean"))
    check_param("sign_vote_training", "reference_examples", reference_examples, Integer(low=1))
    sim = Simulation(config)
    cfg = sim.config
    f = cfg.f if cfg.has_attack else 0
    gen = torch.Generator().manual_seed(cfg.seed)
    pick = torch.randperm(sim.x_train.shape[0], generator=gen)[:reference_examples]
    x_ref, y_ref = sim.x_train[pick.to(sim.x_train.device)], sim.y_train[pick.to(sim.device)]
    grad = torch.func.grad(sim.flat.loss)
    records = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed + 1)
        for r in range(1, cfg.rounds + 1):
            measure = r % every == 0 or r == cfg.rounds
            truth = grad(sim.params.clone(), x_ref, y_ref) if measure else None
            out = sim.round(r)
            if not measure:
                continue
            honest = out["honest"]
            if reference == "honest_mean":
                truth = honest.mean(0)
            rec = {"round": r, "test_accuracy": sim.evaluate()}
            rec.update(vote_record(honest, out["agg"], truth, f, method))
            records.append(rec)
    return records
