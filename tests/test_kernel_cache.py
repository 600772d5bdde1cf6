"""Every compiled kernel is served from numba's cache in a new process.

A kernel that closes over another compiled function is keyed in numba's cache by that
function's per-process id: it compiled again in every process (5.5 s of a 6.2 s one-round run
for ALIE's kernel) and added a cache entry each time. The script below runs every kernel (the
coordinate-wise rules, both Gram kernels, ALIE's moments, NNM's nearest neighbours) in a fresh
process twice: the second must compile nothing and leave the cache's index files as they were.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("numba")

SCRIPT = r"""
import json
import torch
import byzance as bz
from byzance.kernels import coordinate, gram, moments, nearest

torch.manual_seed(0)
for x in (torch.randn(12, 300_000), torch.randn(12, 64)):  # parallel and single-threaded
    bz.aggregators.create("nnm+trimmed_mean", f=2)(x)
    bz.aggregators.create("median")(x)
    bz.aggregators.create("krum", f=2)(x)
    bz.aggregators.create("centered_clipping", tau=1.0)(x)
    bz.aggregators.create("geometric_median", f=2)(x)
bz.attacks.create("alie")(torch.randn(10, 300_000), 2)
kernels = {f"coordinate[{p}]": coordinate._kernel(p) for p in (True, False)}
kernels.update({f"gram[{c}]": gram._gram_kernel(c) for c in (True, False)})
kernels["moments"] = moments._compiled()
kernels["nearest"] = nearest.nearest_kernel()
out = {}
for name, d in kernels.items():
    out[name] = {
        "signatures": len(d.signatures),
        "misses": sum(d.stats.cache_misses.values()),
        "hits": sum(d.stats.cache_hits.values()),
    }
print(json.dumps(out))
"""


def _run() -> dict[str, dict[str, int]]:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _index(cache: Path) -> dict[str, int]:
    return {str(p.relative_to(cache)): p.stat().st_size for p in cache.rglob("*.nbi")}


def test_every_kernel_loads_from_the_cache_in_a_new_process() -> None:
    # numba's own cache (beside the kernels' sources, or under NUMBA_CACHE_DIR), which the
    # earlier tests of the session have filled: the first process only compiles what is missing
    import byzance.kernels

    cache = Path(os.environ.get("NUMBA_CACHE_DIR") or Path(byzance.kernels.__file__).parent)
    first = _run()
    assert all(k["signatures"] >= 1 for k in first.values()), first  # every kernel ran
    index = _index(cache)
    second = _run()
    compiled = {name: k["misses"] for name, k in second.items() if k["misses"]}
    assert not compiled, f"compiled again in a new process: {compiled}"
    assert all(k["hits"] >= 1 for k in second.values()), second
    assert _index(cache) == index  # no new cache entry
