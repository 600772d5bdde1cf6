"""Zero-order (two-point) gradient estimates with shared-seed directions: FedZero.

Akhavan, Janz, El-Mhamdi, "High-probability analysis of online and federated zero-order
optimisation" (2025), after Akhavan, Chzhen, Pontil, Tsybakov, "A gradient estimator via
l1-randomization for online zero-order optimization with two point feedback" (NeurIPS 2022).
A worker has only values of its loss F_w. At round t it draws K directions zeta_1..zeta_K from
a generator seeded by (seed, worker, round), evaluates its batch loss at ``theta +- h zeta_k``
and sends the K scalars

    s_k = (F_w(theta + h zeta_k) - F_w(theta - h zeta_k)) / (2 h)

(4 bytes each in float32, instead of d floats). The server draws the same directions from the
same seed and rebuilds the estimate exactly:

    g_w = (c / K) sum_k s_k psi(zeta_k)

``directions``:

* ``"l1"`` (FedZero): zeta uniform on the l1 unit sphere {sum |z_i| = 1} (a vector of i.i.d.
  Laplace variables divided by its l1 norm), psi(zeta) = sign(zeta), c = d;
* ``"l2"``: zeta uniform on the l2 unit sphere, psi(zeta) = zeta, c = d (Flaxman et al.
  2005; Shamir 2017);
* ``"gaussian"``: zeta ~ N(0, I_d), psi(zeta) = zeta, c = 1 (Nesterov & Spokoiny 2017).

Each is unbiased for a linear F (E[c psi(zeta) zeta^T] = I: for l1, E|zeta_i| = 1/d and the
signs are independent of the magnitudes) and, for a smooth F, unbiased for the gradient of a
smoothed F_h that tends to F as h -> 0.

Robust aggregation (``robust``), both sound:

* ``"estimates"``: each worker draws its own directions (so the honest estimates average out
  M-fold); the server rebuilds every worker's estimate and aggregates the n vectors with the
  configured rule. A Byzantine worker only chooses its scalars: its vector lies in the span of
  its own (public) psi(zeta_k); the honest estimates are i.i.d. unbiased with a bounded
  variance, which is what the rules' (f, kappa)-robustness needs.
* ``"scalars"``: every worker uses the round's K shared directions; the server aggregates the
  (n, K) matrix of scalars with the configured rule (coordinate-wise rules: per direction,
  a one-dimensional robust estimate of the directional derivative) and rebuilds one estimate.
  The directions are fixed before anyone sends, so a Byzantine scalar moves the estimate only
  along a direction the server chose, by at most what the rule lets through in one dimension.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from byzance.round.sampling import counter_random
from byzance.validation import Integer, OneOf, Real, check_param

DIRECTIONS = ("l1", "l2", "gaussian")
ROBUST = ("estimates", "scalars")
#: the stream id of the round's shared directions (``robust="scalars"``)
SHARED_STREAM = 0x7FFFFFFF
_TAG = 104729  # separates the direction stream from batches and poisoning


def direction_seed(seed: int, worker: int, round_: int) -> int:
    """Seed of worker ``worker``'s directions at round ``round_`` (``SHARED_STREAM``: the
    round's shared directions): what the worker and the server both derive, never sent."""
    return int(counter_random(seed, torch.tensor(worker), round_, _TAG))


