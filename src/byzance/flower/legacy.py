"""``LegacyRobustFedAvg``: byzance's rules for Flower's legacy strategy API
(``flwr.server.strategy``, ``aggregate_fit(server_round, results, failures)``).

A subclass of the legacy ``FedAvg`` (keeps ``fraction_fit``, ``min_fit_clients``,
``on_fit_config_fn``, ``evaluate_fn``, ``fit_metrics_aggregation_fn``, ...) aggregating the
updates with ``byzance.flower.robust.RobustAggregation``, as ``RobustFedAvg`` does for the
Message API. The arrays of a ``Parameters`` are keyed ``"0", "1", ...`` in their order;
``failures`` (exceptions or failed ``FitRes``) are counted as ``error`` rejections; the
returned metrics carry the same ``byzance-*`` counts.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.common import (
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg

from byzance.flower.replies import short_reason
from byzance.flower.robust import RobustStrategy


def _keyed(arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
    return {str(i): a for i, a in enumerate(arrays)}


class LegacyRobustFedAvg(RobustStrategy, FedAvg):
    """The legacy ``FedAvg`` with a byzance rule on the updates (see the module docstring).

    Byzantine switch: the nodes are the clients' ``cid``s (the ``byzantine_nodes`` smallest).
    """

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.robust.rule!r}, f={self.robust.f})"

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        """The legacy ``configure_fit``, after checking the rule on the sample size."""
        sample_size, _ = self.num_fit_clients(client_manager.num_available())
        self.robust.check_sample(sample_size, type(self).__name__)
        self.robust.choose_byzantine(client_manager.all())
        self._reference = _keyed(parameters_to_ndarrays(parameters))
        return super().configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """The robust aggregate of ``results``; ``failures`` are counted as errors."""
        if self._reference is None:
            raise RuntimeError(f"{type(self).__name__}: aggregate_fit before configure_fit")
        rows: list[tuple[Any, dict[str, np.ndarray] | None, str | None]] = []
        for i, failure in enumerate(failures):
            if isinstance(failure, BaseException):
                rows.append((f"failure-{i}", None, "error: " + short_reason(repr(failure))))
            else:
                proxy, res = failure
                rows.append((proxy.cid, None, "error: " + short_reason(res.status.message)))
        by_cid: dict[Any, FitRes] = {}
        for proxy, res in results:
            try:
                arrays = _keyed(parameters_to_ndarrays(res.parameters))
            except Exception as exc:  # noqa: BLE001 - a corrupt payload is a rejected reply
                rows.append((proxy.cid, None, f"structure: cannot read the arrays ({exc})"))
                continue
            rows.append((proxy.cid, arrays, None))
            by_cid[proxy.cid] = res
        out = self.robust.aggregate(server_round, self._reference, rows)
        metrics: dict[str, Scalar] = dict(out.metrics)
        accepted = [by_cid[c] for c in out.accepted if c in by_cid]
        if self.fit_metrics_aggregation_fn is not None and accepted:
            metrics.update(
                self.fit_metrics_aggregation_fn([(r.num_examples, r.metrics) for r in accepted])
            )
        if out.arrays is None:
            return None, metrics
        ordered = [out.arrays[str(i)] for i in range(len(out.arrays))]
        return ndarrays_to_parameters(ordered), metrics
