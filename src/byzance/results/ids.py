"""Run ids: the one definition (``run_id``)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

#: config keys that say where a run executes, not what it computes, left out of its id (a grid
#: started on a GPU machine resumes on a CPU one; the recorded config keeps the device used)
ID_EXCLUDED_KEYS = frozenset({"data_dir", "device"})


def canonical(config: Mapping[str, Any]) -> str:
    return json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)


def run_id(
    config: Mapping[str, Any], engine: str = "sim", id_fields: Mapping[str, Any] | None = None
) -> str:
    """Stable id of a run, the one definition: a hash of its config, its engine and the
    engine options that change the result (``id_fields``, from ``Engine.id_fields``).

    Left out: where the data and the computation are (``data_dir``, ``device``), and the
    settings of protocols not in use (``byzance.protocols.id_config``). The same config gives
    the same id in every process and session, which is what lets a grid resume; the simulator
    (``engine="sim"``) and another engine get different ids.
    """
    from byzance.protocols import id_config

    kept = {k: v for k, v in id_config(config).items() if k not in ID_EXCLUDED_KEYS}
    kept.update(id_fields or {})
    text = canonical(kept) if engine == "sim" else canonical({"config": kept, "engine": engine})
    return hashlib.sha256(text.encode()).hexdigest()[:16]
