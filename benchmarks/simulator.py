"""Time per round of the vectorised simulator against the physical floor of the same model.

Setting (the headline): Fashion-MNIST, model "cnn" (conv5x5 20 - pool - conv5x5 50 - pool -
fc 500 - fc 10, d = 431,080), 10 honest workers + f = 2 Byzantine, batch 25 per worker,
worker momentum 0.9, aggregator nnm+trimmed_mean under optimal_alie.

Printed, all measured in the same run (ratios are what matters on a shared machine):

* the floor: one forward/backward pass of the same model (plain autograd, no simulator) on the
  concatenated batch of all honest workers (10 x 25 = 250 images); median per pass, measured
  before and after the simulator and pooled;
* the simulator's time per round after ``--warmup`` rounds, split into honest gradients
  (batch gathering, vmapped per-worker gradients, momentum), attack, aggregation, update and
  evaluation of the full test set every ``--eval-every`` rounds (amortised per round);
* with ``--loop``: the honest-gradient phase done the usual way, a Python loop over workers
  with one forward/backward each, on the same batches;
* with ``--vmap``: the per-worker gradients by ``vmap(grad(...))`` over the stacked batches
  (the reference that the simulator's one pass over the concatenated batch replaces).

Usage: ``python benchmarks/simulator.py [--rounds 30] [--data-dir DIR] [--device cpu]
[--loop] [--threads N] [--attack optimal_alie] [--aggregator nnm+trimmed_mean]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from byzance.sim import ExperimentConfig, Simulation

clock = time.perf_counter


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def floor_pass_seconds(sim: Simulation, reps: int) -> list[float]:
    """Times of one plain forward/backward of the model on all honest workers' batches."""
    module = sim.flat.module
    sim.flat.load_into_module(sim.params)
    ids = torch.arange(sim.h, device=sim.device)
    idx = sim.shards.sample_indices(sim.config.seed, ids, 1, 0, sim.config.batch_size)
    x = sim.x_train[idx.reshape(-1)]
    y = sim.y_train[idx.reshape(-1)]
    times = []
    for i in range(reps + 2):
        _sync(sim.device)
        t = clock()
        module.zero_grad(set_to_none=False)
        torch.nn.functional.cross_entropy(module(x), y).backward()
        _sync(sim.device)
        if i >= 2:  # first two passes warm up allocators and kernels
            times.append(clock() - t)
    return times


def loop_gradients(sim: Simulation, params: torch.Tensor, round_: int) -> torch.Tensor:
    """Honest gradients the usual way: one forward/backward per worker in a Python loop."""
    module = sim.flat.module
    sim.flat.load_into_module(params)
    out = torch.empty(sim.h, sim.dim, device=sim.device)
    for w in range(sim.h):
        idx = sim.shards.sample_indices(
            sim.config.seed,
            torch.tensor([w], device=sim.device),
            round_,
            0,
            sim.config.batch_size,
        )[0]
        module.zero_grad(set_to_none=False)
        loss = torch.nn.functional.cross_entropy(module(sim.x_train[idx]), sim.y_train[idx])
        loss.backward()
        torch.cat([p.grad.reshape(-1) for p in module.parameters()], out=out[w])
    return out


