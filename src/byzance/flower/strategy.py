"""``RobustFedAvg``: byzance's rules as a strategy of Flower's Message API
(``flwr.serverapp.strategy``).

A subclass of Flower's ``FedAvg`` that keeps its parameters (``fraction_train``,
``min_train_nodes``, ``weighted_by_key``, ``arrayrecord_key``, ...) and its sampling, and
replaces the aggregation of the models by ``byzance.flower.robust.RobustAggregation``:

* each reply is checked on its own (keys, shapes, dtypes, finite values, client errors); a
  bad reply is rejected and counted, never stops the run (Flower's ``FedAvg`` raises
  ``InconsistentMessageReplies`` for the whole round when one reply has other keys);
* the rule is checked against the number of nodes sampled before the first message is sent;
* the train ``MetricRecord`` of each round carries ``byzance-accepted``, ``byzance-rejected``,
  ``byzance-rejected-<kind>`` (kinds: ``byzance.flower.replies.REASONS``),
  ``byzance-byzantine``, ``byzance-skipped`` and ``byzance-update-norm`` (the norm of the
  aggregated update), next to the clients' metrics averaged over the accepted replies;
  ``strategy.rejections`` lists every rejection with its node and full reason.

``RobustFedAvg.from_run_config(context.run_config)`` reads the ``byzance-*`` keys of
``[tool.flwr.app.config]`` (``byzance.flower.run_config``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from byzance.flower.replies import short_reason
from byzance.flower.robust import RobustStrategy


class RobustFedAvg(RobustStrategy, FedAvg):
    """Flower's ``FedAvg`` with a byzance rule on the updates (see the module docstring).

    ``aggregator``, ``f``, ``aggregator_params``, ``attack``, ``attack_params``,
    ``byzantine_nodes``, ``on_too_few``, ``seed``: as ``RobustAggregation``; every other
    keyword goes to ``FedAvg``.
    """

    def summary(self) -> None:
        super().summary()
        from logging import INFO

        from flwr.supercore import log

        r = self.robust
        log(INFO, "\t└──> byzance: %r, f=%d, attack=%s on %d node(s), on_too_few=%s",
            r.rule, r.f, r.attack, r.byzantine_nodes, r.on_too_few)  # fmt: skip

    # ------------------------------------------------------------------ train
    def sample_size(self, connected: int) -> int:
        """How many nodes ``FedAvg.configure_train`` samples out of ``connected``."""
        return max(int(connected * self.fraction_train), self.min_train_nodes)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """``FedAvg.configure_train``, after checking the rule on the sample size (a rule that
        cannot run is refused here, before any message is sent)."""
        if self.fraction_train == 0.0:
            return []
        nodes = list(grid.get_node_ids())
        self.robust.check_sample(self.sample_size(len(nodes)), type(self).__name__)
        self.robust.choose_byzantine(nodes)
        self._reference = {k: v.numpy() for k, v in arrays.items()}
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The robust aggregate of the round's replies and the round's metrics."""
        replies = list(replies)
        if not replies and self._reference is None:  # no training configured (fraction 0)
            return None, None
        if self._reference is None:
            raise RuntimeError(f"{type(self).__name__}: aggregate_train before configure_train")
        rows: list[tuple[Any, dict[str, np.ndarray] | None, str | None]] = []
        contents: dict[Any, RecordDict] = {}
        for msg in replies:
            node = msg.metadata.src_node_id
            arrays, error = self._arrays_of(msg)
            rows.append((node, arrays, error))
            if arrays is not None:
                contents[node] = msg.content
        out = self.robust.aggregate(server_round, self._reference, rows)
        metrics = MetricRecord(dict(out.metrics))
        clients = [contents[n] for n in out.accepted if n in contents]
        if clients:
            try:
                metrics.update(self.train_metrics_aggr_fn(clients, self.weighted_by_key))
            except Exception:  # noqa: BLE001 - clients' own metrics are optional
                pass
        if out.arrays is None:
            return None, metrics
        record = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in out.arrays.items()})
        return record, metrics

    def _arrays_of(self, msg: Message) -> tuple[dict[str, np.ndarray] | None, str | None]:
        """(arrays, None) or (None, the reason the reply has no usable model)."""
        if msg.has_error():
            return None, "error: " + short_reason(msg.error.reason)
        content = msg.content
        record = content.array_records.get(self.arrayrecord_key)
        if record is None:
            if len(content.array_records) != 1:
                return None, (
                    f"structure: expected an ArrayRecord under {self.arrayrecord_key!r}, "
                    f"got {sorted(content.array_records)}"
                )
            record = next(iter(content.array_records.values()))
        try:
            return {k: v.numpy() for k, v in record.items()}, None
        except Exception as exc:  # noqa: BLE001 - a corrupt array is a rejected reply
            return None, f"structure: cannot read the arrays ({exc})"
