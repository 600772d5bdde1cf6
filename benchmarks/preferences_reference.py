"""Make tests/data/preferences_reference.json: solidago 0.4.1's primitives on random inputs.

Run with solidago's own interpreter (its pins conflict with byzance's; it is used as a black
box, only its public functions are called):

    python -m venv /tmp/solidago-venv && /tmp/solidago-venv/bin/pip install solidago==0.4.1
    /tmp/solidago-venv/bin/python benchmarks/preferences_reference.py

tests/test_preferences.py checks byzance.preferences against the numbers it writes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from solidago import primitives as sp

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "preferences_reference.json"


def main(n_cases: int = 60, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    cases = []
    for k in range(n_cases):
        n = int(rng.integers(1, 12))
        values = np.round(rng.normal(size=n) * rng.uniform(0.5, 5), 4)
        weights = np.round(rng.uniform(0, 2, size=n), 4)
        unc = None if k % 4 == 0 else np.round(rng.uniform(0, 1.5, size=n), 4)
        lipschitz = float(np.round(rng.choice([0.1, 1.0, 10.0, 100.0]) * rng.uniform(0.5, 2), 4))
        quantile = float(np.round(rng.uniform(0.05, 0.95), 4))
        default = float(np.round(rng.normal(), 4))
        default_dev = float(np.round(rng.uniform(0.1, 2), 4))
        err = 1e-9
        case = {
            "values": values.tolist(),
            "voting_rights": weights.tolist(),
            "uncertainties": None if unc is None else unc.tolist(),
            "lipschitz": lipschitz,
            "quantile": quantile,
            "default": default,
            "default_dev": default_dev,
            "qr_quantile": sp.qr_quantile(
                lipschitz, quantile, values, weights, unc, unc, default, error=err
            ),
            "qr_median": sp.qr_median(lipschitz, values, weights, unc, unc, default, error=err),
            "lipschitz_resilient_mean": sp.lipschitz_resilient_mean(
                lipschitz, values, weights, unc, unc, default, error=err
            ),
            "qr_uncertainty": sp.qr_uncertainty(
                lipschitz, values, weights, unc, unc, default_dev, error=err
            ),
        }
        cases.append(
            {key: (float(v) if isinstance(v, np.floating) else v) for key, v in case.items()}
        )
    meta = {"solidago": "0.4.1", "python": sys.version.split()[0], "seed": seed}
    OUT.write_text(json.dumps({"meta": meta, "cases": cases}, indent=1) + "\n")
    print(f"wrote {len(cases)} cases to {OUT}")


if __name__ == "__main__":
    main()
