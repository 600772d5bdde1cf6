"""Per-round overhead of the Ray engine over the in-process simulator, and time to first round.

Workload: ``SyntheticWorkload`` (quadratic; worker i sends its momentum of ``w - c_i``), n
workers, d parameters, no attack, so a worker's "gradient" costs a few O(d) passes and what
is left of a Ray round is the engine: ``ray.put`` of the model (once per round), the
actors' zero-copy reads, the d-vectors coming back (written by the actors straight into the
server's shared-memory matrix on this node; ``--no-shared-memory``: returned through the
object store and copied into the (n, d) matrix) and the server's waits. The same workload is
run in one process (the simulator's way: every worker's computation in turn, then the server
step) for the comparison.

Printed per round (medians over the timed rounds, after ``--warmup`` rounds):

* ``sim``: in-process round = all workers' computation + server step;
* ``ray``: Ray engine round (q = n, synchronous);
* ``overhead vs sim`` = ray - sim;
* ``overhead excl. compute`` = ray - server step - (sum of worker computation) / min(n, cores):
  the engine's own cost if the workers' computation ran perfectly in parallel on this machine;
* time to first round: actor start-up (processes, imports, core shipping, warm-up) + round 1.

Usage: ``python benchmarks/ray_engine.py [--workers 10] [--dim 1000000] [--rounds 20]
[--no-shared-memory]``.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time

import numpy as np
import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=10)
    p.add_argument("--dim", type=int, default=1_000_000)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--aggregator", default="average")
    p.add_argument("--object-store-mb", type=int, default=1024)
    p.add_argument(
        "--no-shared-memory",
        action="store_true",
        help="vectors back through the object store (RayOptions.shared_memory=False)",
    )
    args = p.parse_args()

    import ray

    from byzance import aggregators
    from byzance.engines import RayEngine, RayOptions
    from byzance.engines.workload import SyntheticWorkload

    torch.set_num_threads(1)
    n, d = args.workers, args.dim
    agg = aggregators.create(args.aggregator, f=0)

    def workload() -> SyntheticWorkload:
        return SyntheticWorkload(d, n, 0, agg, rounds=10**6, eval_every=10**6, sigma=0.0)

    # ---------------------------------------------------------------- in-process reference
    wl = workload()
    cores = [wl.honest_core(w) for w in range(n)]
    sim_rounds, compute_sums, server_times = [], [], []
    for t in range(1, args.warmup + args.rounds + 1):
        t0 = time.perf_counter()
        params = wl.params.numpy()
        vecs = [c.compute(params, t)[0] for c in cores]
        t1 = time.perf_counter()
        wl.server_step(torch.from_numpy(np.stack(vecs)), t)
        t2 = time.perf_counter()
        if t > args.warmup:
            sim_rounds.append(t2 - t0)
            compute_sums.append(t1 - t0)
            server_times.append(t2 - t1)

    # ---------------------------------------------------------------- Ray engine
    cores_avail = os.cpu_count() or 1
    ray.init(
        num_cpus=n,
        include_dashboard=False,
        logging_level=logging.WARNING,
        object_store_memory=args.object_store_mb * 1024**2,
    )
    shared = not args.no_shared_memory
    engine = RayEngine(workload(), RayOptions(quorum=n, worker_cpus=1.0, shared_memory=shared))
    t0 = time.perf_counter()
    engine.start()
    startup = time.perf_counter() - t0
    ray_rounds: list[float] = []
    try:
        for t in range(1, args.warmup + args.rounds + 1):
            t1 = time.perf_counter()
            engine.run_round(t)
            dt = time.perf_counter() - t1
            if t == 1:
                first = dt
            if t == args.warmup:
                engine.timings.clear()
                ray.get([a.stats.remote(reset=True) for a in engine.actors])
            if t > args.warmup:
                ray_rounds.append(dt)
        stats = ray.get([a.stats.remote() for a in engine.actors])
        shared_rows = len(engine.shared_workers)
        actor_cpu = sum(st["compute_cpu"] for st in stats) / len(ray_rounds)
        parts = {
            k: engine.timings.get(k, 0.0) / len(ray_rounds) * 1e3
            for k in ("put", "collect", "copy", "server")
        }
    finally:
        engine.shutdown()
        ray.shutdown()

    med = statistics.median
    sim, ray_t = med(sim_rounds), med(ray_rounds)
    compute_par = med(compute_sums) / min(n, cores_avail)
    print(
        f"workers={n} d={d} aggregator={args.aggregator} cores={cores_avail} "
        f"timed rounds={args.rounds} (medians); vectors back through "
        f"{'shared memory' if shared_rows else 'the object store'} "
        f"({shared_rows} of {n} workers on the shared matrix)"
    )
    print(
        f"  sim round (in-process)        {sim * 1e3:8.1f} ms  "
        f"(workers' compute {med(compute_sums) * 1e3:.1f} ms, "
        f"server {med(server_times) * 1e3:.1f} ms)"
    )
    print(f"  ray round (q = n)             {ray_t * 1e3:8.1f} ms")
    print(
        "  ray driver side (mean)        "
        + ", ".join(f"{k} {v:.1f} ms" for k, v in parts.items())
        + "  (collect = from put to q vectors in, incl. copy)"
    )
    actor_par = actor_cpu / min(n, cores_avail)
    print(
        f"  overhead excl. actor compute  {(ray_t - med(server_times) - actor_par) * 1e3:8.1f} ms"
        f"  (workers' CPU time in the actors {actor_cpu * 1e3:.1f} ms / min(n, cores))"
    )
    print(f"  overhead vs sim               {(ray_t - sim) * 1e3:8.1f} ms")
    print(
        f"  overhead excl. compute        {(ray_t - med(server_times) - compute_par) * 1e3:8.1f} ms"
        f"  (compute / min(n, cores) = {compute_par * 1e3:.1f} ms)"
    )
    print(
        f"  time to first round           {startup + first:8.2f} s  "
        f"(actor start-up {startup:.2f} s + round 1 {first * 1e3:.0f} ms)"
    )


if __name__ == "__main__":
    main()
