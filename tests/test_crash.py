"""Crash tolerance (byzance.analysis.crash): Monte Carlo, first-order estimate, bounds, the
regulariser, the model file and the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from byzance.analysis.crash import crash
from byzance.analysis.crash_io import load_model, save_model
from byzance.analysis.crash_regularizer import crash_penalty


def mlp(seed: int = 0, act: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 20), act(), nn.Linear(20, 4))


def inputs(n: int = 30, d: int = 6, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("mode", ["neurons", "weights"])
def test_p_zero_gives_zero_error(mode):
    r = crash(mlp(), inputs(), layer=1, p=0.0, trials=5, mode=mode, labels=torch.zeros(30).long())
    assert r.mean == r.std == r.rms == r.mc_var == r.taylor_rms == 0.0
    assert r.fep == 0.0 and r.product_of_norms == 0.0
    assert r.accuracy_drop == 0.0
    assert float(r.errors.abs().max()) == 0.0


def test_linear_tail_closed_form():
    """Crashing the hidden neurons of Linear-ReLU-Linear: Delta = -W2 ((1 - xi) * y) exactly,
    so E Delta = -p W2 y and E||Delta||^2 = p^2 ||W2 y||^2 + p(1-p) sum_i y_i^2 ||W2[:, i]||^2.
    """
    model, x, p = mlp(), inputs(), 0.2
    with torch.no_grad():
        y = model[1](model[0](x)).double()
        w2 = model[2].weight.double()
        mean = p * (y @ w2.T)  # ||E Delta|| per input
        sq = p * p * (y @ w2.T).pow(2).sum(1) + p * (1 - p) * (y.pow(2) @ w2.pow(2).sum(0))
        var = p * (1 - p) * (y.pow(2) @ w2.pow(2).sum(0))
    r = crash(model, x, layer=1, p=p, trials=4000, seed=3)
    # first order is exact for an affine tail
    assert r.taylor_mean_norm == pytest.approx(float(mean.norm(dim=1).mean()), rel=1e-6)
    assert r.taylor_var == pytest.approx(float(var.mean()), rel=1e-6)
    assert r.taylor_rms**2 == pytest.approx(float(sq.mean()), rel=1e-6)
    # Monte Carlo within a few standard errors (4000 draws x 30 inputs)
    assert r.rms**2 == pytest.approx(float(sq.mean()), rel=0.03)
    assert r.mc_var == pytest.approx(float(var.mean()), rel=0.03)


def test_weight_crash_closed_form_on_last_layer():
    """Crashing the weights of the last Linear: Delta = -(W o (1 - xi)) y, so
    E||Delta||^2 = p^2 ||W y||^2 + p(1-p) sum_jk W_jk^2 y_k^2."""
    model, x, p = mlp(2), inputs(20), 0.3
    with torch.no_grad():
        y = model[1](model[0](x)).double()
        w = model[2].weight.double()
        sq = p * p * (y @ w.T).pow(2).sum(1) + p * (1 - p) * (y.pow(2) @ w.pow(2).T).sum(1)
    r = crash(model, x, layer=2, p=p, trials=3000, mode="weights", seed=1)
    assert r.units == w.numel()
    assert r.taylor_rms**2 == pytest.approx(float(sq.mean()), rel=1e-6)
    assert r.rms**2 == pytest.approx(float(sq.mean()), rel=0.04)


def small_nets():
    torch.manual_seed(5)
    yield nn.Sequential(nn.Linear(5, 12), nn.Tanh(), nn.Linear(12, 9), nn.ReLU(), nn.Linear(9, 3))
    yield nn.Sequential(nn.Linear(5, 8), nn.Sigmoid(), nn.Linear(8, 8), nn.LeakyReLU(0.3),
                        nn.Linear(8, 2))  # fmt: skip
    yield nn.Sequential(
        nn.Unflatten(1, (1, 5)), nn.Conv1d(1, 3, 2), nn.ReLU(), nn.MaxPool1d(2),
        nn.Flatten(), nn.Linear(6, 4), nn.ELU(), nn.Linear(4, 3),
    )  # fmt: skip


@pytest.mark.parametrize("p", [0.1, 0.5, 1.0])
@pytest.mark.parametrize("mode", ["neurons", "weights"])
def test_bounds_hold_on_random_small_networks(p, mode):
    """The mean error never exceeds either bound; with p = 1 every draw crashes every unit,
    so the bound holds for each draw and each single input."""
    x = inputs(12, 5, seed=7) * 3
    checked = 0
    for net in small_nets():
        n_layers = 2 if mode == "neurons" else 3
        for layer in range(1, n_layers + 1):
            r = crash(net, x, layer=layer, p=p, trials=200, mode=mode, seed=layer)
            if r.bounds_note is not None:
                continue
            assert r.mean <= r.product_of_norms * (1 + 1e-9), (net, layer, r)
            assert r.mean <= r.fep * (1 + 1e-9), (net, layer, r)
            checked += 1
            if p == 1.0:
                for i in range(x.shape[0]):
                    one = crash(net, x[i : i + 1], layer=layer, p=1.0, trials=1, mode=mode)
                    assert one.mean <= min(one.fep, one.product_of_norms) * (1 + 1e-9)
    assert checked == (6 if mode == "neurons" else 9)


def test_model_outside_the_bounds_still_gets_monte_carlo():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.act, self.b = nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 3)

        def forward(self, x):
            return self.b(x + self.act(self.a(x)))

    r = crash(Residual(), inputs(), layer=1, p=0.3, trials=20)
    assert r.fep is None and r.product_of_norms is None and "Sequential" in r.bounds_note
    assert r.mean > 0 and r.taylor_rms > 0
    norm = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.LayerNorm(5), nn.Linear(5, 2))
    r = crash(norm, inputs(), layer=1, p=0.3, trials=20)
    assert r.fep is None and "LayerNorm" in r.bounds_note


def test_conv_network_and_accuracy_drop():
    from byzance.models import cnn

    torch.manual_seed(0)
    model, x = cnn((1, 16, 16), 10), torch.randn(8, 1, 16, 16)
    labels = torch.arange(8)
    for layer in (1, 2, 3):
        r = crash(model, x, layer=layer, p=0.2, trials=4, labels=labels)
        assert r.fep is not None and r.mean <= r.product_of_norms <= r.fep
        assert 0 <= r.crashed_accuracy <= 1 and r.accuracy_drop == r.accuracy - r.crashed_accuracy
    assert model.training  # mode restored


def test_same_seed_same_draws_and_model_untouched():
    model, x = mlp(), inputs()
    before = [p.clone() for p in model.parameters()]
    a = crash(model, x, layer=1, p=0.3, trials=7, seed=4)
    b = crash(model, x, layer=1, p=0.3, trials=7, seed=4)
    assert torch.equal(a.errors, b.errors)
    assert all(torch.equal(p, q) for p, q in zip(before, model.parameters(), strict=True))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"layer": 2}, r"crash\.layer: expected an int in \[1, 1\]"),
        ({"layer": 0}, r"crash\.layer"),
        ({"p": 1.5}, r"crash\.p: expected"),
        ({"trials": 0}, r"crash\.trials"),
        ({"mode": "synapses"}, r"crash\.mode: expected one of neurons, weights"),
        ({"labels": torch.zeros(3)}, r"crash\.labels: expected a tensor of shape \(30,\)"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = {"layer": 1, "p": 0.1, **kwargs}
    with pytest.raises(ValueError, match=match):
        crash(mlp(), inputs(), **args)
    with pytest.raises(ValueError, match=r"crash\.inputs"):
        crash(mlp(), [1, 2], layer=1, p=0.1)


def test_regulariser_is_the_first_order_estimate_and_differentiable():
    model, x = mlp(3), inputs()
    r = crash(model, x, layer=1, p=0.1, trials=2)
    pen = crash_penalty(model, x, layer=1, p=0.1)
    assert float(pen.detach()) == pytest.approx(r.taylor_rms**2, rel=1e-5)
    pen.backward()
    touched = (model[0].weight, model[0].bias, model[2].weight)  # not the last bias: no effect
    assert all(float(p.grad.abs().sum()) > 0 and torch.isfinite(p.grad).all() for p in touched)
    with pytest.raises(ValueError, match=r"crash_penalty\.p"):
        crash_penalty(model, x, layer=1, p=-0.1)


def test_model_file_round_trip(tmp_path):
    from byzance.round.flat_model import FlatModel
    from byzance.sim import ExperimentConfig

    cfg = ExperimentConfig(dataset="digits", model="mlp", rounds=1)
    model = mlp()  # only for a parameter vector of the right size
    from byzance.models import create_model

    ref = create_model("mlp", (64,), 10)
    params = torch.randn(FlatModel(ref).dim)
    path = save_model(tmp_path / "m.pt", cfg, params)
    loaded, cfg_dict = load_model(path)
    FlatModel(ref).load_into_module(params)
    x = torch.randn(4, 64)
    assert torch.allclose(loaded(x), ref(x)) and cfg_dict["model"] == "mlp"
    with pytest.raises(ValueError, match="do not fit"):
        save_model(tmp_path / "bad.pt", cfg, torch.randn(3))
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a byzance model file"):
        load_model(tmp_path / "junk.pt")
    del model


def test_cli_run_save_model_then_crash(tmp_path, capsys):
    from byzance.cli import main

    path = tmp_path / "model.pt"
    argv = [
        "run",
        "--model",
        "mlp",
        "--rounds",
        "3",
        "--aggregator",
        "median",
        "--f",
        "1",
        "--attack",
        "sign_flipping",
        "--no-reference",
        "--quiet",
        "--save-model",
        str(path),
    ]
    assert main(argv) == 0  # fmt: skip
    assert path.is_file()
    capsys.readouterr()
    plot = tmp_path / "crash.png"
    argv = [
        "crash",
        str(path),
        "--layer",
        "1",
        "--p",
        "0,0.1,0.5",
        "--trials",
        "3",
        "--inputs",
        "20",
        "--json",
        "--plot",
        str(plot),
    ]
    assert main(argv) == 0  # fmt: skip
    rows = json.loads(capsys.readouterr().out)
    assert [r["p"] for r in rows] == [0.0, 0.1, 0.5] and rows[0]["mean"] == 0.0
    assert rows[2]["mean"] <= rows[2]["product_of_norms"] and plot.is_file()
    assert main(["crash", str(path), "--p", "2"]) == 2
    assert main(["run", "--save-model", str(tmp_path / "no" / "m.pt"), "--model", "mlp"]) == 2
    err = capsys.readouterr().err
    assert "--p: expected probabilities" in err and "give one rule" in err
