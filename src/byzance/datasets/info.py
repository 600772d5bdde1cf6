"""What a dataset is before any of it is loaded, and a cheap look at its files.

:func:`dataset_info` gives a built-in dataset's input shape, number of classes and split
sizes from what the readers declare (no file is read: the readers refuse files that do not
match these declarations, so they are exact). :func:`check_files` checks the files a load
would read (the data directory exists; IDX headers and sizes; content checksums, once per file
version thanks to the verification stamps), so that ``ExperimentConfig.validate`` reports a
wrong data dir or a damaged file before any run starts. Missing files are not an error there:
a load downloads them.
"""

from __future__ import annotations

import functools
import gzip
import inspect
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from byzance.datasets.base import canonical_name
from byzance.datasets.builtin import digits_split_sizes, make_synthetic
from byzance.datasets.cifar import (
    ARCHIVE,
    BATCH_IMAGES,
    BATCH_MD5,
    FOLDER,
    TEST_BATCHES,
    TRAIN_BATCHES,
    verify_cifar10_files,
)
from byzance.datasets.download import (
    candidate_dirs,
    check_data_dir,
    is_verified,
    open_content,
    verify_content,
)
from byzance.datasets.errors import DatasetError
from byzance.datasets.idx import IDX_DATASETS, IdxFile, find_idx_files

#: the datasets read from files (a data directory matters to them only)
FILE_DATASETS = ("mnist", "fashion-mnist", "cifar10")


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset's declared shape and sizes (``Dataset`` has the same fields, loaded)."""

    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    num_train: int
    num_test: int

    @property
    def reads_files(self) -> bool:
        return self.name in FILE_DATASETS


def dataset_info(name: str, **options: Any) -> DatasetInfo:
    """The declared :class:`DatasetInfo` of dataset ``name`` (``options``: as for
    ``load_dataset``, only for ``"synthetic"``). Unknown names raise ``DatasetError``."""
    key = canonical_name(name)
    if options and key != "synthetic":
        raise DatasetError(f"dataset_info({key!r}) takes no options, got {sorted(options)}")
    if key == "digits":
        n_train, n_test = digits_split_sizes()
        return DatasetInfo(key, (64,), 10, n_train, n_test)
    if key == "synthetic":
        params = inspect.signature(make_synthetic).parameters
        unknown = sorted(set(options) - set(params))
        if unknown:
            raise DatasetError(f"dataset_info('synthetic'): unknown option(s) {unknown}")
        value = {k: options.get(k, p.default) for k, p in params.items()}
        return DatasetInfo(
            key, (value["dim"],), value["num_classes"], value["n_train"], value["n_test"]
        )
    if key == "cifar10":
        n_train, n_test = BATCH_IMAGES * len(TRAIN_BATCHES), BATCH_IMAGES * len(TEST_BATCHES)
        return DatasetInfo(key, (3, 32, 32), 10, n_train, n_test)
    info = IDX_DATASETS[key]
    train_images, _, test_images, _ = info.files
    return DatasetInfo(
        key,
        (1, *train_images.shape[1:]),
        info.num_classes,
        train_images.shape[0],
        test_images.shape[0],
    )


def check_files(name: str, data_dir: str | os.PathLike[str] | None = None) -> None:
    """Cheap checks of what loading dataset ``name`` would read; raises a ``DatasetError``
    naming the data dir or the file.

    The data dir the user named must exist (``DatasetNotFoundError``). For MNIST and
    Fashion-MNIST, when all four files are found, each file's IDX header must announce the
    expected type and shape and its (decompressed) size must match, then its content must
    match its checksum; for CIFAR-10 the batches (or archive) found must match their MD5s: a
    wrong, truncated, overlong or corrupted file is named here. Checksums are computed once
    per file version (a verification stamp, as the load does, which then skips them);
    everything is cached per process and file version (path, size, modification time).
    Missing files are left to the load (which downloads them).
    """
    key = canonical_name(name)
    if key not in FILE_DATASETS:
        return
    check_data_dir(data_dir)
    if key not in IDX_DATASETS:
        locs = [p for d in candidate_dirs(key, data_dir) for p in (d / FOLDER, d / ARCHIVE)]
        files = [p / n for p in locs for n in BATCH_MD5] + locs
        where = None if data_dir is None else str(data_dir)
        _check_cifar(where, os.environ.get("BYZANCE_DATA_DIR"), _versions(files))
        return
    info = IDX_DATASETS[key]
    paths = find_idx_files(info, data_dir)
    if paths is None:
        return
    for path, spec in zip(paths, info.files, strict=True):
        try:
            st = path.stat()
        except OSError as e:
            raise DatasetError(f"cannot read dataset file {path}: {e}") from e
        _check_idx_file(str(path), st.st_size, st.st_mtime_ns, spec)


def _versions(paths: list[Path]) -> tuple[tuple[str, int, int], ...]:
    """(path, size, mtime) of those of ``paths`` that are files: a cache key."""
    out = []
    for p in paths:
        try:
            st = p.stat()
        except OSError:
            continue
        if p.is_file():
            out.append((str(p), st.st_size, st.st_mtime_ns))
    return tuple(out)


@functools.lru_cache(maxsize=64)
def _check_cifar(data_dir: str | None, env: str | None, versions: tuple[Any, ...]) -> None:
    del env, versions  # part of the cache key only
    verify_cifar10_files(data_dir)


@functools.lru_cache(maxsize=256)
def _check_idx_file(path_str: str, size: int, mtime_ns: int, spec: IdxFile) -> None:
    del mtime_ns  # part of the cache key only
    path = Path(path_str)
    header_len = 4 + 4 * len(spec.shape)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                header = fh.read(header_len)
            with open(path, "rb") as fh:  # the gzip trailer: decompressed size mod 2**32
                fh.seek(max(size - 4, 0))
                (isize,) = struct.unpack("<I", fh.read(4).rjust(4, b"\0"))
            full = spec.nbytes if isize == spec.nbytes % 2**32 else _gz_length(path, spec)
        else:
            with open(path, "rb") as fh:
                header = fh.read(header_len)
            full = size
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DatasetError(f"dataset file {path} is truncated or corrupted (gzip: {e})") from e
    except OSError as e:
        raise DatasetError(f"cannot read dataset file {path}: {e}") from e
    want = f"an IDX file of uint8, shape {spec.shape}"
    if len(header) < header_len or header[:4] != bytes([0, 0, 0x08, len(spec.shape)]):
        raise DatasetError(
            f"dataset file {path} is not {spec.name} ({want}): it starts with "
            f"{header[:4].hex() or '(nothing)'}"
        )
    dims = tuple(int(d) for d in np.frombuffer(header, dtype=">u4", offset=4))
    if dims != spec.shape:
        raise DatasetError(
            f"dataset file {path} is not {spec.name} ({want}): its header says shape {dims}"
        )
    if full != spec.nbytes:
        kind = "truncated" if full < spec.nbytes else "longer than its header says"
        raise DatasetError(
            f"dataset file {path} is {kind}: {full} bytes (decompressed), {spec.name} has "
            f"{spec.nbytes}"
        )
    if spec.content is not None and not is_verified(path, spec.content):
        verify_content(path, open_content(path, limit=spec.nbytes), spec.content)


def _gz_length(path: Path, spec: IdxFile) -> int:
    """The decompressed length of ``path`` (read up to one byte past the expected size)."""
    total = 0
    with gzip.open(path, "rb") as fh:
        while total <= spec.nbytes and (chunk := fh.read(1 << 20)):
            total += len(chunk)
    return total
