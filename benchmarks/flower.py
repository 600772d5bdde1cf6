"""byzance inside Flower: cross-check, aggregation time, and ``--engine flower`` overhead.

    python benchmarks/flower.py crosscheck --trials 50      # agreement with Flower's rules
    python benchmarks/flower.py aggregation --n 20 --d 1000000 --repeats 3
    python benchmarks/flower.py engine --rounds 20          # --engine flower vs --engine sim

``crosscheck``: random Gaussian inputs (n = 11, f = 2, d = 20); for each Flower rule with
matched parameters, how many of the trials give byzance's aggregate (rtol 1e-6).
``aggregation``: one round's ``aggregate_train`` of Flower's Message-API strategies and of
``RobustFedAvg`` with the same rule on the same n random float32 models of d parameters
(replies rebuilt before each call, not timed; median of the repeats); the legacy
functions too (``--legacy``; the legacy Bulyan recomputes all distances at each of its
n - 2f Krum steps). ``engine``: one small config (digits, logreg, 8 honest + 2 ALIE,
trimmed mean) on both engines, wall time and the time per round after start-up.
"""

from __future__ import annotations

import argparse
import gc
import logging
import statistics
import time
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch


def quiet() -> None:
    """Flower's INFO lines (one per aggregation) off; after flwr set up its logger."""
    import flwr  # noqa: F401

    logging.getLogger("flwr").setLevel(logging.WARNING)


class Reply:
    """A reply message as the Message-API strategies read it."""

    def __init__(self, node: int, arrays: dict[str, np.ndarray]) -> None:
        from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

        record = ArrayRecord({k: Array(v) for k, v in arrays.items()})
        metrics = MetricRecord({"num-examples": 1})
        self.content = RecordDict({"arrays": record, "metrics": metrics})
        self.metadata = SimpleNamespace(src_node_id=node)

    def has_error(self) -> bool:
        return False


def replies(x: np.ndarray) -> list[Reply]:
    return [Reply(i + 1, {"w": np.ascontiguousarray(r)}) for i, r in enumerate(x)]


def robust(spec: str, f: int, x: np.ndarray) -> Any:
    """A ``RobustFedAvg`` ready to aggregate (global model: zeros)."""
    from byzance.flower import RobustFedAvg

    s = RobustFedAvg(spec, f=f, fraction_evaluate=0.0)
    s._reference = {"w": np.zeros_like(x[0])}  # what configure_train sets
    return s


def crosscheck(args: argparse.Namespace) -> None:
    from flwr.server.strategy import aggregate as legacy
    from flwr.serverapp.strategy import Bulyan, FedMedian, FedTrimmedAvg, Krum, MultiKrum

    gc.collect = lambda *a: 0  # Flower collects per reply; irrelevant to the values
    n, f, d = 11, 2, 20

    def fl(strategy: Any, x: np.ndarray) -> np.ndarray:
        return strategy.aggregate_train(1, replies(x))[0]["w"].numpy()

    def ours(spec: str, x: np.ndarray, f_: int = f) -> np.ndarray:
        return robust(spec, f_, x).aggregate_train(1, replies(x))[0]["w"].numpy()

    def legacy_bulyan(x: np.ndarray) -> np.ndarray:
        res = [([r.copy()], 1) for r in x]
        return legacy.aggregate_bulyan(
            res, num_malicious=f, aggregation_rule=legacy.aggregate_krum, to_keep=0
        )[0]

    pairs = {
        "Krum (Message API) vs krum": (lambda x: fl(Krum(num_malicious_nodes=f), x),
                                       lambda x: ours("krum", x)),
        "aggregate_krum (legacy) vs krum": (
            lambda x: legacy.aggregate_krum([([r], 1) for r in x], f, 0)[0],
            lambda x: ours("krum", x)),
        "MultiKrum(m=n-f) vs multi_krum": (
            lambda x: fl(MultiKrum(num_malicious_nodes=f, num_nodes_to_select=n - f), x),
            lambda x: ours("multi_krum", x)),
        "FedMedian vs median": (lambda x: fl(FedMedian(), x), lambda x: ours("median", x)),
        "FedTrimmedAvg(beta=0.2) vs trimmed_mean(f=2)": (
            lambda x: fl(FedTrimmedAvg(beta=0.2), x), lambda x: ours("trimmed_mean", x)),
        "Bulyan (Message API) vs bulyan": (lambda x: fl(Bulyan(num_malicious_nodes=f), x),
                                           lambda x: ours("bulyan", x)),
        "aggregate_bulyan (legacy) vs bulyan": (legacy_bulyan, lambda x: ours("bulyan", x)),
        "Bulyan (Message API) vs aggregate_bulyan (legacy)": (
            lambda x: fl(Bulyan(num_malicious_nodes=f), x), legacy_bulyan),
    }  # fmt: skip
    print(f"crosscheck: {args.trials} random inputs, n={n}, f={f}, d={d} (float64)")
    for name, (a, b) in pairs.items():
        agree = 0
        for seed in range(args.trials):
            x = np.random.default_rng(seed).normal(size=(n, d))
            agree += bool(np.allclose(a(x), b(x), rtol=1e-6, atol=1e-9))
        print(f"  {name:52s} agree {agree:3d} / {args.trials}")


