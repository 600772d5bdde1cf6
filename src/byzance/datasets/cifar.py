"""CIFAR-10 (Krizhevsky 2009) from the original "python version" pickle batches.

Layout: ``cifar-10-batches-py/data_batch_1`` .. ``data_batch_5`` and ``test_batch``, each a
pickled dict with ``b"data"`` (uint8, shape (10000, 3072): row-major 32x32 planes of red,
then green, then blue) and ``b"labels"`` (10000 ints in [0, 10)). The archive
``cifar-10-python.tar.gz`` is accepted as well and read without extracting it.

Pickles can run code when loaded, so (1) each batch's MD5 is checked against the published
value *before* it is unpickled (cached by a stamp, see ``download.py``), and (2) unpickling
only allows the numpy globals needed to rebuild arrays.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from byzance.datasets.download import (
    candidate_dirs,
    check_data_dir,
    digest,
    download,
    is_verified,
    mark_verified,
    resolve_root,
)
from byzance.datasets.errors import ChecksumError, DatasetError, DatasetNotFoundError

FOLDER = "cifar-10-batches-py"
ARCHIVE = "cifar-10-python.tar.gz"
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
MIRRORS: tuple[str, ...] = ("https://www.cs.toronto.edu/~kriz",)

#: MD5 of each (uncompressed) batch file, as published with the dataset's loaders
BATCH_MD5: dict[str, str] = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES = ("test_batch",)
#: images per batch file, and an upper bound on a batch file's size (about 31 MB each): a
#: larger file is refused before it is read
BATCH_IMAGES = 10000
MAX_BATCH_BYTES = 64 << 20

#: per-channel mean and standard deviation of the training pixels in [0, 1]
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # how Python 3 writes bytes at protocol 2
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays and nothing else (no arbitrary code)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        return super().find_class(module, name)


def parse_batch(data: bytes, path: Path | str = "<bytes>") -> tuple[np.ndarray, np.ndarray]:
    """Decode one pickled batch into ``(images uint8 (N, 3, 32, 32), labels int64 (N,))``."""
    try:
        batch = _ArrayUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as e:  # any unpickling failure means a damaged or foreign file
        msg = f"{path} is not a CIFAR-10 pickle batch ({type(e).__name__}: {e})"
        raise DatasetError(msg) from e
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise DatasetError(f"{path}: expected a dict with b'data' and b'labels', got {keys}")
    images = np.asarray(batch[b"data"])
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if images.dtype != np.uint8 or images.ndim != 2 or images.shape[1] != 3072:
        raise DatasetError(
            f"{path}: b'data' is {images.dtype} of shape {images.shape}, expected uint8 (N, 3072)"
        )
    if labels.shape != (images.shape[0],):
        raise DatasetError(f"{path}: {labels.shape[0]} labels for {images.shape[0]} images")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DatasetError(f"{path}: labels outside [0, 10): {labels.min()}..{labels.max()}")
    return images.reshape(-1, 3, 32, 32), labels


def read_batch(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read one batch file (no checksum; see :func:`parse_batch`)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise DatasetNotFoundError(f"cannot read CIFAR-10 batch {p}: {e}") from e
    return parse_batch(data, p)


def _check_md5(data: bytes, name: str, where: Path | str) -> None:
    got = digest(data, "md5")
    if got != BATCH_MD5[name]:
        raise ChecksumError(
            f"CIFAR-10 batch {name} in {where} is corrupted: MD5 {got}, expected "
            f"{BATCH_MD5[name]}; delete it and download it again"
        )


def _too_large(where: Path | str, size: int) -> DatasetError:
    return DatasetError(
        f"{where} is not a CIFAR-10 batch: {size} bytes, more than the {MAX_BATCH_BYTES} a "
        "batch can hold (wrong or damaged file)"
    )


def _verified_batch(folder: Path, name: str, read: bool = True) -> bytes | None:
    """The bytes of batch ``name`` in ``folder``, checked against its MD5 unless a stamp says
    the file was already (``None`` then if not ``read``)."""
    path = folder / name
    key = f"md5:{BATCH_MD5[name]}"
    try:
        size = path.stat().st_size
        if size > MAX_BATCH_BYTES:
            raise _too_large(path, size)
        if not read and is_verified(path, key):
            return None
        data = path.read_bytes()
    except OSError as e:
        raise DatasetNotFoundError(f"cannot read CIFAR-10 batch {path}: {e}") from e
    if not is_verified(path, key):
        _check_md5(data, name, path)
        mark_verified(path, key)
    return data


def _from_folder(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for name in (*TRAIN_BATCHES, *TEST_BATCHES):
        data = _verified_batch(folder, name)
        assert data is not None
        out[name] = parse_batch(data, folder / name)
    return out


def _archive_key() -> str:
    return "md5-members:" + ",".join(BATCH_MD5[n] for n in (*TRAIN_BATCHES, *TEST_BATCHES))


def _from_archive(archive: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    key = _archive_key()
    trusted = is_verified(archive, key)
    out = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for name in (*TRAIN_BATCHES, *TEST_BATCHES):
                try:
                    info = tar.getmember(f"{FOLDER}/{name}")
                except KeyError:
                    raise DatasetError(
                        f"CIFAR-10 archive {archive} has no member {FOLDER}/{name}"
                    ) from None
                if info.size > MAX_BATCH_BYTES:
                    raise _too_large(f"{archive}:{FOLDER}/{name}", info.size)
                member = tar.extractfile(info)
                if member is None:
                    raise DatasetError(f"{archive}: {FOLDER}/{name} is not a regular file")
                data = member.read()
                if not trusted:
                    _check_md5(data, name, archive)
                out[name] = parse_batch(data, f"{archive}:{FOLDER}/{name}")
    except (tarfile.TarError, KeyError, EOFError, OSError) as e:
        raise DatasetError(f"CIFAR-10 archive {archive} is truncated or corrupted: {e}") from e
    if not trusted:
        mark_verified(archive, key)
    return out


def _locations(data_dir: str | os.PathLike[str] | None) -> list[Path]:
    locs: list[Path] = []
    for d in candidate_dirs("cifar10", data_dir):
        locs += [d / FOLDER, d, d / ARCHIVE]
    return locs


def _missing_message(locs: list[Path]) -> str:
    head = f"cifar10: no complete {FOLDER}/ folder (data_batch_1..5, test_batch) or {ARCHIVE}."
    partial = [
        (loc, [n for n in BATCH_MD5 if not (loc / n).is_file()])
        for loc in locs
        if loc.name != ARCHIVE and loc.is_dir()
    ]
    partial = [(loc, missing) for loc, missing in partial if len(missing) < len(BATCH_MD5)]
    if partial:  # name exactly what the most complete folder lacks
        loc, missing = min(partial, key=lambda p: len(p[1]))
        head = f"cifar10: {loc} lacks {', '.join(missing)} (and there is no {ARCHIVE})."
    return "\n".join(
        [
            head,
            "Looked in:",
            *(f"  {p}" for p in locs),
            "To get it:",
            "  - byzance.datasets.load_dataset('cifar10', download=True) downloads it "
            f"(needs internet; {MIRRORS[0]}/{ARCHIVE}, 163 MiB);",
            "  - or put the folder or archive in one of the places above, or point "
            "BYZANCE_DATA_DIR (or data_dir=) at it",
        ]
    )


def _check_archive(tmp: Path) -> None:
    got = digest(tmp.read_bytes(), "md5")
    if got != ARCHIVE_MD5:
        raise ChecksumError(f"downloaded {ARCHIVE} has MD5 {got}, expected {ARCHIVE_MD5}")


def _find(locs: list[Path]) -> Path | None:
    """The first complete batch folder or archive among ``locs``."""
    for loc in locs:
        if loc.is_dir() and all((loc / n).is_file() for n in BATCH_MD5):
            return loc
        if loc.name == ARCHIVE and loc.is_file():
            return loc
    return None


def verify_cifar10_files(data_dir: str | os.PathLike[str] | None) -> Path | None:
    """Check the files a load would read against their MD5s (skipped where a stamp says they
    were, so cheap after the first time), without decoding them; returns the folder or archive
    found (``None``: nothing found, a load would download it)."""
    check_data_dir(data_dir)
    found = _find(_locations(data_dir))
    if found is None:
        return None
    if found.is_dir():
        for name in BATCH_MD5:
            _verified_batch(found, name, read=False)
    elif not is_verified(found, _archive_key()):
        _from_archive(found)
    return found


def load_cifar10(
    data_dir: str | os.PathLike[str] | None, download_missing: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Load ``(x_train, y_train, x_test, y_test)``, images normalised, shape (N, 3, 32, 32)."""
    check_data_dir(data_dir)
    locs = _locations(data_dir)
    found = _find(locs)
    batches = None
    if found is not None:
        batches = _from_folder(found) if found.is_dir() else _from_archive(found)
    if batches is None:
        if not download_missing:
            raise DatasetNotFoundError(_missing_message(locs))
        target = resolve_root(data_dir) / "cifar10"
        try:
            path = download(ARCHIVE, MIRRORS, target, _check_archive)
        except DatasetNotFoundError as e:
            raise DatasetNotFoundError(f"{e}\n{_missing_message(locs)}") from e
        batches = _from_archive(path)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)

    def stack(names: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(np.concatenate([batches[n][0] for n in names]).astype(np.float32))
        x.div_(255.0).sub_(mean).div_(std)
        y = torch.from_numpy(np.concatenate([batches[n][1] for n in names]))
        return x, y

    x_train, y_train = stack(TRAIN_BATCHES)
    x_test, y_test = stack(TEST_BATCHES)
    return x_train, y_train, x_test, y_test
