"""Reading CIFAR-10's official python-pickle files (the ``cifar-10-batches-py`` folder that the archive
``cifar-10-python.tar.gz`` unpacks to, and that torchvision keeps under its root). Nothing is downloaded.

Each ``data_batch_1`` … ``data_batch_5`` and ``test_batch`` is a pickled dict with ``b"data"`` (uint8
[10000, 3072]: per image 1024 red, 1024 green, 1024 blue values, rows top to bottom) and ``b"labels"`` (10000
ints in 0..9); ``batches.meta`` holds ``b"label_names"``. The pickles are read with an unpickler that only builds
builtins and numpy arrays, so a foreign file fails as corrupt instead of running code.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np

FOLDER = "cifar-10-batches-py"
ARCHIVE = "cifar-10-python.tar.gz"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
HOW_TO_GET = (
    f"get {ARCHIVE} from https://www.cs.toronto.edu/~kriz/cifar.html (or run torchvision.datasets.CIFAR10(root, "
    f"download=True) once) and pass its {FOLDER} folder, the folder holding it, or the archive itself"
)


class CifarFilesError(ValueError):
    """A CIFAR-10 file is missing or unreadable; the message names it and how to get the data."""


class _ArraysOnly(pickle.Unpickler):
    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"), ("builtins", "bytes"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _unpickle(raw: bytes, where: str) -> dict:
    try:
        data = _ArraysOnly(io.BytesIO(raw), encoding="bytes").load()
    except Exception as exc:  # noqa: BLE001 - any failure to read is a corrupt file, reported by name
        raise CifarFilesError(f"{where} is corrupt ({type(exc).__name__}: {exc}); {HOW_TO_GET}") from None
    if not isinstance(data, dict):
        raise CifarFilesError(f"{where} is corrupt (not a pickled dict); {HOW_TO_GET}")
    return data


def _batch(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 [n, 32, 32, 3] NHWC, int32 [n]) from one batch file's bytes (n = 10000 in the official files)."""
    data = _unpickle(raw, where)
    images, labels = data.get(b"data"), data.get(b"labels")
    shape_ok = isinstance(images, np.ndarray) and images.ndim == 2 and images.shape[1] == 3072 and len(images) > 0
    if not shape_ok or images.dtype != np.uint8:
        got = getattr(images, "shape", type(images).__name__), getattr(images, "dtype", "")
        raise CifarFilesError(f"{where} is corrupt: b'data' must be uint8 [n, 3072], got {got}; {HOW_TO_GET}")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        labels = np.zeros((0,), np.int64)
    if labels.shape != (images.shape[0],) or labels.min() < 0 or labels.max() > 9:
        raise CifarFilesError(
            f"{where} is corrupt: b'labels' must be {images.shape[0]} ints in 0..9 (one per image), got shape "
            f"{labels.shape}; {HOW_TO_GET}"
        )
    return images.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels.astype(np.int32)


def _check_meta(raw: bytes, where: str) -> None:
    names = _unpickle(raw, where).get(b"label_names")
    if not isinstance(names, list) or len(names) != 10:
        raise CifarFilesError(f"{where} is corrupt: b'label_names' must list the 10 classes; {HOW_TO_GET}")


def _locate(path: Path) -> Path:
    """The folder of batch files or the archive that ``path`` designates."""
    if path.is_file():
        return path
    if not path.is_dir():
        raise CifarFilesError(f"CIFAR-10 data path {path} does not exist; {HOW_TO_GET}")
    for candidate in (path, path / FOLDER):
        if (candidate / TEST_FILE).exists() or any((candidate / f).exists() for f in TRAIN_FILES):
            return candidate
    if (path / ARCHIVE).is_file():
        return path / ARCHIVE
    raise CifarFilesError(
        f"no CIFAR-10 files in {path}: expected {FOLDER}/ (with {', '.join(TRAIN_FILES)}, {TEST_FILE}, "
        f"{META_FILE}), those files directly, or {ARCHIVE}; {HOW_TO_GET}"
    )


def _read_folder(folder: Path) -> dict[str, bytes]:
    raws = {}
    for name in (*TRAIN_FILES, TEST_FILE, META_FILE):
        file = folder / name
        if not file.is_file():
            raise CifarFilesError(f"missing CIFAR-10 file {file}; {HOW_TO_GET}")
        raws[name] = file.read_bytes()
    return raws


def _read_archive(archive: Path) -> dict[str, bytes]:
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            raws = {}
            for name in (*TRAIN_FILES, TEST_FILE, META_FILE):
                if name not in members:
                    raise CifarFilesError(f"missing CIFAR-10 file {FOLDER}/{name} inside {archive}; {HOW_TO_GET}")
                raws[name] = tar.extractfile(members[name]).read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise CifarFilesError(f"{archive} is not a readable .tar.gz archive ({exc}); {HOW_TO_GET}") from None
    return raws


def read(path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images uint8 [50000, 32, 32, 3], train labels, test images [10000, 32, 32, 3], test labels) from
    ``path``: the ``cifar-10-batches-py`` folder, a folder holding it or the archive, or the archive."""
    where = _locate(Path(path).expanduser())
    raws = _read_archive(where) if where.is_file() else _read_folder(where)
    _check_meta(raws[META_FILE], str(where / META_FILE) if where.is_dir() else f"{where}:{META_FILE}")

    def name(file: str) -> str:
        return str(where / file) if where.is_dir() else f"{where}:{FOLDER}/{file}"

    train = [_batch(raws[f], name(f)) for f in TRAIN_FILES]
    test_images, test_labels = _batch(raws[TEST_FILE], name(TEST_FILE))
    return (
        np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]), test_images, test_labels,
    )
