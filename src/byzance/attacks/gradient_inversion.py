"""Data poisoning by gradient inversion (Bouaziz, El-Mhamdi, Usunier 2024).

"Inverting Gradient Attacks Makes Powerful Data Poisoning" (arXiv:2410.21453): a gradient
attack tells the attacker which vector it would like to send; a data poisoner cannot send it,
but it can look for data points whose gradient at the current model *is* that vector, by the
gradient-inversion machinery of privacy attacks. Here, each round:

1. the target: the gradient attack ``target`` (any attack of the catalog, e.g. ALIE or an
   adaptive one, built with the deployed rule) forges f vectors ``T_1..T_f`` from the honest
   workers' gradients of the round (the omniscient attacker of the Byzantine literature);
2. Byzantine worker j keeps its own batch of B examples but replaces ``k = points`` of them by
   poisoned examples (x_i, p_i): inputs within the valid input range and soft labels p_i on the
   probability simplex (``p_i = softmax(l_i)``). With ``G(x, p)`` the gradient at the current
   parameters of the worker's mean loss on its whole batch (the B - k clean examples and the k
   poisoned ones), the attacker minimises over (x, l)

       cosine:    1 - <G, T_j> / (||G|| ||T_j||)
       distance:  ||G - T_j||^2 / ||T_j||^2

   by ``steps`` steps of Adam (learning rate ``lr``), differentiating through ``G`` (second
   order autograd), projecting x back onto the input range after every step;
3. the Byzantine worker then runs the honest worker step on its poisoned batch (gradient,
   momentum): the threat model of data poisoning, weaker than a gradient attack, since the
   server receives a genuine gradient of data.

The clean examples' part of G does not depend on (x, l): it is computed once per worker and
round, and the second-order passes run on the k poisoned examples only.
"""

from __future__ import annotations

from typing import Any

import torch

from byzance.attacks.base import DataAttack
from byzance.attacks.optimal import check_aggregator
from byzance.validation import (
    AnyOf,
    Integer,
    OneOf,
    OptionalOf,
    Real,
    String,
    Vector,
    check_param,
)

OBJECTIVES = ("cosine", "distance")
_POINTS = AnyOf(Integer(low=1, floats=False), Real(low=0, high=1, closed="right"))


