"""FedZero against first-order SGD on convex problems: suboptimality, regret, bytes sent.

Two problems, each run side by side in one process (``python benchmarks/zero_order.py``;
``--quick`` for fewer rounds):

1. synthetic least squares, F(theta) = (1/2N) ||A theta - b||^2 (d = 50, N = 2000, M = 10
   workers with iid shards, batches of 25): first-order minibatch SGD against the two-point
   estimator with l1 / l2 / Gaussian directions (K = 1 and K = 10 per worker), step
   ``eta_t = eta / sqrt(t)``; the zero-order step is the first-order one times
   ``min(1, M K / d)`` (the variance of the averaged estimate grows like d / (M K));
2. logistic regression on the sklearn digits (d = 650) through the simulator
   (``gradient_estimator = "zero_order"``), no attack and under attack (ALIE with
   ``nnm+trimmed_mean`` on rebuilt estimates; sign flipping with the median on per-direction
   scalars); suboptimality of the regularised training loss against its minimum (L-BFGS).

Printed: final suboptimality F(theta_T) - F*, average regret (1/T) sum_t (F(theta_t) - F*)
(least squares) and bytes sent per worker per round.
"""

from __future__ import annotations

import argparse
import time

import torch

from byzance.round.zero_order import ZeroOrder
from byzance.sim.config import ExperimentConfig
from byzance.sim.simulation import Simulation


def least_squares(rounds: int, seed: int = 0) -> None:
    d, n, m, b = 50, 2000, 10, 25
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n, d, generator=gen, dtype=torch.float64)
    truth = torch.randn(d, generator=gen, dtype=torch.float64)
    y = a @ truth + 0.5 * torch.randn(n, generator=gen, dtype=torch.float64)
    best = torch.linalg.lstsq(a, y[:, None]).solution[:, 0]

    def full(theta: torch.Tensor) -> float:
        return float(0.5 * ((a @ theta - y) ** 2).mean())

    f_star = full(best)
    lipschitz = float(torch.linalg.eigvalsh(a.T @ a / n).max())
    shards = torch.randperm(n, generator=gen).view(m, -1)

    def loss(theta, x, t):
        return 0.5 * ((x @ theta - t) ** 2).mean()

    methods: list[tuple[str, ZeroOrder | None]] = [("first-order SGD", None)]
    for kind in ("l1", "l2", "gaussian"):
        for k in (1, 10):
            methods.append((f"zero-order {kind} K={k}", ZeroOrder(kind, radius=1e-3, queries=k)))
    print(
        f"least squares: d={d}, N={n}, M={m} workers, batch {b}, T={rounds} rounds, F*={f_star:.4f}"
    )
    print(f"{'method':24s} {'F(T)-F*':>10s} {'avg regret':>11s} {'bytes/worker/round':>19s}")
    workers = torch.arange(m)
    for name, est in methods:
        theta = torch.zeros(d, dtype=torch.float64)
        scale = 1.0 if est is None else min(1.0, m * est.queries / d)
        regret = 0.0
        for t in range(1, rounds + 1):
            pick = torch.randint(0, shards.shape[1], (m, b), generator=gen)
            idx = shards.gather(1, pick)
            xs, ts = a[idx], y[idx]
            if est is None:
                g = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(theta, xs, ts)
            else:
                g, _ = est.estimate(loss, theta, workers, t, seed, xs, ts)
            regret += full(theta) - f_star
            theta = theta - scale / (lipschitz * t**0.5) * g.mean(0)
        sent = 8 * d if est is None else est.bytes_sent(d, itemsize=8)["zero_order"]
        print(f"{name:24s} {full(theta) - f_star:10.4g} {regret / rounds:11.4g} {sent:19d}")


def _objective(sim: Simulation, params: torch.Tensor) -> float:
    """Regularised training loss: mean cross-entropy + (wd / 2) ||theta||^2 (the server adds
    ``wd * theta`` to the aggregate, the gradient of that term)."""
    wd = sim.config.weight_decay
    with torch.no_grad():
        ce = sim.flat.loss(params, sim.x_train, sim.y_train)
    return float(ce) + 0.5 * wd * float(params.double().square().sum())


def _minimum(sim: Simulation) -> float:
    theta = sim.params0.clone().double().requires_grad_(True)
    x, y, wd = sim.x_train.double(), sim.y_train, sim.config.weight_decay
    module = sim.flat.module.double()
    opt = torch.optim.LBFGS(
        [theta], lr=1, max_iter=500, tolerance_grad=1e-10, line_search_fn="strong_wolfe"
    )

    def closure():
        opt.zero_grad()
        value = (
            torch.nn.functional.cross_entropy(
                torch.func.functional_call(module, sim.flat.unflatten(theta), (x,)), y
            )
            + 0.5 * wd * theta.square().sum()
        )
        value.backward()
        return value

    opt.step(closure)
    sim.flat.module.float()
    return float(closure().detach())


def digits(rounds: int) -> None:
    runs = [
        ("backprop, no attack", {"attack": "none"}),
        ("zero-order l1 K=1, no attack", {"attack": "none", "gradient_estimator": "zero_order"}),
    ]
    for kind in ("l1", "l2", "gaussian"):
        runs.append(
            (
                f"zero-order {kind} K=20, no attack",
                {
                    "attack": "none",
                    "gradient_estimator": "zero_order",
                    "estimator_params": {"directions": kind, "queries": 20},
                },
            )
        )
    runs += [
        ("backprop, ALIE, nnm+tm", {}),
        (
            "zero-order K=20 estimates, ALIE, nnm+tm",
            {"gradient_estimator": "zero_order", "estimator_params": {"queries": 20}},
        ),
        (
            "backprop, sign flip, median",
            {"attack": "sign_flipping", "aggregator": "median", "momentum": 0.0},
        ),
        (
            "zero-order K=20 scalars, sign flip, median",
            {
                "attack": "sign_flipping",
                "aggregator": "median",
                "momentum": 0.0,
                "gradient_estimator": "zero_order",
                "estimator_params": {"queries": 20, "robust": "scalars"},
            },
        ),
    ]
    base = ExperimentConfig(rounds=rounds, eval_every=rounds)
    f_star = _minimum(Simulation(base.replace(attack="none")))
    print(
        f"\nlogistic regression on digits: d=650, 10 honest workers (+2 Byzantine), "
        f"T={rounds} rounds, lr 0.1, momentum 0.9 unless said; F*={f_star:.4f}"
    )
    print(f"{'run':44s} {'F(T)-F*':>9s} {'test acc':>9s} {'bytes/worker/round':>19s} {'s':>6s}")
    for name, kw in runs:
        sim = Simulation(base.replace(**kw))
        start = time.process_time()
        result = sim.run()
        spent = time.process_time() - start
        est = sim.estimator
        sent = 4 * sim.dim if est is None else est.bytes_sent(sim.dim)["zero_order"]
        acc = result.history[-1]["test_accuracy"]
        print(
            f"{name:44s} {_objective(sim, sim.params) - f_star:9.4f} {acc:9.3f} "
            f"{sent:19d} {spent:6.1f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    args = parser.parse_args()
    torch.set_num_threads(1)
    least_squares(500 if args.quick else 2000)
    digits(100 if args.quick else 300)


if __name__ == "__main__":
    main()
