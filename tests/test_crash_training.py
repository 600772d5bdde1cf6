"""The fault-tolerance regulariser as a training option (``byzance.round.crash_training``):
off by default (same run, same id), the gradient it adds checked against autograd by hand,
bad values refused before any work, and a short training run through the CLI."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from byzance.analysis.crash_regularizer import crash_penalty
from byzance.cli import main
from byzance.results import run_id
from byzance.round.setup import Setup
from byzance.sim import ExperimentConfig

ON = {"weight": 0.3, "layer": 1, "p": 0.1}
TINY = {"model": "mlp", "n_honest": 3, "f": 0, "attack": "none", "batch_size": 5}


def _hand(setup: Setup, theta: torch.Tensor, x, y, weight: float) -> torch.Tensor:
    """``grad [CE + weight R]`` at ``theta`` on an ordinary module copy, by plain autograd."""
    model = copy.deepcopy(setup.flat.module)
    setup.flat.__class__(model).load_into_module(theta)
    loss = nn.functional.cross_entropy(model(x), y)
    if weight:
        loss = loss + weight * crash_penalty(model, x, layer=ON["layer"], p=ON["p"])
    grads = torch.autograd.grad(loss, [p for p in model.parameters()])
    return torch.cat([g.reshape(-1) for g in grads])


def _penalty_grad(setup: Setup, theta: torch.Tensor, x) -> torch.Tensor:
    model = copy.deepcopy(setup.flat.module)
    setup.flat.__class__(model).load_into_module(theta)
    r = crash_penalty(model, x, layer=ON["layer"], p=ON["p"])
    grads = torch.autograd.grad(r, list(model.parameters()), materialize_grads=True)
    return torch.cat([g.reshape(-1) for g in grads])  # the output bias: 0 (R ignores it)


def test_default_is_off_same_id_same_gradients() -> None:
    cfg = ExperimentConfig(**TINY)
    assert cfg.crash_regularizer == {}
    plain = {k: v for k, v in cfg.to_dict().items() if k != "crash_regularizer"}
    assert cfg.key() == run_id(plain, "sim", None)  # the id ignores the field at its default
    assert cfg.replace(crash_regularizer=ON).key() != cfg.key()
    setup = Setup(cfg)
    workers = setup.make_workers()
    assert workers.crash is None
    rows = torch.arange(3)
    g, loss = workers.gradients(rows, setup.params0, 1)
    ref, ref_loss = workers.grad_fns()[0](setup.params0, *workers.batch(rows, 1, 0))
    assert torch.equal(g, ref) and torch.equal(loss, ref_loss)  # the one-pass path, untouched


def test_gradient_is_plain_plus_weight_times_penalty_gradient() -> None:
    on = Setup(ExperimentConfig(**TINY, crash_regularizer=ON))
    off = Setup(ExperimentConfig(**TINY))
    rows, theta = torch.arange(3), on.params0
    g_on, loss_on = on.make_workers().gradients(rows, theta, 1)
    workers = off.make_workers()
    g_off, loss_off = workers.gradients(rows, theta, 1)
    xs, ys = workers.batch(rows, 1, 0)
    assert torch.equal(loss_on, loss_off)  # the loss reported is the plain loss
    for r in range(3):
        pen = _penalty_grad(on, theta, xs[r])
        assert pen.abs().sum() > 0
        assert torch.equal(g_on[r], g_off[r] + ON["weight"] * pen)  # exact
        torch.testing.assert_close(g_on[r], _hand(on, theta, xs[r], ys[r], ON["weight"]))


def test_local_steps_regularise_each_step_at_the_local_parameters() -> None:
    cfg = ExperimentConfig(**TINY, local_steps=2, lr=0.5, crash_regularizer=ON)
    setup = Setup(cfg)
    workers, rows = setup.make_workers(), torch.arange(3)
    g, _ = workers.gradients(rows, setup.params0, 1)
    for r in range(3):
        local = setup.params0.clone()
        for step in range(2):
            xs, ys = workers.batch(rows, 1, step)
            local = local - 0.5 * _hand(setup, local, xs[r], ys[r], ON["weight"])
        torch.testing.assert_close(g[r], (setup.params0 - local) / 0.5)


def test_byzantine_rows_are_not_regularised() -> None:
    base = {**TINY, "f": 1, "attack": "label_flipping"}
    on = Setup(ExperimentConfig(**base, crash_regularizer=ON)).make_workers()
    off = Setup(ExperimentConfig(**base)).make_workers()
    rows, theta = torch.arange(4), Setup(ExperimentConfig(**base)).params0
    g_on, _ = on.gradients(rows, theta, 1)
    g_off, _ = off.gradients(rows, theta, 1)
    assert torch.equal(g_on[3], g_off[3])
    assert not torch.equal(g_on[0], g_off[0])


def test_a_subset_group_regularises_like_the_whole_group() -> None:
    """The Ray actors' and Flower clients' workers (``make_workers([w])``, pickled)."""
    import pickle

    setup = Setup(ExperimentConfig(**TINY, crash_regularizer=ON))
    g_all, _ = setup.make_workers().gradients(torch.arange(3), setup.params0, 2)
    one = pickle.loads(pickle.dumps(setup.make_workers([1])))
    assert one.crash == setup.crash
    g_one, _ = one.gradients(torch.arange(1), setup.params0, 2)
    torch.testing.assert_close(g_one[0], g_all[1])


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ({"weight": 0, "layer": 1, "p": 0.1}, r"crash_regularizer\.weight"),
        ({"weight": 0.3, "layer": 1, "p": 1.0}, r"crash_regularizer\.p"),
        ({"weight": 0.3, "layer": 0, "p": 0.1}, r"crash_regularizer\.layer"),
        ({"weight": 0.3, "layer": 1.5, "p": 0.1}, r"crash_regularizer\.layer"),
        ({"weight": 0.3, "layer": 2, "p": 0.1}, r"crash_regularizer\.layer.*\[1, 1\]"),
        ({"weight": 0.3, "layer": 1}, r"crash_regularizer: missing key\(s\) \['p'\]"),
        ({**ON, "lam": 1}, r"crash_regularizer: unknown parameter\(s\) \['lam'\]"),
        ("on", r"crash_regularizer"),
    ],
)
def test_bad_values_are_refused_before_work(value, match) -> None:
    with pytest.raises(ValueError, match=match):
        ExperimentConfig(**TINY, crash_regularizer=value).validate()


def test_refused_where_it_cannot_apply() -> None:
    for protocol in ("decentralized", "async", "byzsgd"):
        with pytest.raises(ValueError, match=f"crash_regularizer.*protocol={protocol!r}"):
            ExperimentConfig(**TINY, protocol=protocol, crash_regularizer=ON).validate()
    with pytest.raises(ValueError, match="crash_regularizer.*gradient_estimator='zero_order'"):
        ExperimentConfig(**TINY, gradient_estimator="zero_order", crash_regularizer=ON).validate()
    with pytest.raises(ValueError, match="crash_regularizer.*gradient_inversion"):
        ExperimentConfig(
            **{**TINY, "f": 1, "attack": "gradient_inversion"}, crash_regularizer=ON
        ).validate()


def test_custom_model_layer_checked_at_setup() -> None:
    model = nn.Sequential(nn.Linear(64, 8), nn.Tanh(), nn.Linear(8, 10))
    cfg = ExperimentConfig(**TINY, crash_regularizer={**ON, "layer": 2})
    with pytest.raises(ValueError, match=r"crash_regularizer\.layer.*\[1, 1\]"):
        Setup(cfg, model=model)


def test_cli_run_trains_with_the_regulariser(capsys, tmp_path) -> None:
    argv = ["run", "--model", "mlp", "--n-honest", "4", "--f", "0", "--attack", "none",
            "--aggregator", "average", "--rounds", "30", "--eval-every", "30", "--quiet",
            "--no-reference", "--db", str(tmp_path / "r.db"),
            "--set", "crash_regularizer={weight=0.3,layer=1,p=0.1}",
            "--save-model", str(tmp_path / "m.pt")]  # fmt: skip
    code = main(argv)
    out = capsys.readouterr().out
    assert code == 0, out
    assert (tmp_path / "m.pt").exists()
    from byzance.analysis.crash_io import load_model

    model, cfg = load_model(str(tmp_path / "m.pt"))
    assert cfg["crash_regularizer"] == ON
    from byzance.datasets import load_dataset

    data = load_dataset("digits")
    with torch.no_grad():
        acc = float((model(data.x_test).argmax(1) == data.y_test).double().mean())
    assert acc > 0.5  # 30 rounds of 4 workers: well above chance (0.1)
    bad = "crash_regularizer={weight=-1,layer=1,p=0.1}"
    code = main(["run", "--set", bad, "--quiet", "--db", str(tmp_path / "r.db")])
    assert code != 0
    assert "crash_regularizer.weight" in capsys.readouterr().err


def test_ray_engine_regularises_like_the_simulator(request) -> None:
    """The Ray engine's actors use the same worker step: same final parameters as ``sim``."""
    request.getfixturevalue("ray_local")
    from byzance import engines

    cfg = ExperimentConfig(**{**TINY, "f": 1, "attack": "alie"}, rounds=3, eval_every=3,
                           crash_regularizer=ON)  # fmt: skip
    plain = engines.get("sim").execute(cfg.replace(crash_regularizer={}), {})
    ref = engines.get("sim").execute(cfg, {})
    opts = {"quorum": cfg.n_received, "round_timeout": 120.0, "startup_timeout": 120.0,
            "worker_cpus": 1.0}  # fmt: skip
    res = engines.get("ray").execute(cfg, opts)
    assert not torch.allclose(ref.params, plain.params)
    torch.testing.assert_close(res.params, ref.params, rtol=1e-5, atol=1e-6)
