"""The ``Dataset`` container and :func:`load_dataset`."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch

from byzance.datasets.builtin import load_digits_tensors, make_synthetic
from byzance.datasets.cifar import load_cifar10
from byzance.datasets.errors import DatasetError
from byzance.datasets.idx import IDX_DATASETS, load_idx_dataset

#: canonical names, and accepted spellings
NAMES = ("digits", "synthetic", "mnist", "fashion-mnist", "cifar10")
ALIASES = {
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "fmnist": "fashion-mnist",
    "cifar-10": "cifar10",
    "cifar_10": "cifar10",
}


@dataclass
class Dataset:
    """A classification dataset held in memory as tensors.

    ``x_*`` are float32 and normalised, shape ``(N, *input_shape)``; ``y_*`` are int64 class
    indices in ``[0, num_classes)``, shape ``(N,)``.
    """

    name: str
    x_train: torch.Tensor = field(repr=False)
    y_train: torch.Tensor = field(repr=False)
    x_test: torch.Tensor = field(repr=False)
    y_test: torch.Tensor = field(repr=False)
    num_classes: int
    input_shape: tuple[int, ...]

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if tuple(x.shape[1:]) != tuple(self.input_shape) or y.shape != (x.shape[0],):
                raise DatasetError(
                    f"Dataset {self.name!r}: x_{split} has shape {tuple(x.shape)} and y_{split} "
                    f"{tuple(y.shape)}; expected (N, *{tuple(self.input_shape)}) and (N,)"
                )

    @property
    def num_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def num_test(self) -> int:
        return int(self.x_test.shape[0])


def canonical_name(name: str) -> str:
    """The canonical dataset name for ``name`` (case-insensitive, aliases accepted)."""
    key = name.strip().lower() if isinstance(name, str) else name
    key = ALIASES.get(key, key)
    if key not in NAMES:
        raise DatasetError(f"unknown dataset {name!r}; known datasets: {', '.join(NAMES)}")
    return key


def load_dataset(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    **options: Any,
) -> Dataset:
    """Load dataset ``name`` into memory (see the package docstring for where files are looked for).

    ``options`` are only accepted for ``"synthetic"`` (the arguments of
    :func:`byzance.datasets.builtin.make_synthetic`, e.g. ``seed=1``). With ``download=True``
    missing MNIST / Fashion-MNIST / CIFAR-10 files are downloaded into
    ``<data dir>/<name>/`` (MNIST-like files: next to the others if some are in the data dir
    itself) and verified first.

    Raises ``DatasetNotFoundError`` (a ``FileNotFoundError`` and ``ValueError``) when the data
    dir named (``data_dir`` or ``$BYZANCE_DATA_DIR``) does not exist (it is never created), or
    when files are missing, naming them and listing every place searched and how to get them
    (a failed download leaves no folder behind); ``ChecksumError`` when a
    file's content does not match its published checksum; ``DatasetError`` (a
    ``ValueError``) for unknown names, bad options and truncated or malformed files.
    """
    key = canonical_name(name)
    if options and key != "synthetic":
        raise DatasetError(
            f"load_dataset({key!r}) takes no options, got {sorted(options)}; options are only "
            "for 'synthetic'"
        )
    if key == "digits":
        tensors = load_digits_tensors()
        num_classes = 10
    elif key == "synthetic":
        try:
            tensors = make_synthetic(**options)
        except TypeError as e:
            raise DatasetError(f"load_dataset('synthetic'): {e}") from e
        num_classes = options.get("num_classes", 10)
    elif key == "cifar10":
        tensors = load_cifar10(data_dir, download)
        num_classes = 10
    else:
        info = IDX_DATASETS[key]
        tensors = load_idx_dataset(info, data_dir, download)
        num_classes = info.num_classes
    x_train, y_train, x_test, y_test = tensors
    return Dataset(
        name=key,
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=num_classes,
        input_shape=tuple(x_train.shape[1:]),
    )
