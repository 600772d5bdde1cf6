"""``ExperimentConfig.validate`` catches what would fail at set-up, before any data is loaded:
a model that does not fit the dataset's inputs, more workers than training examples, a
validation split that leaves too little, a data dir that does not exist, a damaged file."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest
import torch

import byzance.datasets as D
from byzance import models
from byzance.cli import main
from byzance.round.setup import Setup
from byzance.sim import ExperimentConfig
from byzance.sim.config_checks import validation_size

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def cfg(**kw) -> ExperimentConfig:
    base = dict(dataset="digits", model="logreg", n_honest=5, f=1, aggregator="trimmed_mean")
    base.update(kw)
    return ExperimentConfig(**base)


@pytest.fixture
def no_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail if anything loads a dataset (validate must not)."""

    def boom(*args, **kwargs):
        raise AssertionError("a dataset was loaded during validation")

    monkeypatch.setattr(D, "load_dataset", boom)
    monkeypatch.setattr(D.base, "load_digits_tensors", boom)


# ----------------------------------------------------------------------------- the model
def test_cnn_on_digits_is_refused_before_loading(no_loading) -> None:
    with pytest.raises(ValueError, match=r"ExperimentConfig\.model: 'cnn' cannot run on dataset "):
        cfg(model="cnn").validate()
    with pytest.raises(ValueError, match=r"ExperimentConfig\.model: 'resnet18'.*'synthetic'"):
        cfg(model="resnet18", dataset="synthetic").validate()
    cfg(model="mlp").validate()  # flat features: fine
    cfg(model="my-own").validate(custom_model=True)  # a custom model is not checked


@pytest.mark.parametrize(
    ("model", "dataset"),
    [("cnn", "mnist"), ("cnn", "cifar10"), ("cifar_cnn", "fashion-mnist"), ("resnet18", "cifar10")],
)
def test_image_models_fit_image_datasets(model: str, dataset: str, no_loading) -> None:
    info = D.dataset_info(dataset)
    assert models.check_fits(model, info.input_shape, info.num_classes) > 0


def test_model_check_is_cached_and_leaves_the_global_rng_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    models.check_fits.cache_clear()
    built = []
    real = models.create_model
    monkeypatch.setattr(models, "create_model", lambda *a, **k: built.append(a) or real(*a, **k))
    state = torch.get_rng_state()
    for _ in range(3):
        cfg(model="mlp").validate()
    assert len(built) == 1
    assert torch.equal(state, torch.get_rng_state())


def test_forward_pass_catches_what_the_builder_does_not(monkeypatch: pytest.MonkeyPatch) -> None:
    def bad(input_shape, num_classes):  # builds, but its layers do not chain
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(7, num_classes))

    monkeypatch.setitem(models.MODELS, "bad", bad)
    models.check_fits.cache_clear()
    with pytest.raises(ValueError, match=r"model 'bad' does not fit inputs of shape \(64,\)"):
        models.check_fits("bad", (64,), 10)
    with pytest.raises(ValueError, match=r"ExperimentConfig\.model: 'bad'"):
        cfg(model="bad").validate()
    models.check_fits.cache_clear()


# ----------------------------------------------------------------------------- sizes
def test_dataset_info_matches_the_loaded_datasets(shared_datasets: Path) -> None:
    for name in ("digits", "synthetic", "mnist", "fashion-mnist"):
        info = D.dataset_info(name)
        ds = D.load_dataset(name, data_dir=shared_datasets, download=False)
        assert (info.input_shape, info.num_classes) == (ds.input_shape, ds.num_classes)
        assert (info.num_train, info.num_test) == (ds.num_train, ds.num_test)
    assert D.dataset_info("cifar-10").input_shape == (3, 32, 32)
    assert D.dataset_info("synthetic", dim=3, n_train=9).input_shape == (3,)
    with pytest.raises(ValueError, match="unknown dataset"):
        D.dataset_info("imagenet")


