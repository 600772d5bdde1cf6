"""Byzantine attacks: on gradients (``Attack``) and on a Byzantine worker's data (``DataAttack``).

Gradient attacks are called on the honest vectors of a round: ``ALittleIsEnough()(honest, f)``
returns the f Byzantine vectors. Adaptive ones (``Optimal``, ``HiddenVulnerability``) take the
deployed aggregator. ``create("optimal_alie", aggregator=agg)`` builds one from its name.
"""

from __future__ import annotations

import inspect
from typing import Any

from byzance.aggregators.registry import build_component
from byzance.attacks.alie import ALittleIsEnough, alie_z_max
from byzance.attacks.anti_majority import AntiMajority
from byzance.attacks.base import Attack, DataAttack, LinearAttack
from byzance.attacks.gradient_inversion import GradientInversion
from byzance.attacks.hidden_vulnerability import HiddenVulnerability
from byzance.attacks.ipm import InnerProductManipulation
from byzance.attacks.label_flipping import BudgetedLabelFlipping, LabelFlipping
from byzance.attacks.large_norm import LargeNorm
from byzance.attacks.mimic import Mimic
from byzance.attacks.noise import Gaussian
from byzance.attacks.nonfinite import Inf, NaN
from byzance.attacks.optimal import Optimal, OptimalALIE, OptimalIPM
from byzance.attacks.sign_flipping import SignFlipping

GRADIENT_ATTACKS: tuple[type[Attack], ...] = (
    SignFlipping,
    InnerProductManipulation,
    ALittleIsEnough,
    Gaussian,
    Mimic,
    Inf,
    NaN,
    LargeNorm,
    HiddenVulnerability,
    Optimal,
    OptimalALIE,
    OptimalIPM,
    AntiMajority,
)
DATA_ATTACKS: tuple[type[DataAttack], ...] = (
    LabelFlipping,
    BudgetedLabelFlipping,
    GradientInversion,
)

#: name -> class, for every attack (aliases included)
REGISTRY: dict[str, type] = {cls.name: cls for cls in (*GRADIENT_ATTACKS, *DATA_ATTACKS)}
REGISTRY.update(
    {
        "signflip": SignFlipping,
        "inner_product_manipulation": InnerProductManipulation,
        "a_little_is_enough": ALittleIsEnough,
        "noise": Gaussian,
        "gaussian_noise": Gaussian,
        "largenorm": LargeNorm,
        "hidden": HiddenVulnerability,
        "labelflip": LabelFlipping,
        "blf": BudgetedLabelFlipping,
        "sign_vote": AntiMajority,
    }
)

#: attacks that need the deployed aggregator (``create(..., aggregator=agg)``)
ADAPTIVE: frozenset[str] = frozenset(
    name for name, cls in REGISTRY.items() if issubclass(cls, (Optimal,))
)


def create(spec: str, *, aggregator: Any = None, **params: Any) -> Attack | DataAttack:
    """Build an attack from its name: ``create("alie")``, ``create("ipm(epsilon=0.5)")``.

    ``aggregator`` (the deployed rule or chain) goes to the attacks that use it (``optimal``,
    ``optimal_alie``, ``optimal_ipm``, ``hidden_vulnerability``) and is ignored by the others;
    other keywords must be parameters of the attack. ``name(k=v)`` also sets parameters,
    e.g. ``create("optimal(base='ipm')", aggregator=agg)``. Names: see ``REGISTRY``; "none"
    (no attack) is handled by the simulator.
    """
    if not isinstance(spec, str):
        raise TypeError(f"attack spec must be a str, got {type(spec).__name__}")
    if spec.strip().lower() == "none":
        raise ValueError(
            "attack 'none' means no Byzantine workers; it is handled by the simulator, "
            f"not built here; known attacks: {', '.join(sorted(REGISTRY))}"
        )
    attack = build_component(REGISTRY, "attack", spec, {**params, "aggregator": aggregator})
    accepted = set(inspect.signature(type(attack)).parameters)
    unused = set(params) - accepted
    if unused:
        raise ValueError(
            f"attack {spec!r} has no parameter {sorted(unused)}; "
            f"its parameters are {sorted(accepted) or 'none'}"
        )
    return attack


__all__ = [
    "ADAPTIVE",
    "ALittleIsEnough",
    "AntiMajority",
    "Attack",
    "BudgetedLabelFlipping",
    "DataAttack",
    "GRADIENT_ATTACKS",
    "GradientInversion",
    "DATA_ATTACKS",
    "Gaussian",
    "HiddenVulnerability",
    "Inf",
    "InnerProductManipulation",
    "LabelFlipping",
    "LargeNorm",
    "LinearAttack",
    "Mimic",
    "NaN",
    "Optimal",
    "OptimalALIE",
    "OptimalIPM",
    "REGISTRY",
    "SignFlipping",
    "alie_z_max",
    "create",
]
