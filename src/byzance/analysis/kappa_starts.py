"""Structured starting inputs for the kappa search: the shapes that worst cases take.

Each family returns a (B, n, d) float64 tensor of inputs whose first m = n - f rows are the
honest ones (unnormalised; the search normalises them where the rule allows):

* ``lower_bound``: the construction behind kappa* >= f / (n - 2f): n - 2f honest points at 0,
  f at e1, the f Byzantine ones at 0 (and at e1), and the same points labelled the other way
  (the n - f points near 0 honest: an output away from 0 gives a huge ratio);
* ``two_clusters``: k honest points at e1 and m - k at 0, the Byzantine ones together at
  t e1 for t on a grid (they are selected, or pull a coordinate-wise rule);
* ``off_axis``: the same, Byzantine points at t e1 + s e2 (leaving the honest line);
* ``split``: the Byzantine points in two groups on the line;
* ``simplex``: honest points on a regular simplex (as spread as possible in d dimensions),
  the Byzantine ones together on a direction orthogonal to them or beyond one honest point
  (distance-based rules select a tight Byzantine group when the honest points are spread);
* ``random``: Gaussian honest points, Byzantine points around a random direction or near
  the honest point of largest norm.
"""

from __future__ import annotations

import torch

_T = torch.float64


def _ks(m: int, f: int, limit: int) -> list[int]:
    """Cluster sizes k in 1..m-1 worth trying: all when at most ``limit``, else the sizes
    tied to f and m and ``limit`` evenly spaced ones."""
    if m - 1 <= limit:
        return list(range(1, m))
    ks = {1, 2, m - 1, m - 2, f, m - f, m // 2, m // 3}
    ks |= {round(1 + i * (m - 2) / (limit - 1)) for i in range(limit)}
    return sorted(k for k in ks if 1 <= k <= m - 1)


def _two_cluster_honest(m: int, k: int, d: int) -> torch.Tensor:
    h = torch.zeros(m, d, dtype=_T)
    h[:k, 0] = 1.0
    return h


def lower_bound(n: int, f: int, d: int) -> torch.Tensor:
    m = n - f
    out = torch.zeros(3, n, d, dtype=_T)
    out[:2, n - 2 * f : m, 0] = 1.0  # f honest points at e1
    out[1, m:, 0] = 1.0  # second variant: the Byzantine points at e1 too
    out[2, m:, 0] = 1.0  # the other labelling: the honest points at 0, up to a spread of 1e-6
    out[2, :m, 0] = 1e-6 * torch.linspace(-1.0, 1.0, m, dtype=_T)
    return out


def two_clusters(n: int, f: int, d: int, ts: torch.Tensor) -> torch.Tensor:
    m = n - f
    cands = []
    for k in _ks(m, f, 10):
        h = _two_cluster_honest(m, k, d)
        for t in ts.tolist():
            x = torch.zeros(n, d, dtype=_T)
            x[:m] = h
            x[m:, 0] = t
            cands.append(x)
    return torch.stack(cands)


def off_axis(n: int, f: int, d: int) -> torch.Tensor:
    m = n - f
    cands = []
    for k in _ks(m, f, 5):
        h = _two_cluster_honest(m, k, d)
        for s in (0.15, 0.4, 1.0):
            for t in torch.linspace(-0.5, 1.5, 9).tolist():
                x = torch.zeros(n, d, dtype=_T)
                x[:m] = h
                x[m:, 0] = t
                x[m:, 1] = s
                cands.append(x)
    return torch.stack(cands)


def split(n: int, f: int, d: int) -> torch.Tensor:
    m = n - f
    grid = (-1.0, -0.3, 0.3, 0.7, 1.3, 2.0)
    cands = []
    for k in _ks(m, f, 4):
        h = _two_cluster_honest(m, k, d)
        for j in sorted({1, f // 2, f - 1} - {0}):
            for t1 in grid:
                for t2 in grid:
                    if t1 < t2:
                        x = torch.zeros(n, d, dtype=_T)
                        x[:m] = h
                        x[m : m + j, 0] = t1
                        x[m + j :, 0] = t2
                        cands.append(x)
    return torch.stack(cands)


def _simplex(m: int, d: int, gen: torch.Generator) -> torch.Tensor:
    """m honest points: a regular simplex when d >= m - 1, else Gaussian; centred."""
    if d >= m - 1:
        e = torch.eye(m, dtype=_T)
        e = e - e.mean(dim=0)
        q, _ = torch.linalg.qr(e.T)  # orthonormal basis of the simplex's (m-1)-dim span
        h = e @ q[:, : m - 1]
        h = torch.nn.functional.pad(h, (0, d - (m - 1)))
    else:
        h = torch.randn(m, d, generator=gen, dtype=_T)
    return h - h.mean(dim=0)


def simplex(n: int, f: int, d: int, gen: torch.Generator) -> torch.Tensor:
    m = n - f
    h = _simplex(m, d, gen)
    sd = float(h.pow(2).sum(dim=1).mean().sqrt())
    if d >= m:
        u = torch.zeros(d, dtype=_T)
        u[m - 1] = 1.0  # orthogonal to the honest span
    else:
        u = torch.randn(d, generator=gen, dtype=_T)
        u = u / u.norm()
    far = h[h.norm(dim=1).argmax()]
    cands = []
    for s in (0.05, 0.2, 0.4, 0.6, 0.8, 1.0, 1.3, 1.7, 2.2, 3.0):
        x = torch.zeros(n, d, dtype=_T)
        x[:m] = h
        x[m:] = s * sd * u
        cands.append(x)
    for t in (0.6, 0.9, 1.0, 1.2, 1.5, 2.0, 3.0):
        x = torch.zeros(n, d, dtype=_T)
        x[:m] = h
        x[m:] = t * far
        cands.append(x)
    return torch.stack(cands)


def random(n: int, f: int, d: int, gen: torch.Generator, count: int = 48) -> torch.Tensor:
    m = n - f
    x = torch.randn(count, n, d, generator=gen, dtype=_T)
    h = x[:, :m]
    hm = h.mean(dim=1, keepdim=True)
    u = torch.randn(count, 1, d, generator=gen, dtype=_T)
    u = u / u.norm(dim=-1, keepdim=True)
    t = 3.0 * torch.rand(count, 1, 1, generator=gen, dtype=_T)
    spread = 0.1 * torch.rand(count, 1, 1, generator=gen, dtype=_T)
    byz = hm + t * u + spread * x[:, m:]
    half = count // 2  # the other half: around the honest point of largest norm
    idx = (h[half:] - hm[half:]).norm(dim=-1).argmax(dim=1)
    far = h[half:][torch.arange(count - half), idx].unsqueeze(1)
    byz[half:] = far * (1.0 + t[half:]) + spread[half:] * x[half:, m:]
    return torch.cat([h, byz], dim=1)


def structured_starts(n: int, f: int, d: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Every family of starting inputs for n inputs, f Byzantine, dimension d."""
    ts = torch.cat([torch.linspace(-1.5, 2.5, 21, dtype=_T), torch.tensor([4.0, 8.0], dtype=_T)])
    fams = {"lower_bound": lower_bound(n, f, d), "two_clusters": two_clusters(n, f, d, ts)}
    if d >= 2:
        fams["off_axis"] = off_axis(n, f, d)
    if f >= 2:
        fams["split"] = split(n, f, d)
    if d >= 2:
        fams["simplex"] = simplex(n, f, d, gen)
    fams["random"] = random(n, f, d, gen)
    return fams