def test_more_workers_than_training_examples(no_loading) -> None:
    n = D.dataset_info("digits").num_train  # 1438
    cfg(n_honest=n - 1, f=1, aggregator="average").validate()
    with pytest.raises(ValueError, match=r"ExperimentConfig\.n_honest: .*1438 training examples"):
        cfg(n_honest=2000, f=2, aggregator="average").validate()
    # the Byzantine workers get a shard too, with or without an attack
    with pytest.raises(ValueError, match=r"1439 workers \(n_honest=1438 \+ f=1\)"):
        cfg(n_honest=n, f=1, attack="none", aggregator="average").validate()


def test_validation_split_that_leaves_too_little(no_loading) -> None:
    with pytest.raises(ValueError, match=r"ExperimentConfig\.val_fraction: 0\.999 holds out 1437"):
        cfg(val_fraction=0.999).validate()
    with pytest.raises(ValueError, match="val_fraction: .* leaving 0"):
        cfg(val_fraction=0.99999).validate()


@pytest.mark.parametrize("val_fraction", [0.0, 1e-9, 0.5, 0.99582, 0.9961, 0.9965, 0.999])
def test_validate_agrees_with_setup(val_fraction: float) -> None:
    """validate accepts exactly the splits that leave each of the 6 workers an example."""
    c = cfg(n_honest=5, f=1, val_fraction=val_fraction, attack="alie")
    n = D.dataset_info("digits").num_train
    n_val = max(1, int(round(val_fraction * n))) if val_fraction > 0 else 0  # as Setup does
    assert validation_size(val_fraction, n) == n_val
    if n - n_val < 6:
        with pytest.raises(ValueError, match="ExperimentConfig.val_fraction"):
            c.validate()
        return
    c.validate()
    setup = Setup(c)
    assert setup.x_train.shape[0] == n - n_val
    assert len(setup.shards) == 6 and int(setup.shards.sizes.min()) >= 1


def test_custom_dataset_is_not_checked_against_the_named_one(no_loading) -> None:
    c = cfg(n_honest=2000, f=2, model="cnn", aggregator="average")
    c.validate(custom_model=True, custom_dataset=True)


# ----------------------------------------------------------------------------- files
def test_missing_data_dir_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "typo"
    with pytest.raises(ValueError, match=rf"ExperimentConfig\.data_dir: data dir {missing} does"):
        cfg(dataset="mnist", data_dir=str(missing)).validate()
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ValueError, match="is not a directory"):
        cfg(dataset="fashion-mnist", data_dir=str(a_file)).validate()
    monkeypatch.setenv("BYZANCE_DATA_DIR", str(missing))
    with pytest.raises(ValueError, match=r"data_dir: .*typo \(from \$BYZANCE_DATA_DIR\) does not"):
        cfg(dataset="cifar10").validate()
    cfg().validate()  # digits reads no file: the data dir does not matter
    assert not missing.exists()


@pytest.fixture
def mnist_copy(shared_datasets: Path, tmp_path: Path) -> Path:
    src = shared_datasets / "mnist"
    if not src.is_dir():
        pytest.skip("no MNIST in the shared datasets")
    dst = tmp_path / "data" / "mnist"
    dst.mkdir(parents=True)
    for name in MNIST_FILES:
        shutil.copy(src / f"{name}.gz", dst / f"{name}.gz")
    return dst


