"""Crash tolerance of a trained network: Monte Carlo of random neuron or weight crashes,
beside the worst-case bounds and the first-order estimate of the papers.

Fault model (El Mhamdi & Guerraoui, "When Neurons Fail", IPDPS 2017; El Mhamdi, Guerraoui,
Kucharavy & Volodin, "The Probabilistic Fault Tolerance of Neural Networks in the Continuous
Limit", 2019): each neuron of one layer (``mode="neurons"``: the outputs of its ``layer``-th
activation module, 1-based; for a convolution every channel at every position is a neuron)
or each weight of one affine layer (``mode="weights"``: the ``layer``-th ``Linear`` /
``Conv`` module) crashes independently with probability p: it outputs 0 (is 0), and the
survivors are not rescaled. The output error of input x is ``Delta(x) = F_crashed(x) - F(x)``
(the logits), measured in the l2 norm.

``crash(model, inputs, layer=..., p=..., trials=..., seed=...)`` draws ``trials`` crash
patterns per input and returns a ``CrashResult``: the Monte-Carlo distribution of
``||Delta||_2`` over (trial, input) pairs (``mean``, ``std``, ``quantiles``), the accuracy
drop when labels are given, and side by side

* the worst-case bounds on the mean error (``fep``, ``product_of_norms``; definitions and the
  layers they cover in ``byzance.analysis.crash_bounds``);
* the first-order (Taylor) estimate of the continuous-limit paper: with ``xi_i`` ~
  Bernoulli(1 - p) the survival of unit i, whose value is ``u_i`` (an activation or a weight),
  ``Delta ~= -sum_i (1 - xi_i) a_i`` with ``a_i = u_i dF/du_i`` (a vector over the outputs), so
  ``E Delta ~= -p sum_i a_i``, ``tr Var Delta ~= p (1 - p) sum_i ||a_i||^2`` and
  ``E ||Delta||^2 ~= p^2 ||sum_i a_i||^2 + p (1 - p) sum_i ||a_i||^2``, exact when the network
  is affine after the crashed units, off by O(p^2) terms of the second derivatives otherwise.
  ``taylor_mean_norm`` (``mean_x ||E Delta||``), ``taylor_var`` (``mean_x tr Var``) and
  ``taylor_rms`` (``sqrt(mean_x E ||Delta||^2)``) sit beside their Monte-Carlo values
  ``mc_mean_norm``, ``mc_var`` and ``rms``.

The model is evaluated in eval mode (restored afterwards) and never modified.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from byzance.analysis import crash_bounds as cb
from byzance.validation import Integer, OneOf, Real, check_param

QUANTILES = (0.5, 0.9, 0.99)
MODES = ("neurons", "weights")
#: (trials x inputs) forward passes per Monte-Carlo chunk
_CHUNK = 4096


@dataclass
class CrashResult:
    """Outcome of ``crash`` (see the module docstring for every field)."""

    mode: str
    layer: int
    p: float
    trials: int
    units: int
    mean: float
    std: float
    quantiles: dict[float, float]
    rms: float
    mc_mean_norm: float
    mc_var: float
    taylor_mean_norm: float
    taylor_var: float
    taylor_rms: float
    fep: float | None
    product_of_norms: float | None
    bounds_note: str | None
    accuracy: float | None = None
    crashed_accuracy: float | None = None
    accuracy_drop: float | None = None
    errors: torch.Tensor = field(default=None, repr=False)  # type: ignore[assignment]

    def as_dict(self) -> dict[str, Any]:
        """Every field but ``errors``, as plain numbers."""
        d = asdict(self)
        d.pop("errors")
        d["quantiles"] = {str(q): v for q, v in self.quantiles.items()}
        return d


def units_of(model: nn.Module, mode: str) -> list[nn.Module]:
    """The modules ``layer`` counts (1-based): activations (``neurons``) or affine layers."""
    if mode == "neurons":
        return [m for m in model.modules() if cb.is_activation(m)]
    return [m for m in model.modules() if isinstance(m, cb.AFFINE)]


def layer_module(model: nn.Module, mode: str, layer: int) -> nn.Module:
    found = units_of(model, mode)
    what = "activation modules" if mode == "neurons" else "Linear/Conv modules"
    if not found:
        raise ValueError(f"crash: the model has no {what} (mode={mode!r})")
    if layer > len(found):
        raise ValueError(
            f"crash.layer: expected an int in [1, {len(found)}] (the model's {what}), got {layer}"
        )
    return found[layer - 1]


@contextmanager
def _eval(model: nn.Module) -> Iterator[None]:
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


@contextmanager
def hooked(module: nn.Module, fn: Any) -> Iterator[None]:
    handle = module.register_forward_hook(fn)
    try:
        yield
    finally:
        handle.remove()


def _tail(model: nn.Module, target: nn.Module) -> tuple[list[nn.Module] | None, str | None]:
    mods = cb.chain(model)
    if mods is None:
        return None, f"{type(model).__name__} is not an nn.Sequential chain"
    idx = next(i for i, m in enumerate(mods) if m is target)
    tail = mods[idx + 1 :]
    return tail, cb.unsupported(tail)


def _check(model, inputs, labels, layer, p, trials, seed, mode) -> None:
    if not isinstance(model, nn.Module):
        raise ValueError(f"crash.model: expected a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(inputs, torch.Tensor) or inputs.dim() < 2 or inputs.shape[0] < 1:
        got = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
        raise ValueError(f"crash.inputs: expected a tensor (N >= 1, ...), got {got}")
    check_param("crash", "layer", layer, Integer(low=1))
    check_param("crash", "p", p, Real(low=0, high=1))
    check_param("crash", "trials", trials, Integer(low=1))
    check_param("crash", "seed", seed, Integer(low=0))
    check_param("crash", "mode", mode, OneOf(*MODES))
    if labels is not None and (
        not isinstance(labels, torch.Tensor) or labels.shape != (inputs.shape[0],)
    ):
        got = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(
            f"crash.labels: expected a tensor of shape ({inputs.shape[0]},), got {got}"
        )


def crash(
    model: nn.Module,
    inputs: torch.Tensor,
    *,
    layer: int,
    p: float,
    trials: int = 100,
    seed: int = 0,
    labels: torch.Tensor | None = None,
    mode: str = "neurons",
) -> CrashResult:
    """Monte Carlo of random crashes at ``layer`` with probability ``p``, with the bounds and
    the first-order estimate (see the module docstring). ``inputs``: (N, ...) on the model's
    device; ``labels`` (N,) adds the clean and mean crashed accuracy."""
    _check(model, inputs, labels, layer, p, trials, seed, mode)
    layer, p, trials = int(layer), float(p), int(trials)
    target = layer_module(model, mode, layer)
    gen = torch.Generator().manual_seed(int(seed))
    with _eval(model), torch.no_grad():
        seen: dict[str, torch.Tensor] = {}

        def capture(_m, args, out):
            seen["in"], seen["out"] = args[0], out

        with hooked(target, capture):
            clean = model(inputs)
        if mode == "neurons":
            shape = seen["out"].shape[1:]
            deltas = _mc_neurons(model, target, inputs, clean, shape, p, trials, gen)
        else:
            deltas = _mc_weights(model, target, inputs, clean, p, trials, gen)
    errors = torch.linalg.vector_norm(deltas.flatten(2).double(), dim=2)  # (trials, N)
    s1, s2 = (_taylor_neurons if mode == "neurons" else _taylor_weights)(model, target, inputs)
    n_out = clean[0].numel()
    tail, note = _tail(model, target)
    bounds: dict[str, float | None] = {"fep": None, "product_of_norms": None}
    if note is None and tail is not None:
        if mode == "neurons":
            bounds = cb.neuron_bounds(tail, seen["out"], p, n_out)
        else:
            bounds = cb.weight_bounds(target, tail, seen["in"], p, n_out)
    flat = errors.flatten()
    d64 = deltas.flatten(2).double()
    mean_sq_taylor = p * p * s1.pow(2).sum(1) + p * (1 - p) * s2
    units = seen["out"][0].numel() if mode == "neurons" else target.weight.numel()
    out = CrashResult(
        mode=mode,
        layer=layer,
        p=p,
        trials=trials,
        units=units,
        mean=float(flat.mean()),
        std=float(flat.std()) if flat.numel() > 1 else 0.0,
        quantiles={q: float(torch.quantile(flat, q)) for q in QUANTILES},
        rms=math.sqrt(float(d64.pow(2).sum(2).mean())),
        mc_mean_norm=float(torch.linalg.vector_norm(d64.mean(0), dim=1).mean()),
        mc_var=float(d64.var(0, unbiased=False).sum(1).mean()),
        taylor_mean_norm=float(p * torch.linalg.vector_norm(s1, dim=1).mean()),
        taylor_var=float((p * (1 - p) * s2).mean()),
        taylor_rms=math.sqrt(float(mean_sq_taylor.mean())),
        fep=bounds["fep"],
        product_of_norms=bounds["product_of_norms"],
        bounds_note=note,
        errors=errors,
    )
    if labels is not None:
        labels = labels.to(clean.device)
        out.accuracy = float((clean.argmax(1) == labels).double().mean())
        crashed = (clean + deltas.to(clean.dtype)).argmax(2) == labels
        out.crashed_accuracy = float(crashed.double().mean())
        out.accuracy_drop = out.accuracy - out.crashed_accuracy
    return out


def _masks(shape: tuple[int, ...], p: float, gen: torch.Generator, like: torch.Tensor):
    keep = torch.rand(shape, generator=gen) >= p  # P(crash) = p exactly, also at p = 0 and 1
    return keep.to(device=like.device, dtype=like.dtype)


def _mc_neurons(model, target, inputs, clean, shape, p, trials, gen) -> torch.Tensor:
    """(trials, N, ...) output errors: inputs repeated per trial, one mask per (trial, x)."""
    n = inputs.shape[0]
    chunk = max(1, _CHUNK // n)
    parts = []
    for start in range(0, trials, chunk):
        t = min(chunk, trials - start)
        mask = _masks((t * n, *shape), p, gen, clean)
        with hooked(target, lambda _m, _a, out, mask=mask: out * mask):
            out = model(inputs.repeat(t, *([1] * (inputs.dim() - 1))))
        parts.append(out.view(t, *clean.shape) - clean)
    return torch.cat(parts)


def _mc_weights(model, target, inputs, clean, p, trials, gen) -> torch.Tensor:
    """(trials, N, ...) output errors: one weight mask per trial, vmapped over trials."""
    from torch.func import functional_call, vmap

    name = _param_name(model, target)
    weight = target.weight

    def run(mask: torch.Tensor) -> torch.Tensor:
        return functional_call(model, {name: weight * mask}, (inputs,))

    chunk = max(1, _CHUNK // inputs.shape[0])
    parts = []
    for start in range(0, trials, chunk):
        t = min(chunk, trials - start)
        parts.append(vmap(run)(_masks((t, *weight.shape), p, gen, weight)) - clean)
    return torch.cat(parts)


def _param_name(model: nn.Module, target: nn.Module) -> str:
    return next(f"{n}.weight" if n else "weight" for n, m in model.named_modules() if m is target)


def _taylor_neurons(model, target, inputs) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum_i a_i (N, C), sum_i ||a_i||^2 (N,))`` for the neurons of ``target``."""
    s1, s2 = [], []
    with _eval(model):
        for xb in inputs.split(256):
            holder: dict[str, torch.Tensor] = {}

            def gate(_m, _a, out, holder=holder):
                holder["m"] = torch.ones_like(out, requires_grad=True)
                return out * holder["m"]

            with torch.enable_grad(), hooked(target, gate):
                out = model(xb).flatten(1)
                rows = _jacobian_rows(out, holder["m"])
            rows = rows.detach().flatten(2).double()
            s1.append(rows.sum(2).T)
            s2.append(rows.pow(2).sum((0, 2)))
    return torch.cat(s1), torch.cat(s2)


