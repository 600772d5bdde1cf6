"""Datasets (original file formats, checksums, downloads) and their partition among workers.

>>> ds = load_dataset("digits")
>>> parts = partition(ds.y_train, num_workers=10, scheme="dirichlet", alpha=0.5)

Names: ``"digits"`` (scikit-learn, embedded), ``"synthetic"`` (seeded Gaussian mixture),
``"mnist"``, ``"fashion-mnist"`` (IDX files), ``"cifar10"`` (python pickle batches).
Files are looked for in ``data_dir``, else ``$BYZANCE_DATA_DIR``, else ``~/.cache/byzance``
(directly or in a ``<name>/`` sub-folder; Fashion-MNIST also in
``/usr/share/datasets/fashion-mnist``) and downloaded there when missing (see ``download.py``).
``dataset_info(name)`` gives a dataset's input shape, classes and sizes without loading it.
"""

from byzance.datasets.base import NAMES, Dataset, canonical_name, load_dataset
from byzance.datasets.builtin import make_synthetic
from byzance.datasets.cifar import read_batch
from byzance.datasets.download import check_data_dir
from byzance.datasets.errors import ChecksumError, DatasetError, DatasetNotFoundError
from byzance.datasets.idx import parse_idx, read_idx
from byzance.datasets.info import DatasetInfo, check_files, dataset_info
from byzance.datasets.partition import SCHEMES, label_distribution, label_skew, partition

__all__ = [
    "NAMES",
    "SCHEMES",
    "ChecksumError",
    "Dataset",
    "DatasetError",
    "DatasetInfo",
    "DatasetNotFoundError",
    "canonical_name",
    "check_data_dir",
    "check_files",
    "dataset_info",
    "label_distribution",
    "label_skew",
    "load_dataset",
    "make_synthetic",
    "parse_idx",
    "partition",
    "read_batch",
    "read_idx",
]
