"""Models used in the Byzantine-ML literature, built to work with ``torch.func``.

The simulator computes every worker's gradient at once with
``torch.func.vmap(torch.func.grad(loss))`` over ``torch.func.functional_call``. Hence no
model here has buffers that change in the forward pass or uses randomness: BatchNorm
(running statistics updated in place, and batch statistics mixing the samples of all
workers under vmap) is replaced by GroupNorm (Wu & He 2018), whose statistics are per
sample; and there is no dropout. All parameters are created with PyTorch's default
initialisation, so a model is deterministic given ``torch.manual_seed``.

Names (:func:`create_model`):

* ``"logreg"``: flatten + linear (multinomial logistic regression).
* ``"mlp"``: flatten, linear ``hidden`` (default 100) + ReLU, linear.
* ``"cnn"``: the LeNet-style MNIST CNN (Caffe's LeNet example) common in Byzantine-ML papers:
  Conv 5x5 20ch + ReLU + MaxPool 2, Conv 5x5 50ch + ReLU + MaxPool 2, FC 500 + ReLU,
  FC classes. The flatten size is computed from the input (800 for 28x28).
* ``"cifar_cnn"``: small CIFAR CNN: three blocks Conv 3x3 (32, 64, 128 channels, padding 1)
  + ReLU + MaxPool 2, then FC 128 + ReLU, FC classes.
* ``"resnet18"``: CIFAR-style ResNet-18 (He et al. 2016): 3x3 stem, no max-pool, four
  stages of two basic blocks (64, 128, 256, 512 channels, stride 2 from stage 2), global
  average pooling, FC; GroupNorm (``min(32, channels)`` groups) instead of BatchNorm.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["MODELS", "check_fits", "create_model", "num_parameters"]


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _image_shape(name: str, input_shape: tuple[int, ...], min_side: int) -> tuple[int, int, int]:
    if len(input_shape) != 3 or min(input_shape[1:]) < min_side:
        raise ValueError(
            f"create_model({name!r}) needs image inputs (channels, height, width) with "
            f"height and width >= {min_side}, got input_shape={input_shape}; use 'logreg' or "
            "'mlp' for flat features"
        )
    return input_shape  # type: ignore[return-value]


def logreg(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Multinomial logistic regression: ``softmax(W x + b)`` on the flattened input."""
    return nn.Sequential(nn.Flatten(), nn.Linear(_numel(input_shape), num_classes))


def mlp(input_shape: tuple[int, ...], num_classes: int, hidden: int = 100) -> nn.Module:
    """One hidden ReLU layer of width ``hidden``."""
    if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
        raise ValueError(f"create_model('mlp'): hidden must be an int >= 1, got hidden={hidden!r}")
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(_numel(input_shape), hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )


def cnn(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """MNIST CNN: conv5x5(20)-pool-conv5x5(50)-pool-fc500-fc."""
    c, h, w = _image_shape("cnn", input_shape, 16)

    def side(s: int) -> int:
        return ((s - 4) // 2 - 4) // 2

    return nn.Sequential(
        nn.Conv2d(c, 20, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(20, 50, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(50 * side(h) * side(w), 500),
        nn.ReLU(),
        nn.Linear(500, num_classes),
    )


def cifar_cnn(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Three conv blocks (32, 64, 128 channels) then FC 128 and FC classes."""
    c, h, w = _image_shape("cifar_cnn", input_shape, 8)
    layers: list[nn.Module] = []
    for c_in, c_out in ((c, 32), (32, 64), (64, 128)):
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
    return nn.Sequential(
        *layers,
        nn.Flatten(),
        nn.Linear(128 * (h // 8) * (w // 8), 128),
        nn.ReLU(),
        nn.Linear(128, num_classes),
    )


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, channels), channels)


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs with GroupNorm, identity or 1x1 projection shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.norm1 = _norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.norm2 = _norm(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), _norm(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR-style ResNet-18 with GroupNorm (see the module docstring)."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 64, 3, padding=1, bias=False), _norm(64), nn.ReLU()
        )
        blocks: list[nn.Module] = []
        c_in = 64
        for i, c_out in enumerate((64, 128, 256, 512)):
            stride = 1 if i == 0 else 2
            blocks += [BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out, 1)]
            c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


def resnet18(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """CIFAR-style ResNet-18 with GroupNorm."""
    c, _, _ = _image_shape("resnet18", input_shape, 8)
    return ResNet18(c, num_classes)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "logreg": logreg,
    "mlp": mlp,
    "cnn": cnn,
    "cifar_cnn": cifar_cnn,
    "resnet18": resnet18,
}


def create_model(
    name: str, input_shape: tuple[int, ...], num_classes: int, **options: Any
) -> nn.Module:
    """Build model ``name`` for inputs of shape ``input_shape`` (no batch dimension).

    ``options`` go to the builder (only ``hidden`` for ``"mlp"``). Unknown names, bad shapes
    and bad options raise ``ValueError``.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODELS)}")
    shape = tuple(input_shape)
    if not shape or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape):
        raise ValueError(
            f"create_model({name!r}): input_shape must be a non-empty tuple of ints >= 1, "
            f"got {input_shape!r}"
        )
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(
            f"create_model({name!r}): num_classes must be an int >= 2, got {num_classes!r}"
        )
    try:
        return MODELS[name](shape, num_classes, **options)
    except TypeError as e:
        raise ValueError(f"create_model({name!r}): bad options {sorted(options)}: {e}") from e


def num_parameters(model: nn.Module) -> int:
    """Number of scalar parameters (the dimension d of the gradients the workers send)."""
    return sum(p.numel() for p in model.parameters())


@functools.lru_cache(maxsize=64)
def check_fits(name: str, input_shape: tuple[int, ...], num_classes: int) -> int:
    """Check that model ``name`` can be built for inputs of ``input_shape`` and
    ``num_classes`` classes, and maps a batch of one input to ``(1, num_classes)`` logits.

    The model is built on PyTorch's ``meta`` device (no initialisation: torch's random
    generators are untouched), given uninitialised CPU storage and run once on a zero batch,
    so this is cheap, and cached. Returns the number of parameters; raises ``ValueError``
    saying why the model does not fit.
    """
    shape = tuple(input_shape)
    with torch.device("meta"):
        model = create_model(name, shape, num_classes)
    model = model.to_empty(device="cpu")
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, *shape))
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"model {name!r} does not fit inputs of shape {shape}: a forward pass fails ({detail})"
        ) from e
    if tuple(out.shape) != (1, num_classes):
        raise ValueError(
            f"model {name!r} maps inputs of shape {shape} to outputs of shape "
            f"{tuple(out.shape[1:])}, expected ({num_classes},) class scores"
        )
    return num_parameters(model)