def _jacobian_rows(out: torch.Tensor, wrt: torch.Tensor) -> torch.Tensor:
    """(C, N, ...): d out[:, c] / d wrt for each output c (samples independent)."""
    rows = []
    for c in range(out.shape[1]):
        (g,) = torch.autograd.grad(out[:, c].sum(), wrt, retain_graph=c + 1 < out.shape[1])
        rows.append(g)
    return torch.stack(rows)


def _taylor_weights(model, target, inputs) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum_i a_i (N, C), sum_i ||a_i||^2 (N,))`` for the weights of ``target``
    (per-input Jacobians with respect to a weight mask, vmapped over inputs)."""
    from torch.func import functional_call, jacrev, vmap

    name = _param_name(model, target)
    weight = target.weight.detach()

    def one(mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return functional_call(model, {name: weight * mask}, (x[None],))[0].flatten()

    ones = torch.ones_like(weight)
    with _eval(model), torch.no_grad():
        n_out = model(inputs[:1]).flatten(1).shape[1]
    chunk = max(1, (1 << 24) // (n_out * weight.numel()))
    s1, s2 = [], []
    with _eval(model):
        for xb in inputs.split(chunk):
            jac = vmap(jacrev(one), in_dims=(None, 0))(ones, xb).detach().flatten(2).double()
            s1.append(jac.sum(2))
            s2.append(jac.pow(2).sum((1, 2)))
    return torch.cat(s1), torch.cat(s2)


def crash_curve(
    model: nn.Module, inputs: torch.Tensor, *, layer: int, ps: list[float], **kwargs: Any
) -> list[CrashResult]:
    """``crash`` at each probability of ``ps`` (same seed: nested crash patterns are not
    guaranteed, each p draws afresh)."""
    return [crash(model, inputs, layer=layer, p=p, **kwargs) for p in ps]
