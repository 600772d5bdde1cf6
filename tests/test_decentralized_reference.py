r"""The decentralised protocol on Ray against a reference loop written from its definition.

The reference follows the module docstring of ``byzance.engines.ray.decentralized``: ``h``
honest nodes, each with its own model :math:`\theta_i` (all from :math:`\theta_0`) and
momentum :math:`m_i` (:math:`m_0 = 0`); round ``t`` at node ``i``:

1. :math:`m_i \leftarrow \beta m_i + (1 - \beta) g_i(\theta_i)`, with ``g_i`` the stochastic
   gradient of node i's batch (``Setup(cfg).make_workers([i]).gradients``);
2. :math:`\hat g_i = F_i([m_i, m_{j \ne i} \text{ by id}, b_1, \dots, b_f])` with node i's
   **own** rule state carried across rounds;
3. :math:`\theta_i^{+} = \theta_i - \gamma_t (\hat g_i + \lambda \theta_i)`;
4. :math:`\theta_i \leftarrow \mathrm{TM}_f([\theta_i^{+}, \theta_{j \ne i}^{+}, b'_1, \dots])`
   (``model_aggregator``: the coordinate-wise trimmed mean).

The Byzantine node runs ALIE (deterministic) and equivocates: from the attack's row
:math:`a` on the honest vectors of the phase (momenta, then models; the attack's
``Adversary``), node ``i`` is sent :math:`v_i + (a - \bar v)`, re-anchored at its own vector
:math:`v_i`. So every node aggregates a different set and the models differ (without
equivocation the permutation-invariant model exchange would make them all equal).

The rules are written here from their papers' definitions, not called: centered clipping
(Karimireddy et al. 2021) starts from the node's previous aggregate (the coordinate-wise
median only in round 1), :math:`v = v_0 + \frac1n \sum_i \mathrm{clip}_\tau(x_i - v_0)`;
bucketing (s = 2) draws a permutation from the node's generator (seeded once, continuing
across rounds), averages consecutive buckets, then the coordinate-wise median. Both tests also
check that the reference is sensitive to that state: restarting the rule every round (centered
clipping from the median, bucketing's generator re-seeded) gives models far beyond the
tolerance, so an engine that did so would fail.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

ray = pytest.importorskip("ray")

from byzance import engines  # noqa: E402
from byzance.round.setup import Setup  # noqa: E402
from byzance.sim import ExperimentConfig  # noqa: E402

#: final models: engine vs reference (float32 models; the engine's rules sum in float64)
RTOL, ATOL = 1e-5, 1e-6
TAU = 0.1
SEED_BUCKETS = 5

BASE: dict[str, Any] = {
    "protocol": "decentralized",
    "dataset": "digits",
    "model": "logreg",
    "n_honest": 4,
    "f": 1,
    "attack": "alie",
    "equivocate": True,
    "model_aggregator": "trimmed_mean",
    "batch_size": 8,
    "rounds": 5,
    "eval_every": 5,
}
CASES = {
    "centered_clipping": {"aggregator": "centered_clipping", "aggregator_params": {"tau": TAU}},
    "bucketing+median": {
        "aggregator": "bucketing+median",
        "aggregator_params": {"s": 2, "seed": SEED_BUCKETS},
    },
}
#: no round timeout may fire (a loaded machine): every node is in every round
OPTIONS = {"round_timeout": 300.0, "startup_timeout": 300.0, "worker_cpus": 1.0}



# ------------------------------------------------------------------ the rules, by definition
def coordinate_median(x: torch.Tensor) -> torch.Tensor:
    s = x.sort(dim=0).values
    n = x.shape[0]
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def trimmed_mean(x: torch.Tensor, f: int) -> torch.Tensor:
    return x.sort(dim=0).values[f : x.shape[0] - f].mean(dim=0)


class CenteredClipping:
    """One iteration from the previous aggregate (the median in round 1, or every round with
    ``restart``); ``clipped`` counts the inputs clipped so far."""

    def __init__(self, tau: float, restart: bool = False) -> None:
        self.tau, self.restart = tau, restart
        self.center: torch.Tensor | None = None
        self.clipped = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        v0 = coordinate_median(x) if self.center is None or self.restart else self.center
        u = x - v0
        norms = u.norm(dim=1)
        self.clipped += int((norms > self.tau).sum())
        scale = (self.tau / norms).clamp(max=1.0)
        self.center = v0 + (u * scale[:, None]).mean(dim=0)
        return self.center


class BucketingMedian:
    """A permutation from the node's generator (continuing across rounds; re-seeded every
    round with ``restart``), means of consecutive buckets of ``s``, their median."""

    def __init__(self, s: int, seed: int, restart: bool = False) -> None:
        self.s, self.seed, self.restart = s, seed, restart
        self.gen = torch.Generator().manual_seed(seed)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.restart:
            self.gen.manual_seed(self.seed)
        perm = torch.randperm(x.shape[0], generator=self.gen)
        buckets = [x[perm[j : j + self.s]].mean(dim=0) for j in range(0, x.shape[0], self.s)]
        return coordinate_median(torch.stack(buckets))


def rule_factory(case: str, restart: bool) -> Callable[[], Any]:
    if case == "centered_clipping":
        return lambda: CenteredClipping(TAU, restart)
    return lambda: BucketingMedian(2, SEED_BUCKETS, restart)


# ------------------------------------------------------------------ the protocol, by definition
def reference(cfg: ExperimentConfig, make_rule: Callable[[], Any]) -> dict[str, Any]:
    """The honest nodes' final models (h, d) and their rules, run from the definitions."""
    setup = Setup(cfg)
    h, f = cfg.n_honest, cfg.f
    beta, wd = cfg.momentum, cfg.weight_decay
    row = torch.zeros(1, dtype=torch.int64)
    workers = [setup.make_workers([i]) for i in range(h)]
    adversary = setup.make_adversary()  # the f Byzantine nodes' colluding attack
    theta0 = setup.params0.detach().cpu()
    thetas = [theta0.clone() for _ in range(h)]
    moms = [torch.zeros_like(theta0) for _ in range(h)]
    rules = [make_rule() for _ in range(h)]

    def rows_of(i: int, honest: list[torch.Tensor], forged: torch.Tensor) -> torch.Tensor:
        """Node i's input: its own vector, the other honest ones by id, then what the f
        Byzantine nodes send it: their rows ``forged`` re-anchored at its own vector."""
        own = [honest[i], *(honest[j] for j in range(h) if j != i)]
        sent = honest[i] + (forged - torch.stack(honest).mean(dim=0))
        return torch.cat([torch.stack(own), sent]).double()

    for t in range(1, cfg.rounds + 1):
        for i in range(h):
            g, _ = workers[i].gradients(row, thetas[i], t)
            moms[i] = beta * moms[i] + (1 - beta) * g[0]
        byz = adversary.forge(torch.stack(moms))  # (f, d): the attack's rows
        assert byz.shape == (f, theta0.numel())
        lr = setup.lr_at(t)
        stepped = []
        for i in range(h):
            g_hat = rules[i](rows_of(i, moms, byz)).float()
            stepped.append(thetas[i] - lr * (g_hat + wd * thetas[i]))
        byz = adversary.forge(torch.stack(stepped))
        thetas = [trimmed_mean(rows_of(i, stepped, byz), f).float() for i in range(h)]
    return {"params": torch.stack(thetas), "rules": rules, "setup": setup}


