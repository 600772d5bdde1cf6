"""Crash tolerance of the MNIST CNN trained on Fashion-MNIST, with and without the
fault-tolerance regulariser (byzance.analysis.crash_regularizer).

    python benchmarks/crash.py                           # lam 0 and 0.3, layer 3, 800 steps
    python benchmarks/crash.py --lam 0,0.1,1 --steps 400 --figures docs/img

Both models start from the same initial weights (``byzance.models.cnn``, seed 0) and see the
same batches (SGD with momentum 0.9, lr 0.05, batch 64, one process); the regularised one
minimises ``cross-entropy + lam * R`` with R the first-order expected squared crash error of
the neurons of ``--layer`` at ``--reg-p``. Then each model's neurons of ``--layer`` crash with
probability p on the first ``--inputs`` test images (``--trials`` draws per image): mean and
rms output error, accuracy drop, beside the bounds (printed for the unregularised model).
By default the regulariser is trained here in a plain loop; ``--via-run`` instead trains
through the training option (docs/analysis-crash.md) and measures with the CLI, one
``byzance run ... --set crash_regularizer={weight=lam,layer=L,p=P} --save-model`` and one
``byzance crash MODEL --json`` per lam (the run's other flags: ``--run-args``)::

    python benchmarks/crash.py --via-run --lam 0,0.3,1 --layer 1 --p 0.05,0.1,0.2
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time

import torch
from torch import nn

from byzance.analysis.crash import crash
from byzance.analysis.crash_plot import plot_crash
from byzance.analysis.crash_regularizer import crash_penalty
from byzance.datasets import load_dataset
from byzance.models import cnn


def train(data, lam: float, layer: int, reg_p: float, steps: int, seed: int) -> tuple:
    torch.manual_seed(seed)
    model = cnn((1, 28, 28), 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(0, data.x_train.shape[0], (64,), generator=gen)
        x, y = data.x_train[idx], data.y_train[idx]
        loss = nn.functional.cross_entropy(model(x), y)
        if lam > 0:
            loss = loss + lam * crash_penalty(model, x, layer=layer, p=reg_p)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lam", default="0,0.3", help="regulariser weights (comma-separated)")
    ap.add_argument("--layer", type=int, default=3, help="activation whose neurons crash")
    ap.add_argument("--reg-p", type=float, default=0.1, help="p of the regulariser")
    ap.add_argument("--p", default="0.01,0.02,0.05,0.1,0.2", help="crash probabilities")
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--inputs", type=int, default=500)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--figures", default=None, help="folder for the figures (none: no figure)")
    ap.add_argument("--via-run", action="store_true",
                    help="train with byzance run --set crash_regularizer=..., measure with "
                    "byzance crash (the run's flags: --run-args)")
    ap.add_argument("--run-args", default=VIA_RUN_ARGS, help="byzance run flags (--via-run)")
    args = ap.parse_args()
    if args.via_run:
        return via_run(args)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    if args.figures:
        os.makedirs(args.figures, exist_ok=True)
    data = load_dataset("fashion-mnist")
    x, y = data.x_test[: args.inputs], data.y_test[: args.inputs]
    ps = [float(p) for p in args.p.split(",")]
    curves = {}
    for lam in [float(v) for v in args.lam.split(",")]:
        model, seconds = train(data, lam, args.layer, args.reg_p, args.steps, args.seed)
        model.eval()
        with torch.no_grad():
            full = float((model(data.x_test).argmax(1) == data.y_test).double().mean())
        res = [crash(model, x, layer=args.layer, p=p, trials=args.trials, seed=args.seed,
                     labels=y) for p in ps]  # fmt: skip
        curves[lam] = res
        print(f"\nlam={lam:g}: {args.steps} steps in {seconds:.0f}s, test accuracy {full:.4f}")
        print("   p    mean err   rms err  1st-order rms   FEP bound  norms bound  acc. drop")
        for r in res:
            print(f"{r.p:5g}  {r.mean:9.4f}  {r.rms:8.4f}  {r.taylor_rms:13.4f}  {r.fep:10.3g}"
                  f"  {r.product_of_norms:11.4f}  {r.accuracy_drop:9.4f}")  # fmt: skip
        if args.figures:
            path = os.path.join(args.figures, f"crash_cnn_fmnist_lam{lam:g}.png")
            plot_crash(res, path, title=f"Fashion-MNIST CNN, FC neurons crash (lam={lam:g})")
            print(f"figure: {path}")
    if len(curves) > 1:
        base = curves[min(curves)]
        print("\nratio of mean crash error (regularised / plain), per p:")
        for lam, res in curves.items():
            if lam == min(curves):
                continue
            pairs = zip(res, base, strict=True)
            ratios = ", ".join(f"p={a.p:g}: {a.mean / b.mean:.2f}" for a, b in pairs)
            print(f"  lam={lam:g}: {ratios}")
        if args.figures:
            _compare(curves, os.path.join(args.figures, "crash_regularizer.png"))


VIA_RUN_ARGS = (
    "--dataset digits --model mlp --n-honest 10 --f 0 --attack none --aggregator average "
    "--rounds 200 --eval-every 200"
)
CLI = [sys.executable, "-c", "import sys; from byzance.cli import main; sys.exit(main())"]


def via_run(args) -> None:
    """The comparison through the CLI: ``byzance run`` (with the training option) then
    ``byzance crash`` on the saved model, per lam; prints the same table and ratios."""
    curves, scales, tmp = {}, {}, tempfile.mkdtemp(prefix="crash_bench_")
    for lam in [float(v) for v in args.lam.split(",")]:
        path = os.path.join(tmp, f"lam{lam:g}.pt")
        run = [*CLI, "run", *shlex.split(args.run_args), "--seed", str(args.seed), "--quiet",
               "--no-reference", "--db", os.path.join(tmp, "runs.db"), "--save-model", path]
        if lam > 0:
            run += ["--set", f"crash_regularizer={{weight={lam:g},layer={args.layer},"
                    f"p={args.reg_p:g}}}"]  # fmt: skip
        print("$ byzance", shlex.join(run[3:]), flush=True)
        out = subprocess.run(run, check=True, capture_output=True, text=True).stdout.splitlines()
        table = out[next(i for i, line in enumerate(out) if line.startswith("rule")) :][:3]
        print("\n".join(line for line in table if line.strip()))  # the run's own time
        measure = [*CLI, "crash", path, "--layer", str(args.layer), "--p", args.p, "--json",
                   "--no-plot", "--inputs", str(args.inputs), "--trials", str(args.trials),
                   "--seed", str(args.seed)]  # fmt: skip
        print("$ byzance", shlex.join(measure[3:]), flush=True)
        res = json.loads(subprocess.run(measure, check=True, capture_output=True,
                                        text=True).stdout)  # fmt: skip
        curves[lam], scale = res, _logit_scale(path, args.inputs)
        scales[lam] = scale
        print(f"lam={lam:g}: clean accuracy {res[0]['accuracy']:.4f} ({res[0]['trials']} draws "
              f"per input); mean ||F(x)|| {scale[0]:.4f}, mean top-2 logit margin "
              f"{scale[1]:.4f}")  # fmt: skip
        print("   p    mean err   rms err  1st-order rms  acc. drop")
        for r in res:
            print(f"{r['p']:5g}  {r['mean']:9.4f}  {r['rms']:8.4f}  {r['taylor_rms']:13.4f}"
                  f"  {r['accuracy_drop']:9.4f}")  # fmt: skip
    base = curves[min(curves)]
    print("\nratio of mean crash error (regularised / plain), per p:")
    for lam, res in curves.items():
        if lam != min(curves):
            ratios = ", ".join(f"p={a['p']:g}: {a['mean'] / b['mean']:.2f}"
                               for a, b in zip(res, base, strict=True))  # fmt: skip
            print(f"  lam={lam:g}: {ratios}; mean ||F(x)|| ratio "
                  f"{scales[lam][0] / scales[min(curves)][0]:.2f}, margin ratio "
                  f"{scales[lam][1] / scales[min(curves)][1]:.2f}")  # fmt: skip


def _logit_scale(path: str, inputs: int) -> tuple[float, float]:
    """Mean logit norm and mean top-2 logit margin of a saved model on the inputs measured:
    the crash error is in logit units, so a smaller logit scale alone lowers it."""
    from byzance.analysis.crash_io import load_model

    model, cfg = load_model(path)
    x = load_dataset(cfg["dataset"], data_dir=cfg.get("data_dir")).x_test[:inputs]
    with torch.no_grad():
        out = model(x)
    top = out.topk(2, dim=1).values
    return float(out.norm(dim=1).mean()), float((top[:, 0] - top[:, 1]).mean())


def _compare(curves: dict, path: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    for i, (lam, res) in enumerate(sorted(curves.items())):
        ps = [r.p for r in res]
        ax.plot(ps, [r.mean for r in res], "o-", color=f"C{i}", label=f"mean error, lam={lam:g}")
        ax.plot(ps, [r.accuracy_drop for r in res], "s:", color=f"C{i}",
                label=f"accuracy drop, lam={lam:g}")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("crash probability p (neurons of the FC layer)")
    ax.set_ylabel("mean ||Delta||_2  /  accuracy drop")
    ax.set_title("Fault-tolerance regulariser, Fashion-MNIST CNN")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)
    print(f"figure: {path}")


if __name__ == "__main__":
    main()