def test_damaged_files_are_named_before_running(mnist_copy: Path) -> None:
    data_dir = str(mnist_copy.parent)
    c = cfg(dataset="mnist", data_dir=data_dir)
    c.validate()
    labels = mnist_copy / "t10k-labels-idx1-ubyte.gz"
    raw = labels.read_bytes()
    labels.write_bytes(raw[: len(raw) // 2])  # truncated download
    with pytest.raises(ValueError, match=r"ExperimentConfig\.dataset: mnist: .*t10k-labels.*trunc"):
        c.validate()
    # the test labels where the training labels should be: right format, wrong shape
    labels.write_bytes(raw)
    shutil.copy(labels, mnist_copy / "train-labels-idx1-ubyte.gz")
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte.gz is not train-labels.*10000"):
        c.validate()


def test_overlong_raw_file_is_named(mnist_copy: Path, shared_datasets: Path) -> None:
    name = "train-labels-idx1-ubyte"
    (mnist_copy / f"{name}.gz").unlink()
    content = gzip.decompress((shared_datasets / "mnist" / f"{name}.gz").read_bytes())
    (mnist_copy / name).write_bytes(content + b"extra")
    with pytest.raises(ValueError, match=rf"{name} is longer than its header says"):
        cfg(dataset="mnist", data_dir=str(mnist_copy.parent)).validate()
    (mnist_copy / name).write_bytes(content)
    cfg(dataset="mnist", data_dir=str(mnist_copy.parent)).validate()


def test_corrupted_content_is_caught_before_running(mnist_copy: Path, capsys) -> None:
    images = mnist_copy / "train-images-idx3-ubyte.gz"
    raw = bytearray(gzip.decompress(images.read_bytes()))
    raw[20000] ^= 0x01  # one pixel: header and size unchanged
    images.write_bytes(gzip.compress(bytes(raw), compresslevel=1))
    c = cfg(dataset="mnist", data_dir=str(mnist_copy.parent))
    with pytest.raises(ValueError, match=r"dataset: mnist: .*train-images-idx3-ubyte.gz is corr"):
        c.validate()
    code = main(["run", "--quiet", "--dataset", "mnist", "--data-dir", str(mnist_copy.parent)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "train-images-idx3-ubyte.gz" in err


def test_cifar_files_are_checked_before_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pickle

    import numpy as np

    from byzance.datasets import cifar, download

    folder = tmp_path / "cifar10" / cifar.FOLDER
    folder.mkdir(parents=True)
    md5s = {}
    for name in cifar.BATCH_MD5:
        data = pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]})
        (folder / name).write_bytes(data)
        md5s[name] = download.digest(data, "md5")
    monkeypatch.setattr(cifar, "BATCH_MD5", md5s)
    c = cfg(dataset="cifar10", data_dir=str(tmp_path), model="cifar_cnn")
    c.validate()
    (folder / "data_batch_2").write_bytes(b"\x80\x02}q\x00.")
    with pytest.raises(ValueError, match=r"dataset: cifar10: CIFAR-10 batch data_batch_2 .*MD5"):
        c.validate()


def test_empty_data_dir_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"ExperimentConfig\.data_dir: data dir is empty"):
        cfg(dataset="mnist", data_dir="").validate()
    with pytest.raises(D.DatasetNotFoundError, match="data dir is empty"):
        D.load_dataset("fashion-mnist", data_dir=" ")


def test_missing_files_are_left_to_the_download(tmp_path: Path) -> None:
    # validate does not download, and missing files may still be downloaded by the run
    cfg(dataset="mnist", data_dir=str(tmp_path)).validate()
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- the CLI
@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--model", "cnn"], "model"),
        (["--set", "val_fraction=0.999"], "val_fraction"),
        (["--n-honest", "2000", "--aggregator", "average"], "n_honest"),
        (["--dataset", "mnist", "--data-dir", "/no/such/dir"], "data_dir"),
    ],
)
def test_cli_exits_2_with_one_line(args: list[str], field: str, capsys, tmp_path: Path) -> None:
    code = main(["run", "--quiet", "--rounds", "1", "--db", str(tmp_path / "r.db"), *args])
    out, err = capsys.readouterr()
    assert code == 2
    assert err.count("\n") == 1 and err.startswith(f"byzance: error: ExperimentConfig.{field}:")
    assert "running" not in out
    assert not Path("/no/such/dir").exists()
