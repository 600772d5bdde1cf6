"""Robust aggregation rules and pre-aggregators.

Rules map an (n, d) input to one d-vector; pre-aggregators map it to m vectors and chain in
front of a rule. Every class takes its hyper-parameters in the constructor and is called on the
vectors: ``Krum(f=2)(x)``. ``create("nnm+trimmed_mean", f=2)`` builds one from names.
"""

from __future__ import annotations

from typing import Any

from byzance.aggregators.arc import ARC
from byzance.aggregators.average import Average
from byzance.aggregators.base import Aggregator, PreAggregator
from byzance.aggregators.bucketing import Bucketing
from byzance.aggregators.bulyan import Bulyan, MultiBulyan
from byzance.aggregators.caf import CAF
from byzance.aggregators.centered_clipping import CenteredClipping
from byzance.aggregators.chain import Chain
from byzance.aggregators.clipping import Clipping
from byzance.aggregators.geometric_median import GeometricMedian
from byzance.aggregators.krum import Krum, MultiKrum
from byzance.aggregators.mda import MDA
from byzance.aggregators.median import Meamed, Median, TrimmedMean
from byzance.aggregators.monna import MoNNA
from byzance.aggregators.nnm import NNM
from byzance.aggregators.registry import create_aggregator
from byzance.aggregators.sign_majority import SignMajority
from byzance.aggregators.smea import SMEA

RULES: tuple[type[Aggregator], ...] = (
    Average, Median, TrimmedMean, Meamed, GeometricMedian, Krum, MultiKrum, Bulyan,
    MultiBulyan, MDA, CenteredClipping, MoNNA, CAF, SMEA, SignMajority,
)
PRE_AGGREGATORS: tuple[type[PreAggregator], ...] = (NNM, Bucketing, Clipping, ARC)

#: name -> class, for every rule and pre-aggregator (aliases included)
REGISTRY: dict[str, type] = {cls.name: cls for cls in (*RULES, *PRE_AGGREGATORS)}
REGISTRY.update({"mean": Average, "cwmed": Median, "cwtm": TrimmedMean, "gm": GeometricMedian,
                 "rfa": GeometricMedian, "cc": CenteredClipping, "multi_krum": MultiKrum,
                 "multi_bulyan": MultiBulyan, "signsgd": SignMajority})


def create(spec: str, **params: Any) -> Aggregator:
    """Build a rule or a chain from its name(s): ``create("nnm+trimmed_mean", f=2)``.

    Components are joined by ``+`` (pre-aggregators first, the rule last). Each keyword goes to
    every component that takes it; ``name(k=v)`` gives one component its own parameters, e.g.
    ``create("bucketing(s=2)+krum", f=1)``. Names: see ``REGISTRY``.
    """
    return create_aggregator(spec, REGISTRY, **params)


__all__ = [
    "ARC", "CAF", "MDA", "NNM", "SMEA", "Aggregator", "Average", "Bucketing", "Bulyan",
    "CenteredClipping", "Chain", "Clipping", "GeometricMedian", "Krum", "Meamed", "Median",
    "MoNNA", "MultiBulyan", "MultiKrum", "PreAggregator", "REGISTRY", "SignMajority",
    "TrimmedMean", "create",
]
