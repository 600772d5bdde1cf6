"""Per-worker gradients from one pass over the concatenated batch (``SummedGradients``)."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

from byzance.models import create_model
from byzance.round.flat_model import FlatModel
from byzance.round.summed_grad import _grouped_weight_grad


def _stacked(k: int, b: int, shape: tuple[int, ...], classes: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    xs = torch.randn(k, b, *shape, generator=gen)
    ys = torch.randint(0, classes, (k, b), generator=gen)
    return xs, ys


def _loop_reference(model: nn.Module, xs: torch.Tensor, ys: torch.Tensor):
    """Each worker's gradient by its own forward/backward (the definition)."""
    grads, losses = [], []
    for x, y in zip(xs, ys, strict=True):
        model.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
        losses.append(loss.detach())
    return torch.stack(grads), torch.stack(losses)


class Sequence(nn.Module):
    """Linear layers on (B, T, features) inputs, a strided/padded/dilated Conv1d."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, 4, kernel_size=3, stride=2, padding=2, dilation=2)
        self.proj = nn.Linear(4, 5, bias=False)
        self.head = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.conv(x)).transpose(1, 2)  # (B, T, 4)
        return self.head(torch.relu(self.proj(h))).mean(1)


@pytest.mark.parametrize(
    ("name", "shape"),
    [("logreg", (12,)), ("mlp", (12,)), ("cnn", (1, 28, 28)), ("cifar_cnn", (3, 32, 32))],
)
def test_builtin_models_use_the_summed_pass_and_match_the_definition(name, shape):
    model = create_model(name, input_shape=shape, num_classes=10)
    flat = FlatModel(model)
    fn = flat.batched_grad(shared_params=True)
    assert fn.method is None
    xs, ys = _stacked(4, 6, shape, 10)
    g, loss = fn(flat.flatten(), xs, ys)
    assert fn.method == "summed"
    ref_g, ref_loss = _loop_reference(model, xs, ys)
    scale = float(ref_g.abs().max())
    torch.testing.assert_close(g, ref_g, rtol=1e-4, atol=1e-5 * scale)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    # the vmap path gives the same per-worker gradients
    vm_g, _ = fn.reference(flat.flatten(), xs, ys)
    torch.testing.assert_close(g, vm_g, rtol=1e-4, atol=1e-5 * scale)


def test_strided_convolution_and_sequence_linear_layers():
    model = Sequence()
    flat = FlatModel(model)
    fn = flat.batched_grad(shared_params=True)
    xs, ys = _stacked(3, 5, (3, 11), 3, seed=1)
    g, loss = fn(flat.flatten(), xs, ys)
    assert fn.method == "summed"
    ref_g, ref_loss = _loop_reference(model, xs, ys)
    torch.testing.assert_close(g, ref_g, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(loss, ref_loss)


def test_single_worker_and_float64():
    model = create_model("mlp", input_shape=(7,), num_classes=4).double()
    flat = FlatModel(model)
    fn = flat.batched_grad(shared_params=True)
    xs, ys = _stacked(1, 9, (7,), 4, seed=2)
    g, _ = fn(flat.flatten(), xs.double(), ys)
    assert fn.method == "summed" and g.dtype == torch.float64
    ref_g, _ = _loop_reference(model, xs.double(), ys)
    torch.testing.assert_close(g, ref_g, rtol=1e-10, atol=1e-12)


class _Centred(nn.Module):  # couples the samples of a batch
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x - x.mean(0))


class _Shared(nn.Module):  # one layer called twice
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(5, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(torch.relu(self.lin(x)))


class _InPlace(nn.Module):  # a layer's output changed in place
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(5, 5)
        self.b = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu_(self.a(x)))


class _Scaled(nn.Module):  # a parameter outside a linear/convolution layer
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(5, 3)
        self.scale = nn.Parameter(torch.tensor(2.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.lin(x)


def _batch_norm_net() -> nn.Module:
    return nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 3))


@pytest.mark.parametrize("make", [_Centred, _Shared, _InPlace, _Scaled, _batch_norm_net])
def test_models_it_cannot_handle_fall_back_to_vmap(make):
    torch.manual_seed(0)
    model = make()
    flat = FlatModel(model)
    fn = flat.batched_grad(shared_params=True)
    xs, ys = _stacked(3, 4, (5,), 3, seed=3)
    g, loss = fn(flat.flatten(), xs, ys)
    assert fn.method == "vmap"
    ref_g, ref_loss = fn.reference(flat.flatten(), xs, ys)
    assert torch.equal(g, ref_g) and torch.equal(loss, ref_loss)


def test_dropout_model_is_checked_in_eval_mode_and_left_in_train_mode():
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3))
    flat = FlatModel(model)
    fn = flat.batched_grad(shared_params=True)
    xs, ys = _stacked(2, 4, (6,), 3, seed=4)
    torch.manual_seed(0)
    fn(flat.flatten(), xs, ys)
    assert fn.method == "summed" and model.training
    torch.manual_seed(1)
    a, _ = fn(flat.flatten(), xs, ys)
    torch.manual_seed(2)
    b, _ = fn(flat.flatten(), xs, ys)
    assert not torch.equal(a, b)  # dropout is active in the summed pass


def test_no_hooks_left_behind_module_copies_and_pickles():
    model = create_model("cnn", input_shape=(1, 28, 28), num_classes=10)
    flat = FlatModel(model)
    fn = flat.batched_grad(shared_params=True)
    fn(flat.flatten(), *_stacked(2, 3, (1, 28, 28), 10))
    assert all(not m._forward_hooks for m in model.modules())
    pickle.loads(pickle.dumps(copy.deepcopy(model)))


@pytest.mark.parametrize(
    ("conv", "shape"),
    [
        (nn.Conv2d(3, 4, 3), (3, 9, 9)),
        (nn.Conv2d(2, 5, (3, 2), stride=2, padding=1, dilation=(1, 2)), (2, 10, 8)),
        (nn.Conv1d(3, 2, 4, stride=3, padding=2), (3, 13)),
    ],
)
def test_grouped_weight_gradient_equals_per_worker_gradients(conv, shape):
    """The one-call grouped form (used on CUDA) against one weight gradient per worker."""
    k, b = 3, 4
    x = torch.randn(k * b, *shape, dtype=torch.float64)
    conv = conv.double()
    dy = torch.randn_like(conv(x))
    args = (conv.stride, conv.padding, conv.dilation, False, [0] * (x.dim() - 2))
    got = _grouped_weight_grad(x, dy, conv.weight.detach(), k, args)
    for w in range(k):
        rows = slice(w * b, (w + 1) * b)
        xw = x[rows].clone().requires_grad_(False)
        weight = conv.weight.detach().clone().requires_grad_()
        op = nn.functional.conv2d if x.dim() == 4 else nn.functional.conv1d
        y = op(xw, weight, None, conv.stride, conv.padding, conv.dilation)
        (y * dy[rows]).sum().backward()
        torch.testing.assert_close(got[w], weight.grad.reshape(-1))
