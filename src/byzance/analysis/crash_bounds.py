"""Worst-case bounds on the output error of a network whose neurons or weights crash.

A crash sets a unit to 0 (a neuron's output, or a weight), with no rescaling of the survivors.
Both bounds below hold for every input and every crash pattern of the given size; they cover
a network that is a chain (``nn.Sequential``, nested ones flattened) of

* ``Linear``, ``Conv1d`` / ``Conv2d`` (``groups=1``): affine maps;
* Lipschitz activations (``LIPSCHITZ``: ReLU, ReLU6, LeakyReLU, ELU, Tanh, Hardtanh, Sigmoid,
  Softplus, GELU, SiLU);
* ``MaxPool`` / ``AvgPool`` with disjoint windows (stride = kernel size, no padding),
  ``Flatten``, ``Identity``, ``Dropout`` (in eval mode): 1-Lipschitz in both norms used.

Anything else after the crashed layer (normalisation layers, attention, a residual block, a
model that is not a chain) is not covered: the bound is ``None`` with the reason
(``tail_lipschitz``). Monte Carlo and the first-order estimate work on any module.

**Forward error propagation** (El Mhamdi & Guerraoui, "When Neurons Fail", IPDPS 2017,
crash case): if f neurons of layer l crash, whose outputs are at most C in absolute value, a
neuron j of the next affine layer changes by at most ``f * w_m * C`` (``w_m``: the layer's
largest absolute weight); every later affine layer multiplies the largest change by its fan-in
times its largest absolute weight (``N * w_m`` in the paper's fully connected form; ``C_in * k``
for a convolution), every activation by its Lipschitz constant K, pooling by 1::

    ||Delta||_inf <= f * C * w_m^(l+1) * prod_{later layers} (K or fan_in * w_m).

Weight crashes (the paper's synapse failures): f crashed weights of one affine layer move an
output of that layer by at most ``min(f, fan_in) * w_m * C`` with C bounding its inputs. The
bound is linear in f, so with Bernoulli(p) crashes it bounds the expected error with
``f = p * N`` (N units; ``min(p N, fan_in)`` for weights, by concavity).

**Product of norms**: ``||Delta||_2 <= Lip_2(tail) * ||e||_2`` where ``e`` is the change at the
crashed layer and ``Lip_2(tail)`` the product of the l2 Lipschitz constants after it (spectral
norm of a linear layer; for a convolution the sound bound ``sum_{offsets a} ||W[:, :, a]||_2``,
since it is a sum of shifted copies of the ``C_out x C_in`` slices). With Bernoulli(p) neuron
crashes ``E ||e||_2 <= sqrt(E ||e||^2) = sqrt(p) ||y_l||_2`` (Jensen); with weight crashes
``||e||_2 <= ||W o (1 - xi)||_op ||x|| <= ||W o (1 - xi)||_F ||x||`` and the same Jensen step
gives ``sqrt(p) ||W||_F ||x||`` (per kernel offset for a convolution).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

#: l2 (and l-infinity) Lipschitz constant of each supported activation: the largest |derivative|
LIPSCHITZ: dict[type[nn.Module], float] = {
    nn.ReLU: 1.0,
    nn.ReLU6: 1.0,
    nn.Hardtanh: 1.0,
    nn.Tanh: 1.0,
    nn.Sigmoid: 0.25,
    nn.Softplus: 1.0,
    nn.GELU: 1.1290,  # max of Phi(x) + x phi(x), at x = sqrt(2): 1.12899
    nn.SiLU: 1.0999,  # max of sigma(x) (1 + x (1 - sigma(x))), at x ~ 2.3994: 1.09984
}
AFFINE = (nn.Linear, nn.Conv1d, nn.Conv2d)
_NEUTRAL = (nn.Flatten, nn.Identity, nn.Dropout)
_POOL = (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d)


def activation_lipschitz(module: nn.Module) -> float | None:
    """The Lipschitz constant of an activation module (``None``: not an activation we know)."""
    if isinstance(module, nn.LeakyReLU):
        return max(1.0, abs(float(module.negative_slope)))
    if isinstance(module, nn.ELU):
        return max(1.0, float(module.alpha))
    for kind, k in LIPSCHITZ.items():
        if type(module) is kind:
            return k
    return None


def is_activation(module: nn.Module) -> bool:
    return activation_lipschitz(module) is not None


def chain(model: nn.Module) -> list[nn.Module] | None:
    """The modules of a (nested) ``nn.Sequential`` in order, or ``None`` for another model."""
    if not isinstance(model, nn.Sequential):
        return None
    out: list[nn.Module] = []
    for m in model:
        sub = chain(m) if isinstance(m, nn.Sequential) else [m]
        out.extend(sub if sub is not None else [m])
    return out


def _tuple(v: object, n: int) -> tuple:
    t = tuple(v) if isinstance(v, (tuple, list)) else (v,)
    return t * n if len(t) == 1 else t


def _pool_ok(m: nn.Module) -> bool:
    """Disjoint windows (stride >= kernel size), no padding, no dilation."""
    n = 2 if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)) else 1
    k = _tuple(m.kernel_size, n)
    s = k if m.stride in (None, ()) else _tuple(m.stride, n)
    pad = _tuple(m.padding, n)
    dil = _tuple(getattr(m, "dilation", 1), n)
    disjoint = all(a >= b for a, b in zip(s, k, strict=True))
    return disjoint and not any(pad) and all(d == 1 for d in dil)


def fan_in(m: nn.Module) -> int:
    """Inputs of one output unit of an affine layer (``in_features``; ``C_in * prod(k)``)."""
    if isinstance(m, nn.Linear):
        return m.in_features
    return m.in_channels * int(torch.tensor(m.kernel_size).prod())


@torch.no_grad()
def l2_lipschitz(m: nn.Module) -> float:
    """An upper bound on the l2 operator norm of an affine layer's linear part."""
    w = m.weight.detach().double()
    if isinstance(m, nn.Linear):
        return float(torch.linalg.matrix_norm(w, ord=2))
    slices = w.reshape(w.shape[0], w.shape[1], -1).permute(2, 0, 1)  # (offsets, C_out, C_in)
    return float(torch.linalg.matrix_norm(slices, ord=2).sum())


