"""Pins the simulator's results: reruns small fixed configs and compares with stored numbers.

The simulator's training round (``byzance.sim.simulation``, ``sim.server``, the engines) was
restructured; that refactor must not change what a run computes. ``data/round_reference.json``
holds, for about ten small configs (digits/synthetic, logreg/MLP, 4-6 rounds), every metric
record (``round``, ``train_loss``, ``test_accuracy``, ``val_accuracy``, ``agg_distance``,
``lr``; not ``time``) and the final flat parameters, produced by the code *before* the
restructuring (``data/make_round_reference.py`` documents how). The configs cover stateful
rules (centered clipping, whose centre is the previous aggregate; bucketing, which draws a new
permutation each round), NNM + trimmed mean, (multi-)Krum, median, geometric median and the
average; adaptive, plain, randomised and data-poisoning attacks and none; every heterogeneity
kind; local steps, server momentum, weight decay, non-constant lr schedules and a validation
split.

On the CPU the results are expected bit for bit. Where a change legitimately reorders a
floating-point summation the values may differ by round-off only: anything not exactly equal
must then be within rtol 1e-6 / atol 1e-9 (such a pass warns), otherwise the test fails
naming the config, the round and field (or parameter index) and the largest difference.
The reference was made with 2 torch threads on a CPU.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch

from byzance.sim import ExperimentConfig, run_experiment

REFERENCE = Path(__file__).resolve().parent / "data" / "round_reference.json"
DATA = json.loads(REFERENCE.read_text())
CASES = DATA["cases"]
FIELDS = tuple(DATA["fields"])

PARAMS_DTYPE = torch.float32  # the parameters' dtype (the generator checks it)

RTOL = 1e-6
ATOL = 1e-9


def _close(got: float, want: float) -> bool:
    return abs(got - want) <= ATOL + RTOL * abs(want)


def _compare_history(name: str, got: list[dict], want: list[dict]) -> list[str]:
    """Return the round-off notes (values equal only within tolerance); fail on anything else."""
    rounds_got = [rec["round"] for rec in got]
    rounds_want = [rec["round"] for rec in want]
    assert rounds_got == rounds_want, (
        f"{name}: metric records at rounds {rounds_got}, reference has {rounds_want}"
    )
    notes, failures = [], []
    for rec_got, rec_want in zip(got, want, strict=True):
        r = rec_want["round"]
        for key in FIELDS:
            g, w = rec_got[key], rec_want[key]
            if g == w and type(g) is type(w):
                continue
            if g is None or w is None or isinstance(g, bool) or isinstance(w, bool):
                failures.append(f"round {r} {key}: got {g!r}, reference {w!r}")
                continue
            g, w = float(g), float(w)
            if math.isnan(g) or math.isnan(w):
                failures.append(f"round {r} {key}: got {g!r}, reference {w!r}")
                continue
            diff = abs(g - w)
            line = f"round {r} {key}: got {g!r}, reference {w!r} (|diff| {diff:.3g})"
            (notes if _close(g, w) else failures).append(line)
    assert not failures, (
        f"{name}: {len(failures)} metric value(s) differ beyond rtol {RTOL}, atol {ATOL}:\n  "
        + "\n  ".join(failures)
    )
    return notes


def _compare_params(name: str, got: torch.Tensor, want_values: list[float]) -> list[str]:
    assert got is not None, f"{name}: result.params is None"
    got = got.detach().cpu().flatten()
    # shortest float32 reprs: float64 parse, then the nearest float32 gives the stored bits
    want = torch.tensor(want_values, dtype=torch.float64).to(PARAMS_DTYPE)
    assert got.dtype == want.dtype, f"{name}: params dtype {got.dtype}, reference {want.dtype}"
    assert got.numel() == want.numel(), (
        f"{name}: {got.numel()} parameters, reference has {want.numel()}"
    )
    if torch.equal(got, want):
        return []
    g64, w64 = got.double(), want.double()
    diff = (g64 - w64).abs()
    diff = torch.where(torch.isnan(diff), torch.full_like(diff, math.inf), diff)
    worst = int(diff.argmax())
    n_diff = int((got != want).sum())
    summary = (
        f"{name}: {n_diff}/{want.numel()} final parameters not bit-identical; max |diff| "
        f"{float(diff[worst]):.3g} at index {worst} (got {float(g64[worst])!r}, reference "
        f"{float(w64[worst])!r})"
    )
    ok = torch.isfinite(g64).all() and bool((diff <= ATOL + RTOL * w64.abs()).all())
    assert ok, f"{summary}; beyond rtol {RTOL}, atol {ATOL}"
    return [summary]


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_round_reference(case: dict) -> None:
    name = case["name"]
    result = run_experiment(ExperimentConfig.from_dict(case["config"]))
    assert not result.diverged, f"{name}: diverged; the reference run did not"
    assert len(case["history"]) >= 4 and len(case["params"]) > 0
    notes = _compare_history(name, result.history, case["history"])
    notes += _compare_params(name, result.params, case["params"])
    if notes:
        warnings.warn(
            f"{name}: equal only within round-off (rtol {RTOL}, atol {ATOL}), not bit for "
            "bit:\n  " + "\n  ".join(notes),
            stacklevel=1,
        )


def test_reference_covers_the_round() -> None:
    """The stored configs still span what the docstring promises (guards a regenerated file)."""
    configs = [c["config"] for c in CASES]
    rules = {c["aggregator"] for c in configs}
    attacks = {c["attack"] for c in configs}
    assert {"centered_clipping", "nnm+trimmed_mean", "median", "geometric_median"} <= rules
    assert any(r.startswith("bucketing+") for r in rules)
    assert rules & {"krum", "multikrum"} and "average" in rules
    assert {"optimal_alie", "alie", "gaussian", "label_flipping", "none"} <= attacks
    assert {c["heterogeneity"] for c in configs} == {"iid", "dirichlet", "gamma", "extreme"}
    assert {c["model"] for c in configs} == {"logreg", "mlp"}
    assert any(c["local_steps"] > 1 for c in configs)
    assert any(c["server_momentum"] > 0 for c in configs)
    assert any(c["val_fraction"] > 0 for c in configs)
    assert len({c["lr_schedule"] for c in configs}) >= 3
    assert all(c["device"] == "cpu" and c["eval_every"] == 1 for c in configs)