def max_rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).abs() / (ATOL + RTOL * b.abs())).max())


@pytest.mark.parametrize("case", sorted(CASES))
def test_decentralized_nodes_follow_the_reference(ray_local, case):
    cfg = ExperimentConfig.from_dict({**BASE, **CASES[case]})
    res = engines.get("ray").execute(cfg, OPTIONS)
    ref = reference(cfg, rule_factory(case, restart=False))

    assert [r["round"] for r in res.history] == [cfg.rounds]
    for rec in res.history:
        assert rec["missing_workers"] == []  # no node was left out of any phase
    assert res.params.shape == ref["params"].shape == (cfg.n_honest, ref["setup"].dim)
    torch.testing.assert_close(res.params, ref["params"], rtol=RTOL, atol=ATOL)
    last = res.history[-1]
    diameter = float(torch.cdist(ref["params"][None], ref["params"][None]).max())
    assert last["spread"] == pytest.approx(diameter, rel=1e-3) and diameter > 0
    accs = [ref["setup"].evaluate(theta) for theta in ref["params"]]
    assert last["test_accuracy"] == pytest.approx(sum(accs) / len(accs), abs=3e-3)
    if case == "centered_clipping":  # the clipping was active: tau bites
        assert sum(rule.clipped for rule in ref["rules"]) > 0

    # the comparison is sensitive to the rule's state across rounds: an engine that restarted
    # the rule every round would be this far off (in units of the tolerance)
    restarted = reference(cfg, rule_factory(case, restart=True))["params"]
    assert max_rel_diff(restarted, ref["params"]) > 100
