"""Round time of the simulator against the size of a client population (cross-device FL).

Setting: MNIST, ``clients_per_round`` = 20 sampled per round from populations of
``--populations`` (default 100, 1,000, 10,000) clients, 10% of them Byzantine, iid shards,
batch 25, worker momentum 0.9, nnm+trimmed_mean with f = 4 under ALIE; models ``logreg``
(d = 7,850) and ``cnn`` (LeNet, d = 431,080). A round's work should be that of its 20 clients,
whatever the population.

All populations of one model are set up first, then their rounds are run interleaved
(population 1, 2, 3, 1, 2, 3, ...) after ``--warmup`` rounds each, so that the noise of a
shared machine falls on all of them alike; the median round time of each (wall clock, and
the process's CPU time, less sensitive to other processes on a busy machine) is printed with
its ratio to the smallest population, then the mean CPU time of each phase of the round
(``Simulation.timings`` on ``time.process_time``; "gradients" includes the momentum update).
Per client: the shard's index row (``Shards.index``, a
padded int64 matrix: its bytes / N), and the momentum of a client once it has been sampled
(4 d bytes, float32); ``momenta stored`` is how many clients hold one after the run.

Usage: ``python benchmarks/population.py [--rounds 20] [--warmup 3] [--models logreg cnn]
[--populations 100 1000 10000] [--data-dir DIR] [--threads N] [--device cpu]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from byzance.sim import ExperimentConfig
from byzance.sim.population import PopulationSimulation


def build(model: str, n: int, args: argparse.Namespace) -> PopulationSimulation:
    cfg = ExperimentConfig(
        dataset="mnist",
        data_dir=args.data_dir,
        model=model,
        n_clients=n,
        byzantine_clients=0.1,
        clients_per_round=args.per_round,
        f=4,
        aggregator="nnm+trimmed_mean",
        attack="alie",
        batch_size=25,
        momentum=0.9,
        lr=0.05,
        rounds=args.warmup + args.rounds,
        device=args.device,
        min_client_examples=3,
    )
    return PopulationSimulation(cfg)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--per-round", type=int, default=20)
    p.add_argument("--models", nargs="+", default=["logreg", "cnn"])
    p.add_argument("--populations", nargs="+", type=int, default=[100, 1000, 10000])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    for model in args.models:
        sims = {}
        for n in args.populations:
            t = time.perf_counter()
            sims[n] = build(model, n, args)
            print(f"{model}: population {n}: set-up {time.perf_counter() - t:.2f} s")
        for sim in sims.values():
            for r in range(1, args.warmup + 1):
                sim.round(r)
            sim.clock = time.process_time
            sim.timings = dict.fromkeys(sim.timings, 0.0)
        times: dict[int, list[float]] = {n: [] for n in sims}
        cpu: dict[int, list[float]] = {n: [] for n in sims}
        for r in range(args.warmup + 1, args.warmup + args.rounds + 1):
            for n, sim in sims.items():
                if sim.device.type == "cuda":
                    torch.cuda.synchronize(sim.device)
                t, c = time.perf_counter(), time.process_time()
                sim.round(r)
                if sim.device.type == "cuda":
                    torch.cuda.synchronize(sim.device)
                times[n].append(time.perf_counter() - t)
                cpu[n].append(time.process_time() - c)
        base = statistics.median(times[args.populations[0]])
        base_cpu = statistics.median(cpu[args.populations[0]])
        print(
            f"{'model':7} {'clients':>8} {'wall ms':>8} {'ratio':>6} {'cpu ms':>7} {'ratio':>6} "
            f"{'shard B/client':>15} {'momentum B/client':>18} {'momenta stored':>15}"
        )
        for n, sim in sims.items():
            med, med_cpu = statistics.median(times[n]), statistics.median(cpu[n])
            shard = sim.shards.index.numel() * sim.shards.index.element_size() / n
            mom = sim.dim * 4
            print(
                f"{model:7} {n:>8} {med * 1e3:>8.1f} {med / base:>6.2f} {med_cpu * 1e3:>7.1f} "
                f"{med_cpu / base_cpu:>6.2f} {shard:>15.0f} "
                f"{mom:>18} {sim.client_momenta.clients_stored:>15}"
            )
        for n, sim in sims.items():
            phases = ", ".join(
                f"{k.replace('honest_', '')} {v / args.rounds * 1e3:.1f}"
                for k, v in sim.timings.items()
                if k != "evaluation"
            )
            print(f"{model:7} {n:>8} CPU ms per round: {phases}")


if __name__ == "__main__":
    main()