def objective(g: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """The inversion loss of gradient ``g`` against ``target`` (see the module docstring)."""
    if kind == "cosine":
        return 1 - torch.nn.functional.cosine_similarity(g, target, dim=0, eps=1e-12)
    return (g - target).square().sum() / target.square().sum().clamp_min(1e-30)


class GradientInversion(DataAttack):
    """Poisoned examples whose gradient imitates a gradient attack (module docstring).

    ``target``: the imitated gradient attack, a catalog spec (``"alie"``,
    ``"ipm(epsilon=0.5)"``, ``"optimal_alie"``...); ``points``: poisoned examples per
    Byzantine batch, a count or a fraction of the batch (rounded, at least 1);
    ``objective``: ``"cosine"`` or ``"distance"``; ``steps``, ``lr``: Adam on the inputs and
    label logits; ``input_range``: ``(low, high)`` of the inputs (None: the range of the
    training inputs).

    The simulator calls ``invert`` with the round's honest gradients before the Byzantine
    workers compute theirs (``needs_honest_gradients``); ``poison`` alone cannot run it.
    """

    name = "gradient_inversion"
    #: ``Workers`` computes the honest gradients first and calls ``invert``
    needs_honest_gradients = True

    def __init__(
        self,
        target: str = "alie",
        points: int | float = 1.0,
        objective: str = "cosine",
        steps: int = 20,
        lr: float = 0.1,
        input_range: tuple[float, float] | None = None,
        aggregator: Any = None,
    ) -> None:
        from byzance import attacks  # the registry imports this module

        self.target = check_param(self, "target", target, _SPEC)
        self.points: int | float = check_param(self, "points", points, _POINTS)
        self.objective = check_param(self, "objective", objective, OneOf(*OBJECTIVES))
        self.steps = check_param(self, "steps", steps, Integer(low=1))
        self.lr = check_param(self, "lr", lr, Real(low=0, closed="neither"))
        rng = check_param(self, "input_range", input_range, _RANGE)
        if rng is not None:
            rng = tuple(float(v) for v in rng)
            if len(rng) != 2 or not rng[0] < rng[1]:
                raise ValueError(
                    f"GradientInversion.input_range: expected (low, high) with low < high, "
                    f"got {input_range!r}"
                )
        self.input_range: tuple[float, float] | None = rng  # type: ignore[assignment]
        if aggregator is not None:  # the deployed rule, for an adaptive target
            aggregator = check_aggregator(type(self).__name__, aggregator)
        try:
            built = attacks.create(self.target, aggregator=aggregator)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"GradientInversion.target: {exc}") from exc
        if isinstance(built, DataAttack):
            raise ValueError(
                f"GradientInversion.target: expected a gradient attack, got the data attack "
                f"{self.target!r}"
            )
        self._attack = built
        #: (f,) cosine of each poisoned gradient with its target, last round (diagnostics)
        self.last_cosine: torch.Tensor | None = None

    def __repr__(self) -> str:
        names = ("target", "points", "objective", "steps", "lr", "input_range")
        return f"GradientInversion({', '.join(f'{n}={getattr(self, n)!r}' for n in names)})"

    def count(self, batch_size: int) -> int:
        """Poisoned examples in a batch of ``batch_size``."""
        if isinstance(self.points, int):
            return min(self.points, batch_size)
        return min(batch_size, max(1, round(self.points * batch_size)))

    def poison(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        num_classes: int,
        generator: torch.Generator | None = None,
        **context: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise ValueError(
            "GradientInversion: the poisoned points depend on the round's honest gradients; "
            "it runs through Workers (the sim engine), which calls invert()"
        )

    def invert(
        self,
        loss: Any,
        params: torch.Tensor,
        honest: torch.Tensor,
        xs: torch.Tensor,
        ys: torch.Tensor,
        num_classes: int,
        *,
        bounds: tuple[float, float],
        seed: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The poisoned batches of f Byzantine workers: ``xs`` (f, B, ...), ``ys`` (f, B)
        integer labels in, ``(xs', soft labels (f, B, C))`` out (inputs are never modified).

        ``loss(theta, x, p)``: the mean loss of a batch with soft labels; ``honest`` (h, d):
        the round's honest gradients; ``bounds``: the input range unless ``input_range`` is
        set; ``seed``: the stream of a randomised target attack."""
        f, b = ys.shape
        lo, hi = self.input_range if self.input_range is not None else bounds
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            targets = self._attack.forge(honest, f).to(params.dtype)
        k = self.count(b)
        soft = torch.nn.functional.one_hot(ys, num_classes).to(params.dtype)
        out_x = xs.clone()
        cosines = []
        for j in range(f):  # f is small; each inversion is a sequence of dependent steps
            out_x[j, :k], soft[j, :k], cos = self._invert_one(
                loss, params, targets[j], xs[j], soft[j], k, lo, hi
            )
            cosines.append(cos)
        self.last_cosine = torch.stack(cosines)
        return out_x, soft

    def _invert_one(self, loss, params, target, x, p, k, lo, hi):
        b = x.shape[0]
        theta = params.detach().requires_grad_(True)
        with torch.enable_grad():
            if k < b:  # the clean examples' share of the batch gradient: fixed
                (clean,) = torch.autograd.grad(loss(theta, x[k:], p[k:]), theta)
                clean = clean.detach() * ((b - k) / b)
            else:
                clean = torch.zeros_like(params)
            x_var = x[:k].detach().clone().clamp_(lo, hi).requires_grad_(True)
            logits = torch.zeros(k, p.shape[1], dtype=params.dtype, device=params.device)
            logits.requires_grad_(True)
            opt = torch.optim.Adam([x_var, logits], lr=self.lr)

            def grad_of(create_graph: bool) -> torch.Tensor:
                value = loss(theta, x_var, torch.softmax(logits, dim=1))
                (g,) = torch.autograd.grad(value, theta, create_graph=create_graph)
                return clean + g * (k / b)

            for _ in range(self.steps):
                obj = objective(grad_of(True), target, self.objective)
                gx, gl = torch.autograd.grad(obj, [x_var, logits])
                x_var.grad, logits.grad = gx, gl
                opt.step()
                with torch.no_grad():
                    x_var.clamp_(lo, hi)
            final = grad_of(False).detach()
        cos = torch.nn.functional.cosine_similarity(final, target, dim=0, eps=1e-12)
        return x_var.detach(), torch.softmax(logits.detach(), dim=1), cos


_SPEC = String()
_RANGE = OptionalOf(Vector())


def check_config(config: Any) -> None:
    """What the inversion needs from the rest of the config, before any work: one gradient
    step per round (it matches a gradient, not the pseudo-gradient of local steps)."""
    name = config.attack.split("(", 1)[0].strip().lower()
    if name != GradientInversion.name or not config.has_attack:
        return
    if config.local_steps != 1:
        raise ValueError(
            "ExperimentConfig.local_steps: attack 'gradient_inversion' matches the gradient of "
            f"one step, so it requires local_steps=1, got {config.local_steps}"
        )