def sample_directions(
    kind: str, k: int, d: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``(zeta (k, d), psi (k, d), c)`` drawn on the CPU in float64 (the same on every device)."""
    if kind == "l1":
        magnitude = torch.empty(k, d, dtype=torch.float64).exponential_(generator=generator)
        signs = torch.randint(0, 2, (k, d), generator=generator, dtype=torch.float64) * 2 - 1
        zeta = signs * magnitude / magnitude.sum(dim=1, keepdim=True)
        return zeta, signs, float(d)
    z = torch.randn(k, d, generator=generator, dtype=torch.float64)
    if kind == "l2":
        z = z / z.norm(dim=1, keepdim=True)
        return z, z, float(d)
    if kind == "gaussian":
        return z, z, 1.0
    raise ValueError(
        f"sample_directions: kind: expected one of {', '.join(DIRECTIONS)}, got {kind!r}"
    )


@dataclass
class Directions:
    """The directions of a set of workers at one round: ``zeta`` (k, K, d) where the losses
    are evaluated, ``psi`` (k, K, d) what the scalars multiply, and the constant ``c``."""

    zeta: torch.Tensor
    psi: torch.Tensor
    c: float


class ZeroOrder:
    """The two-point estimator of FedZero (see the module docstring).

    ``directions``: ``"l1"`` (default), ``"l2"`` or ``"gaussian"``; ``radius``: the smoothing
    radius h > 0; ``queries``: K directions per worker and round (K scalars sent);
    ``robust``: ``"estimates"`` or ``"scalars"`` (what the server's rule aggregates).
    """

    def __init__(
        self,
        directions: str = "l1",
        radius: float = 1e-2,
        queries: int = 1,
        robust: str = "estimates",
    ) -> None:
        self.directions = check_param(self, "directions", directions, OneOf(*DIRECTIONS))
        self.radius = check_param(self, "radius", radius, Real(low=0, closed="neither"))
        self.queries = check_param(self, "queries", queries, Integer(low=1))
        self.robust = check_param(self, "robust", robust, OneOf(*ROBUST))
        self.last_scalars: torch.Tensor | None = None

    @property
    def shared(self) -> bool:
        """Do all workers use the round's shared directions (``robust="scalars"``)?"""
        return self.robust == "scalars"

    def bytes_sent(self, dim: int, itemsize: int = 4) -> dict[str, int]:
        """Bytes a worker sends per round: ``queries`` scalars, against ``dim`` for a gradient."""
        return {"zero_order": self.queries * itemsize, "backprop": dim * itemsize}

    # ------------------------------------------------------------------ directions
    def draw(
        self,
        seed: int,
        workers: torch.Tensor | list[int],
        round_: int,
        dim: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> Directions:
        """The directions of ``workers`` at ``round_``: each from its own generator seeded by
        ``direction_seed(seed, w, round_)``, or the round's shared ones for every worker."""
        ids = [int(w) for w in workers]
        streams = [SHARED_STREAM] if self.shared else ids
        zetas, psis, c = [], [], 1.0
        for stream in streams:  # one generator per worker: any subset gives the same rows
            gen = torch.Generator().manual_seed(direction_seed(seed, stream, round_))
            zeta, psi, c = sample_directions(self.directions, self.queries, dim, gen)
            zetas.append(zeta)
            psis.append(psi)
        zeta = torch.stack(zetas).to(device=device, dtype=dtype)
        psi = torch.stack(psis).to(device=device, dtype=dtype)
        if self.shared:
            zeta, psi = zeta.expand(len(ids), -1, -1), psi.expand(len(ids), -1, -1)
        return Directions(zeta, psi, c)

    # ------------------------------------------------------------------ worker side
    def scalars(
        self, loss: Any, params: torch.Tensor, dirs: Directions, xs: torch.Tensor, ys: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The (k, K) scalars ``(F_w(theta + h zeta) - F_w(theta - h zeta)) / (2h)`` of k
        workers, F_w the mean loss ``loss(theta, x, y)`` on worker w's batch (xs[w], ys[w]),
        and the (k,) mean of the 2K loss values (an estimate of F_w(theta) to O(h^2))."""
        k, K, d = dirs.zeta.shape
        h = self.radius
        points = torch.cat([params + h * dirs.zeta, params - h * dirs.zeta], dim=1)  # (k,2K,d)
        with torch.no_grad():
            values = torch.func.vmap(
                torch.func.vmap(loss, in_dims=(0, None, None)), in_dims=(0, 0, 0)
            )(points, xs, ys)  # (k, 2K)
        plus, minus = values[:, :K], values[:, K:]
        return (plus - minus) / (2 * h), values.mean(dim=1)

    # ------------------------------------------------------------------ server side
    def rebuild(self, s: torch.Tensor, dirs: Directions) -> torch.Tensor:
        """The (k, d) estimates ``(c / K) sum_q s[w, q] psi[w, q]`` from the (k, K) scalars."""
        K = dirs.psi.shape[1]
        return torch.einsum("wq,wqd->wd", s.to(dirs.psi.dtype), dirs.psi).mul_(dirs.c / K)

    def realize(self, target: torch.Tensor, dirs: Directions) -> torch.Tensor:
        """The (f, K) scalars whose rebuilt estimates are closest (least squares) to the
        (f, d) ``target`` vectors: what Byzantine workers that only send scalars can make of
        a vector attack (``robust="estimates"``)."""
        K = dirs.psi.shape[1]
        basis = dirs.psi.double() * (dirs.c / K)  # (f, K, d): estimate = s @ basis
        gram = basis @ basis.transpose(1, 2)  # (f, K, K)
        rhs = (basis @ target.double()[:, :, None])[:, :, 0]  # (f, K)
        s = torch.linalg.solve(gram, rhs)
        return s.to(target.dtype)

    def estimate(
        self,
        loss: Any,
        params: torch.Tensor,
        workers: torch.Tensor,
        round_: int,
        seed: int,
        xs: torch.Tensor,
        ys: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Worker step in one call: ``(estimates (k, d), losses (k,))`` of ``workers`` on
        their batches (what ``Workers.gradients`` returns in place of gradients)."""
        dirs = self.draw(seed, workers, round_, params.numel(), dtype=params.dtype,
                         device=params.device)  # fmt: skip
        s, losses = self.scalars(loss, params, dirs, xs, ys)
        self.last_scalars = s  # what these workers sent (the simulator's server reads them)
        return self.rebuild(s, dirs), losses

    def __repr__(self) -> str:
        return (
            f"ZeroOrder(directions={self.directions!r}, radius={self.radius!r}, "
            f"queries={self.queries!r}, robust={self.robust!r})"
        )


ESTIMATORS = ("backprop", "zero_order")


def build_estimator(name: str, params: dict[str, Any]) -> ZeroOrder | None:
    """``None`` for ``"backprop"`` (which takes no parameters), else a ``ZeroOrder``."""
    if name == "backprop":
        if params:
            raise ValueError(
                "ExperimentConfig.estimator_params: must be empty with "
                f"gradient_estimator='backprop', got {params!r}"
            )
        return None
    try:
        return ZeroOrder(**params)
    except TypeError as exc:
        if isinstance(exc, ValueError):  # a ParameterTypeError: a parameter of a wrong type
            raise ValueError(f"ExperimentConfig.estimator_params: {exc}") from exc
        raise ValueError(
            f"ExperimentConfig.estimator_params: {exc}; zero_order takes directions, radius, "
            "queries, robust"
        ) from exc
    except ValueError as exc:
        raise ValueError(f"ExperimentConfig.estimator_params: {exc}") from exc


def check_config(config: Any) -> ZeroOrder | None:
    """The conditions FedZero puts on the rest of the config, before any work."""
    est = build_estimator(config.gradient_estimator, dict(config.estimator_params))
    if est is None:
        return None
    if config.local_steps != 1:
        raise ValueError(
            "ExperimentConfig.local_steps: gradient_estimator='zero_order' sends one round of "
            f"scalars per step, so it requires local_steps=1, got {config.local_steps}"
        )
    if est.shared and config.momentum != 0:
        raise ValueError(
            "ExperimentConfig.momentum: estimator_params robust='scalars' aggregates scalars "
            "along directions that change every round, so worker momentum is not defined "
            f"there; use momentum=0 (server_momentum acts on the rebuilt step), got "
            f"{config.momentum}"
        )
    if config.protocol != "server":
        raise ValueError(
            "ExperimentConfig.protocol: gradient_estimator='zero_order' runs under the trusted "
            f"server (protocol='server'), got protocol={config.protocol!r}"
        )
    if getattr(config, "n_clients", None) is not None:
        raise ValueError(
            "ExperimentConfig.n_clients: gradient_estimator='zero_order' does not run with a "
            "sampled client population yet; leave n_clients unset"
        )
    if config.attack.split("(", 1)[0].strip().lower() == "gradient_inversion":
        raise ValueError(
            "ExperimentConfig.attack: 'gradient_inversion' matches gradients computed by "
            "backpropagation; it cannot run with gradient_estimator='zero_order'"
        )
    return est
