"""Models: shapes, determinism, and per-worker gradients under torch.func.vmap."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from byzance.models import MODELS, create_model, num_parameters

# (name, input shape): small inputs keep the test fast
CASES = [
    ("logreg", (64,)),
    ("mlp", (1, 28, 28)),
    ("cnn", (1, 28, 28)),
    ("cifar_cnn", (3, 16, 16)),
    ("resnet18", (3, 8, 8)),
]


@pytest.mark.parametrize(("name", "shape"), CASES)
def test_output_shape_and_no_buffers(name: str, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = create_model(name, shape, 7)
    out = model(torch.randn(3, *shape))
    assert out.shape == (3, 7) and torch.isfinite(out).all()
    # nothing updated in place during forward (BatchNorm would break vmap over workers)
    assert list(model.buffers()) == []
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@pytest.mark.parametrize(("name", "shape"), CASES)
def test_deterministic_given_manual_seed(name: str, shape: tuple[int, ...]) -> None:
    torch.manual_seed(3)
    a = create_model(name, shape, 4)
    torch.manual_seed(3)
    b = create_model(name, shape, 4)
    for (ka, pa), (kb, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert ka == kb and torch.equal(pa, pb)


@pytest.mark.parametrize(("name", "shape"), CASES)
def test_vmap_grad_matches_per_worker_loop(name: str, shape: tuple[int, ...]) -> None:
    """Per-worker gradients (different parameters and data per worker) computed in one call."""
    torch.manual_seed(1)
    model = create_model(name, shape, 5)
    workers, batch = 2, 3
    params = {
        k: v.detach() + 0.01 * torch.randn(workers, *v.shape) for k, v in model.named_parameters()
    }
    x = torch.randn(workers, batch, *shape)
    y = torch.randint(5, (workers, batch))

    def loss(p: dict[str, torch.Tensor], xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(functional_call(model, p, (xb,)), yb)

    batched = vmap(grad(loss))(params, x, y)
    for w in range(workers):
        one = grad(loss)({k: v[w] for k, v in params.items()}, x[w], y[w])
        for k in one:
            torch.testing.assert_close(batched[k][w], one[k], rtol=1e-4, atol=1e-5)


def test_cnn_architecture_and_flatten_size() -> None:
    model = create_model("cnn", (1, 28, 28), 10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    fcs = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (1, 20, (5, 5)),
        (20, 50, (5, 5)),
    ]
    assert [(f.in_features, f.out_features) for f in fcs] == [(800, 500), (500, 10)]
    wide = create_model("cnn", (3, 32, 32), 10)  # adapts to the input: 50 * 5 * 5
    assert [m for m in wide.modules() if isinstance(m, nn.Linear)][0].in_features == 1250
    assert wide(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_sizes() -> None:
    assert num_parameters(create_model("logreg", (64,), 10)) == 650
    assert num_parameters(create_model("mlp", (64,), 10)) == 64 * 100 + 100 + 100 * 10 + 10
    assert num_parameters(create_model("mlp", (64,), 10, hidden=8)) == 64 * 8 + 8 + 8 * 10 + 10
    resnet = create_model("resnet18", (3, 32, 32), 10)
    assert 11_000_000 < num_parameters(resnet) < 11_300_000
    assert any(isinstance(m, nn.GroupNorm) for m in resnet.modules())


def test_bad_arguments() -> None:
    with pytest.raises(
        ValueError, match="unknown model 'vgg'.*logreg, mlp, cnn, cifar_cnn, resnet18"
    ):
        create_model("vgg", (1, 28, 28), 10)
    with pytest.raises(ValueError, match=r"'cnn'.*image inputs.*input_shape=\(64,\)"):
        create_model("cnn", (64,), 10)
    with pytest.raises(ValueError, match="height and width >= 16"):
        create_model("cnn", (1, 8, 8), 10)
    with pytest.raises(ValueError, match="num_classes must be an int >= 2, got 1"):
        create_model("logreg", (4,), 1)
    with pytest.raises(ValueError, match="input_shape must be"):
        create_model("logreg", (0,), 3)
    with pytest.raises(ValueError, match="hidden must be an int >= 1"):
        create_model("mlp", (4,), 3, hidden=0)
    with pytest.raises(ValueError, match="bad options"):
        create_model("cnn", (1, 28, 28), 3, hidden=5)
    assert set(MODELS) == {"logreg", "mlp", "cnn", "cifar_cnn", "resnet18"}
