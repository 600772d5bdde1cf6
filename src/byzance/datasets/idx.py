"""IDX files (MNIST, Fashion-MNIST): reader and the MNIST-family loader.

IDX format (LeCun et al., http://yann.lecun.com/exdb/mnist/): two zero bytes, one byte for
the element type (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64),
one byte ``ndim``, then ``ndim`` big-endian uint32 dimensions, then the elements in row-major
order, big-endian. Files may be gzip-compressed (``.gz``) or not.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from byzance.datasets.download import (
    SYSTEM_DIRS,
    candidate_dirs,
    check_data_dir,
    digest,
    download,
    open_content,
    resolve_root,
    verify_content,
)
from byzance.datasets.errors import ChecksumError, DatasetError, DatasetNotFoundError

_IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def parse_idx(data: bytes, path: Path | str = "<bytes>") -> np.ndarray:
    """Decode the (decompressed) IDX bytes ``data``; ``path`` names the file in errors.

    Returns an array in native byte order (a read-only view of ``data`` for single-byte
    types). Raises ``DatasetError`` on a wrong magic number or a size that does not match
    the header (truncated file or trailing garbage).
    """
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise DatasetError(
            f"{path} is not an IDX file: bad magic number {data[:4].hex() or '(empty)'} "
            "(expected 0000 then a type byte in 08/09/0b/0c/0d/0e and a dimension count)"
        )
    dtype = _IDX_TYPES[data[2]]
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"{path} is truncated: {len(data)} bytes, header needs {header}")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        kind = "truncated" if len(data) < expected else "longer than its header says"
        raise DatasetError(
            f"{path} is {kind}: {len(data)} bytes, header (shape {dims}, {dtype.name}) "
            f"needs {expected}"
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    if dtype.itemsize > 1:
        arr = arr.astype(dtype.newbyteorder("="))
    return arr


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw) into a numpy array (see :func:`parse_idx`)."""
    p = Path(path)
    return parse_idx(open_content(p), p)


@dataclass(frozen=True)
class IdxFile:
    """One file of an IDX dataset: base name (no ``.gz``), shape, and published checksums."""

    name: str
    shape: tuple[int, ...]
    #: ``"sha256:<hex>"`` of the decompressed content, or None when none is published
    content: str | None
    #: MD5 of the original ``.gz`` as served by the mirrors (checked on download)
    archive_md5: str | None

    @property
    def nbytes(self) -> int:
        """Size of the decompressed file: the header, then one byte per (uint8) element."""
        return 4 + 4 * len(self.shape) + int(np.prod(self.shape, dtype=np.int64))


@dataclass(frozen=True)
class IdxDataset:
    """An MNIST-like dataset: four IDX files, mirrors and normalisation constants."""

    name: str
    files: tuple[IdxFile, IdxFile, IdxFile, IdxFile]  # train images/labels, test images/labels
    mirrors: tuple[str, ...]
    mean: float
    std: float
    num_classes: int = 10


def _mnist_files(
    content: tuple[str | None, ...], md5: tuple[str | None, ...]
) -> tuple[IdxFile, IdxFile, IdxFile, IdxFile]:
    names = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
    names += ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    shapes = ((60000, 28, 28), (60000,), (10000, 28, 28), (10000,))
    files = tuple(
        IdxFile(n, s, c, m) for n, s, c, m in zip(names, shapes, content, md5, strict=True)
    )
    return files  # type: ignore[return-value]


#: MNIST: downloads are checked against the MD5 of the original ``.gz`` files (the values
#: torchvision and others publish); local copies against the SHA-256 of the decompressed
#: content of those verified files (none is published; without it a damaged pixel, or
#: Fashion-MNIST files in the MNIST folder, would pass the structural checks).
#: Normalisation: mean 0.1307, std 0.3081 of the training pixels in [0, 1].
MNIST = IdxDataset(
    name="mnist",
    files=_mnist_files(
        (
            "sha256:ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "sha256:65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "sha256:0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "sha256:ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        ),
        (
            "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "d53e105ee54ea40749a09fcbcd1e9432",
            "9fb629c4189551a2d022fa330f9573f3",
            "ec29112dd5afa0611ce80d1b7f02629c",
        ),
    ),
    mirrors=(
        "https://ossci-datasets.s3.amazonaws.com/mnist",
        "http://yann.lecun.com/exdb/mnist",
    ),
    mean=0.1307,
    std=0.3081,
)

#: Fashion-MNIST (Xiao et al. 2017): SHA-256 of the decompressed files.
#: Normalisation: mean 0.2860, std 0.3530 of the training pixels in [0, 1].
FASHION_MNIST = IdxDataset(
    name="fashion-mnist",
    files=_mnist_files(
        (
            "sha256:c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "sha256:bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "sha256:5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "sha256:0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        ),
        (None, None, None, None),
    ),
    mirrors=(
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com",
        "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion",
    ),
    mean=0.2860,
    std=0.3530,
)

IDX_DATASETS: dict[str, IdxDataset] = {"mnist": MNIST, "fashion-mnist": FASHION_MNIST}


