"""Time every aggregation rule and pre-aggregator against Average on one random input.

    python benchmarks/aggregators.py                 # n=32, f=7, d=1e6, float32 CPU
    python benchmarks/aggregators.py --n 64 --d 10000000 --rules median,trimmed_mean
    python benchmarks/aggregators.py --device cuda   # the same on a GPU (times synchronised)
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import byzance as bz


def timed(fn, repeats: int, device: torch.device) -> float:
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()  # warm-up (and compilation of the numba kernels)
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=32)
    p.add_argument("--f", type=int, default=7)
    p.add_argument("--d", type=int, default=10**6)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--rules", default="", help="comma-separated names (default: all)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    a = p.parse_args()
    device = torch.device(a.device)
    dtype = getattr(torch, a.dtype)
    x = torch.randn(a.n, a.d, generator=torch.Generator().manual_seed(0), dtype=dtype)
    x = x.to(device)
    agg = bz.aggregators
    names = [c.name for c in (*agg.RULES, *agg.PRE_AGGREGATORS)]
    if a.rules:
        names = [s.strip() for s in a.rules.split(",")]
    base = timed(lambda: agg.Average().aggregate(x), a.repeats, device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"n={a.n} f={a.f} d={a.d} {a.dtype} {where} threads={torch.get_num_threads()}")
    print(f"{'rule':<20}{'ms':>10}{'x average':>11}")
    print(f"{'average':<20}{base * 1e3:>10.1f}{1.0:>11.2f}")
    for name in names:
        if name == "average":
            continue
        try:
            obj = agg.REGISTRY[name] if name in agg.REGISTRY else None
            if obj is None:
                print(f"{name:<20} skipped: unknown name")
                continue
            if isinstance(obj, type) and issubclass(obj, agg.PreAggregator):
                pre = agg.create(f"{name}+average", f=a.f).pre[0]
                pre.check(a.n)
                fn = lambda pre=pre: pre.transform(x)  # noqa: E731
            else:
                rule = agg.create(name, f=a.f)
                rule.check(a.n)
                fn = lambda rule=rule: rule.aggregate(x)  # noqa: E731
            t = timed(fn, a.repeats, device)
        except NotImplementedError:
            print(f"{name:<20} skipped: not implemented yet (stub)")
            continue
        except (ValueError, TypeError) as err:
            print(f"{name:<20} skipped: {err}")
            continue
        print(f"{name:<20}{t * 1e3:>10.1f}{t / base:>11.2f}")


if __name__ == "__main__":
    main()
