"""Byzantine-robust collaborative scoring: Tournesol's pipeline from comparisons to global
scores (trust, generalized Bradley-Terry, Mehestan scaling, quadratically regularised
quantiles), its robust primitives, attacks and data readers. See docs/preferences.md."""

from byzance.preferences.aggregation import Squash, StandardizedQrMedian, StandardizedQrQuantile
from byzance.preferences.attacks import attack, displacement
from byzance.preferences.data import (
    Comparisons,
    SyntheticData,
    Vouches,
    read_comparisons,
    read_vouches,
    synthetic,
)
from byzance.preferences.gbt import UniformGBT, UserScores
from byzance.preferences.pipeline import Pipeline, PipelineResult
from byzance.preferences.primitives import (
    br_mean,
    br_mean_bound,
    clip_mean,
    qr_median,
    qr_quantile,
    qr_quantile_bound,
    qr_uncertainty,
)
from byzance.preferences.scaling import Mehestan, QuantileZeroShift
from byzance.preferences.trust import AffineOvertrust, LipschiTrust

__all__ = [
    "AffineOvertrust",
    "Comparisons",
    "LipschiTrust",
    "Mehestan",
    "Pipeline",
    "PipelineResult",
    "QuantileZeroShift",
    "Squash",
    "StandardizedQrMedian",
    "StandardizedQrQuantile",
    "SyntheticData",
    "UniformGBT",
    "UserScores",
    "Vouches",
    "attack",
    "br_mean",
    "br_mean_bound",
    "clip_mean",
    "displacement",
    "qr_median",
    "qr_quantile",
    "qr_quantile_bound",
    "qr_uncertainty",
    "read_comparisons",
    "read_vouches",
    "synthetic",
]
