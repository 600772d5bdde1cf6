"""Per-worker gradients from one pass over the workers' concatenated batch.

``vmap(grad(loss))`` turns every layer of k workers' computation into a batched (grouped)
operation; on a CPU some of those are much slower than the same layer on the concatenated
batch (a grouped convolution's weight gradient does not use the second core; the batch
dimension is moved around by copies). For models whose parameters all sit in linear and
convolution layers, the per-worker gradients need far less:

* one forward pass of the concatenated batch (k B samples) and one backward pass that computes
  only the gradients of the layers' *outputs* ``dy`` (never a weight gradient), exactly the
  work of a plain training step;
* per layer, worker w's weight gradient from its own rows: for a linear layer
  ``dW_w = dy_w^T x_w`` (one batched matrix product over workers), for a convolution the
  weight gradient of its B samples, and ``db_w = sum of dy_w``.

The worker's loss is the mean cross-entropy over its B samples, so
``sum_w loss_w`` has the right ``dy`` for every sample. This is only valid when the model
treats samples independently (no batch norm, no batch statistics, no module called twice, no
in-place change of a layer's output). ``SummedGradients`` checks that on its first call by
comparing with the ``vmap`` reference (model in eval mode, so dropout cannot differ) and uses
the reference for good if they differ or if a layer is not supported.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import accumulate
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_COUPLING = (nn.modules.batchnorm._BatchNorm,)
# On a CPU, a convolution's per-worker weight gradients are one grouped convolution (k groups)
# from this many input channels up, else a loop of k weight gradients. Measured on 2 cores
# (10 workers x 25 images, 5x5 kernels): 20 -> 50 channels on 12x12 inputs, grouped 7.3 ms,
# loop 11.9 ms; 1 -> 20 channels on 28x28, grouped 6.6 ms, loop 2.7 ms. A fixed rule, not a
# timing, so that the choice (and the round-off) is the same on every run.
_GROUPED_MIN_CHANNELS = 8


def _supported_layers(model: nn.Module, names: list[str]) -> list[nn.Module] | None:
    """The layers holding the trainable parameters ``names``, or None if the summed pass
    cannot compute them (a parameter outside a plain linear/convolution layer, batch norm)."""
    covered: set[str] = set()
    layers = []
    for prefix, m in model.named_modules():
        if isinstance(m, _COUPLING):
            return None
        own = [n for n, p in m.named_parameters(recurse=False) if p.requires_grad]
        if not own:
            continue
        frozen = any(not p.requires_grad for p in m.parameters(recurse=False))
        plain_conv = (
            type(m) in _CONVS
            and m.groups == 1
            and m.padding_mode == "zeros"
            and not isinstance(m.padding, str)
        )
        if not frozen and (type(m) is nn.Linear or plain_conv):
            layers.append(m)
            covered.update(f"{prefix}.{n}" if prefix else n for n in own)
        else:
            return None
    if covered != set(names):
        return None
    return layers


class SummedGradients:
    """``fn(theta, xs, ys) -> (grads (k, d), losses (k,))`` for stacked batches (k, B, ...),
    like ``vmap(grad_and_value(loss), in_dims=(None, 0, 0))`` but from one pass over the
    concatenated batch (see the module docstring). ``method`` says which is in use:
    ``"summed"``, ``"vmap"``, or ``None`` before the first call decides.
    """

    def __init__(
        self,
        module: nn.Module,
        names: list[str],
        sizes: list[int],
        buffers: dict[str, torch.Tensor],
        unflatten: Callable[[torch.Tensor], dict[str, torch.Tensor]],
        reference: Callable,
        loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.module = module
        self.loss = loss
        self.buffers = buffers
        self.unflatten = unflatten
        self.reference = reference
        self.dim = sum(sizes)
        layers = _supported_layers(module, names)
        self.method: str | None = None if layers else "vmap"
        self._layers = layers or []
        offsets = dict(zip(names, accumulate(sizes, initial=0), strict=False))
        by_id = {id(p): n for n, p in module.named_parameters()}
        self._slots = {
            id(m): (
                offsets[by_id[id(m.weight)]],
                None if m.bias is None else offsets[by_id[id(m.bias)]],
            )
            for m in self._layers
        }
        self._seen: list[tuple[nn.Module, torch.Tensor, torch.Tensor]] = []

    def _record(self, m: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        self._seen.append((m, inputs[0], output))

    def __call__(
        self, theta: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.method == "vmap":
            return self.reference(theta, xs, ys)
        if self.method is None:
            self.method = "summed" if self._agrees(theta, xs, ys) else "vmap"
            return self(theta, xs, ys)
        return self._summed(theta, xs, ys)

    def _per_worker(
        self, theta: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The reference, one worker at a time by plain autograd (``loss(theta, x, y)``): the
        same as the vmapped one, without loading torch's functorch machinery (about a second
        of imports in a new process) for a check made once."""
        assert self.loss is not None
        grads, losses = [], []
        for x, y in zip(xs, ys, strict=True):
            th = theta.detach().requires_grad_(True)
            with torch.enable_grad():
                value = self.loss(th, x, y)
                (g,) = torch.autograd.grad(value, th)
            grads.append(g)
            losses.append(value.detach())
        return torch.stack(grads), torch.stack(losses)

    def _agrees(self, theta: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> bool:
        """Does the summed pass reproduce the reference on this input (eval mode)? The
        reference: each worker's gradient by autograd (``loss`` given), else the vmapped one."""
        training = self.module.training
        self.module.eval()
        try:
            if self.loss is not None:
                ref_g, ref_l = self._per_worker(theta, xs, ys)
            else:
                ref_g, ref_l = self.reference(theta, xs, ys)
            try:
                g, loss = self._summed(theta, xs, ys)
            except (RuntimeError, ValueError):  # e.g. a layer called twice
                return False
        finally:
            self.module.train(training)
        scale = float(ref_g.abs().max())
        ok_g = bool(((g - ref_g).abs() <= 1e-3 * scale + 1e-6).all())
        ok_l = bool(((loss - ref_l).abs() <= 1e-4 * ref_l.abs() + 1e-6).all())
        return ok_g and ok_l and scale == scale

    def _summed(
        self, theta: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        k, b = xs.shape[:2]
        params = self.unflatten(theta.detach().requires_grad_())
        self._seen = seen = []
        hooks = [m.register_forward_hook(self._record) for m in self._layers]  # not kept:
        try:  # a module with our hooks could not be copied or pickled on its own
            with torch.enable_grad():
                logits = functional_call(
                    self.module, (params, self.buffers), (xs.reshape(k * b, *xs.shape[2:]),)
                )
                losses = nn.functional.cross_entropy(  # labels (k, B) or soft (k, B, C)
                    logits, ys.reshape(k * b, *ys.shape[2:]), reduction="none"
                ).view(k, b)
                losses = losses.mean(1)
                if len(seen) != len(self._layers) or len({id(m) for m, _, _ in seen}) != len(
                    seen
                ):
                    raise RuntimeError("SummedGradients: a layer was skipped or called twice")
                dys = torch.autograd.grad(losses.sum(), [out for _, _, out in seen])
        finally:
            for h in hooks:
                h.remove()
            self._seen = []
        grads = torch.empty(k, self.dim, dtype=theta.dtype, device=theta.device)
        with torch.no_grad():
            for (m, x, _), dy in zip(seen, dys, strict=True):
                self._layer_grads(m, x, dy, k, grads)
        return grads, losses.detach()

    def _layer_grads(
        self, m: nn.Module, x: torch.Tensor, dy: torch.Tensor, k: int, grads: torch.Tensor
    ) -> None:
        """Write worker w's gradients of layer ``m`` into row w of ``grads``."""
        w_at, b_at = self._slots[id(m)]
        weight = m.weight
        size = weight.numel()
        if isinstance(m, nn.Linear):  # x (N, ..., in), dy (N, ..., out): rows per worker
            dy_w = dy.reshape(k, -1, dy.shape[-1])
            out = grads[:, w_at : w_at + size].view(k, *weight.shape)
            torch.bmm(dy_w.transpose(1, 2), x.reshape(k, -1, x.shape[-1]), out=out)
            if b_at is not None:
                torch.sum(dy_w, 1, out=grads[:, b_at : b_at + dy.shape[-1]])
            return
        conv = (m.stride, m.padding, m.dilation, False, [0] * (x.dim() - 2))
        if x.is_cuda or m.in_channels >= _GROUPED_MIN_CHANNELS:  # one grouped convolution
            grads[:, w_at : w_at + size] = _grouped_weight_grad(x, dy, weight, k, conv)
        else:  # few input channels: oneDNN's grouped kernel is slow there, loop over workers
            for w, (x_w, dy_w) in enumerate(zip(x.chunk(k), dy.chunk(k), strict=True)):
                gw = torch.ops.aten.convolution_backward(
                    dy_w, x_w, weight, None, *conv, 1, [False, True, False]
                )[1]
                grads[w, w_at : w_at + size] = gw.reshape(-1)
        if b_at is not None:
            channels = dy.shape[1]
            grads[:, b_at : b_at + channels] = dy.reshape(k, -1, channels, dy[0, 0].numel()).sum(
                (1, 3)
            )


def _grouped_weight_grad(
    x: torch.Tensor, dy: torch.Tensor, weight: torch.Tensor, k: int, conv: tuple
) -> torch.Tensor:
    """Per-worker weight gradients (k, numel) as one convolution with k groups: the worker
    axis moves into the channels, (k B, C, ...) -> (B, k C, ...)."""
    b = x.shape[0] // k

    def grouped(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(k, b, *t.shape[1:]).transpose(0, 1).reshape(b, -1, *t.shape[2:])

    gw = torch.ops.aten.convolution_backward(
        grouped(dy),
        grouped(x),
        weight.repeat(k, *([1] * (weight.dim() - 1))),
        None,
        *conv,
        k,
        [False, True, False],
    )[1]
    return gw.reshape(k, -1)
