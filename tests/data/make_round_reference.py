"""Write ``round_reference.json`` next to this file: pinned results of small simulator runs.

Takes no arguments. Each config below is run with ``byzance.sim.run_experiment`` on the CPU
and its per-round metric records (without ``time``) and final flat parameters are stored;
``tests/test_round_reference.py`` reruns the configs stored in the JSON and compares.

The reference was generated from the code *before* the simulator's training round was
restructured, from a pristine worktree of that commit::

    git -C /work/main worktree add /tmp/byz_orig HEAD
    cd /tmp/byz_orig && PYTHONPATH=/tmp/byz_orig/src python tests/data/make_round_reference.py

Every float round-trips exactly: the metrics (Python floats) are JSON numbers written by
``float.__repr__``; the float32 parameters are one JSON array per case, each entry numpy's
shortest float32 repr (checked here to give back the same bits; ``None`` stays null).
Regenerate only when a change of results is intended, and say so in the commit.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

import byzance
from byzance.sim import ExperimentConfig, run_experiment

FIELDS = ("round", "train_loss", "test_accuracy", "val_accuracy", "agg_distance", "lr")

_BASE = {"dataset": "digits", "model": "logreg", "rounds": 5, "eval_every": 1, "seed": 0}

#: (name, config overrides on ``_BASE``); small enough to run in well under 2 s each
CONFIGS: list[tuple[str, dict]] = [
    (
        "nnm_tm_alie_iid",
        {"aggregator": "nnm+trimmed_mean", "attack": "alie", "seed": 1},
    ),
    (
        "cc_optimal_alie_dirichlet",
        {
            "aggregator": "centered_clipping",
            "aggregator_params": {"tau": 1.0},
            "attack": "optimal_alie",
            "heterogeneity": "dirichlet",
            "alpha": 0.5,
            "rounds": 6,
        },
    ),
    (
        "bucketing_krum_gaussian_gamma",
        {
            "f": 1,
            "aggregator": "bucketing+krum",
            "attack": "gaussian",
            "heterogeneity": "gamma",
            "gamma": 0.5,
            "seed": 3,
        },
    ),
    (
        "bucketing_tm_signflip_mlp_local2",
        {
            "model": "mlp",
            "n_honest": 8,
            "f": 2,
            "aggregator": "bucketing+trimmed_mean",
            "attack": "sign_flipping",
            "local_steps": 2,
            "rounds": 4,
        },
    ),
    (
        "multikrum_ipm_extreme_servermom",
        {
            "aggregator": "multikrum",
            "attack": "ipm",
            "heterogeneity": "extreme",
            "server_momentum": 0.9,
            "lr": 0.05,
        },
    ),
    (
        "median_labelflip_cosine_wd",
        {
            "aggregator": "median",
            "attack": "label_flipping",
            "lr_schedule": "cosine",
            "weight_decay": 1e-3,
            "rounds": 6,
        },
    ),
    (
        "gm_blf_val_step",
        {
            "aggregator": "geometric_median",
            "attack": "budgeted_label_flipping",
            "attack_params": {"budget": 0.5},
            "val_fraction": 0.2,
            "lr_schedule": "step",
            "rounds": 6,
        },
    ),
    (
        "average_none_mlp_local3_invsqrt_dirichlet",
        {
            "model": "mlp",
            "n_honest": 6,
            "f": 0,
            "aggregator": "average",
            "attack": "none",
            "local_steps": 3,
            "lr_schedule": "inverse_sqrt",
            "heterogeneity": "dirichlet",
            "alpha": 1.0,
            "rounds": 4,
        },
    ),
    (
        "krum_alie_mlp_synthetic",
        {
            "dataset": "synthetic",
            "model": "mlp",
            "aggregator": "krum",
            "attack": "alie",
            "momentum": 0.0,
            "batch_size": 16,
            "rounds": 4,
        },
    ),
    (
        "cc_signflip_servermom_extreme_local2",
        {
            "aggregator": "centered_clipping",
            "aggregator_params": {"tau": 0.5},
            "attack": "sign_flipping",
            "heterogeneity": "extreme",
            "server_momentum": 0.9,
            "local_steps": 2,
            "lr": 0.05,
            "rounds": 5,
        },
    ),
    (
        "nnm_tm_optimal_alie_gamma_wd_step",
        {
            "aggregator": "nnm+trimmed_mean",
            "attack": "optimal_alie",
            "heterogeneity": "gamma",
            "gamma": 0.3,
            "weight_decay": 5e-3,
            "lr_schedule": "step",
            "rounds": 4,
            "seed": 2,
        },
    ),
]


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(Path(byzance.__file__).parent), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()


def _params_text(params: torch.Tensor) -> str:
    """JSON array of the float32 parameters, each as numpy's shortest round-trip repr."""
    values = params.detach().cpu().flatten().numpy()
    if values.dtype != np.float32 or not np.isfinite(values).all():
        raise RuntimeError(f"expected finite float32 parameters, got {values.dtype}")
    text = "[" + ",".join(str(v) for v in values) + "]"
    back = np.array(json.loads(text), dtype=np.float64).astype(np.float32)
    if back.view(np.uint32).tolist() != values.view(np.uint32).tolist():
        raise RuntimeError("float32 repr does not round-trip")  # pragma: no cover
    return text


def main() -> None:
    cases = []
    params_text = {}
    for name, overrides in CONFIGS:
        cfg = ExperimentConfig.from_dict({**_BASE, **overrides}).to_dict()
        cfg.pop("data_dir")
        result = run_experiment(ExperimentConfig.from_dict(cfg))
        if result.diverged:
            raise RuntimeError(f"{name}: diverged; pick a config that stays finite")
        history = [{k: rec[k] for k in FIELDS} for rec in result.history]
        params_text[name] = _params_text(result.params)
        cases.append({"name": name, "config": cfg, "history": history, "params": name})
        print(
            f"{name}: {len(history)} records, {result.params.numel()} params, "
            f"final acc {result.final_accuracy:.4f}, {result.seconds:.2f} s"
        )
    data = {
        "generated_by": "tests/data/make_round_reference.py",
        "byzance_file": byzance.__file__,
        "commit": _git_commit(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "encoding": (
            "metrics: JSON numbers written by Python's float repr (exact float64 round-trip); "
            "params: float32, each written as numpy's shortest float32 repr (exact after "
            "float -> float32 conversion)"
        ),
        "fields": list(FIELDS),
        "cases": cases,
    }
    text = json.dumps(data, indent=1, allow_nan=False)
    for name, arr in params_text.items():  # one line per parameter vector
        text = text.replace(f'"params": {json.dumps(name)}', f'"params": {arr}', 1)
    if [c["name"] for c in json.loads(text)["cases"]] != [n for n, _ in CONFIGS]:
        raise RuntimeError("bad JSON")  # pragma: no cover
    out = Path(__file__).resolve().with_name("round_reference.json")
    out.write_text(text + "\n")
    print(f"wrote {out} ({os.path.getsize(out)} bytes) using {byzance.__file__}", file=sys.stderr)


if __name__ == "__main__":
    main()
