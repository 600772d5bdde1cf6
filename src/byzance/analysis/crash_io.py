"""A trained model on disk: what ``byzance run --save-model`` writes and ``byzance crash``
reads.

The file (``torch.save``) holds a plain dict: ``format`` (``"byzance-model"``), ``version``
(1), ``config`` (the run's ``ExperimentConfig`` as a dict), ``input_shape``, ``num_classes``
and the module's ``state_dict``. ``load_model`` rebuilds the model by name
(``byzance.models.create_model``) and reads the file with ``weights_only=True`` (no code runs
from it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

FORMAT, VERSION = "byzance-model", 1


def model_from_params(config: Any, params: torch.Tensor) -> tuple[nn.Module, tuple, int]:
    """The config's model with the flat parameters ``params`` (a run's ``RunResult.params``;
    for the decentralised protocol, one row per honest node: the first node's model)."""
    from byzance import datasets
    from byzance.models import create_model
    from byzance.round.flat_model import FlatModel

    info = datasets.dataset_info(config.dataset)
    shape, classes = tuple(info.input_shape), int(info.num_classes)
    model = create_model(config.model, shape, classes)
    flat = FlatModel(model)
    theta = params[0] if params.dim() == 2 else params
    if theta.numel() != flat.dim:
        raise ValueError(
            f"save_model: {theta.numel()} parameters do not fit model {config.model!r} "
            f"({flat.dim} parameters)"
        )
    flat.load_into_module(theta.detach().cpu())
    return model, shape, classes


def save_model(path: str | Path, config: Any, params: torch.Tensor) -> Path:
    """Write the trained model of a run (``config``, final flat ``params``) to ``path``."""
    model, shape, classes = model_from_params(config, params)
    path = Path(path)
    if path.parent and not path.parent.is_dir():
        raise ValueError(f"save_model: folder {str(path.parent)!r} does not exist")
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "config": config.to_dict(),
        "input_shape": list(shape),
        "num_classes": classes,
        "state_dict": model.state_dict(),
    }
    torch.save(payload, path)
    return path


def load_model(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """``(model, config dict)`` from a file written by ``save_model`` (model in eval mode)."""
    from byzance.models import create_model

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load_model: no file {str(path)!r}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # not a torch file, or one with code in it
        payload = None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(
            f"load_model: {str(path)!r} is not a byzance model file "
            "(written by byzance run --save-model)"
        )
    if payload.get("version") != VERSION:
        raise ValueError(f"load_model: unsupported version {payload.get('version')!r}")
    cfg = payload["config"]
    model = create_model(cfg["model"], tuple(payload["input_shape"]), payload["num_classes"])
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return model, cfg
