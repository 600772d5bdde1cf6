"""The fault-tolerance regulariser: the first-order expected squared crash error, as a loss.

El Mhamdi, Guerraoui, Kucharavy & Volodin ("The Probabilistic Fault Tolerance of Neural
Networks in the Continuous Limit", 2019) use their first-order estimate of the crash error
to regularise training towards crash-tolerant weights. Here the penalty is that estimate for
Bernoulli(p) crashes of the neurons of one layer (see ``byzance.analysis.crash``)::

    R(theta) = mean_x [ p^2 ||sum_i a_i(x)||^2 + p (1 - p) sum_i ||a_i(x)||^2 ],
    a_i(x) = y_i(x) dF(x)/dy_i          (a vector over the C outputs),

the estimate of ``E ||F_crashed(x) - F(x)||^2``; train on ``loss + lam * R``. The paper's
exact form of the regulariser was not available to us; this one penalises the same first-order
quantity (the mean and the variance of the crash error), derived as in the module
``byzance.analysis.crash``. Cost: one extra backward pass per output (C of them), each
differentiated again by the training step.
"""

from __future__ import annotations

import torch
from torch import nn

from byzance.analysis.crash import hooked, layer_module
from byzance.validation import Integer, Real, check_param


def crash_penalty(model: nn.Module, x: torch.Tensor, *, layer: int, p: float) -> torch.Tensor:
    """``R(theta)`` above on the batch ``x`` for the neurons of the ``layer``-th activation
    (1-based), differentiable with respect to the model's parameters (a 0-d tensor)."""
    check_param("crash_penalty", "layer", layer, Integer(low=1))
    check_param("crash_penalty", "p", p, Real(low=0, high=1))
    target = layer_module(model, "neurons", int(layer))
    holder: dict[str, torch.Tensor] = {}

    def gate(_m, _a, out):
        holder["m"] = torch.ones_like(out, requires_grad=True)
        return out * holder["m"]

    with hooked(target, gate):
        out = model(x).flatten(1)
    rows = []
    for c in range(out.shape[1]):
        (g,) = torch.autograd.grad(out[:, c].sum(), holder["m"], create_graph=True)
        rows.append(g.flatten(1))
    jac = torch.stack(rows)  # (C, N, units): a_i of each input, per output
    s1 = jac.sum(2)  # (C, N)
    s2 = jac.pow(2).sum((0, 2))  # (N,)
    p = float(p)
    return (p * p * s1.pow(2).sum(0) + p * (1 - p) * s2).mean()
