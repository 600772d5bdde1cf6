"""Label flipping data attacks: plain (every label) and budgeted (a few, chosen greedily)."""

from __future__ import annotations

from typing import Any

import torch

from byzance.attacks.base import SEED, DataAttack
from byzance.validation import AnyOf, Integer, OneOf, Real, check_param

_MODES = ("reverse", "permutation")
#: a count of labels, or a fraction of the batch
_BUDGET = AnyOf(Integer(low=0, floats=False), Real(low=0, high=1))


class LabelFlipping(DataAttack):
    """Replace every label y by a wrong one; features are returned unchanged (same object).

    ``mode="reverse"``: ``y -> C - 1 - y`` (C = ``num_classes``; the usual label flipping of
    the Byzantine-learning literature, e.g. 9 - y on MNIST). ``mode="permutation"``:
    ``y -> pi(y)`` with ``pi`` a fixed random cyclic permutation of the C classes drawn from
    ``seed`` (a single C-cycle, so no label is left unchanged; the same ``pi`` at every call).
    Note that "reverse" keeps the middle class fixed when C is odd.
    """

    name = "label_flipping"

    def __init__(self, mode: str = "reverse", seed: int = 0) -> None:
        self.mode = check_param(self, "mode", mode, OneOf(*_MODES))
        self.seed = check_param(self, "seed", seed, SEED)
        self._maps: dict[int, torch.Tensor] = {}

    def mapping(self, num_classes: int) -> torch.Tensor:
        """The label map as an int64 tensor: ``new_label = mapping[old_label]``."""
        if self.mode == "reverse":
            return torch.arange(num_classes - 1, -1, -1)
        if num_classes not in self._maps:
            gen = torch.Generator().manual_seed(self.seed)
            order = torch.randperm(num_classes, generator=gen)
            table = torch.empty(num_classes, dtype=torch.int64)
            table[order] = order.roll(-1)
            self._maps[num_classes] = table
        return self._maps[num_classes]

    def poison(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        num_classes: int,
        generator: torch.Generator | None = None,
        **context: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self._check(x, y, num_classes)
        return x, self.mapping(num_classes).to(y.device)[y].to(y.dtype)


def _linear_params(model_params: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(model_params, torch.nn.Module):
        linears = [m for m in model_params.modules() if isinstance(m, torch.nn.Linear)]
        if len(linears) != 1 or linears[0].bias is None:
            raise ValueError(
                "BudgetedLabelFlipping requires a softmax-regression model (exactly one "
                f"nn.Linear with bias), got a model with {len(linears)} nn.Linear layers"
            )
        return linears[0].weight.detach(), linears[0].bias.detach()
    if isinstance(model_params, (tuple, list)) and len(model_params) == 2:
        weight, bias = model_params
        if isinstance(weight, torch.Tensor) and isinstance(bias, torch.Tensor):
            return weight.detach(), bias.detach()
    raise ValueError(
        "BudgetedLabelFlipping requires model_params=(W, b), W of shape (C, p) and b of shape "
        f"(C,), or the logistic-regression nn.Module; got {type(model_params).__name__}"
    )


class BudgetedLabelFlipping(DataAttack):
    """Flip at most ``budget`` labels per step, those that hurt the honest objective most.

    El-Kabid & El Mhamdi, "Approaching the Harm of Gradient Attacks While Only Flipping
    Labels" (2025), for softmax (multinomial logistic) regression ``p(x) = softmax(W x + b)``.
    With ``x~ = (x, 1)``, ``Y`` the one-hot labels and ``P`` the predictions on the N samples,
    the gradient is ``G(Y) = (1/N) (P - Y)^T X~`` (C x (p+1)); flipping sample i from ``y_i``
    to ``c`` changes it by ``(1/N) (e_{y_i} - e_c) x~_i^T``, independently of the other flips.
    The attacker minimises the first-order decrease of the honest loss ``<G_h, G(Y')>`` where
    ``G_h = G(Y)`` is the honest gradient of its own batch, i.e. maximises the gain
    ``gain_{i,c} = <G_h[c] - G_h[y_i], x~_i>``. The objective is additive over samples, so the
    greedy choice is exact: per sample the best ``c`` (``!= y_i``), then the ``budget``
    samples of largest positive gain. Vectorised: ``S = X~ G_h^T`` (N x C).

    ``budget``: an int (number of labels per call) or a float in [0, 1] (fraction of the batch,
    rounded down). ``poison`` needs the current model: ``model_params=(W, b)`` with ``W`` of
    shape (C, p), ``p = prod(x.shape[1:])`` (inputs are flattened), or the model itself when it
    holds exactly one ``nn.Linear`` (the "logreg" model).
    """

    name = "budgeted_label_flipping"

    def __init__(self, budget: int | float = 0.1) -> None:
        self.budget: int | float = check_param(self, "budget", budget, _BUDGET)

    def count(self, batch_size: int) -> int:
        """The number of labels that may be flipped in a batch of ``batch_size``."""
        if isinstance(self.budget, int):
            return min(self.budget, batch_size)
        return int(self.budget * batch_size)

    def gains(
        self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per sample: the best new label and its gain ``<G_h[c] - G_h[y_i], x~_i>``."""
        n = x.shape[0]
        flat = x.reshape(n, -1).to(weight.dtype)
        probs = torch.softmax(flat @ weight.T + bias, dim=1)
        residual = probs.clone()
        residual[torch.arange(n, device=y.device), y] -= 1.0
        grad_w = residual.T @ flat / n  # (C, p)
        grad_b = residual.mean(dim=0)  # (C,)
        scores = flat @ grad_w.T + grad_b  # (N, C): <G_h[c], x~_i>
        own = scores.gather(1, y[:, None])
        masked = scores.scatter(1, y[:, None], float("-inf"))
        best, label = masked.max(dim=1)
        return label, best - own[:, 0]

    def poison(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        num_classes: int,
        generator: torch.Generator | None = None,
        *,
        model_params: Any = None,
        **context: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self._check(x, y, num_classes)
        weight, bias = _linear_params(model_params)
        p = x[0].numel() if x.shape[0] else 0
        if weight.shape != (num_classes, p) or bias.shape != (num_classes,):
            raise ValueError(
                f"BudgetedLabelFlipping requires W of shape (num_classes, p)=({num_classes}, {p}) "
                f"and b of shape ({num_classes},), got W {tuple(weight.shape)}, "
                f"b {tuple(bias.shape)}"
            )
        k = self.count(x.shape[0])
        if k == 0:
            return x, y.clone()
        label, gain = self.gains(x, y.to(weight.device), weight, bias)
        top_gain, top = torch.topk(gain, k)
        top = top[top_gain > 0]
        new = y.clone()
        new[top.to(y.device)] = label[top].to(device=y.device, dtype=y.dtype)
        return x, new
