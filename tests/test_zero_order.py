"""FedZero: the two-point estimator against its definition, shared seeds, the simulator's
round, and the config checks (``byzance.round.zero_order``, ``byzance.sim.zero_order``)."""

from __future__ import annotations

import math

import pytest
import torch

from byzance import engines
from byzance.protocols import id_config
from byzance.round.zero_order import DIRECTIONS, ZeroOrder
from byzance.sim.config import ExperimentConfig
from byzance.sim.simulation import Simulation, run_experiment

DUMMY = (torch.zeros(1, 1), torch.zeros(1, dtype=torch.int64))  # one worker's batch, unused


def _batch(k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros(k, 1, 1), torch.zeros(k, 1, dtype=torch.int64)


def _mean_estimate(est: ZeroOrder, loss, theta: torch.Tensor, seed: int = 0):
    """The rebuilt estimate of one worker with K = est.queries directions (the mean of K
    one-direction estimates) and the per-coordinate standard error of that mean."""
    dirs = est.draw(seed, [0], 1, theta.numel(), dtype=torch.float64)
    s, _ = est.scalars(loss, theta, dirs, *_batch())
    single = s[0][:, None] * dirs.psi[0] * dirs.c  # (K, d) one-direction estimates
    return est.rebuild(s, dirs)[0], single.std(dim=0) / math.sqrt(est.queries), single


# ---------------------------------------------------------------- directions
@pytest.mark.parametrize("kind", DIRECTIONS)
def test_directions_lie_where_they_should_and_follow_the_seed(kind):
    est = ZeroOrder(directions=kind, queries=3)
    dirs = est.draw(7, [0, 1, 2, 3], 5, 11, dtype=torch.float64)
    assert dirs.zeta.shape == dirs.psi.shape == (4, 3, 11)
    if kind == "l1":
        torch.testing.assert_close(dirs.zeta.abs().sum(-1), torch.ones(4, 3, dtype=torch.float64))
        assert torch.equal(dirs.psi, torch.sign(dirs.zeta)) and dirs.c == 11
    elif kind == "l2":
        torch.testing.assert_close(dirs.zeta.norm(dim=-1), torch.ones(4, 3, dtype=torch.float64))
        assert torch.equal(dirs.psi, dirs.zeta) and dirs.c == 11
    else:
        assert torch.equal(dirs.psi, dirs.zeta) and dirs.c == 1
    # a worker's directions depend on (seed, worker, round) only, not on who is drawn with it
    alone = est.draw(7, [2], 5, 11, dtype=torch.float64)
    assert torch.equal(alone.zeta[0], dirs.zeta[2])
    assert not torch.equal(dirs.zeta[0], dirs.zeta[1])
    assert not torch.equal(est.draw(7, [2], 6, 11, dtype=torch.float64).zeta, alone.zeta)
    shared = ZeroOrder(directions=kind, queries=3, robust="scalars").draw(7, [0, 5], 5, 11)
    assert torch.equal(shared.zeta[0], shared.zeta[1])


def test_l1_directions_are_uniform_on_the_sphere_in_their_moments():
    """Uniform on the l1 sphere: |zeta| is uniform on the simplex (Dirichlet(1,...,1):
    E|zeta_i| = 1/d, E zeta_i^2 = 2/(d(d+1))), signs fair and independent of magnitudes."""
    d, k = 4, 40000
    zeta = ZeroOrder(queries=k).draw(3, [0], 1, d, dtype=torch.float64).zeta[0]
    torch.testing.assert_close(zeta.abs().mean(0), torch.full((d,), 1 / d, dtype=torch.float64),
                               atol=4e-3, rtol=0)  # fmt: skip
    second = torch.full((d,), 2 / (d * (d + 1)), dtype=torch.float64)
    torch.testing.assert_close((zeta**2).mean(0), second, atol=2e-3, rtol=0)
    assert float((zeta > 0).double().mean()) == pytest.approx(0.5, abs=0.01)
    assert float((zeta[:, 0] * zeta[:, 1]).mean()) == pytest.approx(0.0, abs=2e-3)


# ---------------------------------------------------------------- the estimator
@pytest.mark.parametrize("kind", DIRECTIONS)
def test_estimator_is_unbiased_for_a_linear_function(kind):
    a = torch.tensor([1.5, -2.0, 0.25, 3.0, -0.5], dtype=torch.float64)

    def loss(theta, x, y):
        return theta @ a

    est = ZeroOrder(directions=kind, radius=0.3, queries=60000)
    theta = torch.tensor([0.1, 0.2, -0.3, 0.4, 0.0], dtype=torch.float64)
    mean, se, single = _mean_estimate(est, loss, theta)
    assert bool(((mean - a).abs() <= 5 * se).all()), (mean, a, se)
    # the scalar of a linear function is exactly <a, zeta> whatever h
    dirs = est.draw(0, [0], 1, 5, dtype=torch.float64)
    s, _ = est.scalars(loss, theta, dirs, *_batch())
    torch.testing.assert_close(s[0], dirs.zeta[0] @ a)


def _smooth(theta, x, y):
    return (
        torch.logsumexp(torch.stack([theta.sum(), (theta**2).sum(), -theta[0]]), 0)
        + torch.sin(theta).sum()
    )


def test_scalar_tends_to_the_directional_derivative_as_the_radius_shrinks():
    theta = torch.tensor([0.3, -0.7, 1.1, 0.2], dtype=torch.float64)
    grad = torch.func.grad(_smooth)(theta, *DUMMY)
    errors = []
    for h in (1e-1, 1e-2, 1e-3):
        est = ZeroOrder(directions="l2", radius=h, queries=16)
        dirs = est.draw(1, [0], 1, 4, dtype=torch.float64)
        s, values = est.scalars(_smooth, theta, dirs, *_batch())
        errors.append(float((s[0] - dirs.zeta[0] @ grad).abs().max()))
        assert float(values[0]) == pytest.approx(float(_smooth(theta, *DUMMY)), abs=10 * h**2)
    assert errors[1] < errors[0] / 50 and errors[2] < errors[1] / 50  # central difference: O(h^2)


@pytest.mark.parametrize("kind", DIRECTIONS)
def test_mean_estimate_matches_the_gradient_of_a_smooth_function(kind):
    theta = torch.tensor([0.3, -0.7, 1.1, 0.2], dtype=torch.float64)
    grad = torch.func.grad(_smooth)(theta, *DUMMY)
    est = ZeroOrder(directions=kind, radius=1e-3, queries=60000)
    mean, se, _ = _mean_estimate(est, _smooth, theta)
    assert bool(((mean - grad).abs() <= 5 * se + 1e-4).all()), (mean, grad, se)


def test_server_rebuilds_exactly_what_the_worker_computed():
    cfg = ExperimentConfig(rounds=1, f=0, attack="none", gradient_estimator="zero_order",
                           estimator_params={"queries": 3})  # fmt: skip
    sim = Simulation(cfg)
    g, _ = sim.group.gradients(sim.computing, sim.params, 4)
    scalars = sim.estimator.last_scalars
    assert scalars.shape == (cfg.n_honest, 3)
    server = ZeroOrder(queries=3)  # built apart from the workers: only the seed is shared
    dirs = server.draw(cfg.seed, range(cfg.n_honest), 4, sim.dim, dtype=g.dtype)
    assert torch.equal(server.rebuild(scalars, dirs), g)
    assert sim.estimator.bytes_sent(sim.dim) == {"zero_order": 12, "backprop": 4 * sim.dim}


def test_realize_recovers_scalars_and_projects_other_targets():
    est = ZeroOrder(queries=3)
    dirs = est.draw(0, [0, 1], 2, 20, dtype=torch.float64)
    s0 = torch.randn(2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(est.realize(est.rebuild(s0, dirs), dirs), s0)
    target = torch.randn(2, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    residual = target - est.rebuild(est.realize(target, dirs), dirs)
    torch.testing.assert_close(
        torch.einsum("wd,wqd->wq", residual, dirs.psi), torch.zeros(2, 3, dtype=torch.float64)
    )


# ---------------------------------------------------------------- in the simulator
def _cfg(**kw):
    base = {"rounds": 30, "eval_every": 30, "gradient_estimator": "zero_order",
            "estimator_params": {"queries": 10}}  # fmt: skip
    return ExperimentConfig(**{**base, **kw})


def test_zero_order_training_is_reproducible_and_learns():
    a, b = run_experiment(_cfg(attack="none", f=0)), run_experiment(_cfg(attack="none", f=0))
    assert a.history == [{**r, "time": a.history[i]["time"]} for i, r in enumerate(b.history)]
    assert a.history[-1]["test_accuracy"] > 0.6  # digits: chance is 0.1


@pytest.mark.parametrize(
    "extra",
    [
        {"attack": "alie"},
        {
            "attack": "sign_flipping",
            "aggregator": "median",
            "estimator_params": {"queries": 10, "robust": "scalars"},
            "momentum": 0.0,
        },
        {"attack": "label_flipping"},
    ],  # fmt: skip
)
def test_zero_order_under_attack_runs_with_a_robust_rule(extra):
    result = run_experiment(_cfg(**extra))
    assert not result.diverged and result.history[-1]["test_accuracy"] > 0.5


def test_byzantine_workers_only_choose_scalars_along_their_own_directions():
    sim = Simulation(_cfg(rounds=1, attack="sign_flipping", aggregator="average"))
    seen = {}
    rule = sim.server.rule.aggregate

    def spy(x):
        seen["x"] = x.clone()
        return rule(x)

    sim.server.rule.aggregate = spy
    sim.round(1)
    momenta = seen["x"]  # m_1 = (1 - beta) g_1
    byz = momenta[sim.h :] / (1 - sim.config.momentum)
    dirs = sim.estimator.draw(0, range(sim.h, sim.h + sim.f), 1, sim.dim)
    s = sim.estimator.realize(byz, dirs)
    torch.testing.assert_close(sim.estimator.rebuild(s, dirs), byz, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------- config
def test_default_config_keeps_its_run_id_and_zero_order_changes_it():
    cfg = ExperimentConfig()
    assert "gradient_estimator" not in id_config(cfg.to_dict())
    assert "estimator_params" not in id_config(cfg.to_dict())
    assert ExperimentConfig(gradient_estimator="zero_order").key() != cfg.key()
    one = ExperimentConfig(gradient_estimator="zero_order", estimator_params={"queries": 2})
    assert one.key() != ExperimentConfig(gradient_estimator="zero_order").key()


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"gradient_estimator": "finite"}, "gradient_estimator: expected one of"),
        ({"estimator_params": {"radius": 0}}, "estimator_params: ZeroOrder.radius: expected a"),
        ({"estimator_params": {"directions": "l3"}}, "ZeroOrder.directions: expected one of"),
        ({"estimator_params": {"queries": 0}}, "ZeroOrder.queries"),
        ({"estimator_params": {"robust": "both"}}, "ZeroOrder.robust"),
        ({"estimator_params": {"step": 1}}, "estimator_params: .*directions, radius"),
        ({"local_steps": 2}, "requires local_steps=1"),
        ({"estimator_params": {"robust": "scalars"}}, "momentum: .*use momentum=0"),
        ({"attack": "gradient_inversion"}, "cannot run with gradient_estimator='zero_order'"),
    ],
)
def test_bad_zero_order_configs_are_refused_before_work(kw, match):
    with pytest.raises(ValueError, match=match):
        ExperimentConfig(**{"gradient_estimator": "zero_order", **kw}).validate()


def test_backprop_takes_no_estimator_params():
    with pytest.raises(ValueError, match="estimator_params: must be empty"):
        ExperimentConfig(estimator_params={"queries": 2}).validate()


def test_ray_engine_refuses_zero_order_clearly():
    ray = engines.get("ray")
    with pytest.raises(ValueError, match="ray engine runs 'backprop' only"):
        ray.check(ExperimentConfig(gradient_estimator="zero_order"), ray.make_options(None))
