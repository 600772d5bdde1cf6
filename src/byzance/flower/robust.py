"""The robust aggregation both Flower strategies share (no Flower import).

``RobustAggregation`` turns one round's replies into the next global model:

1. every reply is checked on its own (``byzance.flower.replies.check_reply``); a bad one is
   rejected and counted with its reason, the round goes on;
2. Byzantine switch (experiments): the replies of the nodes chosen Byzantine are replaced by
   the vectors a byzance gradient attack forges from the honest updates of the round (the
   omniscient, colluding adversary of our threat model; ``byzance.round.Adversary``);
3. the updates ``u_i = w_i - w`` (client model minus global model, floating arrays
   flattened) go through the byzance rule or chain, with its state across rounds
   (``byzance.round.RuleState``): ``w <- w + F(u_1, ..., u_m)``.

Clients' ``num-examples`` weights are not used by the rule (a Byzantine client could claim
any weight); they still weight the clients' own metrics.

A round where the rule cannot run on the m valid replies (``rule.check(m)``, e.g. Krum needs
m >= 2f + 3) follows ``on_too_few``: ``"skip"`` (default) keeps the global model and reports
``byzance-skipped = 1``; ``"raise"`` stops the run with a ``RuntimeError``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from byzance.flower.replies import (
    REASONS,
    Arrays,
    check_reply,
    flatten_updates,
    reason_kind,
    unflatten_into,
)
from byzance.validation import Integer, OneOf, check_param

ON_TOO_FEW = ("skip", "raise")


@dataclass
class RoundOutcome:
    """One round: the new global arrays (None: the round was skipped), the metrics to report
    and the rejected replies ``{"round", "node", "reason"}``."""

    arrays: dict[str, np.ndarray] | None
    metrics: dict[str, int | float]
    rejected: list[dict[str, Any]] = field(default_factory=list)
    accepted: list[int] = field(default_factory=list)


class RobustAggregation:
    """A byzance rule (by name) applied to Flower updates; see the module docstring.

    ``aggregator``: a rule or chain by name, with parameters in the name if needed
    (``"nnm+trimmed_mean"``, ``"centered_clipping(tau=0.1)"``); ``f``: the number of Byzantine
    replies the rule tolerates; ``attack`` / ``byzantine_nodes``: the Byzantine switch (a
    gradient attack by name and how many nodes it controls; ``"none"``/0: off);
    ``on_too_few``: ``"skip"`` or ``"raise"``; ``seed``: the attack's randomness.
    """

    owner = "RobustAggregation"

    def __init__(
        self,
        aggregator: str = "trimmed_mean",
        f: int = 0,
        *,
        aggregator_params: Mapping[str, Any] | None = None,
        attack: str = "none",
        attack_params: Mapping[str, Any] | None = None,
        byzantine_nodes: int = 0,
        on_too_few: str = "skip",
        seed: int = 0,
    ) -> None:
        from byzance.aggregators import create
        from byzance.round.server import RuleState

        self.f = check_param(self.owner, "f", f, Integer(low=0))
        self.on_too_few = check_param(self.owner, "on_too_few", on_too_few, OneOf(*ON_TOO_FEW))
        self.byzantine_nodes = check_param(
            self.owner, "byzantine_nodes", byzantine_nodes, Integer(low=0)
        )
        self.seed = check_param(self.owner, "seed", seed, Integer())
        self.spec = aggregator
        self.rule = create(aggregator, f=self.f, **dict(aggregator_params or {}))
        self.state = RuleState(self.rule)
        self.adversary = self._make_adversary(attack, dict(attack_params or {}))
        self.attack = attack
        self.byzantine: set[Any] | None = None  # chosen at the first round
        self.rejections: list[dict[str, Any]] = []  # every rejection of the run

    def _make_adversary(self, attack: str, params: dict[str, Any]) -> Any:
        from byzance.attacks import DataAttack, create
        from byzance.round.adversary import Adversary

        off = attack.strip().lower() == "none"
        if off != (self.byzantine_nodes == 0):
            raise ValueError(
                f"{self.owner}: attack and byzantine_nodes go together (an attack needs "
                f"byzantine_nodes >= 1, none needs 0), got attack={attack!r}, "
                f"byzantine_nodes={self.byzantine_nodes}"
            )
        if off:
            return None
        forged = create(attack, aggregator=self.rule, **params)
        if isinstance(forged, DataAttack):
            raise ValueError(
                f"{self.owner}.attack: {attack!r} poisons data, it runs on the clients: use "
                "byzance.flower.label_flipping_mod in the ClientApp instead"
            )
        return Adversary(forged, self.byzantine_nodes, self.seed, name=attack)

    # ------------------------------------------------------------------ before a round
    def check_sample(self, sampled: int, who: str = "RobustFedAvg") -> None:
        """Refuse a rule that cannot run on ``sampled`` replies (before the first round)."""
        try:
            self.rule.check(sampled)
        except ValueError as exc:
            raise ValueError(
                f"{who}: aggregator {self.spec!r} with f={self.f} cannot run on the {sampled} "
                f"nodes sampled each round: {exc}"
            ) from None
        if self.byzantine_nodes > sampled:
            raise ValueError(
                f"{who}.byzantine_nodes: expected at most the {sampled} nodes sampled each "
                f"round, got {self.byzantine_nodes}"
            )

    def choose_byzantine(self, nodes: Iterable[Any]) -> set[Any]:
        """The Byzantine nodes: the ``byzantine_nodes`` smallest ids, chosen once."""
        if self.byzantine is None:
            self.byzantine = set(sorted(nodes)[: self.byzantine_nodes])
        return self.byzantine

    # ------------------------------------------------------------------ one round
    def aggregate(
        self,
        server_round: int,
        reference: Arrays,
        replies: Sequence[tuple[Any, Arrays | None, str | None]],
    ) -> RoundOutcome:
        """The round's outcome from ``replies`` = ``(node, arrays, error)``: ``arrays`` None
        with ``error`` set for a failed client (see the module docstring)."""
        counts = dict.fromkeys(REASONS, 0)
        rejected: list[dict[str, Any]] = []
        honest: list[Arrays] = []
        honest_nodes: list[Any] = []
        byzantine = self.byzantine or set()
        n_byz = 0
        for node, arrays, error in replies:
            if node in byzantine:
                n_byz += 1  # forged below, whatever the node sent
                continue
            reason = error if arrays is None else check_reply(arrays, reference)
            if arrays is None and reason is None:
                reason = "error: no content"
            if reason is not None:
                kind = reason_kind(reason)
                counts[kind if kind in counts else "error"] += 1
                rejected.append({"round": server_round, "node": node, "reason": reason})
                continue
            honest.append(arrays)  # type: ignore[arg-type]
            honest_nodes.append(node)
        self.rejections.extend(rejected)
        metrics: dict[str, int | float] = {
            "byzance-accepted": len(honest) + n_byz,
            "byzance-rejected": len(rejected),
            "byzance-byzantine": n_byz,
        }
        metrics.update({f"byzance-rejected-{k}": v for k, v in counts.items()})
        m = len(honest) + n_byz
        try:
            if not honest:
                raise ValueError(f"no valid honest reply among {len(replies)}")
            self.rule.check(m)
        except ValueError as exc:
            if self.on_too_few == "raise":
                raise RuntimeError(
                    f"{self.owner}: round {server_round}: too few valid replies ({m} of "
                    f"{len(replies)}; rejected: {[r['reason'] for r in rejected]}): {exc}"
                ) from None
            metrics.update({"byzance-skipped": 1, "byzance-update-norm": 0.0})
            return RoundOutcome(None, metrics, rejected, honest_nodes)
        updates = flatten_updates(honest, reference)
        if n_byz:
            self.adversary.f = n_byz
            updates = torch.cat([updates, self.adversary.forge(updates)])
        agg = self.state.aggregate(updates)
        norm = float(torch.linalg.vector_norm(agg))
        metrics.update({"byzance-skipped": 0, "byzance-update-norm": norm})
        if not math.isfinite(norm):  # never install a non-finite model
            if self.on_too_few == "raise":
                raise RuntimeError(f"{self.owner}: round {server_round}: non-finite aggregate")
            metrics.update({"byzance-skipped": 1, "byzance-update-norm": 0.0})
            return RoundOutcome(None, metrics, rejected, honest_nodes)
        return RoundOutcome(unflatten_into(agg, reference), metrics, rejected, honest_nodes)


class RobustStrategy:
    """What both Flower strategies share (``RobustFedAvg`` for the Message API,
    ``LegacyRobustFedAvg`` for the legacy one): the byzance settings, passed to
    ``RobustAggregation``, then every other keyword to Flower's ``FedAvg`` (the next class in
    the strategy's bases)."""

    def __init__(
        self,
        aggregator: str = "trimmed_mean",
        f: int = 0,
        *,
        aggregator_params: Mapping[str, Any] | None = None,
        attack: str = "none",
        attack_params: Mapping[str, Any] | None = None,
        byzantine_nodes: int = 0,
        on_too_few: str = "skip",
        seed: int = 0,
        **fedavg: Any,
    ) -> None:
        super().__init__(**fedavg)
        self.robust = RobustAggregation(
            aggregator,
            f,
            aggregator_params=aggregator_params,
            attack=attack,
            attack_params=attack_params,
            byzantine_nodes=byzantine_nodes,
            on_too_few=on_too_few,
            seed=seed,
        )
        self.robust.owner = type(self).__name__
        self._reference: dict[str, np.ndarray] | None = None

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any], **overrides: Any) -> Any:
        """Build from a Flower run config (``context.run_config``): the ``byzance-*`` keys
        (see ``byzance.flower.run_config.KEYS``); ``overrides`` win (e.g. ``FedAvg``'s own
        ``fraction_train=0.5``)."""
        from byzance.flower.run_config import strategy_kwargs

        return cls(**{**strategy_kwargs(run_config), **overrides})

    @property
    def rejections(self) -> list[dict[str, Any]]:
        """Every rejected reply of the run: ``{"round", "node", "reason"}``."""
        return self.robust.rejections
