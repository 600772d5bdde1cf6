"""byzance.preferences against solidago 0.4.1 on the same synthetic data: agreement of the
trust scores and the global scores, and speed (whole pipeline; the aggregation step alone).

solidago runs in its own interpreter (its pins conflict with ours), as a black box:

    python -m venv /tmp/solidago-venv && /tmp/solidago-venv/bin/pip install solidago==0.4.1
    python benchmarks/preferences_solidago.py --users 1000 --items 1000 --comparisons 100000

The same script is the solidago side (``--solidago-side DATA.npz OUT.json``, run by the
solidago interpreter): it only calls solidago's public ``Pipeline``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def solidago_side(data_path: str, out_path: str) -> None:
    import pandas as pd
    from solidago.judgments import DataFrameJudgments
    from solidago.pipeline import Pipeline
    from solidago.privacy_settings import PrivacySettings

    d = np.load(data_path)
    n_users, n_items = int(d["n_users"]), int(d["n_items"])
    users = pd.DataFrame(
        {"user_id": np.arange(n_users), "is_pretrusted": d["pretrusted"]}
    ).set_index("user_id")
    vouches = pd.DataFrame({"voucher": d["voucher"], "vouchee": d["vouchee"], "vouch": d["value"]})
    entities = pd.DataFrame({"entity_id": np.arange(n_items)}).set_index("entity_id")
    comparisons = pd.DataFrame(
        {
            "user_id": d["user"], "criteria": 0, "entity_a": d["a"], "entity_b": d["b"],
            "comparison": d["score"], "comparison_max": float(d["score_max"]),
        }
    )
    pipeline = Pipeline()
    few = comparisons.iloc[: min(len(comparisons), 300)]  # warm-up: numba compilation
    pipeline(users, vouches, entities, PrivacySettings(), DataFrameJudgments(few))
    start, cpu = time.perf_counter(), time.process_time()
    users_out, rights, user_models, global_model = pipeline(
        users, vouches, entities, PrivacySettings(), DataFrameJudgments(comparisons)
    )
    total, total_cpu = time.perf_counter() - start, time.process_time() - cpu
    start, cpu = time.perf_counter(), time.process_time()
    pipeline.aggregation(rights, user_models, users_out, entities)
    aggregation, aggregation_cpu = time.perf_counter() - start, time.process_time() - cpu
    scores = np.full(n_items, np.nan)
    for entity, (score, _left, _right) in global_model.iter_entities():
        scores[int(entity)] = score
    trust = users_out["trust_score"].reindex(np.arange(n_users)).to_numpy()
    Path(out_path).write_text(
        json.dumps(
            {"scores": scores.tolist(), "trust": trust.tolist(), "seconds": total,
             "aggregation_seconds": aggregation, "cpu": total_cpu,
             "aggregation_cpu": aggregation_cpu}
        )
    )


def solidago_aggregation_side(data_path: str, out_path: str) -> None:
    """solidago's qr_quantile per item on our standardised scores (what its
    EntitywiseQrQuantile computes per entity), timed."""
    from solidago import primitives as sp

    d = np.load(data_path)
    item, x, w, unc = d["item"], d["x"], d["w"], d["unc"]
    order = np.argsort(item, kind="stable")
    bounds = np.searchsorted(item[order], np.arange(int(d["n_items"]) + 1))
    sp.qr_quantile(0.1, 0.2, x[:3], w[:3], unc[:3], unc[:3], 0.0)  # compile (numba)
    start, cpu = time.perf_counter(), time.process_time()
    out = []
    for e in range(int(d["n_items"])):
        k = order[bounds[e] : bounds[e + 1]]
        out.append(sp.qr_quantile(0.1, 0.2, x[k], w[k], unc[k], unc[k], 0.0, error=1e-9))
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    Path(out_path).write_text(json.dumps({"scores": out, "seconds": seconds, "cpu": cpu}))


def aggregation_only(args) -> None:
    from byzance.preferences.data import synthetic
    from byzance.preferences.pipeline import Pipeline
    from byzance.preferences.primitives import qr_quantile

    data = synthetic(args.users, args.items, args.comparisons, seed=args.seed,
                     integer_scores=True)
    pipe = Pipeline()
    res = pipe.run(data.comparisons, data.vouches)
    us = res.scaled
    sigma = pipe.aggregation.scale(us, res.rights)
    x, unc = us.score / sigma, (us.left + us.right) / (2 * sigma)  # symmetric uncertainties
    kw = dict(lipschitz=0.1, voting_rights=res.rights, uncertainties=unc, groups=us.item,
              n_groups=us.n_items)
    qr_quantile(x, 0.2, **kw)  # warm-up
    start, cpu = time.perf_counter(), time.process_time()
    ours = qr_quantile(x, 0.2, **kw)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    with tempfile.TemporaryDirectory() as tmp:
        path, out = Path(tmp) / "agg.npz", Path(tmp) / "out.json"
        np.savez(path, item=us.item, x=x, w=res.rights, unc=unc, n_items=us.n_items)
        subprocess.run(
            [args.python, __file__, "--solidago-aggregation", str(path), str(out)], check=True
        )
        theirs = json.loads(out.read_text())
    diff = np.abs(ours - np.array(theirs["scores"]))
    print(f"aggregation step alone: {x.size} scores on {us.n_items} items; largest difference "
          f"{diff.max():.2e}")
    print(f"  wall: ours {seconds:.3f} s (one vectorised call), solidago {theirs['seconds']:.3f}"
          f" s (qr_quantile per item, after compilation), x{theirs['seconds'] / seconds:.1f}")
    print(f"  CPU:  ours {cpu:.3f} s, solidago {theirs['cpu']:.3f} s, "
          f"x{theirs['cpu'] / cpu:.1f}")


def ours_only(args) -> None:
    from byzance.preferences.data import synthetic
    from byzance.preferences.pipeline import Pipeline

    data = synthetic(args.users, args.items, args.comparisons, seed=args.seed,
                     integer_scores=True)
    pipe = Pipeline()
    pipe.run(data.comparisons, data.vouches)  # warm-up
    start, cpu = time.perf_counter(), time.process_time()
    res = pipe.run(data.comparisons, data.vouches)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    print(f"byzance pipeline on {len(data.comparisons)} comparisons: wall {wall:.2f} s, "
          f"CPU {cpu:.2f} s; steps " + ", ".join(f"{k} {s:.2f}" for k, s in res.seconds.items()))


def main() -> None:
    from scipy.stats import spearmanr

    from byzance.preferences.data import synthetic
    from byzance.preferences.pipeline import Pipeline

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=200)
    p.add_argument("--items", type=int, default=100)
    p.add_argument("--comparisons", type=int, default=10000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--python", default="/tmp/solidago-venv/bin/python", help="solidago's")
    p.add_argument("--ours-only", action="store_true", help="time byzance alone")
    p.add_argument("--aggregation-only", action="store_true",
                   help="only the aggregation step, solidago's qr_quantile per item")
    args = p.parse_args()
    if args.aggregation_only:
        aggregation_only(args)
        return
    if args.ours_only:
        ours_only(args)
        return
    data = synthetic(args.users, args.items, args.comparisons, seed=args.seed,
                     integer_scores=True)
    c, v = data.comparisons, data.vouches
    with tempfile.TemporaryDirectory() as tmp:
        path, out = Path(tmp) / "data.npz", Path(tmp) / "out.json"
        np.savez(
            path, n_users=c.n_users, n_items=c.n_items, user=c.user, a=c.a, b=c.b,
            score=c.score, score_max=c.score_max, voucher=v.voucher, vouchee=v.vouchee,
            value=v.value, pretrusted=v.pretrusted,
        )
        subprocess.run(
            [args.python, __file__, "--solidago-side", str(path), str(out)], check=True
        )
        theirs = json.loads(out.read_text())
    pipe = Pipeline()
    pipe.run(c, v)  # warm-up (first calls load scipy's sparse solvers)
    start, cpu = time.perf_counter(), time.process_time()
    ours = pipe.run(c, v)
    total, total_cpu = time.perf_counter() - start, time.process_time() - cpu
    start, cpu = time.perf_counter(), time.process_time()
    pipe.aggregation(ours.scaled, ours.rights)
    aggregation, aggregation_cpu = time.perf_counter() - start, time.process_time() - cpu
    s_theirs = np.array(theirs["scores"])
    seen = ~np.isnan(s_theirs)
    diff = np.abs(ours.score[seen] - s_theirs[seen])
    worst = int(np.flatnonzero(seen)[np.argmax(diff)])
    trust_theirs = np.array(theirs["trust"], dtype=float)
    print(f"data: {len(c)} comparisons, {c.n_users} users, {c.n_items} items, seed {args.seed}")
    print(f"trust: largest difference {np.nanmax(np.abs(ours.trust - trust_theirs)):.2e}")
    print(
        f"global scores (squashed, {seen.sum()} items scored by both): Spearman "
        f"{spearmanr(ours.score[seen], s_theirs[seen])[0]:.4f}, largest difference "
        f"{diff.max():.2f} (item {worst}: ours {ours.score[worst]:.2f}, solidago "
        f"{s_theirs[worst]:.2f}), mean difference {diff.mean():.2f}"
    )
    # squashed -> standardised (the inverse of 100 s / sqrt(1 + s²)), then the best affine map
    raw = lambda y: y / np.sqrt(100.0**2 - y**2)  # noqa: E731
    x, y = raw(ours.score[seen]), raw(s_theirs[seen])
    slope, intercept = np.polyfit(x, y, 1)
    print(
        f"standardised scores: solidago = {slope:.3f} ours + {intercept:.3f} (least squares); "
        f"residual: largest {np.abs(y - slope * x - intercept).max():.3f}, scores' std "
        f"{y.std():.3f}"
    )
    print(
        f"vs truth: Spearman ours {spearmanr(ours.score, data.true_scores)[0]:.4f}, solidago "
        f"{spearmanr(s_theirs[seen], data.true_scores[seen])[0]:.4f}"
    )
    for kind, ours_t, ours_a, key, key_a in (
        ("wall", total, aggregation, "seconds", "aggregation_seconds"),
        ("CPU", total_cpu, aggregation_cpu, "cpu", "aggregation_cpu"),
    ):
        print(
            f"{kind} time: pipeline ours {ours_t:.2f} s, solidago {theirs[key]:.2f} s "
            f"(x{theirs[key] / ours_t:.1f}); "
            f"aggregation step ours {ours_a:.3f} s, solidago {theirs[key_a]:.3f} s "
            f"(x{theirs[key_a] / ours_a:.1f})"
        )
    print("our steps: " + ", ".join(f"{k} {s:.2f} s" for k, s in ours.seconds.items()))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--solidago-side":
        solidago_side(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 4 and sys.argv[1] == "--solidago-aggregation":
        solidago_aggregation_side(sys.argv[2], sys.argv[3])
    else:
        main()
