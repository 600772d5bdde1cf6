r"""One rule applied by b recipients at once, each with its own rule state.

Protocols without a trusted server (ByzSGD's replicated servers, decentralised nodes, the
agreement steps) have b correct recipients that each aggregate n received vectors with the
same rule, and the recipients' inputs overlap: every server receives the same honest momenta,
every node the same honest vectors in its own order. So the inputs are given as the m
distinct ``rows`` (m, d) and an ``index`` (b, n): recipient k aggregates ``rows[index[k]]``.
Where the rule allows it the b aggregations are one computation on the library's kernels:

``median``, ``trimmed_mean``, ``meamed`` (coordinate-wise)
    on the CPU the rule's compiled kernel reads each recipient's rows in place from the shared
    ``rows`` (a selection matrix, no copy); on other devices one call on the (n, b d) layout
    gathered from ``rows`` (every coordinate of every recipient is independent), see
    ``coordinatewise``;
``mda`` (minimum-diameter averaging, El Mhamdi et al. 2020)
    one exact Gram matrix of the m distinct rows (``byzance.geometry.gram``) gives every
    recipient's distances (a submatrix); the subset search (``aggregators.mda``'s exact
    ``min_diameter_subset``, combinatorial on n x n numbers, independent of d) stays a loop
    over recipients; the b means are one (b, m) x (m, d) product.

Every other rule (chains, stateful rules such as centered clipping, whose centre is each
recipient's previous aggregate) runs one recipient at a time with its own ``RuleState``
(counted in ``loops``), as does MDA on non-finite rows. (The CPU path of the coordinate-wise
rules is b kernel calls too, but on shared rows without a copy and not counted: it was measured
faster than one call on a gathered copy.) The batched path gives each recipient what
``rule.aggregate`` gives on its (n, d) matrix (the tests check this).
"""

from __future__ import annotations

from typing import Any

import torch

from byzance.round.server import RuleState

COORDINATE = ("median", "trimmed_mean", "meamed")


def batch_kind(rule: Any) -> str | None:
    """``"coordinate"`` for Median, TrimmedMean, Meamed, ``"mda"`` for MDA (exactly those
    stateless classes: a subclass may change them), else None."""
    from byzance.aggregators.mda import MDA
    from byzance.aggregators.median import Meamed, Median, TrimmedMean

    if type(rule) in (Median, TrimmedMean, Meamed):
        return "coordinate"
    return "mda" if type(rule) is MDA else None


def coordinatewise(rule: Any, rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(b, d): a coordinate-wise ``rule`` of every recipient's rows.

    On the CPU, one call of the rule's compiled kernel per recipient on the shared ``rows``,
    its rows selected inside the kernel (``aggregate_mixed`` with a 0/1 selection matrix): no
    copy of the inputs. Elsewhere (or for a rule without ``aggregate_mixed``), one call on the
    (n, b d) layout gathered from ``rows``. Measured on the CPU (``benchmarks/byzsgd.py``), the
    single call on the gathered layout cost about twice the b in-place calls: the gather
    writes and re-reads b n d values, the in-place calls only read them.
    """
    b, n = index.shape
    if rows.device.type == "cpu" and hasattr(rule, "aggregate_mixed"):
        sel = torch.zeros(b, n, rows.shape[0], dtype=rows.dtype)
        sel.scatter_(2, index[:, :, None], 1.0)
        return torch.stack([rule.aggregate_mixed(rows, sel[k]) for k in range(b)])
    x = rows[index.T.reshape(-1)].reshape(n, b * rows.shape[1])
    return rule.aggregate(x).reshape(b, rows.shape[1])


def mda_indexed(f: int, rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor | None:
    """(b, d): MDA (discarding f) of every recipient's rows, from one Gram of the m rows
    (None if a row is not finite: ``MDA`` itself then handles each recipient)."""
    from byzance.aggregators.mda import min_diameter_subset
    from byzance.geometry import gram

    b, n = index.shape
    g, bad = gram(rows)
    if bool(bad.any()):
        return None
    diag = torch.diagonal(g)
    d2 = (diag[:, None] + diag[None, :] - 2 * g).clamp_min(0)
    d2.fill_diagonal_(0)
    w = torch.zeros(b, rows.shape[0], dtype=rows.dtype, device=rows.device)
    one = torch.full((n - f,), 1.0 / (n - f), dtype=rows.dtype, device=rows.device)
    for k in range(b):  # the combinatorial search on n x n numbers: a loop, not over d
        idx = index[k]
        kept = torch.tensor(min_diameter_subset(d2[idx][:, idx], f), device=rows.device)
        w[k].index_add_(0, idx[kept], one)
    return w @ rows


class PerRecipient:
    """``rule`` at each of ``b`` recipients (see the module docstring): ``aggregate_indexed(rows,
    index)`` or ``aggregate(x)`` on a (b, n, d) tensor, batched where ``batch_kind`` allows,
    else a loop over the recipients' ``RuleState``s (counted in ``loops``)."""

    def __init__(self, rule: Any, b: int) -> None:
        self.rule = rule
        self.kind = batch_kind(rule)
        self.states = [RuleState(rule) for _ in range(b)]
        self.loops = 0

    def aggregate_indexed(self, rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """(b, d): recipient k's aggregate of ``rows[index[k]]``."""
        b, n = index.shape
        if b != len(self.states):
            raise ValueError(
                f"PerRecipient.aggregate: expected {len(self.states)} recipients, got {b}"
            )
        self.rule.check(n)
        if self.kind == "coordinate":  # per coordinate: non-finite values as the rule ranks them
            return coordinatewise(self.rule, rows, index)
        if self.kind == "mda":
            out = mda_indexed(self.rule.f, rows, index)
            if out is not None:
                return out
        self.loops += b
        return torch.stack([s.aggregate(rows[index[k]]) for k, s in enumerate(self.states)])

    def aggregate(self, x: torch.Tensor) -> torch.Tensor:
        """(b, d) from the (b, n, d) inputs of the b recipients."""
        if x.dim() != 3:
            raise ValueError(f"PerRecipient.aggregate: expected (b, n, d), got {tuple(x.shape)}")
        b, n, d = x.shape
        index = torch.arange(b * n, device=x.device).reshape(b, n)
        return self.aggregate_indexed(x.reshape(b * n, d), index)

    def state_dict(self) -> list[Any]:
        return [s.state_dict() for s in self.states]

    def load_state_dict(self, states: list[Any]) -> None:
        for s, st in zip(self.states, states, strict=True):
            s.load_state_dict(st)


def median_indexed(rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(b, d): the coordinate-wise median of every recipient's rows (``aggregators.Median``)."""
    from byzance.aggregators.median import Median

    return coordinatewise(Median(), rows, index)