def timed(make: Any, call: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats + 1):  # the first: warm-up (numba compilation)
        obj = make()
        start = time.perf_counter()
        call(obj)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def aggregation(args: argparse.Namespace) -> None:
    from flwr.server.strategy import aggregate as legacy
    from flwr.serverapp.strategy import (
        Bulyan,
        FedAvg,
        FedMedian,
        FedTrimmedAvg,
        Krum,
        MultiKrum,
    )

    n, d, f = args.n, args.d, args.f
    x = np.random.default_rng(0).normal(size=(n, d)).astype(np.float32)
    torch.set_num_threads(args.threads)
    print(f"aggregation: n={n}, d={d}, f={f}, float32, {args.threads} torch thread(s), "
          f"median of {args.repeats} (seconds per round)")  # fmt: skip
    flower = {
        "average": FedAvg(), "krum": Krum(num_malicious_nodes=f),
        "multi_krum": MultiKrum(num_malicious_nodes=f, num_nodes_to_select=n - f),
        "median": FedMedian(), "trimmed_mean": FedTrimmedAvg(beta=f / n),
        "bulyan": Bulyan(num_malicious_nodes=f),
    }  # fmt: skip
    for spec, strategy in flower.items():
        t_fl = timed(lambda: replies(x), lambda r, s=strategy: s.aggregate_train(1, r),
                     args.repeats)  # fmt: skip
        ours = robust(spec, 0 if spec == "average" else f, x)
        t_us = timed(lambda: replies(x), lambda r, s=ours: s.aggregate_train(1, r), args.repeats)
        print(f"  {spec:13s} Flower {type(strategy).__name__:14s} {t_fl:8.3f}   "
              f"byzance {t_us:8.3f}   ratio {t_fl / t_us:6.1f}")  # fmt: skip
    if args.legacy:
        results = [([r], 1) for r in x]
        funcs = {
            "krum": lambda: legacy.aggregate_krum(results, f, 0),
            "median": lambda: legacy.aggregate_median(results),
            "trimmed_mean": lambda: legacy.aggregate_trimmed_avg(results, f / n),
            "bulyan": lambda: legacy.aggregate_bulyan(
                list(results), num_malicious=f, aggregation_rule=legacy.aggregate_krum,
                to_keep=0),
        }  # fmt: skip
        for spec, fn in funcs.items():
            t = timed(lambda: None, lambda _o, fn=fn: fn(), 1)
            print(f"  {spec:13s} Flower legacy aggregate_{spec:12s} {t:8.3f}")


def engine(args: argparse.Namespace) -> None:
    from byzance import engines
    from byzance.sim import ExperimentConfig

    cfg = ExperimentConfig.from_dict({
        "dataset": "digits", "model": "logreg", "n_honest": 8, "f": 2, "attack": "alie",
        "aggregator": "trimmed_mean", "batch_size": 32, "rounds": args.rounds,
        "eval_every": 1,
    })  # fmt: skip
    print(f"engine: digits, logreg, 8 honest + 2 ALIE, trimmed_mean, {args.rounds} rounds; "
          "per round: median of the times between consecutive records (one per round), "
          "round 1 (start-up, set-up, compilation) excluded")  # fmt: skip
    out = {}
    for name, opts in (("sim", {}), ("flower", {"ray_cpus": args.ray_cpus})):
        start = time.perf_counter()
        res = engines.get(name).run(cfg, engines.get(name).make_options(opts))
        wall = time.perf_counter() - start
        times = [r["time"] for r in res.history]
        per_round = statistics.median(b - a for a, b in zip(times[:-1], times[1:], strict=True))
        out[name] = (wall, per_round, res.final_accuracy, res.params)
        print(f"  {name:7s} wall {wall:7.2f} s   per round {per_round * 1000:8.2f} ms   "
              f"final accuracy {res.final_accuracy:.4f}")  # fmt: skip
    diff = float((out["flower"][3] - out["sim"][3]).abs().max())
    print(f"  flower / sim per round: {out['flower'][1] / out['sim'][1]:.1f}x; final accuracy "
          f"difference {abs(out['flower'][2] - out['sim'][2]):.4f}; "
          f"max |params difference| {diff:.2e}")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    c = sub.add_parser("crosscheck")
    c.add_argument("--trials", type=int, default=50)
    a = sub.add_parser("aggregation")
    a.add_argument("--n", type=int, default=20)
    a.add_argument("--d", type=int, default=1_000_000)
    a.add_argument("--f", type=int, default=4)
    a.add_argument("--repeats", type=int, default=3)
    a.add_argument("--threads", type=int, default=1)
    a.add_argument("--legacy", action="store_true")
    e = sub.add_parser("engine")
    e.add_argument("--rounds", type=int, default=20)
    e.add_argument("--ray-cpus", type=int, default=2)
    args = p.parse_args()
    quiet()
    {"crosscheck": crosscheck, "aggregation": aggregation, "engine": engine}[args.what](args)


if __name__ == "__main__":
    main()
