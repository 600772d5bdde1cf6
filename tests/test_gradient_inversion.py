"""Data poisoning by gradient inversion (``byzance.attacks.gradient_inversion``): the
optimised points' gradient reaches its target, stays in range, and only the Byzantine
workers' data are touched."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from byzance import attacks, engines
from byzance.attacks.gradient_inversion import GradientInversion
from byzance.round.flat_model import FlatModel
from byzance.sim.config import ExperimentConfig
from byzance.sim.simulation import Simulation, run_experiment


def _flat(hidden: int | None) -> FlatModel:
    torch.manual_seed(0)
    layers = [nn.Linear(6, 3)] if hidden is None else [nn.Linear(6, hidden), nn.Tanh(),
                                                       nn.Linear(hidden, 3)]  # fmt: skip
    return FlatModel(nn.Sequential(*layers))


def _data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 6, generator=gen) * 2 - 1, torch.randint(0, 3, (n,), generator=gen)


def _grad(flat: FlatModel, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor):
    th = theta.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(flat.loss(th, x, y), th)
    return g


@pytest.mark.parametrize("hidden, objective", [(None, "cosine"), (8, "cosine"), (8, "distance")])
def test_inverted_points_reach_a_reachable_target(hidden, objective):
    """Target: the gradient of a hidden batch (``mimic`` copies the one honest vector), so
    points with exactly that gradient exist; the inversion must get close to it."""
    flat = _flat(hidden)
    theta = flat.flatten()
    hidden_x, hidden_y = _data(8, 1)
    target = _grad(flat, theta, hidden_x, hidden_y)
    own_x, own_y = _data(8, 2)
    attack = GradientInversion(target="mimic", points=1.0, objective=objective, steps=300,
                               lr=0.05)  # fmt: skip
    before = nn.functional.cosine_similarity(_grad(flat, theta, own_x, own_y), target, dim=0)
    xs, soft = attack.invert(flat.loss, theta, target[None], own_x[None], own_y[None], 3,
                             bounds=(-1.0, 1.0), seed=0)  # fmt: skip
    g = _grad(flat, theta, xs[0], soft[0])
    cos = float(nn.functional.cosine_similarity(g, target, dim=0))
    assert cos > 0.95 and cos > float(before)
    assert float(attack.last_cosine[0]) == pytest.approx(cos, abs=1e-5)
    if objective == "distance":
        assert float((g - target).norm() / target.norm()) < 0.3
    assert float(xs.min()) >= -1.0 and float(xs.max()) <= 1.0
    assert bool((soft >= 0).all()) and torch.allclose(soft.sum(-1), torch.ones(1, 8))


def test_points_stay_in_the_given_range_and_clean_examples_are_kept():
    flat = _flat(None)
    theta = flat.flatten()
    x, y = _data(10, 3)
    xs, ys = torch.stack([x, x + 0.0]), torch.stack([y, y.flip(0)])
    copy_x, copy_y = xs.clone(), ys.clone()
    honest = torch.stack([_grad(flat, theta, *_data(10, s)) for s in (4, 5, 6)])
    attack = GradientInversion(target="sign_flipping", points=3, steps=30, lr=0.5,
                               input_range=(-0.2, 0.3))  # fmt: skip
    out_x, soft = attack.invert(flat.loss, theta, honest, xs, ys, 3, bounds=(-9.0, 9.0), seed=0)
    assert torch.equal(xs, copy_x) and torch.equal(ys, copy_y)  # inputs never modified
    low, high = torch.tensor(-0.2), torch.tensor(0.3)  # float32, as the inputs
    assert bool((out_x[:, :3] >= low).all()) and bool((out_x[:, :3] <= high).all())
    assert torch.equal(out_x[:, 3:], xs[:, 3:])  # only k = 3 points per batch are poisoned
    assert torch.equal(soft[:, 3:], nn.functional.one_hot(ys[:, 3:], 3).float())
    assert attack.count(25) == 3 and GradientInversion(points=0.1).count(25) == 2


def test_only_the_byzantine_workers_data_are_touched():
    cfg = ExperimentConfig(rounds=1, attack="gradient_inversion(steps=5)", aggregator="average")
    poisoned = Simulation(cfg)
    clean = Simulation(cfg.replace(attack="label_flipping"))  # same shards, honest unpoisoned
    g, losses = poisoned.group.gradients(poisoned.computing, poisoned.params, 1)
    ref, ref_losses = clean.group.gradients(clean.computing, clean.params, 1)
    h = cfg.n_honest
    assert torch.equal(g[:h], ref[:h]) and torch.equal(losses[:h], ref_losses[:h])
    assert not torch.allclose(g[h:], ref[h:])
    assert poisoned.attack.last_cosine.shape == (cfg.f,)


def test_a_short_run_imitates_sign_flipping():
    cfg = ExperimentConfig(
        rounds=3,
        eval_every=3,
        attack="gradient_inversion(target='sign_flipping', steps=15, lr=0.2)",
        aggregator="average",
    )
    sim = Simulation(cfg)
    result = sim.run()
    assert not result.diverged and len(result.history) == 1
    assert float(sim.attack.last_cosine.min()) > 0.5


@pytest.mark.parametrize(
    "spec, match",
    [
        ("gradient_inversion(objective='l3')", "GradientInversion.objective"),
        ("gradient_inversion(points=0)", "GradientInversion.points"),
        ("gradient_inversion(points=1.5)", "GradientInversion.points"),
        ("gradient_inversion(steps=0)", "GradientInversion.steps"),
        ("gradient_inversion(input_range=(1.0, 0.0))", "low < high"),
        ("gradient_inversion(target='label_flipping')", "expected a gradient attack"),
        ("gradient_inversion(target='nope')", "unknown attack 'nope'"),
    ],
)
def test_bad_parameters_are_refused(spec, match):
    with pytest.raises(ValueError, match=match):
        attacks.create(spec)


def test_configs_it_cannot_run_are_refused_before_work():
    with pytest.raises(ValueError, match="requires local_steps=1"):
        ExperimentConfig(attack="gradient_inversion", local_steps=2).validate()
    ray = engines.get("ray")
    with pytest.raises(ValueError, match="run it with --engine sim"):
        ray.check(ExperimentConfig(attack="gradient_inversion"), ray.make_options(None))
    with pytest.raises(ValueError, match="calls invert"):
        GradientInversion().poison(torch.zeros(2, 3), torch.zeros(2, dtype=torch.int64), 3)


def test_mnist_cnn_round_runs(tmp_path):
    """The CNN (conv + max-pool + ReLU) through second-order autograd, on a tiny dataset."""
    from byzance.datasets.base import Dataset

    gen = torch.Generator().manual_seed(0)
    ds = Dataset(
        name="tiny",
        x_train=torch.rand(60, 1, 28, 28, generator=gen),
        y_train=torch.randint(0, 10, (60,), generator=gen),
        x_test=torch.rand(20, 1, 28, 28, generator=gen),
        y_test=torch.randint(0, 10, (20,), generator=gen),
        num_classes=10,
        input_shape=(1, 28, 28),
    )
    cfg = ExperimentConfig(
        model="cnn",
        n_honest=4,
        f=1,
        batch_size=4,
        rounds=1,
        aggregator="median",
        attack="gradient_inversion(steps=2, points=2)",
    )
    result = run_experiment(cfg, dataset=ds)
    assert not result.diverged
