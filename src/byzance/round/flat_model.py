"""A model's parameters as one flat (d,) vector and its loss as a pure function of it.

``torch.func.vmap(grad(loss))`` over stacked worker batches (k, B, ...) returns the k
gradients as one (k, d) matrix in a single batched computation (no loop over workers). For
shared parameters ``SummedGradients`` gets the same (k, d) matrix from one pass over the
concatenated batch, much cheaper on a CPU (``summed_grad``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from byzance.round.summed_grad import SummedGradients


class FlatModel:
    """A module's parameters as one flat vector and its loss as a pure function of it.

    Batch-norm layers are switched to batch statistics (no running stats), which is what a
    vmapped per-worker computation needs; buffers otherwise stay fixed.
    """

    def __init__(self, model: nn.Module) -> None:
        torch.func.replace_all_batch_norm_modules_(model)
        self.module = model
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError("FlatModel: the model has no trainable parameters")
        self.names = [n for n, _ in named]
        self.shapes = [tuple(p.shape) for _, p in named]
        self.sizes = [p.numel() for _, p in named]
        self.dim = sum(self.sizes)
        self.buffers = dict(model.named_buffers())

    def flatten(self) -> torch.Tensor:
        """The module's current parameters as a new flat (d,) tensor."""
        params = dict(self.module.named_parameters())
        return torch.cat([params[n].detach().reshape(-1) for n in self.names])

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views of ``theta`` shaped like the parameters (split: one fused backward)."""
        parts = theta.split(self.sizes)
        return {n: p.view(s) for n, p, s in zip(self.names, parts, self.shapes, strict=True)}

    def load_into_module(self, theta: torch.Tensor) -> None:
        """Copy a flat vector into the module's parameters (e.g. to save the trained model)."""
        with torch.no_grad():
            params = dict(self.module.named_parameters())
            for n, p in self.unflatten(theta).items():
                params[n].copy_(p)

    def logits(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.module, (self.unflatten(theta), self.buffers), (x,))

    def loss(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(self.logits(theta, x), y)

    def batched_grad(self, shared_params: bool) -> Callable:
        """``fn(theta, xs, ys) -> (grads (k, d), losses (k,))`` for stacked batches (k, B, ...).

        ``theta`` is (d,) shared by all workers if ``shared_params``, else (k, d) per worker.
        Shared parameters go through ``SummedGradients`` (one pass over the concatenated
        batch), which falls back to the vmapped reference for models it cannot handle.
        """
        g = grad_and_value(self.loss)
        vmapped = vmap(g, in_dims=(None if shared_params else 0, 0, 0), randomness="different")
        if not shared_params:
            return vmapped
        return SummedGradients(
            self.module, self.names, self.sizes, self.buffers, self.unflatten, vmapped, self.loss
        )

    @torch.inference_mode()
    def accuracy(
        self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, batch_size: int
    ) -> float:
        """Fraction of ``x`` classified as ``y``, in batches of ``batch_size``."""
        correct = torch.zeros((), dtype=torch.int64, device=theta.device)
        for start in range(0, x.shape[0], batch_size):
            xb = x[start : start + batch_size].to(theta.device, non_blocking=True)
            yb = y[start : start + batch_size].to(theta.device, non_blocking=True)
            correct += (self.logits(theta, xb).argmax(dim=1) == yb).sum()
        return float(correct) / max(1, x.shape[0])
