"""The same results on a CUDA device as on the CPU (skipped where no GPU is present).

Every rule, pre-aggregator and attack runs on CUDA inputs, keeps them there, and agrees with
its CPU result (float64, so that the comparison is tight); the simulator on CUDA follows the
CPU run's trajectory (its batch sampling is counter-based, hence device independent).
"""

from __future__ import annotations

import pytest
import torch

import byzance as bz
from byzance.aggregators import REGISTRY, create

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

N, F = 15, 3
NAMES = sorted({cls.name for cls in REGISTRY.values()})


def build(name: str, f: int = F):
    if issubclass(REGISTRY[name], bz.aggregators.PreAggregator):
        return create(f"{name}+average", f=f)
    return create(name, f=f)


def inputs(d: int, dtype=torch.float64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, d, generator=g, dtype=dtype) + 0.3
    x[: F - 1] *= 25.0  # a few outliers, so that the rules have something to reject
    return x


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("d", [7, 70_001])
def test_rule_on_cuda_matches_cpu(name, d):
    x = inputs(d)
    cpu = build(name)(x)
    gpu = build(name)(x.cuda())
    assert gpu.device.type == "cuda" and gpu.dtype == torch.float64 and gpu.shape == (d,)
    # iterative rules stop at a tolerance: float64 rounding may move their last step slightly
    tol = 1e-6 if name in ("geometric_median", "centered_clipping", "monna") else 1e-9
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=tol, atol=tol)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 1e30])
def test_non_finite_rows_on_cuda(name, bad):
    if name in ("average", "mean"):
        pytest.skip("the mean is not robust")
    x = inputs(50, dtype=torch.float32).cuda()
    x[-F:] = bad  # the last rows: MoNNA trusts row 0 as its own vector
    out = build(name)(x)
    assert out.device.type == "cuda"
    if name in ("clipping", "arc", "bucketing", "sign_majority", "signsgd"):
        return  # not robust on their own (clipping then averaging lets a huge row through)
    assert bool(torch.isfinite(out).all())
    honest = x[:-F]
    assert bool((out >= honest.min(0).values - 1e-4).all())
    assert bool((out <= honest.max(0).values + 1e-4).all())


DETERMINISTIC_ATTACKS = ["sign_flipping", "ipm", "alie", "mimic", "inf", "nan", "large_norm"]


@pytest.mark.parametrize("name", DETERMINISTIC_ATTACKS)
def test_attack_on_cuda_matches_cpu(name):
    honest = inputs(1000)[F:]
    cpu = bz.attacks.create(name)(honest, F)
    gpu = bz.attacks.create(name)(honest.cuda(), F)
    assert gpu.device.type == "cuda" and gpu.shape == (F, 1000)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-9, atol=1e-9, equal_nan=True)


@pytest.mark.parametrize("name", ["optimal_alie", "optimal_ipm"])
@pytest.mark.parametrize("rule", ["nnm+trimmed_mean", "krum", "median"])
def test_adaptive_attack_on_cuda_matches_cpu(name, rule):
    honest = inputs(40_000)[F:]
    cpu = bz.attacks.create(name, aggregator=create(rule, f=F))
    gpu = bz.attacks.create(name, aggregator=create(rule, f=F))
    a, b = cpu(honest, F), gpu(honest.cuda(), F)
    assert b.device.type == "cuda"
    assert cpu.last_scale == pytest.approx(gpu.last_scale, rel=1e-6)
    torch.testing.assert_close(b.cpu(), a, rtol=1e-7, atol=1e-7)


def test_gaussian_attack_on_cuda():
    honest = inputs(1000)[F:].cuda()
    out = bz.attacks.create("gaussian")(honest, F)
    assert out.device.type == "cuda" and out.shape == (F, 1000) and bool(out.isfinite().all())


@pytest.mark.parametrize(
    "attack,aggregator", [("alie", "nnm+trimmed_mean"), ("label_flipping", "krum")]
)
def test_simulation_on_cuda_follows_cpu(attack, aggregator):
    common = dict(
        dataset="digits",
        model="mlp",
        n_honest=6,
        f=1,
        aggregator=aggregator,
        attack=attack,
        rounds=15,
        eval_every=5,
        batch_size=16,
        momentum=0.9,
        lr=0.1,
        seed=3,
    )
    cpu = bz.sim.run_experiment(bz.sim.ExperimentConfig(**common, device="cpu"))
    gpu = bz.sim.run_experiment(bz.sim.ExperimentConfig(**common, device="cuda"))
    loss_cpu = [r["train_loss"] for r in cpu.history]
    loss_gpu = [r["train_loss"] for r in gpu.history]
    assert loss_gpu == pytest.approx(loss_cpu, rel=2e-3, abs=2e-4)
    assert gpu.final_accuracy == pytest.approx(cpu.final_accuracy, abs=0.02)