def vmap_gradients(sim: Simulation, params: torch.Tensor, round_: int) -> torch.Tensor:
    """Honest gradients by the vmapped reference on this round's batches."""
    xs, ys = sim._batch(torch.arange(sim.h, device=sim.device), round_, 0)
    return sim._grad_shared.reference(params, xs, ys)[0]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=30, help="timed rounds (default 30)")
    p.add_argument("--warmup", type=int, default=3, help="untimed rounds first (default 3)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--data-dir", default="../shared/datasets")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--model", default="cnn")
    p.add_argument("--aggregator", default="nnm+trimmed_mean")
    p.add_argument("--attack", default="optimal_alie")
    p.add_argument("--n-honest", type=int, default=10)
    p.add_argument("--f", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=25)
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--floor-reps", type=int, default=10)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: default)")
    p.add_argument("--loop", action="store_true", help="also time a per-worker Python loop")
    p.add_argument("--vmap", action="store_true", help="also time the vmapped gradients")
    p.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall time, or CPU time of this process (robust to other processes' load on a "
        "shared machine, meaningful with --threads 1 and CPU only)",
    )
    args = p.parse_args(argv)
    global clock
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.threads:
        torch.set_num_threads(args.threads)

    total = args.warmup + args.rounds
    config = ExperimentConfig(
        dataset=args.dataset,
        data_dir=args.data_dir,
        model=args.model,
        n_honest=args.n_honest,
        f=args.f,
        aggregator=args.aggregator,
        attack=args.attack,
        batch_size=args.batch_size,
        momentum=0.9,
        lr=0.05,
        rounds=total,
        eval_every=args.eval_every,
        device=args.device,
    )
    t = clock()
    sim = Simulation(config)
    sim.clock = clock
    setup = clock() - t
    print(
        f"{config.dataset} / {config.model} (d={sim.dim:,}), {config.n_honest} honest "
        f"+ f={config.f}, "
        f"batch {config.batch_size}, {config.aggregator} under {config.attack}, device "
        f"{config.device}, {torch.get_num_threads()} threads, {args.clock} clock; setup "
        f"{setup:.2f}s"
    )
    baselines = {"loop": loop_gradients} if args.loop else {}
    if args.vmap:
        baselines["vmap"] = vmap_gradients

    # Each timed round is preceded by one floor pass (and, with --loop / --vmap, one gradient
    # computation of each baseline), so that all see the same machine load: on a shared CPU,
    # compare the medians measured in the same run.
    floor = floor_pass_seconds(sim, 3)
    for r in range(1, args.warmup + 1):
        sim.round(r)
    phases = ("honest_gradients", "attack", "aggregation", "update")
    per_phase: dict[str, list[float]] = {k: [] for k in phases}
    walls: list[float] = []
    baseline_times: dict[str, list[float]] = {k: [] for k in baselines}
    eval_total, evals = 0.0, 0
    for r in range(args.warmup + 1, total + 1):
        floor += floor_pass_seconds(sim, 1)
        for name, fn in baselines.items():
            t = clock()
            fn(sim, sim.params, r)
            _sync(sim.device)
            baseline_times[name].append(clock() - t)
        before = dict(sim.timings)
        t = clock()
        sim.round(r)
        _sync(sim.device)
        walls.append(clock() - t)
        for k in phases:
            per_phase[k].append(sim.timings[k] - before[k])
        if r % args.eval_every == 0:
            t = clock()
            sim.evaluate()
            eval_total += clock() - t
            evals += 1
    if evals == 0:  # fewer timed rounds than eval_every: time one evaluation anyway
        t = clock()
        sim.evaluate()
        eval_total, evals = clock() - t, 1
    med = statistics.median
    floor_s = med(floor)
    print(
        f"\nphysical floor: fwd/bwd of {config.model} on {sim.h * config.batch_size} images: "
        f"{floor_s * 1e3:8.1f} ms/pass (median of {len(floor)}; min {min(floor) * 1e3:.1f})"
    )
    print(f"\nsimulator, median per round over {args.rounds} rounds:")
    for k in phases:
        v = med(per_phase[k])
        print(f"  {k:<17} {v * 1e3:8.1f} ms   {v / floor_s:5.2f} x floor")
    round_s = med(walls)
    print(f"  {'round (wall)':<17} {round_s * 1e3:8.1f} ms   {round_s / floor_s:5.2f} x floor")
    ev = eval_total / max(1, evals) / args.eval_every
    print(
        f"  {'evaluation':<17} {ev * 1e3:8.1f} ms   {ev / floor_s:5.2f} x floor  (full test set "
        f"every {args.eval_every} rounds: mean of {evals} evaluations / {args.eval_every})"
    )
    both = round_s + ev
    print(f"  {'round + eval':<17} {both * 1e3:8.1f} ms   {both / floor_s:5.2f} x floor")
    vec_s = med(per_phase["honest_gradients"])
    print(f"\nhonest gradients ({sim._grad_shared.method}): {vec_s * 1e3:.1f} ms/round")
    labels = {"loop": "per-worker Python loop", "vmap": "vmap(grad) over workers"}
    for name, times in baseline_times.items():
        base_s = med(times)
        print(
            f"  {labels[name]:<24} {base_s * 1e3:8.1f} ms/round ({base_s / floor_s:.2f} x "
            f"floor; only the gradients) -> {base_s / vec_s:.2f}x the simulator's phase"
        )


if __name__ == "__main__":
    main()
