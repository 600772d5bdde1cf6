"""The fault-tolerance regulariser as a training option: ``ExperimentConfig.crash_regularizer``.

El Mhamdi, Guerraoui, Kucharavy & Volodin ("The Probabilistic Fault Tolerance of Neural
Networks in the Continuous Limit", 2019) train towards crash-tolerant weights by penalising
the first-order expected squared crash error ``R`` (``byzance.analysis.crash_regularizer``:
Bernoulli(p) crashes of the neurons of the ``layer``-th activation). With
``crash_regularizer = {weight = lam, layer = l, p = p}`` every honest worker sends

    g_w = grad L(theta; batch_w) + lam * grad R(theta; batch_w)

computed on its own batch at its own parameters (at each of its K local steps when
``local_steps`` = K > 1), i.e. it descends ``L + lam R``; the Byzantine workers' vectors (a
data-poisoning attack's included) are left as they are. ``{}`` (the default) is off and
leaves the worker step untouched (one pass for every worker's plain gradient).

Cost: when on, a Python loop over the honest rows of the group, each with C + 1 backward
passes differentiated once more (C: the number of outputs); the plain gradients still come
from the one-pass path. Refused: protocols other than ``server`` (their simulators call the
gradient functions directly, per model), FedZero (no backprop) and gradient inversion (its
own honest gradients).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from byzance.analysis.crash import units_of
from byzance.analysis.crash_regularizer import crash_penalty
from byzance.validation import Integer, Real, check_params

FIELD = "ExperimentConfig.crash_regularizer"
KEYS: dict[str, Any] = {
    "weight": Real(low=0, closed="neither"),
    "layer": Integer(low=1),
    "p": Real(low=0, high=1, closed="neither"),
}


class _AtParams(nn.Module):
    """``flat``'s module evaluated at the flat parameters ``theta`` (differentiable in it);
    its activation modules are the module's, in the same order (``units_of``)."""

    def __init__(self, flat: Any, theta: torch.Tensor) -> None:
        super().__init__()
        self.inner = flat.module
        self.flat, self.theta = flat, theta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        params = (self.flat.unflatten(self.theta), self.flat.buffers)
        return functional_call(self.inner, params, (x,))


@dataclass(frozen=True)
class CrashTraining:
    """Adds ``weight * grad R`` (``crash_penalty`` at ``layer``, ``p``) to honest gradients."""

    weight: float
    layer: int
    p: float

    def penalty_grad(self, flat: Any, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``grad R(theta)`` (d,) on the batch ``x`` of one worker."""
        with torch.enable_grad():
            theta = theta.detach().requires_grad_(True)
            r = crash_penalty(_AtParams(flat, theta), x, layer=self.layer, p=self.p)
            (g,) = torch.autograd.grad(r, theta)
        return g

    def wrap(self, workers: Any, rows: torch.Tensor, shared: Callable, local: Callable):
        """The worker group's (shared-parameter, per-worker-parameter) gradient functions for
        ``rows`` with the penalty's gradient added to the honest rows (a loop over them)."""
        ids = workers.ids.to(rows.device)[rows]
        honest = (ids < workers.n_honest).nonzero().flatten().tolist()
        flat = workers.flat

        def add(g: torch.Tensor, theta_of: Callable, xs: torch.Tensor) -> torch.Tensor:
            for r in honest:
                g[r] += self.weight * self.penalty_grad(flat, theta_of(r), xs[r])
            return g

        def grad_shared(theta, xs, ys):
            g, loss = shared(theta, xs, ys)
            return add(g, lambda r: theta, xs), loss

        def grad_local(theta, xs, ys):
            g, loss = local(theta, xs, ys)
            return add(g, lambda r: theta[r], xs), loss

        return grad_shared, grad_local


def build(config: Any, model: nn.Module | None = None) -> CrashTraining | None:
    """The option of ``config`` checked (None when off); with ``model``, its ``layer`` is
    checked against that model's activation modules."""
    spec = dict(config.crash_regularizer)
    if not spec:
        return None
    values = check_params(FIELD, spec, KEYS)
    missing = [k for k in KEYS if k not in values]
    if missing:
        raise ValueError(
            f"{FIELD}: missing key(s) {missing}; expected a table of weight (> 0), layer "
            f"(the activation whose neurons crash, 1-based) and p (in (0, 1)), got {spec!r}"
        )
    if model is not None:
        _check_layer(len(units_of(model, "neurons")), int(values["layer"]), repr(config.model))
    return CrashTraining(float(values["weight"]), int(values["layer"]), float(values["p"]))


def _check_layer(count: int, layer: int, model: str) -> None:
    if layer > count:
        raise ValueError(
            f"{FIELD}.layer: expected an int in [1, {count}] (the activation modules of model "
            f"{model}), got {layer}"
        )


@lru_cache(maxsize=32)
def _activations(model: str, input_shape: tuple[int, ...], num_classes: int) -> int:
    from byzance.models import create_model

    with torch.random.fork_rng(devices=[]):
        built = create_model(model, input_shape, num_classes)
    return len(units_of(built, "neurons"))


def check_config(config: Any, custom_model: bool = False) -> None:
    """Before any work: the keys and values, what the option cannot run with, and (for a named
    model) that the model has the ``layer``-th activation on the dataset's inputs."""
    opt = build(config)
    if opt is None:
        return
    if config.protocol != "server":
        raise ValueError(
            f"{FIELD}: runs under protocol 'server' only (the simulators of the other "
            "protocols compute per-model gradients outside the worker step), got "
            f"protocol={config.protocol!r}"
        )
    if config.gradient_estimator != "backprop":
        raise ValueError(
            f"{FIELD}: the regulariser's gradient needs backprop; it cannot run with "
            f"gradient_estimator={config.gradient_estimator!r}"
        )
    if config.has_attack and config.attack.split("(", 1)[0].strip() == "gradient_inversion":
        raise ValueError(
            f"{FIELD}: not supported with attack 'gradient_inversion' (which computes the "
            "honest gradients itself)"
        )
    from byzance import datasets, models

    if custom_model or config.model not in models.MODELS:
        return  # checked on the model itself at set-up (``build(config, model)``)
    info = datasets.dataset_info(config.dataset)
    count = _activations(config.model, tuple(info.input_shape), int(info.num_classes))
    _check_layer(count, opt.layer, repr(config.model))
