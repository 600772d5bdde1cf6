"""Vectorised worker computation: flat parameters, per-worker sampling, per-worker gradients.

* ``FlatModel`` wraps an ``nn.Module`` so its parameters are one flat (d,) vector: the loss is a
  pure function ``loss(theta, x, y)`` (``torch.func.functional_call`` on views of ``theta``), and
  ``torch.func.vmap(grad(loss))`` over stacked worker batches (k, B, ...) returns the k
  gradients as one (k, d) matrix in a single batched computation (no loop over workers).
  For shared parameters ``SummedGradients`` gets the same (k, d) matrix from one pass over the
  concatenated batch, much cheaper on a CPU (``summed_grad``).
* ``sample_indices`` draws each worker's batch with a stateless counter-based generator: index j
  of worker w at (round t, local step s) is ``hash(seed, w, t, s, j) mod |shard_w|`` (sampling
  with replacement). It depends only on those integers, never on which other workers are
  computed together, so a per-worker (e.g. Ray) engine reproduces the vectorised batches
  exactly, and it runs as a few elementwise integer ops on the whole (k, B) block.
* ``momentum_update``: worker-side momentum (El Mhamdi, Guerraoui, Rouault, ICLR 2021,
  "Distributed momentum for Byzantine-resilient SGD"): ``m <- beta m + (1 - beta) g`` with
  ``m_0 = 0``; the worker sends ``m`` instead of ``g``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from byzance.sim.summed_grad import SummedGradients

_MASK32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """``(x * c) mod 2**32`` for 0 <= x < 2**32 in int64 without overflow."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _MASK32


def hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mixer (the "lowbias32" constants) applied elementwise to int64 input."""
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def counter_random(seed: int, stream: torch.Tensor, *counters: int | torch.Tensor) -> torch.Tensor:
    """Uniform 32-bit integers (int64 tensor) determined by (seed, stream, counters...).

    ``stream`` and tensor counters broadcast; the result has their broadcast shape.
    """
    h = hash32(stream.to(torch.int64) + hash32(torch.tensor(seed & _MASK32)))
    for c in counters:
        c_t = c if isinstance(c, torch.Tensor) else torch.tensor(int(c))
        h = hash32(h ^ hash32(c_t.to(torch.int64, copy=False).to(h.device) + 0x9E3779B9))
    return h


class Shards:
    """Workers' data shards as one padded index matrix, for one-op batch gathering.

    ``index[w, :sizes[w]]`` are the global training indices of worker w's shard.
    """

    def __init__(self, shards: Sequence[torch.Tensor], device: torch.device | str = "cpu"):
        if len(shards) == 0:
            raise ValueError("Shards: need at least one worker shard")
        sizes = [int(s.numel()) for s in shards]
        empty = [w for w, s in enumerate(sizes) if s == 0]
        if empty:
            raise ValueError(
                f"Shards: worker(s) {empty} received no training data (sizes {sizes}); use "
                "fewer workers or a less extreme heterogeneity (e.g. larger alpha)"
            )
        width = max(sizes)
        index = torch.zeros(len(shards), width, dtype=torch.int64)
        for w, s in enumerate(shards):  # setup only, once per run
            index[w, : sizes[w]] = s.to(torch.int64).cpu()
        self.index = index.to(device)
        self.sizes = torch.tensor(sizes, dtype=torch.int64, device=device)

    def __len__(self) -> int:
        return self.index.shape[0]

    def sample_indices(
        self, seed: int, workers: torch.Tensor, round_: int, step: int, batch_size: int
    ) -> torch.Tensor:
        """(k, batch_size) global indices: the batches of ``workers`` at (round, local step)."""
        workers = workers.to(self.index.device)
        local = local_positions(seed, workers, round_, step, batch_size, self.sizes[workers])
        return self.index[workers[:, None], local]


def local_positions(
    seed: int,
    workers: torch.Tensor,
    round_: int,
    step: int,
    batch_size: int,
    shard_sizes: torch.Tensor,
) -> torch.Tensor:
    """(k, batch_size) positions inside each worker's shard, sampled with replacement from
    the counter hash of (seed, worker, round, step, position): the same rows for a worker
    whether it is computed alone (Ray actor) or with all others (simulator)."""
    pos = torch.arange(batch_size, device=workers.device)
    r = counter_random(seed, workers[:, None], round_, step, pos[None, :])
    return r % shard_sizes.to(workers.device)[:, None]


def poison_seed(seed: int, worker: int, round_: int, step: int) -> int:
    """Seed of the generator a data-poisoning worker uses at (round, local step)."""
    return int(counter_random(seed, torch.tensor(worker), round_, step, 7919))


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
            self.module, self.names, self.sizes, self.buffers, self.unflatten, vmapped
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


def momentum_update(m: torch.Tensor, g: torch.Tensor, beta: float) -> torch.Tensor:
    """Worker momentum in place: ``m <- beta m + (1 - beta) g`` (returns ``m``)."""
    if beta == 0.0:
        return m.copy_(g)
    return m.mul_(beta).add_(g, alpha=1.0 - beta)
