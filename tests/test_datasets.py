"""Dataset readers (IDX, CIFAR pickles), checksums, data-dir resolution, downloads."""

from __future__ import annotations

import dataclasses
import gzip
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

import byzance.datasets as D
from byzance.datasets import cifar, download, idx

FASHION_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Verification stamps go to a per-test folder, never to the home directory."""
    cache = tmp_path / "stamp-cache"
    monkeypatch.setenv("BYZANCE_CACHE_DIR", str(cache))
    return cache


def idx_bytes(arr: np.ndarray) -> bytes:
    code = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D}
    header = bytes([0, 0, code[arr.dtype.type], arr.ndim])
    header += np.asarray(arr.shape, dtype=">u4").tobytes()
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


# ----------------------------------------------------------------------------- IDX reader


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_roundtrip_raw_and_gz(tmp_path: Path, suffix: str) -> None:
    images = np.random.default_rng(0).integers(0, 256, (5, 3, 4), dtype=np.uint8)
    labels = np.array([3, -7, 100000, 0, 42], dtype=np.int32)
    p1 = write(tmp_path / f"img{suffix}", idx_bytes(images))
    p2 = write(tmp_path / f"lab{suffix}", idx_bytes(labels))
    np.testing.assert_array_equal(D.read_idx(p1), images)
    got = D.read_idx(p2)
    assert got.dtype == np.int32 and got.dtype.isnative
    np.testing.assert_array_equal(got, labels)  # big-endian decoding


def test_idx_wrong_magic_names_the_file(tmp_path: Path) -> None:
    p = write(tmp_path / "bad-idx3-ubyte", b"\x01\x02\x08\x01" + bytes(8))
    with pytest.raises(D.DatasetError, match="bad-idx3-ubyte.*bad magic"):
        D.read_idx(p)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_truncated_names_the_file(tmp_path: Path, suffix: str) -> None:
    data = idx_bytes(np.zeros((4, 5, 5), dtype=np.uint8))
    p = write(tmp_path / f"short{suffix}", data[:-3])
    with pytest.raises(D.DatasetError, match=r"short.*truncated"):
        D.read_idx(p)
    q = write(tmp_path / f"long{suffix}", data + b"xx")
    with pytest.raises(D.DatasetError, match=r"long.*longer than its header"):
        D.read_idx(q)


def test_truncated_gzip_stream_names_the_file(tmp_path: Path) -> None:
    gz = gzip.compress(idx_bytes(np.arange(200, dtype=np.uint8).reshape(2, 10, 10)))
    p = tmp_path / "cut.gz"
    p.write_bytes(gz[: len(gz) // 2])
    with pytest.raises(D.DatasetError, match="cut.gz.*truncated or corrupted"):
        D.read_idx(p)


# ----------------------------------------------------------------------------- CIFAR pickles


def cifar_batch(n: int, seed: int) -> tuple[bytes, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, n)
    batch = {
        b"batch_label": b"testing batch",
        b"labels": [int(v) for v in labels],
        b"data": images.reshape(n, 3072),  # row-major planes R, G, B
        b"filenames": [b"x.png"] * n,
    }
    return pickle.dumps(batch, protocol=2), images, labels


def test_cifar_batch_reader_planes(tmp_path: Path) -> None:
    n = 4
    data = np.zeros((n, 3072), dtype=np.uint8)
    data[:, :1024], data[:, 1024:2048], data[:, 2048:] = 10, 20, 30
    data[:, 1] = 99  # red, row 0, column 1
    p = tmp_path / "data_batch_1"
    p.write_bytes(pickle.dumps({b"data": data, b"labels": [1, 2, 3, 4]}, protocol=2))
    images, labels = D.read_batch(p)
    assert images.shape == (n, 3, 32, 32)
    assert (images[:, 1] == 20).all() and (images[:, 2] == 30).all()
    assert (images[:, 0, 0, 1] == 99).all() and images[0, 0, 0, 0] == 10
    np.testing.assert_array_equal(labels, [1, 2, 3, 4])


def test_cifar_reader_rejects_code_and_bad_batches(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):  # noqa: ANN204
            return (os.system, (f"touch {marker}",))

    p = tmp_path / "evil"
    p.write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(D.DatasetError, match="evil.*not a CIFAR-10 pickle"):
        D.read_batch(p)
    assert not marker.exists()
    q = tmp_path / "nolabels"
    q.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}, protocol=2))
    with pytest.raises(D.DatasetError, match="nolabels.*b'labels'"):
        D.read_batch(q)
    r = tmp_path / "wrongsize"
    r.write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(D.DatasetError, match=r"wrongsize.*\(N, 3072\)"):
        D.read_batch(r)


def fake_cifar(folder: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, np.ndarray]:
    """Tiny batches in the original layout; their MD5s replace the published ones."""
    folder.mkdir(parents=True)
    md5s, xs, ys = {}, [], []
    for i, name in enumerate((*cifar.TRAIN_BATCHES, *cifar.TEST_BATCHES)):
        data, images, labels = cifar_batch(3, i)
        (folder / name).write_bytes(data)
        md5s[name] = download.digest(data, "md5")
        xs.append(images)
        ys.append(labels)
    monkeypatch.setattr(cifar, "BATCH_MD5", md5s)
    return {"x_train": np.concatenate(xs[:5]), "y_train": np.concatenate(ys[:5]), "x_test": xs[5]}


def test_cifar_loader_folder_and_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "a" / "cifar10" / cifar.FOLDER
    ref = fake_cifar(folder, monkeypatch)
    ds = D.load_dataset("cifar10", data_dir=tmp_path / "a", download=False)
    assert ds.x_train.shape == (15, 3, 32, 32) and ds.x_test.shape == (3, 3, 32, 32)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    mean = torch.tensor(cifar.MEAN).view(1, 3, 1, 1)
    std = torch.tensor(cifar.STD).view(1, 3, 1, 1)
    want = (torch.from_numpy(ref["x_train"]).float() / 255 - mean) / std
    torch.testing.assert_close(ds.x_train, want)
    np.testing.assert_array_equal(ds.y_train.numpy(), ref["y_train"])
    # the same batches inside the .tar.gz archive
    archive = tmp_path / "b" / cifar.ARCHIVE
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=cifar.FOLDER)
    ds2 = D.load_dataset("cifar-10", data_dir=tmp_path / "b", download=False)
    torch.testing.assert_close(ds2.x_train, ds.x_train)
    torch.testing.assert_close(ds2.x_test, ds.x_test)


def test_cifar_corrupted_batch_fails_checksum(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / cifar.FOLDER
    fake_cifar(folder, monkeypatch)
    data = bytearray((folder / "data_batch_3").read_bytes())
    data[-100] ^= 0xFF
    (folder / "data_batch_3").write_bytes(bytes(data))
    with pytest.raises(D.ChecksumError, match="data_batch_3.*MD5"):
        D.load_dataset("cifar10", data_dir=tmp_path, download=False)


def test_cifar_missing_lists_places(tmp_path: Path) -> None:
    with pytest.raises(D.DatasetNotFoundError) as info:
        D.load_dataset("cifar10", data_dir=tmp_path, download=False)
    msg = str(info.value)
    assert str(tmp_path / "cifar10" / cifar.FOLDER) in msg and str(tmp_path / cifar.ARCHIVE) in msg
    assert "BYZANCE_DATA_DIR" in msg and "download=True" in msg


# ----------------------------------------------------------------------------- checksums


def test_checksum_of_decompressed_content(tmp_path: Path) -> None:
    content = idx_bytes(np.arange(600, dtype=np.int32))
    expected = "sha256:" + download.digest(content, "sha256")
    a = tmp_path / "a.gz"
    a.write_bytes(gzip.compress(content, compresslevel=9, mtime=0))
    b = tmp_path / "b.gz"  # a recompressed copy: different bytes, same content
    b.write_bytes(gzip.compress(content, compresslevel=1, mtime=12345))
    c = tmp_path / "c"  # uncompressed copy
    c.write_bytes(content)
    assert a.read_bytes() != b.read_bytes()
    for p in (a, b, c):
        download.verify_content(p, download.open_content(p), expected)
    bad = bytearray(content)
    bad[50] ^= 1
    d = tmp_path / "d.gz"
    d.write_bytes(gzip.compress(bytes(bad)))
    with pytest.raises(D.ChecksumError, match="d.gz.*corrupted"):
        download.verify_content(d, download.open_content(d), expected)


def test_verification_stamp_skips_rehash_until_file_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    content = b"some dataset content"
    expected = "sha256:" + download.digest(content, "sha256")
    p = tmp_path / "f"
    p.write_bytes(content)
    download.verify_content(p, content, expected)
    calls = []
    real = download.digest
    monkeypatch.setattr(download, "digest", lambda *a: calls.append(a) or real(*a))
    download.verify_content(p, content, expected)
    assert calls == []  # stamp hit: no hashing
    p.write_bytes(b"other dataset content!")  # size changes -> stamp invalid
    with pytest.raises(D.ChecksumError):
        download.verify_content(p, p.read_bytes(), expected)
    assert len(calls) == 1
    # an expected digest that differs from the stamped one is not a hit either
    download.verify_content(p, p.read_bytes(), None)
    assert not download.is_verified(p, expected)


# ----------------------------------------------------------------------------- Fashion-MNIST


def check_fashion(ds: D.Dataset) -> None:
    assert ds.name == "fashion-mnist" and ds.num_classes == 10
    assert ds.input_shape == (1, 28, 28)
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert torch.equal(torch.bincount(ds.y_train), torch.full((10,), 6000))
    assert torch.equal(torch.bincount(ds.y_test), torch.full((10,), 1000))
    assert abs(float(ds.x_train.mean())) < 0.01 and abs(float(ds.x_train.std()) - 1) < 0.01


def test_fashion_mnist_real_files(shared_datasets: Path) -> None:
    ds = D.load_dataset("fashion-mnist", data_dir=shared_datasets, download=False)
    check_fashion(ds)


def test_fashion_from_env_and_flat_layout(
    shared_datasets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # files directly in the data dir (one raw, three .gz), found through BYZANCE_DATA_DIR
    src = shared_datasets / "fashion-mnist"
    if not src.is_dir():
        pytest.skip("no Fashion-MNIST in the shared datasets")
    for name in FASHION_FILES[1:]:
        (tmp_path / f"{name}.gz").symlink_to(src / f"{name}.gz")
    raw = tmp_path / FASHION_FILES[0]
    raw.write_bytes(gzip.decompress((src / f"{FASHION_FILES[0]}.gz").read_bytes()))
    monkeypatch.setenv("BYZANCE_DATA_DIR", str(tmp_path))
    ds = D.load_dataset("FashionMNIST", download=False)
    assert ds.x_train.shape == (60000, 1, 28, 28)
    assert torch.equal(torch.bincount(ds.y_test), torch.full((10,), 1000))
    # a corrupted but structurally valid copy is caught by the content checksum
    data = bytearray(raw.read_bytes())
    data[-1] ^= 0xFF
    raw.write_bytes(bytes(data))
    with pytest.raises(D.ChecksumError, match="train-images-idx3-ubyte.*sha256"):
        D.load_dataset("fashion-mnist", download=False)


def test_missing_files_error_lists_places_and_hints(tmp_path: Path) -> None:
    with pytest.raises(D.DatasetNotFoundError) as info:
        D.load_dataset("fashion-mnist", data_dir=tmp_path, download=False)
    err = info.value
    assert isinstance(err, FileNotFoundError) and isinstance(err, ValueError)
    msg = str(err)
    for where in (tmp_path / "fashion-mnist", tmp_path, Path("/usr/share/datasets/fashion-mnist")):
        assert f"  {where}\n" in msg
    for name in FASHION_FILES:
        assert name in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "BYZANCE_DATA_DIR" in msg
    with pytest.raises(D.DatasetNotFoundError, match="mnist.*t10k-labels-idx1-ubyte"):
        D.load_dataset("mnist", data_dir=tmp_path, download=False)


def test_data_dir_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BYZANCE_DATA_DIR", str(tmp_path / "env"))
    assert download.candidate_dirs("mnist", None) == [tmp_path / "env" / "mnist", tmp_path / "env"]
    assert download.candidate_dirs("mnist", tmp_path)[1] == tmp_path
    monkeypatch.delenv("BYZANCE_DATA_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert download.default_dir() == tmp_path / "home" / ".cache" / "byzance"
    assert download.candidate_dirs("fashion-mnist", None)[-1] == Path(
        "/usr/share/datasets/fashion-mnist"
    )


# ----------------------------------------------------------------------------- downloads


def test_download_from_file_mirror(
    shared_datasets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = shared_datasets / "fashion-mnist"
    if not src.is_dir():
        pytest.skip("no Fashion-MNIST in the shared datasets")
    info = dataclasses.replace(
        idx.FASHION_MNIST, mirrors=((tmp_path / "nowhere").as_uri(), src.as_uri())
    )
    monkeypatch.setitem(idx.IDX_DATASETS, "fashion-mnist", info)
    (tmp_path / "data").mkdir()
    ds = D.load_dataset("fashion-mnist", data_dir=tmp_path / "data", download=True)
    check_fashion(ds)
    got = sorted(p.name for p in (tmp_path / "data" / "fashion-mnist").iterdir())
    assert got == sorted(f"{n}.gz" for n in FASHION_FILES)  # no leftover temporary file


def test_download_rejects_corrupted_file_atomically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for name in FASHION_FILES:  # structurally valid, wrong content
        shape = (60000, 28, 28) if "train-images" in name else (10,)
        write(mirror / f"{name}.gz", idx_bytes(np.zeros(shape, dtype=np.uint8)))
    info = dataclasses.replace(idx.FASHION_MNIST, mirrors=(mirror.as_uri(),))
    monkeypatch.setitem(idx.IDX_DATASETS, "fashion-mnist", info)
    (tmp_path / "data").mkdir()
    with pytest.raises(D.DatasetNotFoundError, match="(?s)train-images.*expected c59f468a"):
        D.load_dataset("fashion-mnist", data_dir=tmp_path / "data", download=True)
    assert list((tmp_path / "data").iterdir()) == []  # not even the fashion-mnist folder


def test_mnist_download_checks_archive_md5(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    write(mirror / "train-images-idx3-ubyte.gz", idx_bytes(np.zeros((2, 28, 28), np.uint8)))
    info = dataclasses.replace(idx.MNIST, mirrors=(mirror.as_uri(),))
    monkeypatch.setitem(idx.IDX_DATASETS, "mnist", info)
    (tmp_path / "data").mkdir()
    with pytest.raises(D.DatasetNotFoundError, match="MD5 .* expected f68b3c2d"):
        D.load_dataset("mnist", data_dir=tmp_path / "data", download=True)
    assert not (tmp_path / "data" / "mnist").exists()


def failing_urlopen(calls: list[str]):  # noqa: ANN201
    def urlopen(url: str, timeout: float = 0.0):  # noqa: ANN202
        calls.append(url)
        raise OSError("no network in tests")

    return urlopen


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10"])
def test_failed_download_creates_no_folder(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(download, "urlopen", failing_urlopen(calls))
    data = tmp_path / "data"
    data.mkdir()
    with pytest.raises(D.DatasetNotFoundError, match="could not download"):
        D.load_dataset(name, data_dir=data, download=True)
    assert calls and list(data.iterdir()) == []  # tried, and left nothing behind
    # the default data dir (~/.cache/byzance) is not created either
    monkeypatch.delenv("BYZANCE_DATA_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(D.DatasetNotFoundError, match="could not download"):
        D.load_dataset(name, download=True)
    assert not (tmp_path / "home").exists()


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10"])
def test_missing_data_dir_is_never_created(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(download, "urlopen", failing_urlopen(calls))
    typo = tmp_path / "dta"
    with pytest.raises(D.DatasetNotFoundError, match=f"^data dir {typo} does not exist$"):
        D.load_dataset(name, data_dir=typo, download=True)
    monkeypatch.setenv("BYZANCE_DATA_DIR", str(typo))
    with pytest.raises(D.DatasetNotFoundError, match=r"\(from \$BYZANCE_DATA_DIR\) does not"):
        D.load_dataset(name, download=True)
    assert not typo.exists() and calls == []  # no download tried either
    typo.write_text("a file")
    with pytest.raises(D.DatasetNotFoundError, match="is not a directory"):
        D.load_dataset(name, data_dir=typo)


def test_download_into_a_missing_default_dir_creates_it_on_success(
    shared_datasets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = shared_datasets / "mnist"
    if not src.is_dir():
        pytest.skip("no MNIST in the shared datasets")
    info = dataclasses.replace(idx.MNIST, mirrors=(src.as_uri(),))
    monkeypatch.setitem(idx.IDX_DATASETS, "mnist", info)
    monkeypatch.delenv("BYZANCE_DATA_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    ds = D.load_dataset("mnist", download=True)
    assert ds.num_train == 60000
    folder = tmp_path / "home" / ".cache" / "byzance" / "mnist"
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{n}.gz" for n in FASHION_FILES)


@pytest.mark.parametrize("layout", ["subfolder", "flat"])
def test_one_missing_file_is_named_exactly(
    shared_datasets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: str
) -> None:
    src = shared_datasets / "mnist"
    if not src.is_dir():
        pytest.skip("no MNIST in the shared datasets")
    folder = tmp_path / "mnist" if layout == "subfolder" else tmp_path
    folder.mkdir(exist_ok=True)
    for name in FASHION_FILES[:3]:
        (folder / f"{name}.gz").symlink_to(src / f"{name}.gz")
    with pytest.raises(D.DatasetNotFoundError) as info:
        D.load_dataset("mnist", data_dir=tmp_path, download=False)
    first = str(info.value).splitlines()[0]
    assert first == (
        f"mnist: missing file(s) t10k-labels-idx1-ubyte (.gz or uncompressed) in {folder}, "
        "which holds the other file(s)."
    )
    # a download fetches only that file, next to the others
    calls: list[str] = []
    real = download.urlopen
    monkeypatch.setattr(download, "urlopen", lambda url, **kw: calls.append(url) or real(url, **kw))
    info_ = dataclasses.replace(idx.MNIST, mirrors=(src.as_uri(),))
    monkeypatch.setitem(idx.IDX_DATASETS, "mnist", info_)
    ds = D.load_dataset("mnist", data_dir=tmp_path, download=True)
    assert ds.num_test == 10000
    assert [u.rsplit("/", 1)[1] for u in calls] == ["t10k-labels-idx1-ubyte.gz"]
    assert (folder / "t10k-labels-idx1-ubyte.gz").is_file()


def test_cifar_partial_folder_names_the_missing_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "cifar10" / cifar.FOLDER
    fake_cifar(folder, monkeypatch)
    (folder / "data_batch_4").unlink()
    with pytest.raises(D.DatasetNotFoundError, match=rf"^cifar10: {folder} lacks data_batch_4 "):
        D.load_dataset("cifar10", data_dir=tmp_path, download=False)


def test_oversized_files_are_refused_before_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a gzip bomb (or any wrong file) is not decompressed past the size the file should have
    bomb = tmp_path / "train-labels-idx1-ubyte.gz"
    bomb.write_bytes(gzip.compress(idx_bytes(np.zeros(60000, np.uint8)) + bytes(50 << 20)))
    with pytest.raises(D.DatasetError, match="holds more than the 60008 bytes expected"):
        idx._checked_array(bomb, idx.MNIST.files[1], 10)
    raw = tmp_path / "raw"
    raw.write_bytes(bytes(100))
    with pytest.raises(D.DatasetError, match="raw holds more than the 99 bytes"):
        download.open_content(raw, limit=99)
    assert download.open_content(raw, limit=100) == bytes(100)
    folder = tmp_path / "c" / cifar.FOLDER
    fake_cifar(folder, monkeypatch)
    monkeypatch.setattr(cifar, "MAX_BATCH_BYTES", 100)
    with pytest.raises(D.DatasetError, match="data_batch_1 is not a CIFAR-10 batch: .* more than"):
        D.load_dataset("cifar10", data_dir=tmp_path / "c", download=False)


def test_mnist_content_is_checked(shared_datasets: Path, tmp_path: Path) -> None:
    mnist, fashion = shared_datasets / "mnist", shared_datasets / "fashion-mnist"
    if not (mnist.is_dir() and fashion.is_dir()):
        pytest.skip("no MNIST and Fashion-MNIST in the shared datasets")
    for name in FASHION_FILES[1:]:
        (tmp_path / f"{name}.gz").symlink_to(mnist / f"{name}.gz")
    raw = bytearray(gzip.decompress((mnist / f"{FASHION_FILES[0]}.gz").read_bytes()))
    raw[5000] ^= 0x10  # one pixel: structurally valid
    (tmp_path / FASHION_FILES[0]).write_bytes(bytes(raw))
    with pytest.raises(D.ChecksumError, match="train-images-idx3-ubyte is corrupted: sha256"):
        D.load_dataset("mnist", data_dir=tmp_path, download=False)
    (tmp_path / FASHION_FILES[0]).unlink()  # Fashion-MNIST's images in MNIST's place
    (tmp_path / f"{FASHION_FILES[0]}.gz").symlink_to(fashion / f"{FASHION_FILES[0]}.gz")
    with pytest.raises(D.ChecksumError, match="train-images-idx3-ubyte.gz is corrupted"):
        D.load_dataset("mnist", data_dir=tmp_path, download=False)


def test_check_files_names_a_damaged_file_cheaply(shared_datasets: Path, tmp_path: Path) -> None:
    src = shared_datasets / "mnist"
    if not src.is_dir():
        pytest.skip("no MNIST in the shared datasets")
    for name in FASHION_FILES:
        (tmp_path / f"{name}.gz").symlink_to(src / f"{name}.gz")
    D.check_files("mnist", tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    raw = gzip.decompress((src / "t10k-images-idx3-ubyte.gz").read_bytes())
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(raw[:-1])
    with pytest.raises(D.DatasetError, match="t10k-images-idx3-ubyte is truncated"):
        D.check_files("mnist", tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03" + raw[4:])
    D.check_files("mnist", tmp_path)  # a changed file is looked at again
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"PK\x03\x04" + raw[4:])
    with pytest.raises(D.DatasetError, match="is not t10k-images-idx3-ubyte"):
        D.check_files("mnist", tmp_path)
    D.check_files("digits", "/no/such/dir")  # no files: nothing to check
    (tmp_path / "empty").mkdir()
    D.check_files("mnist", tmp_path / "empty")  # missing files are left to the download


# ----------------------------------------------------------------------------- built-ins


def test_digits() -> None:
    ds = D.load_dataset("digits")
    assert ds.input_shape == (64,) and ds.num_classes == 10
    assert ds.x_train.shape == (1438, 64) and ds.x_test.shape == (359, 64)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    torch.testing.assert_close(ds.x_train.mean(0), torch.zeros(64), atol=1e-5, rtol=0)
    assert set(ds.y_train.tolist()) == set(range(10))
    again = D.load_dataset("digits")
    assert torch.equal(again.x_test, ds.x_test) and torch.equal(again.y_train, ds.y_train)


def test_synthetic_is_seeded() -> None:
    a = D.load_dataset("synthetic")
    b = D.load_dataset("synthetic")
    c = D.load_dataset("synthetic", seed=1)
    assert a.input_shape == (20,) and a.num_classes == 10 and a.x_train.shape == (5000, 20)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.x_train, c.x_train)
    d = D.load_dataset("synthetic", n_train=30, n_test=7, dim=3, num_classes=4)
    assert d.x_train.shape == (30, 3) and d.num_classes == 4 and int(d.y_train.max()) < 4
    with pytest.raises(D.DatasetError, match="num_classes must be an int >= 2"):
        D.load_dataset("synthetic", num_classes=1)
    with pytest.raises(D.DatasetError, match="unexpected keyword"):
        D.load_dataset("synthetic", colour=3)


def test_bad_names_and_options() -> None:
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'.*fashion-mnist.*cifar10"):
        D.load_dataset("imagenet")
    with pytest.raises(ValueError, match="only.*'synthetic'"):
        D.load_dataset("digits", seed=3)
    with pytest.raises(ValueError, match="x_train has shape"):
        D.Dataset(
            "t", torch.zeros(3, 2), torch.zeros(3), torch.zeros(1, 2), torch.zeros(1), 2, (3,)
        )


def test_idx_file_bytes_helper_matches_reader() -> None:
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(D.parse_idx(idx_bytes(arr)), arr)
