"""Where dataset files live, how they are verified, and how they are downloaded.

Data directory resolution (first match wins):

1. the ``data_dir`` argument of :func:`byzance.datasets.load_dataset`;
2. the environment variable ``BYZANCE_DATA_DIR``;
3. ``~/.cache/byzance``.

Files are accepted directly in that directory or in ``<dir>/<dataset-name>/``. Fashion-MNIST
is also looked for in ``/usr/share/datasets/fashion-mnist`` (Debian package
``dataset-fashion-mnist``). Downloads go to ``<dir>/<dataset-name>/``. A data directory the user
names (``data_dir`` or ``BYZANCE_DATA_DIR``) must exist: it is never created; the
``<dataset-name>/`` sub-folder (and the default ``~/.cache/byzance``) is created only once a
download has succeeded, so a failed download leaves no folder behind.

Checksums are SHA-256 (or MD5 where only that is published) of the *decompressed* content,
so a recompressed copy of a ``.gz`` file still verifies. Hashing a large file on every load
is wasteful, so a successful verification leaves a small stamp (path, size, mtime, expected
digest) in ``$BYZANCE_CACHE_DIR/verified/`` (default ``~/.cache/byzance/verified/``); the
hash is recomputed only when the file changes. Stamps are an optimisation: when the cache
directory is not writable, files are simply re-hashed.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import shutil
import tempfile
import urllib.request
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

from byzance.datasets.errors import ChecksumError, DatasetError, DatasetNotFoundError

#: where the Debian package ``dataset-fashion-mnist`` installs the files
SYSTEM_DIRS: dict[str, tuple[Path, ...]] = {
    "fashion-mnist": (Path("/usr/share/datasets/fashion-mnist"),),
}

#: how long a download may stall before it is abandoned (seconds)
TIMEOUT = 60.0

#: opener used for downloads; tests replace it (e.g. with one serving ``file://`` URLs)
urlopen: Callable[..., object] = urllib.request.urlopen


def default_dir() -> Path:
    """``$BYZANCE_DATA_DIR`` if set, else ``~/.cache/byzance``."""
    env = os.environ.get("BYZANCE_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "byzance"


def resolve_root(data_dir: str | os.PathLike[str] | None) -> Path:
    """The data directory: ``data_dir`` if given, else :func:`default_dir`."""
    return Path(data_dir).expanduser() if data_dir is not None else default_dir()


def check_data_dir(data_dir: str | os.PathLike[str] | None) -> None:
    """Raise ``DatasetNotFoundError`` if the data directory the user named (``data_dir``, else
    ``$BYZANCE_DATA_DIR``) does not exist or is not a directory; the default is not checked."""
    if data_dir is not None:
        if not str(data_dir).strip():
            raise DatasetNotFoundError(
                "data dir is empty; leave it out for the default ($BYZANCE_DATA_DIR, else "
                "~/.cache/byzance)"
            )
        root, origin = Path(data_dir).expanduser(), ""
    elif os.environ.get("BYZANCE_DATA_DIR"):
        root, origin = default_dir(), " (from $BYZANCE_DATA_DIR)"
    else:
        return
    if not root.exists():
        raise DatasetNotFoundError(f"data dir {root}{origin} does not exist")
    if not root.is_dir():
        raise DatasetNotFoundError(f"data dir {root}{origin} is not a directory")


def candidate_dirs(name: str, data_dir: str | os.PathLike[str] | None) -> list[Path]:
    """Every directory searched for dataset ``name``, in order."""
    root = resolve_root(data_dir)
    dirs = [root / name, root, *SYSTEM_DIRS.get(name, ())]
    seen: list[Path] = []
    for d in dirs:
        if d not in seen:
            seen.append(d)
    return seen


def open_content(path: Path, limit: int | None = None) -> bytes:
    """The decompressed bytes of ``path`` (gzip if it ends in ``.gz``), with a clear error.

    With ``limit``, content longer than ``limit`` bytes is refused without reading it all
    (a wrong file, or a gzip bomb, never fills the memory).
    """
    too_long = DatasetError(
        f"dataset file {path} holds more than the {limit} bytes expected (wrong or damaged "
        "file); delete it and download it again"
    )
    try:
        if path.suffix != ".gz":
            if limit is not None and path.stat().st_size > limit:
                raise too_long
            return path.read_bytes()
        with gzip.open(path, "rb") as fh:
            data = fh.read(-1 if limit is None else limit + 1)
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DatasetError(
            f"dataset file {path} is truncated or corrupted (gzip: {e}); delete it and "
            "download it again"
        ) from e
    except OSError as e:
        raise DatasetNotFoundError(f"cannot read dataset file {path}: {e}") from e
    if limit is not None and len(data) > limit:
        raise too_long
    return data


def digest(data: bytes, algorithm: str) -> str:
    """Hex digest of ``data`` (``algorithm`` is ``"sha256"`` or ``"md5"``)."""
    return hashlib.new(algorithm, data, usedforsecurity=False).hexdigest()


def _stamp_dir() -> Path:
    env = os.environ.get("BYZANCE_CACHE_DIR")
    base = Path(env).expanduser() if env else Path.home() / ".cache" / "byzance"
    return base / "verified"


def _stamp_path(path: Path) -> Path:
    key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:32]
    return _stamp_dir() / f"{key}.json"


def _fingerprint(path: Path, expected: str) -> dict[str, object]:
    st = path.stat()
    return {
        "path": str(path.resolve()),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "expected": expected,
    }


def is_verified(path: Path, expected: str) -> bool:
    """True if ``path`` (unchanged since) was already verified against ``expected``."""
    try:
        stamp = json.loads(_stamp_path(path).read_text())
        return bool(stamp == _fingerprint(path, expected))
    except (OSError, ValueError):
        return False


def mark_verified(path: Path, expected: str) -> None:
    """Record that ``path`` matches ``expected`` (silently skipped if the cache is read-only)."""
    stamp = _stamp_path(path)
    with contextlib.suppress(OSError):
        stamp.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=stamp.parent, prefix=".stamp-")
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(_fingerprint(path, expected), fh)
            os.replace(tmp, stamp)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def verify_content(path: Path, content: bytes, expected: str | None) -> None:
    """Check ``content`` (the decompressed bytes of ``path``) against ``expected``.

    ``expected`` is ``"sha256:<hex>"`` or ``"md5:<hex>"``; ``None`` skips the check (the
    caller then relies on structural checks). Uses and updates the verification stamp.
    """
    if expected is None or is_verified(path, expected):
        return
    algorithm, _, want = expected.partition(":")
    got = digest(content, algorithm)
    if got != want:
        raise ChecksumError(
            f"dataset file {path} is corrupted: {algorithm} of its decompressed content is "
            f"{got}, expected {want}; delete it and download it again"
        )
    mark_verified(path, expected)


def download(
    filename: str,
    mirrors: Sequence[str],
    target_dir: Path,
    check: Callable[[Path], None],
) -> Path:
    """Download ``filename`` from the first working mirror into ``target_dir``.

    The file is written to a temporary file (in ``target_dir`` if it exists, else in its
    nearest existing parent, e.g. the data dir), checked with ``check(tmp)`` (which raises on
    a bad file), then moved there and atomically renamed: no half-written file is ever left
    under the final name. ``target_dir`` is created (with its parents, for the default data
    directory) only once a file has passed its check. Raises ``DatasetNotFoundError`` listing
    every mirror's error.
    """
    final = target_dir / filename
    errors: list[str] = []
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + filename
        # the temporary name keeps the final suffix, so checks know whether to decompress
        where = next(d for d in (target_dir, *target_dir.parents) if d.is_dir())
        fd, tmp_name = tempfile.mkstemp(dir=where, prefix=".part-", suffix=f"-{filename}")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out, urlopen(url, timeout=TIMEOUT) as response:  # type: ignore[attr-defined]
                while chunk := response.read(1 << 20):
                    out.write(chunk)
            check(tmp)
            if where != target_dir:
                target_dir.mkdir(parents=True, exist_ok=True)
                moved = target_dir / tmp.name
                shutil.move(tmp, moved)  # a rename (a copy across file systems)
                tmp = moved
            os.replace(tmp, final)
            return final
        except (OSError, DatasetError, ValueError) as e:
            errors.append(f"{url}: {e}")
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
    raise DatasetNotFoundError(
        f"could not download {filename} into {target_dir}:\n  " + "\n  ".join(errors)
    )