def _existing(directory: Path, base: str) -> Path | None:
    for candidate in (directory / base, directory / f"{base}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _checked_array(path: Path, spec: IdxFile, num_classes: int, stamp: bool = True) -> np.ndarray:
    content = open_content(path, limit=spec.nbytes)
    if stamp:
        verify_content(path, content, spec.content)
    elif spec.content is not None:
        algorithm, _, want = spec.content.partition(":")
        got = digest(content, algorithm)
        if got != want:
            raise ChecksumError(
                f"downloaded {spec.name} is corrupted: {algorithm} of its decompressed "
                f"content is {got}, expected {want}"
            )
    arr = parse_idx(content, path)
    if arr.shape != spec.shape or arr.dtype != np.uint8:
        raise DatasetError(
            f"{path} holds a {arr.dtype} array of shape {arr.shape}; expected uint8 of shape "
            f"{spec.shape} (wrong or damaged file)"
        )
    if len(spec.shape) == 1 and arr.size and int(arr.max()) >= num_classes:
        raise DatasetError(
            f"{path} holds label {int(arr.max())}, expected labels in [0, {num_classes})"
        )
    return arr


def _download_check(spec: IdxFile, num_classes: int):  # noqa: ANN202
    def check(tmp: Path) -> None:
        if spec.archive_md5 is not None:
            got = digest(tmp.read_bytes(), "md5")
            if got != spec.archive_md5:
                raise ChecksumError(
                    f"downloaded {spec.name}.gz has MD5 {got}, expected {spec.archive_md5}"
                )
        _checked_array(tmp, spec, num_classes, stamp=False)  # no stamp for a temporary name

    return check


def missing_files(info: IdxDataset, dirs: list[Path]) -> tuple[Path | None, list[str]]:
    """``(folder, missing)``: the candidate folder holding the most of the dataset's files
    (``None`` if none holds any) and the names of the files missing there (all of them when
    the folder is ``None``)."""
    best, best_missing = None, [f.name for f in info.files]
    for d in dirs:
        missing = [f.name for f in info.files if _existing(d, f.name) is None]
        if len(missing) < len(best_missing):
            best, best_missing = d, missing
    return best, best_missing


def missing_message(
    name: str,
    missing: list[str],
    dirs: list[Path],
    mirrors: tuple[str, ...],
    folder: Path | None = None,
) -> str:
    """The error text for missing files: what (and in which ``folder`` the others are),
    where it was looked for, how to get it."""
    what = f"missing file(s) {', '.join(missing)} (.gz or uncompressed)"
    if folder is not None:
        what = f"{what} in {folder}, which holds the other file(s)"
    lines = [
        f"{name}: {what}.",
        "Looked in:",
        *(f"  {d}" for d in dirs),
        "To get them:",
        f"  - byzance.datasets.load_dataset({name!r}, download=True) downloads them "
        f"(needs internet; mirrors: {', '.join(mirrors)});",
        "  - or copy the files into one of the folders above, or point BYZANCE_DATA_DIR "
        "(or data_dir=) at the folder holding them",
    ]
    if name in SYSTEM_DIRS:
        lines.append("  - or `apt-get install dataset-fashion-mnist` (Debian/Ubuntu)")
    return "\n".join(lines)


def find_idx_files(info: IdxDataset, data_dir: str | os.PathLike[str] | None) -> list[Path] | None:
    """Paths of the four files from the first candidate folder holding all of them."""
    for d in candidate_dirs(info.name, data_dir):
        paths = [_existing(d, f.name) for f in info.files]
        if all(p is not None for p in paths):
            return paths  # type: ignore[return-value]
    return None


def load_idx_dataset(
    info: IdxDataset, data_dir: str | os.PathLike[str] | None, download_missing: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Load ``(x_train, y_train, x_test, y_test)``: images normalised to (N, 1, 28, 28)."""
    check_data_dir(data_dir)
    paths = find_idx_files(info, data_dir)
    if paths is None:
        dirs = candidate_dirs(info.name, data_dir)
        root = resolve_root(data_dir)
        folder, missing = missing_files(info, dirs)
        # the missing files go next to the others when those are in the data dir, else to
        # <data dir>/<name>/
        target = folder if folder in (root / info.name, root) else root / info.name
        if not download_missing:
            raise DatasetNotFoundError(
                missing_message(info.name, missing, dirs, info.mirrors, folder)
            )
        for spec in info.files:
            if _existing(target, spec.name) is None:
                try:
                    download(
                        f"{spec.name}.gz",
                        info.mirrors,
                        target,
                        _download_check(spec, info.num_classes),
                    )
                except DatasetNotFoundError as e:
                    raise DatasetNotFoundError(
                        f"{e}\n" + missing_message(info.name, missing, dirs, info.mirrors, folder)
                    ) from e
        paths = [_existing(target, f.name) for f in info.files]  # type: ignore[misc]
    arrays = [
        _checked_array(p, s, info.num_classes) for p, s in zip(paths, info.files, strict=True)
    ]
    out = []
    for arr, spec in zip(arrays, info.files, strict=True):
        if len(spec.shape) == 3:
            x = torch.from_numpy(arr.astype(np.float32))
            x.mul_(1.0 / (255.0 * info.std)).sub_(info.mean / info.std)
            out.append(x.unsqueeze(1))
        else:
            out.append(torch.from_numpy(arr.astype(np.int64)))
    return out[0], out[1], out[2], out[3]