@dataclass(frozen=True)
class TailFactors:
    """What the modules after the crashed layer multiply an error by: ``l2`` (product of the
    l2 Lipschitz constants) and ``linf`` (the forward-error-propagation factor)."""

    l2: float
    linf: float


def unsupported(modules: list[nn.Module]) -> str | None:
    """Why the bounds do not cover ``modules`` (None: they do)."""
    for m in modules:
        if isinstance(m, AFFINE):
            if getattr(m, "groups", 1) != 1:
                return f"{type(m).__name__} with groups={m.groups} is not covered"
        elif isinstance(m, _POOL):
            if not _pool_ok(m):
                return f"{type(m).__name__} with overlapping windows or padding is not covered"
        elif not (isinstance(m, _NEUTRAL) or is_activation(m)):
            return f"{type(m).__name__} is not covered (not affine, pooling or a known activation)"
    return None


@torch.no_grad()
def tail_factors(modules: list[nn.Module]) -> TailFactors:
    """Multiply the l2 constants and the FEP factors (fan-in x max |w|, K) of ``modules``
    (which ``unsupported`` accepts)."""
    l2 = linf = 1.0
    for m in modules:
        if isinstance(m, AFFINE):
            l2 *= l2_lipschitz(m)
            linf *= fan_in(m) * float(m.weight.detach().abs().max())
        else:
            k = activation_lipschitz(m)
            if k is not None:
                l2 *= k
                linf *= k
    return TailFactors(l2, linf)


def first_affine(modules: list[nn.Module]) -> int | None:
    """Index of the first affine layer in ``modules`` (None: none)."""
    for i, m in enumerate(modules):
        if isinstance(m, AFFINE):
            return i
    return None


@torch.no_grad()
def neuron_bounds(
    tail: list[nn.Module], y: torch.Tensor, p: float, n_out: int
) -> dict[str, float | None]:
    """Both bounds on the mean l2 output error when each neuron of ``y`` (N, ...) crashes with
    probability p and the crashed layer is followed by ``tail``.

    ``fep``: ``sqrt(n_out) * E[f] * mean_x C(x) * w_m * later factors`` with ``C(x)`` the
    largest |activation| of input x; ``product_of_norms``: ``Lip_2(tail) * sqrt(p) *
    mean_x ||y(x)||_2``. Both bound ``E ||Delta||_2`` averaged over the inputs."""
    y = y.detach().double().flatten(1)
    i = first_affine(tail)
    if i is None:  # no affine layer after: the error passes through K-Lipschitz maps only
        factors = tail_factors(tail)
        fep = n_out**0.5 * factors.linf * float(y.abs().amax(1).mean())  # one crashed unit
        fep *= min(1.0, p * y.shape[1])  # E[min(f, 1)] <= min(1, E f): only ||.||_inf bound
    else:
        rest = tail_factors(tail[i + 1 :])
        head = tail_factors(tail[:i])  # activations/pooling before the first affine layer
        w_m = float(tail[i].weight.detach().abs().max())
        fep = n_out**0.5 * p * y.shape[1] * head.linf * w_m * rest.linf
        fep *= float(y.abs().amax(1).mean())
    l2 = tail_factors(tail).l2 * p**0.5 * float(torch.linalg.vector_norm(y, dim=1).mean())
    return {"fep": fep, "product_of_norms": l2}


@torch.no_grad()
def weight_bounds(
    layer: nn.Module, tail: list[nn.Module], x_in: torch.Tensor, p: float, n_out: int
) -> dict[str, float | None]:
    """Both bounds on the mean l2 output error when each weight of the affine ``layer``
    (input ``x_in``, (N, ...)) crashes with probability p and ``tail`` follows it."""
    w = layer.weight.detach().double()
    x = x_in.detach().double().flatten(1)
    factors = tail_factors(tail)
    crashed = min(p * w.numel(), float(fan_in(layer)))
    fep = n_out**0.5 * crashed * float(w.abs().max()) * factors.linf
    fep *= float(x.abs().amax(1).mean())
    if isinstance(layer, nn.Linear):
        frob = float(torch.linalg.vector_norm(w))
    else:  # sum over kernel offsets of the slices' Frobenius norms
        slices = w.reshape(w.shape[0], w.shape[1], -1)
        frob = float(torch.linalg.vector_norm(slices, dim=(0, 1)).sum())
    l2 = factors.l2 * p**0.5 * frob * float(torch.linalg.vector_norm(x, dim=1).mean())
    return {"fep": fep, "product_of_norms": l2}
